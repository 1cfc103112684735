"""The gateway simulator's hubs on the wire, for tests: a bare SignalR hub client."""

from __future__ import annotations

import json
import time
from collections import deque
from urllib.parse import urlencode

from websockets.sync.client import connect

from projectx_pipeline.gateway.protocol import MARKET_HUB_PATH
from projectx_pipeline.gateway.protocol import RECORD_SEPARATOR as RS
from projectx_pipeline.gateway.simulator.server import SimulatorServer


class RawHub:
    """A bare SignalR JSON-protocol client on a raw WebSocket: sees the wire exactly as sent."""

    def __init__(
        self,
        sim: SimulatorServer,
        token: str | None,
        version: int | None = 1,
        headers: dict | None = None,
        path: str = MARKET_HUB_PATH,
        connection_id: str | None = None,
    ):
        query = {"access_token": token} if token else {}
        if connection_id is not None:
            query["id"] = connection_id
        url = sim.rtc_url.replace("http://", "ws://") + path + ("?" + urlencode(query) if query else "")
        self.ws = connect(
            url, compression=None, ping_interval=None, proxy=None, open_timeout=5, close_timeout=1, additional_headers=headers, legacy=True
        )
        self._records: deque[str] = deque()
        self.handshake = None
        if version is not None:
            self.ws.send(json.dumps({"protocol": "json", "version": version}) + RS)
            self.handshake = self.next_raw()

    def next_raw(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while not self._records:
            frame = self.ws.recv(timeout=max(0.001, deadline - time.monotonic()))
            self._records.extend(r for r in frame.split(RS) if r)
        return self._records.popleft()

    def next(self, timeout: float = 5.0) -> dict | None:
        """The next message; None for a record that is not JSON."""
        try:
            return json.loads(self.next_raw(timeout))
        except ValueError:
            return None

    def wait_for(self, predicate, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.001, deadline - time.monotonic()))
            if message is not None and predicate(message):
                return message

    def invoke(self, target: str, argument, invocation_id: str) -> dict:
        """Invoke `target` with the one `argument` (a list: all the arguments) and return its completion."""
        arguments = argument if isinstance(argument, list) else [argument]
        self.ws.send(json.dumps({"type": 1, "invocationId": invocation_id, "target": target, "arguments": arguments}) + RS)
        return self.wait_for(lambda m: m.get("type") == 3 and m.get("invocationId") == invocation_id)

    def close(self) -> None:
        self.ws.close()
