"""Where a replay's clock starts, and a replay moved in time so that it happens now.

The real gateway serves any past window and streams the present. A replay of a recorded sample
can do both only if the sample is moved to the present: `shift_bars_weeks` relabels every bar by
a whole number of weeks counted in New York wall time, so that each bar keeps its weekday and its
session hour (the CME session opens at 18:00 New York whatever the UTC offset, and the offset
differs between the sample's dates and today's). The US changes its clocks on Sunday at 02:00,
while the market is closed, so no trading bar is ever moved into a missing or doubled hour; a bar
that would be (a user's file with weekend bars) is refused by name.

What the shift cannot keep is the holiday calendar: a closed day of the sample (Good Friday 2025
in the MES sample) moves with it to an ordinary day of today's calendar, and today's holidays
are traded. `docs/projectx-gateway-api.md` says so.
"""

from __future__ import annotations

import re
from datetime import datetime

import pandas as pd

from projectx_pipeline.domain.sessions import NEW_YORK
from projectx_pipeline.domain.timestamps import NS_PER_DAY, NS_PER_SECOND, parse_iso_time, to_ns

NS_PER_WEEK = 7 * NS_PER_DAY
END = "end"
_OFFSET = re.compile(r"^\+(\d+(?:\.\d+)?)([dh])$")


def resolve_start_ns(start: datetime | str | None, first_ns: int, end_ns: int) -> int:
    """The replay position where the clock starts, in the replay's own times.

    `start` is an aware datetime inside [first bar, end], "+<N>d" or "+<N>h" after the first
    bar's window opens, "end" (history holds the whole replay, nothing is left to stream), or
    None (the first bar: the old default)."""
    if start is None:
        return first_ns
    if isinstance(start, datetime):
        start_ns = to_ns(start)  # a naive datetime is refused here, by name
    elif start.strip().lower() == END:
        return end_ns
    elif match := _OFFSET.match(start.strip()):
        amount, unit = float(match.group(1)), match.group(2)
        start_ns = first_ns + int(amount * (NS_PER_DAY if unit == "d" else 3600 * NS_PER_SECOND))
    else:
        start_ns = to_ns(parse_iso_time(start, "replay start", ", '+<N>d', '+<N>h' or 'end'"))
    if not first_ns <= start_ns <= end_ns:
        raise ValueError(f"replay start {_iso(start_ns)} is outside the replay, which runs from {_iso(first_ns)} to {_iso(end_ns)}")
    return start_ns


def weeks_to_now(position_ns: int, now_ns: int) -> int:
    """The whole weeks that bring `position_ns` to at most `now_ns`, less than a week before it
    (New York wall time, so up to an hour more or less in UTC across a clock change)."""
    weeks = (now_ns - position_ns) // NS_PER_WEEK
    if shift_ns(position_ns, weeks) > now_ns:  # the clock change put it an hour after now
        weeks -= 1
    return weeks


def shift_ns(ts_ns: int, weeks: int) -> int:
    shifted = _shift_local(pd.DatetimeIndex([pd.Timestamp(ts_ns, tz="UTC")]), weeks)
    return int(shifted.asi8[0])


def shift_bars_weeks(bars: pd.DataFrame, weeks: int) -> pd.DataFrame:
    """The bars relabelled `weeks` weeks later (earlier if negative) in New York wall time."""
    if weeks == 0:
        return bars
    labels = pd.DatetimeIndex(bars["timestamp"])
    try:
        shifted = _shift_local(labels, weeks)
    except (pd.errors.OutOfBoundsDatetime, ValueError) as exc:  # pytz-style NonExistent/Ambiguous errors are ValueErrors
        raise ValueError(f"cannot shift the replay by {weeks} weeks: a bar lands in a New York clock change ({exc})") from None
    out = bars.copy()
    out["timestamp"] = shifted
    return out


def _shift_local(utc_labels: pd.DatetimeIndex, weeks: int) -> pd.DatetimeIndex:
    wall = utc_labels.tz_convert(NEW_YORK).tz_localize(None) + pd.Timedelta(weeks=weeks)
    return wall.tz_localize(NEW_YORK, ambiguous="raise", nonexistent="raise").tz_convert("UTC")


def _iso(ts_ns: int) -> str:
    return pd.Timestamp(ts_ns, tz="UTC").isoformat()
