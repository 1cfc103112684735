"""The session-aware freshness check of `ohlc_bars` (`orchestration/health.py`), run by its job
from the whole Definitions against a real database holding bars of the MES sample; with a symbol
in the settings, it judges the symbol's front month at the time of the check."""

from __future__ import annotations

import pandas as pd
import pytest
from dagster import DagsterInstance

from projectx_pipeline.definitions import build_definitions
from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.sample_data import sample_path
from projectx_pipeline.settings import load_settings
from projectx_pipeline.storage.bars import upsert_bars
from projectx_pipeline.storage.db import transaction

from .support.market import MES

SETTINGS = f"""
contracts: [{{id: {MES}}}]
timeframes: [5m, 1h]
dagster: {{freshness_fail_minutes: 30}}
"""
JOB = "ohlc_bars_freshness_job"
CHECK_OP = "ohlc_bars_ohlc_bars_fresh"  # Dagster names a check's op <asset>_<check>


def build(tmp_path, db_url, monkeypatch, settings: str):
    monkeypatch.setenv("DATABASE_URL", db_url)  # the StorageResource's EnvVar
    path = tmp_path / "settings.yaml"
    path.write_text(settings)
    return build_definitions(load_settings({"PROJECTX_SETTINGS": str(path)}))


@pytest.fixture
def defs(tmp_path, db_url, monkeypatch):
    return build(tmp_path, db_url, monkeypatch, SETTINGS)


NO_SHIFT = pd.Timedelta(0)


def store_sample_until(conn, end: str, contract_id: str = MES, shift: pd.Timedelta = NO_SHIFT) -> None:
    """The MES sample's 5m bars starting before `end` (UTC), stored as live bars; with
    `contract_id` and `shift`, relabelled as that contract and moved by `shift`."""
    bars = read_bars_csv(sample_path("5m"))
    bars = bars[bars["timestamp"] < pd.Timestamp(end) - shift].assign(contract_id=contract_id, timestamp=lambda b: b.timestamp + shift)
    with transaction(conn):
        upsert_bars(conn, bars, mode="replace", source="live", notify=False)


def run_check(defs, instance: DagsterInstance, as_of: str):
    return defs.resolve_job_def(JOB).execute_in_process(
        run_config={"ops": {CHECK_OP: {"config": {"as_of": as_of}}}}, instance=instance, raise_on_error=False
    )


def evaluate(defs, as_of: str, contracts: tuple[str, ...] = ()):
    """The check's evaluation at `as_of`, on an instance whose contract partitions are `contracts`."""
    # a result refers to its instance weakly: the job is run and read inside the instance's context
    with DagsterInstance.ephemeral() as instance:
        if contracts:
            instance.add_dynamic_partitions("contracts", list(contracts))
        result = run_check(defs, instance, as_of)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "ohlc_bars_fresh"
    return evaluation


def test_quiet_over_the_weekend_failing_soon_after_the_open_without_bars(defs, conn):
    store_sample_until(conn, "2025-03-21T21:00:00Z")  # up to Friday's close (17:00 New York)
    saturday = evaluate(defs, "2025-03-22T16:00:00Z")
    assert saturday.passed, saturday.description
    assert saturday.metadata["market_open"].value is False
    assert saturday.metadata["contracts_checked"].value == 1 and saturday.metadata["stale_contracts"].value == 0
    assert "closed until 2025-03-23T22:00:00+00:00" in saturday.description
    assert "bars through 2025-03-21T21:00:00+00:00" in saturday.description  # the last bar, 16:55-17:00, ends at the close

    assert evaluate(defs, "2025-03-23T22:29:00Z").passed  # 29 minutes into Sunday's session
    sunday = evaluate(defs, "2025-03-23T22:45:00Z")
    assert not sunday.passed and sunday.severity.value == "ERROR"
    assert sunday.metadata["market_open"].value is True and sunday.metadata["stale_contracts"].value == 1
    assert f"{MES}: stale: bars through 2025-03-21T21:00:00+00:00, 45 open-market minutes" in sunday.description
    assert "| CON.F.US.MES.M25 | 2025-03-21T21:00:00Z | 45.0 | open | - | stale |" in sunday.metadata["contracts"].value


def test_quiet_over_the_daily_halt_failing_on_a_stall_inside_the_session(defs, conn):
    store_sample_until(conn, "2025-03-18T21:00:00Z")  # Tuesday, up to the 17:00 New York halt
    assert evaluate(defs, "2025-03-18T21:55:00Z").passed  # 16:55 + the whole halt
    assert evaluate(defs, "2025-03-18T22:25:00Z").passed  # 25 open minutes after the halt
    assert not evaluate(defs, "2025-03-18T22:35:00Z").passed
    # a stall at 10:00 New York (14:00 UTC) on Wednesday: bars through then, nothing after
    store_sample_until(conn, "2025-03-19T14:00:00Z")
    assert evaluate(defs, "2025-03-19T14:30:00Z").passed
    stalled = evaluate(defs, "2025-03-19T14:31:00Z")
    assert not stalled.passed and "31 open-market minutes" in stalled.description
    assert "the market is open (session of 2025-03-19)" in stalled.description


