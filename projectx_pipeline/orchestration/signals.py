"""Signal assets: trend starts per analysed timeframe, and their multi-timeframe coordination.

* `trend_starts_<tf>` (one per timeframe of the `cus_cds_trend_finder` analyzer in the settings,
  e.g. `trend_starts_15m`) — the `detected_signals` rows of that timeframe, brought up to date by
  `signals.analysis.run_trend_analysis` for each contract of the run.
* `coordinated_signals` — the `coordinated_signals` rows, by `signals.analysis.run_coordination`,
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
timeframes. So a run takes any set of contracts in its config (`contracts: []` = every
configured contract) and advisory locks in the database keep overlapping runs from processing a
bar or coordinating a signal twice.

Materialized by `analysis_job` (launched by the new-bar sensor with `analysis_run_config([cid])`)
or by hand from the UI; automation conditions are deliberately not used.
"""

# No `from __future__ import annotations`: Dagster reads the Config and resource annotations at
# definition time, and string annotations of the factory-made functions would not resolve.

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
    in_process_executor,
)

from ..domain.coordination import parse_rules
from ..domain.timeframes import Timeframe, validate_contract_id
from ..domain.trend_starts import ANALYZER_ID
from ..analysis.coordination_runner import CoordinationResult, run_coordination
from ..analysis.trend_analysis import AnalysisResult, run_trend_analysis
from .assets import settings
from .resources import StorageResource

SIGNALS_GROUP = "signals"
LATEST_ROWS = 10


class AnalysisConfig(Config):
    """Which contracts a run analyses; empty means every configured contract."""

    contracts: list[str] = []


def analyzed_timeframes() -> list[Timeframe]:
    """The timeframes of the `cus_cds_trend_finder` analyzer in the settings, shortest first."""
    unknown = [a.id for a in settings.file.analysis.analyzers if a.id != ANALYZER_ID]
    if unknown:
        raise ValueError(f"analysis.analyzers: unknown analyzer id(s) {unknown}: expected {ANALYZER_ID!r}")
    tfs = {tf for a in settings.file.analysis.analyzers for tf in a.timeframes}
    return sorted(tfs, key=lambda tf: tf.nominal_seconds)


def _contracts(context: AssetExecutionContext, config: AnalysisConfig) -> list[str]:
    requested = config.contracts or settings.contract_ids
    out: list[str] = []
    for cid in requested:
        validate_contract_id(cid)
        if cid not in out:
            out.append(cid)
    unconfigured = [c for c in out if c not in settings.contract_ids]
    if unconfigured:
        context.log.warning(f"contracts {unconfigured} are not in the settings; analysing them anyway")
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return repr(value)
    return str(value).replace("|", "\\|")


def _md_table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _fail_if_any(errors: dict[str, str], metadata: dict) -> None:
    if errors:
        raise Failure(
            description="; ".join(f"{cid}: {msg}" for cid, msg in errors.items()),
            metadata={**metadata, "errors": MetadataValue.json(errors)},
        )


_SIGNAL_TABLE_COLUMNS = ["contract_id", "timeframe", "type", "start_ts", "confirm_ts", "known_at", "price", "rule"]


def _trend_starts_asset(tf: Timeframe) -> AssetsDefinition:
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
        results: list[AnalysisResult] = []
        errors: dict[str, str] = {}
        for cid in _contracts(context, config):
            try:
                with storage.connection() as conn:
                    r = run_trend_analysis(conn, cid, tf, latest=LATEST_ROWS)
            except Exception as exc:  # one bad contract must not hold up the others
                context.log.error(f"trend starts {tf.label} {cid} failed: {type(exc).__name__}: {exc}")
                errors[cid] = f"{type(exc).__name__}: {exc}"
                continue
            results.append(r)
            context.log.info(
                f"trend starts {tf.label} {cid}: mode={r.mode} bars={r.bars_processed} new={r.new_signals} "
                f"deleted={r.deleted_signals} total={r.total_signals} last_bar={r.last_bar_ts}"
            )
        latest = sorted(
            (row for r in results for row in r.latest.to_dict("records")),
            key=lambda row: (row["known_at"], row["start_ts"]),
            reverse=True,
        )[:LATEST_ROWS]
        metadata = {
            "contracts": MetadataValue.json([r.contract_id for r in results]),
            "bars_processed": sum(r.bars_processed for r in results),
            "new_signals": sum(r.new_signals for r in results),
            "deleted_signals": sum(r.deleted_signals for r in results),
            "total_signals": sum(r.total_signals for r in results),
            "recomputed": MetadataValue.json([r.contract_id for r in results if r.recomputed]),
            "per_contract": MetadataValue.md(
                _md_table(
                    [
                        {"contract_id": r.contract_id, "mode": r.mode, "bars_processed": r.bars_processed,
                         "new_signals": r.new_signals, "deleted_signals": r.deleted_signals,
                         "total_signals": r.total_signals, "last_bar_ts": r.last_bar_ts}
                        for r in results
                    ],
                    ["contract_id", "mode", "bars_processed", "new_signals", "deleted_signals", "total_signals", "last_bar_ts"],
                )
            ),
            "latest_signals": MetadataValue.md(_md_table(latest, _SIGNAL_TABLE_COLUMNS)),
        }
        _fail_if_any(errors, metadata)
        return MaterializeResult(metadata=metadata)

    return trend_starts


