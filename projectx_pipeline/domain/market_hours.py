"""When the market is open, and how long it has been open without data (pure rules).

A feed is judged by the market time that passed since its data, not by the wall time: over the
daily halt (17:00-18:00 New York), a weekend or an exchange holiday no bars are due, so a quiet
store then is healthy, while twenty open minutes without a bar is a stall. The sessions are the
caller's (`quality.sessions_from_calendar`, the calendar the gap check uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

from .errors import DomainError
from .quality import Session, sessions_from_calendar

_ZERO = timedelta(0)


def _aware(ts: datetime, name: str) -> datetime:
    if ts.tzinfo is None:
        raise DomainError(f"invalid {name} {ts.isoformat()}: expected a time with its UTC offset")
    return ts


def _utc(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat()


def open_time_between(sessions: Sequence[Session], start: datetime, end: datetime) -> timedelta:
    """How long the market was open in [start, end)."""
    start, end = _aware(start, "start"), _aware(end, "end")
    total = _ZERO
    for s in sessions:
        lo, hi = max(s.open, start), min(s.close, end)
        if hi > lo:
            total += hi - lo
    return total


def session_at(sessions: Sequence[Session], at: datetime) -> Session | None:
    """The session open at `at` (open ≤ at < close), if any."""
    _aware(at, "time")
    return next((s for s in sessions if s.open <= at < s.close), None)


def next_open(sessions: Sequence[Session], at: datetime) -> datetime | None:
    """The first session open after `at` among `sessions` (None past the last one given)."""
    _aware(at, "time")
    return min((s.open for s in sessions if s.open > at), default=None)


@dataclass(frozen=True)
class FeedFreshness:
    """What a freshness evaluation of one contract's stored bars saw."""

    contract_id: str
    data_through: datetime | None  # the end of the newest stored bar; None: nothing stored
    now: datetime
    open_without_data: timedelta  # market-open time in [data_through, now)
    fail_after: timedelta
    session_now: Session | None
    next_open: datetime | None

    @property
    def stale(self) -> bool:
        return self.data_through is None or self.open_without_data > self.fail_after

    def describe(self) -> str:
        market = (
            f"open (session of {self.session_now.trade_date.isoformat()})"
            if self.session_now is not None
            else "closed" + (f" until {_utc(self.next_open)}" if self.next_open else "")
        )
        if self.data_through is None:
            return f"{self.contract_id}: no bars stored; the market is {market}"
        minutes = self.open_without_data.total_seconds() / 60
        verdict = "stale" if self.stale else "fresh"
        return (
            f"{self.contract_id}: {verdict}: bars through {_utc(self.data_through)}, {minutes:.0f} open-market minutes"
            f" without bars since (fails after {self.fail_after.total_seconds() / 60:.0f}); the market is {market}"
        )


def feed_freshness(
    contract_id: str, data_through: datetime | None, now: datetime, sessions: Sequence[Session], fail_after: timedelta
) -> FeedFreshness:
    """Judge one contract's bars at `now`: stale when nothing is stored, or when the market has
    been open longer than `fail_after` since the end of the newest bar. `sessions` must cover
    [data_through, now] and the next open after `now`."""
    now = _aware(now, "now")
    if fail_after <= _ZERO:
        raise DomainError(f"invalid fail_after {fail_after}: expected a positive duration")
    if data_through is not None:
        _aware(data_through, "data_through")
    elapsed = open_time_between(sessions, data_through, now) if data_through is not None and data_through < now else _ZERO
    return FeedFreshness(contract_id, data_through, now, elapsed, fail_after, session_at(sessions, now), next_open(sessions, now))


class SessionCalendar:
    """The sessions of a `pandas_market_calendars` calendar minus `closed_dates`, computed in
    blocks of four weeks and kept: the daemon asks every second, the library takes milliseconds."""

    BLOCK_DAYS = 28

    def __init__(self, name: str, closed_dates: Sequence[date] = ()):
        self.name = name
        self.closed_dates = tuple(closed_dates)
        self._blocks: dict[int, list[Session]] = {}

    def sessions_between(self, start: datetime, end: datetime) -> list[Session]:
        """Every session that overlaps [start, end], in time order."""
        start, end = _aware(start, "start"), _aware(end, "end")
        first = (start.astimezone(timezone.utc).date() - timedelta(days=1)).toordinal() // self.BLOCK_DAYS
        last = (end.astimezone(timezone.utc).date() + timedelta(days=1)).toordinal() // self.BLOCK_DAYS
        out: list[Session] = []
        for block in range(first, last + 1):
            if block not in self._blocks:
                lo = date.fromordinal(block * self.BLOCK_DAYS)
                self._blocks[block] = sessions_from_calendar(self.name, lo, lo + timedelta(days=self.BLOCK_DAYS - 1), self.closed_dates)
            out += [s for s in self._blocks[block] if s.close > start and s.open <= end]
        return out


STOCK_MARKET_CALENDAR = "NYSE"  # the days an equity-index future can expire (its index is computed)


class CalendarDays:
    """Is `name`'s exchange open on a date? (a rolls.ExchangeDays), from pandas_market_calendars,
    a decade computed at a time and kept (one library call costs about as much for ten years as
    for one, a quarter of a second)."""

    YEARS_PER_BLOCK = 10

    def __init__(self, name: str = STOCK_MARKET_CALENDAR):
        self.name = name
        self._blocks: dict[int, frozenset[date]] = {}

    def __call__(self, d: date) -> bool:
        block = d.year // self.YEARS_PER_BLOCK
        if block not in self._blocks:
            import pandas_market_calendars as mcal

            first, last = block * self.YEARS_PER_BLOCK, block * self.YEARS_PER_BLOCK + self.YEARS_PER_BLOCK - 1
            days = mcal.get_calendar(self.name).valid_days(start_date=f"{first}-01-01", end_date=f"{last}-12-31")
            self._blocks[block] = frozenset(ts.date() for ts in days)
        return d in self._blocks[block]


@dataclass(frozen=True)
class StallEvent:
    kind: Literal["stalled", "resumed"]
    open_without_trades: timedelta  # market-open time since the last trade (for "resumed": the stall's)


@dataclass
class StallWatch:
    """One contract's live feed against the calendar. `observe(last_trade, now)` reports a stall
    once the market has been open for `stall_after` since the last trade, again after each further
    `stall_after` of open market while it lasts, and its end when a newer trade arrives."""

    calendar: SessionCalendar
    stall_after: timedelta
    stalled_since: datetime | None = None  # the last trade before the current stall; None: no stall
    _reported_at: datetime | None = None

    def observe(self, last_trade: datetime, now: datetime) -> StallEvent | None:
        if self.stalled_since is not None and last_trade > self.stalled_since:
            sessions = self.calendar.sessions_between(self.stalled_since, last_trade)
            event = StallEvent("resumed", open_time_between(sessions, self.stalled_since, last_trade))
            self.stalled_since = self._reported_at = None
            return event
        since = self._reported_at or last_trade
        if now <= since:
            return None
        sessions = self.calendar.sessions_between(last_trade, now)
        if open_time_between(sessions, since, now) <= self.stall_after:
            return None
        self.stalled_since, self._reported_at = last_trade, now
        return StallEvent("stalled", open_time_between(sessions, last_trade, now))
