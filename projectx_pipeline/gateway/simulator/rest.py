"""The simulator's REST API: login, token renewal and logout, contracts, accounts, bar history and ping.

Choices where the real gateway is unconfirmed, made explicit here:

* `retrieveBars` serves the bars whose start (label) lies in [startTime, endTime), newest first;
  `limit` keeps the most recent ones, capped at 20,000. Bars are built from the trades released
  before the clock only; `includePartialBar: false` drops the bar whose window holds the clock.
* Rate limits are sliding windows per user (per client address for `loginKey`); a 429 carries a
  `Retry-After` header in whole seconds.
* A missing, unknown or expired token gets HTTP 401 with an empty body; a malformed body or a
  missing field HTTP 400 with an ASP.NET-style problem document.
* A contract is active until the clock reaches its expiry instant, decided at each request
  (contracts of the replay and of `--synthetic` never expire). `Contract/search` and
  `Contract/available` list active contracts only; `Contract/searchById` resolves expired ones too.
* `expired_history` "hourly": an expired contract's history in seconds or minutes is an empty
  success, as the real gateway's users report it; hours, days, weeks and months are served.
  "all" (the default) serves every unit.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections import deque
from datetime import datetime, timezone

import pandas as pd
from aiohttp import web

from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.timeframes import UNIT_MINUTE, UNIT_SECOND, Timeframe
from projectx_pipeline.domain.timestamps import to_ns

from ..protocol import (
    ACCOUNT_SEARCH_ENDPOINT,
    API_ROOT,
    AVAILABLE_CONTRACTS_ENDPOINT,
    DEFAULT_BUDGET,
    HISTORY_BUDGET,
    HISTORY_ENDPOINT,
    ISO_SECONDS_FORMAT,
    LOGIN_ENDPOINT,
    LOGOUT_ENDPOINT,
    MAX_BARS_PER_REQUEST,
    PING_ENDPOINT,
    SEARCH_BY_ID_ENDPOINT,
    SEARCH_ENDPOINT,
    VALIDATE_ENDPOINT,
)
from . import market
from .accounts import SIMULATED_ACCOUNTS
from .auth import Session, SessionStore, bearer_token, unauthorized
from .clock import MarketClock
from .contracts import Contract
from .market import MarketSource

EXPIRED_HISTORY_ALL, EXPIRED_HISTORY_HOURLY = "all", "hourly"
EXPIRED_HISTORY_CHOICES = (EXPIRED_HISTORY_ALL, EXPIRED_HISTORY_HOURLY)
# What an expired contract's history no longer serves under "hourly"
_INTRADAY_UNITS = (UNIT_SECOND, UNIT_MINUTE)


def check_expired_history(value: object) -> str:
    if value not in EXPIRED_HISTORY_CHOICES:
        raise ValueError(f"invalid expired_history {value!r}: expected one of {', '.join(EXPIRED_HISTORY_CHOICES)}")
    return str(value)


class SlidingWindowLimiter:
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


class BadRequest(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field_name = field_name


def _problem(field_name: str, message: str) -> web.Response:
    body = {
        "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "errors": {field_name: [message]},
    }
    return web.json_response(body, status=400, content_type="application/problem+json")


def _envelope(error_code: int = 0, error_message: str | None = None, **payload) -> web.Response:
    return web.json_response({**payload, "success": error_code == 0, "errorCode": error_code, "errorMessage": error_message})


def _require(body: dict, name: str, kind: type):
    value = body.get(name)
    # JSON true/false must not pass for a number, although Python's bool is an int
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(name, f"The {name} field is required and must be of type {kind.__name__}.")
    return value


def _parse_time_field(body: dict, name: str) -> int:
    text = _require(body, name, str)
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(name, f"The value '{text}' is not a valid date-time.") from None
    # The wire's rule, not the domain's: a gateway timestamp without an offset is UTC.
    return to_ns(ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc))


def _iso_bar_time(ts: pd.Timestamp) -> str:
    return ts.strftime(ISO_SECONDS_FORMAT + "+00:00")


async def read_json_body(request: web.Request, required: bool) -> dict:
    """The request's JSON object body ({} when empty and not `required`), or BadRequest."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadRequest("body", "A non-empty request body is required.")
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "The request body must be a JSON object.")
    return body


