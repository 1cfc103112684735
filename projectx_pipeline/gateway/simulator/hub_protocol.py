"""The simulator's SignalR hubs, `/hubs/market` and `/hubs/user`: the JSON hub protocol over a WebSocket.

`HubEndpoint` is the SignalR machinery both hubs share: negotiation, the upgrade, the handshake,
records, completions, pings, the client timeout and closing. A hub adds only its method table
(which subscription each method changes, and the check of its argument): `MarketHubEndpoint`
(contract ids, for trades, quotes and depth) and `UserHubEndpoint` (account ids, for accounts,
orders, positions and fills; no events are sent: the platform places no orders).

Connecting, as ASP.NET Core SignalR serves it (docs/projectx-gateway-api.md):

* `POST <hub>/negotiate[?negotiateVersion=N]` answers version 0 without the parameter (a
  `connectionId`, which is also the id to connect with) and version 1 for N >= 1 (a
  `connectionToken` besides: the id to connect with). Only the WebSockets transport is offered.
* The WebSocket upgrade then carries `&id=<that id>`. An id never negotiated, expired (not
  used within `negotiate_timeout` seconds, 15 by default like ASP.NET's disconnect timeout) or
  negotiated for the other hub gets 404 "No Connection with that ID"; an id whose WebSocket is
  open gets 409. One id serves one WebSocket: once it closes, the id is gone.
* A WebSocket without `id` skips negotiation and is accepted too (the platform's daemon does so).
* Negotiation and the upgrade both need a token (`access_token` query parameter or bearer header).

What the `signalrcore` 1.0.2 client needs: no WebSocket-level pings or compression, a completion
for every invocation, events always with an `arguments` list, type-6 pings. The handshake must be
`{"protocol":"json","version":1}`, as the gateway speaks version 1 of the JSON protocol: any
other version is refused with ASP.NET's error and the socket closed. It must come within 15 s,
and a client silent for `client_timeout` seconds is closed with a type-7 message.

`refuse_until` answers new negotiations and hub upgrades with HTTP 503 (REST shares the port,
so TCP itself cannot be refused per path): signalrcore's reconnect then fails for good, as
against a real outage. `stall_until` keeps the sockets open but sends nothing at all.

Every send waits while the client's socket buffer is full (backpressure: at speed "max" the
slowest reader sets the pace), but at most `send_timeout` seconds: a client that reads nothing
for that long is dropped (its TCP connection aborted, `slow_consumers_dropped` counted), as a
market feed drops a slow consumer. Without that bound one subscribed client that stopped reading
would freeze the clock, the other clients' feeds and the pings."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import WSMsgType, web

from ...logs import get_logger, kv
from ..protocol import (
    MARKET_HUB_PATH,
    NEGOTIATE_SUFFIX,
    RECORD_SEPARATOR,
    SUBSCRIBE_ACCOUNT_TRADES,
    SUBSCRIBE_ACCOUNTS,
    SUBSCRIBE_DEPTH,
    SUBSCRIBE_ORDERS,
    SUBSCRIBE_POSITIONS,
    SUBSCRIBE_QUOTES,
    SUBSCRIBE_TRADES,
    UNSUBSCRIBE_ACCOUNT_TRADES,
    UNSUBSCRIBE_ACCOUNTS,
    UNSUBSCRIBE_DEPTH,
    UNSUBSCRIBE_ORDERS,
    UNSUBSCRIBE_POSITIONS,
    UNSUBSCRIBE_QUOTES,
    UNSUBSCRIBE_TRADES,
    USER_HUB_PATH,
)
from .accounts import SIMULATED_ACCOUNTS, account_by_id
from .auth import SessionStore, bearer_token, unauthorized

log = get_logger("projectx.simulator")

HANDSHAKE_TIMEOUT_SECONDS = 15.0
# How long a negotiated id waits for its WebSocket: ASP.NET's DisconnectTimeout default.
NEGOTIATE_TIMEOUT_SECONDS = 15.0
# How long one send may wait for a client whose socket buffer is full before the client is dropped.
SEND_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class HubTimings:
    """The hubs' timing, the same for both: how often they ping, how long a client may be silent,
    how long a negotiated id waits for its WebSocket, how long a send may wait for a full buffer."""

    ping_interval: float
    client_timeout: float
    negotiate_timeout: float
    send_timeout: float


# The one JSON hub protocol version the gateway speaks (ASP.NET Core's JsonHubProtocol before .NET 8).
JSON_PROTOCOL_VERSION = 1
# What negotiate answers at most: a client asking for more gets this (ASP.NET answers its own maximum).
MAX_NEGOTIATE_VERSION = 1
# ASP.NET's answer to an upgrade whose `id` it does not know (status 404).
NO_CONNECTION_WITH_THAT_ID = "No Connection with that ID"
# The key a method without an argument subscribes (SubscribeAccounts: every account of the user).
EVERY = "all"

# SignalR message types
_INVOCATION, _COMPLETION, _PING, _CLOSE = 1, 3, 6, 7


def hub_record(message: dict) -> str:
    """One SignalR JSON record, separator included."""
    return json.dumps(message, separators=(",", ":")) + RECORD_SEPARATOR


def hub_event(target: str, contract_id: str, data) -> str:
    """A server → client event record: an invocation without an id, arguments (contractId, data)."""
    return hub_record({"type": _INVOCATION, "target": target, "arguments": [contract_id, data]})


def _shown(value: object) -> str:
    """A received value as it was on the wire, for an error message."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


