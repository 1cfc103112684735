"""historical_bars and its checks, materialized against the simulator and a real database."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from dagster import materialize

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
