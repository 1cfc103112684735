"""Reliability (issue 8): faults beyond the daemon's own (test_ingest.py), database failures,
and concurrency. Against the gateway simulator and a real PostgreSQL server.

Every fault scenario ends by comparing the stored bars with the simulator's history for the
whole span (every timeframe; no bar missing, none duplicated, none different) and, for the
daemon, by checking that its heartbeat counted the incident.

* Hub: a SignalR close and a GatewayLogout during ingestion.
* REST during backfill and gap repair: bursts of 429 with and without Retry-After, 500s, answers
  slower than the client's timeout and merely slow ones, a retry budget exhausted, a window of
  more than 20,000 bars (paged).
* Database: stopped and restarted mid-backfill; a statement timeout; a "disk full" error on
  insert (a failing trigger), to a backfill and to the running daemon.
* Concurrency: the same backfill partition run twice at once (Dagster) and four times at once
  (threads), a backfill while the daemon writes the same window, signal runs overlapping each
  other and the bar writes.

Waits are event-driven (polling the database, the simulator or the daemon's counters) except
where a fault has a prescribed length.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import date, timedelta, timezone
from urllib.parse import urlsplit

import pandas as pd
import psycopg2
import pytest

from projectx_pipeline.backfill import backfill_trade_date
from projectx_pipeline.domain.market import normalize_bars
from projectx_pipeline.domain.sessions import trade_date_session
from projectx_pipeline.domain.timeframes import Timeframe, bar_end, parse_timeframe
from projectx_pipeline.domain.timestamps import to_ns
from projectx_pipeline.gateway.client import GatewayClient
from projectx_pipeline.gateway.config import GatewayConfig
from projectx_pipeline.gateway.errors import GatewayRetriesExhausted
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.storage.bars import read_bars, upsert_bars
from projectx_pipeline.storage.db import connect, is_connection_error

from .support.bars import bar_diff, complete_windows, expected_bars, stored_bars
from .support.daemon import InProcessDaemon
from .support.dagster import instance_with_contracts
from .support.database import assert_no_duplicates, count_bars, heartbeat, repair_requests, scalar
from .support.market import MES, TIMEFRAMES
from .support.network import TcpProxy, with_port
from .support.signals import canonical_signals
from .support.simulator import FAST, finished_simulator, start_sim
from .support.waiting import wait_for

UTC = timezone.utc
TF_1M = parse_timeframe("1m")

# =========================================================================== comparisons


def compare_store(url: str, sim: SimulatorServer, start=None, end=None, timeframes=TIMEFRAMES) -> tuple[str, int]:
    """(differences, bars compared) between the store and the simulator's history."""
    diffs, compared = [], 0
    for tf in timeframes:
        want = expected_bars(sim, tf, start, end)
        compared += len(want)
        d = bar_diff(want, stored_bars(url, tf, start, end), tf.label)
        if d:
            diffs.append(d)
    return "\n".join(diffs), compared


def assert_no_repair_left_behind(url: str, sim: SimulatorServer) -> None:
    """Every window still queued in bar_repairs is one the replay left unfinished (the daemon
    queues the bars it flushes open at shutdown): every other repair request was served."""
    left = [r for r in repair_requests(url) if bar_end(r[2], Timeframe(r[0], r[1])) <= sim.clock()]
    assert not left, f"repair requests left for complete windows: {left[:5]}"


