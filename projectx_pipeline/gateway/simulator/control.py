"""A small client for the simulator's fault-injection endpoint (`<base>/control`), used by tests.

Every action returns the simulator's status after the action (the same dict as `status()`)."""

from __future__ import annotations

import requests


class SimulatorControlError(RuntimeError):
    """The control endpoint refused an action (unknown action or bad parameters)."""


class SimulatorControl:
    def __init__(self, control_url: str, timeout: float = 10.0):
        self.control_url = control_url.rstrip("/")
        self.timeout = timeout
        self._http = requests.Session()

    def status(self) -> dict:
        """{mode, clock, speed, paused, finished, connections, subscriptions, trades_published, ...}"""
        response = self._http.get(f"{self.control_url}/status", timeout=self.timeout)
        response.raise_for_status()
        return response.json()

    def drop(self) -> dict:
        """Abort every hub TCP connection (no close frame)."""
        return self._post("drop")

    def close(self) -> dict:
        """Send every hub client a SignalR close (type 7, allowReconnect true) and close the WebSocket."""
        return self._post("close")

    def stall(self, seconds: float) -> dict:
        """Keep the hub sockets open but send nothing, pings included, for `seconds`."""
        return self._post("stall", seconds=seconds)

    def refuse(self, seconds: float) -> dict:
        """Answer new hub connection attempts with HTTP 503 for `seconds`."""
        return self._post("refuse", seconds=seconds)

    def malformed(self, count: int = 1, kinds: list[str] | None = None) -> dict:
        """Interleave `count` bad GatewayTrade events with the good ones (kinds: server.MALFORMED_KINDS)."""
        return self._post("malformed", count=count, kinds=kinds)

    def expire_tokens(self) -> dict:
        """Invalidate every token issued so far (REST 401, hub connections closed)."""
        return self._post("expire_tokens")

    def logout(self) -> dict:
        """Send GatewayLogout to every hub client."""
        return self._post("logout")

    def rest_errors(self, status: int | None = 500, count: int = 1, retry_after: float | None = 1.0, delay: float = 0.0) -> dict:
        """The next `count` REST calls answer `status` after `delay` seconds.

        `retry_after=None` sends no Retry-After header; `status=None` only slows the normal answers."""
        return self._post("rest_errors", status=status, count=count, retry_after=retry_after, delay=delay)

    def rest_recover(self) -> dict:
        """Drop the REST faults still pending: REST answers normally again."""
        return self._post("rest_recover")

    def pause(self) -> dict:
        return self._post("pause")

    def resume(self) -> dict:
        return self._post("resume")

    def speed(self, speed: float | str) -> dict:
        """A new replay speed: a positive multiple of real time, or "max"."""
        return self._post("speed", speed=speed)

    def _post(self, action: str, **params) -> dict:
        response = self._http.post(f"{self.control_url}/{action}", json=params, timeout=self.timeout)
        if response.status_code != 200:
            raise SimulatorControlError(f"control action {action} failed: HTTP {response.status_code} {response.text}")
        return response.json()["status"]
