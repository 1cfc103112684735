"""A project-managed local PostgreSQL cluster (the embedded default when DATABASE_URL is unset).

It lives under `.projectx/` in the project (git-ignored): initialised on first use, listening
on 127.0.0.1 only, password (SCRAM) authentication for every TCP connection, TimescaleDB
preloaded when the extension is installed, with a market-data and a Dagster database.
PostgreSQL refuses to run as root, so when started by root the server runs as the
`postgres` system user. Tests and benchmarks use the same class on a temporary directory.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .db import connect

MARKET_DB = "projectx"
DAGSTER_DB = "dagster"
SUPERUSER = "projectx"
SERVER_OS_USER = "postgres"

NO_BINARIES_HELP = (
    "no PostgreSQL server binaries found (looked at PROJECTX_PG_BINDIR, `pg_config --bindir`, PATH and "
    "/usr/lib/postgresql/*/bin): "
    "install them (Debian/Ubuntu: `apt-get install postgresql`) or set DATABASE_URL to an existing server"
)


class LocalDatabaseError(RuntimeError):
    pass


SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")


def _has_server_programs(path: Path) -> bool:
    return all((path / name).is_file() for name in SERVER_PROGRAMS)


def find_server_bindir() -> Path:
    """The server bin dir: `PROJECTX_PG_BINDIR` when set (e.g. a TimescaleDB-enabled build),
    else `pg_config --bindir`, PATH, then the newest /usr/lib/postgresql/*/bin."""
    chosen = os.environ.get("PROJECTX_PG_BINDIR")
    if chosen:
        path = Path(chosen)
        if not _has_server_programs(path):
            raise LocalDatabaseError(f"PROJECTX_PG_BINDIR={chosen!r} is not a PostgreSQL server bin dir: expected {', '.join(SERVER_PROGRAMS)} in it")
        return path
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)

    def version_key(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)]
    for c in candidates:
        if _has_server_programs(c):
            return c
    raise LocalDatabaseError(NO_BINARIES_HELP)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as PostgreSQL binds: a port in TIME_WAIT after our own server stopped is free, or a
        # restart would silently move the cluster to another port under its DATABASE_URL
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@dataclass
class ClusterState:
    port: int
    password: str

    def url(self, database: str = MARKET_DB) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"


class LocalCluster:
    """A PostgreSQL cluster in `base_dir` (data, socket, log and state file)."""

    def __init__(self, base_dir: str | os.PathLike, port: int | None = None):
        self.base = Path(base_dir).resolve()
        self.data = self.base / "pgdata"
        self.run_dir = self.base / "run"
        self.log_file = self.base / "postgres.log"
        self.state_file = self.base / "db.json"
        self._requested_port = port
        self._bindir: Path | None = None

    # -- helpers --------------------------------------------------------------------------
    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_server_bindir()
        return self._bindir

    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_OS_USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return proc

    def _chown_for_server(self, *paths: Path) -> None:
        if not self._as_root:
            return
        import pwd

        try:
            pw = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--home-dir", "/var/lib/postgresql", "--shell", "/bin/false", SERVER_OS_USER], check=True)
            pw = pwd.getpwnam(SERVER_OS_USER)
        for p in paths:
            os.chown(p, pw.pw_uid, pw.pw_gid)

    def _check_reachable_by_server_user(self) -> None:
        # The postgres user must be able to reach base_dir through every parent directory.
        if not self._as_root:
            return
        for parent in [self.base, *self.base.parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise LocalDatabaseError(
                    f"directory {parent} is not traversable by the {SERVER_OS_USER!r} user (mode {oct(mode & 0o777)}): "
                    "the local database needs o+x on every parent directory, or set DATABASE_URL"
                )

    def timescaledb_available(self) -> bool:
        proc = (
            subprocess.run([str(self.bindir / "pg_config"), "--sharedir"], capture_output=True, text=True)
            if (self.bindir / "pg_config").exists()
            else None
        )
        sharedirs = [proc.stdout.strip()] if proc and proc.returncode == 0 else []
        sharedirs += glob.glob(f"/usr/share/postgresql/{self.bindir.parent.name}")
        return any(Path(d, "extension", "timescaledb.control").exists() for d in sharedirs)

    # -- state ----------------------------------------------------------------------------
    def state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        raw = json.loads(self.state_file.read_text())
        return ClusterState(port=int(raw["port"]), password=raw["password"])

    def _write_state(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps({"port": state.port, "password": state.password}))
        os.chmod(self.state_file, 0o600)

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.initialised:
            return False
        return self._run(["pg_ctl", "-D", str(self.data), "status"]).returncode == 0

    # -- lifecycle ------------------------------------------------------------------------
    def init(self) -> ClusterState:
        self.base.mkdir(parents=True, exist_ok=True)
        self._check_reachable_by_server_user()
        state = self.state()
        if self.initialised and state:
            return state
        password = secrets.token_urlsafe(24)
        self.data.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.base / "pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        self._chown_for_server(self.data, self.run_dir, pwfile)
        os.chmod(self.data, 0o700)
        try:
            proc = self._run(
                [
                    "initdb",
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise LocalDatabaseError(f"initdb failed: {proc.stderr.strip() or proc.stdout.strip()}")
        port = self._requested_port or _free_port()
        state = ClusterState(port=port, password=password)
        self._write_state(state)
        return state

    def start(self, timeout: float = 60) -> ClusterState:
        state = self.init()
        if self.is_running():
            return state
        if self._requested_port and self._requested_port != state.port:
            state = ClusterState(self._requested_port, state.password)
        if not _port_free(state.port):
            if self._requested_port:
                raise LocalDatabaseError(f"port {state.port} on 127.0.0.1 is in use: choose another with --port or PROJECTX_DB_PORT")
            state = ClusterState(_free_port(), state.password)
        self._write_state(state)
        if self.log_file.exists() and self._as_root:
            self._chown_for_server(self.log_file)
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-p {state.port}",
            f"-k {self.run_dir}",
            "-c max_connections=200",
            "-c fsync=on",
        ]
        if self.timescaledb_available():
            options.append("-c shared_preload_libraries=timescaledb")
        # pg_ctl writes the server log; make sure the server user can create it
        if self._as_root and not self.log_file.exists():
            self.log_file.touch()
            self._chown_for_server(self.log_file)
        proc = self._run(
            ["pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-o", " ".join(options), "-w", "-t", str(int(timeout)), "start"],
            timeout=timeout + 10,
        )
        if proc.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise LocalDatabaseError(f"PostgreSQL failed to start: {proc.stderr.strip() or proc.stdout.strip()}\n{tail}")
        self._wait_ready(state, timeout)
        self._create_databases(state)
        return state

    def _wait_ready(self, state: ClusterState, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                connect(state.url("postgres"), connect_timeout=3).close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _create_databases(self, state: ClusterState) -> None:
        conn = connect(state.url("postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for db in (MARKET_DB, DAGSTER_DB):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{db}"')
        finally:
            conn.close()

    def stop(self, mode: str = "fast", timeout: float = 60) -> bool:
        """Stop the server; returns False when it was not running."""
        if not self.is_running():
            return False
        proc = self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)), "stop"], timeout=timeout + 10)
        if proc.returncode != 0:
            raise LocalDatabaseError(f"PostgreSQL failed to stop: {proc.stderr.strip() or proc.stdout.strip()}")
        return True

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def urls(self) -> dict[str, str]:
        state = self.state()
        if state is None:
            raise LocalDatabaseError(f"no local database in {self.base}: run `projectx db start` first")
        return {"DATABASE_URL": state.url(MARKET_DB), "DAGSTER_PG_URL": state.url(DAGSTER_DB)}


def project_dir() -> Path:
    """The project directory that holds `.projectx/`: PROJECTX_HOME, else the current directory."""
    return Path(os.environ.get("PROJECTX_HOME") or os.getcwd())


def default_cluster() -> LocalCluster:
    port = os.environ.get("PROJECTX_DB_PORT")
    return LocalCluster(project_dir() / ".projectx" / "db", port=int(port) if port else None)
