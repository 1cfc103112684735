"""historical_bars and its checks, materialized against the simulator and a real database; for a
symbol of the settings, only the months it follows that day are backfilled."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from dagster import AssetKey, DagsterEventType, materialize

from projectx_pipeline.domain.sessions import trade_date_session
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.orchestration.bar_assets import build_bar_assets
from projectx_pipeline.orchestration.checks import build_bar_checks
from projectx_pipeline.orchestration.partitions import build_partitions, partition_key
from projectx_pipeline.orchestration.resources import SimulatorGatewayResource, StorageResource
from projectx_pipeline.settings import load_settings
from projectx_pipeline.storage.bars import read_bars, upsert_bars

from .support.dagster import instance_with_contracts
from .support.market import MES
from .support.simulator import finished_simulator

CLEAN_DAY = date(2025, 3, 18)  # no hole in the sample
HOLE_DAY = date(2025, 3, 21)  # the sample misses the 5m bar of 2025-03-20 22:40 UTC
TF5 = parse_timeframe("5m")
settings = load_settings()
_partitions = build_partitions(settings)
historical_bars = build_bar_assets(settings, _partitions).historical_bars
bar_checks = build_bar_checks(settings, historical_bars, _partitions)


@pytest.fixture(scope="module")
def simulator():
    sim = finished_simulator(rate_limits=False)
    yield sim
    sim.stop()


@pytest.fixture
def resources(simulator, db_url):
    return {
        "gateway": SimulatorGatewayResource(api_url=simulator.api_url, rtc_url=simulator.rtc_url, rate_limits=False),
        "storage": StorageResource(database_url=db_url),
    }


def _run(day: date, resources):
    return materialize(
        [historical_bars, *bar_checks],
        partition_key=partition_key(day, MES),
        resources=resources,
        instance=instance_with_contracts(),
        raise_on_error=False,
    )


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _md(evaluation, key: str) -> str:
    return str(evaluation.metadata[key].value)


def test_historical_bars_partition_stores_history_and_checks_pass(simulator, resources, conn):
    result = _run(CLEAN_DAY, resources)
    assert result.success
    mat = result.asset_materializations_for_node("historical_bars")[0]
    rows = mat.metadata["rows_per_timeframe"].value
    assert rows["5m"] == 276 and rows["1d"] == 1 and rows["4h"] == 6  # a full 23-hour session
    assert mat.metadata["holes_found"].value == 0
    start, end = trade_date_session(CLEAN_DAY)
    for tf in settings.timeframes:
        stored = read_bars(conn, MES, tf, start, end)
        expected = simulator.history_bars(MES, tf)
        expected = expected[(expected.timestamp >= start) & (expected.timestamp < end)].reset_index(drop=True)
        pd.testing.assert_frame_equal(stored, expected, check_like=True)
    checks = _checks(result)
    assert set(checks) == {"bars_valid", "bars_gaps", "bars_reconciled"}
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items()}
    # idempotent: a second run changes nothing
    again = _run(CLEAN_DAY, resources)
    mat2 = again.asset_materializations_for_node("historical_bars")[0]
    assert (mat2.metadata["inserted"].value, mat2.metadata["revisions"].value) == (0, 0)


def test_gap_check_names_the_missing_bars(resources):
    result = _run(HOLE_DAY, resources)
    checks = _checks(result)
    gaps = checks["bars_gaps"]
    assert not gaps.passed
    listed = _md(gaps, "offending_bars")
    # one 10-minute step in the sample's 5m series = one missing 5m bar and its five 1m bars
    missing_5m = [t for t in listed.splitlines() if "| 5m" in t]
    assert len(missing_5m) == 1 and "2025-03-20T22:40:00+00:00" in missing_5m[0], listed
    assert gaps.metadata["missing_per_timeframe"].value == {"1m": 5, "5m": 1}
    assert checks["bars_valid"].passed and checks["bars_reconciled"].passed


def test_validity_check_names_an_off_tick_bar(resources, conn):
    # a live bar in the window history lacks (the 22:40 hole) survives the history replace
    bad = pd.DataFrame(
        [
            {
                "contract_id": MES,
                "timestamp": pd.Timestamp("2025-03-20T22:40:00Z"),
                "open": 5700.1,
                "high": 5701.0,
                "low": 5699.0,
                "close": 5700.0,
                "volume": 10,
                "timeframe_unit": 2,
                "timeframe_value": 5,
            }
        ]
    )
    upsert_bars(conn, bad, mode="keep", source="live")
    conn.commit()  # storage never commits: the caller does
    result = _run(HOLE_DAY, resources)
    checks = _checks(result)
    valid = checks["bars_valid"]
    assert not valid.passed
    table = _md(valid, "offending_bars")
    assert "2025-03-20T22:40:00+00:00" in table and "tick size 0.25" in table and "5700.1" in table
    assert valid.metadata["violations"].value == 1
    # the same bar is also a live bar the gateway's history does not have
    assert not checks["bars_reconciled"].passed


def test_reconciliation_names_live_bars_that_differ_from_history(simulator, resources, conn):
    start, end = trade_date_session(CLEAN_DAY)
    history = simulator.history_bars(MES, TF5)
    live = history[(history.timestamp >= start) & (history.timestamp < end)].head(3).copy()
    live.loc[live.index[1], "volume"] += 5  # the daemon missed/added a trade
    upsert_bars(conn, live, mode="keep", source="live")
    conn.commit()  # storage never commits: the caller does
    result = _run(CLEAN_DAY, resources)
    rec = _checks(result)["bars_reconciled"]
    assert not rec.passed
    assert rec.metadata["differing_bars"].value == 1
    assert live["timestamp"].iloc[1].isoformat().replace("T", " ") in _md(rec, "differences")
    assert "volume" in _md(rec, "differences")
    mat = result.asset_materializations_for_node("historical_bars")[0]
    assert mat.metadata["revisions"].value == 1  # the stored bar was replaced by history


# The symbol MES instead of its contract: the months known are M25, U25 and Z25, so on CLEAN_DAY
# M25 is the front month, U25 the next, and Z25 is not followed.
U25, Z25 = "CON.F.US.MES.U25", "CON.F.US.MES.Z25"
SYMBOL_SETTINGS = "instruments: [{symbol: MES, tick_size: 0.25}]\ntimeframes: [1m, 5m, 15m, 1h, 4h, 1d]\n"
DOWN = {"api_url": "http://127.0.0.1:9", "rtc_url": "http://127.0.0.1:9", "rate_limits": False, "max_retries": 0}


@pytest.fixture(scope="module")
def symbol_assets(tmp_path_factory):
    path = tmp_path_factory.mktemp("settings") / "settings.yaml"
    path.write_text(SYMBOL_SETTINGS)
    symbol_settings = load_settings({"PROJECTX_SETTINGS": str(path)})
    partitions = build_partitions(symbol_settings)
    bars = build_bar_assets(symbol_settings, partitions).historical_bars
    return [bars, *build_bar_checks(symbol_settings, bars, partitions)]


def _run_symbol(assets, contract_id: str, gateway: SimulatorGatewayResource, db_url: str):
    instance = instance_with_contracts(MES, U25, Z25)
    result = materialize(
        assets,
        partition_key=partition_key(CLEAN_DAY, contract_id),
        resources={"gateway": gateway, "storage": StorageResource(database_url=db_url)},
        instance=instance,
        raise_on_error=False,
    )
    return result, instance


def test_a_month_neither_front_nor_next_is_skipped_without_a_fetch_or_a_materialization(symbol_assets, db_url, conn):
    # the gateway is down: a fetch would fail the run
    result, instance = _run_symbol(symbol_assets, Z25, SimulatorGatewayResource(**DOWN), db_url)
    assert result.success
    assert result.asset_materializations_for_node("historical_bars") == []
    assert instance.get_latest_materialization_event(AssetKey("historical_bars")) is None
    # its checks are skipped with it: no result that would say the empty day is valid
    assert result.get_asset_check_evaluations() == []
    skipped = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_SKIPPED}
    assert skipped == {"historical_bars_bars_valid", "historical_bars_bars_gaps", "historical_bars_bars_reconciled"}
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(
        m.startswith("event=historical_bars_skipped contract=CON.F.US.MES.Z25 trade_date=2025-03-18")
        and "the front month of MES on 2025-03-18 is CON.F.US.MES.M25" in m
        for m in messages
    ), messages
    start, end = trade_date_session(CLEAN_DAY)
    assert read_bars(conn, Z25, TF5, start, end).empty


def test_the_next_month_is_fetched(symbol_assets, db_url):
    # followed, so fetched: with the gateway down, its run fails on the fetch
    result, _ = _run_symbol(symbol_assets, U25, SimulatorGatewayResource(**DOWN), db_url)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "historical_bars"
    assert "GatewayRetriesExhausted" in str(failure.step_failure_data.error.cause), failure.step_failure_data.error


def test_the_front_month_of_a_symbol_is_backfilled_and_checked(symbol_assets, resources, db_url):
    result, instance = _run_symbol(symbol_assets, MES, resources["gateway"], db_url)
    assert result.success
    (mat,) = result.asset_materializations_for_node("historical_bars")
    assert mat.metadata["rows_per_timeframe"].value["5m"] == 276
    checks = _checks(result)
    assert set(checks) == {"bars_valid", "bars_gaps", "bars_reconciled"} and all(c.passed for c in checks.values())
