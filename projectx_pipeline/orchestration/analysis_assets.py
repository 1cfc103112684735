"""Analysis assets: trend starts per analysed timeframe, their multi-timeframe coordination, and
the job that materializes them.

* `trend_starts_<tf>` (one per timeframe of the `cus_cds_trend_finder` analyzer in the settings,
  e.g. `trend_starts_15m`) — the `detected_signals` rows of that timeframe, brought up to date by
  `analysis.trend_analysis.run_trend_analysis` for each contract of the run.
* `coordinated_signals` — the `coordinated_signals` rows, by `analysis.coordination_runner.run_coordination`,
  after the trend-start assets of the same run.

Why these assets are NOT partitioned. Trend-start detection is sequential per (contract,
timeframe): whether a bar confirms a start depends on state carried from every bar before it
(pending candidates, containment, the last emitted start), so a trade date cannot be analysed on
its own, and a backfill of trade-date partitions would have to run strictly in order anyway.
The natural unit of work is therefore the per-(analyzer, contract, timeframe) watermark in
`analyzer_watermarks`: each materialization processes exactly the bars after it (or recomputes
when stored bars behind it changed), which is cheap and idempotent. Partitioning by contract
would not fit either: the new-bar sensor launches one run per contract as bars land, a manual run
may want all contracts, and coordination of one contract needs all of that contract's
timeframes. So a run takes any set of series in its config: contract ids, and symbols for their
continuous front-month series (`contracts: []` = what is followed now: the explicit contracts and
each symbol's front month, or its continuous series with `analysis.series: continuous`,
`front_months.py`) and advisory locks in the database keep overlapping runs from processing a bar
or coordinating a signal twice.

Materialized by `analysis_job` (launched by the new-bar sensor with `AnalysisAssets.run_config([cid])`)
or by hand from the UI; automation conditions are deliberately not used. `build_analysis_assets`
makes all of them from the settings it is given.
"""

# No `from __future__ import annotations`: Dagster reads the Config and resource annotations at
# definition time, and string annotations of the factory-made functions would not resolve.

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSelection,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
    in_process_executor,
)

from ..analysis.coordination_runner import CoordinationResult, run_coordination
from ..analysis.trend_analysis import AnalysisResult, run_trend_analysis
from ..domain.coordination import parse_rules
from ..domain.series import SeriesId
from ..domain.timeframes import Timeframe
from ..domain.trend_starts import ANALYZER_ID
from ..logs import kv
from ..settings import Settings
from .front_months import FrontMonths
from .metadata import md_cell, md_table
from .partitions import CONTRACTS
from .resources import StorageResource

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

SIGNALS_GROUP = "signals"
LATEST_ROWS = 10


class AnalysisConfig(Config):
    """Which series a run analyses: contract ids (a month's own bars) and symbols (a symbol's
    continuous front-month series). Empty: what is followed now, as `analysis.series` says (the
    explicit contracts, and each symbol's front month or its continuous series). The field keeps
    its first name, `contracts`, so that runs launched before symbols existed re-execute."""

    contracts: list[str] = []


def analyzed_timeframes(settings: Settings) -> list[Timeframe]:
    """The timeframes of the `cus_cds_trend_finder` analyzer in the settings, shortest first."""
    unknown = [a.id for a in settings.file.analysis.analyzers if a.id != ANALYZER_ID]
    if unknown:
        raise ValueError(f"analysis.analyzers: unknown analyzer id(s) {unknown}: expected {ANALYZER_ID!r}")
    tfs = {tf for a in settings.file.analysis.analyzers for tf in a.timeframes}
    return sorted(tfs, key=lambda tf: tf.nominal_seconds)


def _series(context: AssetExecutionContext, config: AnalysisConfig, front_months: FrontMonths) -> tuple[list[str], dict[str, str]]:
    """The series of the run, and the error of each symbol whose front month is unknown (the
    others are analysed all the same; the run then fails naming it)."""
    unresolved: dict[str, str] = {}
    if config.contracts:
        requested = [SeriesId(c) for c in config.contracts]
    else:
        requested, unresolved = front_months.analysed_now(datetime.now(timezone.utc), context.instance.get_dynamic_partitions(CONTRACTS))
    out: list[str] = []
    for series in requested:
        if series not in out:
            out.append(series)
    # any month of a configured symbol is the settings' (a past front month, the next one, ...)
    unconfigured = [c for c in out if not front_months.is_configured(SeriesId(c))]
    if unconfigured:
        context.log.warning(kv("contracts_not_in_settings", contracts=",".join(unconfigured), action="analysed_anyway"))
    for symbol, why in unresolved.items():
        context.log.error(kv("analysis_symbol_unresolved", symbol=symbol, error=why))
    return out, unresolved


