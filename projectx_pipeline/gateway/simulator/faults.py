"""The simulator's fault injection: `POST /control/<action>` and `GET /control/status`.

Simulator only, for tests and demos: drop, close, stall, refuse, malformed, expire_tokens,
logout, rest_errors, rest_recover, pause, resume, speed (each `_fault_<action>` below says what it does).
The hub faults hit every hub alike (`/hubs/market` and `/hubs/user`), as an outage of the
gateway's real-time service would."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from ...logs import get_logger, kv
from ..protocol import LOGOUT_EVENT, RECORD_SEPARATOR, TRADE_EVENT
from .auth import SessionStore
from .clock import MarketClock
from .hub_protocol import HubEndpoint, hub_event, hub_record
from .rest import BadRequest, read_json_body

log = get_logger("projectx.simulator")

MALFORMED_KINDS = (
    "bad_json",
    "missing_fields",
    "nan_price",
    "negative_price",
    "nan_size",
    "negative_size",
    "unknown_contract",
    "bad_timestamp",
    "wrong_types",
    "wrong_arity",
)


@dataclass
class RestFault:
    """How the next REST call fails: `status` (None: the normal answer) after `delay` seconds."""

    status: int | None
    retry_after: float | None
    delay: float


def malformed_record(kind: str, contract_id: str, symbol_id: str, price: float, timestamp: str) -> str:
    """A bad GatewayTrade record of one of the MALFORMED_KINDS, around a good trade at `price`."""
    trade = {"symbolId": symbol_id, "price": price, "timestamp": timestamp, "type": 0, "volume": 1}
    if kind == "bad_json":
        return '{"type":1,"target":"' + TRADE_EVENT + '","arguments":["' + contract_id + '",{"price":' + RECORD_SEPARATOR
    if kind == "missing_fields":
        trade = {"symbolId": symbol_id, "type": 0}
    elif kind == "nan_price":
        trade["price"] = float("nan")  # serialised as the non-standard NaN literal, as .NET can be made to
    elif kind == "negative_price":
        trade["price"] = -price
    elif kind == "nan_size":
        trade["volume"] = float("nan")
    elif kind == "negative_size":
        trade["volume"] = -3
    elif kind == "unknown_contract":
        return hub_event(TRADE_EVENT, "CON.F.US.ZZZ.Z99", {**trade, "symbolId": "F.US.ZZZ"})
    elif kind == "bad_timestamp":
        trade["timestamp"] = "2025-13-45T25:61:00Z"
    elif kind == "wrong_types":
        trade.update(price=f"{price}x", volume="three", type="buy", timestamp=12345)
    elif kind == "wrong_arity":
        return hub_record({"type": 1, "target": TRADE_EVENT, "arguments": [trade]})
    return hub_event(TRADE_EVENT, contract_id, trade)


def _seconds(value: object) -> float:
    seconds = float(value)  # type: ignore[arg-type]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid number of seconds {value!r}")
    return seconds


class FaultInjector:
    """The control endpoint: each action changes the hubs, the clock, the sessions, the REST
    answers or the feed, and is answered with the simulator's status (`status()`)."""

    def __init__(
        self,
        hubs: Sequence[HubEndpoint],
        clock: MarketClock,
        sessions: SessionStore,
        rest_faults,
        malformed,
        status: Callable[[], dict],
    ):
        self._hubs = list(hubs)
        self._clock = clock
        self._sessions = sessions
        self._rest_faults = rest_faults  # the REST API's queue of RestFault
        self._malformed = malformed  # the publisher's queue of MALFORMED_KINDS
        self._status = status

    async def handle_status(self, _request: web.Request) -> web.Response:
        return web.json_response(self._status())

    async def handle(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        handler = getattr(self, f"_fault_{action}", None)
        if handler is None:
            return web.json_response({"ok": False, "error": f"unknown control action {action!r}"}, status=404)
        try:
            params = await read_json_body(request, required=False)
            await handler(**params)
        except BadRequest as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        except (TypeError, ValueError) as exc:
            return web.json_response({"ok": False, "error": f"bad parameters for {action}: {exc}"}, status=400)
        log.info(kv("control_action", action=action, params=params))
        return web.json_response({"ok": True, "status": self._status()})

    async def _fault_drop(self) -> None:
        """Abort every hub TCP connection, without any close frame."""
        for hub in self._hubs:
            hub.abort_all()

    async def _fault_close(self) -> None:
        """Send a SignalR close (type 7) that allows a reconnect, then close the WebSocket."""
        await asyncio.gather(*(hub.close_all("Server closed the connection.", allow_reconnect=True) for hub in self._hubs))

    async def _fault_stall(self, seconds: float) -> None:
        """Keep the sockets open but send nothing at all (no pings either) for `seconds`."""
        until = time.monotonic() + _seconds(seconds)
        for hub in self._hubs:
            hub.stall_until = until

    async def _fault_refuse(self, seconds: float) -> None:
        """Answer new negotiations and hub upgrades with HTTP 503 for `seconds`."""
        until = time.monotonic() + _seconds(seconds)
        for hub in self._hubs:
            hub.refuse_until = until

    async def _fault_malformed(self, count: int = 1, kinds: list[str] | None = None) -> None:
        """Interleave `count` bad GatewayTrade events (cycling through `kinds`) with the good ones."""
        kinds = list(kinds) if kinds else list(MALFORMED_KINDS)
        unknown = sorted(set(kinds) - set(MALFORMED_KINDS))
        if unknown or not isinstance(count, int) or count < 1:
            raise ValueError(f"expected count >= 1 and kinds among {list(MALFORMED_KINDS)}")
        self._malformed.extend(kinds[i % len(kinds)] for i in range(count))

    async def _fault_expire_tokens(self) -> None:
        """Invalidate every token issued so far: REST answers 401 and hub connections are closed."""
        self._sessions.clear()
        await asyncio.gather(*(hub.close_all("Unauthorized: the access token has expired.") for hub in self._hubs))

    async def _fault_logout(self) -> None:
        logout = hub_record({"type": 1, "target": LOGOUT_EVENT, "arguments": []})
        await asyncio.gather(*(hub.broadcast_handshaken([logout]) for hub in self._hubs))

    async def _fault_rest_errors(self, status: int | None = 500, count: int = 1, retry_after: float | None = 1.0, delay: float = 0.0) -> None:
        """The next `count` REST calls answer `status` (None: the normal answer) after `delay` seconds."""
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError(f"status {status!r} is not an HTTP error status")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count {count!r} must be a positive integer")
        fault = RestFault(status, None if retry_after is None else _seconds(retry_after), float(delay))
        if fault.delay < 0:
            raise ValueError(f"delay {delay!r} must not be negative")
        self._rest_faults.extend([fault] * count)

    async def _fault_rest_recover(self) -> None:
        """Forget every pending REST fault: the next REST call gets the normal answer."""
        self._rest_faults.clear()

    async def _fault_pause(self) -> None:
        self._clock.paused = True

    async def _fault_resume(self) -> None:
        self._clock.paused = False

    async def _fault_speed(self, speed: float | str) -> None:
        self._clock.set_speed(speed)
