"""The gateway simulator over real sockets: REST, the SignalR market hub, fault injection, the CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from projectx_pipeline.domain.aggregation import aggregate_trades
from projectx_pipeline.domain.market import BAR_COLUMNS, normalize_bars, read_bars_csv
from projectx_pipeline.domain.timeframes import bar_starts_ns, parse_timeframe
from projectx_pipeline.domain.timestamps import to_ns
from projectx_pipeline.errors import UsageError
from projectx_pipeline.gateway.protocol import RECORD_SEPARATOR as RS
from projectx_pipeline.gateway.simulator import commands, market
from projectx_pipeline.gateway.simulator.clock import MarketClock
from projectx_pipeline.gateway.simulator.control import SimulatorControl, SimulatorControlError
from projectx_pipeline.gateway.simulator.faults import MALFORMED_KINDS
from projectx_pipeline.gateway.simulator.replay import default_replay_path
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.gateway.simulator.synthetic import SyntheticSource

from .support.hub_wire import RawHub
from .support.market import MES
from .support.simulator import api, finished_simulator, login

pytestmark = pytest.mark.timeout(60)

# A Tuesday in the New York cash session: the synthetic market is busy there.
TUESDAY_CASH_SESSION = datetime(2025, 3, 18, 14, 0, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- helpers


def bars_request(
    contract_id=MES, start="2025-03-01T00:00:00Z", end="2025-06-01T00:00:00Z", unit=2, unit_number=5, limit=20_000, include_partial=True
) -> dict:
    return {
        "contractId": contract_id,
        "live": False,
        "startTime": start,
        "endTime": end,
        "unit": unit,
        "unitNumber": unit_number,
        "limit": limit,
        "includePartialBar": include_partial,
    }


def retrieve(sim, token, **kwargs) -> list[dict]:
    body = api(sim, "History/retrieveBars", bars_request(**kwargs), token).json()
    assert body["success"], body
    return body["bars"]


def as_frame(bars: list[dict], unit: int, unit_number: int) -> pd.DataFrame:
    """Gateway bars (any order) as a canonical bar frame, oldest first."""
    df = pd.DataFrame(bars).rename(columns={"t": "timestamp", "o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"})
    df = df.assign(contract_id=MES, timeframe_unit=unit, timeframe_value=unit_number).sort_values("timestamp")
    return normalize_bars(df)


def rollup(bars: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Coarser bars from finer ones with the gateway's alignment rules."""
    tf = parse_timeframe(timeframe)
    labels = bar_starts_ns(bars["timestamp"].array.asi8, tf)
    grouped = bars.groupby(labels, sort=True)
    out = pd.DataFrame(
        {
            "contract_id": MES,
            "timestamp": pd.to_datetime(grouped["timestamp"].first().index, utc=True),
            "open": grouped["open"].first().to_numpy(),
            "high": grouped["high"].max().to_numpy(),
            "low": grouped["low"].min().to_numpy(),
            "close": grouped["close"].last().to_numpy(),
            "volume": grouped["volume"].sum().to_numpy(),
            "timeframe_unit": tf.unit,
            "timeframe_value": tf.value,
        }
    )
    return normalize_bars(out[BAR_COLUMNS])