R = TypeVar("R", AnalysisResult, CoordinationResult)


def _run_per_contract(
    context: AssetExecutionContext,
    contract_ids: list[str],
    storage: StorageResource,
    event: str,
    run: Callable[[object, str], R],
    summary: Callable[[R], dict[str, object]],
    **fields: object,
) -> tuple[list[R], dict[str, str]]:
    """`run(conn, contract_id)` for each contract, each in its own transaction: the results, and
    the error of each contract that failed (one bad contract must not hold up the others).
    Logged as `<event>_done` with `fields` and `summary(result)`, or `<event>_failed`."""
    results: list[R] = []
    errors: dict[str, str] = {}
    for cid in contract_ids:
        try:
            with storage.connection() as conn:
                r = run(conn, cid)
        except Exception as exc:
            context.log.error(kv(f"{event}_failed", contract=cid, **fields, error=f"{type(exc).__name__}: {exc}"))
            errors[cid] = f"{type(exc).__name__}: {exc}"
            continue
        results.append(r)
        context.log.info(kv(f"{event}_done", contract=cid, **fields, **summary(r)))
    return results, errors


def _latest_rows(results: list[R], newest_first: Callable[[dict], Any]) -> list[dict]:
    """The LATEST_ROWS newest rows of every contract's `latest` frame together."""
    rows = (row for r in results for row in r.latest.to_dict("records"))
    return sorted(rows, key=newest_first, reverse=True)[:LATEST_ROWS]


def _materialized(metadata: dict, errors: dict[str, str]) -> MaterializeResult:
    """The materialization, or a Failure carrying the same metadata when any contract failed."""
    if errors:
        raise Failure(
            description="; ".join(f"{cid}: {msg}" for cid, msg in errors.items()),
            metadata={**metadata, "errors": MetadataValue.json(errors)},
        )
    return MaterializeResult(metadata=metadata)


_SIGNAL_TABLE_COLUMNS = ["contract_id", "timeframe", "type", "start_ts", "confirm_ts", "known_at", "price", "rule"]


def _trend_starts_asset(front_months: FrontMonths, tf: Timeframe) -> AssetsDefinition:
    @asset(
        name=f"trend_starts_{tf.label}",
        group_name=SIGNALS_GROUP,
        deps=["ohlc_bars", "historical_bars"],
        kinds={"postgres"},
        automation_condition=None,
        metadata={"table": "detected_signals", "analyzer": ANALYZER_ID, "timeframe": tf.label},
        description=f"Confirmed trend starts ({ANALYZER_ID}) on {tf.label} bars, per contract, incremental "
        "by watermark; recomputed when stored bars behind the watermark changed.",
    )
    def trend_starts(context: AssetExecutionContext, config: AnalysisConfig, storage: StorageResource) -> MaterializeResult:
        series, unresolved = _series(context, config, front_months)
        results, errors = _run_per_contract(
            context,
            series,
            storage,
            "trend_starts",
            lambda conn, cid: run_trend_analysis(conn, cid, tf, latest=LATEST_ROWS),
            lambda r: {
                "mode": r.mode,
                "bars": r.bars_processed,
                "new": r.new_signals,
                "deleted": r.deleted_signals,
                "total": r.total_signals,
                "last_bar": r.last_bar_ts,
            },
            timeframe=tf.label,
        )
        latest = _latest_rows(results, lambda row: (row["known_at"], row["start_ts"]))
        metadata = {
            "contracts": MetadataValue.json([r.contract_id for r in results]),
            "bars_processed": sum(r.bars_processed for r in results),
            "new_signals": sum(r.new_signals for r in results),
            "deleted_signals": sum(r.deleted_signals for r in results),
            "total_signals": sum(r.total_signals for r in results),
            "recomputed": MetadataValue.json([r.contract_id for r in results if r.recomputed]),
            "per_contract": MetadataValue.md(
                md_table(
                    [
                        {
                            "contract_id": r.contract_id,
                            "mode": r.mode,
                            "bars_processed": r.bars_processed,
                            "new_signals": r.new_signals,
                            "deleted_signals": r.deleted_signals,
                            "total_signals": r.total_signals,
                            "last_bar_ts": r.last_bar_ts,
                        }
                        for r in results
                    ],
                    ["contract_id", "mode", "bars_processed", "new_signals", "deleted_signals", "total_signals", "last_bar_ts"],
                )
            ),
            "latest_signals": MetadataValue.md(md_table(latest, _SIGNAL_TABLE_COLUMNS)),
        }
        return _materialized(metadata, {**unresolved, **errors})

    return trend_starts