signal_assets: list[AssetsDefinition] = [_trend_starts_asset(tf) for tf in analyzed_timeframes()]
COORDINATION_RULES = parse_rules(settings.file.coordination.rules)

_COORDINATED_TABLE_COLUMNS = [
    "contract_id", "label", "rule", "signal_ts", "anchor_timeframe", "anchor_known_at",
    "trigger_timeframe", "trigger_known_at", "anchor_signal_id", "trigger_signal_id",
]


@asset(
    name="coordinated_signals",
    group_name=SIGNALS_GROUP,
    deps=[a.key for a in signal_assets],
    kinds={"postgres"},
    automation_condition=None,
    metadata={"table": "coordinated_signals", "rules": MetadataValue.json([r.name for r in COORDINATION_RULES])},
    description="Multi-timeframe coordinated signals (rules in the settings), from confirmation times "
    "only; incremental by coordinator watermark per rule and contract.",
)
def coordinated_signals(context: AssetExecutionContext, config: AnalysisConfig, storage: StorageResource) -> MaterializeResult:
    results: list[CoordinationResult] = []
    errors: dict[str, str] = {}
    for cid in _contracts(context, config):
        try:
            with storage.connection() as conn:
                r = run_coordination(conn, cid, COORDINATION_RULES, latest=LATEST_ROWS)
        except Exception as exc:
            context.log.error(f"coordination {cid} failed: {type(exc).__name__}: {exc}")
            errors[cid] = f"{type(exc).__name__}: {exc}"
            continue
        results.append(r)
        context.log.info(f"coordination {cid}: new={r.new_outputs} total={r.total_outputs} watermarks={r.watermarks}")
    latest = sorted(
        (row for r in results for row in r.latest.to_dict("records")),
        key=lambda row: row["signal_ts"],
        reverse=True,
    )[:LATEST_ROWS]
    metadata = {
        "contracts": MetadataValue.json([r.contract_id for r in results]),
        "new_outputs": sum(r.new_outputs for r in results),
        "total_outputs": sum(r.total_outputs for r in results),
        "watermarks": MetadataValue.json(
            {r.contract_id: {k: _cell(v) for k, v in r.watermarks.items()} for r in results}
        ),
        "latest_signals": MetadataValue.md(_md_table(latest, _COORDINATED_TABLE_COLUMNS)),
    }
    _fail_if_any(errors, metadata)
    return MaterializeResult(metadata=metadata)


ANALYSIS_ASSETS: list[AssetsDefinition] = [*signal_assets, coordinated_signals]

analysis_job = define_asset_job(
    "analysis_job",
    selection=AssetSelection.groups(SIGNALS_GROUP),
    # one process for the whole run: a process per step re-imports Dagster, pandas and numba for
    # each of the five steps, which alone took longer than the 30 s new-bar → signal budget
    executor_def=in_process_executor,
    description="Trend starts for every analysed timeframe, then coordination, for the contracts in the run config.",
)


def analysis_run_config(contracts: list[str] | tuple[str, ...] = ()) -> dict:
    """Run config of `analysis_job` for these contracts (empty: every configured contract)."""
    ids = [validate_contract_id(c) for c in contracts]
    return {"ops": {a.op.name: {"config": {"contracts": list(ids)}} for a in ANALYSIS_ASSETS}}
