"""The daemon follows a symbol's front month through a roll, without a restart, and loses or
doubles no bar across it: the simulator lists the MES quarterly months around its clock and
plays the September 2026 roll (trade date 2026-09-10, whose session opens 2026-09-09 18:00 New
York) in about a minute; the daemon is the CLI as a user runs it, configured with the symbol only.
A past roll: the feed parser refuses trades stamped more than a day after the machine's clock."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import CalendarRoll, ContractMonth, roll_instant
from projectx_pipeline.domain.timeframes import parse_timeframes
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.storage.bars import read_bars
from projectx_pipeline.storage.continuous import read_continuous_bars, recorded_roll_points
from projectx_pipeline.storage.db import connect

from .support.bars import bar_diff, complete_windows
from .support.cli import Cli, cli_env, run_cli
from .support.database import assert_no_duplicates
from .support.waiting import wait_for

OLD, NEW, NEXT = (f"CON.F.US.MES.{c}" for c in ("U26", "Z26", "H27"))
ROLL = roll_instant(ContractMonth.of(OLD), CalendarRoll(), CalendarDays())  # U26 → Z26
TIMEFRAMES = parse_timeframes("1m,5m,1h")
SPEED = 120  # 30 market minutes in 15 s


def write_symbol_settings(directory: Path) -> Path:
    path = directory / "settings.yaml"
    path.write_text(
        "instruments:\n  - symbol: MES\n    tick_size: 0.25\n"
        "timeframes: [1m, 5m, 1h]\n"
        "ingest:\n  repair_delay_seconds: 0.5\n  heartbeat_seconds: 1.0\n  trade_flush_seconds: 0.5\n  initial_lookback_days: 1\n"
        "storage:\n  trades_retention_days: 36500\n"
    )
    return path


def stored(url: str, contract_id: str, tf) -> object:
    conn = connect(url)
    try:
        return read_bars(conn, contract_id, tf)
    finally:
        conn.close()


def store_vs_history(url: str, sim: SimulatorServer, contract_id: str, start: datetime, end: datetime) -> str:
    """'' when the stored bars of `contract_id` labelled in [start, end) equal the simulator's
    complete bars there, for every timeframe."""
    out = []
    for tf in TIMEFRAMES:
        want = complete_windows(sim.history_bars(contract_id, tf, start, end), tf, sim.clock())
        got = stored(url, contract_id, tf)
        got = got[(got["timestamp"] >= start) & (got["timestamp"] < end)].reset_index(drop=True)
        out.append(bar_diff(want.reset_index(drop=True), got, f"{contract_id} {tf.label}"))
    return "; ".join(d for d in out if d)


def live_bars_from(url: str, contract_id: str, start: datetime) -> int:
    """How many bars of `contract_id` from `start` on the live feed wrote (any timeframe)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT count(*) FROM ohlc_bars WHERE contract_id = %s AND "timestamp" >= %s AND source = %s', (contract_id, start, "live"))
            return cur.fetchone()[0]
    finally:
        conn.close()


