"""A supervised connection to the gateway's market hub (SignalR JSON over WebSocket, signalrcore 1.0.2).

signalrcore 1.0.2 has traps (docs/projectx-gateway-api.md, "The Python SignalR client"); this
module is designed around each of them:

1. handshake version: the connection uses a JSON hub protocol built with `version=1`;
2. keep-alive pings: automatic reconnect is configured, because only then does signalrcore
   start its pinger, but its reconnect is disabled (see `_Connection.claim_transport`);
3. reconnect: a supervisor thread owns the connection. It rebuilds it, with a fresh token from
   the token provider, whenever it closes, errs, or goes silent for `stale_after` seconds
   (a watchdog fed by every frame, pings included), with capped exponential backoff and jitter
   while the gateway refuses connections;
4. handlers run on the receive thread: they only parse and put onto the output queue;
5. WebSocket-level pings: nothing to do on the client side;
6. a blocking `stop()`: connections are closed by shutting their socket down first, on a
   helper thread joined with a timeout, so stopping is bounded;
7. the token goes into the URL as `access_token` (and is redacted from every log line,
   signalrcore's included);
8. subscriptions are sent from the open callback, after the handshake, on every (re)open.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TypedDict
from urllib.parse import quote

from signalrcore.hub_connection_builder import HubConnectionBuilder
from signalrcore.messages.handshake.response import HandshakeResponseMessage
from signalrcore.protocol.json_hub_protocol import JsonHubProtocol

from projectx_pipeline.domain.contracts import ContractId
from projectx_pipeline.logs import LogThrottle, get_logger, kv

from .config import validate_url
from .events import (
    DEFAULT_LIMITS,
    EventLimits,
    HubEvent,
    decode_hub_record,
    parse_quote_event,
    parse_trade_event,
    preview,
)
from .protocol import (
    LOGOUT_EVENT,
    MARKET_HUB_PATH,
    QUOTE_EVENT,
    RECORD_SEPARATOR,
    SUBSCRIBE_QUOTES,
    SUBSCRIBE_TRADES,
    TRADE_EVENT,
    UNSUBSCRIBE_QUOTES,
    UNSUBSCRIBE_TRADES,
)

log = get_logger("projectx.gateway")

SIGNALRCORE_LOGGER = "SignalRCoreClient"
_HTTP_401_RE = re.compile(r"HTTP/\d(?:\.\d)? 401\b")


def install_signalrcore_redaction() -> None:
    """signalrcore logs its URL (which carries the token) and, at debug level, the token itself:
    its logger gets the platform's redacting filter, like every platform logger."""
    get_logger(SIGNALRCORE_LOGGER)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _market_hub_url(rtc_url: str) -> str:
    url = validate_url("rtc_url", rtc_url)
    return url if url.endswith(MARKET_HUB_PATH) else url + MARKET_HUB_PATH


def _envelope_problem(message) -> str | None:
    """signalrcore dispatches on `target` and `invocation_id` as dict keys and unpacks `arguments`:
    a non-string target or id (unhashable) or non-list arguments raises inside its receive loop
    and ends the connection. Such a record is malformed, not fatal."""
    target = getattr(message, "target", None)
    if target is not None and not isinstance(target, str):
        return f"target={preview(target, 80)}: expected a string"
    invocation_id = getattr(message, "invocation_id", None)
    if invocation_id is not None and not isinstance(invocation_id, str):
        return f"invocationId={preview(invocation_id, 80)}: expected a string"
    arguments = getattr(message, "arguments", None)
    if hasattr(message, "arguments") and not isinstance(arguments, list):
        return f"arguments={preview(arguments, 80)}: expected a list"
    return None


