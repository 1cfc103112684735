"""The ingestion CLI as a user runs it: `python -m projectx_pipeline <args>` as a subprocess,
with the environment pointing it at a test database and simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from projectx_pipeline.gateway.simulator.server import SimulatorServer


def cli_env(db_url: str, sim: SimulatorServer, settings: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTX_") and k not in ("DATABASE_URL", "DAGSTER_PG_URL")}
    env.update(
        DATABASE_URL=db_url,
        PROJECTX_API_URL=sim.api_url,
        PROJECTX_RTC_URL=sim.rtc_url,
        PROJECTX_SETTINGS=str(settings),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class Cli:
    """`python -m projectx_pipeline <args>` as a subprocess, its output in files."""

    def __init__(self, args: list[str], env: dict[str, str], directory: Path, name: str):
        self.out_path, self.err_path = directory / f"{name}.out", directory / f"{name}.err"
        self._out, self._err = open(self.out_path, "wb"), open(self.err_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "projectx_pipeline", *args], env=env, cwd=directory, stdout=self._out, stderr=self._err)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._out.close()
                self._err.close()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self._err.close()


def run_cli(args: list[str], env: dict[str, str], directory: Path, name: str, timeout: float = 60) -> tuple[int, str, str]:
    cli = Cli(args, env, directory, name)
    try:
        code = cli.wait(timeout)
    finally:
        cli.kill()
    return code, cli.stdout, cli.stderr
