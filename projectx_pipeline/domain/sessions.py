"""CME sessions: the session of trade date D runs from 18:00 America/New_York on D-1 to 17:00
on D. Daylight saving is handled by the time-zone database, never by fixed offsets. Pure."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from .timestamps import NS_PER_DAY, to_ns, utc

NEW_YORK = ZoneInfo("America/New_York")
SESSION_OPEN_LOCAL = time(18, 0)
SESSION_CLOSE_LOCAL = time(17, 0)


def session_open_for(ts: datetime) -> datetime:
    """UTC start of the CME session containing `ts` (the latest 18:00 New York at or before it)."""
    local = utc(ts).astimezone(NEW_YORK)
    d = local.date() if local.time() >= SESSION_OPEN_LOCAL else local.date() - timedelta(days=1)
    return _session_open_of_calendar_date(d)


@lru_cache(maxsize=8192)
def _session_open_of_calendar_date(d: date) -> datetime:
    return datetime.combine(d, SESSION_OPEN_LOCAL, NEW_YORK).astimezone(timezone.utc)


def trade_date_of(ts: datetime) -> date:
    """CME trade date of an instant: the session that opens at 18:00 New York on D-1 is trade date D."""
    local = utc(ts).astimezone(NEW_YORK)
    return local.date() + timedelta(days=1) if local.time() >= SESSION_OPEN_LOCAL else local.date()


def trade_date_session(trade_date: date) -> tuple[datetime, datetime]:
    """UTC (open, close) of the session of `trade_date`: 18:00 New York on the day before to 17:00 on the day."""
    open_ = _session_open_of_calendar_date(trade_date - timedelta(days=1))
    close = datetime.combine(trade_date, SESSION_CLOSE_LOCAL, NEW_YORK).astimezone(timezone.utc)
    return open_, close


@lru_cache(maxsize=256)
def _session_open_table(first_day: int, last_day: int) -> np.ndarray:
    """UTC ns of 18:00 New York for every calendar day (days since epoch) in [first_day, last_day]."""
    epoch = date(1970, 1, 1)
    return np.array(
        [to_ns(_session_open_of_calendar_date(epoch + timedelta(days=d))) for d in range(first_day, last_day + 1)],
        dtype=np.int64,
    )


def session_opens_ns(ts_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each ts: (UTC ns of its session open, calendar day number (since epoch) of that open)."""
    # Tables are cached per 64-day block so that a stream of small batches reuses them.
    lo = (int(ts_ns.min()) // NS_PER_DAY - 2) // 64 * 64
    hi = (int(ts_ns.max()) // NS_PER_DAY + 2) // 64 * 64 + 63
    table = _session_open_table(lo, hi)
    idx = np.searchsorted(table, ts_ns, side="right") - 1
    return table[idx], idx + lo
