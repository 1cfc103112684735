"""REST client of the ProjectX gateway: login and token upkeep, pacing, retries, contracts, bars."""

from __future__ import annotations

import base64
import binascii
import json
import math
import queue
import random
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import pandas as pd
import requests

from projectx_pipeline.domain.contracts import ContractId
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import empty_bars, normalize_bars
from projectx_pipeline.domain.timeframes import Timeframe
from projectx_pipeline.domain.timestamps import utc
from projectx_pipeline.logs import get_logger, kv

from .config import GatewayConfig
from .errors import (
    GatewayError,
    GatewayHTTPError,
    GatewayResponseError,
    GatewayRetriesExhausted,
    meaning_of,
)
from .protocol import (
    API_ROOT,
    AVAILABLE_CONTRACTS_ENDPOINT,
    HISTORY_ENDPOINT,
    ISO_SECONDS_FORMAT,
    LOGIN_ENDPOINT,
    MAX_BARS_PER_REQUEST,
    SEARCH_BY_ID_ENDPOINT,
    SEARCH_ENDPOINT,
    VALIDATE_ENDPOINT,
)
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from typing import Unpack

    from .hub import MarketHub, MarketHubOptions

log = get_logger("projectx.gateway")

# Tokens are renewed this long before their `exp` at most; short-lived tokens are renewed
# when a fifth of their life is left, so that a refresh never races the expiry.
TOKEN_REFRESH_MARGIN = 300.0
TOKEN_REFRESH_FRACTION = 0.2
# When a token carries no readable `exp`, assume the documented 24-hour life; a 401 still
# triggers a re-login if the guess is wrong.
ASSUMED_TOKEN_LIFETIME = 24 * 3600.0
# A Retry-After header is honoured, but a broken one must not stall the client for hours.
RETRY_AFTER_CEILING = 300.0
_RETRYABLE_EXCEPTIONS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim (epoch seconds) of a JWT, read without verifying the signature; None if unreadable."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if not (type(exp) is int or type(exp) is float) or not math.isfinite(exp):
        return None
    return float(exp)


def retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header (delta-seconds or HTTP date) in seconds from now, or None."""
    if not header:
        return None
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(header) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CEILING)


def _aware_utc(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise DomainError(f"{name}={value!r}: expected a timezone-aware datetime")
    return utc(value, name)


def _iso_utc(ts: datetime) -> str:
    text = ts.strftime(ISO_SECONDS_FORMAT)
    return f"{text}.{ts.microsecond:06d}Z" if ts.microsecond else f"{text}Z"


class GatewayClient:
    """The gateway's REST API. Thread-safe: one client (one token, one rate limiter) can serve
    every thread of a process.

    `rate_limits`: True paces requests to the gateway's budgets, False disables pacing (for
    benchmarks against the simulator), or pass a `RateLimiter` to share one between clients."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        session: requests.Session | None = None,
        rate_limits: bool | RateLimiter = True,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        timeout: float = 30.0,
    ):
        self.config = config
        self._session = session if session is not None else requests.Session()
        self._owns_session = session is None
        if isinstance(rate_limits, RateLimiter):
            self._limiter: RateLimiter | None = rate_limits
        else:
            self._limiter = RateLimiter() if rate_limits else None
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._timeout = timeout
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_refresh_at = 0.0

    def __repr__(self) -> str:
        return f"GatewayClient({self.config!r})"

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- tokens

    def token(self) -> str:
        """A token the gateway accepts: logs in on first use, renews with Auth/validate shortly
        before the token's `exp`, logs in again when that fails. The market hub's token provider."""
        with self._token_lock:
            now = time.time()
            if self._token is None or now >= self._token_expires_at:
                self._login()
            elif now >= self._token_refresh_at:
                self._refresh()
            assert self._token is not None
            return self._token

    def invalidate_token(self, token: str) -> None:
        """Forget `token` (the gateway rejected it, or ended its session): the next call logs in.
        A token that was already replaced is left alone, so concurrent callers log in once."""
        with self._token_lock:
            if token == self._token:
                self._token = None
                log.info(kv("token_invalidated", user=self.config.username))

    def _adopt_token(self, token: object, endpoint: str) -> None:
        if not isinstance(token, str) or not token:
            raise GatewayResponseError(endpoint, "no token in the response")
        now = time.time()
        expires_at = jwt_expiry(token)
        if expires_at is None or expires_at <= now:
            if expires_at is not None:
                log.warning(kv("token_expired_on_arrival", endpoint=endpoint, hint="check the machine's clock"))
            expires_at = now + ASSUMED_TOKEN_LIFETIME
        lifetime = expires_at - now
        self._token = token
        self._token_expires_at = expires_at
        self._token_refresh_at = expires_at - min(TOKEN_REFRESH_MARGIN, TOKEN_REFRESH_FRACTION * lifetime)
        log.info(kv("token_obtained", endpoint=endpoint, user=self.config.username, valid_seconds=round(lifetime)))

    def _login(self) -> None:
        envelope = self._post(
            LOGIN_ENDPOINT,
            {"userName": self.config.username, "apiKey": self.config.api_key},
            authenticate=False,
        )
        self._adopt_token(envelope.get("token"), LOGIN_ENDPOINT)

    def _refresh(self) -> None:
        current = self._token
        assert current is not None
        try:
            envelope = self._post(VALIDATE_ENDPOINT, None, authenticate=False, bearer=current)
        except (GatewayError, GatewayHTTPError, GatewayResponseError) as exc:
            log.warning(kv("token_refresh_refused", reason=exc, action="login"))
            self._login()
            return
        except GatewayRetriesExhausted as exc:
            # The gateway is unreachable right now; the current token is still valid, so keep
            # it and try again on the next call rather than failing this one.
            log.warning(kv("token_refresh_failed", reason=exc, action="keep_current_token"))
            return
        new_token = envelope.get("newToken")
        if isinstance(new_token, str) and new_token:
            self._adopt_token(new_token, VALIDATE_ENDPOINT)
        else:
            log.warning(kv("token_refresh_without_token", action="login"))
            self._login()

    # ----------------------------------------------------------------------- transport

    def _backoff_delay(self, retry: int) -> float:
        """Capped exponential backoff with full jitter (retry counts from 1)."""
        return random.uniform(0.0, min(self._backoff_cap, self._backoff_base * 2 ** (retry - 1)))

    def _post(self, endpoint: str, body: dict | None, *, authenticate: bool = True, bearer: str | None = None) -> dict:
        """POST `body` to `endpoint` and return the successful envelope.

        `authenticate`: send the session token, logging in again once if it gets a 401.
        Otherwise `bearer` is sent as is (None: no token), for the auth endpoints themselves."""
        url = f"{self.config.api_url}{API_ROOT}/{endpoint}"
        retries = 0
        relogged = False
        while True:
            if self._limiter is not None:
                waited = self._limiter.acquire(endpoint)
                if waited > 0:
                    log.debug(kv("paced", endpoint=endpoint, waited=f"{waited:.2f}"))
            headers = {"Accept": "application/json"}
            token = self.token() if authenticate else bearer
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            status: int | None = None
            retry_after: float | None = None
            try:
                response = self._session.post(url, json=body, headers=headers, timeout=self._timeout)
            except _RETRYABLE_EXCEPTIONS as exc:
                detail = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._envelope(endpoint, response)
                if status == 401 and authenticate and token is not None and not relogged:  # token() never gives None
                    relogged = True
                    log.warning(kv("unauthorized", endpoint=endpoint, action="login"))
                    self.invalidate_token(token)
                    continue
                if status != 429 and status < 500:
                    raise GatewayHTTPError(endpoint, status, response.text)
                detail = f"HTTP {status}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            retries += 1
            if retries > self._max_retries:
                raise GatewayRetriesExhausted(endpoint, retries, status, detail)
            delay = retry_after if retry_after is not None else self._backoff_delay(retries)
            log.warning(kv("retry", endpoint=endpoint, failure=detail, retry=retries, delay=f"{delay:.2f}"))
            time.sleep(delay)

    @staticmethod
    def _envelope(endpoint: str, response: requests.Response) -> dict:
        try:
            envelope = response.json()
        except ValueError:
            raise GatewayResponseError(endpoint, f"body is not JSON: {response.text[:200]!r}") from None
        if not isinstance(envelope, dict):
            raise GatewayResponseError(endpoint, f"body is a JSON {type(envelope).__name__}, expected an object")
        if envelope.get("success") is not True:
            error = GatewayError.from_envelope(endpoint, envelope)
            log.warning(kv("gateway_error", endpoint=endpoint, code=error.error_code, meaning=error.meaning))
            raise error
        return envelope

    # ----------------------------------------------------------------------- contracts

    def search_contracts(self, text: str, live: bool = False) -> list[dict]:
        """Contracts matching `text` (the gateway answers at most 20, unpaged)."""
        envelope = self._post(SEARCH_ENDPOINT, {"searchText": text, "live": live})
        contracts = envelope.get("contracts") or []
        if not isinstance(contracts, list):
            raise GatewayResponseError(SEARCH_ENDPOINT, "contracts is not a list")
        return contracts

    def available_contracts(self, live: bool = False) -> list[dict]:
        """The contracts that can be traded now (what public SDKs list front months with)."""
        envelope = self._post(AVAILABLE_CONTRACTS_ENDPOINT, {"live": live})
        contracts = envelope.get("contracts") or []
        if not isinstance(contracts, list):
            raise GatewayResponseError(AVAILABLE_CONTRACTS_ENDPOINT, "contracts is not a list")
        return contracts

    def contract_by_id(self, contract_id: str) -> dict:
        """One contract, expired ones included. The answer carries `contract`, or a `contracts`
        array in older versions of the API: both are accepted."""
        ContractId(contract_id)
        envelope = self._post(SEARCH_BY_ID_ENDPOINT, {"contractId": contract_id})
        contract = envelope.get("contract")
        if contract is None:
            listed = envelope.get("contracts")
            contract = listed[0] if isinstance(listed, list) and listed else None
        if contract is None:
            raise GatewayError(SEARCH_BY_ID_ENDPOINT, 1, meaning_of(SEARCH_BY_ID_ENDPOINT, 1), "the response carried no contract")
        if not isinstance(contract, dict):
            raise GatewayResponseError(SEARCH_BY_ID_ENDPOINT, "contract is not an object")
        return contract

    # ----------------------------------------------------------------------- bars

    def retrieve_bars(
        self,
        contract_id: str,
        timeframe: Timeframe,
        start: datetime,
        end: datetime,
        *,
        live: bool = False,
        include_partial_bar: bool = False,
    ) -> pd.DataFrame:
        """Bars of `timeframe` starting in [start, end], in the BAR_COLUMNS layout, ascending.

        The gateway answers at most 20,000 bars per request (the most recent of the window),
        so a long window is paged backwards: each request ends at the oldest bar received,
        until a page comes back short or makes no progress. Pages may come newest first or
        oldest first; bars are de-duplicated on their timestamp."""
        ContractId(contract_id)
        if not isinstance(timeframe, Timeframe):
            raise DomainError(f"timeframe={timeframe!r}: expected a Timeframe")
        start_utc, end_utc = _aware_utc("start", start), _aware_utc("end", end)
        if end_utc < start_utc:
            raise DomainError(f"end {end_utc.isoformat()} is before start {start_utc.isoformat()}")
        started = time.monotonic()
        pages: list[pd.DataFrame] = []
        cursor = end_utc
        while True:
            body = {
                "contractId": contract_id,
                "live": live,
                "startTime": _iso_utc(start_utc),
                "endTime": _iso_utc(cursor),
                "unit": timeframe.unit,
                "unitNumber": timeframe.value,
                "limit": MAX_BARS_PER_REQUEST,
                # Only the newest page can hold the bar still in progress.
                "includePartialBar": include_partial_bar and not pages,
            }
            page = _bars_page(self._post(HISTORY_ENDPOINT, body))
            pages.append(page)
            if len(page) < MAX_BARS_PER_REQUEST:
                break
            oldest = page["timestamp"].min().to_pydatetime()
            if oldest >= cursor or oldest <= start_utc:
                break
            cursor = oldest
        frame = pd.concat(pages, ignore_index=True) if len(pages) > 1 else pages[0]
        if frame.empty:
            bars = empty_bars()
        else:
            frame = frame.drop_duplicates("timestamp", keep="first").sort_values("timestamp", ignore_index=True)
            frame.insert(0, "contract_id", contract_id)
            frame["timeframe_unit"] = timeframe.unit
            frame["timeframe_value"] = timeframe.value
            bars = normalize_bars(frame)
        log.info(
            kv(
                "bars_retrieved",
                contract=contract_id,
                timeframe=timeframe.label,
                start=_iso_utc(start_utc),
                end=_iso_utc(end_utc),
                bars=len(bars),
                requests=len(pages),
                seconds=f"{time.monotonic() - started:.2f}",
            )
        )
        return bars

    # ----------------------------------------------------------------------- hub

    def market_hub(self, contracts: list[str], out: queue.Queue, **options: Unpack[MarketHubOptions]) -> MarketHub:
        """A MarketHub on this client's gateway, using this client for its tokens (including a
        fresh login after the gateway rejects or logs out a token). `options` go to MarketHub."""
        from .hub import MarketHub

        return MarketHub(self.config.rtc_url, self.token, contracts, out, token_rejected=self.invalidate_token, **options)


