"""The REST client against the real simulator over sockets; rate limiter and config as pure logic."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import BAR_COLUMNS
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.gateway import (
    GatewayClient,
    GatewayConfig,
    GatewayConfigError,
    GatewayError,
    GatewayHTTPError,
    GatewayRetriesExhausted,
    RateBudget,
    RateLimiter,
)
from projectx_pipeline.gateway.client import jwt_expiry, retry_after_seconds
from projectx_pipeline.gateway.errors import redact
from projectx_pipeline.gateway.protocol import HISTORY_ENDPOINT
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.logs import kv

from .support.market import MES
from .support.simulator import finished_simulator

pytestmark = pytest.mark.timeout(120)

UTC = timezone.utc
SPAN_START = datetime(2025, 3, 1, tzinfo=UTC)
SPAN_END = datetime(2025, 6, 1, tzinfo=UTC)


class RequestLog:
    """A requests response hook recording (endpoint, status) of every call a client makes."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def __call__(self, response, *args, **kwargs):
        self.calls.append((response.url.split("/api/", 1)[-1], response.status_code))

    def endpoints(self) -> list[str]:
        return [endpoint for endpoint, _ in self.calls]


@pytest.fixture(scope="module")
def sim():
    server = finished_simulator()
    yield server
    server.stop()


@pytest.fixture
def request_log():
    return RequestLog()


def make_client(sim, request_log=None, username="tester", api_key="secret-api-key", **options) -> GatewayClient:
    session = requests.Session()
    if request_log is not None:
        session.hooks["response"].append(request_log)
    config = GatewayConfig(sim.api_url, sim.rtc_url, username, api_key, use_simulator=True)
    return GatewayClient(config, session=session, **options)


# --------------------------------------------------------------------------- auth and contracts


def test_login_and_contract_lookups(sim, request_log):
    client = make_client(sim, request_log)
    contracts = client.search_contracts("MES")
    assert [c["id"] for c in contracts] == [MES]
    contract = client.contract_by_id(MES)
    assert contract["tickSize"] == 0.25 and contract["symbolId"] == "F.US.MES"
    assert request_log.endpoints() == ["Auth/loginKey", "Contract/search", "Contract/searchById"]


def test_unknown_contract_is_a_gateway_error_with_code_and_meaning(sim):
    client = make_client(sim)
    with pytest.raises(GatewayError) as caught:
        client.contract_by_id("CON.F.US.ZZZ.Z99")
    assert (caught.value.endpoint, caught.value.error_code, caught.value.meaning) == ("Contract/searchById", 1, "contract not found")
    with pytest.raises(GatewayError) as caught:
        client.retrieve_bars("CON.F.US.ZZZ.Z99", parse_timeframe("5m"), SPAN_START, SPAN_END)
    assert (caught.value.endpoint, caught.value.error_code, caught.value.meaning) == ("History/retrieveBars", 1, "contract not found")
    assert "History/retrieveBars failed with error code 1 (contract not found)" in str(caught.value)


@pytest.mark.parametrize("code", [[1], {"a": 1}, "1", None])
def test_a_malformed_error_code_is_an_undocumented_gateway_error(code):
    error = GatewayError.from_envelope(HISTORY_ENDPOINT, {"success": False, "errorCode": code})
    assert (error.error_code, error.meaning) == (code, "undocumented error code")


def test_login_errors_name_the_meaning_and_never_the_key():
    sim = SimulatorServer(start_time="end", username="alice", api_key="right-key").start()
    try:
        with pytest.raises(GatewayError) as caught:
            make_client(sim, username="bob", api_key="right-key").search_contracts("MES")
        assert (caught.value.endpoint, caught.value.error_code, caught.value.meaning) == ("Auth/loginKey", 1, "user not found")
        with pytest.raises(GatewayError) as caught:
            make_client(sim, username="alice", api_key="wrong-key").search_contracts("MES")
        assert caught.value.meaning == "invalid credentials"
        assert "wrong-key" not in str(caught.value) and "wrong-key" not in repr(caught.value)
        assert make_client(sim, username="alice", api_key="right-key").search_contracts("MES")
    finally:
        sim.stop()


def test_contract_ids_are_validated_before_any_request(sim, request_log):
    client = make_client(sim, request_log)
    for bad in ["MES", "CON.F.US.MES.M25' OR 1=1", "", None]:
        with pytest.raises(DomainError):
            client.contract_by_id(bad)
        with pytest.raises(DomainError):
            client.retrieve_bars(bad, parse_timeframe("1m"), SPAN_START, SPAN_END)
    assert request_log.calls == []