def wait_store_matches(url: str, sim: SimulatorServer, timeout: float, **kw) -> int:
    """Wait for the end of the replay and for the store to equal the simulator's history; returns bars compared."""
    ctl = SimulatorControl(sim.control_url)
    wait_for(lambda: ctl.status()["finished"], timeout, "the end of the replay")
    last = {"diff": "not compared yet", "n": 0}

    def matches() -> bool:
        last["diff"], last["n"] = compare_store(url, sim, **kw)
        return not last["diff"]

    try:
        wait_for(matches, timeout, "the stored bars to equal the simulator's history", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{last['diff']}") from None
    return last["n"]


def figures(scenario: str, *, faults: int, compared: int, **extra) -> None:
    """One line per scenario for docs/reliability.md (shown with `pytest -s`); bars lost is 0 by assertion."""
    more = "".join(f" {k}={v}" for k, v in extra.items())
    print(f"\nRELIABILITY-FIGURES scenario={scenario} faults={faults} bars_compared={compared} bars_lost=0{more}")


# =========================================================================== fixtures and processes


@pytest.fixture(scope="module")
def history_sim():
    """The whole MES sample replayed to its end (history only: nobody subscribes)."""
    sim = finished_simulator(rate_limits=False)
    yield sim
    sim.stop()


def fault_client(sim: SimulatorServer, **options) -> GatewayClient:
    """A client with test-sized retry timings (the production backoff, scaled down)."""
    settings = dict(rate_limits=False, backoff_base=0.05, backoff_cap=0.5, timeout=5.0, max_retries=6)
    settings.update(options)
    return GatewayClient(GatewayConfig(sim.api_url, sim.rtc_url, "tester", "key", True), **settings)


def wait_daemon_closed_its_bars(d: InProcessDaemon, sim: SimulatorServer) -> None:
    """Wait until the daemon's feed clock is past the end of the replay + grace and its aggregator
    holds no complete window open: a stop then flushes only windows the replay left unfinished
    (history can store the last bars before the daemon closes them itself)."""
    end_ns = to_ns(sim.clock()) + int((d.daemon.config.grace_seconds + 1) * 1e9)
    wait_for(lambda: (d.daemon.clock.now_ns() or 0) > end_ns, 30, "the feed clock to pass the end of the replay")

    def closed() -> bool:
        open_bars = d.daemon.aggregators[MES].open_bars()
        return all(
            bar_end(t.to_pydatetime(), Timeframe(int(u), int(v))) > sim.clock()
            for t, u, v in open_bars[["timestamp", "timeframe_unit", "timeframe_value"]].itertuples(index=False)
        )

    wait_for(closed, 10, "the daemon to close the complete bars")


class DatabaseOutage:
    """Stop and restart the real test server (its LocalCluster), or cut a relay to an external one.
    Clients go through `url` (the relay), which stays valid across the restart."""

    def __init__(self, db_server, db_url: str):
        parts = urlsplit(db_url)
        self.db_server = db_server
        self.proxy = TcpProxy(parts.hostname, parts.port or 5432)
        self.url = with_port(db_url, self.proxy.port)
        self.direct_port = parts.port

    def stop(self) -> None:
        if self.db_server.cluster is not None:
            self.db_server.cluster.stop()
        self.proxy.cut()  # connections through the relay die with the server either way

    def start(self) -> None:
        cluster = self.db_server.cluster
        if cluster is not None:
            state = cluster.start()
            if state.port != self.direct_port:  # moved (the old port was still held): follow it
                self.proxy.target = ("127.0.0.1", state.port)
                self.db_server.admin_url = state.url("postgres")  # for the fixtures' teardown
                self.direct_port = state.port
        self.proxy.restore()

    def close(self) -> None:
        self.proxy.close()


# =========================================================================== hub faults during ingestion


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["signalr_close", "gateway_logout"])
def test_hub_fault_mid_ingestion_is_repaired_and_counted(db_url, replay_slice, fault):
    """A SignalR close (type 7, reconnect allowed) or a GatewayLogout while bars stream in: the hub
    reconnects (after a logout with a fresh login), the gap is repaired from history, the store
    equals the simulator's history and the heartbeat counts the reconnect."""
    sim, ctl = start_sim(replay_slice, FAST)
    try:
        with InProcessDaemon(db_url, sim) as d:
            wait_for(lambda: count_bars(db_url) >= 20, 30, "20 live 5m bars")
            logins_before = ctl.status()["sessions"]
            if fault == "signalr_close":
                ctl.close()
            else:
                ctl.logout()
            wait_for(lambda: d.counters.reconnects >= 1, 30, "the daemon to reconnect")
            if fault == "gateway_logout":
                # the logged-out token was dropped and the key sent again: a new session
                wait_for(lambda: ctl.status()["sessions"] > logins_before, 10, "a fresh login")
            compared = wait_store_matches(db_url, sim, timeout=60)
            wait_daemon_closed_its_bars(d, sim)
        assert d.result == [0]
        diff, _ = compare_store(db_url, sim)
        assert diff == "", "the store changed at shutdown"
        assert_no_duplicates(db_url)
        assert_no_repair_left_behind(db_url, sim)
        hb = heartbeat(db_url)
        assert hb["state"] == "stopped"
        assert hb["counters"]["reconnects"] >= 1
        assert hb["counters"]["db_errors"] == 0 and hb["counters"]["malformed_events"] == 0
    finally:
        sim.stop()
    figures(f"hub_{fault}", faults=1, compared=compared)


# =========================================================================== REST faults during a backfill

