"""Starting the gateway simulator for a test."""

from __future__ import annotations

from pathlib import Path

from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.server import SimulatorServer

FAST = 3000  # × real time: one 5m bar every 0.1 s


def start_sim(replay: Path | None, speed, **options) -> tuple[SimulatorServer, SimulatorControl]:
    sim = SimulatorServer(replay=replay, speed=speed, wait_for_subscriber=True, rate_limits=False, **options).start()
    return sim, SimulatorControl(sim.control_url)
