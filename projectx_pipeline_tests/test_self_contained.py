"""The project runs on a machine that has nothing but the repository.

* No tracked file reaches outside the repository for data, docs or tools (the reference folder
  that the developers keep beside their checkout is not the user's).
* A non-editable install carries the sample data, and an unprivileged user with no writable home
  over that read-only install imports the Dagster definitions, runs the numba trend-start kernel,
  and runs the simulator and the ingestion daemon (what the Docker image's non-root user does
  over its root-owned venv).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from projectx_pipeline.sample_data import SAMPLE_CONTRACT, SAMPLE_TIMEFRAMES, sample_path
from projectx_pipeline.storage.db import connect

from .support.network import free_port
from .support.paths import REPO

# Written in pieces so that this file does not match itself.
OUTSIDE_REFERENCE = re.compile(
    "|".join(
        [
            r"\.\./" + "shared",
            r"/" + r"shared/(data|docs|hooks|timescaledb)",
            r"work/" + "shared",
        ]
    )
)
# CI may build TimescaleDB with the reference folder's script when it is there: the one exception.
ALLOWED = {".ci/run"}
UNPRIVILEGED_USER = "nobody"


def tracked_files() -> list[Path]:
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        return [REPO / p for p in out.decode().split("\0") if p]
    skip = {".git", ".venv", ".projectx", ".pytest_cache", ".hypothesis", "__pycache__", "build"}
    return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]


def test_no_tracked_file_reaches_outside_the_repository():
    offenders = []
    for path in tracked_files():
        rel = path.relative_to(REPO).as_posix()
        if rel in ALLOWED or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_REFERENCE.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert not offenders, "files that depend on a folder outside the repository:\n" + "\n".join(offenders)


def test_the_samples_are_package_data_and_unchanged_gateway_bars():
    header = "contract_id,timestamp,open,high,low,close,volume,timeframe_unit,timeframe_value"
    rows = {}
    for tf in SAMPLE_TIMEFRAMES:
        lines = sample_path(tf).read_text().splitlines()
        assert lines[0] == header
        assert all(line.startswith(SAMPLE_CONTRACT + ",") for line in lines[1:])
        rows[tf] = len(lines) - 1
    assert rows["5m"] == 10_000 and rows["1h"] > rows["4h"] > 0
    with pytest.raises(ValueError, match="'1d'.*expected one of 5m, 1h, 4h"):
        sample_path("1d")


# =========================================================================== unprivileged user


def _runs_as(as_user: dict, python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "pass"], capture_output=True, cwd="/", **as_user).returncode == 0
    except PermissionError:  # a directory on the interpreter's path is closed to that user
        return False


def _unprivileged() -> tuple[dict, str]:
    """(subprocess arguments that run a process as an unprivileged user, a Python of this
    version it can run).

    As root: the `nobody` user (set in the child itself, so signals reach the program, not a
    wrapper), with this interpreter if nobody can run it, else the system's interpreter of the
    same version (pyenv keeps its builds under /root). As any other user: that user, who is
    unprivileged already."""
    if os.geteuid() != 0:
        return {}, sys.executable
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and _runs_as(as_user, candidate):
            return as_user, candidate
    raise AssertionError(f"no {version} interpreter that the {UNPRIVILEGED_USER!r} user can run (this one: {sys.executable})")


@pytest.fixture(scope="module")
def install_base():
    """A directory the unprivileged user can reach (pytest's own tmp dirs are private to us)."""
    base = Path(tempfile.mkdtemp(prefix="projectx-ro-"))
    os.chmod(base, 0o755)
    yield base
    for root, dirs, _files in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def read_only_install(install_base) -> Path:
    """`pip install --no-deps --target` of a copy of the repository, then made read-only."""
    base = install_base
    src = base / "src"
    for path in tracked_files():
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("projectx_pipeline", "setup.py", "README.md"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / rel)
    target = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile", "--target", str(target), str(src)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for root, dirs, files in os.walk(target):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
    os.chmod(target, 0o555)
    return target


def _env(install: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    # the package from the read-only install, its dependencies from this environment; no .pth
    # processing for PYTHONPATH entries, so the editable checkout stays out of sys.path
    paths = [str(install), *site.getsitepackages()]
    keep.update(HOME="/nonexistent", PYTHONPATH=os.pathsep.join(paths), PYTHONDONTWRITEBYTECODE="1", **extra)
    keep.pop("NUMBA_CACHE_DIR", None)
    return keep


@pytest.mark.timeout(300)
def test_an_unprivileged_user_runs_everything_over_a_read_only_install(read_only_install, install_base, db_url, tmp_path):
    as_user, python = _unprivileged()
    env = _env(read_only_install)

    # 1. the code location loads (numba compiles its kernel at import), and the package is the install's
    probe = (
        "import projectx_pipeline, projectx_pipeline.definitions as d, projectx_pipeline.sample_data as s;"
        "print(projectx_pipeline.__file__); print(s.sample_path('5m').is_file());"
        "print(len(d.defs().resolve_asset_graph().get_all_asset_keys()))"
    )
    proc = subprocess.run([python, "-c", probe], env=env, cwd="/", capture_output=True, text=True, timeout=240, **as_user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module_file, sample_ok, _ = proc.stdout.splitlines()[-3:]
    assert module_file.startswith(str(read_only_install)), module_file
    assert sample_ok == "True"

    # 2. the numba kernel runs: trend starts of the packaged 4h sample
    proc = subprocess.run(
        [
            python,
            "-m",
            "projectx_pipeline",
            "trend-starts",
            str(read_only_install / "projectx_pipeline" / "sample_data" / f"{SAMPLE_CONTRACT}_4h.csv"),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=240,
        **as_user,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = proc.stdout.strip().splitlines()
    assert rows[0].startswith("type,start_ts") and len(rows) > 10, proc.stdout[:500]

    # 3. the simulator (default replay: the packaged sample) and the daemon, storing bars
    port = free_port()
    sim = subprocess.Popen(
        [python, "-m", "projectx_pipeline", "simulate", "--port", str(port), "--speed", "3000", "--wait-for-subscriber", "--no-rate-limit"],
        env=env,
        cwd="/",
        stdout=open(tmp_path / "sim.out", "wb"),
        stderr=open(tmp_path / "sim.err", "wb"),
        **as_user,
    )
    daemon = None
    try:
        url = f"http://127.0.0.1:{port}"
        settings = install_base / "settings.yaml"
        settings.write_text("contracts:\n  - id: CON.F.US.MES.M25\n    tick_size: 0.25\ntimeframes: [5m, 1h]\n")
        os.chmod(settings, 0o644)
        daemon_env = _env(read_only_install, DATABASE_URL=db_url, PROJECTX_API_URL=url, PROJECTX_RTC_URL=url, PROJECTX_SETTINGS=str(settings))
        daemon = subprocess.Popen(
            [python, "-m", "projectx_pipeline", "ingest"],
            env=daemon_env,
            cwd="/",
            stdout=open(tmp_path / "ingest.out", "wb"),
            stderr=open(tmp_path / "ingest.err", "wb"),
            **as_user,
        )
        deadline = time.monotonic() + 180
        stored = 0
        while stored < 5:
            assert sim.poll() is None, (tmp_path / "sim.err").read_text()[-3000:]
            assert daemon.poll() is None, (tmp_path / "ingest.err").read_text()[-3000:]
            assert time.monotonic() < deadline, f"only {stored} live 5m bars stored in 180 s:\n" + (tmp_path / "ingest.err").read_text()[-3000:]
            conn = connect(db_url)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM ohlc_bars WHERE timeframe_unit = 2 AND source = 'live'")
                    stored = cur.fetchone()[0]
            finally:
                conn.close()
            time.sleep(0.5)
    finally:
        for proc in (daemon, sim):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert daemon.returncode == 0, (tmp_path / "ingest.err").read_text()[-3000:]
    assert "cannot cache" not in (tmp_path / "ingest.err").read_text()
