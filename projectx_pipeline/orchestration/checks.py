"""Checks on `historical_bars`, one evaluation per trade date × contract partition. Each names
the offending bars in its metadata."""

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetsDefinition,
    MetadataValue,
    MultiPartitionsDefinition,
    asset_check,
)

from ..domain.quality import find_gaps, reconcile, sessions_from_calendar, validate_bars
from ..domain.sessions import trade_date_session
from ..domain.timeframes import UNIT_DAY, Timeframe
from ..settings import Settings
from ..storage.bars import read_bars, read_live_versions
from .metadata import md_table
from .partitions import split_partition_key
from .resources import GatewayResource, StorageResource

MAX_LISTED = 50  # offending bars listed in metadata (all are counted)


def _stored_bars(storage: StorageResource, timeframes: list[Timeframe], contract_id: str, start, end) -> pd.DataFrame:
    with storage.connection() as conn:
        frames = [read_bars(conn, contract_id, tf, start, end) for tf in timeframes]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _table(df: pd.DataFrame) -> MetadataValue:
    shown = df.head(MAX_LISTED)
    return MetadataValue.md(md_table(shown.to_dict("records"), list(shown.columns)))


def build_bar_checks(settings: Settings, historical_bars: AssetsDefinition, partitions: MultiPartitionsDefinition) -> list[AssetChecksDefinition]:
    """The checks of `historical_bars` for the contracts, timeframes and calendar of `settings`."""

    @asset_check(
        asset=historical_bars,
        partitions_def=partitions,
        blocking=True,
        description="pandera: types, OHLC invariants, tick grid, non-negative volume, unique keys, ascending timestamps.",
    )
    def bars_valid(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
        trade_date, contract_id = split_partition_key(partitions, context.partition_key)
        start, end = trade_date_session(trade_date)
        bars = _stored_bars(storage, settings.timeframes, contract_id, start, end)
        problems = validate_bars(bars, settings.tick_size(contract_id)) if not bars.empty else pd.DataFrame()
        return AssetCheckResult(
            passed=problems.empty,
            severity=AssetCheckSeverity.ERROR,
            metadata={"bars_checked": len(bars), "violations": len(problems), "offending_bars": _table(problems)},
        )

    @asset_check(
        asset=historical_bars,
        partitions_def=partitions,
        description="Missing bars inside the session per the CME Globex equity calendar (halt, weekends, holidays excluded).",
    )
    def bars_gaps(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
        trade_date, contract_id = split_partition_key(partitions, context.partition_key)
        start, end = trade_date_session(trade_date)
        sessions = sessions_from_calendar(settings.file.dagster.gap_calendar, trade_date, trade_date, settings.file.dagster.closed_dates)
        bars = _stored_bars(storage, settings.timeframes, contract_id, start, end)
        missing: dict[str, list[str]] = {}
        for tf in settings.timeframes:
            if tf.unit > UNIT_DAY:
                continue
            series = (
                bars[(bars.timeframe_unit == tf.unit) & (bars.timeframe_value == tf.value)]
                if not bars.empty
                else pd.DataFrame({"timestamp": pd.DatetimeIndex([], tz="UTC")})
            )
            gaps = find_gaps(series, tf, sessions)
            if len(gaps):
                missing[tf.label] = [t.isoformat() for t in gaps]
        total = sum(len(v) for v in missing.values())
        listed = pd.DataFrame([{"timeframe": k, "missing_bar": t} for k, v in missing.items() for t in v])
        return AssetCheckResult(
            passed=total == 0,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "trading_session": MetadataValue.text(
                    "closed (holiday/weekend)" if not sessions else f"{sessions[0].open.isoformat()} → {sessions[0].close.isoformat()}"
                ),
                "missing_bars": total,
                "missing_per_timeframe": MetadataValue.json({k: len(v) for k, v in missing.items()}),
                "offending_bars": _table(listed),
            },
        )

    @asset_check(
        asset=historical_bars,
        partitions_def=partitions,
        additional_deps=["ohlc_bars"],
        description="Bars built live vs the gateway's history for the same windows; fails above the configured tolerance.",
    )
    def bars_reconciled(context: AssetCheckExecutionContext, storage: StorageResource, gateway: GatewayResource) -> AssetCheckResult:
        trade_date, contract_id = split_partition_key(partitions, context.partition_key)
        start, end = trade_date_session(trade_date)
        with storage.connection() as conn:
            live = read_live_versions(conn, contract_id, start, end)
        differences = pd.DataFrame()
        compared = 0
        if not live.empty:
            history = []
            for tf in settings.timeframes:
                tf_live = live[(live.timeframe_unit == tf.unit) & (live.timeframe_value == tf.value)]
                if tf_live.empty:
                    continue
                hist = gateway.client.retrieve_bars(contract_id, tf, start, end)
                history.append(hist[hist["timestamp"].isin(tf_live["timestamp"])])  # only windows built live
                compared += len(tf_live)
            differences = reconcile(live, pd.concat(history, ignore_index=True)) if history else pd.DataFrame()
        n_bars = differences[["timeframe_unit", "timeframe_value", "timestamp"]].drop_duplicates().shape[0] if not differences.empty else 0
        tolerance = settings.file.dagster.reconciliation_tolerance
        return AssetCheckResult(
            passed=n_bars <= tolerance,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "live_bars_compared": compared,
                "differing_bars": n_bars,
                "tolerance": tolerance,
                "differences": _table(differences.assign(timestamp=differences["timestamp"].astype(str)) if not differences.empty else differences),
            },
        )

    return [bars_valid, bars_gaps, bars_reconciled]