# Each: (name, actions on the control endpoint, trade date, minimum retries the client must log).
# The simulator answers the next N REST calls (login included) with the fault, then normally.
REST_FAULTS = [
    ("429_with_retry_after", [dict(status=429, count=3, retry_after=1)], date(2025, 3, 18), 3),
    ("429_without_retry_after", [dict(status=429, count=5, retry_after=None)], date(2025, 3, 19), 5),
    ("500_burst", [dict(status=500, count=5, retry_after=None)], date(2025, 3, 20), 5),
    ("503_with_retry_after", [dict(status=503, count=2, retry_after=1)], date(2025, 3, 21), 2),
    ("slower_than_the_timeout", [dict(status=None, count=2, delay=2.5, retry_after=None)], date(2025, 3, 24), 2),
    ("slow_but_within_the_timeout", [dict(status=None, count=6, delay=0.4, retry_after=None)], date(2025, 3, 25), 0),
    (
        "mixed",
        [
            dict(status=429, count=1, retry_after=1),
            dict(status=500, count=1, retry_after=None),
            dict(status=None, count=1, delay=2.5, retry_after=None),
            dict(status=429, count=1, retry_after=None),
            dict(status=502, count=1, retry_after=None),
        ],
        date(2025, 3, 26),
        5,
    ),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name, actions, day, min_retries", REST_FAULTS, ids=[f[0] for f in REST_FAULTS])
def test_rest_faults_during_a_backfill_are_retried_and_the_partition_is_exact(history_sim, db_url, caplog, name, actions, day, min_retries):
    ctl = SimulatorControl(history_sim.control_url)
    client = fault_client(history_sim, timeout=1.5)
    conn = connect(db_url)
    caplog.set_level(logging.INFO, logger="projectx.gateway")
    try:
        for action in actions:
            ctl.rest_errors(**action)
        started = time.monotonic()
        result = backfill_trade_date(client, conn, MES, day, TIMEFRAMES)
        elapsed = time.monotonic() - started
    finally:
        conn.close()
        client.close()
    assert ctl.status()["pending_rest_errors"] == 0  # every fault was served
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=retry ")]
    assert len(retries) >= min_retries, retries
    if name == "429_with_retry_after":
        assert elapsed >= 3.0 and all("delay=1.00" in r for r in retries[:3])  # Retry-After honoured
    if name == "slower_than_the_timeout":
        assert all("Timeout" in r for r in retries[:2])
    start, end = trade_date_session(day)
    diff, compared = compare_store(db_url, history_sim, start, end)
    assert diff == ""
    assert result.inserted == compared and result.revised == 0
    assert_no_duplicates(db_url)
    figures(f"backfill_rest_{name}", faults=sum(a["count"] for a in actions), compared=compared)


@pytest.mark.timeout(90)
def test_rest_retry_budget_exhausted_fails_the_backfill_cleanly_and_a_rerun_is_exact(history_sim, db_url):
    """Seven 500s in a row for a client allowed six retries: the backfill fails naming the endpoint
    and the status; the timeframes already done are complete, the failing one has nothing; a
    re-run completes exactly (inserting only what was missing)."""
    ctl = SimulatorControl(history_sim.control_url)
    client = fault_client(history_sim, max_retries=6)
    conn = connect(db_url)
    day = date(2025, 3, 27)
    start, end = trade_date_session(day)
    try:
        client.token()  # log in first: the faults hit the bars requests
        calls = {"n": 0}
        real = client.retrieve_bars

        def retrieve(*args, **kwargs):  # inject the burst before the third timeframe
            calls["n"] += 1
            if calls["n"] == 3:
                ctl.rest_errors(500, count=7, retry_after=None)
            return real(*args, **kwargs)

        client.retrieve_bars = retrieve
        with pytest.raises(GatewayRetriesExhausted, match=r"History/retrieveBars still failing after 7 attempts, last: HTTP 500"):
            backfill_trade_date(client, conn, MES, day, TIMEFRAMES)
        conn.rollback()
        done = {tf: len(stored_bars(db_url, tf, start, end)) for tf in TIMEFRAMES}
        assert done[TIMEFRAMES[0]] == len(expected_bars(history_sim, TIMEFRAMES[0], start, end)) > 0
        assert done[TIMEFRAMES[1]] == len(expected_bars(history_sim, TIMEFRAMES[1], start, end)) > 0
        assert all(done[tf] == 0 for tf in TIMEFRAMES[2:])  # nothing half-written
        client.retrieve_bars = real
        again = backfill_trade_date(client, conn, MES, day, TIMEFRAMES)
    finally:
        conn.close()
        client.close()
    diff, compared = compare_store(db_url, history_sim, start, end)
    assert diff == ""
    assert again.inserted == compared - done[TIMEFRAMES[0]] - done[TIMEFRAMES[1]] and again.revised == 0
    assert_no_duplicates(db_url)
    figures("backfill_rest_retries_exhausted", faults=7, compared=compared)


# =========================================================================== REST faults during gap repair, > 20,000 bars


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_gap_repair_over_more_than_20000_bars_through_rest_faults(db_url, caplog, monkeypatch):
    """The daemon starts on an empty database after the market has run (the whole sample: 50,000
    1m bars, so the 1m window is paged in three requests). Its gap repair meets a scripted run of
    faults: 429s with and without Retry-After, 500s, an answer slower than the client's timeout,
    slow answers, and a burst that exhausts the retry budget (counted in the heartbeat as a
    gateway error, the repair retried). The store ends equal to the whole history."""
    from projectx_pipeline.ingest import repair

    monkeypatch.setattr(repair, "FEED_TIME_WAIT_SECONDS", 0.5)  # no trades will come: the market is over
    caplog.set_level(logging.INFO, logger="projectx")
    sim = SimulatorServer(start_time="end", rate_limits=False).start()
    ctl = SimulatorControl(sim.control_url)
    try:
        client = fault_client(sim, timeout=1.5, max_retries=4)
        client.token()  # the hub reuses this token: every fault below hits the repair's requests
        ok = dict(status=None, count=1, retry_after=None)  # a pass-through: the normal answer
        script = [
            dict(status=429, count=2, retry_after=1),
            dict(status=429, count=2, retry_after=None),
            ok,  # 1m page 1
            dict(status=500, count=2, retry_after=None),
            dict(status=None, count=1, delay=2.5, retry_after=None),
            ok,  # 1m page 2
            dict(status=None, count=2, delay=0.4, retry_after=None),  # 1m page 3, 5m: slow
            dict(status=500, count=5, retry_after=None),  # 15m: the budget (4 retries) is exhausted
        ]
        for action in script:
            ctl.rest_errors(**action)
        injected = sum(a["count"] for a in script if a.get("status") is not None or a.get("delay"))
        with InProcessDaemon(db_url, sim, client=client, initial_lookback=timedelta(days=800)) as d:
            wait_for(lambda: d.daemon.repairer.gap_repairs_done >= 1, 90, "the gap repair to complete")
            assert ctl.status()["pending_rest_errors"] == 0
            diff, compared = compare_store(db_url, sim)
            assert diff == ""
            wait_for(lambda: heartbeat(db_url)["counters"]["gateway_errors"] >= 1, 10, "the heartbeat to count the failure")
        assert d.result == [0]
    finally:
        sim.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"event=bars_retrieved contract=\S+ timeframe=1m .* bars=50000 requests=3 ", ln) for ln in lines), [
        ln for ln in lines if "bars_retrieved" in ln
    ]
    assert sum(ln.startswith("event=retry ") for ln in lines) >= 4 + 3 + 4
    assert any("event=repair_failed" in ln and "after 5 attempts" in ln for ln in lines)
    assert compared > 60_000
    assert_no_duplicates(db_url)
    hb = heartbeat(db_url)
    assert hb["counters"]["gateway_errors"] >= 1 and hb["counters"]["repairs"] == compared
    figures("gap_repair_rest_faults_over_20000_bars", faults=injected, compared=compared)