def test_token_is_refreshed_with_validate_shortly_before_it_expires():
    sim = SimulatorServer(start_time="end", token_ttl_seconds=5).start()
    try:
        log = RequestLog()
        client = make_client(sim, log)
        first = client.token()
        first_expiry = jwt_expiry(first)
        assert first_expiry is not None and first_expiry - time.time() <= 5
        assert client.token() == first  # kept while fresh
        deadline = time.monotonic() + 8
        while (current := client.token()) == first:
            assert time.monotonic() < deadline, "the token was never refreshed"
            time.sleep(0.1)
        assert time.time() < first_expiry, "refreshed only after the old token expired"
        assert jwt_expiry(current) > first_expiry
        assert log.endpoints() == ["Auth/loginKey", "Auth/validate"]
        assert client.search_contracts("MES")  # the refreshed token works
    finally:
        sim.stop()


def test_401_after_expired_tokens_logs_in_again_once(sim, control, request_log):
    client = make_client(sim, request_log)
    client.search_contracts("MES")
    control.expire_tokens()
    assert client.search_contracts("MES")
    assert request_log.calls == [
        ("Auth/loginKey", 200),
        ("Contract/search", 200),
        ("Contract/search", 401),
        ("Auth/loginKey", 200),
        ("Contract/search", 200),
    ]


# --------------------------------------------------------------------------- bars


def test_paging_over_a_window_of_more_than_20000_bars(sim, request_log):
    client = make_client(sim, request_log)
    tf = parse_timeframe("1m")
    bars = client.retrieve_bars(MES, tf, SPAN_START, SPAN_END)
    expected = sim.history_bars(MES, tf)
    assert len(bars) == len(expected) > 40_000
    assert list(bars.columns) == BAR_COLUMNS
    assert bars["timestamp"].is_monotonic_increasing and bars["timestamp"].is_unique
    pd.testing.assert_frame_equal(bars, expected.reset_index(drop=True), check_exact=True)
    history_calls = [c for c in request_log.endpoints() if c == HISTORY_ENDPOINT]
    assert len(history_calls) == -(-len(expected) // 20_000)


def test_window_boundaries_match_the_gateway(sim):
    client = make_client(sim)
    tf = parse_timeframe("5m")
    start, end = datetime(2025, 4, 1, 13, 30, tzinfo=UTC), datetime(2025, 4, 2, 20, 0, tzinfo=UTC)
    bars = client.retrieve_bars(MES, tf, start, end)
    pd.testing.assert_frame_equal(bars, sim.history_bars(MES, tf, start, end).reset_index(drop=True))
    assert client.retrieve_bars(MES, tf, start, start).empty
    assert list(client.retrieve_bars(MES, tf, datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)).columns) == BAR_COLUMNS
    with pytest.raises(DomainError):
        client.retrieve_bars(MES, tf, end, start)
    with pytest.raises(DomainError):
        client.retrieve_bars(MES, tf, datetime(2025, 4, 1), end)


def _reverse_bars(response, *args, **kwargs):
    """Turn the simulator's newest-first pages oldest-first, as another gateway version might."""
    if response.url.endswith(HISTORY_ENDPOINT) and response.status_code == 200:
        envelope = response.json()
        envelope["bars"] = list(reversed(envelope["bars"] or []))
        response._content = json.dumps(envelope).encode()


def test_page_order_does_not_matter(sim):
    client = make_client(sim)
    client._session.hooks["response"].append(_reverse_bars)
    tf = parse_timeframe("1m")
    bars = client.retrieve_bars(MES, tf, SPAN_START, SPAN_END)
    pd.testing.assert_frame_equal(bars, sim.history_bars(MES, tf).reset_index(drop=True))


# --------------------------------------------------------------------------- retries and pacing


def test_429_with_retry_after_is_honoured(sim, control, request_log):
    client = make_client(sim, request_log, backoff_base=0.01)
    client.token()
    control.rest_errors(429, count=2, retry_after=1)
    started = time.monotonic()
    assert client.search_contracts("MES")
    assert time.monotonic() - started >= 1.9  # two Retry-After: 1 waits
    assert [s for _, s in request_log.calls[1:]] == [429, 429, 200]


def test_429_and_5xx_without_retry_after_back_off_and_succeed(sim, control, request_log):
    client = make_client(sim, request_log, backoff_base=0.05, backoff_cap=0.2)
    client.token()
    control.rest_errors(429, count=2, retry_after=None)
    control.rest_errors(500, count=1, retry_after=None)
    control.rest_errors(503, count=1, retry_after=None)
    started = time.monotonic()
    bars = client.retrieve_bars(MES, parse_timeframe("1h"), SPAN_START, SPAN_END)
    assert time.monotonic() - started < 3
    assert len(bars) > 0
    assert [s for _, s in request_log.calls[1:]] == [429, 429, 500, 503, 200]


