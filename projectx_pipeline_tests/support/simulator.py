"""Starting the gateway simulator for a test."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.server import SimulatorServer

FAST = 3000  # × real time: one 5m bar every 0.1 s


def start_sim(replay: Path | None, speed, **options) -> tuple[SimulatorServer, SimulatorControl]:
    sim = SimulatorServer(replay=replay, speed=speed, wait_for_subscriber=True, rate_limits=False, **options).start()
    return sim, SimulatorControl(sim.control_url)


def finished_simulator(**options) -> SimulatorServer:
    """A replay simulator whose clock starts at the end of the sample, so all history exists."""
    sim = SimulatorServer(start_time="end", **options).start()
    assert SimulatorControl(sim.control_url).status()["finished"]
    return sim


def login(sim: SimulatorServer, user: str = "tester", api_key: str = "key") -> str:
    """A token from the simulator's Auth/loginKey."""
    body = requests.post(f"{sim.api_url}/api/Auth/loginKey", json={"userName": user, "apiKey": api_key}, timeout=5).json()
    assert body["success"], body
    return body["token"]


def api(sim: SimulatorServer, path: str, body, token: str | None) -> requests.Response:
    """POST /api/<path> with a JSON body (a str or bytes body goes as is) and the token, if any."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(f"{sim.api_url}/api/{path}", data=data, headers={**headers, "Content-Type": "application/json"}, timeout=10)