# --------------------------------------------------------------------------- clients and methods


@dataclass(eq=False)
class HubClient:
    """One hub WebSocket: its user, whether the handshake is done, and its subscriptions (feed → keys)."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    user: str
    handshaken: bool = False
    dropped: bool = False  # dropped as a slow consumer: nothing more is sent to it
    subscriptions: dict[str, set[Any]] = field(default_factory=dict)

    def subscribed(self, feed: str) -> set[Any]:
        return self.subscriptions.setdefault(feed, set())


class MarketHubClient(HubClient):
    """A market hub client; `trades`, `quotes` and `depth` are its subscribed contract ids."""

    @property
    def trades(self) -> set[str]:
        return self.subscribed("trades")

    @property
    def quotes(self) -> set[str]:
        return self.subscribed("quotes")

    @property
    def depth(self) -> set[str]:
        return self.subscribed("depth")


@dataclass(frozen=True)
class HubArgument:
    """The one argument of a hub method: what it is (for errors), and its check (an error text, or None)."""

    what: str
    problem: Callable[[object], str | None]


@dataclass(frozen=True)
class HubMethod:
    """A hub method: the feed it subscribes to (or unsubscribes from), and its argument (None: it takes none)."""

    feed: str
    subscribe: bool
    argument: HubArgument | None

    def bind(self, target: str, arguments: object) -> tuple[object, str | None]:
        """The subscription key the arguments name, or the error of the completion."""
        if self.argument is None:
            if arguments not in ([], None):
                return None, f"Failed to invoke '{target}': it takes no arguments, got {_shown(arguments)}."
            return EVERY, None
        if not (isinstance(arguments, list) and len(arguments) == 1):
            return None, f"Failed to invoke '{target}': it takes one argument, {self.argument.what}; got {_shown(arguments)}."
        problem = self.argument.problem(arguments[0])
        if problem is not None:
            return None, f"Failed to invoke '{target}': {problem}."
        return arguments[0], None


def subscription_methods(feeds: dict[str, tuple[str, str]], argument: HubArgument | None) -> dict[str, HubMethod]:
    """The method table of feeds given as {feed: (subscribe method, unsubscribe method)}."""
    table = {}
    for feed, (subscribe, unsubscribe) in feeds.items():
        table[subscribe] = HubMethod(feed, True, argument)
        table[unsubscribe] = HubMethod(feed, False, argument)
    return table


# --------------------------------------------------------------------------- negotiation


def random_connection_id() -> str:
    """16 random bytes, base64url: the shape of ASP.NET's connection ids and tokens."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


