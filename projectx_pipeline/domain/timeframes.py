"""Timeframes and bar alignment (CME sessions: `sessions`; contract ids: `contracts`).

Pure domain code (no I/O), shared by the simulator, the live aggregator, the backfill and
the checks, so that every part of the platform labels a bar the same way as the gateway:

* every bar is labelled with its start time in UTC;
* second and minute bars are aligned to the UTC clock;
* hour bars are anchored at the session open, 18:00 America/New_York (for 1h this is the
  same as the UTC clock, because New York's offset is a whole number of hours; for 4h it
  gives 22:00, 02:00, ... UTC in summer and 23:00, 03:00, ... in winter);
* daily bars are CME trade dates: the session of trade date D runs from 18:00 New York on
  D-1 to 17:00 New York on D and its bar is labelled D 00:00 UTC;
* weekly and monthly alignment is unconfirmed by the gateway: a week is the trade dates
  Monday..Friday labelled with its Monday, a month the trade dates of a calendar month
  labelled with its first day.

Daylight saving is handled by the time-zone database, never by fixed offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np

from .errors import DomainError
from .sessions import session_open_for, session_opens_ns, trade_date_of, trade_date_session
from .timestamps import NS_PER_DAY, NS_PER_SECOND, from_ns, to_ns, utc

UNIT_SECOND, UNIT_MINUTE, UNIT_HOUR, UNIT_DAY, UNIT_WEEK, UNIT_MONTH = 1, 2, 3, 4, 5, 6
_UNIT_SUFFIX = {UNIT_SECOND: "s", UNIT_MINUTE: "m", UNIT_HOUR: "h", UNIT_DAY: "d", UNIT_WEEK: "w", UNIT_MONTH: "mo"}
_SUFFIX_UNIT = {v: k for k, v in _UNIT_SUFFIX.items()}
_UNIT_SECONDS = {UNIT_SECOND: 1, UNIT_MINUTE: 60, UNIT_HOUR: 3600}
_TIMEFRAME_RE = re.compile(r"^([1-9][0-9]{0,3})(s|m|h|d|w|mo)$")


@dataclass(frozen=True, order=True)
class Timeframe:
    """A bar size as the gateway counts it: `unit` (1 s, 2 min, 3 h, 4 day, 5 week, 6 month) × `value`."""

    unit: int
    value: int

    def __post_init__(self) -> None:
        if self.unit not in _UNIT_SUFFIX:
            raise DomainError(f"invalid timeframe unit {self.unit!r}: expected one of 1..6 (s, m, h, d, w, mo)")
        if not isinstance(self.value, int) or isinstance(self.value, bool) or not 1 <= self.value <= 9999:
            raise DomainError(f"invalid timeframe value {self.value!r}: expected an integer from 1 to 9999")
        if self.unit >= UNIT_DAY and self.value != 1:
            raise DomainError(f"unsupported timeframe {self.value}{_UNIT_SUFFIX[self.unit]}: day, week and month bars take value 1")
        if self.unit in (UNIT_SECOND, UNIT_MINUTE) and 86_400 % (self.value * _UNIT_SECONDS[self.unit]) != 0:
            raise DomainError(f"unsupported timeframe {self.label}: second and minute bars must divide a day evenly")

    @property
    def label(self) -> str:
        return f"{self.value}{_UNIT_SUFFIX[self.unit]}"

    def __str__(self) -> str:
        return self.label

    @property
    def is_clock_aligned(self) -> bool:
        """Second and minute bars: aligned to the UTC clock, fixed length."""
        return self.unit in (UNIT_SECOND, UNIT_MINUTE)

    @property
    def step_ns(self) -> int | None:
        """Nominal length in ns for second/minute/hour bars; None for calendar bars."""
        if self.unit in _UNIT_SECONDS:
            return self.value * _UNIT_SECONDS[self.unit] * NS_PER_SECOND
        return None

    @property
    def nominal_seconds(self) -> int:
        """Approximate length, for ordering and sizing (a day is 86,400 s, a week 7 days, a month 31 days)."""
        if self.unit in _UNIT_SECONDS:
            return self.value * _UNIT_SECONDS[self.unit]
        return {UNIT_DAY: 86_400, UNIT_WEEK: 7 * 86_400, UNIT_MONTH: 31 * 86_400}[self.unit]


def parse_timeframe(text: object) -> Timeframe:
    if isinstance(text, Timeframe):
        return text
    if not isinstance(text, str):
        raise DomainError(f"invalid timeframe {text!r}: expected a string such as 1m, 5m, 4h, 1d")
    m = _TIMEFRAME_RE.fullmatch(text.strip())
    if not m:
        raise DomainError(f"invalid timeframe {text!r}: expected <number><unit> with unit s, m, h, d, w or mo (e.g. 5m, 4h, 1d)")
    return Timeframe(_SUFFIX_UNIT[m.group(2)], int(m.group(1)))


def parse_timeframes(text: object) -> list[Timeframe]:
    """The one parser of a timeframe list ("1m,5m,1h" or a list of labels/Timeframes): at least one,
    each once (a repeated timeframe is a mistake worth naming), sorted shortest first."""
    try:
        items = text.split(",") if isinstance(text, str) else list(text)  # type: ignore[call-overload]
    except TypeError:
        raise DomainError(f"invalid timeframes {text!r}: expected a list such as 1m,5m,1h") from None
    tfs = [parse_timeframe(t) for t in items if not (isinstance(t, str) and not t.strip())]
    if not tfs:
        raise DomainError(f"invalid timeframes {text!r}: expected at least one, e.g. 1m,5m,1h")
    repeated = sorted({tf.label for tf in tfs if tfs.count(tf) > 1})
    if repeated:
        raise DomainError(f"invalid timeframes {text!r}: {', '.join(repeated)} given more than once, expected each timeframe once")
    return sorted(tfs, key=lambda t: t.nominal_seconds)


DEFAULT_TIMEFRAMES = tuple(parse_timeframe(t) for t in ("1m", "5m", "15m", "1h", "4h", "1d"))


def _midnight_utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def _calendar_label(trade_date: date, tf: Timeframe) -> date:
    if tf.unit == UNIT_DAY:
        return trade_date
    if tf.unit == UNIT_WEEK:
        return trade_date - timedelta(days=trade_date.weekday())
    return trade_date.replace(day=1)


def bar_start(ts: datetime, tf: Timeframe) -> datetime:
    """Start (the label) of the bar of timeframe `tf` that contains instant `ts`, in UTC."""
    ts = utc(ts)
    if tf.is_clock_aligned:
        ns = to_ns(ts)
        step_ns = tf.step_ns
        assert step_ns is not None  # clock-aligned (second and minute) bars have a fixed length
        return from_ns(ns - ns % step_ns)
    if tf.unit == UNIT_HOUR:
        open_ = session_open_for(ts)
        step = timedelta(hours=tf.value)
        return open_ + ((ts - open_) // step) * step
    return _midnight_utc(_calendar_label(trade_date_of(ts), tf))


def bar_end(start: datetime, tf: Timeframe) -> datetime:
    """End of the window that starts at `start`: when it may be closed (before the grace period).

    Session-anchored bars end at the session close at the latest (17:00 New York), so the last
    4h bar of a session and the daily bar close with the session, not at the next open."""
    start = utc(start)
    if tf.is_clock_aligned:
        return start + timedelta(seconds=tf.nominal_seconds)
    if tf.unit == UNIT_HOUR:
        _, close = trade_date_session(trade_date_of(start))
        return min(start + timedelta(hours=tf.value), close)
    d = start.date()
    if tf.unit == UNIT_DAY:
        last = d
    elif tf.unit == UNIT_WEEK:
        last = d + timedelta(days=6)
    else:
        last = (d.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    return trade_date_session(last)[1]


# --------------------------------------------------------------------------- vectorized


def bar_starts_ns(ts_ns: np.ndarray, tf: Timeframe) -> np.ndarray:
    """Vectorized `bar_start` on int64 ns since the epoch; identical results (property-tested)."""
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    if ts_ns.size == 0:
        return ts_ns.copy()
    if tf.is_clock_aligned:
        return ts_ns - ts_ns % tf.step_ns
    opens, open_day = session_opens_ns(ts_ns)
    if tf.unit == UNIT_HOUR:
        step = tf.step_ns
        return opens + (ts_ns - opens) // step * step
    trade_day = open_day + 1  # days since epoch of the trade date
    if tf.unit == UNIT_DAY:
        return trade_day * NS_PER_DAY
    if tf.unit == UNIT_WEEK:
        # 1970-01-01 was a Thursday: weekday (Mon=0) = (day + 3) % 7
        return (trade_day - (trade_day + 3) % 7) * NS_PER_DAY
    days = trade_day.astype("datetime64[D]")
    return days.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) * NS_PER_DAY
