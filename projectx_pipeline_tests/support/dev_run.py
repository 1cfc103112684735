"""`projectx dev` run for its wiring only: every child it would start is recorded, none started.

What `dev.run` builds (the commands, the banner) is checked against a real database; the
processes themselves are the end-to-end tests' (test_dev_roll, test_deployment)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import pytest

from projectx_pipeline import dev

from .paths import REPO


class _NotStarted:
    """A child that `dev.run` believes has exited (pid 0: no process group of its own)."""

    pid, returncode = 0, 0

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


class DevWiring:
    """`run(args)` runs `dev.run` in `tmp_path` (a copy of the workspace files) against `db_url`
    with the environment cleared of the platform's variables; `started` maps each child's name to
    the command it would have run."""

    def __init__(self, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        for name in ("workspace.yaml", "dagster.yaml"):
            (tmp_path / name).write_text((REPO / name).read_text())
        monkeypatch.chdir(tmp_path)
        for name in list(os.environ):
            if name.startswith("PROJECTX_") or name in ("DATABASE_URL", "DAGSTER_PG_URL"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("DATABASE_URL", db_url)
        monkeypatch.setenv("DAGSTER_PG_URL", db_url)
        self.started: dict[str, list[str]] = {}

        def record(children, name, cmd, env):
            self.started[name] = cmd
            children.procs.append((name, _NotStarted()))
            return children.procs[-1][1]

        monkeypatch.setattr(dev._Children, "start", record)
        monkeypatch.setattr(dev, "_port_in_use", lambda host, port: False)
        monkeypatch.setattr(dev, "_wait_for_port", lambda host, port, proc, timeout: True)

    def run(self, args: argparse.Namespace) -> int:
        self.started.clear()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return dev.run(args)
        finally:  # dev.run installs its own
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