_COORDINATED_TABLE_COLUMNS = [
    "contract_id",
    "label",
    "rule",
    "signal_ts",
    "anchor_timeframe",
    "anchor_known_at",
    "trigger_timeframe",
    "trigger_known_at",
    "anchor_signal_id",
    "trigger_signal_id",
]


def _coordinated_signals_asset(settings: Settings, front_months: FrontMonths, trend_starts: list[AssetsDefinition]) -> AssetsDefinition:
    rules = parse_rules(settings.file.coordination.rules)

    @asset(
        name="coordinated_signals",
        group_name=SIGNALS_GROUP,
        deps=[a.key for a in trend_starts],
        kinds={"postgres"},
        automation_condition=None,
        metadata={"table": "coordinated_signals", "rules": MetadataValue.json([r.name for r in rules])},
        description="Multi-timeframe coordinated signals (rules in the settings), from confirmation times "
        "only; incremental by coordinator watermark per rule and contract.",
    )
    def coordinated_signals(context: AssetExecutionContext, config: AnalysisConfig, storage: StorageResource) -> MaterializeResult:
        series, unresolved = _series(context, config, front_months)
        results, errors = _run_per_contract(
            context,
            series,
            storage,
            "coordination",
            lambda conn, cid: run_coordination(conn, cid, rules, latest=LATEST_ROWS),
            lambda r: {"new": r.new_outputs, "total": r.total_outputs, "watermarks": r.watermarks},
        )
        latest = _latest_rows(results, lambda row: row["signal_ts"])
        metadata = {
            "contracts": MetadataValue.json([r.contract_id for r in results]),
            "new_outputs": sum(r.new_outputs for r in results),
            "total_outputs": sum(r.total_outputs for r in results),
            "watermarks": MetadataValue.json({r.contract_id: {k: md_cell(v) for k, v in r.watermarks.items()} for r in results}),
            "latest_signals": MetadataValue.md(md_table(latest, _COORDINATED_TABLE_COLUMNS)),
        }
        return _materialized(metadata, {**unresolved, **errors})

    return coordinated_signals


@dataclass(frozen=True)
class AnalysisAssets:
    """The trend-start assets (one per analysed timeframe, shortest first), the coordination asset
    after them, and the job that runs them all."""

    trend_starts: list[AssetsDefinition]
    coordinated_signals: AssetsDefinition
    job: "UnresolvedAssetJobDefinition"

    @property
    def assets(self) -> list[AssetsDefinition]:
        return [*self.trend_starts, self.coordinated_signals]

    def run_config(self, series: list[str] | tuple[str, ...] = ()) -> dict:
        """Run config of the analysis job for these series, contract ids or symbols (empty: what is followed when it runs)."""
        ids = [SeriesId(c) for c in series]
        return {"ops": {a.op.name: {"config": {"contracts": list(ids)}} for a in self.assets}}


def build_analysis_assets(settings: Settings) -> AnalysisAssets:
    """The analysis assets and job for the analyzers, contracts and rules of `settings`."""
    front_months = FrontMonths.from_settings(settings)
    trend_starts = [_trend_starts_asset(front_months, tf) for tf in analyzed_timeframes(settings)]
    job = define_asset_job(
        "analysis_job",
        selection=AssetSelection.groups(SIGNALS_GROUP),
        # one process for the whole run: a process per step re-imports Dagster, pandas and numba for
        # each of the five steps, which alone took longer than the 30 s new-bar → signal budget
        executor_def=in_process_executor,
        description="Trend starts for every analysed timeframe, then coordination, for the contracts in the run config.",
    )
    return AnalysisAssets(trend_starts, _coordinated_signals_asset(settings, front_months, trend_starts), job)
