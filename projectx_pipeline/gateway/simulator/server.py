"""A local ProjectX Gateway: REST API, SignalR market hub and a fault-injection endpoint on one port.

Faithful to the protocol in `docs/projectx-gateway-api.md`, including what the `signalrcore` 1.0.2 client
needs (no WebSocket-level pings or compression, handshake version 0 or 1, a completion for every
invocation, events always with an `arguments` list, type-6 pings).

Choices where the real gateway is unconfirmed, made explicit here:

* `retrieveBars` serves the bars whose start (label) lies in [startTime, endTime), newest first;
  `limit` keeps the most recent ones, capped at 20,000. Bars are built from the trades released
  before the clock only; `includePartialBar: false` drops the bar whose window holds the clock.
* Rate limits are sliding windows per user (per client address for `loginKey`); a 429 carries a
  `Retry-After` header in whole seconds.
* A missing, unknown or expired token gets HTTP 401 with an empty body; a malformed body or a
  missing field HTTP 400 with an ASP.NET-style problem document.
* `GatewayTrade` events carry one trade object or a list: of the trades of a contract released in
  one step, the first goes out alone as an object and the rest, if any, as one list.
* Timestamps rotate through four ISO forms (3 or 7 fractional digits, none on whole seconds,
  `Z` or `+00:00`), chosen by the trade's second so the choice is deterministic.
* `refuse` answers new hub upgrades with HTTP 503 before upgrading (REST shares the port, so TCP
  itself cannot be refused per path): signalrcore's reconnect then fails for good, as against a
  real outage.
* `trades_published` counts trades released by the clock, whether or not anyone was subscribed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from aiohttp import WSMsgType, web

from projectx_pipeline.domain.timeframes import (
    DomainError,
    NS_PER_SECOND,
    Timeframe,
    parse_timeframe,
)
from projectx_pipeline.domain.timestamps import from_ns, to_ns

from ..protocol import (
    API_ROOT,
    DEFAULT_BUDGET,
    DEPTH_EVENT,
    HISTORY_BUDGET,
    HISTORY_ENDPOINT,
    ISO_SECONDS_FORMAT,
    LOGIN_ENDPOINT,
    LOGOUT_EVENT,
    MARKET_HUB_PATH,
    MAX_BARS_PER_REQUEST,
    QUOTE_EVENT,
    RECORD_SEPARATOR as RS,
    SEARCH_BY_ID_ENDPOINT,
    SEARCH_ENDPOINT,
    SUBSCRIBE_DEPTH,
    SUBSCRIBE_QUOTES,
    SUBSCRIBE_TRADES,
    TRADE_EVENT,
    UNSUBSCRIBE_DEPTH,
    UNSUBSCRIBE_QUOTES,
    UNSUBSCRIBE_TRADES,
    VALIDATE_ENDPOINT,
)
from . import market
from .market import Contract, MarketSource, ReplaySource, SyntheticSource, Trades

log = logging.getLogger(__name__)

MAX_SPEED = "max"
HANDSHAKE_TIMEOUT_SECONDS = 15.0
TICK_SECONDS = 0.05  # how often the clock advances at a numeric speed
_FAR_FUTURE_NS = 2**62

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

# ProjectX DomType values used in GatewayDepth entries
_DOM_ASK, _DOM_BID, _DOM_RESET = 1, 2, 6

_SUBSCRIPTION_METHODS = {
    SUBSCRIBE_TRADES: ("trades", True),
    UNSUBSCRIBE_TRADES: ("trades", False),
    SUBSCRIBE_QUOTES: ("quotes", True),
    UNSUBSCRIBE_QUOTES: ("quotes", False),
    SUBSCRIBE_DEPTH: ("depth", True),
    UNSUBSCRIBE_DEPTH: ("depth", False),
}


def parse_speed(value: object) -> float | str:
    """A replay speed: "max" or a positive finite multiple of real time."""
    if isinstance(value, str) and value.strip().lower() == MAX_SPEED:
        return MAX_SPEED
    try:
        speed = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"invalid speed {value!r}: expected a positive number or 'max'") from None
    if not math.isfinite(speed) or speed <= 0 or isinstance(value, bool):
        raise ValueError(f"invalid speed {value!r}: expected a positive number or 'max'")
    return speed


def format_timestamp(ts_ns: int, style: int) -> str:
    """An ISO-8601 UTC timestamp in one of the four forms the gateway is seen to use (ms resolution)."""
    seconds, rem_ns = divmod(int(ts_ns), NS_PER_SECOND)
    base = time.strftime(ISO_SECONDS_FORMAT, time.gmtime(seconds))
    millis = rem_ns // 1_000_000
    style %= 4
    if style == 0:
        return f"{base}.{millis:03d}+00:00"
    if style == 1:
        return f"{base}.{millis * 10_000:07d}Z"  # .NET's 7-digit ticks
    if rem_ns == 0:
        return f"{base}Z" if style == 2 else f"{base}+00:00"
    return f"{base}.{millis:03d}Z" if style == 2 else f"{base}.{millis * 1000:06d}+00:00"


def _style_of(ts_ns: int) -> int:
    return int(ts_ns) // NS_PER_SECOND


def _record(message: dict) -> str:
    return json.dumps(message, separators=(",", ":")) + RS


def _event(target: str, contract_id: str, data) -> str:
    return _record({"type": 1, "target": target, "arguments": [contract_id, data]})


def _jwt(user: str, expires_at: float) -> str:
    """An unsigned but well-formed JWT: clients can read `exp`, nothing checks the signature."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": user, "name": user, "iat": int(time.time()), "exp": int(expires_at),
              "jti": uuid.uuid4().hex, "iss": "projectx-simulator"}
    compact = {"separators": (",", ":")}
    return ".".join((part(json.dumps(header, **compact).encode()), part(json.dumps(claims, **compact).encode()),
                     part(secrets.token_bytes(32))))


