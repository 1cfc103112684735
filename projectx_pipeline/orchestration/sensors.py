"""Sensors: listed contracts → contract partitions; new live bars → `ohlc_bars` materializations
and analysis runs; run failures → one alert hook."""

import json
import os
from datetime import datetime, timedelta, timezone

import requests
from dagster import (
    AssetMaterialization,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    MetadataValue,
    RunFailureSensorContext,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from ..domain.sessions import trade_date_of
from ..domain.timeframes import Timeframe
from ..gateway.listings import listed_months
from ..logs import get_logger, kv
from ..settings import Settings
from ..storage.bar_activity import bars_ingested_since
from .analysis_assets import AnalysisAssets, analyzed_timeframes
from .front_months import FrontMonths
from .partitions import CONTRACTS, ensure_contract_partitions, partition_key
from .resources import GatewayResource, StorageResource

log = get_logger("projectx.dagster")

# Bars are stamped with their transaction's start time, and a transaction can commit a little
# after a later one: re-read this far behind the cursor; run keys stop anything running twice.
INGESTED_AT_OVERLAP = timedelta(seconds=30)


def _load_cursor(raw: str | None) -> dict:
    if not raw:
        return {"since": None, "last": {}}
    return json.loads(raw)


def build_new_bars_sensor(settings: Settings, analysis: AnalysisAssets) -> SensorDefinition:
    """The new-bar sensor: polls every `dagster.sensor_interval_seconds`, launches `analysis.job`
    for each series (a contract, or a symbol's continuous series) that got new bars."""
    front_months = FrontMonths.from_settings(settings)

    @sensor(
        name="new_bars_sensor",
        minimum_interval_seconds=settings.file.dagster.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        job=analysis.job,
        description="Reports ohlc_bars materializations per trade date × contract as live bars land, "
        "and launches the trend-start analysis for the contracts and timeframes that got new bars.",
    )
    def new_bars_sensor(context: SensorEvaluationContext, storage: StorageResource):
        cursor = _load_cursor(context.cursor)
        since = datetime.fromisoformat(cursor["since"]) - INGESTED_AT_OVERLAP if cursor["since"] else datetime(1970, 1, 1, tzinfo=timezone.utc)
        with storage.connection() as conn:
            rows = bars_ingested_since(conn, since)
        last: dict[str, str] = cursor["last"]
        new_by_contract: dict[str, dict[str, datetime]] = {}
        high_water = cursor["since"]
        for cid, unit, value, max_ts, _bar_count, max_ingested in rows:
            key = f"{cid}|{unit}|{value}"
            high_water = max(high_water or max_ingested.isoformat(), max_ingested.isoformat())
            if last.get(key) and datetime.fromisoformat(last[key]) >= max_ts:
                continue
            last[key] = max_ts.isoformat()
            new_by_contract.setdefault(cid, {})[Timeframe(unit, value).label] = max_ts
        if not new_by_contract:
            context.update_cursor(json.dumps({"since": high_water, "last": last}))
            return SkipReason("no new bars")
        events, run_requests = [], []
        added = ensure_contract_partitions(context.instance, new_by_contract)  # e.g. a contract rolled into
        if added:
            context.log.info(f"contract partitions added for new live bars: {', '.join(added)}")
        analyzed = {tf.label for tf in analyzed_timeframes(settings)}
        new_by_series: dict[str, dict[str, dict[str, datetime]]] = {}  # series -> contract -> timeframe -> newest bar
        for cid, by_tf in new_by_contract.items():
            newest = max(by_tf.values())
            events.append(
                AssetMaterialization(
                    asset_key="ohlc_bars",
                    partition=partition_key(trade_date_of(newest), cid),
                    metadata={
                        "last_bar_time": MetadataValue.text(newest.isoformat()),
                        "new_bars_by_timeframe": MetadataValue.json({k: v.isoformat() for k, v in sorted(by_tf.items())}),
                    },
                )
            )
            # the months of a symbol analysed as one continuous series make one run of it
            new_by_series.setdefault(front_months.series_of(cid), {})[cid] = by_tf
        for series, by_contract in new_by_series.items():
            new_bars = {cid: {tf: by_tf[tf] for tf in sorted(set(by_tf) & analyzed)} for cid, by_tf in sorted(by_contract.items())}
            parts = [f"{cid}:" + ",".join(f"{tf}@{ts.isoformat()}" for tf, ts in tfs.items()) for cid, tfs in new_bars.items() if tfs]
            if not parts:
                continue
            # a continuous series is keyed by each month's new bars: the next month's bar of 20:00
            # must not stand for the front month's bar of 20:00 that a later tick sees
            run_key = parts[0] if series in by_contract else f"{series}|" + ";".join(parts)
            run_requests.append(
                RunRequest(
                    run_key=run_key,
                    run_config=analysis.run_config([series]),
                    tags={"projectx/series": series, "projectx/timeframes": ",".join(sorted({tf for tfs in new_bars.values() for tf in tfs}))},
                )
            )
        context.update_cursor(json.dumps({"since": high_water, "last": last}))
        return SensorResult(run_requests=run_requests, asset_events=events)

    return new_bars_sensor


CONTRACT_LISTINGS_INTERVAL_SECONDS = 300


def listed_symbols(settings: Settings) -> list[str]:
    """The symbols whose listed months become contract partitions: the followed symbols
    (`instruments`) and the symbols of the explicit contracts (so that the month after an explicit
    contract can be backfilled before the settings name it)."""
    symbols = list(settings.symbols)
    for cid in settings.contract_ids:
        if cid.symbol not in symbols:
            symbols.append(cid.symbol)
    return symbols


def build_contract_listings_sensor(settings: Settings) -> SensorDefinition:
    """The sensor that keeps the contract partitions: the configured contracts and every month the
    gateway lists for the configured symbols (a new quarterly month appears without a reload)."""
    configured = list(settings.contract_ids)
    symbols = listed_symbols(settings)

    @sensor(
        name="contract_listings",
        minimum_interval_seconds=CONTRACT_LISTINGS_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Adds the configured contracts and every month the gateway lists of {', '.join(symbols)} as "
        "contract partitions; contracts already added stay, expired or not.",
    )
    def contract_listings(context: SensorEvaluationContext, gateway: GatewayResource):
        listed: list[str] = []
        failed: dict[str, str] = {}
        for symbol in symbols:
            try:
                listed += [c.id for c in listed_months(gateway.client, symbol)]
            except Exception as exc:  # the gateway down or not listing it: the configured contracts are still added
                failed[symbol] = f"{type(exc).__name__}: {exc}"
                log.warning(kv("contract_listing_failed", symbol=symbol, error=failed[symbol]))
        known = set(context.instance.get_dynamic_partitions(CONTRACTS))
        new = sorted((set(configured) | set(listed)) - known)
        if not new:
            # the tick's reason shows in the UI: a listing that failed is said there, not only in the log
            failures = "".join(f"; listing failed for {symbol}: {error}" for symbol, error in failed.items())
            return SkipReason(f"no new contract ({len(known)} known){failures}")
        context.log.info(f"adding contract partitions: {', '.join(new)}")
        return SensorResult(dynamic_partitions_requests=[DynamicPartitionsDefinition(name=CONTRACTS).build_add_request(new)])

    return contract_listings


def send_alert(message: str) -> None:
    """The one place failures are reported: the log, and PROJECTX_ALERT_WEBHOOK_URL when set."""
    log.error(kv("alert", message=message))
    url = os.environ.get("PROJECTX_ALERT_WEBHOOK_URL")
    if url:
        try:
            requests.post(url, json={"text": message}, timeout=5)
        except requests.RequestException as exc:
            log.warning(kv("alert_webhook_failed", error=type(exc).__name__))


@run_failure_sensor(
    name="run_failure_alert",
    default_status=DefaultSensorStatus.RUNNING,
    description="Every failed run reported in one place (log + optional webhook).",
)
def run_failure_alert(context: RunFailureSensorContext):
    run = context.dagster_run
    send_alert(f"run {run.run_id} of job {run.job_name} failed: {context.failure_event.message}")