# =========================================================================== database faults


@pytest.mark.timeout(150)
def test_database_stopped_and_restarted_mid_backfill(db_server, db_url, history_sim):
    """The database goes away after the backfill stored two timeframes: it fails with a connection
    error, nothing of the timeframe in flight is stored; once the server is back, a re-run of the
    partition (as Dagster's historical_bars asset) completes exactly."""
    from dagster import materialize

    from projectx_pipeline.orchestration.bar_assets import build_bar_assets
    from projectx_pipeline.orchestration.partitions import build_partitions, partition_key
    from projectx_pipeline.orchestration.resources import SimulatorGatewayResource, StorageResource
    from projectx_pipeline.settings import load_settings

    settings = load_settings()
    historical_bars = build_bar_assets(settings, build_partitions(settings)).historical_bars

    day = date(2025, 4, 2)
    start, end = trade_date_session(day)
    outage = DatabaseOutage(db_server, db_url)
    client = fault_client(history_sim)
    calls = {"n": 0}
    real = client.retrieve_bars

    def retrieve(*args, **kwargs):  # the third timeframe's bars arrive while the database is down
        calls["n"] += 1
        bars = real(*args, **kwargs)
        if calls["n"] == 3:
            outage.stop()
        return bars

    client.retrieve_bars = retrieve
    conn = connect(outage.url)
    try:
        try:
            with pytest.raises(psycopg2.Error) as raised:
                backfill_trade_date(client, conn, MES, day, TIMEFRAMES)
        finally:
            outage.start()
        assert is_connection_error(raised.value), raised.value  # a clear "connection lost", not a data error
        assert conn.closed
        done = {tf: len(stored_bars(outage.url, tf, start, end)) for tf in TIMEFRAMES}
        assert done[TIMEFRAMES[0]] == len(expected_bars(history_sim, TIMEFRAMES[0], start, end)) > 0
        assert done[TIMEFRAMES[1]] == len(expected_bars(history_sim, TIMEFRAMES[1], start, end)) > 0
        assert all(done[tf] == 0 for tf in TIMEFRAMES[2:])  # nothing of the batch in flight
        result = materialize(
            [historical_bars],
            partition_key=partition_key(day, MES),
            instance=instance_with_contracts(),
            resources={
                "gateway": SimulatorGatewayResource(api_url=history_sim.api_url, rtc_url=history_sim.rtc_url, rate_limits=False),
                "storage": StorageResource(database_url=outage.url),
            },
        )
        assert result.success
        meta = result.asset_materializations_for_node("historical_bars")[0].metadata
        diff, compared = compare_store(outage.url, history_sim, start, end)
        assert diff == ""
        assert meta["inserted"].value == compared - done[TIMEFRAMES[0]] - done[TIMEFRAMES[1]]
        assert meta["revisions"].value == 0
        assert_no_duplicates(outage.url)
    finally:
        client.close()
        outage.close()
    figures("backfill_database_stopped_and_restarted", faults=1, compared=compared)