@dataclass
class _Session:
    user: str
    expires_at: float  # epoch seconds


@dataclass(eq=False)
class _HubClient:
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    user: str
    handshaken: bool = False
    trades: set[str] = field(default_factory=set)
    quotes: set[str] = field(default_factory=set)
    depth: set[str] = field(default_factory=set)


@dataclass
class _RestFault:
    status: int | None
    retry_after: float | None
    delay: float


@dataclass
class _SessionStats:
    """Running figures of a contract's current CME session, for GatewayQuote."""

    session_label: int | None = None
    open: float | None = None
    high: float | None = None
    low: float | None = None
    last: float | None = None
    volume: int = 0
    last_trade_ns: int | None = None

    def add(self, trades: Trades) -> None:
        if not len(trades):
            return
        labels = market.session_labels_ns(trades.ts_ns)
        latest = int(labels[-1])
        if latest != self.session_label:
            in_latest = labels == latest
            trades = Trades(trades.ts_ns[in_latest], trades.price[in_latest], trades.size[in_latest], trades.side[in_latest])
            self.session_label, self.open, self.high, self.low, self.volume = latest, float(trades.price[0]), None, None, 0
        high, low = float(trades.price.max()), float(trades.price.min())
        self.high = high if self.high is None else max(self.high, high)
        self.low = low if self.low is None else min(self.low, low)
        self.last = float(trades.price[-1])
        self.volume += int(trades.size.sum())
        self.last_trade_ns = int(trades.ts_ns[-1])


class _SlidingWindowLimiter:
    def __init__(self, limits: dict[str, tuple[int, float]]):
        self._limits = limits
        self._calls: dict[tuple[str, str], deque[float]] = {}

    def acquire(self, key: str, bucket: str) -> int | None:
        """Record a call; None when allowed, else the seconds to wait (>= 1) before retrying."""
        count, window = self._limits[bucket]
        calls = self._calls.setdefault((key, bucket), deque())
        now = time.monotonic()
        while calls and calls[0] <= now - window:
            calls.popleft()
        if len(calls) >= count:
            return max(1, math.ceil(calls[0] + window - now))
        calls.append(now)
        return None


class _BadRequest(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field_name = field_name


def _problem(field_name: str, message: str) -> web.Response:
    body = {"type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            "title": "One or more validation errors occurred.", "status": 400,
            "errors": {field_name: [message]}}
    return web.json_response(body, status=400, content_type="application/problem+json")


def _unauthorized() -> web.Response:
    return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})


def _envelope(error_code: int = 0, error_message: str | None = None, **payload) -> web.Response:
    return web.json_response({**payload, "success": error_code == 0, "errorCode": error_code, "errorMessage": error_message})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _require(body: dict, name: str, kind: type):
    value = body.get(name)
    # JSON true/false must not pass for a number, although Python's bool is an int
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _BadRequest(name, f"The {name} field is required and must be of type {kind.__name__}.")
    return value


