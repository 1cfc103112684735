"""Session-aware freshness of the live bars: a check on `ohlc_bars`, its job and its schedule.

Dagster's own freshness policies count wall time, so they fail at every daily halt and all
weekend. This check counts open-market time instead (`domain/market_hours.py`, on the calendar
the gap check uses): quiet while the market is closed, failing once the market has been open
`freshness_fail_minutes` without a new bar for a followed contract.

Followed at the time of the check: the explicit contracts and each symbol's front month then
(`front_months.py`, over the contract partitions). A month that has rolled is never judged (its
feed ends at the roll, so it would be stale forever), and a symbol with no front month among the
known months fails the check by name rather than leaving nothing to judge.
"""

from dataclasses import dataclass
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
from .front_months import Followed, FrontMonths
from .metadata import md_table
from .partitions import CONTRACTS
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


@dataclass(frozen=True)
class SymbolWithoutFrontMonth:
    """A followed symbol none of whose known months is its front month at `now`: always a failure."""

    symbol: str
    reason: str

    def describe(self) -> str:
        return f"{self.symbol}: {self.reason}"


@dataclass(frozen=True)
class FreshnessReport:
    verdicts: list[FeedFreshness]  # one per followed contract
    unresolved: list[SymbolWithoutFrontMonth]

    @property
    def failures(self) -> list[FeedFreshness | SymbolWithoutFrontMonth]:
        return [*self.unresolved, *(v for v in self.verdicts if v.stale)]


def evaluate_freshness(settings: Settings, conn, now: datetime, followed: Followed) -> FreshnessReport:
    """One verdict per contract of `followed` (what is followed at `now`), from the newest stored
    bar of the finest timeframe; each symbol `followed` could not resolve is a failure."""
    finest = min(settings.timeframes, key=lambda tf: tf.nominal_seconds)
    fail_after = timedelta(minutes=settings.file.dagster.freshness_fail_minutes)
    calendar = settings.session_calendar()
    verdicts = []
    for cid in followed.contracts:
        last = last_bar_times(conn, cid, [finest])[finest]
        through = bar_end(last, finest) if last is not None else None
        # sessions from the newest bar on (at most LOOKBACK_CAP back: older is stale all the same)
        start = min(max(through or now, now - LOOKBACK_CAP), now)
        sessions = calendar.sessions_between(start, now + NEXT_OPEN_HORIZON)
        verdicts.append(feed_freshness(cid, through, now, sessions, fail_after))
    return FreshnessReport(verdicts, [SymbolWithoutFrontMonth(s, why) for s, why in followed.unresolved.items()])


def build_freshness(settings: Settings, ohlc_bars: AssetSpec) -> FreshnessDefinitions:
    """The freshness check of `ohlc_bars`, a job that runs it and a schedule every five minutes."""
    front_months = FrontMonths.from_settings(settings)

    @asset_check(
        asset=ohlc_bars.key,
        name="ohlc_bars_fresh",
        description=f"Live bars of every followed contract (explicit contracts, each symbol's front month) keep coming "
        f"while the market is open: fails after {settings.file.dagster.freshness_fail_minutes} open-market minutes without "
        f"a bar (halts, weekends and holidays don't count, per the {settings.file.dagster.gap_calendar} calendar), and "
        "for a symbol without a known front month.",
    )
    def ohlc_bars_fresh(context: AssetCheckExecutionContext, storage: StorageResource, config: FreshnessCheckConfig) -> AssetCheckResult:
        now = _parse_as_of(config.as_of)
        with storage.connection() as conn:
            followed = front_months.followed_now(now, context.instance.get_dynamic_partitions(CONTRACTS))
            report = evaluate_freshness(settings, conn, now, followed)
        verdicts, failures = report.verdicts, report.failures
        for u in report.unresolved:
            context.log.warning(u.describe())
        for v in verdicts:
            (context.log.warning if v.stale else context.log.info)(v.describe())
        rows = [
            {
                "contract": u.symbol,
                "bars_through": None,
                "open_minutes_without_bars": None,
                "market": None,
                "next_open": None,
                "verdict": "no front month",
            }
            for u in report.unresolved
        ] + [
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
            # never passing on nothing: the settings name at least one contract or symbol, and a
            # symbol without a front month is a failure of its own
            passed=not failures and bool(verdicts),
            severity=AssetCheckSeverity.ERROR,
            description="; ".join(f.describe() for f in (failures or verdicts)),
            metadata={
                "evaluated_at": MetadataValue.timestamp(now),
                "contracts_checked": len(verdicts),
                "stale_contracts": sum(v.stale for v in verdicts),
                "symbols_without_front_month": MetadataValue.json(sorted(u.symbol for u in report.unresolved)),
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
