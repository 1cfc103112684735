"""Which contracts the Dagster side follows (`orchestration/front_months.py`): the front month of
a symbol per trade date over the contract partitions of a real Dagster instance, across the
rolls of several years, and the followed contracts of a deployment."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from projectx_pipeline.dev import ingested
from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import CalendarRoll
from projectx_pipeline.orchestration.front_months import FrontMonthError, FrontMonths
from projectx_pipeline.orchestration.partitions import CONTRACTS
from projectx_pipeline.settings import load_settings

from .support.dagster import instance_with_contracts

nyse_open = CalendarDays()
MNQ_Z26 = "CON.F.US.MNQ.Z26"


def mes(code: str) -> str:
    return f"CON.F.US.MES.{code}"


# Every quarterly MES month from H25 to M27, as the contract_listings sensor leaves them (expired
# ones stay), plus months of another symbol and an explicit contract's.
LISTED = [mes(c) for c in ("H25", "M25", "U25", "Z25", "H26", "M26", "U26", "Z26", "H27", "M27")]


@pytest.fixture(scope="module")
def known() -> list[str]:
    """The contract partition keys of a real instance holding LISTED and two MNQ months."""
    with instance_with_contracts(*LISTED, "CON.F.US.MNQ.U26", MNQ_Z26) as instance:
        return instance.get_dynamic_partitions(CONTRACTS)


@pytest.fixture(scope="module")
def follow() -> FrontMonths:
    return FrontMonths(contracts=(), symbols=("MES",), rule=CalendarRoll(8), stock_market_open=nyse_open)


# (trade date, front month): the day before and the day of each roll. A roll date is eight
# calendar days before the expiry (the third Friday, or the NYSE day before it): M26 expires on
# Thursday 2026-06-18 because Juneteenth closes the NYSE on Friday 2026-06-19, so it rolls on
# Wednesday 2026-06-10, not on the usual Thursday; M27 likewise (Juneteenth observed on Friday
# 2027-06-18) rolls on Wednesday 2027-06-09.
FRONT_MONTHS = [
    (date(2025, 3, 12), "H25"),
    (date(2025, 3, 13), "M25"),
    (date(2025, 6, 11), "M25"),
    (date(2025, 6, 12), "U25"),
    (date(2025, 9, 10), "U25"),
    (date(2025, 9, 11), "Z25"),
    (date(2025, 12, 10), "Z25"),
    (date(2025, 12, 11), "H26"),
    (date(2026, 3, 11), "H26"),
    (date(2026, 3, 12), "M26"),
    (date(2026, 6, 9), "M26"),
    (date(2026, 6, 10), "U26"),  # the Juneteenth-moved roll
    (date(2026, 6, 11), "U26"),  # where the usual Thursday roll would have been
    (date(2026, 9, 9), "U26"),
    (date(2026, 9, 10), "Z26"),
    (date(2026, 12, 9), "Z26"),
    (date(2026, 12, 10), "H27"),
    (date(2027, 3, 10), "H27"),
    (date(2027, 3, 11), "M27"),
    (date(2027, 6, 8), "M27"),
]


@pytest.mark.parametrize(("trade_date", "front"), FRONT_MONTHS, ids=[f"{d}-{c}" for d, c in FRONT_MONTHS])
def test_the_front_month_per_trade_date_switches_on_each_roll_date(follow, known, trade_date, front):
    assert follow.front_month("MES", trade_date, known) == mes(front)


def test_followed_are_the_front_month_and_the_next_known_one(follow, known):
    assert follow.months_followed("MES", date(2026, 6, 9), known) == [mes("M26"), mes("U26")]
    assert follow.months_followed("MES", date(2026, 6, 10), known) == [mes("U26"), mes("Z26")]
    # the last known month is followed alone: nothing later is known yet
    assert follow.months_followed("MES", date(2027, 6, 8), known) == [mes("M27")]


def test_only_the_known_months_count(follow):
    # without U25 among the partitions, M25's successor that the deployment knows is Z25
    known = [mes("M25"), mes("Z25")]
    assert follow.front_month("MES", date(2025, 6, 12), known) == mes("Z25")
    assert follow.months_followed("MES", date(2025, 6, 11), known) == [mes("M25"), mes("Z25")]


def test_months_of_other_symbols_and_keys_that_are_no_contract_id_are_not_months_of_the_symbol(follow):
    known = [MNQ_Z26, "hand-added key", mes("Z26")]
    assert list(follow.known_months("MES", known).values()) == [mes("Z26")]
    assert follow.front_month("MES", date(2026, 12, 1), known) == mes("Z26")


def test_no_known_month_is_an_error_naming_the_symbol(follow):
    with pytest.raises(FrontMonthError, match=r"no month of MES is known: expected a contract partition of MES"):
        follow.front_month("MES", date(2026, 6, 9), [MNQ_Z26])
    with pytest.raises(FrontMonthError, match=r"no month of MES is known"):
        follow.months_followed("MES", date(2026, 6, 9), [])


def test_every_known_month_rolled_is_an_error_naming_the_symbol_and_the_months(follow):
    message = (
        "no known month of MES is its front month on 2025-06-12: the months known, CON.F.US.MES.H25, CON.F.US.MES.M25,"
        " have all rolled (the latest, CON.F.US.MES.M25, on 2025-06-12)"
    )
    with pytest.raises(FrontMonthError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        follow.front_month("MES", date(2025, 6, 12), [mes("H25"), mes("M25")])
    # the live daemon then follows the latest listed month alone: so does the backfill
    assert follow.months_followed("MES", date(2025, 6, 12), [mes("H25"), mes("M25")]) == [mes("M25")]


def test_a_symbol_that_is_not_followed_is_refused_by_name(follow, known):
    with pytest.raises(FrontMonthError, match=r"symbol 'MNQ' is not followed: expected one of the symbols in instruments, \['MES'\]"):
        follow.front_month("MNQ", date(2026, 6, 9), known)


def test_a_deployment_follows_its_explicit_contracts_and_each_symbols_months(known):
    follow = FrontMonths(contracts=(MNQ_Z26,), symbols=("MES",), stock_market_open=nyse_open)
    on_roll_eve = follow.followed_on(date(2026, 6, 9), known)
    assert on_roll_eve.contracts == [MNQ_Z26, mes("M26"), mes("U26")] and on_roll_eve.unresolved == {}
    assert follow.followed_on(date(2026, 6, 10), known).contracts == [MNQ_Z26, mes("U26"), mes("Z26")]
    # at an instant: its trade date's front month (the session of 2026-06-10 opens 2026-06-09 18:00 New York)
    assert follow.followed_now(datetime(2026, 6, 9, 21, 59, tzinfo=timezone.utc), known).contracts == [MNQ_Z26, mes("M26")]
    assert follow.followed_now(datetime(2026, 6, 9, 22, 0, tzinfo=timezone.utc), known).contracts == [MNQ_Z26, mes("U26")]
    # whether a partition's contract is backfilled that day
    assert follow.why_not_followed(MNQ_Z26, date(2025, 3, 18), known) is None  # explicit: every day
    assert follow.why_not_followed(mes("U26"), date(2026, 6, 9), known) is None  # the next month
    assert follow.why_not_followed(mes("Z26"), date(2026, 6, 9), known) == (
        "CON.F.US.MES.Z26 is not followed on 2026-06-09: the front month of MES on 2026-06-09 is CON.F.US.MES.M26;"
        " followed that day: CON.F.US.MES.M26, CON.F.US.MES.U26"
    )
    assert follow.why_not_followed(mes("M26"), date(2026, 6, 10), known).startswith("CON.F.US.MES.M26 is not followed on 2026-06-10")


def test_a_symbol_without_a_fitting_month_leaves_the_others_followed(known):
    follow = FrontMonths(contracts=(MNQ_Z26,), symbols=("MES", "MYM"), stock_market_open=nyse_open)
    on = follow.followed_on(date(2026, 6, 10), known)
    assert on.contracts == [MNQ_Z26, mes("U26"), mes("Z26")]
    assert list(on.unresolved) == ["MYM"] and "no month of MYM is known" in on.unresolved["MYM"]
    later = follow.followed_now(datetime(2027, 6, 9, 12, tzinfo=timezone.utc), known)  # after M27, the last known, rolled
    assert later.contracts == [MNQ_Z26]
    assert set(later.unresolved) == {"MES", "MYM"} and "no known month of MES is its front month on 2027-06-09" in later.unresolved["MES"]


def test_the_settings_say_what_is_followed(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(f"instruments: [{{symbol: MES}}]\ncontracts: [{{id: {MNQ_Z26}}}]\nrolls: {{days_before_expiry: 5}}\ntimeframes: [5m, 1h]\n")
    settings = load_settings({"PROJECTX_SETTINGS": str(path)})
    follow = FrontMonths.from_settings(settings)
    assert (follow.contracts, follow.symbols, follow.rule) == ((MNQ_Z26,), ("MES",), CalendarRoll(5))
    # five days before the 2026-06-18 expiry: the roll is on Saturday 2026-06-13, moved to Friday the 12th
    assert follow.front_month("MES", date(2026, 6, 11), LISTED) == mes("M26")
    assert follow.front_month("MES", date(2026, 6, 12), LISTED) == mes("U26")
    # what `make dev` prints as ingested
    assert ingested(settings) == f"MES (front month + next, roll 5 days before expiry), {MNQ_Z26} × 5m, 1h"


def test_what_the_analysis_runs_over_follows_the_series_setting(known):
    mnq = "CON.F.US.MNQ.Z26"
    by_contract = FrontMonths(contracts=(mnq,), symbols=("MES",), rule=CalendarRoll(8), stock_market_open=nyse_open)
    continuous = FrontMonths(contracts=(mnq,), symbols=("MES",), rule=CalendarRoll(8), stock_market_open=nyse_open, continuous_analysis=True)
    at = datetime(2026, 9, 10, 15, tzinfo=timezone.utc)  # U26 has rolled to Z26
    assert by_contract.analysed_now(at, known) == ([mnq, mes("Z26")], {})
    assert continuous.analysed_now(at, known) == ([mnq, "MES"], {})  # no front month needed: the series stitches itself
    # new bars of any month of a followed symbol feed its series; an explicit contract stays its own
    assert [continuous.series_of(c) for c in (mes("U26"), mes("Z26"), mnq)] == ["MES", "MES", mnq]
    assert [by_contract.series_of(c) for c in (mes("U26"), mnq)] == [mes("U26"), mnq]
    assert continuous.series_of(mes("U26")).is_continuous and not by_contract.series_of(mes("U26")).is_continuous
    # a symbol without a known month is unresolved by contract, and not a question for the series
    assert by_contract.analysed_now(at, [])[1].keys() == {"MES"}
    assert continuous.analysed_now(at, []) == ([mnq, "MES"], {})
