"""`projectx dev` (what `make dev` runs): the whole platform on one machine.

Local database (unless DATABASE_URL is set) → migrations → simulator replaying the MES sample
shifted to the present, its first two weeks already history (unless the settings choose the
real gateway: PROJECTX_GATEWAY=projectx, or, with it unset, PROJECTX_USERNAME and
PROJECTX_API_KEY both set) → ingestion daemon → Dagster webserver
(127.0.0.1:3000) and daemon. Ctrl-C (or SIGTERM) stops everything, children first, then the
database this command started.

`projectx dev --play-roll` (`make dev-roll`) runs the same platform with the simulator listing
the settings' symbols instead of the replay, its clock starting shortly before their latest
quarterly roll before now, so the daemon is seen following the front month across it. A past
roll, because the daemon refuses trades stamped more than a day after the machine's clock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:  # imported when the command runs, so `projectx --help` stays fast
    from .domain.rolls import RollPoint
    from .settings import Settings

REPLAY_SPEED = "10"  # a 5m bar of the sample every 30 s
PLAY_ROLL_SPEED = "60"  # the PLAY_ROLL_LEAD before the roll in 100 s
# The clock of --play-roll starts this long before the roll instant (18:00 New York): 16:20, so
# the daemon collects 40 minutes of session, then the daily halt, then the roll at the open.
PLAY_ROLL_LEAD = timedelta(minutes=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--webserver-port", type=int, default=3000)
    parser.add_argument("--simulator-port", type=int, default=5080)
    parser.add_argument(
        "--speed",
        help=f"simulator speed (× real time; 'max' for the replay only); default for the replay PROJECTX_DEV_SPEED or {REPLAY_SPEED}"
        f" (a 5m bar every 30 s), with --play-roll {PLAY_ROLL_SPEED} (the roll {PLAY_ROLL_LEAD.total_seconds() / float(PLAY_ROLL_SPEED):g} s"
        " after the daemon subscribes)",
    )
    parser.add_argument(
        "--history-days",
        type=float,
        default=14.0,
        help="days of the MES sample the simulator serves as history when the platform starts (default 14); the replay is shifted"
        " to the present, so 'the last N days' has bars and the live feed is today's (not with --play-roll: its synthetic market"
        " has history before its clock)",
    )
    parser.add_argument(
        "--play-roll",
        action="store_true",
        help="instead of the replay, the simulator lists the settings' symbols and plays their latest quarterly roll before now"
        f" (by the settings' roll rule), its clock starting {PLAY_ROLL_LEAD.total_seconds() / 60:g} minutes before the roll",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the webserver and simulator bind to")


def replay_speed(args: argparse.Namespace) -> str:
    """The replay's speed: --speed, else PROJECTX_DEV_SPEED, else REPLAY_SPEED."""
    return args.speed or os.environ.get("PROJECTX_DEV_SPEED", REPLAY_SPEED)


def simulator_command(args: argparse.Namespace) -> list[str]:
    """The simulator `make dev` runs: the MES sample shifted to now, `--history-days` of it already history."""
    if not args.history_days >= 0:
        raise UsageError(f"--history-days {args.history_days}: expected a number of days >= 0")
    return _simulate(args, replay_speed(args), "--start", f"+{args.history_days}d", "--shift-to-now")


def _simulate(args: argparse.Namespace, speed: str, *market: str) -> list[str]:
    """`projectx simulate` on dev's address and port at `speed`, playing the `market` options."""
    return ["projectx", "simulate", "--host", args.host, "--port", str(args.simulator_port), "--speed", speed, *market]


@dataclass(frozen=True)
class RollToPlay:
    """What `--play-roll` plays: each symbol's latest roll before now (the listable equity-index
    roots share their quarterly expiries, so under one rule they roll at one instant, `at`)."""

    points: tuple[RollPoint, ...]

    @property
    def at(self) -> datetime:
        return max(p.at for p in self.points)

    @property
    def symbols(self) -> list[str]:
        return [p.symbol for p in self.points]

    @property
    def clock_start(self) -> datetime:
        return self.at - PLAY_ROLL_LEAD