def _admin(db_server):
    c = connect(db_server.admin_url)
    c.autocommit = True
    return c


@pytest.mark.timeout(90)
def test_statement_timeout_is_a_clear_error_and_nothing_is_half_written(db_server, db_url, history_sim):
    """A database whose statement_timeout is tiny: a 50,000-bar upsert (what a long gap repair
    writes) is cancelled with a clear error; neither the insert nor a replace of stored bars is
    half-applied; with the timeout lifted the same write completes exactly."""
    name = urlsplit(db_url).path.lstrip("/")
    history = history_sim.history_bars(MES, "1m")
    history = normalize_bars(complete_windows(history, TF_1M, history_sim.clock()))
    first_half = history.iloc[:25_000]
    conn = connect(db_url)
    upsert_bars(conn, first_half, mode="keep", source="history")
    conn.commit()  # storage never commits: the caller does
    conn.close()
    admin = _admin(db_server)
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" SET statement_timeout = 100')  # ms; the name is ours
        conn = connect(db_url)
        try:
            changed = history.copy()
            changed["volume"] += 1  # every stored bar would be revised, every other one inserted
            started = time.monotonic()
            with pytest.raises(psycopg2.errors.QueryCanceled, match="canceling statement due to statement timeout"):
                upsert_bars(conn, changed, mode="replace", source="history")
            assert time.monotonic() - started < 30
            conn.rollback()  # the caller ends the failed transaction
            assert conn.closed == 0  # rolled back, still usable
            with conn.cursor() as cur:
                cur.execute("SELECT count(*), coalesce(sum(revisions), 0) FROM ohlc_bars")
                assert cur.fetchone() == (25_000, 0)
                cur.execute("SELECT count(*) FROM bar_revisions")
                assert cur.fetchone()[0] == 0
            conn.rollback()
            assert bar_diff(first_half, read_bars(conn, MES, TF_1M), "1m") == ""  # the old values intact
        finally:
            conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" RESET statement_timeout')
        admin.close()
    conn = connect(db_url)
    try:
        result = upsert_bars(conn, history, mode="replace", source="history")
        conn.commit()
    finally:
        conn.close()
    assert (result.inserted, result.revised) == (len(history) - 25_000, 0)
    assert bar_diff(history, stored_bars(db_url, TF_1M), "1m") == ""
    assert_no_duplicates(db_url)
    figures("database_statement_timeout", faults=1, compared=len(history))


DISK_FULL_TRIGGER = """
CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/16384/16385": No space left on device'
        USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
END $$;
CREATE TRIGGER test_disk_full BEFORE INSERT OR UPDATE ON ohlc_bars FOR EACH ROW EXECUTE FUNCTION test_disk_full();
"""
DROP_DISK_FULL = "DROP TRIGGER test_disk_full ON ohlc_bars; DROP FUNCTION test_disk_full();"