def _parse_time_field(body: dict, name: str) -> int:
    text = _require(body, name, str)
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _BadRequest(name, f"The value '{text}' is not a valid date-time.") from None
    # The wire's rule, not the domain's: a gateway timestamp without an offset is UTC.
    return to_ns(ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc))


def _iso_bar_time(ts: pd.Timestamp) -> str:
    return ts.strftime(ISO_SECONDS_FORMAT + "+00:00")


class SimulatorServer:
    """The ProjectX Gateway simulator, served from a background thread with its own event loop.

    Market data comes from exactly one source: `replay` (a bar CSV; by default the MES 5m sample)
    or `synthetic` (contract ids). The clock is the replay position: it advances at `speed` × real
    time (or, with "max", as fast as the slowest subscribed client reads), history never holds a
    trade at or after it, and trades released before a client subscribed are lost to that client.

    Two parameters go beyond the gateway's own behaviour, for tests and demos: `client_timeout`
    (seconds of client silence before the hub closes the connection; ASP.NET's default is 30) and
    `start_time` (where the synthetic clock starts; default now)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        replay: str | Path | None = None,
        speed: float | str = 1.0,
        synthetic: list[str] | None = None,
        seed: int = 0,
        username: str | None = None,
        api_key: str | None = None,
        rate_limits: bool = True,
        wait_for_subscriber: bool = False,
        token_ttl_seconds: float = 86_400,
        ping_interval: float = 15.0,
        quote_interval: float = 1.0,
        client_timeout: float = 30.0,
        start_time: datetime | None = None,
    ):
        if replay is not None and synthetic:
            raise ValueError("choose either a replay file or synthetic contracts, not both")
        for name, value in (("ping_interval", ping_interval), ("quote_interval", quote_interval),
                            ("client_timeout", client_timeout), ("token_ttl_seconds", token_ttl_seconds)):
            if not value > 0:
                raise ValueError(f"invalid {name} {value!r}: expected a positive number of seconds")
        self._speed = parse_speed(speed)
        self._source: MarketSource
        if synthetic:
            if self._speed == MAX_SPEED:
                raise ValueError("speed 'max' needs a replay: the synthetic market runs on a real-time clock")
            start_ns = to_ns(start_time) if start_time is not None else time.time_ns() // 1_000_000 * 1_000_000
            self._source = SyntheticSource(list(synthetic), seed, start_ns)
            self.mode = "synthetic"
        else:
            if start_time is not None:
                raise ValueError("start_time applies to the synthetic market only: a replay starts at its first bar")
            self._source = ReplaySource(replay if replay is not None else market.default_replay_path(), seed)
            self.mode = "replay"
        self.host, self._requested_port = host, port
        self._username, self._api_key = username, api_key
        self._limiter = _SlidingWindowLimiter({"history": HISTORY_BUDGET, "other": DEFAULT_BUDGET}) if rate_limits else None
        self._token_ttl = float(token_ttl_seconds)
        self._ping_interval, self._quote_interval = float(ping_interval), float(quote_interval)
        self._client_timeout = float(client_timeout)

        self._clock_ns = self._source.start_ns
        self._waiting_for_subscriber = wait_for_subscriber
        self._paused = False
        self._stall_until = 0.0
        self._refuse_until = 0.0
        self._rest_faults: deque[_RestFault] = deque()
        self._malformed: deque[str] = deque()
        self._sessions: dict[str, _Session] = {}
        self._clients: set[_HubClient] = set()
        self._stats = {cid: _SessionStats() for cid in self._source.contracts}
        for cid, stats in self._stats.items():
            stats.add(self._source.trades_between(cid, market.session_open_ns(self._clock_ns), self._clock_ns))
        self._last_quote_clock_ns: int | None = None
        self._last_quote_wall = 0.0
        self.trades_published = 0
        self.trades_sent = 0

        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle and Python API

    def start(self) -> SimulatorServer:
        """Start serving in a background thread; returns once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._thread = threading.Thread(target=self._serve, name="projectx-simulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self, timeout: float = 5) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        return self._base_url()

    @property
    def rtc_url(self) -> str:
        return self._base_url()

    @property
    def control_url(self) -> str:
        return self._base_url() + "/control"

    @property
    def contracts(self) -> dict[str, Contract]:
        return dict(self._source.contracts)

    def clock(self) -> datetime:
        """The replay position: every trade before it has been released, none after."""
        return from_ns(self._clock_ns)

    def history_bars(self, contract_id: str, timeframe: str | Timeframe, start: datetime | None = None,
                     end: datetime | None = None) -> pd.DataFrame:
        """Every bar up to the clock (the one in progress included), labelled in [start, end), oldest first."""
        return market.history_bars(
            self._source, contract_id, parse_timeframe(timeframe),
            to_ns(start) if start is not None else 0,  # the epoch: even a month bar labelled before the first trade
            to_ns(end) if end is not None else _FAR_FUTURE_NS,
            self._clock_ns,
        )

    def _base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if self._ready.is_set():
                log.exception("the simulator stopped on an error")
            else:  # start() re-raises it in the caller's thread
                self._startup_error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.add_routes([
            web.post(f"{API_ROOT}/{LOGIN_ENDPOINT}", self._rest(self._login_key, bucket="other", authenticated=False)),
            web.post(f"{API_ROOT}/{VALIDATE_ENDPOINT}", self._rest(self._validate, bucket="other", body_required=False)),
            web.post(f"{API_ROOT}/{SEARCH_ENDPOINT}", self._rest(self._contract_search, bucket="other")),
            web.post(f"{API_ROOT}/{SEARCH_BY_ID_ENDPOINT}", self._rest(self._contract_by_id, bucket="other")),
            web.post(f"{API_ROOT}/{HISTORY_ENDPOINT}", self._rest(self._retrieve_bars, bucket="history")),
            web.get(MARKET_HUB_PATH, self._hub),
            web.get("/control/status", self._control_status),
            web.post("/control/{action}", self._control),
        ])
        # No access log: hub URLs carry the token in their query string.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
            self.port = runner.addresses[0][1]
            tasks = [asyncio.create_task(self._run_market()), asyncio.create_task(self._run_pings())]
            log.info("ProjectX simulator (%s) listening on %s", self.mode, self._base_url())
            self._ready.set()
            await self._stopping.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in list(self._clients):
                if client.transport is not None:
                    client.transport.abort()
        finally:
            await runner.cleanup()

    # ------------------------------------------------------------------ REST

    def _rest(self, handler, *, bucket: str, authenticated: bool = True, body_required: bool = True):
        async def endpoint(request: web.Request) -> web.StreamResponse:
            if self._rest_faults:
                fault = self._rest_faults.popleft()
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    headers = {"Retry-After": str(math.ceil(fault.retry_after))} if fault.retry_after is not None else {}
                    return web.Response(status=fault.status, headers=headers, text=f"simulated HTTP {fault.status}")
            session = None
            if authenticated:
                session = self._session_for(_bearer(request))
                if session is None:
                    return _unauthorized()
            if self._limiter is not None:
                retry_after = self._limiter.acquire(session.user if session else str(request.remote), bucket)
                if retry_after is not None:
                    return web.Response(status=429, headers={"Retry-After": str(retry_after)})
            try:
                body = await self._json_body(request, body_required)
                return await handler(body, session)
            except _BadRequest as exc:
                return _problem(exc.field_name, str(exc))

        return endpoint

    @staticmethod
    async def _json_body(request: web.Request, required: bool) -> dict:
        raw = await request.read()
        if not raw.strip():
            if required:
                raise _BadRequest("body", "A non-empty request body is required.")
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise _BadRequest("body", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _BadRequest("body", "The request body must be a JSON object.")
        return body

    def _session_for(self, token: str | None) -> _Session | None:
        session = self._sessions.get(token) if token else None
        if session is None or session.expires_at <= time.time():
            return None
        return session

    def _issue_token(self, user: str) -> str:
        expires_at = time.time() + self._token_ttl
        token = _jwt(user, expires_at)
        self._sessions[token] = _Session(user, expires_at)
        return token

    async def _login_key(self, body: dict, _session) -> web.Response:
        user, api_key = _require(body, "userName", str), _require(body, "apiKey", str)
        if not user or not api_key:
            return _envelope(3, "Invalid credentials.", token=None)
        if self._username is not None and user != self._username:
            return _envelope(1, "User not found.", token=None)
        if self._api_key is not None and not secrets.compare_digest(api_key, self._api_key):
            return _envelope(3, "Invalid credentials.", token=None)
        return _envelope(token=self._issue_token(user))

    async def _validate(self, _body: dict, session: _Session) -> web.Response:
        return _envelope(newToken=self._issue_token(session.user))

    async def _contract_search(self, body: dict, _session) -> web.Response:
        text = _require(body, "searchText", str).strip().lower()
        if "live" in body and not isinstance(body["live"], bool):
            raise _BadRequest("live", "The live field must be a boolean.")
        found = [c.to_gateway() for c in self._source.contracts.values()
                 if not text or any(text in s.lower() for s in (c.id, c.name, c.description, c.symbol_id))]
        return _envelope(contracts=found[:20])

    async def _contract_by_id(self, body: dict, _session) -> web.Response:
        contract = self._source.contracts.get(_require(body, "contractId", str))
        if contract is None:
            return _envelope(1, "Contract not found.", contract=None)
        return _envelope(contract=contract.to_gateway())

    async def _retrieve_bars(self, body: dict, _session) -> web.Response:
        contract_id = _require(body, "contractId", str)
        _require(body, "live", bool)
        start_ns, end_ns = _parse_time_field(body, "startTime"), _parse_time_field(body, "endTime")
        unit, unit_number, limit = (_require(body, name, int) for name in ("unit", "unitNumber", "limit"))
        include_partial = _require(body, "includePartialBar", bool)
        if contract_id not in self._source.contracts:
            return _envelope(1, "Contract not found.", bars=None)
        if unit not in range(1, 7):
            return _envelope(2, f"Invalid unit {unit}.", bars=None)
        try:
            tf = Timeframe(unit, unit_number)
        except DomainError as exc:
            return _envelope(3, f"Invalid unit number: {exc}", bars=None)
        if limit < 1:
            return _envelope(4, f"Invalid limit {limit}.", bars=None)
        bars = await asyncio.get_running_loop().run_in_executor(None, lambda: market.history_bars(
            self._source, contract_id, tf, start_ns, end_ns, self._clock_ns,
            limit=min(limit, MAX_BARS_PER_REQUEST), include_partial=include_partial))
        rows = zip(bars["timestamp"], bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"])
        out = [{"t": _iso_bar_time(t), "o": float(o), "h": float(h), "l": float(lo), "c": float(c), "v": int(v)}
               for t, o, h, lo, c, v in rows]
        out.reverse()  # newest first, like the gateway's documented example
        return _envelope(bars=out)

    # ------------------------------------------------------------------ market hub

    async def _hub(self, request: web.Request) -> web.StreamResponse:
        refusing_for = self._refuse_until - time.monotonic()
        if refusing_for > 0:
            return web.Response(status=503, headers={"Retry-After": str(math.ceil(refusing_for))},
                                text="the market hub is refusing connections (simulated outage)")
        token = request.query.get("access_token") or _bearer(request)
        session = self._session_for(token)
        if session is None:
            return _unauthorized()
        # No WebSocket pings (signalrcore reads them as data) and no compression; close quickly.
        ws = web.WebSocketResponse(autoping=False, heartbeat=None, compress=False, timeout=2.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade (negotiation is not served: skip it)")
        await ws.prepare(request)
        client = _HubClient(ws, request.transport, session.user)
        self._clients.add(client)
        log.debug("hub client connected (user %s)", session.user)
        try:
            await self._serve_client(client)
        finally:
            self._clients.discard(client)
            if not ws.closed:
                await self._close_ws(client)
            log.debug("hub client gone (user %s)", session.user)
        return ws

    async def _serve_client(self, client: _HubClient) -> None:
        pending = ""
        while True:
            timeout = self._client_timeout if client.handshaken else min(HANDSHAKE_TIMEOUT_SECONDS, self._client_timeout)
            try:
                msg = await client.ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                reason = "Server timeout elapsed without receiving a message from the client." if client.handshaken \
                    else "Handshake was canceled."
                await self._close_client(client, reason)
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
            *records, pending = pending.split(RS)
            for record in records:
                handled = await (self._on_message(client, record) if client.handshaken else self._handshake(client, record))
                if not handled:
                    return

    async def _handshake(self, client: _HubClient, record: str) -> bool:
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
            await self._send(client, _record({"error": error}))
            return False
        await self._send(client, "{}" + RS)
        client.handshaken = True  # even when a stall swallowed the answer: the server considers it done
        return True

    async def _on_message(self, client: _HubClient, record: str) -> bool:
        try:
            message = json.loads(record)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            await self._close_client(client, "Connection closed with an error. InvalidDataException: invalid hub message.")
            return False
        if kind == 1:
            await self._invoke(client, message)
        elif kind == 7:
            return False
        return True  # pings (6) and anything else only prove the client is alive

    async def _invoke(self, client: _HubClient, message: dict) -> None:
        target, arguments, invocation_id = message.get("target"), message.get("arguments"), message.get("invocationId")
        error = None
        contract_id = None
        if target not in _SUBSCRIPTION_METHODS:
            error = f"Unknown hub method '{target}'"
        elif not (isinstance(arguments, list) and len(arguments) == 1 and isinstance(arguments[0], str)):
            error = f"Failed to invoke '{target}': it takes one argument, the contract id."
        elif arguments[0] not in self._source.contracts:
            error = f"Failed to invoke '{target}': contract '{arguments[0]}' not found."
        else:
            contract_id = arguments[0]
        if invocation_id is not None:
            completion = {"type": 3, "invocationId": invocation_id}
            await self._send(client, _record({**completion, "error": error} if error else completion))
        if error is not None:
            return
        feed, subscribe = _SUBSCRIPTION_METHODS[target]
        subscriptions = getattr(client, feed)
        if not subscribe:
            subscriptions.discard(contract_id)
            return
        subscriptions.add(contract_id)
        if feed == "trades":
            self._waiting_for_subscriber = False
        elif feed == "quotes":
            quote = self._quote(contract_id)
            if quote is not None:
                await self._send(client, quote)
        else:
            reset = {"timestamp": format_timestamp(self._clock_ns, 0), "type": _DOM_RESET, "price": 0.0,
                     "volume": 0, "currentVolume": 0}
            await self._send(client, _event(DEPTH_EVENT, contract_id, [reset]))

    async def _send(self, client: _HubClient, text: str) -> bool:
        if time.monotonic() < self._stall_until or client.ws.closed:
            return False
        try:
            await client.ws.send_str(text)
            return True
        except ConnectionError:
            return False

    async def _broadcast(self, clients: list[_HubClient], records: list[str]) -> list[bool]:
        async def send_all(client: _HubClient) -> bool:
            sent = True
            for text in records:
                sent = await self._send(client, text) and sent
            return sent

        return await asyncio.gather(*(send_all(c) for c in clients))

    async def _close_client(self, client: _HubClient, error: str | None = None, allow_reconnect: bool | None = None) -> None:
        close = {"type": 7}
        if error is not None:
            close["error"] = error
        if allow_reconnect is not None:
            close["allowReconnect"] = allow_reconnect
        await self._send(client, _record(close))
        await self._close_ws(client)

    @staticmethod
    async def _close_ws(client: _HubClient) -> None:
        try:
            await asyncio.wait_for(client.ws.close(), 3.0)
        except (asyncio.TimeoutError, ConnectionError):
            if client.transport is not None:
                client.transport.abort()

    async def _run_pings(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            await self._broadcast([c for c in self._clients if c.handshaken], [_record({"type": 6})])

    # ------------------------------------------------------------------ the clock and the live feed

    async def _run_market(self) -> None:
        last_wall = time.monotonic()
        while True:
            now = time.monotonic()
            elapsed, last_wall = now - last_wall, now
            end_ns = self._source.end_ns
            if self._paused or self._waiting_for_subscriber:
                await asyncio.sleep(TICK_SECONDS)
                continue
            if end_ns is not None and self._clock_ns >= end_ns:
                # The replay is over: keep quoting the end clock so clients can close their last bar.
                if now - self._last_quote_wall >= self._quote_interval:
                    await self._publish_quotes()
                await asyncio.sleep(TICK_SECONDS)
                continue
            if self._speed == MAX_SPEED:
                target = self._source.next_step_ns(self._clock_ns) or end_ns
            else:
                target = self._clock_ns + int(elapsed * self._speed * NS_PER_SECOND)
            if end_ns is not None:
                target = min(target, end_ns)
            await self._advance(target)
            await asyncio.sleep(0 if self._speed == MAX_SPEED else TICK_SECONDS)

    async def _advance(self, target_ns: int) -> None:
        released = {cid: self._source.trades_between(cid, self._clock_ns, target_ns) for cid in self._source.contracts}
        self._clock_ns = target_ns
        for cid, trades in released.items():
            self._stats[cid].add(trades)
            self.trades_published += len(trades)
        await self._inject_malformed()
        for cid, trades in released.items():
            await self._publish_trades(cid, trades)
        finished = self._source.end_ns is not None and target_ns >= self._source.end_ns
        due = self._last_quote_clock_ns is None or target_ns - self._last_quote_clock_ns >= self._quote_interval * NS_PER_SECOND
        if due or finished:
            await self._publish_quotes()

    async def _publish_trades(self, contract_id: str, trades: Trades) -> None:
        subscribers = [c for c in self._clients if contract_id in c.trades]
        if not len(trades) or not subscribers:
            return
        symbol_id = self._source.contracts[contract_id].symbol_id
        objects = [
            {"symbolId": symbol_id, "price": price, "timestamp": format_timestamp(ts, _style_of(ts)), "type": side, "volume": size}
            for ts, price, size, side in zip(trades.ts_ns.tolist(), trades.price.tolist(), trades.size.tolist(), trades.side.tolist())
        ]
        records = [_event(TRADE_EVENT, contract_id, objects[0])]
        if len(objects) > 1:
            records.append(_event(TRADE_EVENT, contract_id, objects[1:]))
        delivered = await self._broadcast(subscribers, records)
        self.trades_sent += len(objects) * sum(delivered)

    def _quote(self, contract_id: str) -> str | None:
        stats = self._stats[contract_id]
        if stats.last is None:
            return None
        contract = self._source.contracts[contract_id]
        change = stats.last - stats.open
        quote = {
            "symbol": contract.symbol_id,
            "symbolName": f"/{contract.root}",
            "lastPrice": stats.last,
            "bestBid": stats.last,
            "bestAsk": round(stats.last + contract.tick_size, 10),
            "change": round(change, 10),
            "changePercent": round(change / stats.open, 6) if stats.open else 0.0,
            "open": stats.open,
            "high": stats.high,
            "low": stats.low,
            "volume": stats.volume,  # the session total: never a trade size
            "lastUpdated": format_timestamp(stats.last_trade_ns, _style_of(stats.last_trade_ns)),
            "timestamp": format_timestamp(self._clock_ns, _style_of(self._clock_ns)),
        }
        return _event(QUOTE_EVENT, contract_id, quote)

    async def _publish_quotes(self) -> None:
        self._last_quote_clock_ns, self._last_quote_wall = self._clock_ns, time.monotonic()
        for cid, contract in self._source.contracts.items():
            quote = self._quote(cid)
            if quote is None:
                continue
            await self._broadcast([c for c in self._clients if cid in c.quotes], [quote])
            depth_subscribers = [c for c in self._clients if cid in c.depth]
            if depth_subscribers:
                stats, stamp = self._stats[cid], format_timestamp(self._clock_ns, 0)
                # a deterministic book size per price keeps the depth feed reproducible
                size = 10 + int(stats.last / contract.tick_size) % 40
                levels = [
                    {"timestamp": stamp, "type": _DOM_BID, "price": stats.last, "volume": size, "currentVolume": size},
                    {"timestamp": stamp, "type": _DOM_ASK, "price": round(stats.last + contract.tick_size, 10),
                     "volume": size + 3, "currentVolume": size + 3},
                ]
                await self._broadcast(depth_subscribers, [_event(DEPTH_EVENT, cid, levels)])

    async def _inject_malformed(self) -> None:
        targets = [c for c in self._clients if c.trades]
        if not self._malformed or not targets:
            return
        kind = self._malformed.popleft()
        for client in targets:
            contract_id = sorted(client.trades)[0]
            await self._send(client, self._malformed_record(kind, contract_id))

    def _malformed_record(self, kind: str, contract_id: str) -> str:
        contract, stats = self._source.contracts[contract_id], self._stats[contract_id]
        price = stats.last if stats.last is not None else 1.0
        trade = {"symbolId": contract.symbol_id, "price": price,
                 "timestamp": format_timestamp(self._clock_ns, 0), "type": 0, "volume": 1}
        if kind == "bad_json":
            return '{"type":1,"target":"' + TRADE_EVENT + '","arguments":["' + contract_id + '",{"price":' + RS
        if kind == "missing_fields":
            trade = {"symbolId": contract.symbol_id, "type": 0}
        elif kind == "nan_price":
            trade["price"] = float("nan")  # serialised as the non-standard NaN literal, as .NET can be made to
        elif kind == "negative_price":
            trade["price"] = -price
        elif kind == "nan_size":
            trade["volume"] = float("nan")
        elif kind == "negative_size":
            trade["volume"] = -3
        elif kind == "unknown_contract":
            return _event(TRADE_EVENT, "CON.F.US.ZZZ.Z99", {**trade, "symbolId": "F.US.ZZZ"})
        elif kind == "bad_timestamp":
            trade["timestamp"] = "2025-13-45T25:61:00Z"
        elif kind == "wrong_types":
            trade.update(price=f"{price}x", volume="three", type="buy", timestamp=12345)
        elif kind == "wrong_arity":
            return _record({"type": 1, "target": TRADE_EVENT, "arguments": [trade]})
        return _event(TRADE_EVENT, contract_id, trade)

    # ------------------------------------------------------------------ fault injection

    async def _control_status(self, _request: web.Request) -> web.Response:
        return web.json_response(self._status())

    def _status(self) -> dict:
        subscriptions = {feed: {} for feed in ("trades", "quotes", "depth")}
        for client in self._clients:
            for feed, counts in subscriptions.items():
                for cid in getattr(client, feed):
                    counts[cid] = counts.get(cid, 0) + 1
        now = time.monotonic()
        return {
            "mode": self.mode,
            "clock": self.clock().isoformat(),
            "speed": self._speed,
            "paused": self._paused,
            "waiting_for_subscriber": self._waiting_for_subscriber,
            "finished": self._source.end_ns is not None and self._clock_ns >= self._source.end_ns,
            "connections": len(self._clients),
            "subscriptions": subscriptions,
            "trades_published": self.trades_published,
            "trades_sent": self.trades_sent,
            "stalled": now < self._stall_until,
            "refusing": now < self._refuse_until,
            "pending_malformed": len(self._malformed),
            "pending_rest_errors": len(self._rest_faults),
            "sessions": len(self._sessions),
            "contracts": sorted(self._source.contracts),
        }

    async def _control(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        handler = getattr(self, f"_fault_{action}", None)
        if handler is None:
            return web.json_response({"ok": False, "error": f"unknown control action {action!r}"}, status=404)
        try:
            params = await self._json_body(request, required=False)
            await handler(**params)
        except _BadRequest as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        except (TypeError, ValueError) as exc:
            return web.json_response({"ok": False, "error": f"bad parameters for {action}: {exc}"}, status=400)
        log.info("control: %s %s", action, params)
        return web.json_response({"ok": True, "status": self._status()})

    async def _fault_drop(self) -> None:
        """Abort every hub TCP connection, without any close frame."""
        for client in list(self._clients):
            if client.transport is not None:
                client.transport.abort()

    async def _fault_close(self) -> None:
        """Send a SignalR close (type 7) that allows a reconnect, then close the WebSocket."""
        await asyncio.gather(*(self._close_client(c, "Server closed the connection.", allow_reconnect=True)
                               for c in list(self._clients)))

    async def _fault_stall(self, seconds: float) -> None:
        """Keep the sockets open but send nothing at all (no pings either) for `seconds`."""
        self._stall_until = time.monotonic() + _seconds(seconds)

    async def _fault_refuse(self, seconds: float) -> None:
        """Answer new hub upgrades with HTTP 503 for `seconds`."""
        self._refuse_until = time.monotonic() + _seconds(seconds)

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
        await asyncio.gather(*(self._close_client(c, "Unauthorized: the access token has expired.")
                               for c in list(self._clients)))

    async def _fault_logout(self) -> None:
        await self._broadcast([c for c in self._clients if c.handshaken],
                              [_record({"type": 1, "target": LOGOUT_EVENT, "arguments": []})])

    async def _fault_rest_errors(self, status: int | None = 500, count: int = 1, retry_after: float | None = 1.0,
                                 delay: float = 0.0) -> None:
        """The next `count` REST calls answer `status` (None: the normal answer) after `delay` seconds."""
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError(f"status {status!r} is not an HTTP error status")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count {count!r} must be a positive integer")
        fault = _RestFault(status, None if retry_after is None else _seconds(retry_after), float(delay))
        if fault.delay < 0:
            raise ValueError(f"delay {delay!r} must not be negative")
        self._rest_faults.extend([fault] * count)

    async def _fault_pause(self) -> None:
        self._paused = True

    async def _fault_resume(self) -> None:
        self._paused = False

    async def _fault_speed(self, speed: float | str) -> None:
        speed = parse_speed(speed)
        if speed == MAX_SPEED and self._source.end_ns is None:
            raise ValueError("speed 'max' needs a replay")
        self._speed = speed


def _seconds(value: object) -> float:
    seconds = float(value)  # type: ignore[arg-type]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid number of seconds {value!r}")
    return seconds
