"""The roll rules (`domain/rolls.py`): contract months, expiries over several years with the
holidays that move them, the calendar roll and the volume roll."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import (
    CalendarRoll,
    ContractMonth,
    VolumeRoll,
    expiry_date,
    expiry_instant,
    front_month_at,
    months_to_follow,
    next_roll_after,
    roll_instant,
    roll_points,
    third_friday,
    weekdays_only,
)
from projectx_pipeline.gateway.listings import ListedContract
from projectx_pipeline.ingest.roll_follower import RollFollower

nyse_open = CalendarDays()  # the product's stock-market calendar (pandas_market_calendars' NYSE)
# Loaded here for every year the tests reach (a decade per library call, most of a second each),
# not inside a hypothesis example, whose 200 ms deadline the first load of a decade would exceed.
for _decade in range(2000, 2040, CalendarDays.YEARS_PER_BLOCK):
    nyse_open(date(_decade, 1, 2))


def mes(code: str) -> ContractMonth:
    return ContractMonth.of(f"CON.F.US.MES.{code}")


def test_a_contract_id_names_its_symbol_and_month():
    m = mes("M25")
    assert (m.symbol, m.year, m.month, m.code) == ("MES", 2025, 6, "M25")
    assert m.contract_id() == "CON.F.US.MES.M25"
    assert mes("Z25").next_quarterly() == mes("H26")
    assert mes("H26").next_quarterly() == mes("M26")
    assert sorted([mes("H26"), mes("Z25"), mes("M25")]) == [mes("M25"), mes("Z25"), mes("H26")]


def test_a_bad_contract_id_is_refused_by_name():
    with pytest.raises(DomainError, match="'CON.F.US.MES.25'"):
        ContractMonth.of("CON.F.US.MES.25")


# Last trade dates of the quarterly equity-index futures (ES/MES): the third Friday, except where
# the NYSE is closed that day. H08 is CME's published date; M26 follows the same rule (the NYSE is
# closed for Juneteenth) and could not be checked against CME's own calendar here.
KNOWN_EXPIRIES = {
    "H08": date(2008, 3, 20),  # Good Friday 2008-03-21: expiry on the Thursday
    "M08": date(2008, 6, 20),
    "H24": date(2024, 3, 15),
    "M24": date(2024, 6, 21),
    "U24": date(2024, 9, 20),
    "Z24": date(2024, 12, 20),
    "H25": date(2025, 3, 21),
    "M25": date(2025, 6, 20),
    "U25": date(2025, 9, 19),
    "Z25": date(2025, 12, 19),
    "H26": date(2026, 3, 20),
    "M26": date(2026, 6, 18),  # Juneteenth 2026-06-19: the NYSE is closed, expiry on the Thursday
    "U26": date(2026, 9, 18),
    "Z26": date(2026, 12, 18),
}


@pytest.mark.parametrize("code, expected", sorted(KNOWN_EXPIRIES.items()))
def test_expiry_is_the_third_friday_or_the_stock_market_day_before(code, expected):
    assert expiry_date(mes(code), nyse_open) == expected


def test_roll_is_eight_days_before_expiry_on_the_thursday_before():
    roll = CalendarRoll()
    assert roll.roll_date(mes("M25"), nyse_open) == date(2025, 6, 12)
    assert roll.roll_date(mes("Z25"), nyse_open) == date(2025, 12, 11)
    # the Juneteenth expiry moves the roll to the Wednesday 2026-06-10
    assert roll.roll_date(mes("M26"), nyse_open) == date(2026, 6, 10)
    # a roll day the exchange does not trade moves to the trading day before: Thanksgiving-free
    # here, so check it with a calendar closed on the would-be roll day
    closed = date(2025, 6, 12)
    assert roll.roll_date(mes("M25"), lambda d: nyse_open(d) and d != closed) == date(2025, 6, 11)


def test_front_month_switches_on_the_roll_date():
    listed = [mes(c) for c in ("M25", "U25", "Z25", "H26")]
    roll = CalendarRoll()
    assert roll.front_month(listed, date(2025, 6, 11), nyse_open) == mes("M25")
    assert roll.front_month(listed, date(2025, 6, 12), nyse_open) == mes("U25")
    assert roll.front_month(listed, date(2025, 12, 10), nyse_open) == mes("Z25")
    assert roll.front_month(listed, date(2025, 12, 11), nyse_open) == mes("H26")
    with pytest.raises(DomainError, match="CON.F.US.MES.H26"):
        roll.front_month(listed, date(2026, 3, 12), nyse_open)


def test_one_roll_serves_one_symbol():
    with pytest.raises(DomainError, match=r"\['MES', 'MNQ'\]"):
        CalendarRoll().front_month([mes("M25"), ContractMonth.of("CON.F.US.MNQ.U25")], date(2025, 6, 1), nyse_open)
    with pytest.raises(DomainError, match="no contract listed"):
        CalendarRoll().front_month([], date(2025, 6, 1), nyse_open)


def test_days_before_expiry_out_of_range_is_refused():
    with pytest.raises(DomainError, match="-1"):
        CalendarRoll(days_before_expiry=-1)


quarters = st.builds(lambda y, q: ContractMonth(y, (3, 6, 9, 12)[q], "MES"), st.integers(2006, 2031), st.integers(0, 3))


@given(quarters)
def test_every_expiry_is_a_stock_market_day_within_the_week_of_the_third_friday(month):
    expiry = expiry_date(month, nyse_open)
    friday = third_friday(month.year, month.month)
    assert nyse_open(expiry) and friday - timedelta(days=4) <= expiry <= friday
    assert all(not nyse_open(friday - timedelta(days=k)) for k in range((friday - expiry).days))


@given(quarters, st.integers(0, 40))
def test_the_calendar_front_month_never_goes_back_and_rolls_before_expiry(month, days_before):
    roll = CalendarRoll(days_before)
    listed = [month, month.next_quarterly(), month.next_quarterly().next_quarterly()]
    start = roll.roll_date(month, nyse_open) - timedelta(days=95)
    fronts = [roll.front_month(listed, start + timedelta(days=k), nyse_open) for k in range(0, 150)]
    assert fronts == sorted(fronts)
    for k, front in enumerate(fronts):
        assert start + timedelta(days=k) <= expiry_date(front, nyse_open)


def test_volume_roll_follows_the_volume_and_never_goes_back():
    m, u, z = mes("M25"), mes("U25"), mes("Z25")
    days = [date(2025, 6, d) for d in (9, 10, 11, 12, 13)]
    volumes = {
        days[0]: {m: 900_000, u: 100_000},
        days[1]: {m: 400_000, u: 600_000},  # the roll by volume: U25 from the 11th
        days[2]: {m: 700_000, u: 500_000},  # a busy day in the old month does not undo it
        days[3]: {m: 300_000, u: 800_000, z: 900_000},  # Z leads: the front month from the 13th
    }
    fronts = VolumeRoll().front_months([m, u, z], days, volumes, nyse_open)
    assert [fronts[d] for d in days] == [m, m, u, u, z]


def test_volume_roll_without_volumes_follows_the_calendar_and_leaves_expired_months():
    m, u = mes("M25"), mes("U25")
    days = [date(2025, 6, 11), date(2025, 6, 12), date(2025, 6, 13)]
    assert list(VolumeRoll().front_months([m, u], days, {}, nyse_open).values()) == [m, u, u]
    # M25 keeps the volume up to its last trade date, 2025-06-20; on the 23rd it has expired
    days = [date(2025, 6, d) for d in (18, 20, 23)]
    volumes = {d: {m: 500_000, u: 10} for d in days}
    at_expiry = VolumeRoll(CalendarRoll(days_before_expiry=0))
    assert list(at_expiry.front_months([m, u], days, volumes, nyse_open).values()) == [m, m, u]
    with pytest.raises(DomainError, match="must ascend"):
        VolumeRoll().front_months([m, u], [days[1], days[0]], {}, nyse_open)


def test_weekdays_only_knows_no_holidays():
    assert expiry_date(mes("M26"), weekdays_only) == date(2026, 6, 19)


# --------------------------------------------------------------------------- instants and following


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_the_stock_market_calendar_knows_the_holidays_that_move_expiries():
    assert not nyse_open(date(2026, 6, 19))  # Juneteenth, a Friday
    assert not nyse_open(date(2026, 11, 26))  # Thanksgiving
    assert not nyse_open(date(2008, 3, 21))  # Good Friday
    assert not nyse_open(date(2026, 12, 5))  # a Saturday
    assert nyse_open(date(2026, 12, 3)) and nyse_open(date(2026, 6, 18))


def test_the_front_month_changes_at_the_session_open_of_the_roll_date():
    # Z26 rolls on trade date 2026-12-10, whose session opens 18:00 New York (EST) on 12-09
    assert roll_instant(mes("Z26"), CalendarRoll(), nyse_open) == utc(2026, 12, 9, 23, 0)
    # M26 rolls on 2026-06-10 (the Juneteenth expiry moved it); 18:00 EDT on 06-09
    assert roll_instant(mes("M26"), CalendarRoll(), nyse_open) == utc(2026, 6, 9, 22, 0)
    listed = [mes(c) for c in ("Z26", "H27", "M27")]
    assert front_month_at(listed, utc(2026, 12, 9, 22, 59, 59), CalendarRoll(), nyse_open) == mes("Z26")
    assert front_month_at(listed, utc(2026, 12, 9, 23, 0), CalendarRoll(), nyse_open) == mes("H27")


def test_a_contract_stops_trading_at_the_stock_market_open_of_its_expiry():
    assert expiry_instant(mes("Z26"), nyse_open) == utc(2026, 12, 18, 14, 30)  # 09:30 EST
    assert expiry_instant(mes("M26"), nyse_open) == utc(2026, 6, 18, 13, 30)  # 09:30 EDT, the Thursday


def test_roll_points_are_the_consecutive_switches_of_a_listing():
    points = roll_points([mes("H27"), mes("Z26"), mes("M27")], CalendarRoll(), nyse_open)
    assert [(p.from_month.code, p.to_month.code) for p in points] == [("Z26", "H27"), ("H27", "M27")]
    assert [p.at for p in points] == [roll_instant(mes("Z26"), CalendarRoll(), nyse_open), roll_instant(mes("H27"), CalendarRoll(), nyse_open)]
    assert points[0].symbol == "MES"


def test_a_feed_follows_the_front_month_and_the_next_one():
    listed = [mes(c) for c in ("U26", "Z26", "H27", "M27")]
    rule = CalendarRoll()
    assert months_to_follow(listed, utc(2026, 12, 3, 15), rule, nyse_open) == [mes("Z26"), mes("H27")]
    assert months_to_follow(listed, utc(2026, 12, 9, 23), rule, nyse_open) == [mes("H27"), mes("M27")]
    # the latest listed month is front: nothing after it is listed yet
    assert months_to_follow(listed, utc(2027, 3, 11, 1), rule, nyse_open) == [mes("M27")]
    # a listing whose every month rolled before the instant (the gateway lists only the month it
    # trades, or a replayed market behind the machine's clock): that month alone
    assert months_to_follow([mes("M25")], utc(2026, 12, 3), rule, nyse_open) == [mes("M25")]
    assert next_roll_after(listed, utc(2026, 12, 3), rule, nyse_open) == utc(2026, 12, 9, 23)
    assert next_roll_after(listed, utc(2027, 6, 1), rule, nyse_open) is None


QUARTERS = [ContractMonth(y, m, "MES") for y in range(2025, 2029) for m in (3, 6, 9, 12)]


@given(st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 9, 1), timezones=st.just(timezone.utc)))
def test_the_followed_months_change_only_at_roll_instants(at):
    rule = CalendarRoll()
    followed = months_to_follow(QUARTERS, at, rule, nyse_open)
    assert followed[0] == front_month_at(QUARTERS, at, rule, nyse_open)
    assert len(followed) == 2 and followed[0] < followed[1]
    change = next_roll_after(QUARTERS, at, rule, nyse_open)
    assert change is not None and change > at
    assert months_to_follow(QUARTERS, change - timedelta(microseconds=1), rule, nyse_open) == followed
    assert months_to_follow(QUARTERS, change, rule, nyse_open)[0] == followed[1]


def listed(code: str, active: bool = True, root: str = "MES") -> ListedContract:
    contract = ListedContract.from_gateway({"id": f"CON.F.US.{root}.{code}", "activeContract": active, "tickSize": 0.25})
    assert contract is not None
    return contract


def test_a_gateway_contract_becomes_a_listed_month_and_a_malformed_one_is_skipped(caplog):
    assert listed("Z26") == ListedContract(mes("Z26"), mes("Z26").contract_id(), True, 0.25)
    assert ListedContract.from_gateway({"id": "CON.F.US.MES.Z2026", "activeContract": True}) is None
    assert ListedContract.from_gateway({"name": "no id"}) is None
    assert "listing_contract_skipped" in caplog.text and "CON.F.US.MES.Z2026" in caplog.text


def test_the_roll_follower_follows_each_symbol_and_keeps_a_listing_the_answer_lacks():
    follower = RollFollower(
        ["MES", "MNQ"],
        {"MES": [listed("H27"), listed("Z26")], "MNQ": [listed("Z26", root="MNQ"), listed("H27", root="MNQ")]},
        CalendarRoll(),
        nyse_open,
    )
    assert follower.follow(utc(2026, 12, 3)) == ["CON.F.US.MES.Z26", "CON.F.US.MES.H27", "CON.F.US.MNQ.Z26", "CON.F.US.MNQ.H27"]
    assert follower.front_months(utc(2026, 12, 10)) == ["CON.F.US.MES.H27", "CON.F.US.MNQ.H27"]
    changes = follower.update({"MES": [listed("H27"), listed("M27")]})  # MNQ missing from the answer
    assert changes == {"MES": "listed+CON.F.US.MES.M27 unlisted-CON.F.US.MES.Z26"}
    assert follower.follow(utc(2026, 12, 10)) == ["CON.F.US.MES.H27", "CON.F.US.MES.M27", "CON.F.US.MNQ.H27"]
    assert follower.update({"MES": [listed("M27"), listed("H27")]}) == {}
    with pytest.raises(ValueError, match=r"no listed month for the symbols \['MNQ'\]"):
        RollFollower(["MES", "MNQ"], {"MES": [listed("Z26")]}, CalendarRoll(), nyse_open)