_BAR_FIELDS = {"t": "timestamp", "o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}


def _bars_page(envelope: dict) -> pd.DataFrame:
    """The `bars` of a History/retrieveBars answer as a frame (timestamp, open, high, low, close, volume)."""
    bars = envelope.get("bars")
    if bars is None:
        bars = []
    if not isinstance(bars, list):
        raise GatewayResponseError(HISTORY_ENDPOINT, f"bars is a {type(bars).__name__}, expected a list")
    if not bars:
        return pd.DataFrame({name: [] for name in _BAR_FIELDS.values()})
    try:
        raw = pd.DataFrame.from_records(bars)
        missing = sorted(set(_BAR_FIELDS) - set(raw.columns))
        if missing:
            raise ValueError(f"bars lack field(s) {missing}")
        page = raw.loc[:, list(_BAR_FIELDS)].rename(columns=_BAR_FIELDS)
        if page.isna().any().any():
            raise ValueError("bars carry null values")
        page["timestamp"] = pd.to_datetime(page["timestamp"], utc=True, format="ISO8601")
        for column in ("open", "high", "low", "close"):
            page[column] = page[column].astype("float64")
        page["volume"] = page["volume"].astype("int64")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise GatewayResponseError(HISTORY_ENDPOINT, f"malformed bars ({exc})") from None
    return page