def heartbeat_states(url: str) -> dict[str, str]:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT contract_id, connection_state FROM ingestion_heartbeats")
            return dict(cur.fetchall())
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_daemon_follows_the_front_month_across_a_roll_with_nothing_lost(db_url, tmp_path):
    """Live bars of each month under its own id, the followed pair switched at the roll instant
    on the open connection, the roll points recorded, the continuous series switching there."""
    start = ROLL - timedelta(minutes=100)  # 16:20 New York: 40 minutes of session, the halt, the roll at the open
    sim = SimulatorServer(symbols=["MES"], start_time=start, speed=SPEED, wait_for_subscriber=True, rate_limits=False).start()
    ctl = SimulatorControl(sim.control_url)
    daemon = Cli(["ingest"], cli_env(db_url, sim, write_symbol_settings(tmp_path)), tmp_path, "ingest")
    try:
        # before the roll: the front month and the next, subscribed at start (or once the feed's
        # first event says its time, when the machine's clock says another pair)
        wait_for(lambda: sim.clock() >= ROLL - timedelta(minutes=70), 90, "the market to reach the last half hour before the halt")
        wait_for(
            lambda: (s := ctl.status()["subscriptions"]["trades"]).get(OLD, 0) > 0 and s.get(NEW, 0) > 0 and s.get(NEXT, 0) == 0,
            10,
            lambda: f"the daemon to follow {OLD} and {NEW} ({ctl.status()['subscriptions']['trades']})",
        )
        # across the roll: NEW becomes front, NEXT is subscribed ahead, OLD is dropped
        wait_for(lambda: sim.clock() >= ROLL + timedelta(minutes=30), 120, "the market to pass the roll by half an hour")
        wait_for(
            lambda: (s := ctl.status()["subscriptions"]["trades"]).get(NEXT, 0) > 0 and s.get(OLD, 0) == 0,
            30,
            lambda: f"the daemon to follow {NEW} and {NEXT} ({ctl.status()['subscriptions']['trades']})",
        )
        ctl.pause()
        # compared: from inside the initial look-back (a day before the feed's first repair) to
        # 20 minutes past the roll (every bar of that window closed before the pause)
        first_live, end = start - timedelta(days=1) + timedelta(minutes=15), ROLL + timedelta(minutes=20)
        wait_for(
            lambda: not any(store_vs_history(db_url, sim, c, first_live, e) for c, e in ((OLD, ROLL), (NEW, end), (NEXT, end))),
            90,
            lambda: (
                "the store to equal the simulator's history: "
                + " | ".join(store_vs_history(db_url, sim, c, first_live, e) for c, e in ((OLD, ROLL), (NEW, end), (NEXT, end)))
            ),
        )
        # the old front month's live bars stop at the roll: it is no longer subscribed (the daemon
        # notices the roll within a drain cycle; the month trades on until its expiry, and a gap
        # repair may still store its history under its own id, which the continuous series skips)
        assert live_bars_from(db_url, OLD, ROLL + timedelta(minutes=1)) == 0
        assert live_bars_from(db_url, NEW, ROLL + timedelta(minutes=1)) > 0
        # the new front month's bars run through the roll without a hole: live before it (as the
        # next month) and after it
        new_front = stored(db_url, NEW, TIMEFRAMES[0])
        assert (new_front["timestamp"] < ROLL - timedelta(hours=1)).any() and (new_front["timestamp"] >= ROLL).any()
        assert_no_duplicates(db_url)
        # the roll points the daemon recorded make the continuous series switch at the roll
        conn = connect(db_url)
        try:
            with conn:
                points = recorded_roll_points(conn, "MES")
                series = read_continuous_bars(conn, "MES", TIMEFRAMES[0], first_live, end)
        finally:
            conn.close()
        assert any(p.at == ROLL and str(p.from_month.contract_id()) == OLD and str(p.to_month.contract_id()) == NEW for p in points), points
        before, after = series[series["timestamp"] < ROLL], series[series["timestamp"] >= ROLL]
        assert set(before["contract_id"]) == {OLD} and set(after["contract_id"]) == {NEW}, series.groupby("contract_id").size()
        assert series["timestamp"].is_unique and series["timestamp"].is_monotonic_increasing
        old_bars, new_bars = stored(db_url, OLD, TIMEFRAMES[0]), stored(db_url, NEW, TIMEFRAMES[0])
        assert len(before) == ((old_bars["timestamp"] >= first_live) & (old_bars["timestamp"] < ROLL)).sum() > 0
        assert len(after) == ((new_bars["timestamp"] >= ROLL) & (new_bars["timestamp"] < end)).sum() > 0
        states = heartbeat_states(db_url)
        assert states.get(OLD) == "rolled" and states.get(NEW) == "connected" and states.get(NEXT) == "connected", states
        # the health check judges the symbol by the months followed now: the rolled month's
        # heartbeat does not make it unhealthy, the followed ones do once the daemon stops
        env = cli_env(db_url, sim, write_symbol_settings(tmp_path))
        code, out, err = run_cli(["status", "--check", "--max-age", "60"], env, tmp_path, "status-during")
        assert code == 0, out + err
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0, daemon.stderr[-3000:]
        log = daemon.stderr
        at_roll = [ln for ln in log.splitlines() if "event=contracts_followed" in ln and f"added={NEXT}" in ln and f"dropped={OLD}" in ln]
        assert len(at_roll) == 1, log[-3000:]
        assert f"front_months={NEW}" in at_roll[0]
        assert "Traceback" not in log
        code, out, _ = run_cli(["status", "--check"], env, tmp_path, "status-after")
        stale = [ln for ln in out.splitlines() if ln.startswith("stale: ")]
        assert code == 1 and len(stale) == 1 and set(stale[0].removeprefix("stale: ").split(", ")) == {NEW, NEXT}, out
        assert heartbeat_states(db_url) == {OLD: "rolled", NEW: "stopped", NEXT: "stopped"}
    finally:
        daemon.kill()
        sim.stop()


def test_a_symbol_the_gateway_does_not_list_stops_the_daemon_with_one_line(db_url, tmp_path):
    sim = SimulatorServer(symbols=["MES"], start_time=datetime(2026, 9, 1, 15, tzinfo=timezone.utc), speed=1, rate_limits=False).start()
    try:
        settings = tmp_path / "settings.yaml"
        settings.write_text("instruments:\n  - symbol: MNQ\ntimeframes: [1m]\n")
        daemon = Cli(["ingest"], cli_env(db_url, sim, settings), tmp_path, "ingest")
        try:
            assert daemon.wait(60) == 2, daemon.stderr[-3000:]
        finally:
            daemon.kill()
        errors = [ln for ln in daemon.stderr.splitlines() if "error" in ln.lower()]
        assert len(errors) == 1, daemon.stderr
        assert "'MNQ'" in errors[0] and "['MES']" in errors[0] and "Traceback" not in daemon.stderr
    finally:
        sim.stop()
