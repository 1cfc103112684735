"""`projectx dev --play-roll` (`make dev-roll`): the simulator lists the settings' symbols and
plays their latest roll before now, its clock starting 100 minutes before the roll instant.

The unit tests give `roll_to_play` its 'now'; the end-to-end test runs the simulator command
dev builds (a real process on a real socket, at an overriding --speed) and the ingestion daemon
as `make dev` starts them, and compares the stored bars of both months with the gateway's
history across the roll. The daemon's side of a roll in depth (the followed pair switching on the
open connection, the roll points, the continuous series, the heartbeats) is test_ingest_rolls'."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from projectx_pipeline import dev
from projectx_pipeline.cli import build_parser
from projectx_pipeline.domain.market import normalize_bars
from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import CalendarRoll, ContractMonth, roll_instant
from projectx_pipeline.domain.timeframes import parse_timeframes
from projectx_pipeline.domain.timestamps import parse_iso_time
from projectx_pipeline.errors import UsageError
from projectx_pipeline.gateway.client import GatewayClient
from projectx_pipeline.gateway.config import GatewayConfig
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.settings import Settings, load_settings
from projectx_pipeline.storage.bars import read_bars
from projectx_pipeline.storage.db import connect

from .support.bars import bar_diff
from .support.cli import Cli
from .support.database import assert_no_duplicates, scalar
from .support.dev_run import DevWiring
from .support.network import free_port
from .support.waiting import wait_for

U26, Z26, H27 = (f"CON.F.US.MES.{c}" for c in ("U26", "Z26", "H27"))
NYSE = CalendarDays()
SEPTEMBER_ROLL = roll_instant(ContractMonth.of(U26), CalendarRoll(), NYSE)  # U26 → Z26, the default rule's
TODAY = datetime(2026, 12, 4, 19, tzinfo=timezone.utc)  # the Z26 → H27 roll (2026-12-09 23:00 UTC) is ahead


def settings_with(tmp_path: Path, body: str, **environ: str) -> Settings:
    """Settings from `body` (what is collected, the roll rule) plus a timeframe, and `environ`."""
    path = tmp_path / "settings.yaml"
    path.write_text(body + "timeframes: [1m]\n")
    return load_settings({"PROJECTX_SETTINGS": str(path), **environ})


def dev_args(*argv: str):
    return build_parser("dev").parse_args(["dev", "--play-roll", *argv])


@pytest.fixture
def mes(tmp_path) -> Settings:
    return settings_with(tmp_path, "instruments:\n  - symbol: MES\n")


def test_the_september_roll_is_the_latest_before_today(mes):
    roll = dev.roll_to_play(mes, TODAY)
    assert SEPTEMBER_ROLL == datetime(2026, 9, 9, 22, tzinfo=timezone.utc)  # 18:00 New York, trade date 2026-09-10
    assert roll.at == SEPTEMBER_ROLL
    (point,) = roll.points
    assert (str(point.from_month.contract_id()), str(point.to_month.contract_id())) == (U26, Z26)
    assert roll.clock_start == SEPTEMBER_ROLL - timedelta(minutes=100)  # 16:20 New York: session, the halt, the roll


@pytest.mark.parametrize(
    ("now", "played"),
    [
        (SEPTEMBER_ROLL, ("M26", "U26")),  # a roll is played once it is past
        (SEPTEMBER_ROLL + timedelta(seconds=1), ("U26", "Z26")),
        (datetime(2026, 12, 9, 23, 0, 1, tzinfo=timezone.utc), ("Z26", "H27")),  # December's, at 18:00 New York in winter time
    ],
)
def test_the_roll_played_is_the_latest_before_now(mes, now, played):
    (point,) = dev.roll_to_play(mes, now).points
    assert (point.from_month.code, point.to_month.code) == played
    assert point.at < now


def test_the_roll_instant_follows_the_settings_roll_rule(tmp_path):
    settings = settings_with(tmp_path, "instruments:\n  - symbol: MES\nrolls:\n  days_before_expiry: 5\n")
    roll = dev.roll_to_play(settings, TODAY)
    assert roll.at == roll_instant(ContractMonth.of(U26), CalendarRoll(5), NYSE) != SEPTEMBER_ROLL
    # expiry Friday 2026-09-18 - 5 days is a Sunday: the roll date moves to Friday 2026-09-11
    assert roll.at == datetime(2026, 9, 10, 22, tzinfo=timezone.utc)
    assert "rule calendar:5" in dev.playing(roll, 60, settings)[0]


def test_the_command_lists_the_settings_symbols_from_before_the_roll(tmp_path):
    settings = settings_with(tmp_path, "instruments:\n  - symbol: MES\n  - symbol: MNQ\n")
    roll = dev.roll_to_play(settings, TODAY)
    assert [(p.symbol, p.at) for p in roll.points] == [("MES", SEPTEMBER_ROLL), ("MNQ", SEPTEMBER_ROLL)]
    command = dev.roll_simulator_command(dev_args("--simulator-port", "5999", "--host", "0.0.0.0"), roll)
    assert command[:2] == ["projectx", "simulate"]
    simulate = build_parser("simulate").parse_args(command[1:])
    assert simulate.symbols == ["MES", "MNQ"]
    assert parse_iso_time(simulate.start, "--start") == SEPTEMBER_ROLL - timedelta(minutes=100)
    assert (simulate.host, simulate.port, simulate.speed) == ("0.0.0.0", 5999, "60")
    # the clock waits for the daemon's subscription: the session before the halt is collected live
    assert simulate.wait_for_subscriber
    assert not simulate.shift_to_now and simulate.replay is None and simulate.synthetic is None


def test_speed_overrides_the_default_and_must_be_a_number(mes):
    roll = dev.roll_to_play(mes, TODAY)
    command = dev.roll_simulator_command(dev_args("--speed", "240"), roll)
    assert command[command.index("--speed") + 1] == "240"
    for bad in ("max", "0", "fast"):
        with pytest.raises(UsageError, match="--speed"):
            dev.roll_simulator_command(dev_args("--speed", bad), roll)


def test_the_replay_keeps_its_own_speed(monkeypatch):
    """--play-roll's default speed is its own; the replay's stays PROJECTX_DEV_SPEED or 10."""
    monkeypatch.delenv("PROJECTX_DEV_SPEED", raising=False)
    replay = build_parser("dev").parse_args(["dev"])
    assert dev.replay_speed(replay) == "10"
    monkeypatch.setenv("PROJECTX_DEV_SPEED", "30")
    assert dev.replay_speed(replay) == "30"
    assert dev.play_roll_speed(dev_args()) == 60.0
    assert dev.replay_speed(build_parser("dev").parse_args(["dev", "--speed", "max"])) == "max"


def test_settings_with_contracts_only_are_refused_naming_what_is_expected(tmp_path):
    settings = settings_with(tmp_path, "contracts:\n  - id: CON.F.US.MNQ.H27\n")
    with pytest.raises(UsageError, match=r"--play-roll .* has none \(only the contracts CON.F.US.MNQ.H27\): expected a symbol in instruments"):
        dev.roll_to_play(settings, TODAY)


def test_a_symbol_the_simulator_cannot_list_is_refused_by_name(tmp_path):
    settings = settings_with(tmp_path, "instruments:\n  - symbol: CL\n")
    with pytest.raises(UsageError, match="--play-roll: unknown symbol 'CL' for a listing: expected one of the equity-index roots"):
        dev.roll_to_play(settings, TODAY)


@pytest.mark.parametrize(
    "environ",
    [
        {"PROJECTX_GATEWAY": "projectx", "PROJECTX_USERNAME": "u", "PROJECTX_API_KEY": "k"},
        {"PROJECTX_USERNAME": "u", "PROJECTX_API_KEY": "k"},  # credentials with PROJECTX_GATEWAY unset choose the real gateway
    ],
)
def test_the_real_gateway_is_refused(tmp_path, environ):
    settings = settings_with(tmp_path, "instruments:\n  - symbol: MES\n", **environ)
    with pytest.raises(UsageError, match="--play-roll plays a roll on the simulator, and the settings choose the real gateway"):
        dev.roll_to_play(settings, TODAY)


def test_credentials_with_the_simulator_chosen_play_the_roll(tmp_path):
    settings = settings_with(tmp_path, "instruments:\n  - symbol: MES\n", PROJECTX_GATEWAY="simulator", PROJECTX_USERNAME="u", PROJECTX_API_KEY="k")
    assert dev.roll_to_play(settings, TODAY).at == SEPTEMBER_ROLL


def test_the_refusal_comes_before_anything_starts(tmp_path, monkeypatch):
    """No database, no workspace check: `projectx dev --play-roll` with the real gateway stops first."""
    monkeypatch.chdir(tmp_path)  # no workspace.yaml here: that error would come next
    for name in list(os.environ):
        if name.startswith("PROJECTX_") or name in ("DATABASE_URL", "DAGSTER_PG_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PROJECTX_GATEWAY", "projectx")
    monkeypatch.setenv("PROJECTX_USERNAME", "u")
    monkeypatch.setenv("PROJECTX_API_KEY", "k")
    monkeypatch.setattr(dev, "_Children", None)  # anything started would fail on it
    with pytest.raises(UsageError, match="real gateway"):
        dev.run(dev_args())


def test_the_banner_says_what_plays_and_that_freshness_will_fail(mes):
    playing, note = dev.playing(dev.roll_to_play(mes, TODAY), 60, mes)
    assert f"MES {U26} → {Z26} at 2026-09-09 22:00 UTC (18:00 New York, the session open of trade date 2026-09-10" in playing
    assert "100 minutes before it at 60×, reaching the roll 100 s after the daemon subscribes" in playing
    assert "from September 2026" in note and "freshness check (ohlc_bars_fresh) reports them stale" in note


def test_dev_runs_the_roll_simulator_and_prints_the_roll(db_url, tmp_path, monkeypatch, capsys):
    """`projectx dev --play-roll` without starting anything: the simulator command and the banner."""
    wiring = DevWiring(db_url, tmp_path, monkeypatch)
    args = dev_args("--speed", "90")
    wiring.run(args)
    started = wiring.started
    roll = dev.roll_to_play(load_settings(), datetime.now(timezone.utc))
    assert started["simulator"] == dev.roll_simulator_command(args, roll)
    assert set(started) == {"simulator", "ingest", "dagster-webserver", "dagster-daemon"}
    out = capsys.readouterr().out
    assert "listing MES" in out and "playing      the latest roll before now: MES" in out and "at 90×" in out, out
    assert "replaying" not in out


# --------------------------------------------------------------------------- end to end

TIMEFRAMES = parse_timeframes("1m,5m")


def stored(url: str, contract_id: str, tf, start: datetime, end: datetime):
    conn = connect(url)
    try:
        return normalize_bars(read_bars(conn, contract_id, tf, start, end))
    finally:
        conn.close()


def history(gateway: GatewayClient, contract_id: str, tf, start: datetime, end: datetime):
    """The gateway's complete bars labelled in [start, end)."""
    bars = gateway.retrieve_bars(contract_id, tf, start, end)
    return normalize_bars(bars[bars["timestamp"] < end].reset_index(drop=True))