class RestApi:
    """The REST endpoints under `/api`. `pending_faults` holds the RestFaults (see `faults.py`)
    the next calls answer with, one per call, before anything else is checked."""

    def __init__(
        self,
        source: MarketSource,
        clock: MarketClock,
        sessions: SessionStore,
        username: str | None,
        api_key: str | None,
        rate_limits: bool,
        expired_history: str = EXPIRED_HISTORY_ALL,
    ):
        self._source = source
        self._clock = clock
        self._expired_history = check_expired_history(expired_history)
        self._sessions = sessions
        self._username, self._api_key = username, api_key
        self._limiter = SlidingWindowLimiter({"history": HISTORY_BUDGET, "other": DEFAULT_BUDGET}) if rate_limits else None
        self.pending_faults: deque = deque()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{API_ROOT}/{LOGIN_ENDPOINT}", self._endpoint(self._login_key, bucket="other", authenticated=False)),
            web.post(f"{API_ROOT}/{VALIDATE_ENDPOINT}", self._endpoint(self._validate, bucket="other", body_required=False)),
            web.post(f"{API_ROOT}/{SEARCH_ENDPOINT}", self._endpoint(self._contract_search, bucket="other")),
            web.post(f"{API_ROOT}/{SEARCH_BY_ID_ENDPOINT}", self._endpoint(self._contract_by_id, bucket="other")),
            web.post(f"{API_ROOT}/{HISTORY_ENDPOINT}", self._endpoint(self._retrieve_bars, bucket="history")),
            web.post(f"{API_ROOT}/{LOGOUT_ENDPOINT}", self._endpoint(self._logout, bucket="other", body_required=False)),
            web.post(f"{API_ROOT}/{AVAILABLE_CONTRACTS_ENDPOINT}", self._endpoint(self._available_contracts, bucket="other")),
            web.post(f"{API_ROOT}/{ACCOUNT_SEARCH_ENDPOINT}", self._endpoint(self._account_search, bucket="other")),
            # The one GET, and the one call that needs no token: a liveness probe.
            web.get(f"{API_ROOT}/{PING_ENDPOINT}", self._endpoint(self._ping, bucket="other", authenticated=False, body_required=False)),
        ]

    def _endpoint(self, handler, *, bucket: str, authenticated: bool = True, body_required: bool = True):
        async def endpoint(request: web.Request) -> web.StreamResponse:
            if self.pending_faults:
                fault = self.pending_faults.popleft()
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    headers = {"Retry-After": str(math.ceil(fault.retry_after))} if fault.retry_after is not None else {}
                    return web.Response(status=fault.status, headers=headers, text=f"simulated HTTP {fault.status}")
            session = None
            if authenticated:
                session = self._sessions.session_for(bearer_token(request))
                if session is None:
                    return unauthorized()
            if self._limiter is not None:
                retry_after = self._limiter.acquire(session.user if session else str(request.remote), bucket)
                if retry_after is not None:
                    return web.Response(status=429, headers={"Retry-After": str(retry_after)})
            try:
                body = await read_json_body(request, body_required)
                return await handler(body, session)
            except BadRequest as exc:
                return _problem(exc.field_name, str(exc))

        return endpoint

    async def _login_key(self, body: dict, _session) -> web.Response:
        user, api_key = _require(body, "userName", str), _require(body, "apiKey", str)
        if not user or not api_key:
            return _envelope(3, "Invalid credentials.", token=None)
        if self._username is not None and user != self._username:
            return _envelope(1, "User not found.", token=None)
        if self._api_key is not None and not secrets.compare_digest(api_key, self._api_key):
            return _envelope(3, "Invalid credentials.", token=None)
        return _envelope(token=self._sessions.issue(user))

    async def _validate(self, _body: dict, session: Session) -> web.Response:
        return _envelope(newToken=self._sessions.issue(session.user))

    async def _logout(self, _body: dict, session: Session) -> web.Response:
        self._sessions.revoke(session.token)
        return _envelope()

    async def _ping(self, _body: dict, _session) -> web.Response:
        return web.json_response("pong")

    async def _account_search(self, body: dict, _session) -> web.Response:
        only_active = _require(body, "onlyActiveAccounts", bool)
        return _envelope(accounts=[a.to_gateway() for a in SIMULATED_ACCOUNTS if a.active or not only_active])

    def _active_contracts(self) -> list[Contract]:
        """The contracts not expired at the clock, now (the clock moves between two requests)."""
        now_ns = self._clock.now_ns
        return [c for c in self._source.contracts.values() if c.active_at(now_ns)]

    async def _available_contracts(self, body: dict, _session) -> web.Response:
        _require(body, "live", bool)
        return _envelope(contracts=[c.to_gateway(active=True) for c in self._active_contracts()])

    async def _contract_search(self, body: dict, _session) -> web.Response:
        text = _require(body, "searchText", str).strip().lower()
        if "live" in body and not isinstance(body["live"], bool):
            raise BadRequest("live", "The live field must be a boolean.")
        found = [
            c.to_gateway(active=True)
            for c in self._active_contracts()
            if not text or any(text in s.lower() for s in (c.id, c.name, c.description, c.symbol_id))
        ]
        return _envelope(contracts=found[:20])

    async def _contract_by_id(self, body: dict, _session) -> web.Response:
        contract = self._source.contracts.get(_require(body, "contractId", str))
        if contract is None:
            return _envelope(1, "Contract not found.", contract=None)
        return _envelope(contract=contract.to_gateway(active=contract.active_at(self._clock.now_ns)))

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
        if (
            self._expired_history == EXPIRED_HISTORY_HOURLY
            and unit in _INTRADAY_UNITS
            and not self._source.contracts[contract_id].active_at(self._clock.now_ns)
        ):
            return _envelope(bars=[])
        bars = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: market.history_bars(
                self._source,
                contract_id,
                tf,
                start_ns,
                end_ns,
                self._clock.now_ns,
                limit=min(limit, MAX_BARS_PER_REQUEST),
                include_partial=include_partial,
            ),
        )
        rows = zip(bars["timestamp"], bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"])
        out = [{"t": _iso_bar_time(t), "o": float(o), "h": float(h), "l": float(lo), "c": float(c), "v": int(v)} for t, o, h, lo, c, v in rows]
        out.reverse()  # newest first, like the gateway's documented example
        return _envelope(bars=out)