def roll_to_play(settings: Settings, now: datetime) -> RollToPlay:
    """The latest roll before `now` of each of the settings' symbols, under the settings' roll
    rule, between months the simulator lists; UsageError when the settings cannot play one."""
    from .domain.market_hours import CalendarDays
    from .domain.rolls import roll_points
    from .gateway.simulator.listings import listed_months
    from .settings import GATEWAY_PROJECTX

    if settings.gateway == GATEWAY_PROJECTX:
        raise UsageError(
            "--play-roll plays a roll on the simulator, and the settings choose the real gateway (PROJECTX_GATEWAY=projectx, or"
            " PROJECTX_USERNAME and PROJECTX_API_KEY set with PROJECTX_GATEWAY unset): set PROJECTX_GATEWAY=simulator or drop --play-roll"
        )
    if not settings.symbols:
        raise UsageError(
            f"--play-roll follows symbols through a roll, and {settings.source} has none (only the contracts"
            f" {', '.join(settings.contract_ids)}): expected a symbol in instruments, e.g. `instruments: [{{symbol: MES}}]`"
        )
    stock_market_open = CalendarDays()
    points = []
    for symbol in settings.symbols:
        try:
            months = listed_months(symbol, now, stock_market_open)
        except ValueError as exc:
            raise UsageError(f"--play-roll: {exc}") from None
        # the listing reaches months expired 200 days before `now`: several rolls are past
        points.append(max((p for p in roll_points(months, settings.roll_rule(), stock_market_open) if p.at < now), key=lambda p: p.at))
    return RollToPlay(tuple(points))


def play_roll_speed(args: argparse.Namespace) -> float:
    """--play-roll's speed: --speed, else PLAY_ROLL_SPEED; a number (the synthetic market's clock
    runs at a multiple of real time, it has no 'max')."""
    from .gateway.simulator.clock import MAX_SPEED, parse_speed

    try:
        speed = parse_speed(args.speed or PLAY_ROLL_SPEED)
    except ValueError as exc:
        raise UsageError(f"--speed: {exc}") from None
    if speed == MAX_SPEED:
        raise UsageError("--speed max replays as fast as clients read, and --play-roll plays the synthetic market: expected a number")
    return speed


def roll_simulator_command(args: argparse.Namespace, roll: RollToPlay) -> list[str]:
    """The simulator `--play-roll` runs: the symbols' listing, its clock at `roll.clock_start`,
    held there until the daemon subscribes (so the session before the halt is collected live)."""
    return _simulate(args, f"{play_roll_speed(args):g}", "--symbols", *roll.symbols, "--start", roll.clock_start.isoformat(), "--wait-for-subscriber")


def playing(roll: RollToPlay, speed: float, settings: Settings) -> list[str]:
    """What `make dev-roll` prints about the roll it plays: which, when, how fast, and what that
    means for the freshness check and the raw trades."""
    from .domain.sessions import NEW_YORK, trade_date_of

    pairs = ", ".join(f"{p.symbol} {p.from_month.contract_id()} → {p.to_month.contract_id()}" for p in roll.points)
    retention = settings.file.storage.trades_retention_days
    return [
        f"playing      the latest roll before now: {pairs} at {roll.at:%Y-%m-%d %H:%M} UTC ({roll.at.astimezone(NEW_YORK):%H:%M} New York,"
        f" the session open of trade date {trade_date_of(roll.at).isoformat()}, rule {settings.roll_rule().name});"
        f" the clock starts {PLAY_ROLL_LEAD.total_seconds() / 60:g} minutes before it at {speed:g}×,"
        f" reaching the roll {PLAY_ROLL_LEAD.total_seconds() / speed:.0f} s after the daemon subscribes",
        f"note         the bars are from {roll.at:%B %Y}: Dagster's freshness check (ohlc_bars_fresh) reports them stale, rightly, as it"
        f" judges by the machine's clock; raw trades older than {retention} days (storage.trades_retention_days) are deleted hourly,"
        " the bars stay",
    ]


def ingested(settings: Settings) -> str:
    """What the daemon collects, as `make dev` prints it: each symbol (its front month and the
    next, rolled by the settings' rule), the explicit contracts, and the timeframes."""
    days = settings.roll_rule().days_before_expiry
    followed = [f"{s} (front month + next, roll {days} days before expiry)" for s in settings.symbols]
    return f"{', '.join(followed + list(settings.contract_ids))} × {', '.join(t.label for t in settings.timeframes)}"


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _port_in_use(host, port):
            return True
        time.sleep(0.2)
    return False


class _Children:
    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop_all(self, timeout: float = 30.0) -> None:
        # dagster-daemon waits for its threads' current iteration; give it time before SIGKILL
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _end_group(proc.pid)
            print(f"stopped {name} (exit {proc.returncode})", flush=True)


def _end_group(pgid: int, grace: float = 5.0) -> None:
    """End what is left of a child's process group once the child has exited: a child may start
    processes while it shuts down (dagster-webserver's code server did, and outlived `make dev`,
    retrying the stopped database), and they share its group. SIGTERM, then SIGKILL after `grace`."""
    if pgid <= 0:  # killpg(0) would signal this process's own group: make dev itself
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + grace
        try:
            os.killpg(pgid, sig)
            while time.monotonic() < deadline:
                time.sleep(0.1)
                os.killpg(pgid, 0)  # ProcessLookupError once no process of the group is left
        except ProcessLookupError:
            return


