"""Session-aware freshness of the live bars: a check on `ohlc_bars`, its job and its schedule.

Dagster's own freshness policies count wall time, so they fail at every daily halt and all
weekend. This check counts open-market time instead (`domain/market_hours.py`, on the calendar
the gap check uses): quiet while the market is closed, failing once the market has been open
`freshness_fail_minutes` without a new bar for a configured contract.
"""

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NamedTuple

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetSelection,
    AssetSpec,
    Config,
    DefaultScheduleStatus,
    MetadataValue,
    ScheduleDefinition,
    asset_check,
    define_asset_job,
)
from pydantic import Field

from ..domain.market_hours import FeedFreshness, feed_freshness
from ..domain.timeframes import bar_end
from ..domain.timestamps import parse_iso_time
from ..settings import Settings
from ..storage.bars import last_bar_times
from .metadata import md_table
from .resources import StorageResource

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

LOOKBACK_CAP = timedelta(days=30)  # older data is judged from here: stale anyway if any session opened since
NEXT_OPEN_HORIZON = timedelta(days=10)  # long enough to find the next open across any holiday


class FreshnessCheckConfig(Config):
    as_of: str | None = Field(
        default=None, description="Judge the bars as of this ISO time with its offset (default: now), e.g. to review a past stall."
    )


class FreshnessDefinitions(NamedTuple):
    check: AssetChecksDefinition
    job: "UnresolvedAssetJobDefinition"
    schedule: ScheduleDefinition


def _parse_as_of(value: str | None) -> datetime:
    if value is None:
        return datetime.now(timezone.utc)
    return parse_iso_time(value, "as_of")


def evaluate_freshness(settings: Settings, conn, now: datetime) -> list[FeedFreshness]:
    """One verdict per configured contract at `now`, from the newest stored bar of the finest timeframe."""
    finest = min(settings.timeframes, key=lambda tf: tf.nominal_seconds)
    fail_after = timedelta(minutes=settings.file.dagster.freshness_fail_minutes)
    calendar = settings.session_calendar()
    verdicts = []
    for c in settings.file.contracts:
        last = last_bar_times(conn, c.id, [finest])[finest]
        through = bar_end(last, finest) if last is not None else None
        # sessions from the newest bar on (at most LOOKBACK_CAP back: older is stale all the same)
        start = min(max(through or now, now - LOOKBACK_CAP), now)
        sessions = calendar.sessions_between(start, now + NEXT_OPEN_HORIZON)
        verdicts.append(feed_freshness(c.id, through, now, sessions, fail_after))
    return verdicts


def build_freshness(settings: Settings, ohlc_bars: AssetSpec) -> FreshnessDefinitions:
    """The freshness check of `ohlc_bars`, a job that runs it and a schedule every five minutes."""

    @asset_check(
        asset=ohlc_bars.key,
        name="ohlc_bars_fresh",
        description=f"Live bars of every configured contract keep coming while the market is open: fails after "
        f"{settings.file.dagster.freshness_fail_minutes} open-market minutes without a bar (halts, weekends and holidays "
        f"don't count, per the {settings.file.dagster.gap_calendar} calendar).",
    )
    def ohlc_bars_fresh(context: AssetCheckExecutionContext, storage: StorageResource, config: FreshnessCheckConfig) -> AssetCheckResult:
        now = _parse_as_of(config.as_of)
        with storage.connection() as conn:
            verdicts = evaluate_freshness(settings, conn, now)
        stale = [v for v in verdicts if v.stale]
        for v in verdicts:
            (context.log.warning if v.stale else context.log.info)(v.describe())
        rows = [
            {
                "contract": v.contract_id,
                "bars_through": v.data_through,
                "open_minutes_without_bars": round(v.open_without_data.total_seconds() / 60, 1),
                "market": "open" if v.session_now is not None else "closed",
                "next_open": v.next_open if v.session_now is None else None,
                "verdict": "stale" if v.stale else "fresh",
            }
            for v in verdicts
        ]
        return AssetCheckResult(
            passed=not stale,
            severity=AssetCheckSeverity.ERROR,
            description="; ".join(v.describe() for v in (stale or verdicts)),
            metadata={
                "evaluated_at": MetadataValue.timestamp(now),
                "contracts_checked": len(verdicts),
                "stale_contracts": len(stale),
                "market_open": any(v.session_now is not None for v in verdicts),
                "contracts": MetadataValue.md(md_table(rows, list(rows[0]) if rows else [])),
            },
        )

    job = define_asset_job(
        "ohlc_bars_freshness_job",
        selection=AssetSelection.checks(ohlc_bars_fresh),
        description="Runs the session-aware freshness check of the live bars.",
    )
    schedule = ScheduleDefinition(
        name="ohlc_bars_freshness",
        job=job,
        cron_schedule="*/5 * * * *",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Every five minutes: are live bars arriving while the market is open?",
    )
    return FreshnessDefinitions(ohlc_bars_fresh, job, schedule)