class _SupervisedJsonProtocol(JsonHubProtocol):
    """signalrcore's JSON hub protocol with `version=1` (trap 1), extended as the supervisor's
    window into one connection. The protocol sees every frame, pings included, which is low
    enough for the watchdog and high enough to need no change to signalrcore's transport."""

    def __init__(self, connection: _Connection):
        super().__init__(version=1)
        self._connection = connection

    def handshake_message(self):
        # The receive thread asks for the handshake as its very first action, before it can
        # observe a close: the earliest point where the transport exists and can be claimed.
        self._connection.claim_transport()
        return super().handshake_message()

    def decode_handshake(self, raw_message: str):
        self._connection.saw_frame()
        try:
            response, messages = super().decode_handshake(raw_message)
        except (ValueError, RecursionError) as exc:
            response, messages = HandshakeResponseMessage(f"malformed handshake response ({exc})"), []
        if response.error:
            self._connection.end(f"handshake refused: {preview(response.error, 200)}")
        return response, messages

    def parse_messages(self, raw: str) -> list:
        # Decoding errors must not escape: signalrcore would let them kill its receive thread,
        # and the connection with it. A bad record is reported and skipped.
        self._connection.saw_frame()
        messages = []
        for record in raw.split(RECORD_SEPARATOR):
            if not record:
                continue
            self._connection.hub._count("messages")
            decoded, problem = decode_hub_record(record, self._connection.hub._limits)
            if decoded is not None:
                if not decoded:
                    continue  # '{}': signalrcore skips it too
                try:
                    message = self.get_message(decoded)
                except (TypeError, ValueError, KeyError) as exc:
                    problem = f"not a SignalR message ({exc})"
                else:
                    if message is None:
                        problem = "unsupported SignalR message type"
                    else:
                        problem = _envelope_problem(message)
                        if problem is None:
                            messages.append(message)
            if problem:
                self._connection.hub._malformed(problem, record)
        return messages