def run(args: argparse.Namespace) -> int:
    from .logs import register_env_secrets
    from .settings import GATEWAY_PROJECTX, load_settings
    from .storage.db import connect
    from .storage.local_db import LocalDatabaseError, default_cluster
    from .storage.migrate import migrate
    from .storage.urls import redact_url

    settings = load_settings()
    # what the simulator plays, refused before anything starts
    roll = roll_to_play(settings, datetime.now(timezone.utc)) if args.play_roll else None
    sim_command: list[str] | None = None  # None: the real gateway
    if settings.gateway != GATEWAY_PROJECTX:
        sim_command = simulator_command(args) if roll is None else roll_simulator_command(args, roll)
    root = Path.cwd()
    if not (root / "workspace.yaml").exists():
        raise UsageError(f"no workspace.yaml in {root}: run `make dev` from the project directory")
    env = dict(os.environ)
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    children = _Children()
    cluster = None
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lines: list[str] = []
    try:
        # 1. database
        if settings.database_url:
            db_url = settings.database_url.get()
            if not settings.dagster_pg_url:
                raise UsageError("DATABASE_URL is set but DAGSTER_PG_URL is not: Dagster needs its own database URL too")
            lines.append(f"database     {redact_url(db_url)} (DATABASE_URL)")
        else:
            cluster = default_cluster()
            try:
                cluster.start()
            except LocalDatabaseError as exc:
                raise UsageError(str(exc)) from None
            urls = cluster.urls()
            env.update(urls)
            db_url = urls["DATABASE_URL"]
            lines.append(f"database     {redact_url(db_url)} (local, {cluster.base}; `projectx db url` prints it)")
        register_env_secrets(env)
        conn = connect(db_url)
        try:
            migrate(conn)
        finally:
            conn.close()
        # 2. gateway
        if sim_command is None:
            lines.append(f"gateway      ProjectX {env.get('PROJECTX_API_URL', 'https://api.topstepx.com')} (credentials from the environment)")
        else:
            if _port_in_use("127.0.0.1", args.simulator_port):
                raise UsageError(f"port {args.simulator_port} is in use: stop what runs there or pass --simulator-port")
            sim = children.start("simulator", sim_command, env)
            if not _wait_for_port("127.0.0.1", args.simulator_port, sim, 30):
                raise UsageError("the simulator did not start (see its output above)")
            sim_url = f"http://127.0.0.1:{args.simulator_port}"
            env["PROJECTX_API_URL"] = env["PROJECTX_RTC_URL"] = sim_url
            if roll is None:
                lines.append(
                    f"gateway      simulator {sim_url} replaying the MES 5m sample at {replay_speed(args)}×, shifted to the present as"
                    f" today's front month with {args.history_days:g} days of history (control: {sim_url}/control/status)"
                )
            else:
                lines.append(f"gateway      simulator {sim_url} listing {', '.join(roll.symbols)} (control: {sim_url}/control/status)")
                lines += playing(roll, play_roll_speed(args), settings)
        # 3. ingestion daemon
        children.start("ingest", ["projectx", "ingest"], env)
        lines.append(f"ingestion    projectx ingest: {ingested(settings)} (`projectx status`)")
        # 4. Dagster
        home = root / ".projectx" / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "dagster.yaml", home / "dagster.yaml")
        env["DAGSTER_HOME"] = str(home)
        if _port_in_use("127.0.0.1", args.webserver_port):
            raise UsageError(f"port {args.webserver_port} is in use: stop what runs there or pass --webserver-port")
        web = children.start("dagster-webserver", ["dagster-webserver", "-h", args.host, "-p", str(args.webserver_port), "-w", "workspace.yaml"], env)
        children.start("dagster-daemon", ["dagster-daemon", "run", "-w", "workspace.yaml"], env)
        if not _wait_for_port("127.0.0.1", args.webserver_port, web, 120):
            raise UsageError("the Dagster webserver did not start (see its output above)")
        lines.append(f"dagster      http://{args.host}:{args.webserver_port} (webserver) + dagster-daemon (schedules, sensors, run queue)")
        print("\nProjectX Pipeline is running:\n  " + "\n  ".join(lines) + "\nCtrl-C stops everything.\n", flush=True)
        while not stopping:
            for name, proc in children.procs:
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}: stopping the platform", file=sys.stderr, flush=True)
                    stopping = True
                    break
            time.sleep(0.5)
        return 0 if all(p.returncode in (None, 0) for _, p in children.procs) else 1
    finally:
        print("stopping...", flush=True)
        children.stop_all()
        if cluster is not None:
            cluster.stop()
            print("stopped local database", flush=True)
