"""Starting the gateway simulator for a test."""

from __future__ import annotations

import time
from pathlib import Path

from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.server import SimulatorServer

FAST = 3000  # × real time: one 5m bar every 0.1 s


def start_sim(replay: Path | None, speed, **options) -> tuple[SimulatorServer, SimulatorControl]:
    sim = SimulatorServer(replay=replay, speed=speed, wait_for_subscriber=True, rate_limits=False, **options).start()
    return sim, SimulatorControl(sim.control_url)


def finished_simulator(**options) -> SimulatorServer:
    """A replay simulator whose clock has run to the end of the sample, so all history exists."""
    sim = SimulatorServer(speed="max", **options).start()
    control = SimulatorControl(sim.control_url)
    deadline = time.monotonic() + 60
    while not control.status()["finished"]:
        assert time.monotonic() < deadline, "the simulator did not finish its replay"
        time.sleep(0.1)
    return sim
