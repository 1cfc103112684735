"""The simulator's market hub: the SignalR JSON hub protocol over a WebSocket.

What the `signalrcore` 1.0.2 client needs (docs/projectx-gateway-api.md): no WebSocket-level
pings or compression, handshake version 0 or 1, a completion for every invocation, events
always with an `arguments` list, type-6 pings. A client silent for `client_timeout` seconds is
closed with a type-7 message, and the handshake must come within 15 s.

`refuse_until` answers new hub upgrades with HTTP 503 before upgrading (REST shares the port,
so TCP itself cannot be refused per path): signalrcore's reconnect then fails for good, as
against a real outage. `stall_until` keeps the sockets open but sends nothing at all."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from ...logs import get_logger, kv
from ..protocol import (
    RECORD_SEPARATOR,
    SUBSCRIBE_DEPTH,
    SUBSCRIBE_QUOTES,
    SUBSCRIBE_TRADES,
    UNSUBSCRIBE_DEPTH,
    UNSUBSCRIBE_QUOTES,
    UNSUBSCRIBE_TRADES,
)
from .auth import SessionStore, bearer_token, unauthorized

log = get_logger("projectx.simulator")

HANDSHAKE_TIMEOUT_SECONDS = 15.0

# SignalR message types
_INVOCATION, _COMPLETION, _PING, _CLOSE = 1, 3, 6, 7

_SUBSCRIPTION_METHODS = {
    SUBSCRIBE_TRADES: ("trades", True),
    UNSUBSCRIBE_TRADES: ("trades", False),
    SUBSCRIBE_QUOTES: ("quotes", True),
    UNSUBSCRIBE_QUOTES: ("quotes", False),
    SUBSCRIBE_DEPTH: ("depth", True),
    UNSUBSCRIBE_DEPTH: ("depth", False),
}


def hub_record(message: dict) -> str:
    """One SignalR JSON record, separator included."""
    return json.dumps(message, separators=(",", ":")) + RECORD_SEPARATOR


def hub_event(target: str, contract_id: str, data) -> str:
    """A server → client event record: an invocation without an id, arguments (contractId, data)."""
    return hub_record({"type": _INVOCATION, "target": target, "arguments": [contract_id, data]})


@dataclass(eq=False)
class HubClient:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    user: str
    handshaken: bool = False
    trades: set[str] = field(default_factory=set)
    quotes: set[str] = field(default_factory=set)
    depth: set[str] = field(default_factory=set)


class MarketHubEndpoint:
    """`/hubs/market`: the connected clients, their subscriptions, and sending to them.

    `on_subscribed(client, feed, contract_id)` is awaited after each subscription ("trades",
    "quotes" or "depth"), for what the market sends a new subscriber at once."""

    def __init__(
        self,
        sessions: SessionStore,
        contracts: Collection[str],
        on_subscribed: Callable[[HubClient, str, str], Awaitable[None]],
        ping_interval: float,
        client_timeout: float,
    ):
        self._sessions = sessions
        self._contracts = contracts
        self._on_subscribed = on_subscribed
        self._ping_interval = float(ping_interval)
        self._client_timeout = float(client_timeout)
        self.clients: set[HubClient] = set()
        self.stall_until = 0.0
        self.refuse_until = 0.0

    def subscribers(self, feed: str, contract_id: str) -> list[HubClient]:
        return [c for c in self.clients if contract_id in getattr(c, feed)]

    def subscription_counts(self) -> dict[str, dict[str, int]]:
        subscriptions: dict[str, dict[str, int]] = {feed: {} for feed in ("trades", "quotes", "depth")}
        for client in self.clients:
            for feed, counts in subscriptions.items():
                for cid in getattr(client, feed):
                    counts[cid] = counts.get(cid, 0) + 1
        return subscriptions

    # ------------------------------------------------------------------ connections

    async def handle(self, request: web.Request) -> web.StreamResponse:
        refusing_for = self.refuse_until - time.monotonic()
        if refusing_for > 0:
            return web.Response(
                status=503, headers={"Retry-After": str(math.ceil(refusing_for))}, text="the market hub is refusing connections (simulated outage)"
            )
        token = request.query.get("access_token") or bearer_token(request)
        session = self._sessions.session_for(token)
        if session is None:
            return unauthorized()
        # No WebSocket pings (signalrcore reads them as data) and no compression; close quickly.
        ws = web.WebSocketResponse(autoping=False, heartbeat=None, compress=False, timeout=2.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade (negotiation is not served: skip it)")
        await ws.prepare(request)
        client = HubClient(ws, request.transport, session.user)
        self.clients.add(client)
        log.debug(kv("hub_client_connected", user=session.user))
        try:
            await self._serve_client(client)
        finally:
            self.clients.discard(client)
            if not ws.closed:
                await self._close_ws(client)
            log.debug(kv("hub_client_gone", user=session.user))
        return ws

    async def _serve_client(self, client: HubClient) -> None:
        pending = ""
        while True:
            timeout = self._client_timeout if client.handshaken else min(HANDSHAKE_TIMEOUT_SECONDS, self._client_timeout)
            try:
                msg = await client.ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                reason = "Server timeout elapsed without receiving a message from the client." if client.handshaken else "Handshake was canceled."
                await self.close_client(client, reason)
                return
            if msg.type == WSMsgType.TEXT:
                pending += msg.data
            elif msg.type == WSMsgType.BINARY:
                pending += msg.data.decode("utf-8", "replace")
            elif msg.type == WSMsgType.PING:
                await client.ws.pong(msg.data)
                continue
            elif msg.type == WSMsgType.PONG:
                continue
            else:  # close, closing, closed, error
                return
            *records, pending = pending.split(RECORD_SEPARATOR)
            for record in records:
                handled = await (self._on_message(client, record) if client.handshaken else self._handshake(client, record))
                if not handled:
                    return

    async def _handshake(self, client: HubClient, record: str) -> bool:
        try:
            request = json.loads(record)
            protocol, version = request.get("protocol"), request.get("version")
        except (ValueError, AttributeError):
            protocol, version = None, None
        error = None
        if protocol != "json":
            error = f"The protocol '{protocol}' is not supported."
        elif version not in (0, 1) or isinstance(version, bool):
            error = f"The server does not support version {version} of the '{protocol}' protocol."
        if error is not None:
            await self.send(client, hub_record({"error": error}))
            return False
        await self.send(client, "{}" + RECORD_SEPARATOR)
        client.handshaken = True  # even when a stall swallowed the answer: the server considers it done
        return True

    async def _on_message(self, client: HubClient, record: str) -> bool:
        try:
            message = json.loads(record)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            await self.close_client(client, "Connection closed with an error. InvalidDataException: invalid hub message.")
            return False
        if kind == _INVOCATION:
            await self._invoke(client, message)
        elif kind == _CLOSE:
            return False
        return True  # pings (6) and anything else only prove the client is alive

    async def _invoke(self, client: HubClient, message: dict) -> None:
        target, arguments, invocation_id = message.get("target"), message.get("arguments"), message.get("invocationId")
        error = None
        contract_id = None
        if target not in _SUBSCRIPTION_METHODS:
            error = f"Unknown hub method '{target}'"
        elif not (isinstance(arguments, list) and len(arguments) == 1 and isinstance(arguments[0], str)):
            error = f"Failed to invoke '{target}': it takes one argument, the contract id."
        elif arguments[0] not in self._contracts:
            error = f"Failed to invoke '{target}': contract '{arguments[0]}' not found."
        else:
            contract_id = arguments[0]
        if invocation_id is not None:
            completion = {"type": _COMPLETION, "invocationId": invocation_id}
            await self.send(client, hub_record({**completion, "error": error} if error else completion))
        if error is not None:
            return
        assert target is not None and contract_id is not None  # no error: both were checked above
        feed, subscribe = _SUBSCRIPTION_METHODS[target]
        subscriptions = getattr(client, feed)
        if not subscribe:
            subscriptions.discard(contract_id)
            return
        subscriptions.add(contract_id)
        await self._on_subscribed(client, feed, contract_id)

    # ------------------------------------------------------------------ sending

    async def send(self, client: HubClient, text: str) -> bool:
        if time.monotonic() < self.stall_until or client.ws.closed:
            return False
        try:
            await client.ws.send_str(text)
            return True
        except ConnectionError:
            return False

    async def broadcast(self, clients: list[HubClient], records: list[str]) -> list[bool]:
        async def send_all(client: HubClient) -> bool:
            sent = True
            for text in records:
                sent = await self.send(client, text) and sent
            return sent

        return await asyncio.gather(*(send_all(c) for c in clients))

    async def broadcast_handshaken(self, records: list[str]) -> None:
        await self.broadcast([c for c in self.clients if c.handshaken], records)

    async def close_client(self, client: HubClient, error: str | None = None, allow_reconnect: bool | None = None) -> None:
        close: dict[str, object] = {"type": _CLOSE}
        if error is not None:
            close["error"] = error
        if allow_reconnect is not None:
            close["allowReconnect"] = allow_reconnect
        await self.send(client, hub_record(close))
        await self._close_ws(client)

    async def close_all(self, error: str, allow_reconnect: bool | None = None) -> None:
        await asyncio.gather(*(self.close_client(c, error, allow_reconnect) for c in list(self.clients)))

    def abort_all(self) -> None:
        """Abort every hub TCP connection, without any close frame."""
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()

    @staticmethod
    async def _close_ws(client: HubClient) -> None:
        try:
            await asyncio.wait_for(client.ws.close(), 3.0)
        except (asyncio.TimeoutError, ConnectionError):
            if client.transport is not None:
                client.transport.abort()

    async def run_pings(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            await self.broadcast_handshaken([hub_record({"type": _PING})])
