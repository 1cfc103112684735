"""When the market is open, and how long it has been open without data (pure rules).

A feed is judged by the market time that passed since its data, not by the wall time: over the
daily halt (17:00-18:00 New York), a weekend or an exchange holiday no bars are due, so a quiet
store then is healthy, while twenty open minutes without a bar is a stall. The sessions are the
caller's (`quality.sessions_from_calendar`, the calendar the gap check uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .errors import DomainError
from .quality import Session

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
