"""The whole Definitions: loadable, lineage, automation defaults; the new-bar sensor and the
after-close schedule evaluated against a real instance and database."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)

from projectx_pipeline.definitions import defs
from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.orchestration.resources import StorageResource
from projectx_pipeline.orchestration.schedules import after_session_close
from projectx_pipeline.orchestration.sensors import new_bars_sensor, send_alert
from projectx_pipeline.storage.bars import upsert_bars

from .conftest import MES


def test_definitions_load():
    Definitions.validate_loadable(defs)


def test_lineage_from_bars_to_coordinated_signals():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"ohlc_bars", "historical_bars", "trend_starts_5m", "trend_starts_15m", "trend_starts_1h",
            "trend_starts_4h", "coordinated_signals"} <= keys
    for tf in ("5m", "15m", "1h", "4h"):
        parents = {p.to_user_string() for p in graph.get(AssetKey(f"trend_starts_{tf}")).parent_keys}
        assert parents == {"ohlc_bars", "historical_bars"}
    parents = {p.to_user_string() for p in graph.get(AssetKey("coordinated_signals")).parent_keys}
    assert parents == {"trend_starts_5m", "trend_starts_15m", "trend_starts_1h", "trend_starts_4h"}
    checks = {c.name for c in graph.asset_check_keys}
    assert checks == {"bars_valid", "bars_gaps", "bars_reconciled"}
    assert graph.get(AssetKey("ohlc_bars")).is_external


def test_automation_starts_running():
    assert defs.resolve_schedule_def("after_session_close").default_status == DefaultScheduleStatus.RUNNING
    for name in ("new_bars_sensor", "run_failure_alert"):
        assert defs.resolve_sensor_def(name).default_status == DefaultSensorStatus.RUNNING


def test_after_close_schedule_backfills_the_trade_date_that_closed():
    ny = ZoneInfo("America/New_York")
    context = build_schedule_context(scheduled_execution_time=datetime(2025, 3, 18, 17, 30, tzinfo=ny))
    requests = list(after_session_close(context))
    assert [(r.partition_key, r.run_key) for r in requests] == [(f"{MES}|2025-03-18", f"2025-03-18:{MES}")]


@pytest.fixture
def bars_5m(sample_dir):
    return read_bars_csv(sample_dir / "CON.F.US.MES.M25_5m.csv")


def _evaluate(db_url, cursor=None):
    # the storage resource sets up a pool (a generator resource): use the context manager form
    with build_sensor_context(
        instance=DagsterInstance.ephemeral(), cursor=cursor, resources={"storage": StorageResource(database_url=db_url)}
    ) as context:
        return new_bars_sensor(context), context


def test_new_bars_sensor_reports_materializations_and_launches_analysis_once(db_url, conn, bars_5m):
    result, ctx = _evaluate(db_url)
    assert isinstance(result, SkipReason)  # nothing stored yet

    upsert_bars(conn, bars_5m.iloc[:30], mode="keep", source="live")  # 2025-03-16 22:00 .. 2025-03-17 00:25
    conn.commit()  # storage never commits: the caller does
    result, ctx = _evaluate(db_url, ctx.cursor)
    assert isinstance(result, SensorResult)
    [run] = result.run_requests
    assert run.run_key == f"{MES}:5m@2025-03-17T00:25:00+00:00"
    assert run.tags["projectx/contract"] == MES
    assert all(op["config"]["contracts"] == [MES] for op in run.run_config["ops"].values())
    [event] = result.asset_events
    assert event.asset_key == AssetKey("ohlc_bars")
    assert str(event.partition) == f"{MES}|2025-03-17"
    assert event.metadata["last_bar_time"].value == "2025-03-17T00:25:00+00:00"

    # the same bars seen again (the sensor re-reads a little behind its cursor): nothing runs twice
    result2, ctx2 = _evaluate(db_url, ctx.cursor)
    assert isinstance(result2, SkipReason)

    # a newer bar: a new run with a new key
    upsert_bars(conn, bars_5m.iloc[30:31], mode="keep", source="live")
    conn.commit()  # storage never commits: the caller does
    result3, _ = _evaluate(db_url, ctx2.cursor)
    assert [r.run_key for r in result3.run_requests] == [f"{MES}:5m@2025-03-17T00:30:00+00:00"]


def test_bars_of_timeframes_not_analysed_report_but_launch_nothing(db_url, conn, bars_5m):
    one_minute = bars_5m.iloc[:5].assign(timeframe_value=1, timestamp=lambda d: d.timestamp - (d.timestamp - d.timestamp.iloc[0]) / 5)
    upsert_bars(conn, one_minute, mode="keep", source="live")
    conn.commit()  # storage never commits: the caller does
    result, _ = _evaluate(db_url)
    assert result.run_requests == []
    assert len(result.asset_events) == 1


def test_failure_alert_hook_posts_to_the_configured_webhook(monkeypatch):
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("PROJECTX_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
        send_alert("run 123 of job backfill_job failed: boom")
        assert received == [{"text": "run 123 of job backfill_job failed: boom"}]
    finally:
        server.shutdown()
