"""`projectx dev` (what `make dev` runs): the whole platform on one machine.

Local database (unless DATABASE_URL is set) → migrations → simulator replaying the MES sample
shifted to the present, its first two weeks already history (unless the settings choose the
real gateway: PROJECTX_GATEWAY=projectx, or, with it unset, PROJECTX_USERNAME and
PROJECTX_API_KEY both set) → ingestion daemon → Dagster webserver
(127.0.0.1:3000) and daemon. Ctrl-C (or SIGTERM) stops everything, children first, then the
database this command started.
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
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:  # imported when the command runs, so `projectx --help` stays fast
    from .settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--webserver-port", type=int, default=3000)
    parser.add_argument("--simulator-port", type=int, default=5080)
    parser.add_argument(
        "--speed",
        default=os.environ.get("PROJECTX_DEV_SPEED", "10"),
        help="simulator replay speed (× real time, or 'max'; default 10: a 5m bar every 30 s)",
    )
    parser.add_argument(
        "--history-days",
        type=float,
        default=14.0,
        help="days of the MES sample the simulator serves as history when the platform starts (default 14); the replay is shifted"
        " to the present, so 'the last N days' has bars and the live feed is today's",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the webserver and simulator bind to")


def simulator_command(args: argparse.Namespace) -> list[str]:
    """The simulator `make dev` runs: the MES sample shifted to now, `--history-days` of it already history."""
    if not args.history_days >= 0:
        raise UsageError(f"--history-days {args.history_days}: expected a number of days >= 0")
    return [
        "projectx",
        "simulate",
        "--host",
        args.host,
        "--port",
        str(args.simulator_port),
        "--speed",
        str(args.speed),
        "--start",
        f"+{args.history_days}d",
        "--shift-to-now",
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
            print(f"stopped {name} (exit {proc.returncode})", flush=True)


def run(args: argparse.Namespace) -> int:
    from .logs import register_env_secrets
    from .settings import GATEWAY_PROJECTX, load_settings
    from .storage.db import connect
    from .storage.local_db import LocalDatabaseError, default_cluster
    from .storage.migrate import migrate
    from .storage.urls import redact_url

    settings = load_settings()
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
        if settings.gateway == GATEWAY_PROJECTX:
            lines.append(f"gateway      ProjectX {env.get('PROJECTX_API_URL', 'https://api.topstepx.com')} (credentials from the environment)")
        else:
            if _port_in_use("127.0.0.1", args.simulator_port):
                raise UsageError(f"port {args.simulator_port} is in use: stop what runs there or pass --simulator-port")
            sim = children.start("simulator", simulator_command(args), env)
            if not _wait_for_port("127.0.0.1", args.simulator_port, sim, 30):
                raise UsageError("the simulator did not start (see its output above)")
            sim_url = f"http://127.0.0.1:{args.simulator_port}"
            env["PROJECTX_API_URL"] = env["PROJECTX_RTC_URL"] = sim_url
            lines.append(
                f"gateway      simulator {sim_url} replaying the MES 5m sample at {args.speed}×, shifted to the present as today's front month"
                f" with {args.history_days:g} days of history (control: {sim_url}/control/status)"
            )
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