def _sql(url: str, sql: str) -> None:
    conn = connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_disk_full_on_insert_fails_the_backfill_with_nothing_of_the_batch_stored(db_url, history_sim):
    day = date(2025, 4, 3)
    start, end = trade_date_session(day)
    client = fault_client(history_sim)
    conn = connect(db_url)
    try:
        _sql(db_url, DISK_FULL_TRIGGER)
        with pytest.raises(psycopg2.errors.DiskFull, match="No space left on device") as raised:
            backfill_trade_date(client, conn, MES, day, TIMEFRAMES)
        assert raised.value.pgcode == "53100"  # the error reaches the caller as it is: Dagster reports it
        conn.rollback()
        assert count_bars(db_url, None) == 0
        _sql(db_url, DROP_DISK_FULL)
        result = backfill_trade_date(client, conn, MES, day, TIMEFRAMES)
    finally:
        conn.close()
        client.close()
    diff, compared = compare_store(db_url, history_sim, start, end)
    assert diff == "" and result.inserted == compared
    figures("backfill_disk_full", faults=1, compared=compared)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_disk_full_while_the_daemon_writes_is_reported_and_everything_is_written_after(db_url, replay_slice, caplog):
    """The daemon meets "disk full" on every bar insert for a while: each error is logged and
    counted, nothing of a refused batch is stored, the refused bars wait (in the writer's outage
    buffer: SQLSTATE class 53 is an OperationalError, which the writer treats like a lost
    connection and retries; or in the repair queue), the feed goes on; once the trigger is dropped
    every bar is written and the store equals the simulator's history."""
    caplog.set_level(logging.WARNING, logger="projectx")
    sim, ctl = start_sim(replay_slice, FAST)
    try:
        with InProcessDaemon(db_url, sim) as d:
            wait_for(lambda: count_bars(db_url) >= 15, 30, "15 live 5m bars")
            _sql(db_url, DISK_FULL_TRIGGER)
            stored = count_bars(db_url, None)
            errors = d.counters.db_errors
            wait_for(lambda: d.counters.db_errors >= errors + 3, 30, "inserts refused for disk full")
            sent = ctl.status()["trades_sent"]
            time.sleep(1.0)  # the fault lasts a while: the feed must go on meanwhile
            assert ctl.status()["trades_sent"] > sent
            assert d.thread.is_alive() and d.daemon.writer.fatal is None
            assert count_bars(db_url, None) == stored  # nothing of a refused batch
            waiting = d.daemon.writer.pending.bar_count + scalar(db_url, "SELECT count(*) FROM bar_repairs")
            assert waiting > 0  # the refused bars wait to be written
            _sql(db_url, DROP_DISK_FULL)
            compared = wait_store_matches(db_url, sim, timeout=60)
            wait_for(lambda: scalar(db_url, "SELECT count(*) FROM bar_repairs") == 0, 30, "the repair queue to drain")
        assert d.result == [0]
    finally:
        sim.stop()
    assert_no_duplicates(db_url)
    hb = heartbeat(db_url)
    assert hb["state"] == "stopped" and hb["counters"]["db_errors"] >= 3
    reported = [r for r in caplog.records if "No space left on device" in r.getMessage()]
    assert any(r.levelno >= logging.ERROR and "during=bars" in r.getMessage() for r in reported), [r.getMessage() for r in reported]
    figures("daemon_disk_full", faults=1, compared=compared)


# =========================================================================== concurrency