class _Connection:
    """One signalrcore connection, from build to close, and what the supervisor knows of it."""

    def __init__(self, hub: MarketHub, number: int, token: str):
        self.hub = hub
        self.number = number
        self.token = token
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.end_reason = ""
        self.token_refused = False
        self.opened_at: float | None = None
        self.last_frame_at = time.monotonic()
        self._end_lock = threading.Lock()
        url = f"{hub.hub_url}?access_token={quote(token, safe='')}"
        self.signalr = (
            HubConnectionBuilder()
            .with_url(url, options={"skip_negotiation": True})
            .with_hub_protocol(_SupervisedJsonProtocol(self))
            # Configured for its keep-alive pinger only: the reconnect is disabled in claim_transport.
            .with_automatic_reconnect({"type": "raw", "keep_alive_interval": hub.keep_alive_interval})
            .build()
        )
        self.signalr.on_open(self._on_open)
        self.signalr.on_close(lambda: self.end("connection closed"))
        self.signalr.on_error(self._on_error)
        self.signalr.on(TRADE_EVENT, self._on_trade)
        self.signalr.on(QUOTE_EVENT, self._on_quote)
        self.signalr.on(LOGOUT_EVENT, self._on_logout)

    # ---------------------------------------------------------------- lifecycle

    def claim_transport(self) -> None:
        """Make the supervisor the only party that reconnects. signalrcore's own reconnect reuses
        the old URL (and token) and dies for good if its first retry fails (trap 3). Its transport
        skips the reconnect when it believes it is being closed deliberately (`manually_closing`),
        while its keep-alive pinger still runs; a closed socket then ends in the on_close callback."""
        transport = self.signalr.transport
        if transport is not None:
            transport.manually_closing = True

    def start(self) -> None:
        """Open the socket and send the upgrade (blocking); the handshake follows on the receive thread."""
        try:
            self.signalr.start()
        except Exception as exc:  # connection refused, TLS failure, HTTP status at the upgrade, ...
            self.token_refused = bool(_HTTP_401_RE.search(str(exc)))
            # An upgrade refused with an HTTP status carries the whole response: its first line says it.
            first_line = (str(exc).splitlines() or [""])[0]
            reason = "token refused (HTTP 401)" if self.token_refused else f"{type(exc).__name__}: {first_line}"
            self.end(f"connect failed: {preview(reason, 200)}")

    def end(self, reason: str) -> None:
        """Record why the connection is over (the first reason wins) and wake the supervisor."""
        with self._end_lock:
            if self.ended.is_set():
                return
            self.end_reason = reason
            self.ended.set()

    def saw_frame(self) -> None:
        self.last_frame_at = time.monotonic()
        self.hub._saw_frame()

    def close(self) -> None:
        """Close the socket and signalrcore's threads. Can block (trap 6): run it on a helper thread."""
        transport = self.signalr.transport
        if transport is None:
            return
        sock = getattr(getattr(transport, "_client", None), "sock", None)
        if sock is not None:
            # Shutting the socket down wakes a receive or send blocked on it; signalrcore's own
            # stop() only closes it, which on Linux leaves a blocked recv() waiting for the server.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # A socket the server dropped leaves signalrcore's pinger running: stop it in every case.
        transport.connection_checker.stop()
        try:
            transport.dispose()
        except Exception as exc:  # a half-built transport (closed while connecting) has no client
            self.hub._log.debug(kv("hub_dispose_failed", connection=self.number, error=f"{type(exc).__name__}: {exc}"))
        if sock is not None:
            sock.close()

    # ---------------------------------------------------------------- callbacks (receive thread)

    def _is_current(self) -> bool:
        return self.hub._current is self and not self.ended.is_set()

    def _on_open(self) -> None:
        if not self._is_current():
            # Superseded while connecting (the supervisor gave up waiting): close it here, and
            # keep signalrcore from starting its pinger on it once this callback returns.
            self.signalr.transport.reconnection_handler = None
            self.close()
            return
        self.opened_at = time.monotonic()
        self.opened.set()
        hub = self.hub
        hub._connected(self)
        try:
            with hub._subscription_lock:  # a set_contracts meanwhile must not be half applied here
                for contract_id in hub.contracts:
                    self.subscribe(contract_id)
        except Exception as exc:  # raising here would kill signalrcore's receive thread
            self.end(f"subscribe failed: {type(exc).__name__}: {exc}")

    def subscribe(self, contract_id: str) -> None:
        self.signalr.invoke(SUBSCRIBE_TRADES, [contract_id])
        if self.hub.subscribe_quotes:
            self.signalr.invoke(SUBSCRIBE_QUOTES, [contract_id])

    def unsubscribe(self, contract_id: str) -> None:
        self.signalr.invoke(UNSUBSCRIBE_TRADES, [contract_id])
        if self.hub.subscribe_quotes:
            self.signalr.invoke(UNSUBSCRIBE_QUOTES, [contract_id])

    def _on_error(self, message: object) -> None:
        # Completion errors (a refused subscription) and binding failures: the connection itself is fine.
        error = getattr(message, "error", message)
        self.hub._count("errors")
        self.hub._log.warning(kv("hub_invocation_error", connection=self.number, error=preview(error, 300)))

    def _on_trade(self, args: object) -> None:
        self._on_market_event(args, parse_trade_event, "trades", "trade")

    def _on_quote(self, args: object) -> None:
        self._on_market_event(args, parse_quote_event, "quotes", "quote")

    def _on_market_event(self, args: object, parse, counter: str, noun: str) -> None:
        """Parse a `[contractId, data]` event with `parse`, deliver what it accepts (counted under
        `counter`) and report what it rejects."""
        if not self._is_current():
            return
        hub = self.hub
        try:
            items, rejected = parse(args, subscribed=hub.contract_set, limits=hub._limits)
            hub._deliver(items, counter)
            for item in rejected:
                hub._malformed(item.reason, item.raw)
        except Exception as exc:  # defensive: an exception here would end the connection
            hub._malformed(f"{noun} handler failed: {type(exc).__name__}: {exc}", preview(args))

    def _on_logout(self, args: object) -> None:
        if not self._is_current():
            return
        self.hub._log.warning(kv("hub_logout", connection=self.number, detail=preview(args, 200)))
        self.hub._emit(HubEvent("logout", _utcnow(), preview(args, 200)))
        self.token_refused = True
        self.end("logged out by the gateway")