@dataclass
class _Negotiated:
    user: str
    expires_at: float  # monotonic
    connected: bool = False


class NegotiatedIds:
    """The ids negotiated on one hub and not yet used up: each serves one WebSocket."""

    def __init__(self, timeout: float):
        self._timeout = float(timeout)
        self._ids: dict[str, _Negotiated] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def issue(self, user: str) -> str:
        now = time.monotonic()
        # forget the ids that expired unused, so that negotiating without connecting cannot pile up
        for stale in [i for i, n in self._ids.items() if not n.connected and n.expires_at <= now]:
            del self._ids[stale]
        new_id = random_connection_id()
        self._ids[new_id] = _Negotiated(user, now + self._timeout)
        return new_id

    def claim(self, connection_id: str) -> int | None:
        """Take an id for a WebSocket: None when it may, else the HTTP status refusing it (404, 409)."""
        negotiated = self._ids.get(connection_id)
        if negotiated is None or (not negotiated.connected and negotiated.expires_at <= time.monotonic()):
            self._ids.pop(connection_id, None)
            return 404
        if negotiated.connected:
            return 409
        negotiated.connected = True
        return None

    def release(self, connection_id: str) -> None:
        """The id's WebSocket is closed: the id is used up."""
        self._ids.pop(connection_id, None)


def _negotiate_version(raw: str | None) -> int:
    if raw is None:
        return 0
    try:
        requested = int(raw)
    except ValueError:
        requested = -1
    if requested < 0:
        raise web.HTTPBadRequest(text=f"The client requested an invalid protocol version '{raw}': expected negotiateVersion=0 or 1 (or none).")
    return min(requested, MAX_NEGOTIATE_VERSION)


# --------------------------------------------------------------------------- the shared hub machinery

ClientT = TypeVar("ClientT", bound=HubClient)


