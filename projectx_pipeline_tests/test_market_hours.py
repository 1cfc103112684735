"""Open-market time and feed freshness (`domain/market_hours.py`) on the CME Globex equity calendar."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market_hours import SessionCalendar, StallWatch, feed_freshness, next_open, open_time_between, session_at
from projectx_pipeline.domain.quality import sessions_from_calendar

NY = ZoneInfo("America/New_York")
CALENDAR = "CME Globex Equity"
GOOD_FRIDAY = date(2025, 4, 18)  # the calendar lists an early close; CME equity Globex was shut
SESSIONS = sessions_from_calendar(CALENDAR, date(2025, 3, 1), date(2025, 7, 31), [GOOD_FRIDAY])
FAIL_AFTER = timedelta(minutes=30)


def ny(*args) -> datetime:
    return datetime(*args, tzinfo=NY)


def test_a_weekend_and_the_daily_halt_have_no_open_time():
    assert open_time_between(SESSIONS, ny(2025, 3, 21, 17, 0), ny(2025, 3, 23, 18, 0)) == timedelta(0)  # Fri close → Sun open
    assert open_time_between(SESSIONS, ny(2025, 3, 24, 17, 0), ny(2025, 3, 24, 18, 0)) == timedelta(0)  # the halt
    assert open_time_between(SESSIONS, ny(2025, 3, 24, 16, 30), ny(2025, 3, 24, 18, 30)) == timedelta(hours=1)
    # Good Friday: closed from Thursday's close to Sunday's open
    assert open_time_between(SESSIONS, ny(2025, 4, 17, 17, 0), ny(2025, 4, 20, 18, 0)) == timedelta(0)


def test_the_session_now_and_the_next_open():
    assert session_at(SESSIONS, ny(2025, 3, 24, 10, 0)).trade_date == date(2025, 3, 24)
    assert session_at(SESSIONS, ny(2025, 3, 24, 19, 0)).trade_date == date(2025, 3, 25)  # after 18:00: the next trade date
    assert session_at(SESSIONS, ny(2025, 3, 22, 12, 0)) is None
    assert next_open(SESSIONS, ny(2025, 3, 22, 12, 0)) == ny(2025, 3, 23, 18, 0)
    assert next_open(SESSIONS, ny(2025, 4, 17, 17, 30)) == ny(2025, 4, 20, 18, 0)  # over Good Friday


def test_quiet_over_a_weekend_loud_soon_after_the_open():
    friday_close = ny(2025, 3, 21, 17, 0)  # the last bar of the week ends at the close
    saturday = feed_freshness("MES", friday_close, ny(2025, 3, 22, 12, 0), SESSIONS, FAIL_AFTER)
    assert not saturday.stale and saturday.session_now is None and saturday.next_open == ny(2025, 3, 23, 18, 0)
    assert "closed until 2025-03-23T22:00:00+00:00" in saturday.describe()
    assert not feed_freshness("MES", friday_close, ny(2025, 3, 23, 18, 30), SESSIONS, FAIL_AFTER).stale  # 30 min: not more
    sunday = feed_freshness("MES", friday_close, ny(2025, 3, 23, 18, 31), SESSIONS, FAIL_AFTER)
    assert sunday.stale and sunday.open_without_data == timedelta(minutes=31)
    assert sunday.describe().startswith("MES: stale: bars through 2025-03-21T21:00:00+00:00, 31 open-market minutes")


def test_a_stall_inside_a_session_is_stale_after_the_threshold():
    last = ny(2025, 3, 25, 10, 5)
    assert not feed_freshness("MES", last, ny(2025, 3, 25, 10, 35), SESSIONS, FAIL_AFTER).stale
    stale = feed_freshness("MES", last, ny(2025, 3, 25, 10, 36), SESSIONS, FAIL_AFTER)
    assert stale.stale and "the market is open (session of 2025-03-25)" in stale.describe()
    # the halt in between does not count: 16:45 → 18:20 is 15 + 20 open minutes
    assert feed_freshness("MES", ny(2025, 3, 25, 16, 45), ny(2025, 3, 25, 18, 20), SESSIONS, FAIL_AFTER).open_without_data == timedelta(minutes=35)


def test_nothing_stored_is_stale_whatever_the_market():
    verdict = feed_freshness("MES", None, ny(2025, 3, 22, 12, 0), SESSIONS, FAIL_AFTER)
    assert verdict.stale and verdict.describe() == "MES: no bars stored; the market is closed until 2025-03-23T22:00:00+00:00"


def test_bad_inputs_are_refused_by_name():
    with pytest.raises(DomainError, match="2025-03-22T12:00:00: expected a time with its UTC offset"):
        feed_freshness("MES", None, datetime(2025, 3, 22, 12, 0), SESSIONS, FAIL_AFTER)
    with pytest.raises(DomainError, match="invalid fail_after 0:00:00"):
        feed_freshness("MES", None, ny(2025, 3, 22, 12, 0), SESSIONS, timedelta(0))


instants = st.datetimes(min_value=datetime(2025, 3, 2), max_value=datetime(2025, 7, 30), timezones=st.just(timezone.utc))


@given(instants, instants, instants)
def test_open_time_adds_up_and_never_exceeds_the_wall_time(a, b, c):
    a, b, c = sorted((a, b, c))
    ab, bc, ac = (open_time_between(SESSIONS, x, y) for x, y in ((a, b), (b, c), (a, c)))
    assert ab + bc == ac
    assert timedelta(0) <= ac <= c - a
    assert (session_at(SESSIONS, a) is not None) == (open_time_between(SESSIONS, a, a + timedelta(microseconds=1)) > timedelta(0))


def test_the_session_calendar_equals_the_library_over_any_span():
    calendar = SessionCalendar(CALENDAR, [GOOD_FRIDAY])
    start, end = ny(2025, 3, 20, 12, 0), ny(2025, 5, 2, 12, 0)  # across two of its four-week blocks
    expected = [s for s in SESSIONS if s.close > start and s.open <= end]
    assert calendar.sessions_between(start, end) == expected and len(expected) == 31
    assert calendar.sessions_between(ny(2025, 3, 22, 9, 0), ny(2025, 3, 22, 10, 0)) == []  # a Saturday


def test_a_stall_is_reported_after_open_time_again_while_it_lasts_and_its_end():
    watch = StallWatch(SessionCalendar(CALENDAR, [GOOD_FRIDAY]), timedelta(minutes=5))
    last = ny(2025, 3, 25, 10, 0)
    assert watch.observe(last, ny(2025, 3, 25, 10, 5)) is None  # five minutes: not more
    first = watch.observe(last, ny(2025, 3, 25, 10, 5, 1))
    assert first.kind == "stalled" and first.open_without_trades == timedelta(minutes=5, seconds=1)
    assert watch.stalled_since == last
    assert watch.observe(last, ny(2025, 3, 25, 10, 9)) is None  # reported once per five open minutes
    again = watch.observe(last, ny(2025, 3, 25, 10, 10, 2))
    assert again.kind == "stalled" and again.open_without_trades == timedelta(minutes=10, seconds=2)
    resumed = watch.observe(ny(2025, 3, 25, 10, 12), ny(2025, 3, 25, 10, 12))
    assert resumed.kind == "resumed" and resumed.open_without_trades == timedelta(minutes=12)
    assert watch.stalled_since is None and watch.observe(ny(2025, 3, 25, 10, 12), ny(2025, 3, 25, 10, 16)) is None


def test_no_stall_over_the_halt_a_weekend_or_a_holiday():
    watch = StallWatch(SessionCalendar(CALENDAR, [GOOD_FRIDAY]), timedelta(minutes=5))
    assert watch.observe(ny(2025, 3, 25, 16, 59), ny(2025, 3, 25, 18, 3)) is None  # 1 + 3 open minutes
    assert watch.observe(ny(2025, 3, 21, 16, 59), ny(2025, 3, 23, 18, 3)) is None  # Friday → Sunday
    assert watch.observe(ny(2025, 4, 17, 16, 59), ny(2025, 4, 20, 18, 3)) is None  # over Good Friday
    assert watch.observe(ny(2025, 4, 17, 16, 59), ny(2025, 4, 20, 18, 5)).kind == "stalled"  # 1 + 5 open minutes