class MarketHubOptions(TypedDict, total=False):
    """MarketHub's keyword options other than `token_rejected`, for callers that pass them on."""

    stale_after: float
    backoff_base: float
    backoff_cap: float
    stop_timeout: float
    connect_timeout: float
    keep_alive_interval: float
    subscribe_quotes: bool
    event_limits: EventLimits
    logger: logging.Logger | None


class MarketHub:
    """Trades (and quotes) of `contracts` from the gateway's market hub, onto `out`.

    `out` receives `Trade`, `Quote` and `HubEvent` objects. A 'connected' event is put before
    the first trade of every (re)connection: nothing missed while disconnected is replayed, so
    the consumer repairs the gap from history. `out` should be unbounded: when a bounded queue
    is full, items are dropped and counted under `dropped`.

    `token_provider` is called for every connection attempt. `token_rejected`, when given, is
    called with a token the gateway refused at the upgrade (HTTP 401) or whose session it ended
    (GatewayLogout), so that the provider logs in again: `GatewayClient.market_hub` wires both."""

    def __init__(
        self,
        rtc_url: str,
        token_provider: Callable[[], str],
        contracts: Iterable[str],
        out: queue.Queue,
        *,
        stale_after: float = 30.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        stop_timeout: float = 5.0,
        connect_timeout: float = 15.0,
        keep_alive_interval: float = 10.0,
        subscribe_quotes: bool = True,
        token_rejected: Callable[[str], None] | None = None,
        event_limits: EventLimits = DEFAULT_LIMITS,
        logger: logging.Logger | None = None,
    ):
        self.hub_url = _market_hub_url(rtc_url)
        self.contracts = tuple(dict.fromkeys(ContractId(c) for c in contracts))
        if not self.contracts:
            raise ValueError("MarketHub needs at least one contract id")
        self.contract_set = frozenset(self.contracts)
        self.subscribe_quotes = subscribe_quotes
        # The gateway drops a client that has been silent for 30 s: ping well inside that.
        self.keep_alive_interval = keep_alive_interval
        self._token_provider = token_provider
        self._token_rejected = token_rejected
        self._out = out
        self._stale_after = stale_after
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._stop_timeout = stop_timeout
        self._connect_timeout = connect_timeout
        self._limits = event_limits
        self._log = logger or log
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: _Connection | None = None
        self._stats_lock = threading.Lock()
        self._subscription_lock = threading.Lock()  # the contract set and its (un)subscriptions
        self._stats: dict = {
            "messages": 0,
            "trades": 0,
            "quotes": 0,
            "malformed": 0,
            "reconnects": 0,
            "connects": 0,
            "dropped": 0,
            "errors": 0,
            "last_message_at": None,
            "state": "idle",
        }
        self._malformed_log = LogThrottle()
        self._dropped_log = LogThrottle()
        install_signalrcore_redaction()

    def __repr__(self) -> str:
        return f"MarketHub({self.hub_url!r}, contracts={list(self.contracts)!r}, state={self._stats['state']!r})"

    # ---------------------------------------------------------------- public API

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("MarketHub.start() was already called; create a new MarketHub to restart")
        self._thread = threading.Thread(target=self._supervise, name="projectx-market-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the feed; returns within about `stop_timeout` + 1 s whatever the gateway does."""
        self._stopping.set()
        current = self._current
        if current is not None:
            current.end("stopping")
        if self._thread is not None:
            self._thread.join(self._stop_timeout + 1.0)
            if self._thread.is_alive():
                self._log.warning(kv("hub_stop_timed_out", seconds=self._stop_timeout + 1.0))
        self._set_state("stopped")

    def reconnect(self, reason: str) -> None:
        """End the current connection now (the supervisor opens a new one, which subscribes
        afresh): for a feed that still pings but has stopped sending trades."""
        current = self._current
        if current is not None and not self._stopping.is_set():
            self._log.warning(kv("hub_reconnect_requested", connection=current.number, reason=reason))
            current.end(reason)

    def set_contracts(self, contracts: Iterable[str]) -> None:
        """Follow `contracts` from now on (a roll: the next month added, the old one dropped)
        without a reconnect: the open connection subscribes the added ones and unsubscribes the
        dropped ones; every later connection subscribes the new set. Trades of a dropped
        contract still in flight are discarded by the parser (no longer subscribed)."""
        wanted = tuple(dict.fromkeys(ContractId(c) for c in contracts))
        if not wanted:
            raise ValueError("MarketHub needs at least one contract id")
        with self._subscription_lock:
            added = [c for c in wanted if c not in self.contract_set]
            dropped = [c for c in self.contracts if c not in wanted]
            self.contracts, self.contract_set = wanted, frozenset(wanted)
            current = self._current
            if current is None or not current.opened.is_set() or current.ended.is_set():
                return  # the next connection subscribes the new set on open
            try:
                for contract_id in added:
                    current.subscribe(contract_id)
                for contract_id in dropped:
                    current.unsubscribe(contract_id)
            except Exception as exc:  # a broken socket: the supervisor reconnects and subscribes all
                current.end(f"subscribe failed: {type(exc).__name__}: {exc}")
        self._log.info(kv("hub_contracts_changed", added=",".join(added) or "none", dropped=",".join(dropped) or "none"))

    @property
    def stats(self) -> dict:
        """A snapshot of the counters: messages (hub messages, pings included), trades, quotes,
        malformed, connects, reconnects, dropped, errors, last_message_at (UTC), state."""
        with self._stats_lock:
            snapshot = dict(self._stats)
        if snapshot["last_message_at"] is not None:
            snapshot["last_message_at"] = datetime.fromtimestamp(snapshot["last_message_at"], timezone.utc)
        return snapshot

    # ---------------------------------------------------------------- supervisor

    def _supervise(self) -> None:
        failures = 0
        number = 0
        while not self._stopping.is_set():
            number += 1
            self._set_state("connecting")
            connection = self._connect(number)
            if connection is not None and connection.opened.is_set():
                reason = self._watch(connection)
                lived = time.monotonic() - (connection.opened_at or time.monotonic())
                self._teardown(connection, reason)
                # A connection that stayed up resets the backoff; one that keeps dying young
                # (or was logged out, which can be another login fighting for the session) does not.
                healthy = lived >= self._stale_after and not connection.token_refused
                failures = 0 if healthy else failures + 1
            else:
                if connection is not None:
                    self._teardown(connection, connection.end_reason or "not opened")
                failures += 1
            if self._stopping.is_set():
                break
            delay = random.uniform(0.0, min(self._backoff_cap, self._backoff_base * 2 ** max(failures - 1, 0)))
            self._set_state("backoff")
            self._log.info(kv("hub_reconnect_scheduled", delay=f"{delay:.2f}", failures=failures))
            self._stopping.wait(delay)
        self._set_state("stopped")

    def _connect(self, number: int) -> _Connection | None:
        """Build and start connection `number`; wait for its handshake, a failure, stop or the timeout."""
        try:
            token = self._token_provider()
        except Exception as exc:  # the provider's own errors (REST down, bad credentials) are retried
            self._log.warning(kv("hub_token_unavailable", error=f"{type(exc).__name__}: {exc}"))
            return None
        if self._stopping.is_set():
            return None
        connection = _Connection(self, number, token)
        self._current = connection
        self._log.info(kv("hub_connecting", connection=number, url=self.hub_url))
        # signalrcore connects with no timeout; the start runs aside so that the wait is bounded.
        threading.Thread(target=connection.start, name=f"projectx-hub-connect-{number}", daemon=True).start()
        deadline = time.monotonic() + self._connect_timeout
        while not connection.opened.is_set() and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                connection.end(f"no handshake within {self._connect_timeout} s")
                break
            if connection.ended.wait(min(remaining, 0.1)):
                break
        if not connection.opened.is_set() and not self._stopping.is_set():
            self._log.warning(kv("hub_connect_failed", connection=number, reason=connection.end_reason))
        return connection

    def _watch(self, connection: _Connection) -> str:
        """Wait until the connection ends, goes stale, or the hub stops; return why."""
        poll = min(0.5, self._stale_after / 4)
        while not self._stopping.is_set():
            if connection.ended.wait(poll):
                return connection.end_reason
            idle = time.monotonic() - connection.last_frame_at
            if idle > self._stale_after:
                self._log.warning(kv("hub_stale", connection=connection.number, silent_seconds=f"{idle:.1f}"))
                return f"stale: no message for {idle:.1f} s"
        return "stopping"

    def _teardown(self, connection: _Connection, reason: str) -> None:
        if self._current is connection:
            self._current = None
        connection.end(reason)
        closer = threading.Thread(target=connection.close, name=f"projectx-hub-close-{connection.number}", daemon=True)
        closer.start()
        closer.join(self._stop_timeout)
        if closer.is_alive():
            self._log.warning(kv("hub_close_timed_out", connection=connection.number, seconds=self._stop_timeout))
        if connection.token_refused and self._token_rejected is not None:
            try:
                self._token_rejected(connection.token)
            except Exception as exc:
                self._log.warning(kv("hub_token_rejected_callback_failed", error=f"{type(exc).__name__}: {exc}"))
        if connection.opened.is_set():
            level = logging.INFO if self._stopping.is_set() else logging.WARNING
            self._log.log(level, kv("hub_disconnected", connection=connection.number, reason=reason))
            self._emit(HubEvent("disconnected", _utcnow(), reason))

    # ---------------------------------------------------------------- shared state

    def _set_state(self, state: str) -> None:
        with self._stats_lock:
            self._stats["state"] = state

    def _count(self, counter: str, amount: int = 1) -> None:
        with self._stats_lock:
            self._stats[counter] += amount

    def _saw_frame(self) -> None:
        with self._stats_lock:
            self._stats["last_message_at"] = time.time()

    def _connected(self, connection: _Connection) -> None:
        with self._stats_lock:
            self._stats["connects"] += 1
            if self._stats["connects"] > 1:
                self._stats["reconnects"] += 1
            self._stats["state"] = "connected"
        self._log.info(kv("hub_connected", connection=connection.number, contracts=",".join(self.contracts)))
        self._emit(HubEvent("connected", _utcnow(), f"connection {connection.number}"))

    def _emit(self, item: object) -> bool:
        try:
            self._out.put_nowait(item)
            return True
        except queue.Full:
            self._count("dropped")
            admitted, suppressed = self._dropped_log.admit()
            if admitted:
                self._log.warning(kv("hub_queue_full", dropped=type(item).__name__, suppressed=suppressed))
            return False

    def _deliver(self, items: list, counter: str) -> None:
        delivered = sum(1 for item in items if self._emit(item))
        if delivered:
            self._count(counter, delivered)

    def _malformed(self, reason: str, raw: str) -> None:
        self._count("malformed")
        admitted, suppressed = self._malformed_log.admit()
        if admitted:
            self._log.warning(kv("hub_malformed", reason=reason, raw=preview(raw), suppressed=suppressed))
        self._emit(HubEvent("malformed", _utcnow(), f"{reason}: {preview(raw)}"))