@pytest.mark.timeout(120)
def test_the_same_backfill_partition_run_concurrently_writes_each_bar_once(db_url, history_sim):
    """Two Dagster runs of the same historical_bars partition at once, then four threads running
    the same partition's backfill behind a barrier: every bar is inserted by exactly one of them,
    none revised, the table exact."""
    from dagster import materialize

    from projectx_pipeline.orchestration.bar_assets import build_bar_assets
    from projectx_pipeline.orchestration.partitions import build_partitions, partition_key
    from projectx_pipeline.orchestration.resources import SimulatorGatewayResource, StorageResource
    from projectx_pipeline.settings import load_settings

    settings = load_settings()
    historical_bars = build_bar_assets(settings, build_partitions(settings)).historical_bars

    compared_total = 0
    # 1. Dagster, twice at once
    day = date(2025, 4, 7)
    start, end = trade_date_session(day)
    results, errors = [], []

    def run_asset():
        try:
            results.append(
                materialize(
                    [historical_bars],
                    partition_key=partition_key(day, MES),
                    instance=instance_with_contracts(),
                    resources={
                        "gateway": SimulatorGatewayResource(api_url=history_sim.api_url, rtc_url=history_sim.rtc_url, rate_limits=False),
                        "storage": StorageResource(database_url=db_url),
                    },
                )
            )
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=run_asset) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors and len(results) == 2 and all(r.success for r in results)
    metas = [r.asset_materializations_for_node("historical_bars")[0].metadata for r in results]
    diff, compared = compare_store(db_url, history_sim, start, end)
    assert diff == ""
    assert sum(m["inserted"].value for m in metas) == compared
    assert sum(m["revisions"].value for m in metas) == 0
    compared_total += compared
    # 2. four threads at once, three rounds on three more days
    for day in (date(2025, 4, 8), date(2025, 4, 9), date(2025, 4, 10)):
        barrier = threading.Barrier(4)
        outcomes, errors = [], []

        def run_backfill():
            client, conn = fault_client(history_sim), connect(db_url)
            try:
                client.token()
                barrier.wait(30)
                outcomes.append(backfill_trade_date(client, conn, MES, day, TIMEFRAMES))
            except Exception as exc:  # noqa: BLE001 — reported below
                errors.append(exc)
            finally:
                conn.close()
                client.close()

        threads = [threading.Thread(target=run_backfill) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        start, end = trade_date_session(day)
        diff, compared = compare_store(db_url, history_sim, start, end)
        assert diff == ""
        assert sum(o.inserted for o in outcomes) == compared and sum(o.revised for o in outcomes) == 0
        compared_total += compared
    assert_no_duplicates(db_url)
    assert scalar(db_url, "SELECT count(*) FROM bar_revisions") == 0
    figures("concurrent_backfills_same_partition", faults=0, compared=compared_total)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_backfill_while_the_daemon_writes_the_same_window(db_url, replay_slice):
    """Backfills of the trade dates being ingested, in a loop, while the daemon writes the same
    bars live: the table ends exact, nothing duplicated, and no bar was ever revised (history
    and live agree bar for bar, whichever wrote first)."""
    sim, ctl = start_sim(replay_slice, FAST)
    days = [date(2025, 3, 17), date(2025, 3, 18)]
    runs, errors = [], []
    done = threading.Event()

    def backfills():
        client, conn = fault_client(sim), connect(db_url)
        try:
            while not done.is_set():
                for day in days:
                    runs.append(backfill_trade_date(client, conn, MES, day, TIMEFRAMES))
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)
        finally:
            conn.close()
            client.close()

    worker = threading.Thread(target=backfills)
    try:
        with InProcessDaemon(db_url, sim) as d:
            wait_for(lambda: count_bars(db_url) >= 5, 30, "the first live bars")
            worker.start()
            compared = wait_store_matches(db_url, sim, timeout=60)
            wait_daemon_closed_its_bars(d, sim)  # the backfill may have stored the last bars first
            done.set()
            worker.join(30)
        assert d.result == [0]
    finally:
        done.set()
        sim.stop()
    assert not errors, errors
    assert len(runs) >= 4
    assert sum(r.inserted for r in runs) > 0  # the backfill did write bars the daemon had not yet
    assert sum(r.revised for r in runs) == 0
    assert scalar(db_url, "SELECT count(*) FROM bar_revisions") == 0
    assert_no_duplicates(db_url)
    assert_no_repair_left_behind(db_url, sim)
    diff, _ = compare_store(db_url, sim)
    assert diff == ""
    assert scalar(db_url, "SELECT count(*) FROM ohlc_bars WHERE source = 'live'") > 0  # both writers wrote
    figures("backfill_while_daemon_writes", faults=0, compared=compared, backfill_runs=len(runs), inserted_by_backfill=sum(r.inserted for r in runs))