def test_retry_budget_exhausted_is_a_clear_error(sim, control):
    client = make_client(sim, max_retries=2, backoff_base=0.01)
    token = client.token()
    control.rest_errors(429, count=3, retry_after=None)
    with pytest.raises(GatewayRetriesExhausted) as caught:
        client.search_contracts("MES")
    message = str(caught.value)
    assert message == "Contract/search still failing after 3 attempts, last: HTTP 429"
    assert caught.value.last_status == 429 and token not in message


def test_client_errors_are_not_retried(sim, control, request_log):
    client = make_client(sim, request_log)
    client.token()
    control.rest_errors(400, count=1, retry_after=None)
    with pytest.raises(GatewayHTTPError) as caught:
        client.search_contracts("MES")
    assert caught.value.status == 400 and str(caught.value).startswith("Contract/search failed with HTTP 400")
    assert [s for _, s in request_log.calls] == [200, 400]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_gateway_is_retried_then_reported():
    port = unused_port()
    config = GatewayConfig(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", "u", "k", True)
    client = GatewayClient(config, max_retries=2, backoff_base=0.01, timeout=2)
    with pytest.raises(GatewayRetriesExhausted) as caught:
        client.search_contracts("MES")
    assert caught.value.endpoint == "Auth/loginKey" and caught.value.last_status is None
    assert "ConnectionError" in str(caught.value)


def test_client_side_pacing_keeps_requests_within_budget(sim, request_log):
    limiter = RateLimiter({HISTORY_ENDPOINT: RateBudget(3, 1.0)}, RateBudget(100, 60.0))
    client = make_client(sim, request_log, rate_limits=limiter)
    client.token()
    started = time.monotonic()
    for _ in range(7):
        client.retrieve_bars(MES, parse_timeframe("1d"), SPAN_START, SPAN_END)
    # 7 requests at 3 per second: the 4th waits for the 1st to leave the window, the 7th for the 4th.
    assert time.monotonic() - started >= 2.0
    assert all(status == 200 for _, status in request_log.calls)


def test_logs_are_key_value_and_never_carry_tokens_or_keys(sim, control, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(sim, backoff_base=0.01)
    token = client.token()
    control.rest_errors(500, count=1, retry_after=None)
    client.retrieve_bars(MES, parse_timeframe("4h"), SPAN_START, SPAN_END)
    control.expire_tokens()
    client.search_contracts("MES")
    gateway_lines = [r.getMessage() for r in caplog.records if r.name == "projectx.gateway"]
    assert any(line.startswith("event=retry endpoint=History/retrieveBars") for line in gateway_lines)
    assert any(line.startswith("event=bars_retrieved contract=CON.F.US.MES.M25") for line in gateway_lines)
    assert any(line.startswith("event=unauthorized") for line in gateway_lines)
    for record in caplog.records:
        text = record.getMessage()
        assert token not in text and client.token() not in text and "secret-api-key" not in text


# --------------------------------------------------------------------------- pure logic


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_sliding_window_with_a_fake_clock():
    clock = FakeClock()
    limiter = RateLimiter({HISTORY_ENDPOINT: RateBudget(50, 30.0)}, RateBudget(200, 60.0), clock=clock.time, sleep=clock.sleep)
    margin = 0.25  # the default safety margin on every window
    sent = []
    for _ in range(120):
        limiter.acquire(HISTORY_ENDPOINT)
        sent.append(clock.now)
        clock.now += 0.125  # the caller's own work between requests (exact in binary)
    # Never more than 50 sends in any 30-second window (nor in one a margin longer).
    for i, t in enumerate(sent):
        assert sum(1 for u in sent[i:] if u < t + 30.0 + margin) <= 50
    assert sent[50] == pytest.approx(sent[0] + 30.0 + margin)
    # The other endpoints have their own, shared window, untouched by the history calls.
    before = clock.now
    for _ in range(200):
        limiter.acquire("Contract/search" if _ % 2 else "Contract/searchById")
    assert clock.now == before
    assert limiter.acquire("Auth/validate") == pytest.approx(60.0 + margin)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 64 * 3), min_size=1, max_size=80),
    endpoints=st.lists(st.sampled_from([HISTORY_ENDPOINT, "Contract/search", "Auth/validate"]), min_size=80, max_size=80),
)
def test_rate_limiter_never_exceeds_a_budget_whatever_the_timing(gaps, endpoints):
    clock = FakeClock()
    limiter = RateLimiter({HISTORY_ENDPOINT: RateBudget(4, 2.0)}, RateBudget(6, 3.0), margin=0.0, clock=clock.time, sleep=clock.sleep)
    sends: dict[str, list[float]] = {"history": [], "other": []}
    for gap, endpoint in zip(gaps, endpoints):
        clock.now += gap / 64  # exact binary fractions keep the fake clock free of rounding
        limiter.acquire(endpoint)
        sends["history" if endpoint == HISTORY_ENDPOINT else "other"].append(clock.now)
    for group, (budget, window) in {"history": (4, 2.0), "other": (6, 3.0)}.items():
        times = sends[group]
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u < t + window) <= budget