def store_vs_history(url: str, gateway: GatewayClient, contract_id: str, start: datetime, end: datetime) -> str:
    """'' when the stored bars of `contract_id` labelled in [start, end) are the gateway's, bar for bar."""
    diffs = [
        bar_diff(history(gateway, contract_id, tf, start, end), stored(url, contract_id, tf, start, end), f"{contract_id} {tf.label}")
        for tf in TIMEFRAMES
    ]
    return "; ".join(d for d in diffs if d)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_make_dev_roll_collects_the_front_month_across_the_roll_with_nothing_lost(db_url, tmp_path):
    """The simulator command `make dev-roll` builds and the daemon as `make dev` starts it (rate
    limits on, the settings naming the symbol only): the old front month stored with no gap up
    to the roll, the new one through it and live after it. --speed 120 halves the wait."""
    settings_path = tmp_path / "settings.yaml"
    settings_path.write_text(
        "instruments:\n  - symbol: MES\ntimeframes: [1m, 5m]\n"
        "ingest:\n  repair_delay_seconds: 0.5\n  heartbeat_seconds: 1.0\n  trade_flush_seconds: 0.5\n  initial_lookback_days: 1\n"
    )
    settings = load_settings({"PROJECTX_SETTINGS": str(settings_path)})
    port = free_port()
    args = dev_args("--simulator-port", str(port), "--speed", "120")
    roll = dev.roll_to_play(settings, datetime.now(timezone.utc))
    (point,) = roll.points
    old, new = str(point.from_month.contract_id()), str(point.to_month.contract_id())
    later = str(point.to_month.next_quarterly().contract_id())
    command = dev.roll_simulator_command(args, roll)
    sim_log = open(tmp_path / "simulator.out", "wb")
    sim = subprocess.Popen([sys.executable, "-m", "projectx_pipeline", *command[1:]], stdout=sim_log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    daemon = None
    try:
        ctl = SimulatorControl(f"{url}/control")
        status = wait_for(lambda: ctl.status(), 30, lambda: f"the simulator to start: {(tmp_path / 'simulator.out').read_text()[-2000:]}")
        # the listing holds both months of the roll, the old one front at the start; the clock
        # waits at the start for the daemon
        listed = {c["id"]: c for c in status["listed_contracts"]}
        assert listed[old]["front"] and listed[old]["active"] and not listed[new]["front"] and listed[new]["active"], listed
        assert status["waiting_for_subscriber"] and datetime.fromisoformat(status["clock"]) == roll.clock_start
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTX_") and k not in ("DATABASE_URL", "DAGSTER_PG_URL")}
        env.update(DATABASE_URL=db_url, PROJECTX_API_URL=url, PROJECTX_RTC_URL=url, PROJECTX_SETTINGS=str(settings_path), PYTHONUNBUFFERED="1")
        daemon = Cli(["ingest"], env, tmp_path, "ingest")

        clock = lambda: datetime.fromisoformat(ctl.status()["clock"])  # noqa: E731
        wait_for(lambda: clock() >= roll.at + timedelta(minutes=20), 150, lambda: f"the clock to pass the roll by 20 minutes ({clock()})")
        wait_for(
            lambda: (s := ctl.status()["subscriptions"]["trades"]).get(new, 0) > 0 and s.get(later, 0) > 0 and s.get(old, 0) == 0,
            30,
            lambda: f"the daemon to follow {new} and {later} ({ctl.status()['subscriptions']['trades']}): {daemon.stderr[-2000:]}",
        )
        ctl.pause()
        # compared from half a day before the clock's start (inside the daemon's one-day look-back,
        # repaired from history) to the roll for the old month, to 15 minutes past it for the new one
        first, end = roll.clock_start - timedelta(hours=12), roll.at + timedelta(minutes=15)
        with GatewayClient(GatewayConfig(url, url, "test", "test", True)) as gateway:
            wait_for(
                lambda: not store_vs_history(db_url, gateway, old, first, roll.at) and not store_vs_history(db_url, gateway, new, first, end),
                90,
                lambda: (
                    "the store to equal the gateway's history: "
                    f"{store_vs_history(db_url, gateway, old, first, roll.at)} | {store_vs_history(db_url, gateway, new, first, end)}"
                ),
            )
            # not vacuous: the old month traded up to the halt before the roll, the new one after it
            last_old = history(gateway, old, TIMEFRAMES[0], roll.at - timedelta(hours=2), roll.at)["timestamp"].max()
            assert last_old >= roll.at - timedelta(hours=1, minutes=5), last_old  # 16:59 New York, before the daily halt
            assert len(history(gateway, new, TIMEFRAMES[0], roll.at, end)) >= 10
        live = 'SELECT count(*) FROM ohlc_bars WHERE contract_id = %s AND "timestamp" >= %s AND "timestamp" < %s AND source = %s'
        # the old front month came live from the clock's start to the halt, the new one after the
        # roll; the old one was dropped at the roll
        assert scalar(db_url, live, (old, roll.clock_start, roll.at, "live")) > 0
        assert scalar(db_url, live, (new, roll.at, end, "live")) > 0
        assert scalar(db_url, live, (old, roll.at + timedelta(minutes=1), end, "live")) == 0
        assert_no_duplicates(db_url)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.stderr[-3000:]
        assert "Traceback" not in daemon.stderr
    finally:
        if daemon is not None:
            daemon.kill()
        sim.terminate()
        sim.wait(10)
        sim_log.close()


# --------------------------------------------------------------------------- stopping what `make dev` started


GRANDCHILD = """
import signal, subprocess, sys, time
def stop(*_):
    # a child that starts a process while it shuts down, as dagster-webserver's code server did
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], "w").close()  # ready: the handler is in place
time.sleep(120)
"""


def test_stopping_ends_what_a_child_started_while_it_shut_down(tmp_path):
    children = dev._Children()
    ready = tmp_path / "ready"
    proc = children.start("child", [sys.executable, "-c", GRANDCHILD, str(ready)], dict(os.environ))
    wait_for(ready.exists, 20, "the child to start")
    children.stop_all(timeout=10)
    assert proc.returncode == 0  # the child itself stopped on SIGTERM
    assert _group_members(proc.pid) == 0  # and the process it started then is gone with it


def _group_members(pgid: int) -> int:
    """How many live processes (not zombies) the process group has."""
    out = subprocess.run(["ps", "-e", "-o", "pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line.split()[0] == str(pgid) and not line.split()[1].startswith("Z"))