@pytest.mark.timeout(120)
def test_signal_runs_overlapping_each_other_and_the_bar_writes_store_each_signal_once(db_url, sample_dir):
    """Analysis and coordination runs started every few milliseconds on two threads, overlapping
    one another while a third thread writes 15m and 1h bars in chunks and revises a stored bar
    behind the watermarks: no run fails, and the tables end equal to a full detection and a full
    coordination of the final bars, each signal and each coordinated signal stored once."""
    from projectx_pipeline.analysis.coordination_runner import run_coordination
    from projectx_pipeline.analysis.trend_analysis import run_trend_analysis
    from projectx_pipeline.domain.coordination import coordinate, parse_rules
    from projectx_pipeline.domain.market import read_bars_csv
    from projectx_pipeline.domain.trend_starts import ANALYZER_ID, detect_trend_starts_frame
    from projectx_pipeline.storage import coordinated_signals as coordinated
    from projectx_pipeline.storage import trend_signals as store

    tf15, tf1h = parse_timeframe("15m"), parse_timeframe("1h")
    rules = parse_rules(
        [
            {
                "name": "long_1h_15m",
                "label": "long",
                "anchor": {"timeframe": "1h", "type": "uptrend"},
                "trigger": {"timeframe": "15m", "type": "uptrend"},
                "within_minutes": 60,
            },
            {
                "name": "short_1h_15m",
                "label": "short",
                "anchor": {"timeframe": "1h", "type": "downtrend"},
                "trigger": {"timeframe": "15m", "type": "downtrend"},
                "within_minutes": 60,
            },
        ]
    )
    bars_5m = read_bars_csv(sample_dir / f"{MES}_5m.csv").iloc[:3000]
    bars = {tf: _resample(bars_5m, tf) for tf in (tf15, tf1h)}
    chunks = 12
    writer_done = threading.Event()
    errors: list[BaseException] = []
    runs = {"analysis": 0, "coordination": 0}

    def writer():
        conn = connect(db_url)
        try:
            for k in range(chunks):
                for df in bars.values():
                    part = df.iloc[k * len(df) // chunks : (k + 1) * len(df) // chunks]
                    upsert_bars(conn, part, mode="keep", source="history", notify=False)
                    conn.commit()  # storage never commits: the caller does
                if k == chunks // 2:  # a repaired bar behind every watermark: forces recomputes
                    fix = bars[tf15].iloc[[10]].copy()
                    fix["close"] = fix["low"]
                    bars[tf15].loc[fix.index, "close"] = fix["close"].to_numpy()
                    upsert_bars(conn, fix, mode="replace", source="history", notify=False)
                    conn.commit()
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)
        finally:
            writer_done.set()
            conn.close()

    def analyst():
        conn = connect(db_url)
        try:
            while not writer_done.is_set():
                for tf in (tf15, tf1h):
                    run_trend_analysis(conn, MES, tf)
                    runs["analysis"] += 1
                run_coordination(conn, MES, rules)
                runs["coordination"] += 1
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=analyst) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert runs["analysis"] >= 8 and runs["coordination"] >= 4
    conn = connect(db_url)
    try:
        for tf in (tf15, tf1h):  # the last word: one more run after the writes
            run_trend_analysis(conn, MES, tf)
        run_coordination(conn, MES, rules)
        signals_compared = 0
        for tf in (tf15, tf1h):
            want = canonical_signals(detect_trend_starts_frame(normalize_bars(bars[tf])), "start_price")
            got = canonical_signals(store.read_detected_signals(conn, ANALYZER_ID, MES, tf), "price")
            conn.rollback()
            pd.testing.assert_frame_equal(got, want)
            signals_compared += len(want)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), count(DISTINCT (analyzer_id, contract_id, timeframe_unit, timeframe_value, signal_type,"
                " start_ts)) FROM detected_signals"
            )
            total, distinct = cur.fetchone()
            cur.execute("SELECT count(*), count(DISTINCT (rule, anchor_signal_id, trigger_signal_id, signal_ts)) FROM coordinated_signals")
            c_total, c_distinct = cur.fetchone()
        conn.rollback()
        assert total == distinct == signals_compared
        signals = store.read_signals(conn, MES, analyzer_id=ANALYZER_ID)
        conn.rollback()
        full = coordinate(signals, rules)
        stored = coordinated.read_coordinated(conn, MES)
        conn.rollback()
        key = lambda df: set(zip(df["rule"], df["anchor_signal_id"], df["trigger_signal_id"], df["signal_ts"]))  # noqa: E731
        assert key(stored) == key(full) and c_total == c_distinct == len(full)
        assert len(full) > 0
    finally:
        conn.close()
    figures(
        "overlapping_signal_runs",
        faults=0,
        compared=sum(len(b) for b in bars.values()),
        signals_compared=signals_compared,
        coordinated_compared=len(full),
        analysis_runs=runs["analysis"],
        coordination_runs=runs["coordination"],
    )


def _resample(bars: pd.DataFrame, tf: Timeframe) -> pd.DataFrame:
    """Clock-aligned aggregation of 5m bars (15m, and 1h: New York's offset is whole hours)."""
    label = bars["timestamp"].dt.floor(f"{tf.nominal_seconds // 60}min")
    g = bars.groupby(label, sort=True)
    out = pd.DataFrame(
        {"open": g["open"].first(), "high": g["high"].max(), "low": g["low"].min(), "close": g["close"].last(), "volume": g["volume"].sum()}
    ).reset_index(names="timestamp")
    out["contract_id"], out["timeframe_unit"], out["timeframe_value"] = MES, tf.unit, tf.value
    return normalize_bars(out)