def test_rate_limiter_waits_exactly_until_the_oldest_send_leaves_the_window():
    clock = FakeClock()
    limiter = RateLimiter({}, RateBudget(2, 10.0), margin=0.0, clock=clock.time, sleep=clock.sleep)
    assert limiter.acquire("x") == 0
    clock.now += 4
    assert limiter.acquire("y") == 0
    assert limiter.acquire("z") == pytest.approx(6.0)  # until the first send is 10 s old
    assert limiter.acquire("x") == pytest.approx(4.0)


def test_rate_limiter_is_thread_safe():
    limiter = RateLimiter({}, RateBudget(5, 0.5), margin=0.0)
    times: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(5):
            limiter.acquire("Contract/search")
            with lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times.sort()
    assert len(times) == 20
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 0.5 - 0.01) <= 5
    assert times[-1] - times[0] >= 1.5 - 0.05


def test_rate_limits_can_be_disabled(sim):
    client = make_client(sim, rate_limits=False)
    assert client._limiter is None
    assert client.search_contracts("MES")


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds("99999") == 300.0  # capped
    future = (datetime.now(UTC) + timedelta(seconds=20)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 15 <= retry_after_seconds(future) <= 21


def test_jwt_expiry_reads_exp_without_verifying():
    import base64

    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1_900_000_000}).encode()).rstrip(b"=").decode()
    assert jwt_expiry(f"eyJhbGciOiJIUzI1NiJ9.{payload}.signature") == 1_900_000_000.0
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.b.c") is None
    no_exp = base64.urlsafe_b64encode(b'{"sub":"x"}').decode()
    assert jwt_expiry(f"h.{no_exp}.s") is None


def test_config_from_env_chooses_simulator_or_real_gateway():
    sim = GatewayConfig.from_env({})
    assert (sim.api_url, sim.rtc_url, sim.username, sim.api_key, sim.use_simulator) == (
        "http://127.0.0.1:5080",
        "http://127.0.0.1:5080",
        "simulator",
        "simulator",
        True,
    )
    real = GatewayConfig.from_env({"PROJECTX_USERNAME": "trader", "PROJECTX_API_KEY": "k3y-value"})
    assert (real.api_url, real.rtc_url, real.use_simulator) == ("https://api.topstepx.com", "https://rtc.topstepx.com", False)
    assert real.market_hub_url == "https://rtc.topstepx.com/hubs/market"
    assert "k3y-value" not in repr(real) and "k3y-value" not in str(real) and "api_key='***'" in repr(real)
    custom = GatewayConfig.from_env({"PROJECTX_API_URL": "http://localhost:9000/", "PROJECTX_RTC_URL": "http://localhost:9001"})
    assert (custom.api_url, custom.rtc_url, custom.use_simulator) == ("http://localhost:9000", "http://localhost:9001", True)
    half = GatewayConfig.from_env({"PROJECTX_USERNAME": "trader"})
    assert half.use_simulator


@pytest.mark.parametrize("value", ["ftp://host", "api.topstepx.com", "http://", "https://host:notaport", "http://h?x=1"])
def test_config_rejects_bad_urls_naming_the_variable(value):
    with pytest.raises(GatewayConfigError) as caught:
        GatewayConfig.from_env({"PROJECTX_RTC_URL": value})
    assert "PROJECTX_RTC_URL" in str(caught.value) and repr(value) in str(caught.value)


def test_redaction_of_tokens_in_text():
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert jwt not in redact(f"token {jwt} here")
    assert redact("wss://h/hubs/market?access_token=abc.def&id=1") == "wss://h/hubs/market?access_token=***&id=1"
    assert redact("Authorization: Bearer opaque-token-123") == "Authorization: Bearer ***"
    assert kv("x", url=f"http://h?access_token={jwt}", n=3) == 'event=x url="http://h?access_token=***" n=3'
    error = GatewayHTTPError("Auth/validate", 400, f"bad token {jwt}")
    assert jwt not in str(error)
