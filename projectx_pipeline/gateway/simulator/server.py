"""A local ProjectX Gateway: REST API, SignalR market and user hubs and a fault-injection endpoint on one port.

Faithful to the protocol in `docs/projectx-gateway-api.md`. This module assembles the parts and
runs them on one event loop in a background thread:

* `rest.py` — the REST endpoints (login, contracts, bar history) and their rate limits;
* `hub_protocol.py` — the SignalR hubs `/hubs/market` and `/hubs/user` (negotiation, handshake,
  records, subscriptions, pings), both on one shared hub machinery;
* `clock.py` — the market clock (the replay position and its speed);
* `publisher.py` — the live feed: trades, quotes and depth released by the clock;
* `faults.py` — the `/control` fault-injection endpoint;
* `auth.py` — tokens and sessions; `market.py` — the market contract and bar history, with
  `contracts.py`, `replay.py`, `synthetic.py` and `listing_source.py` (the catalogue and the
  three market sources; `listings.py` holds the rules of the listed months).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
from aiohttp import web

from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import ExchangeDays
from projectx_pipeline.domain.timeframes import Timeframe, parse_timeframe
from projectx_pipeline.domain.timestamps import from_ns, to_ns

from ...logs import get_logger, kv
from . import market
from .auth import SessionStore
from .clock import MAX_SPEED, MarketClock, parse_speed
from .contracts import Contract
from .faults import FaultInjector
from .hub_protocol import NEGOTIATE_TIMEOUT_SECONDS, SEND_TIMEOUT_SECONDS, HubTimings, MarketHubEndpoint, UserHubEndpoint
from .listing_source import ListingSource
from .market import MarketSource
from .publisher import MarketPublisher
from .replay import ReplaySource, default_replay_path
from .rest import EXPIRED_HISTORY_ALL, RestApi, check_expired_history
from .synthetic import SyntheticSource

log = get_logger("projectx.simulator")

_FAR_FUTURE_NS = 2**62


class SimulatorServer:
    """The ProjectX Gateway simulator, served from a background thread with its own event loop.

    Market data comes from exactly one source: `replay` (a bar CSV; by default the MES 5m sample),
    `synthetic` (contract ids) or `symbols` (equity-index roots such as "MES": the listing mode,
    each root's quarterly months around the clock's start, `listing_source.py`). The clock is the
    replay position: it advances at `speed` × real time (or, with "max", as fast as the slowest
    subscribed client reads), history never holds a trade at or after it, and trades released
    before a client subscribed are lost to that client.
    `quote_interval` is the quote throttle in seconds of market time (at most one quote per
    bucket of that length, see `publisher.py`) and, once a replay is over, the wall-clock
    interval of the quotes of the end clock.

    `start_time` is where the clock starts. For the synthetic market and a listing: any aware
    datetime (default now); a listing is relative to it. For a replay: a point of the replay in
    its own times, "+<N>d"/"+<N>h" after its first bar, or "end" (default: the first bar);
    history serves everything before it.
    `shift_to_now` moves the replay by whole weeks (New York time) so that its clock starts at the
    present, `start_time` then lying less than a week before it: clients asking for "the last N
    days" get bars, as from the live gateway (`replay_time.py`).

    `expired_history` ("all" or "hourly", listing mode only) says what history an expired month
    serves: "hourly" answers seconds and minutes with no bars, as the real gateway is reported to
    (`rest.py`). `stock_market_open` is the calendar of the expiries (default the NYSE's,
    `CalendarDays()`).

    Two parameters go beyond the gateway's own behaviour, for tests and demos: `client_timeout`
    (seconds of client silence before a hub closes the connection; ASP.NET's default is 30) and
    `negotiate_timeout` (seconds a negotiated connection id waits for its WebSocket; ASP.NET's
    disconnect timeout, 15 by default) and `send_timeout` (seconds a send may wait for a client
    that reads nothing before that client is dropped as a slow consumer; `hub_protocol.py`)."""

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
        negotiate_timeout: float = NEGOTIATE_TIMEOUT_SECONDS,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        start_time: datetime | str | None = None,
        shift_to_now: bool = False,
        symbols: list[str] | None = None,
        expired_history: str = EXPIRED_HISTORY_ALL,
        stock_market_open: ExchangeDays | None = None,
    ):
        sources = [name for name, given in (("replay", replay is not None), ("synthetic", bool(synthetic)), ("symbols", bool(symbols))) if given]
        if len(sources) > 1:
            raise ValueError(f"choose one market source, not {' and '.join(sources)}: a replay file, synthetic contracts or listed symbols")
        if symbols is not None and not symbols:
            raise ValueError("symbols is empty: expected at least one equity-index root, such as MES")
        check_expired_history(expired_history)
        if expired_history != EXPIRED_HISTORY_ALL and not symbols:
            raise ValueError(f"expired_history {expired_history!r} needs listed symbols: replay and synthetic contracts never expire")
        for name, value in (
            ("ping_interval", ping_interval),
            ("quote_interval", quote_interval),
            ("client_timeout", client_timeout),
            ("negotiate_timeout", negotiate_timeout),
            ("send_timeout", send_timeout),
            ("token_ttl_seconds", token_ttl_seconds),
        ):
            if not value > 0:
                raise ValueError(f"invalid {name} {value!r}: expected a positive number of seconds")
        speed = parse_speed(speed)
        self._source: MarketSource
        self.weeks_shifted = 0  # how many weeks later than recorded a replay plays (shift_to_now)
        if synthetic or symbols:
            if speed == MAX_SPEED:
                raise ValueError("speed 'max' needs a replay: the synthetic market runs on a real-time clock")
            if shift_to_now:
                raise ValueError("shift_to_now moves a replay: the synthetic market already starts now unless start_time says otherwise")
            if isinstance(start_time, str):
                raise ValueError(f"invalid start_time {start_time!r} for the synthetic market: expected an aware datetime")
            start_ns = to_ns(start_time) if start_time is not None else time.time_ns() // 1_000_000 * 1_000_000
            if symbols:
                calendar = stock_market_open if stock_market_open is not None else CalendarDays()
                self._source = ListingSource(list(symbols), seed, start_ns, calendar)
                self.mode = "listing"
            else:
                self._source = SyntheticSource(list(synthetic or []), seed, start_ns)
                self.mode = "synthetic"
        else:
            replay_source = ReplaySource(
                replay if replay is not None else default_replay_path(),
                seed,
                start=start_time,
                shift_to_ns=time.time_ns() if shift_to_now else None,
            )
            self._source, self.weeks_shifted = replay_source, replay_source.weeks_shifted
            self.mode = "replay"
        self.host, self._requested_port = host, port

        self._clock = MarketClock(self._source, speed, wait_for_subscriber)
        self._sessions = SessionStore(token_ttl_seconds)
        self._rest = RestApi(self._source, self._clock, self._sessions, username, api_key, rate_limits, expired_history)
        self.expired_history = expired_history
        # The hub hands new subscriptions to the publisher, which needs the hub to send: bound late.
        timings = HubTimings(ping_interval, client_timeout, negotiate_timeout, send_timeout)
        self._hub = MarketHubEndpoint(self._sessions, self._source.contracts, self._on_subscribed, timings)
        self._user_hub = UserHubEndpoint(self._sessions, timings)
        self._publisher = MarketPublisher(self._source, self._clock, self._hub, quote_interval)
        self._faults = FaultInjector(
            (self._hub, self._user_hub), self._clock, self._sessions, self._rest.pending_faults, self._publisher.pending_malformed, self._status
        )

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

    @property
    def trades_published(self) -> int:
        """Trades released by the clock, whether or not anyone was subscribed."""
        return self._publisher.trades_published

    @property
    def trades_sent(self) -> int:
        return self._publisher.trades_sent

    def clock(self) -> datetime:
        """The replay position: every trade before it has been released, none after."""
        return from_ns(self._clock.now_ns)

    def history_bars(self, contract_id: str, timeframe: str | Timeframe, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """Every bar up to the clock (the one in progress included), labelled in [start, end), oldest first."""
        return market.history_bars(
            self._source,
            contract_id,
            parse_timeframe(timeframe),
            to_ns(start) if start is not None else 0,  # the epoch: even a month bar labelled before the first trade
            to_ns(end) if end is not None else _FAR_FUTURE_NS,
            self._clock.now_ns,
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
                log.exception(kv("simulator_failed", error=f"{type(exc).__name__}: {exc}"))
            else:  # start() re-raises it in the caller's thread
                self._startup_error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.add_routes(
            [
                *self._rest.routes(),
                *self._hub.routes(),
                *self._user_hub.routes(),
                web.get("/control/status", self._faults.handle_status),
                web.post("/control/{action}", self._faults.handle),
            ]
        )
        # No access log: hub URLs carry the token in their query string.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
            self.port = runner.addresses[0][1]
            tasks = [
                asyncio.create_task(self._clock.run(self._publisher.advance, self._publisher.finished_tick)),
                asyncio.create_task(self._hub.run_pings()),
                asyncio.create_task(self._user_hub.run_pings()),
            ]
            log.info(kv("simulator_listening", mode=self.mode, url=self._base_url()))
            self._ready.set()
            await self._stopping.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._hub.abort_all()
            self._user_hub.abort_all()
        finally:
            await runner.cleanup()

    async def _on_subscribed(self, client, feed: str, contract_id: str) -> None:
        await self._publisher.on_subscribed(client, feed, contract_id)

    def _status(self) -> dict:
        now = time.monotonic()
        return {
            "mode": self.mode,
            "clock": self.clock().isoformat(),
            "weeks_shifted": self.weeks_shifted,
            "speed": self._clock.speed,
            "paused": self._clock.paused,
            "waiting_for_subscriber": self._clock.waiting_for_subscriber,
            "finished": self._clock.finished,
            "clock_errors": self._clock.errors,
            "connections": len(self._hub.clients),
            "slow_consumers_dropped": self._hub.slow_consumers_dropped + self._user_hub.slow_consumers_dropped,
            "subscriptions": self._hub.subscription_counts(),
            "user_hub": {"connections": len(self._user_hub.clients), "subscriptions": self._user_hub.subscription_counts()},
            "trades_published": self._publisher.trades_published,
            "trades_sent": self._publisher.trades_sent,
            "stalled": now < self._hub.stall_until,
            "refusing": now < self._hub.refuse_until,
            "pending_malformed": len(self._publisher.pending_malformed),
            "pending_rest_errors": len(self._rest.pending_faults),
            "sessions": len(self._sessions),
            "contracts": sorted(self._source.contracts),
            "expired_history": self.expired_history,
            "listed_contracts": self.listed_contracts(),
        }

    def listed_contracts(self) -> list[dict]:
        """Every contract of the market at the clock: id, name, its expiry (None: it never expires),
        whether it is active and whether it is its symbol's front month (None outside a listing)."""
        now_ns = self._clock.now_ns
        fronts = self._source.front_contract_ids(now_ns) if isinstance(self._source, ListingSource) else None
        return [
            {
                "id": c.id,
                "name": c.name,
                "expiry": from_ns(c.expires_ns).isoformat() if c.expires_ns is not None else None,
                "active": c.active_at(now_ns),
                "front": (c.id in fronts) if fronts is not None else None,
            }
            for c in self._source.contracts.values()
        ]