def wait_until(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def is_event(target: str):
    return lambda m: m.get("type") == 1 and m.get("target") == target


def trades_of(message: dict) -> list[dict]:
    data = message["arguments"][1]
    return data if isinstance(data, list) else [data]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return read_bars_csv(default_replay_path())


@pytest.fixture(scope="module")
def finished_replay():
    """The MES 5m sample replayed at max speed to its end, rate limits off."""
    sim = finished_simulator(rate_limits=False)
    yield sim
    sim.stop()


@pytest.fixture
def synthetic_sim():
    sim = SimulatorServer(synthetic=[MES], speed=60, start_time=TUESDAY_CASH_SESSION, ping_interval=0.2, rate_limits=False).start()
    yield sim
    sim.stop()


@pytest.fixture
def small_replay(tmp_path, sample):
    path = tmp_path / "mes_300.csv"
    sample.iloc[:300].to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- REST


def test_login_validate_and_readable_token_expiry(finished_replay):
    sim = finished_replay
    token = login(sim)
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == "tester"
    assert abs(claims["exp"] - (time.time() + 86_400)) < 60
    body = api(sim, "Auth/validate", "", token).json()
    assert body["success"] and body["errorCode"] == 0 and body["errorMessage"] is None
    assert body["newToken"] != token
    assert api(sim, "Contract/search", {"searchText": "MES", "live": False}, body["newToken"]).status_code == 200
    assert api(sim, "Contract/search", {"searchText": "MES", "live": False}, token).status_code == 200  # still valid


def test_login_with_configured_credentials():
    with SimulatorServer(synthetic=[MES], username="alice", api_key="secret") as sim:

        def attempt(user, key):
            return api(sim, "Auth/loginKey", {"userName": user, "apiKey": key}, None).json()

        assert attempt("alice", "secret")["success"]
        assert attempt("bob", "secret")["errorCode"] == 1
        wrong_key = attempt("alice", "nope")
        assert (wrong_key["success"], wrong_key["errorCode"], wrong_key["token"]) == (False, 3, None)
        assert attempt("", "")["errorCode"] == 3


def test_missing_or_unknown_token_is_401_and_malformed_body_is_400(finished_replay):
    sim = finished_replay
    token = login(sim)
    assert api(sim, "Contract/search", {"searchText": "MES", "live": False}, None).status_code == 401
    assert api(sim, "History/retrieveBars", bars_request(), "not.a.token").status_code == 401
    assert api(sim, "Auth/validate", "", "garbage").status_code == 401
    assert api(sim, "History/retrieveBars", "{not json", token).status_code == 400
    assert api(sim, "Auth/loginKey", {"userName": "x"}, None).status_code == 400
    for missing in ("contractId", "live", "startTime", "endTime", "unit", "unitNumber", "limit", "includePartialBar"):
        body = bars_request()
        del body[missing]
        response = api(sim, "History/retrieveBars", body, token)
        assert response.status_code == 400, missing
        assert missing in response.json()["errors"]
    assert api(sim, "History/retrieveBars", {**bars_request(), "unit": "2"}, token).status_code == 400
    assert api(sim, "History/retrieveBars", {**bars_request(), "startTime": "yesterday"}, token).status_code == 400


def test_contract_search_and_search_by_id(finished_replay):
    sim = finished_replay
    token = login(sim)
    found = api(sim, "Contract/search", {"searchText": "mes", "live": False}, token).json()
    assert found["success"] and [c["id"] for c in found["contracts"]] == [MES]
    contract = api(sim, "Contract/searchById", {"contractId": MES}, token).json()["contract"]
    assert contract == {
        "id": MES,
        "name": "MESM5",
        "description": "Micro E-mini S&P 500: June 2025",
        "tickSize": 0.25,
        "tickValue": 1.25,
        "activeContract": True,
        "symbolId": "F.US.MES",
    }
    missing = api(sim, "Contract/searchById", {"contractId": "CON.F.US.ES.M25"}, token).json()
    assert (missing["success"], missing["errorCode"]) == (False, 1)
    assert api(sim, "Contract/search", {"searchText": "NQ", "live": False}, token).json()["contracts"] == []


def test_replayed_5m_history_is_exactly_the_sample(finished_replay, sample):
    sim = finished_replay
    bars = retrieve(sim, login(sim))
    assert len(bars) == len(sample) == 10_000
    assert set(bars[0]) == {"t", "o", "h", "l", "c", "v"}
    pd.testing.assert_frame_equal(as_frame(bars, 2, 5), sample)
    pd.testing.assert_frame_equal(sim.history_bars(MES, "5m"), sample)


@pytest.mark.parametrize("timeframe, unit, unit_number", [("1h", 3, 1), ("4h", 3, 4), ("1d", 4, 1)])
def test_coarser_history_equals_rollup_of_the_sample(finished_replay, sample, timeframe, unit, unit_number):
    sim = finished_replay
    served = as_frame(retrieve(sim, login(sim), unit=unit, unit_number=unit_number), unit, unit_number)
    expected = rollup(sample, timeframe)
    pd.testing.assert_frame_equal(served, expected)
    pd.testing.assert_frame_equal(sim.history_bars(MES, timeframe), expected)


def test_retrieve_bars_order_window_limit_and_cap(finished_replay, sample):
    sim = finished_replay
    token = login(sim)
    window = retrieve(sim, token, start="2025-04-01T14:00:00Z", end="2025-04-01T15:00:00Z")
    times = [b["t"] for b in window]
    assert times == sorted(times, reverse=True), "newest first"
    assert times[-1] == "2025-04-01T14:00:00+00:00" and times[0] == "2025-04-01T14:55:00+00:00", "[start, end) on bar start"

    latest = retrieve(sim, token, start="2025-04-01T00:00:00Z", end="2025-04-01T15:00:00Z", limit=3)
    assert [b["t"] for b in latest] == times[:3], "limit keeps the most recent bars of the window"

    minute_bars = retrieve(sim, token, unit=2, unit_number=1, limit=50_000)
    assert len(minute_bars) == 20_000
    assert minute_bars[0]["t"] == sim.history_bars(MES, "1m")["timestamp"].iloc[-1].strftime("%Y-%m-%dT%H:%M:%S+00:00")

    assert retrieve(sim, token, start="2025-04-01T15:00:00Z", end="2025-04-01T14:00:00Z") == []
    for override, code in [
        ({"contract_id": "CON.F.US.ES.M25"}, 1),
        ({"unit": 9}, 2),
        ({"unit_number": 0}, 3),
        ({"unit": 2, "unit_number": 7}, 3),
        ({"unit": 4, "unit_number": 2}, 3),
        ({"limit": 0}, 4),
    ]:
        body = api(sim, "History/retrieveBars", bars_request(**override), token).json()
        assert (body["success"], body["errorCode"]) == (False, code), override


def test_history_stops_at_the_clock_and_partial_bar_flag():
    start = datetime(2025, 3, 18, 14, 2, 30, tzinfo=timezone.utc)
    with SimulatorServer(synthetic=[MES], start_time=start) as sim:
        SimulatorControl(sim.control_url).pause()
        token = login(sim)
        clock = sim.clock()
        with_partial = retrieve(sim, token, start="2025-03-18T13:00:00Z", end="2025-03-18T15:00:00Z", include_partial=True)
        complete = retrieve(sim, token, start="2025-03-18T13:00:00Z", end="2025-03-18T15:00:00Z", include_partial=False)
        assert with_partial[0]["t"] == "2025-03-18T14:00:00+00:00"
        assert complete[0]["t"] == "2025-03-18T13:55:00+00:00" and complete == with_partial[1:]
        seconds = sim.history_bars(MES, "1s", start=datetime(2025, 3, 18, 14, tzinfo=timezone.utc))
        assert seconds["timestamp"].iloc[-1] < clock
        partial = as_frame(with_partial[:1], 2, 5)
        assert partial["volume"].iloc[0] == seconds["volume"].sum()


def test_rate_limits_answer_429_with_retry_after():
    start = TUESDAY_CASH_SESSION
    with SimulatorServer(synthetic=[MES], start_time=start, rate_limits=True) as sim:
        token = login(sim)
        request = bars_request(start="2025-03-18T13:00:00Z", end="2025-03-18T13:30:00Z", unit=2, unit_number=1)
        for _ in range(50):
            assert api(sim, "History/retrieveBars", request, token).status_code == 200
        limited = api(sim, "History/retrieveBars", request, token)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 30
        search = {"searchText": "MES", "live": False}
        statuses = [api(sim, "Contract/search", search, token).status_code for _ in range(201)]
        assert statuses == [200] * 200 + [429], "200 per 60 s for the other endpoints, counted apart from history"
        assert api(sim, "History/retrieveBars", request, login(sim, "someone-else")).status_code == 200, "limits are per user"


# --------------------------------------------------------------------------- market hub


def test_hub_rejects_bad_tokens_before_upgrading(finished_replay):
    with pytest.raises(InvalidStatus) as refused:
        RawHub(finished_replay, "bogus")
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        RawHub(finished_replay, None)
    header_auth = RawHub(finished_replay, None, headers={"Authorization": f"Bearer {login(finished_replay)}"})
    assert header_auth.handshake == "{}"
    header_auth.close()


def test_hub_handshake_versions_and_protocols(finished_replay):
    token = login(finished_replay)
    hub = RawHub(finished_replay, token, version=1)
    assert hub.handshake == "{}"
    hub.close()
    for version in (0, 2):  # the gateway speaks version 1 of the JSON protocol, and only that
        hub = RawHub(finished_replay, token, version=version)
        assert hub.handshake == json.dumps({"error": f"The server does not support version {version} of the 'json' protocol."}, separators=(",", ":"))
        with pytest.raises(ConnectionClosed):
            hub.next(timeout=3)
    hub = RawHub(finished_replay, token, version=None)
    hub.ws.send(json.dumps({"protocol": "messagepack", "version": 1}) + RS)
    assert "error" in json.loads(hub.next_raw())
    hub.close()


def test_hub_streams_trades_quotes_depth_and_pings_to_the_end_of_the_replay(small_replay, sample):
    expected = sample.iloc[:300].reset_index(drop=True)
    with SimulatorServer(replay=small_replay, speed="max", wait_for_subscriber=True, ping_interval=0.2, quote_interval=0.2) as sim:
        hub = RawHub(sim, login(sim))
        unknown = hub.invoke("SubscribeContractTrades", "CON.F.US.ES.M25", "1")
        assert "not found" in unknown["error"]
        assert "error" in hub.invoke("NoSuchMethod", MES, "2")
        assert sim.clock() == expected["timestamp"].iloc[0], "the clock waits for the first trade subscriber"
        depth_done = hub.invoke("SubscribeContractMarketDepth", MES, "3")
        assert "error" not in depth_done
        assert hub.wait_for(is_event("GatewayDepth"))["arguments"][1][0]["type"] == 6, "a reset comes first"
        assert "error" not in hub.invoke("SubscribeContractQuotes", MES, "4")
        assert "error" not in hub.invoke("SubscribeContractTrades", MES, "5")

        end_of_replay = expected["timestamp"].iloc[-1] + pd.Timedelta(minutes=5)
        shapes, trades, quotes, depths, pings_after_end = set(), [], [], [], 0
        while pings_after_end < 2:
            message = hub.next()
            if message.get("type") == 6 and quotes and parse_ts(quotes[-1]["timestamp"]) == end_of_replay:
                pings_after_end += 1
            if is_event("GatewayTrade")(message):
                assert message["arguments"][0] == MES
                shapes.add(type(message["arguments"][1]))
                trades += trades_of(message)
            elif is_event("GatewayQuote")(message):
                quotes.append(message["arguments"][1])
            elif is_event("GatewayDepth")(message):
                depths.append(message["arguments"][1])
        hub.close()

        assert shapes == {dict, list}, "GatewayTrade data comes as one object and as lists"
        assert set(trades[0]) == {"symbolId", "price", "timestamp", "type", "volume"}
        forms = {re.fullmatch(r".*:\d\d(?:\.(\d+))?(Z|\+00:00)", t["timestamp"]).groups() for t in trades}
        fraction_digits = {len(fraction or "") for fraction, _ in forms}
        assert fraction_digits >= {0, 3, 7} and {zone for _, zone in forms} == {"Z", "+00:00"}, "several ISO forms"
        live = aggregate_trades(
            MES,
            [pd.Timestamp(parse_ts(t["timestamp"])).value for t in trades],
            [t["price"] for t in trades],
            [t["volume"] for t in trades],
            parse_timeframe("5m"),
        )
        pd.testing.assert_frame_equal(normalize_bars(live), expected)
        last_quote = quotes[-1]
        assert parse_ts(last_quote["timestamp"]) == end_of_replay, "a final quote closes the last bar"
        assert last_quote["lastPrice"] == expected["close"].iloc[-1]
        assert last_quote["volume"] >= expected["volume"].iloc[-1], "quote volume is the session total"

        tick = sim.contracts[MES].tick_size
        book = {parse_ts(q["timestamp"]): (q["bestBid"], q["bestAsk"]) for q in quotes}
        for q in quotes:
            assert round((q["bestAsk"] - q["bestBid"]) / tick) in (1, 2), "a spread of one tick, sometimes two"
            assert q["lastPrice"] in (q["bestBid"], q["bestAsk"]), "the last trade was at the bid or the ask"
        during = [parse_ts(q["timestamp"]) for q in quotes if parse_ts(q["timestamp"]) < end_of_replay]
        assert during == sorted(set(during)) and len(during) > 20 * len(expected), "throttled, yet many quotes per bar"
        assert all(pd.Timestamp(t).value % 200_000_000 == 0 for t in during), "each stamped with the end of its 0.2 s bucket"
        levels = [d for d in depths if d[0]["type"] != 6]
        assert len(quotes) - 1 <= len(levels) <= len(quotes), "depth goes with every quote (the last may not be read yet)"
        assert all(book[parse_ts(d[0]["timestamp"])] == (d[0]["price"], d[1]["price"]) for d in levels), "depth shows the quote's bid and ask"


def test_signalrcore_client_connects_subscribes_and_receives_trades():
    from signalrcore.hub_connection_builder import HubConnectionBuilder
    from signalrcore.protocol.json_hub_protocol import JsonHubProtocol

    with SimulatorServer(speed=600, ping_interval=0.5) as sim:
        token = login(sim)
        received: deque = deque()
        connection = (
            HubConnectionBuilder()
            .with_url(f"{sim.rtc_url}/hubs/market?access_token={token}", options={"skip_negotiation": True, "access_token_factory": lambda: token})
            .with_hub_protocol(JsonHubProtocol(version=1))
            .build()
        )
        connection.on_open(lambda: connection.send("SubscribeContractTrades", [MES]))
        connection.on("GatewayTrade", received.append)
        connection.start()
        try:
            wait_until(lambda: len(received) >= 3, what="GatewayTrade events through signalrcore")
            contract_id, data = received[0]
            assert contract_id == MES
            first = data if isinstance(data, dict) else data[0]
            assert first["symbolId"] == "F.US.MES" and first["volume"] >= 1
        finally:
            stopper = threading.Thread(target=connection.stop, daemon=True)  # stop() can block: bound it
            stopper.start()
            stopper.join(3)


def test_silent_hub_client_is_closed():
    with SimulatorServer(synthetic=[MES], client_timeout=0.5) as sim:
        hub = RawHub(sim, login(sim))
        close = hub.wait_for(lambda m: m.get("type") == 7, timeout=3)
        assert "timeout" in close["error"].lower()
        with pytest.raises(ConnectionClosed):
            hub.next(timeout=3)


def test_synthetic_history_equals_the_live_trades(synthetic_sim):
    sim = synthetic_sim
    hub = RawHub(sim, login(sim))
    assert "error" not in hub.invoke("SubscribeContractTrades", MES, "1")
    trades = []
    deadline = time.monotonic() + 3.0  # three simulated minutes at speed 60
    while time.monotonic() < deadline:
        message = hub.next()
        if is_event("GatewayTrade")(message):
            trades += trades_of(message)
    hub.close()
    ts = np.array([pd.Timestamp(parse_ts(t["timestamp"])).value for t in trades])
    minute = 60 * 10**9
    lo, hi = (ts[0] // minute + 1) * minute, ts[-1] // minute * minute  # whole minutes seen live
    assert hi - lo >= minute
    inside = (ts >= lo) & (ts < hi)
    price, size = np.array([t["price"] for t in trades]), np.array([t["volume"] for t in trades])
    live = normalize_bars(aggregate_trades(MES, ts[inside], price[inside], size[inside], parse_timeframe("1m")))
    token = login(sim)
    iso = lambda ns: pd.Timestamp(ns, tz="UTC").isoformat()  # noqa: E731
    served = as_frame(retrieve(sim, token, start=iso(lo), end=iso(hi), unit=2, unit_number=1), 2, 1)
    pd.testing.assert_frame_equal(served, live)
    assert np.all(np.round(price / 0.25) * 0.25 == price), "prices on the tick grid"


def test_synthetic_market_keeps_cme_hours():
    friday_close = datetime(2025, 3, 21, 21, 0, tzinfo=timezone.utc)  # 17:00 New York
    with SimulatorServer(synthetic=[MES], start_time=datetime(2025, 3, 24, 12, tzinfo=timezone.utc)) as sim:
        bars = sim.history_bars(MES, "1m", start=datetime(2025, 3, 20, tzinfo=timezone.utc))
    local = bars["timestamp"].dt.tz_convert("America/New_York")
    assert not (local.dt.hour == 17).any(), "no trades in the daily halt"
    weekend = (bars["timestamp"] >= friday_close) & (bars["timestamp"] < friday_close + pd.Timedelta(hours=49))
    assert not weekend.any(), "no trades from Friday 17:00 to Sunday 18:00 New York"
    assert len(bars) > 1000


@pytest.mark.parametrize("timeframe", ["1m", "4h", "1d", "1w"])
def test_history_does_not_depend_on_how_the_window_is_walked(timeframe):
    # History is aggregated backwards in chunks cut at bar boundaries; one pass must agree.
    source = SyntheticSource([MES], seed=3, start_ns=to_ns(datetime(2025, 5, 14, 15, 7, 13, tzinfo=timezone.utc)))
    day = 86_400 * 10**9
    start, clock, tf = source.start_ns - 20 * day, source.start_ns, parse_timeframe(timeframe)
    walked = market.history_bars(source, MES, tf, start, clock + 30 * day, clock)
    one_pass = normalize_bars(source.trades_between(MES, start - day, clock).bars(MES, tf))
    one_pass = one_pass[one_pass["timestamp"].array.asi8 >= start].reset_index(drop=True)
    pd.testing.assert_frame_equal(walked, one_pass)
    latest_complete = market.history_bars(source, MES, tf, start, clock + 30 * day, clock, limit=5, include_partial=False)
    pd.testing.assert_frame_equal(latest_complete, one_pass.iloc[-6:-1].reset_index(drop=True))


# --------------------------------------------------------------------------- fault injection


def subscribed(sim: SimulatorServer) -> RawHub:
    hub = RawHub(sim, login(sim))
    assert "error" not in hub.invoke("SubscribeContractTrades", MES, "sub")
    hub.wait_for(is_event("GatewayTrade"))
    return hub


def test_drop_aborts_hub_connections(synthetic_sim):
    hub = subscribed(synthetic_sim)
    control = SimulatorControl(synthetic_sim.control_url)
    assert control.status()["connections"] == 1
    control.drop()
    with pytest.raises(ConnectionClosed):
        while True:
            hub.next(timeout=3)
    wait_until(lambda: control.status()["connections"] == 0, what="the dropped connection to be forgotten")


def test_close_sends_signalr_close_allowing_reconnect(synthetic_sim):
    hub = subscribed(synthetic_sim)
    SimulatorControl(synthetic_sim.control_url).close()
    close = hub.wait_for(lambda m: m.get("type") == 7)
    assert close["allowReconnect"] is True
    with pytest.raises(ConnectionClosed):
        hub.next(timeout=3)


def test_stall_sends_nothing_not_even_pings(synthetic_sim):
    hub = subscribed(synthetic_sim)
    SimulatorControl(synthetic_sim.control_url).stall(1.0)
    stalled_at = time.monotonic()
    arrivals = []
    while time.monotonic() - stalled_at < 2.0:
        try:
            hub.next(timeout=0.2)
            arrivals.append(time.monotonic() - stalled_at)
        except TimeoutError:
            pass
    gaps = np.diff([0.0] + arrivals)
    assert gaps.max() >= 0.8, "a silence as long as the stall"
    assert arrivals and arrivals[-1] > 1.0, "messages resume after the stall"
    hub.close()


def test_refuse_makes_new_hub_connections_fail_for_a_while(synthetic_sim):
    sim = synthetic_sim
    token = login(sim)
    SimulatorControl(sim.control_url).refuse(1.0)
    with pytest.raises(InvalidStatus) as refused:
        RawHub(sim, token)
    assert refused.value.response.status_code == 503
    assert api(sim, "Contract/search", {"searchText": "MES", "live": False}, token).status_code == 200
    time.sleep(1.1)
    RawHub(sim, token).close()


def classify(record: str) -> str:
    """Which malformed kind a GatewayTrade record is, or "good"."""
    try:
        message = json.loads(record)
    except ValueError:
        return "bad_json"
    arguments = message["arguments"]
    if len(arguments) != 2:
        return "wrong_arity"
    if arguments[0] != MES:
        return "unknown_contract"
    for trade in trades_of(message):
        if "price" not in trade or "timestamp" not in trade:
            return "missing_fields"
        if not isinstance(trade["price"], float) or not isinstance(trade["volume"], (int, float)):
            return "wrong_types"
        if math.isnan(trade["price"]):
            return "nan_price"
        if trade["price"] < 0:
            return "negative_price"
        if math.isnan(trade["volume"]):
            return "nan_size"
        if trade["volume"] < 0:
            return "negative_size"
        try:
            parse_ts(trade["timestamp"])
        except ValueError:
            return "bad_timestamp"
    return "good"


def test_malformed_events_are_interleaved_with_good_ones(synthetic_sim):
    hub = subscribed(synthetic_sim)
    SimulatorControl(synthetic_sim.control_url).malformed(count=len(MALFORMED_KINDS))
    kinds = []
    deadline = time.monotonic() + 10
    while len(set(kinds) - {"good"}) < len(MALFORMED_KINDS) and time.monotonic() < deadline:
        record = hub.next_raw()
        if "GatewayTrade" in record:
            kinds.append(classify(record))
    hub.close()
    assert set(kinds) == set(MALFORMED_KINDS) | {"good"}
    first_bad, last_bad = kinds.index(next(k for k in kinds if k != "good")), max(i for i, k in enumerate(kinds) if k != "good")
    assert "good" in kinds[first_bad:last_bad], "bad events are interleaved with good ones"


def test_expire_tokens_invalidates_rest_and_closes_the_hub(synthetic_sim):
    sim = synthetic_sim
    token = login(sim)
    hub = subscribed(sim)
    SimulatorControl(sim.control_url).expire_tokens()
    assert "error" in hub.wait_for(lambda m: m.get("type") == 7)
    assert api(sim, "Contract/search", {"searchText": "MES", "live": False}, token).status_code == 401
    with pytest.raises(InvalidStatus):
        RawHub(sim, token)
    assert api(sim, "Contract/search", {"searchText": "MES", "live": False}, login(sim)).status_code == 200


def test_logout_event_reaches_hub_clients(synthetic_sim):
    hub = subscribed(synthetic_sim)
    SimulatorControl(synthetic_sim.control_url).logout()
    assert hub.wait_for(is_event("GatewayLogout"))["arguments"] == []
    hub.close()


def test_rest_errors_and_slow_answers(synthetic_sim):
    sim = synthetic_sim
    token = login(sim)
    control = SimulatorControl(sim.control_url)
    search = {"searchText": "MES", "live": False}
    control.rest_errors(status=500, count=2)
    assert [api(sim, "Contract/search", search, token).status_code for _ in range(3)] == [500, 500, 200]
    control.rest_errors(status=429, retry_after=2)
    assert api(sim, "Contract/search", search, token).headers["Retry-After"] == "2"
    control.rest_errors(status=429, retry_after=None)
    limited = api(sim, "Contract/search", search, token)
    assert limited.status_code == 429 and "Retry-After" not in limited.headers
    control.rest_errors(status=None, delay=0.5)
    started = time.monotonic()
    assert api(sim, "Contract/search", search, token).status_code == 200
    assert time.monotonic() - started >= 0.5
    with pytest.raises(SimulatorControlError):
        control.rest_errors(status=200)


def test_pause_resume_and_speed_move_the_clock(synthetic_sim):
    sim = synthetic_sim
    control = SimulatorControl(sim.control_url)
    control.pause()
    paused_at = sim.clock()
    time.sleep(0.3)
    assert sim.clock() == paused_at and control.status()["paused"]
    control.resume()
    wait_until(lambda: sim.clock() > paused_at, what="the clock to move again")
    assert control.speed(3600)["speed"] == 3600
    before = sim.clock()
    time.sleep(0.5)
    assert (sim.clock() - before).total_seconds() > 900, "an hour of market per real second"
    with pytest.raises(SimulatorControlError):
        control.speed("max")  # the synthetic market has no end to run to
    with pytest.raises(SimulatorControlError):
        control.speed(-1)
    with pytest.raises(SimulatorControlError):
        control._post("nonsense")


def test_a_failing_clock_step_is_logged_counted_and_skipped(caplog):
    """The clock's step raising (a bug in publishing) must not end the clock task unseen: it is
    logged with the step and the clock, counted, and the clock moves on past it."""
    start_ns = to_ns(datetime(2025, 6, 2, 14, tzinfo=timezone.utc))
    clock = MarketClock(SyntheticSource([MES], 0, start_ns), 600.0, wait_for_subscriber=False)
    targets: list[int] = []

    async def advance(target_ns: int) -> None:
        targets.append(target_ns)
        if len(targets) == 1:
            raise RuntimeError("publishing failed")
        clock.now_ns = target_ns

    async def finished_tick(_now: float) -> None:
        raise AssertionError("a synthetic market never finishes")

    async def run_briefly() -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(clock.run(advance, finished_tick), 0.5)

    with caplog.at_level(logging.ERROR, logger="projectx.simulator"):
        asyncio.run(run_briefly())
    assert clock.errors == 1
    assert len(targets) > 2 and targets == sorted(targets) and targets[1] > targets[0]  # moved on past the failed step
    assert clock.now_ns == targets[-1] > start_ns
    failures = [r for r in caplog.records if "simulator_step_failed" in r.getMessage()]
    assert len(failures) == 1 and "step=advance" in failures[0].getMessage()
    assert "RuntimeError: publishing failed" in caplog.text  # with its traceback


def test_status_reports_connections_and_subscriptions(synthetic_sim):
    hub = subscribed(synthetic_sim)
    control = SimulatorControl(synthetic_sim.control_url)
    # trades_sent counts a broadcast once its sends return, which can be after the client read it
    wait_until(lambda: control.status()["trades_sent"] > 0, what="the received trades to be counted as sent")
    status = control.status()
    assert status["connections"] == 1 and status["subscriptions"]["trades"] == {MES: 1}
    assert status["trades_published"] > 0 and status["trades_sent"] > 0 and status["mode"] == "synthetic"
    assert synthetic_sim.trades_published >= status["trades_published"]
    hub.close()


# --------------------------------------------------------------------------- construction and CLI


def test_default_sample_can_be_relocated_and_missing_files_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECTX_SAMPLE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="PROJECTX_SAMPLE_DIR"):
        SimulatorServer()
    with pytest.raises(FileNotFoundError, match="replay file not found"):
        SimulatorServer(replay=tmp_path / "missing.csv")
    with pytest.raises(ValueError):
        SimulatorServer(synthetic=[MES], speed="max")


def simulate_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    commands.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["--speed", "fast"],
        ["--speed", "0"],
        ["--synthetic", "MES"],
        ["--replay", "/nonexistent.csv"],
        ["--replay", "x.csv", "--synthetic", MES],
        ["--port", "70000"],
    ],
)
def test_cli_usage_errors(argv):
    with pytest.raises(UsageError):
        commands.run(simulate_args(*argv))


def test_cli_prints_urls_and_exits_cleanly_on_sigterm():
    script = (
        "import argparse, sys\n"
        "from projectx_pipeline.gateway.simulator import commands\n"
        "parser = argparse.ArgumentParser(); commands.add_arguments(parser)\n"
        "sys.exit(commands.run(parser.parse_args(sys.argv[1:])))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, "--port", "0", "--synthetic", MES, "--no-rate-limit"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        urls = dict(part.split("=", 1) for part in process.stdout.readline().split())
        assert urls["PROJECTX_API_URL"].startswith("http://127.0.0.1:") and urls["PROJECTX_RTC_URL"] == urls["PROJECTX_API_URL"]
        assert process.stdout.readline().strip() == f"control: {urls['PROJECTX_API_URL']}/control"
        response = requests.post(f"{urls['PROJECTX_API_URL']}/api/Auth/loginKey", json={"userName": "u", "apiKey": "k"}, timeout=5)
        assert response.json()["success"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()
