"""The ingestion daemon end to end: the gateway simulator → `projectx ingest` → a real PostgreSQL.

Every scenario ends with the stored bars equal to what the simulator's history serves for the
whole replayed span (every timeframe, the bars still in progress at the end excluded), and
checks that the heartbeat counters tell the incident. Waits are event-driven: the tests poll
the database, the simulator's status or the daemon's counters, never sleep for a fixed time,
except where the fault itself has a prescribed length (a 30 s refusal, a 20 s database outage,
a few seconds of outage for a reconnect backoff to grow).

Most fault scenarios run the daemon in-process (`IngestDaemon` on a thread, exactly what the CLI
runs); the signal, restart, lock and log scenarios run the real `projectx ingest` CLI as a
subprocess against an in-process simulator.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.domain.market_hours import session_at
from projectx_pipeline.domain.timeframes import Timeframe, bar_end, bar_start, parse_timeframe, parse_timeframes
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.faults import MALFORMED_KINDS
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.settings import load_settings
from projectx_pipeline.storage.bars import read_bars
from projectx_pipeline.storage.db import connect

from .support.bars import bar_diff, complete_windows, expected_bars, stored_bars
from .support.cli import Cli, cli_env, run_cli
from .support.daemon import InProcessDaemon
from .support.database import assert_no_duplicates, count_bars, heartbeat, repair_requests
from .support.market import MES, TF_5M, TIMEFRAMES, VALUES, write_replay_slice
from .support.network import TcpProxy, with_port
from .support.simulator import FAST, start_sim
from .support.waiting import wait_for

TF_1H, TF_4H = parse_timeframe("1h"), parse_timeframe("4h")

# The slice of the MES 5m sample the fault scenarios replay: 8 hours (84 bars) that hold the
# close of a trade date (a complete 1d bar), the short 18:00 4h bar and a daily halt.
FAULT_SLICE = ("2025-03-17T18:00:00Z", "2025-03-18T02:00:00Z")
FAULT_SLICE_BARS = 84

# The whole-sample scenarios stream its last two sessions (from Sunday 2025-05-04 18:00 New York,
# about a million prints) and take the 49 days before from history at start-up: the whole sample
# live is 18 M prints, 13 minutes at the daemon's 23 k prints a second here.
LIVE_TAIL_START = "+49d"
SAMPLE_LOOKBACK_DAYS = 60


# =========================================================================== helpers: data


@pytest.fixture(scope="module")
def fault_replay(tmp_path_factory, sample_dir) -> Path:
    """The FAULT_SLICE rows of the 5m sample, copied verbatim into a replay file (a shorter slice
    than conftest's `replay_slice`: the fault scenarios' timings are sized for it)."""
    return write_replay_slice(sample_dir, tmp_path_factory.mktemp("replay"), FAULT_SLICE, FAULT_SLICE_BARS)


def store_vs_sim(url: str, sim: SimulatorServer, timeframes=TIMEFRAMES) -> str:
    return "\n".join(d for d in (bar_diff(expected_bars(sim, tf), stored_bars(url, tf), tf.label) for tf in timeframes) if d)


def repairs_left_behind(url: str, sim: SimulatorServer) -> str:
    """'' when every repair request queued in `bar_repairs` has been served, except for the
    windows that end with the replay (the daemon flushes the bars it has open when it stops and
    queues them, and a window ending at the replay's last instant closes only after the grace)."""
    left = [r for r in repair_requests(url) if bar_end(r[2], Timeframe(r[0], r[1])) < sim.clock()]
    return f"repair requests left for windows that ended before the replay did: {left[:5]}" if left else ""


def assert_no_repair_left_behind(url: str, sim: SimulatorServer) -> None:
    left = repairs_left_behind(url, sim)
    assert not left, left


def wait_store_matches(url: str, sim: SimulatorServer, timeout: float, timeframes=TIMEFRAMES) -> None:
    """Wait until the replay has finished, the store equals the simulator's history and every
    repair request the replay allows to serve has been served."""
    ctl = SimulatorControl(sim.control_url)
    wait_for(lambda: ctl.status()["finished"], timeout, "the end of the replay")
    last = {"diff": "not compared yet"}

    def matches() -> bool:
        last["diff"] = store_vs_sim(url, sim, timeframes) or repairs_left_behind(url, sim)
        return not last["diff"]

    try:
        wait_for(matches, timeout, "the stored bars to equal the simulator's history", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{last['diff']}") from None


# =========================================================================== helpers: processes


def write_settings(directory: Path, timeframes: str = "1m, 5m, 15m, 1h, 4h, 1d", initial_lookback_days: int = 3) -> Path:
    path = directory / "settings.yaml"
    path.write_text(
        "contracts:\n  - id: CON.F.US.MES.M25\n    tick_size: 0.25\n"
        f"timeframes: [{timeframes}]\n"
        "ingest:\n  repair_delay_seconds: 0.5\n  heartbeat_seconds: 1.0\n  trade_flush_seconds: 0.5\n"
        f"  initial_lookback_days: {initial_lookback_days}\n"
        # the replay's trades are from 2025: a 30-day retention (TimescaleDB's job, applied at
        # start) would rightly drop them while the tests count them
        "storage:\n  trades_retention_days: 36500\n"
    )
    return path


def sim_subscribed(ctl: SimulatorControl) -> bool:
    return ctl.status()["subscriptions"]["trades"].get(MES, 0) > 0


# =========================================================================== end to end


def sample_holes(sample_5m: pd.DataFrame) -> list[pd.Timestamp]:
    """The 5m windows missing from the sample inside a session (a 10-minute step between bars;
    the daily halt and weekends are steps of 1 h 5 min and more)."""
    ts = sample_5m["timestamp"]
    step = ts.diff()
    return [ts[i] - pd.Timedelta(minutes=5) for i in np.flatnonzero(step == pd.Timedelta(minutes=10))]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_end_to_end_replay_of_the_sample_through_the_cli(db_url, sample_dir, tmp_path):
    """The MES sample through `projectx ingest` (the CLI) into PostgreSQL: its first 49 days from
    the gateway's history at start-up, its last two sessions live at full speed (about a million
    realistic prints, every one stored; the whole sample live, 18 M prints, takes 13 minutes).

    Stored 5m bars equal the sample; stored 1h and 4h bars equal the gateway's own 1h and 4h
    bars except in exactly the windows of the sample's 5m holes and the two truncated gateway
    hours; 1m, 15m and 1d equal the simulator's history; every trade is stored once."""
    sim, ctl = start_sim(None, "max", start_time=LIVE_TAIL_START)
    daemon = None
    try:
        settings = write_settings(tmp_path, initial_lookback_days=SAMPLE_LOOKBACK_DAYS)
        daemon = Cli(["ingest"], cli_env(db_url, sim, settings), tmp_path, "ingest")
        wait_store_matches(db_url, sim, timeout=300)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0, daemon.stderr[-3000:]

        sample_5m = read_bars_csv(sample_dir / f"{MES}_5m.csv")
        assert bar_diff(sample_5m, stored_bars(db_url, TF_5M), "5m vs sample") == ""
        assert len(stored_bars(db_url, TF_5M)) == 10_000

        end = sim.clock()
        holes = sample_holes(sample_5m)
        assert len(holes) == 10  # the sample's documented ten holes
        truncated_1h = [pd.Timestamp("2025-04-04T13:00:00Z"), pd.Timestamp("2025-05-01T15:00:00Z")]
        for tf, excluded_from in ((TF_1H, holes + truncated_1h), (TF_4H, holes + truncated_1h)):
            excluded = {pd.Timestamp(bar_start(t.to_pydatetime(), tf)) for t in excluded_from}
            gateway = read_bars_csv(sample_dir / f"{MES}_{tf.label}.csv")
            gateway = complete_windows(gateway[gateway["timestamp"] >= sample_5m["timestamp"].iloc[0]], tf, end)
            stored = stored_bars(db_url, tf)
            keep = lambda df: df[~df["timestamp"].isin(excluded)].reset_index(drop=True)  # noqa: E731
            assert bar_diff(keep(gateway), keep(stored), f"{tf.label} vs the gateway's sample") == ""
            # the exclusions are exactly the windows where the gateway disagrees with its 5m bars
            left_out = gateway[gateway["timestamp"].isin(excluded)]
            assert len(left_out) == len(excluded)
            for _, row in left_out.iterrows():
                got = stored[stored["timestamp"] == row["timestamp"]]
                assert len(got) == 1 and not (got[VALUES].iloc[0] == row[VALUES]).all(), f"{tf.label} {row['timestamp']} needs no exclusion"

        for tf in parse_timeframes("1m,15m,1d"):
            assert bar_diff(expected_bars(sim, tf), stored_bars(db_url, tf), tf.label) == ""
        assert_no_duplicates(db_url)
        assert_no_repair_left_behind(db_url, sim)

        conn = connect(db_url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM trades WHERE contract_id = %s", (MES,))
                assert cur.fetchone()[0] == ctl.status()["trades_published"]
        finally:
            conn.close()
        hb = heartbeat(db_url)
        assert hb["state"] == "stopped"
        assert hb["counters"]["trades"] == ctl.status()["trades_published"]
        assert hb["counters"]["reconnects"] == 0 and hb["counters"]["db_errors"] == 0
        assert hb["counters"]["malformed_events"] == 0 and hb["counters"]["late_trades"] == 0
    finally:
        if daemon is not None:
            daemon.kill()
        sim.stop()


# =========================================================================== feed faults (in-process daemon)


def run_fault(db_url, replay, fault, *, speed=FAST, settle_timeout=60, bars_before=20, **daemon_options):
    """Replay `replay`, apply `fault(ctl, daemon)` once `bars_before` 5m bars are stored, let the
    replay finish, wait for the store to equal the simulator's history, stop; returns
    (sim, final heartbeat, daemon)."""
    sim, ctl = start_sim(replay, speed)
    try:
        with InProcessDaemon(db_url, sim, **daemon_options) as d:
            wait_for(lambda: count_bars(db_url) >= bars_before, 30, f"{bars_before} live 5m bars")
            fault(ctl, d)
            wait_store_matches(db_url, sim, timeout=settle_timeout)
        assert d.result == [0]
        assert store_vs_sim(db_url, sim) == "", "the store changed at shutdown"
        assert_no_duplicates(db_url)
        assert_no_repair_left_behind(db_url, sim)
        hb = heartbeat(db_url)
        assert hb["state"] == "stopped"
        return sim, hb, d
    finally:
        sim.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hub_drop_mid_bar_is_repaired_from_history(db_url, fault_replay):
    """The hub's TCP connection aborted (no close frame) while bars of every timeframe are open."""

    def drop(ctl, d):
        at = pd.Timestamp(ctl.drop()["clock"])
        assert at.value % TF_5M.step_ns != 0  # inside a 5m window, not on its boundary
        wait_for(lambda: d.counters.reconnects >= 1, 20, "the daemon to reconnect")

    _, hb, _ = run_fault(db_url, fault_replay, drop)
    assert hb["counters"]["reconnects"] >= 1
    assert hb["counters"]["repairs"] >= 1  # the bars missed while disconnected came from history


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_reconnects_while_history_is_unavailable(db_url, fault_replay):
    """The gap of the first reconnect is still repaired when a second reconnect comes before the
    history answers again (the live bars stored in between must not hide it)."""
    attempts = 4  # failed gap repairs (each: one call and its 6 immediate retries)

    def two_drops(ctl, d):
        ctl.rest_errors(status=503, count=7 * attempts, retry_after=0)
        ctl.drop()
        wait_for(lambda: d.counters.reconnects >= 1, 20, "the first reconnect")
        written = d.counters.bars_written
        wait_for(lambda: d.counters.bars_written >= written + 3, 20, "live bars from the second connection")
        assert ctl.status()["pending_rest_errors"] > 0, "the history came back too early for the scenario"
        ctl.drop()
        wait_for(lambda: d.counters.reconnects >= 2, 20, "the second reconnect")
        wait_for(lambda: ctl.status()["pending_rest_errors"] == 0, 30, "the history to answer again")

    _, hb, _ = run_fault(db_url, fault_replay, two_drops)
    assert hb["counters"]["reconnects"] == 2
    assert hb["counters"]["gateway_errors"] >= 1
    assert hb["counters"]["repairs"] >= 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stalled_feed_is_detected_and_repaired(db_url, fault_replay):
    """The hub goes silent (no trades, no pings) with the socket open: the watchdog rebuilds the
    connection once the stall ends, and the silent stretch comes from history."""

    def stall(ctl, d):
        ctl.stall(6)
        wait_for(lambda: d.counters.reconnects >= 1, 30, "the watchdog to rebuild the silent connection")

    _, hb, _ = run_fault(db_url, fault_replay, stall, stale_after=2.0)
    assert hb["counters"]["reconnects"] >= 1
    assert hb["counters"]["repairs"] >= 1


def stall_watch(seconds: float) -> dict:
    """Daemon options for a feed-stall watch of `seconds` on the platform's default calendar."""
    return {"stall_after_seconds": seconds, "calendar": load_settings().session_calendar()}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_feed_that_pings_but_trades_nothing_in_session_is_stalled_reconnected_and_repaired(db_url, fault_replay, caplog, tmp_path):
    """The replay paused mid-session: the hub keeps pinging (its watchdog sees a live socket),
    but no trade comes for 2 s of open market. The daemon logs the stall, counts it, reports
    `stalled` in its heartbeat (`projectx status --check` exits 1) and reconnects; once trades
    resume it logs the end, and the store still equals the simulator's history."""
    states: list[str] = []
    options = stall_watch(2.0)

    def pause(ctl, d):
        paused_at = pd.Timestamp(ctl.pause()["clock"]).to_pydatetime()
        assert session_at(options["calendar"].sessions_between(paused_at, paused_at), paused_at) is not None, paused_at  # in a session
        wait_for(lambda: d.counters.feed_stalls >= 1 and d.counters.reconnects >= 1, 20, "the stall to be seen and the hub reconnected")
        wait_for(lambda: heartbeat(db_url)["state"] == "stalled", 10, "the heartbeat to say stalled")
        states.append(heartbeat(db_url)["state"])
        code, out, _ = run_cli(["status", "--check"], cli_env(db_url, d.sim, write_settings(tmp_path)), tmp_path, "status")
        assert code == 1 and "stalled" in out, out
        ctl.resume()
        ctl.speed(FAST)

    # 300 × real time until the pause, so that it lands well before the daily halt at 21:00 UTC
    with caplog.at_level("INFO", logger="projectx.ingest"):
        _, hb, _ = run_fault(db_url, fault_replay, pause, speed=300, bars_before=5, **options)
    assert states == ["stalled"]
    assert hb["counters"]["feed_stalls"] >= 1 and hb["counters"]["reconnects"] >= 1
    lines = [r.getMessage() for r in caplog.records]
    stalled = [ln for ln in lines if ln.startswith("event=feed_stalled")]
    assert stalled and f"contract={MES}" in stalled[0] and "action=reconnect" in stalled[0], lines[-20:]
    assert any(ln.startswith("event=feed_resumed") for ln in lines), lines[-20:]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_no_stall_is_raised_while_the_market_is_closed(db_url, sample_dir, tmp_path):
    """A replay that ends at Friday's close: the feed is silent from then on, for twice the stall
    threshold, and nothing is raised (the market is closed for the weekend)."""
    replay = write_replay_slice(sample_dir, tmp_path, ("2025-03-21T19:00:00Z", "2025-03-21T21:00:00Z"), 24)
    sim, ctl = start_sim(replay, FAST)
    try:
        # 5 s: the sample's last print of the week is 2.3 s before the close
        with InProcessDaemon(db_url, sim, **stall_watch(5.0)) as d:
            wait_for(lambda: ctl.status()["finished"], 30, "the end of the replay")
            wait_for(lambda: count_bars(db_url) >= 24, 30, "the replay's 24 bars stored")
            time.sleep(10.0)  # a prescribed quiet stretch: twice the threshold of silence
            assert d.counters.feed_stalls == 0 and d.counters.reconnects == 0
            assert heartbeat(db_url)["state"] == "connected"
    finally:
        sim.stop()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_reconnects_refused_for_30_seconds(db_url, fault_replay):
    """The hub dropped, then every reconnect refused (HTTP 503) for 30 s: the daemon keeps trying,
    gets back in as soon as the gateway lets it, and repairs the 100 minutes it missed."""

    def refuse(ctl, d):
        ctl.speed(200)  # 30 s of refusals = 100 minutes of market, so the replay outlives the outage
        ctl.refuse(30)
        ctl.drop()
        started = time.monotonic()
        wait_for(lambda: not sim_subscribed(ctl), 10, "the drop")
        wait_for(lambda: sim_subscribed(ctl), 60, "a reconnect after the refusals")
        assert time.monotonic() - started >= 29  # no connection got through while refusing
        assert d.counters.reconnects == 1
        ctl.speed(FAST)

    _, hb, _ = run_fault(db_url, fault_replay, refuse)
    assert hb["counters"]["reconnects"] == 1
    assert hb["counters"]["repairs"] >= 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_token_expiry_logs_in_again_and_repairs(db_url, fault_replay):
    """Every token invalidated (REST 401, hub connections closed): the hub's next upgrade is
    refused, the client logs in again, the feed resumes and the gap is repaired."""

    def expire(ctl, d):
        ctl.expire_tokens()
        assert ctl.status()["sessions"] == 0
        wait_for(lambda: d.counters.reconnects >= 1, 30, "a reconnect with a fresh token")
        assert ctl.status()["sessions"] >= 1  # a new login

    _, hb, _ = run_fault(db_url, fault_replay, expire)
    assert hb["counters"]["reconnects"] >= 1
    assert hb["counters"]["repairs"] >= 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_malformed_events_interleaved_with_good_ones(db_url, fault_replay):
    """Fifty bad GatewayTrade events (every kind the simulator knows) among the good ones: each
    counted once, none reaches a bar, the connection stays up."""
    count = 5 * len(MALFORMED_KINDS)

    def malformed(ctl, d):
        ctl.malformed(count=count)  # every kind, cycled
        wait_for(lambda: ctl.status()["pending_malformed"] == 0, 30, "the malformed events to be sent")

    _, hb, d = run_fault(db_url, fault_replay, malformed)
    assert hb["counters"]["malformed_events"] == count
    assert hb["counters"]["reconnects"] == 0  # a bad event never costs the connection
    assert hb["counters"]["rejected_trades"] == 0  # the hub rejected them all before aggregation
    assert hb["counters"]["late_trades"] == 0


# =========================================================================== database outage


OUTAGE_STARTS_AT = pd.Timestamp("2025-03-17T19:40:00Z")  # FAULT_SLICE's open session runs to 21:00 UTC
OUTAGE_BUFFER = 40  # closed bars held in memory (1m..1d) — 20 s at 150× closes about 65


class DatabaseOutage:
    """Takes the database away from the daemon and gives it back.

    The daemon always reaches the server through a `TcpProxy` (`daemon_url`). By default the local
    test server itself is stopped and started; the relay then follows it when
    `LocalCluster.start()` comes back on another port (it does when the old port still has
    connections in TIME_WAIT: see the report), so the daemon keeps its DATABASE_URL as it would
    behind a stable address. With an external server (PROJECTX_TEST_DATABASE_URL), or with
    `network=True`, the relay is cut instead: a real network outage. `url` follows the server,
    for the test's own reads."""

    def __init__(self, db_server, db_url: str, *, network: bool = False):
        self.db_server, self.db_url = db_server, db_url
        self.cluster = None if network else db_server.cluster
        self.parts = urlsplit(db_url)
        self.proxy = TcpProxy(self.parts.hostname, self.parts.port or 5432)
        self.daemon_url = with_port(db_url, self.proxy.port)
        self.url = db_url

    def begin(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        else:
            self.proxy.cut()

    def end(self) -> None:
        if self.cluster is None:
            self.proxy.restore()
            return
        state = self.cluster.start()
        if state.port != self.parts.port:
            self.proxy.target = ("127.0.0.1", state.port)
            self.db_server.admin_url = state.url("postgres")  # for the fixtures' teardown
            self.url = with_port(self.db_url, state.port)

    def close(self) -> None:
        self.proxy.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_database_stopped_for_20_seconds(db_server, db_url, fault_replay):
    """The server stopped for 20 s while the feed streams on: closed bars wait in memory and are
    written when it returns; with a small outage buffer the oldest overflow, are dropped, queued
    for repair and filled in from history. The store ends equal to the simulator's history."""
    outage = DatabaseOutage(db_server, db_url)

    def stop_the_database(ctl, d):
        ctl.speed(150)  # 20 s of outage = 50 minutes of market, still streaming live into the buffer
        ctl.resume()
        outage.begin()
        written = d.counters.bars_written
        sent = ctl.status()["trades_sent"]
        try:
            time.sleep(20)  # the outage itself has a prescribed length
            status = ctl.status()
            assert status["trades_sent"] > sent, f"the feed must go on during the outage: {status}"
            assert d.thread.is_alive() and d.daemon.writer.fatal is None
            assert d.counters.bars_written == written  # nothing could be written...
            assert 0 < d.daemon.writer.pending.bar_count <= OUTAGE_BUFFER  # ...so the closed bars wait in memory
            assert d.counters.bars_dropped > 0  # the oldest overflowed the buffer (queued for repair)
        finally:
            outage.end()
        wait_for(lambda: d.counters.bars_written > written, 30, "the buffered bars to be written")
        ctl.speed(FAST)

    try:
        sim, ctl = start_sim(fault_replay, FAST)
        try:
            with InProcessDaemon(outage.daemon_url, sim, outage_buffer_bars=OUTAGE_BUFFER) as d:
                # The outage must lie in open market: trades flow and bars close during it. Hold
                # the clock 100 minutes into the slice, 80 before the daily halt (21:00 UTC), so
                # that a slow start of the daemon cannot push the outage into the halt.
                wait_for(lambda: sim.clock() >= OUTAGE_STARTS_AT, 30, "the clock to reach the outage")
                ctl.pause()
                wait_for(lambda: count_bars(db_url) >= 15, 30, "15 live 5m bars")
                stop_the_database(ctl, d)
                wait_store_matches(outage.url, sim, timeout=60)
            assert d.result == [0]
            assert store_vs_sim(outage.url, sim) == ""
            assert_no_duplicates(outage.url)
            assert_no_repair_left_behind(outage.url, sim)  # the dropped bars' repairs were served
        finally:
            sim.stop()
    finally:
        outage.close()
    hb = heartbeat(outage.url)
    assert hb["state"] == "stopped"
    assert hb["counters"]["db_errors"] >= 1
    assert hb["counters"]["ticks_not_notified"] > 0  # live-only tick notifications are not queued
    assert hb["counters"]["bars_dropped"] > 0  # the buffer overflowed...
    assert hb["counters"]["repairs"] >= hb["counters"]["bars_dropped"]  # ...and history filled them in


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stop_right_after_the_database_returns_flushes_everything(db_server, db_url, fault_replay):
    """A stop while the writer still waits out its reconnect backoff (the database has just come
    back): the final flush does not wait, so the buffered bars, the durable repair requests of the
    dropped ones and the final 'stopped' heartbeat are all written."""
    outage = DatabaseOutage(db_server, db_url, network=True)  # restored in an instant, unlike a server
    sim, ctl = start_sim(fault_replay, FAST)
    try:
        with InProcessDaemon(outage.daemon_url, sim, outage_buffer_bars=OUTAGE_BUFFER) as d:
            wait_for(lambda: count_bars(db_url) >= 20, 30, "20 live 5m bars")
            ctl.speed(600)
            outage.begin()
            # long enough for the writer's reconnect backoff to grow past a second, and to overflow
            wait_for(
                lambda: d.counters.bars_dropped > 0,
                30,
                lambda: (
                    f"the outage buffer to overflow ({d.counters}, "
                    f"pending {d.daemon.writer.pending.bar_count}, db_up {d.daemon.writer.db_up}, replay {ctl.status()})"
                ),
            )
            time.sleep(4)
            pending = d.daemon.writer.pending.bar_count
            assert pending > 0
            outage.end()
            ctl.pause()  # the market stops with the daemon: its history is what the daemon had to store
            assert d.stop() == 0
        writer = d.daemon.writer
        assert writer.pending.bar_count == 0 and not writer.pending.repairs, "the final flush left data behind"
        hb = heartbeat(outage.url)
        assert hb["state"] == "stopped" and hb["counters"]["bars_written"] == d.counters.bars_written
        conn = connect(outage.url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM bar_repairs WHERE reason = 'outage_buffer_full'")
                queued_dropped = cur.fetchone()[0]
                cur.execute("SELECT timeframe_unit, timeframe_value, window_start FROM bar_repairs")
                queued = {(u, v, pd.Timestamp(w).tz_convert("UTC")) for u, v, w in cur.fetchall()}
        finally:
            conn.close()
        # The dropped bars' windows are queued durably; the repairer may already have served some
        # between the database's return and the stop (a served window is stored and unqueued in one
        # transaction). Either way no bar is lost: each is stored or queued for the next start.
        assert 0 < queued_dropped <= d.counters.bars_dropped
        lost = []
        for tf in TIMEFRAMES:
            stored = set(stored_bars(outage.url, tf)["timestamp"])
            lost += [(tf.label, ts) for ts in expected_bars(sim, tf)["timestamp"] if ts not in stored and (tf.unit, tf.value, ts) not in queued]
        assert lost == [], lost[:10]
    finally:
        sim.stop()
        outage.close()


# =========================================================================== the CLI: signals, restarts, locks, logs


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_cli_sigterm_mid_bar_and_sigkill_then_restart(db_url, fault_replay, tmp_path):
    """SIGTERM: exit 0 within 10 s, final heartbeat 'stopped', `projectx status` shows it; a
    restart repairs what was missed. SIGKILL: a restart repairs the gap and the open bars lost."""
    sim, ctl = start_sim(fault_replay, FAST)
    env = cli_env(db_url, sim, write_settings(tmp_path))
    procs: list[Cli] = []

    def market_goes_on_unseen(minutes: int) -> None:
        """Let `minutes` of market pass with no daemon, then hold the clock until the next daemon
        subscribes (so that its start-up time never decides what the test covers). At a tenth of
        the replay speed: a loaded machine late by seconds to pause it then overshoots by
        minutes, not by hours (once the replay slice ran out: the next daemon got no trade)."""
        since = sim.clock()
        ctl.speed(FAST / 10)
        wait_for(lambda: sim.clock() >= since + timedelta(minutes=minutes), 30, "the market to move on")
        ctl.pause()
        ctl.speed(FAST)

    def start_daemon(name: str) -> Cli:
        cli = Cli(["ingest"], env, tmp_path, name)
        procs.append(cli)
        wait_for(lambda: sim_subscribed(ctl), 60, f"{name} to subscribe")
        ctl.resume()
        return cli

    try:
        # 1. SIGTERM mid-bar
        first = Cli(["ingest"], env, tmp_path, "ingest-1")
        procs.append(first)
        wait_for(lambda: count_bars(db_url) >= 10, 60, "10 live 5m bars")
        first.signal(signal.SIGTERM)
        started = time.monotonic()
        code = first.wait(10)
        assert code == 0, first.stderr[-3000:]
        assert time.monotonic() - started < 10
        hb = heartbeat(db_url)
        assert hb["state"] == "stopped" and hb["instance"].endswith(f":{first.proc.pid}")
        assert "event=ingest_stopped" in first.stderr
        conn = connect(db_url)
        try:
            with conn.cursor() as cur:  # the bars open at SIGTERM: not stored, queued durably for repair
                cur.execute("SELECT count(*) FROM bar_repairs WHERE reason = 'partial'")
                assert cur.fetchone()[0] >= 1
        finally:
            conn.close()
        code, out, err = run_cli(["status"], env, tmp_path, "status-1")
        assert code == 0, err
        assert MES in out and "stopped" in out and "bars_written=" in out
        market_goes_on_unseen(30)

        # 2. restart, then SIGKILL mid-bar
        second = start_daemon("ingest-2")
        wait_for(
            lambda: (
                (h := heartbeat(db_url))
                and h["instance"].endswith(f":{second.proc.pid}")
                and h["state"] == "connected"
                and h["counters"]["bars_written"] >= 5
            ),
            60,
            "the restarted daemon to write live bars",
        )
        stored_at_kill = count_bars(db_url)
        second.signal(signal.SIGKILL)
        assert second.wait(10) == -signal.SIGKILL
        assert heartbeat(db_url)["state"] != "stopped"  # no goodbye from a killed daemon
        market_goes_on_unseen(30)

        # 3. restart after the kill: the gap and the open bars lost with the process are repaired
        third = start_daemon("ingest-3")
        wait_store_matches(db_url, sim, timeout=90)
        assert count_bars(db_url) > stored_at_kill
        hb = heartbeat(db_url)
        assert hb["instance"].endswith(f":{third.proc.pid}")
        assert hb["counters"]["repairs"] >= 1
        third.signal(signal.SIGTERM)
        assert third.wait(10) == 0, third.stderr[-3000:]
        assert store_vs_sim(db_url, sim) == ""
        assert_no_duplicates(db_url)
        assert_no_repair_left_behind(db_url, sim)
        code, out, _ = run_cli(["status", "--json"], env, tmp_path, "status-2")
        rows = json.loads(out)
        assert [r["contract_id"] for r in rows] == [MES] and rows[0]["state"] == "stopped"
        assert rows[0]["counters"]["repairs"] >= 1
    finally:
        for p in procs:
            p.kill()
        sim.stop()


def recorded_resumes(url: str) -> int:
    """How many feed resume points wait for their gap repair."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM feed_resumes WHERE contract_id = %s", (MES,))
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_daemon_killed_before_its_gap_repair_leaves_the_gap_to_the_next(db_url, fault_replay, tmp_path):
    """A restarted daemon stores live bars after a 30-minute gap while the history answers 503,
    and is SIGKILLed before it could repair the gap: the resume point it recorded makes the next
    daemon repair that gap (the live bars stored after it must not hide it)."""
    sim, ctl = start_sim(fault_replay, FAST)
    env = cli_env(db_url, sim, write_settings(tmp_path))
    procs: list[Cli] = []
    try:
        first = Cli(["ingest"], env, tmp_path, "ingest-1")
        procs.append(first)
        wait_for(lambda: count_bars(db_url) >= 10, 60, "10 live 5m bars")
        first.signal(signal.SIGTERM)
        assert first.wait(10) == 0, first.stderr[-3000:]
        since = sim.clock()
        ctl.speed(FAST / 10)  # a late pause overshoots by minutes, not past the replay slice
        wait_for(lambda: sim.clock() >= since + timedelta(minutes=30), 30, "the market to move on unseen")
        ctl.pause()
        ctl.speed(FAST)

        second = Cli(["ingest"], env, tmp_path, "ingest-2")
        procs.append(second)
        wait_for(lambda: sim_subscribed(ctl), 60, "ingest-2 to subscribe")
        ctl.rest_errors(status=503, count=100_000, retry_after=0)  # logged in already: only history fails
        ctl.resume()
        wait_for(
            lambda: (h := heartbeat(db_url)) and h["instance"].endswith(f":{second.proc.pid}") and h["counters"]["bars_written"] >= 5,
            60,
            "ingest-2 to write live bars",
        )
        assert ctl.status()["pending_rest_errors"] > 0, "the history answered ingest-2: the scenario needs it down"
        second.signal(signal.SIGKILL)
        assert second.wait(10) == -signal.SIGKILL
        ctl.pause()
        assert store_vs_sim(db_url, sim) != "", "ingest-2 left no hole: nothing to prove"
        assert recorded_resumes(db_url) >= 1, "ingest-2 recorded no resume point"
        ctl.rest_recover()

        third = Cli(["ingest"], env, tmp_path, "ingest-3")
        procs.append(third)
        wait_for(lambda: sim_subscribed(ctl), 60, "ingest-3 to subscribe")
        ctl.resume()
        wait_store_matches(db_url, sim, timeout=90)
        third.signal(signal.SIGTERM)
        assert third.wait(10) == 0, third.stderr[-3000:]
        assert store_vs_sim(db_url, sim) == ""
        assert_no_duplicates(db_url)
        assert_no_repair_left_behind(db_url, sim)
        assert recorded_resumes(db_url) == 0, "a repaired gap's resume point was kept"
    finally:
        for p in procs:
            p.kill()
        sim.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_database_restart_then_a_new_daemon_stores_every_daily_bar(db_server, db_url, tmp_path):
    """The MES replay with 5m, 1h, 4h and 1d, its last two sessions live (the days before from
    history); the daemon SIGKILLed after a few hundred live 5m bars, the database server
    restarted, a new daemon started: every bar of every timeframe is stored, the 36 daily bars
    included (on TimescaleDB only the first two once were)."""
    timeframes = parse_timeframes("5m,1h,4h,1d")
    settings = write_settings(tmp_path, "5m, 1h, 4h, 1d", initial_lookback_days=SAMPLE_LOOKBACK_DAYS)
    sim, ctl = start_sim(None, 20_000, start_time=LIVE_TAIL_START)
    procs: list[Cli] = []
    history_5m = len(expected_bars(sim, TF_5M))  # the clock waits for the subscription at the live start
    url = db_url
    try:
        first = Cli(["ingest"], cli_env(url, sim, settings), tmp_path, "ingest-1")
        procs.append(first)
        wait_for(lambda: count_bars(url) >= history_5m + 300, 120, "the history and 300 live 5m bars")
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        ctl.pause()
        if db_server.cluster is not None:  # an external server cannot be restarted from here
            db_server.cluster.stop()
            state = db_server.cluster.start()
            db_server.admin_url = state.url("postgres")  # for the fixtures' teardown
            url = with_port(db_url, state.port)
        second = Cli(["ingest"], cli_env(url, sim, settings), tmp_path, "ingest-2")
        procs.append(second)
        wait_for(lambda: sim_subscribed(ctl), 60, "the new daemon to subscribe")
        ctl.speed("max")
        ctl.resume()
        wait_store_matches(url, sim, timeout=200, timeframes=timeframes)
        second.signal(signal.SIGTERM)
        assert second.wait(10) == 0, second.stderr[-3000:]
        assert store_vs_sim(url, sim, timeframes) == ""
        assert count_bars(url, parse_timeframe("1d")) == len(expected_bars(sim, parse_timeframe("1d"))) == 36
        assert count_bars(url) == 10_000
        assert_no_duplicates(url)
        assert_no_repair_left_behind(url, sim)
    finally:
        for p in procs:
            p.kill()
        sim.stop()


@pytest.mark.timeout(90)
def test_a_second_daemon_for_the_same_contract_refuses_to_start(db_url, fault_replay, tmp_path):
    """While a daemon holds the contract's lock, `projectx ingest` for it exits 2 with one line
    naming the contract, and the first daemon goes on; once it stops, a new one starts."""
    sim, ctl = start_sim(fault_replay, 1)
    try:
        env = cli_env(db_url, sim, write_settings(tmp_path))
        with InProcessDaemon(db_url, sim) as first:
            wait_for(lambda: heartbeat(db_url), 20, "the first daemon's heartbeat")
            code, out, err = run_cli(["ingest"], env, tmp_path, "second")
            assert code == 2, err
            errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
            assert len(errors) == 1 and errors[0].startswith("projectx ingest: error: "), err
            assert MES in errors[0] and "already running" in errors[0]
            assert "Traceback" not in err
            assert first.thread.is_alive()
            assert heartbeat(db_url)["instance"] == first.daemon.instance_id
        # once the first one is gone, the lock is free again
        again = Cli(["ingest"], env, tmp_path, "third")
        try:
            wait_for(lambda: heartbeat(db_url)["instance"].endswith(f":{again.proc.pid}"), 30, "the next daemon to start")
            again.signal(signal.SIGTERM)
            assert again.wait(10) == 0
        finally:
            again.kill()
    finally:
        sim.stop()


@pytest.mark.timeout(90)
def test_logs_never_contain_the_api_key(db_url, fault_replay, tmp_path):
    """The CLI daemon with real-style credentials and DEBUG logs, through two logins (tokens
    expired in between): the API key appears nowhere in its stdout or stderr."""
    secret = "sEcReT-4pi-KEY-0123456789"
    sim, ctl = start_sim(fault_replay, FAST, username="u", api_key=secret)
    daemon = None
    try:
        env = cli_env(db_url, sim, write_settings(tmp_path), PROJECTX_USERNAME="u", PROJECTX_API_KEY=secret, PROJECTX_LOG_LEVEL="DEBUG")
        daemon = Cli(["ingest"], env, tmp_path, "ingest")
        wait_for(lambda: count_bars(db_url) >= 10, 60, "live 5m bars")
        ctl.expire_tokens()  # forces a second login (the key is sent again) and 401s in the logs
        wait_for(lambda: (h := heartbeat(db_url)) and h["counters"]["reconnects"] >= 1, 60, "a reconnect after the expiry")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        out, err = daemon.stdout, daemon.stderr
        assert err.count("event=token_obtained") >= 2  # it did log in with the key, twice
        assert "level=debug" in err
        assert secret not in out and secret not in err
    finally:
        if daemon is not None:
            daemon.kill()
        sim.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bars_committed_asynchronously_survive_a_server_crash(sample_dir):
    """Live bars commit asynchronously (for latency); a crashed server may lose the last of them.
    The writer keeps what it wrote in the last seconds and writes it again after reconnecting."""
    import select
    import shutil
    import tempfile

    from projectx_pipeline.ingest.counters import Counters
    from projectx_pipeline.ingest.writer import StoreWriter
    from projectx_pipeline.storage.db import connect as db_connect
    from projectx_pipeline.storage.local_db import LocalCluster
    from projectx_pipeline.storage.migrate import migrate

    base = tempfile.mkdtemp(prefix="projectx-crash-")  # a server of its own: it is crashed on purpose
    os.chmod(base, 0o755)
    cluster = LocalCluster(base)
    url = cluster.start().url()
    c = db_connect(url)
    migrate(c)
    c.close()
    bars = read_bars_csv(sample_dir / "CON.F.US.MES.M25_5m.csv").iloc[:400]
    writer = StoreWriter(
        url,
        [MES],
        {MES: Counters()},
        instance_id="crash-test",
        outage_buffer_bars=10_000,
        trade_flush_seconds=1.0,
        trade_batch_size=5000,
        heartbeat_seconds=0.5,
        repair_delay_seconds=1.0,
        heartbeat_state=lambda: {MES: {"connection_state": "connected", "last_event_at": None, "last_trade_at": None}},
    )
    try:
        writer.acquire_locks()
        writer.start()
        listener = db_connect(url)
        listener.autocommit = True
        listener.cursor().execute("LISTEN ohlc_update")
        announced = 0
        for i in range(len(bars)):
            writer.submit_bars(bars.iloc[i : i + 1])
        deadline = time.monotonic() + 60
        while announced < len(bars) and time.monotonic() < deadline:  # every bar committed (asynchronously)
            select.select([listener], [], [], 1)
            listener.poll()
            announced += sum(len(json.loads(n.payload)) for n in listener.notifies)
            listener.notifies.clear()
        assert announced == len(bars)
        listener.close()
        cluster.stop(mode="immediate")  # a crash: no shutdown checkpoint
        cluster.start()
        check = db_connect(url)
        try:
            deadline = time.monotonic() + 60
            while True:
                stored = read_bars(check, MES, parse_timeframe("5m"))
                if len(stored) == len(bars) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            pd.testing.assert_frame_equal(stored, bars.reset_index(drop=True))
        finally:
            check.close()
        assert writer.counters[MES].db_errors >= 1  # the crash was noticed and counted
    finally:
        writer.stop(5)
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(60)
def test_a_connection_lost_while_announcing_ticks_never_kills_the_writer(db_url):
    """The connection dies under the writer while it announces trades on tick_data_channel with a
    heartbeat due: the writer counts the error, reconnects and goes on (it once went on to the
    heartbeat with no connection, and its thread died with an AttributeError, silently)."""
    from projectx_pipeline.ingest.counters import Counters
    from projectx_pipeline.ingest.writer import StoreWriter
    from projectx_pipeline.storage.trades import TradeBatch

    writer = StoreWriter(
        db_url,
        [MES],
        {MES: Counters()},
        instance_id="tick-loss-test",
        outage_buffer_bars=10_000,
        trade_flush_seconds=3600.0,
        trade_batch_size=1_000_000,
        heartbeat_seconds=0.0,
        repair_delay_seconds=1.0,
        heartbeat_state=lambda: {MES: {"connection_state": "connected", "last_event_at": None, "last_trade_at": None}},
    )
    admin = connect(db_url)
    admin.autocommit = True
    try:
        writer.acquire_locks()
        # the writer's session is killed while idle; its next statement is the tick NOTIFY
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'projectx_ingest%%' AND pid <> pg_backend_pid()"
            )
            assert cur.fetchone() is not None
        writer.submit_trades(TradeBatch(MES, [1_742_162_400_000_000_000], [5679.75], [1], [0], datetime.now().astimezone()))
        writer.start()
        wait_for(lambda: writer.counters[MES].db_errors >= 1, 20, "the lost connection to be noticed")
        wait_for(lambda: heartbeat(db_url) is not None, 20, "a heartbeat after reconnecting")
        assert writer.is_alive() and writer.fatal is None
    finally:
        writer.stop(5)
        admin.close()