class HubEndpoint(Generic[ClientT]):
    """A SignalR hub at `path`: negotiation, connections, the protocol, and sending to clients.

    Subclasses give `name`, `path`, `client_type` and `methods`; `on_subscribed(client, feed,
    key)` is awaited after each subscription, for what a hub sends a new subscriber at once."""

    name: str
    path: str
    client_type: type[ClientT]
    methods: dict[str, HubMethod]

    def __init__(
        self,
        sessions: SessionStore,
        timings: HubTimings,
        on_subscribed: Callable[[ClientT, str, Any], Awaitable[None]] | None = None,
    ):
        self._sessions = sessions
        self._on_subscribed = on_subscribed
        self._ping_interval = float(timings.ping_interval)
        self._client_timeout = float(timings.client_timeout)
        self._send_timeout = float(timings.send_timeout)
        self.negotiated = NegotiatedIds(timings.negotiate_timeout)
        self.slow_consumers_dropped = 0
        self.clients: set[ClientT] = set()
        self.stall_until = 0.0
        self.refuse_until = 0.0

    @property
    def feeds(self) -> list[str]:
        return list(dict.fromkeys(method.feed for method in self.methods.values()))

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path, self.handle), web.post(self.path + NEGOTIATE_SUFFIX, self.handle_negotiate)]

    def subscribers(self, feed: str, key: object) -> list[ClientT]:
        return [c for c in self.clients if key in c.subscribed(feed)]

    def subscription_counts(self) -> dict[str, dict[Any, int]]:
        subscriptions: dict[str, dict[Any, int]] = {feed: {} for feed in self.feeds}
        for client in self.clients:
            for feed, counts in subscriptions.items():
                for key in client.subscribed(feed):
                    counts[key] = counts.get(key, 0) + 1
        return subscriptions

    # ------------------------------------------------------------------ connections

    def _admitted_user(self, request: web.Request) -> str | web.Response:
        """The user a negotiation or an upgrade comes from, or the answer refusing it (503 in a
        simulated outage, 401 without a valid token): both are checked alike, as ASP.NET
        authorizes the negotiate and connect requests of a hub alike."""
        refusing_for = self.refuse_until - time.monotonic()
        if refusing_for > 0:
            return web.Response(
                status=503,
                headers={"Retry-After": str(math.ceil(refusing_for))},
                text=f"the {self.name} hub is refusing connections (simulated outage)",
            )
        session = self._sessions.session_for(request.query.get("access_token") or bearer_token(request))
        return unauthorized() if session is None else session.user

    async def handle_negotiate(self, request: web.Request) -> web.Response:
        user = self._admitted_user(request)
        if isinstance(user, web.Response):
            return user
        version = _negotiate_version(request.query.get("negotiateVersion"))
        connect_with = self.negotiated.issue(user)
        if version == 0:
            answer: dict[str, object] = {"negotiateVersion": 0, "connectionId": connect_with}
        else:  # v1 keeps the connection id public and opens the connection with a separate token
            answer = {"negotiateVersion": version, "connectionId": random_connection_id(), "connectionToken": connect_with}
        answer["availableTransports"] = [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}]
        log.debug(kv("hub_negotiated", hub=self.name, version=version, user=user))  # never the ids: they open the connection
        return web.json_response(answer)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        user = self._admitted_user(request)
        if isinstance(user, web.Response):
            return user
        # No WebSocket pings (signalrcore reads them as data) and no compression; close quickly.
        ws = web.WebSocketResponse(autoping=False, heartbeat=None, compress=False, timeout=2.0)
        if not ws.can_prepare(request).ok:
            return web.Response(
                status=400,
                text=f"expected a WebSocket upgrade: {self.path} serves the WebSockets transport only "
                f"(negotiate with POST {self.path}{NEGOTIATE_SUFFIX}, or open the WebSocket directly)",
            )
        connection_id = request.query.get("id")
        if connection_id is not None:
            refused = self.negotiated.claim(connection_id)
            if refused == 404:
                return web.Response(status=404, text=NO_CONNECTION_WITH_THAT_ID)
            if refused == 409:
                return web.Response(status=409, text="Connection with that ID already has a WebSocket: one negotiated id serves one connection")
        try:
            await ws.prepare(request)
            client = self.client_type(ws, request.transport, user)
            self.clients.add(client)
            log.debug(kv("hub_client_connected", hub=self.name, user=user, negotiated=connection_id is not None))
            try:
                await self._serve_client(client)
            finally:
                self.clients.discard(client)
                if not ws.closed:
                    await self._close_ws(client)
                log.debug(kv("hub_client_gone", hub=self.name, user=user))
        finally:
            if connection_id is not None:
                self.negotiated.release(connection_id)
        return ws

    async def _serve_client(self, client: ClientT) -> None:
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

    async def _handshake(self, client: ClientT, record: str) -> bool:
        try:
            request = json.loads(record)
            protocol, version = request.get("protocol"), request.get("version")
        except (ValueError, AttributeError):
            protocol, version = None, None
        error = None
        if protocol != "json":
            error = f"The protocol '{protocol}' is not supported."
        elif version != JSON_PROTOCOL_VERSION or isinstance(version, bool):
            error = f"The server does not support version {version} of the '{protocol}' protocol."
        if error is not None:
            await self.send(client, hub_record({"error": error}))
            return False
        await self.send(client, "{}" + RECORD_SEPARATOR)
        client.handshaken = True  # even when a stall swallowed the answer: the server considers it done
        return True

    async def _on_message(self, client: ClientT, record: str) -> bool:
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

    async def _invoke(self, client: ClientT, message: dict) -> None:
        target, invocation_id = message.get("target"), message.get("invocationId")
        method = self.methods.get(target) if isinstance(target, str) else None
        key: object = None
        error: str | None = f"Unknown hub method '{target}'"
        if method is not None:
            key, error = method.bind(str(target), message.get("arguments"))
        if invocation_id is not None:
            completion = {"type": _COMPLETION, "invocationId": invocation_id}
            await self.send(client, hub_record({**completion, "error": error} if error else completion))
        if method is None or error is not None:
            return
        subscriptions = client.subscribed(method.feed)
        if not method.subscribe:
            subscriptions.discard(key)
            return
        subscriptions.add(key)
        if self._on_subscribed is not None:
            await self._on_subscribed(client, method.feed, key)

    # ------------------------------------------------------------------ sending

    async def send(self, client: HubClient, text: str) -> bool:
        if time.monotonic() < self.stall_until or client.ws.closed or client.dropped:
            return False
        try:
            await asyncio.wait_for(client.ws.send_str(text), self._send_timeout)
            return True
        except asyncio.TimeoutError:
            self._drop_slow_consumer(client)
            return False
        except ConnectionError:
            return False

    def _drop_slow_consumer(self, client: HubClient) -> None:
        """A client that has read nothing for `send_timeout` seconds while its socket buffer is full
        is dropped, as a market feed does: waiting for it would hold the market for every client."""
        if client.dropped:
            return
        client.dropped = True
        self.slow_consumers_dropped += 1
        log.warning(kv("hub_slow_consumer_dropped", hub=self.name, user=client.user, send_timeout_seconds=self._send_timeout))
        if client.transport is not None:
            client.transport.abort()

    async def broadcast(self, clients: list[ClientT], records: list[str]) -> list[bool]:
        async def send_all(client: ClientT) -> bool:
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