def test_an_empty_store_is_never_fresh(defs):
    evaluation = evaluate(defs, "2025-03-22T16:00:00Z")  # even with the market closed
    assert not evaluation.passed
    assert evaluation.description == f"{MES}: no bars stored; the market is closed until 2025-03-23T22:00:00+00:00"


def test_a_bad_as_of_fails_the_run_naming_the_value(defs):
    with DagsterInstance.ephemeral() as instance:
        result = run_check(defs, instance, "2025-03-22 16:00")
        assert not result.success
        error, messages = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error, []
    while error is not None:  # the op's own exception is the cause of Dagster's step error
        messages.append(error.message)
        error = error.cause
    assert any("invalid as_of '2025-03-22 16:00': give the time with its offset (Z or +00:00)" in m for m in messages), messages


def test_the_schedule_runs_the_check_every_five_minutes(defs):
    schedule = defs.resolve_schedule_def("ohlc_bars_freshness")
    assert schedule.cron_schedule == "*/5 * * * *" and schedule.job_name == JOB
    assert schedule.default_status.value == "RUNNING"


SYMBOL_SETTINGS = """
instruments: [{symbol: MES}]
timeframes: [5m, 1h]
dagster: {freshness_fail_minutes: 30}
"""
H25, U25 = "CON.F.US.MES.H25", "CON.F.US.MES.U25"
THIRTEEN_WEEKS = pd.Timedelta(weeks=13)  # the sample's March days moved to June, weekdays and session hours kept


@pytest.fixture
def symbol_defs(tmp_path, db_url, monkeypatch):
    return build(tmp_path, db_url, monkeypatch, SYMBOL_SETTINGS)


def test_a_symbol_is_judged_by_its_front_month_never_by_a_month_that_has_rolled(symbol_defs, conn):
    store_sample_until(conn, "2025-03-25T14:00:00Z")  # M25, the front month since H25 rolled on 2025-03-13
    # H25 (expired on 2025-03-21, no bar stored) and U25 (not front yet) are partitions too: neither is judged
    fresh = evaluate(symbol_defs, "2025-03-25T14:20:00Z", (H25, MES, U25))
    assert fresh.passed, fresh.description
    assert fresh.metadata["contracts_checked"].value == 1
    assert fresh.description.startswith(f"{MES}: fresh: bars through 2025-03-25T14:00:00+00:00")
    # after M25's roll on 2025-06-12 the front month is U25: its bars are judged, M25's (stale since May) are not
    store_sample_until(conn, "2025-06-17T14:00:00Z", U25, THIRTEEN_WEEKS)
    after_roll = evaluate(symbol_defs, "2025-06-17T14:20:00Z", (H25, MES, U25))
    assert after_roll.passed, after_roll.description
    assert after_roll.description.startswith(f"{U25}: fresh: bars through 2025-06-17T14:00:00+00:00")
    assert f"| {U25} |" in after_roll.metadata["contracts"].value and MES not in after_roll.metadata["contracts"].value
    stalled = evaluate(symbol_defs, "2025-06-17T14:31:00Z", (H25, MES, U25))
    assert not stalled.passed and stalled.description.startswith(f"{U25}: stale:")


def test_a_symbol_without_a_front_month_fails_naming_it(symbol_defs, conn):
    store_sample_until(conn, "2025-03-25T14:00:00Z")
    nothing_known = evaluate(symbol_defs, "2025-03-25T14:20:00Z")
    assert not nothing_known.passed and nothing_known.severity.value == "ERROR"
    assert nothing_known.description.startswith("MES: no month of MES is known: expected a contract partition of MES")
    assert nothing_known.metadata["symbols_without_front_month"].value == ["MES"]
    assert nothing_known.metadata["contracts_checked"].value == 0
    # M25 has rolled and U25 is not known yet: M25 is not judged in its place, even with fresh bars
    store_sample_until(conn, "2025-06-17T14:00:00Z", MES, THIRTEEN_WEEKS)
    rolled = evaluate(symbol_defs, "2025-06-17T14:20:00Z", (H25, MES))
    assert not rolled.passed
    assert rolled.description.startswith("MES: no known month of MES is its front month on 2025-06-17: the months known,")
    assert "| MES | - | - | - | - | no front month |" in rolled.metadata["contracts"].value


def test_a_symbol_without_a_front_month_fails_the_check_even_when_the_others_are_fresh(tmp_path, db_url, monkeypatch, conn):
    defs = build(tmp_path, db_url, monkeypatch, SYMBOL_SETTINGS.replace("[{symbol: MES}]", "[{symbol: MES}, {symbol: MNQ}]"))
    store_sample_until(conn, "2025-03-25T14:00:00Z")
    evaluation = evaluate(defs, "2025-03-25T14:20:00Z", (MES,))
    assert not evaluation.passed
    assert evaluation.description.startswith("MNQ: no month of MNQ is known")
    assert evaluation.metadata["contracts_checked"].value == 1 and evaluation.metadata["stale_contracts"].value == 0