# --------------------------------------------------------------------------- the two hubs


class MarketHubEndpoint(HubEndpoint[MarketHubClient]):
    """`/hubs/market`: subscriptions by contract id to "trades", "quotes" and "depth"."""

    name, path, client_type = "market", MARKET_HUB_PATH, MarketHubClient

    def __init__(
        self,
        sessions: SessionStore,
        contracts: Collection[str],
        on_subscribed: Callable[[MarketHubClient, str, Any], Awaitable[None]],
        timings: HubTimings,
    ):
        super().__init__(sessions, timings, on_subscribed)
        contract_id = HubArgument(
            "the contract id (a string)",
            lambda value: (
                None if isinstance(value, str) and value in contracts else f"contract {_shown(value)} not found: expected one of {sorted(contracts)}"
            ),
        )
        self.methods = subscription_methods(
            {
                "trades": (SUBSCRIBE_TRADES, UNSUBSCRIBE_TRADES),
                "quotes": (SUBSCRIBE_QUOTES, UNSUBSCRIBE_QUOTES),
                "depth": (SUBSCRIBE_DEPTH, UNSUBSCRIBE_DEPTH),
            },
            contract_id,
        )


def _account_problem(value: object) -> str | None:
    if account_by_id(value) is not None:
        return None
    known = ", ".join(str(a.id) for a in SIMULATED_ACCOUNTS)
    return f"account {_shown(value)} not found: expected the whole-number id of one of the simulated accounts ({known})"


class UserHubEndpoint(HubEndpoint[HubClient]):
    """`/hubs/user`: "accounts" (every account, no argument), and "orders", "positions" and
    "trades" by account id. Subscriptions are kept and counted; no events are sent."""

    name, path, client_type = "user", USER_HUB_PATH, HubClient

    def __init__(self, sessions: SessionStore, timings: HubTimings):
        super().__init__(sessions, timings)
        account_id = HubArgument("the account id (a whole number)", _account_problem)
        self.methods = {
            **subscription_methods({"accounts": (SUBSCRIBE_ACCOUNTS, UNSUBSCRIBE_ACCOUNTS)}, None),
            **subscription_methods(
                {
                    "orders": (SUBSCRIBE_ORDERS, UNSUBSCRIBE_ORDERS),
                    "positions": (SUBSCRIBE_POSITIONS, UNSUBSCRIBE_POSITIONS),
                    "trades": (SUBSCRIBE_ACCOUNT_TRADES, UNSUBSCRIBE_ACCOUNT_TRADES),
                },
                account_id,
            ),
        }
