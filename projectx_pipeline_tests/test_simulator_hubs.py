"""The simulator's SignalR hubs as public SDKs meet them: negotiation, `/hubs/user`, strict handshake,
and the stock `signalrcore` and `pysignalr` clients over real sockets."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from projectx_pipeline.gateway.protocol import (
    MARKET_HUB_PATH,
    SUBSCRIBE_ACCOUNT_TRADES,
    SUBSCRIBE_ACCOUNTS,
    SUBSCRIBE_ORDERS,
    SUBSCRIBE_POSITIONS,
    SUBSCRIBE_TRADES,
    TRADE_EVENT,
    UNSUBSCRIBE_ACCOUNT_TRADES,
    UNSUBSCRIBE_ACCOUNTS,
    UNSUBSCRIBE_ORDERS,
    UNSUBSCRIBE_POSITIONS,
    USER_HUB_PATH,
)
from projectx_pipeline.gateway.protocol import RECORD_SEPARATOR as RS
from projectx_pipeline.gateway.simulator.accounts import SIMULATED_ACCOUNTS
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.server import SimulatorServer

from .support.hub_wire import RawHub
from .support.market import MES
from .support.simulator import login, start_sim
from .support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

HUBS = (MARKET_HUB_PATH, USER_HUB_PATH)
ACCOUNT = SIMULATED_ACCOUNTS[0].id
USER_SUBSCRIPTIONS = (SUBSCRIBE_ORDERS, SUBSCRIBE_POSITIONS, SUBSCRIBE_ACCOUNT_TRADES)
WEBSOCKETS_ONLY = [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}]


@pytest.fixture(scope="module")
def sim():
    server = SimulatorServer(speed=600, rate_limits=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token(sim) -> str:
    return login(sim)


def negotiate(sim: SimulatorServer, path: str, token: str | None, query: str = "", headers: dict | None = None) -> requests.Response:
    auth = {"access_token": token} if token else {}
    return requests.post(f"{sim.rtc_url}{path}/negotiate{query}", params=auth, headers=headers, timeout=5)


def upgrade_status(sim: SimulatorServer, path: str, token: str, connection_id: str) -> tuple[int, str]:
    """The HTTP status and body refusing a WebSocket upgrade with `id`."""
    with pytest.raises(InvalidStatus) as refused:
        RawHub(sim, token, path=path, connection_id=connection_id)
    response = refused.value.response
    return response.status_code, response.body.decode()


def stop_bounded(connection) -> None:
    """signalrcore's stop() can block until the server sends something (trap 6): bound it."""
    stopper = threading.Thread(target=connection.stop, daemon=True)
    stopper.start()
    stopper.join(3)


# --------------------------------------------------------------------------- negotiate


@pytest.mark.parametrize("path", HUBS)
def test_negotiate_versions_answer_asp_net_shapes(sim, token, path):
    v0 = negotiate(sim, path, token)
    assert v0.status_code == 200 and v0.headers["Content-Type"].startswith("application/json")
    body = v0.json()
    assert set(body) == {"negotiateVersion", "connectionId", "availableTransports"}, "v0 has no connectionToken"
    assert body["negotiateVersion"] == 0 and isinstance(body["connectionId"], str) and len(body["connectionId"]) >= 16
    assert body["availableTransports"] == WEBSOCKETS_ONLY

    for asked in ("1", "7"):  # a newer client gets the newest version the server has, 1
        body = negotiate(sim, path, token, f"?negotiateVersion={asked}").json()
        assert set(body) == {"negotiateVersion", "connectionId", "connectionToken", "availableTransports"}
        assert body["negotiateVersion"] == 1 and body["availableTransports"] == WEBSOCKETS_ONLY
        assert isinstance(body["connectionToken"], str) and body["connectionToken"] != body["connectionId"]

    bad = negotiate(sim, path, token, "?negotiateVersion=one")
    assert bad.status_code == 400 and "'one'" in bad.text and "expected" in bad.text
    assert requests.get(f"{sim.rtc_url}{path}/negotiate", params={"access_token": token}, timeout=5).status_code == 405


@pytest.mark.parametrize("path", HUBS)
def test_negotiate_needs_a_valid_token_like_the_upgrade(sim, token, path):
    assert negotiate(sim, path, None).status_code == 401
    assert negotiate(sim, path, "not-a-token").status_code == 401
    assert negotiate(sim, path, None, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert negotiate(sim, path, None, headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize("path", HUBS)
def test_plain_get_on_a_hub_names_the_two_ways_in(sim, token, path):
    answer = requests.get(f"{sim.rtc_url}{path}", params={"access_token": token}, timeout=5)
    assert answer.status_code == 400
    assert "WebSocket upgrade" in answer.text and f"POST {path}/negotiate" in answer.text


# --------------------------------------------------------------------------- negotiated ids


@pytest.mark.parametrize("path", HUBS)
def test_negotiated_id_opens_one_connection_on_its_own_hub(sim, token, path):
    other_hub = USER_HUB_PATH if path == MARKET_HUB_PATH else MARKET_HUB_PATH
    v1 = negotiate(sim, path, token, "?negotiateVersion=1").json()
    assert upgrade_status(sim, other_hub, token, v1["connectionToken"]) == (404, "No Connection with that ID")
    assert upgrade_status(sim, path, token, v1["connectionId"])[0] == 404, "v1 connects with the token, not the connection id"
    hub = RawHub(sim, token, path=path, connection_id=v1["connectionToken"])
    assert hub.handshake == "{}", "a failed attempt elsewhere does not use the id up"
    assert upgrade_status(sim, path, token, v1["connectionToken"])[0] == 409, "a second WebSocket on one connection"
    hub.close()
    wait_for(lambda: upgrade_status(sim, path, token, v1["connectionToken"])[0] == 404, 5, "the closed connection's id to be gone")

    v0 = negotiate(sim, path, token).json()
    hub = RawHub(sim, token, path=path, connection_id=v0["connectionId"])
    assert hub.handshake == "{}", "v0 connects with the connection id"
    hub.close()
    assert upgrade_status(sim, path, token, "never-negotiated") == (404, "No Connection with that ID")


def test_negotiated_id_expires_unused():
    with SimulatorServer(speed=600, rate_limits=False, negotiate_timeout=0.5) as sim:
        token = login(sim)
        negotiated_at = time.monotonic()
        left_unused = negotiate(sim, MARKET_HUB_PATH, token).json()["connectionId"]
        used_at_once = negotiate(sim, MARKET_HUB_PATH, token).json()["connectionId"]
        RawHub(sim, token, connection_id=used_at_once).close()
        assert time.monotonic() - negotiated_at < 0.5, "the control connection came within the timeout"
        time.sleep(max(0.0, negotiated_at + 0.6 - time.monotonic()))  # let the 0.5 s pass with the other id unused
        assert upgrade_status(sim, MARKET_HUB_PATH, token, left_unused) == (404, "No Connection with that ID")


@pytest.mark.parametrize("path", HUBS)
def test_skipping_negotiation_still_connects(sim, token, path):
    hub = RawHub(sim, token, path=path)
    assert hub.handshake == "{}"
    hub.close()


def test_refuse_fault_refuses_negotiation_and_both_hubs():
    with SimulatorServer(speed=600, rate_limits=False) as sim:
        token = login(sim)
        SimulatorControl(sim.control_url).refuse(30)
        for path in HUBS:
            refused = negotiate(sim, path, token)
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
            with pytest.raises(InvalidStatus) as upgrade:
                RawHub(sim, token, path=path)
            assert upgrade.value.response.status_code == 503


# --------------------------------------------------------------------------- the handshake


@pytest.mark.parametrize("path", HUBS)
def test_handshake_version_0_is_refused_with_asp_net_error(sim, token, path):
    connection_token = negotiate(sim, path, token, "?negotiateVersion=1").json()["connectionToken"]
    hub = RawHub(sim, token, version=0, path=path, connection_id=connection_token)
    assert hub.handshake == '{"error":"The server does not support version 0 of the \'json\' protocol."}'
    with pytest.raises(ConnectionClosed):
        hub.next(timeout=3)


# --------------------------------------------------------------------------- /hubs/user


def test_user_hub_methods_complete_and_name_bad_arguments(sim, token):
    hub = RawHub(sim, token, path=USER_HUB_PATH)
    assert "error" not in hub.invoke(SUBSCRIBE_ACCOUNTS, [], "accounts")
    for i, method in enumerate(USER_SUBSCRIPTIONS):
        assert "error" not in hub.invoke(method, ACCOUNT, f"ok{i}"), method
        unknown = hub.invoke(method, 9999, f"unknown{i}")["error"]
        assert method in unknown and "9999" in unknown and str(ACCOUNT) in unknown, unknown
        as_text = hub.invoke(method, str(ACCOUNT), f"text{i}")["error"]
        assert f'"{ACCOUNT}"' in as_text and "whole-number" in as_text, as_text
        arity = hub.invoke(method, [ACCOUNT, ACCOUNT], f"arity{i}")["error"]
        assert "one argument, the account id" in arity and f"[{ACCOUNT}, {ACCOUNT}]" in arity, arity
    assert "no arguments" in hub.invoke(SUBSCRIBE_ACCOUNTS, [ACCOUNT], "accounts-arg")["error"]
    assert "Unknown hub method 'SubscribeContractTrades'" in hub.invoke(SUBSCRIBE_TRADES, MES, "market-method")["error"]

    user_hub = SimulatorControl(sim.control_url).status()["user_hub"]
    assert user_hub["connections"] == 1
    assert user_hub["subscriptions"] == {
        "accounts": {"all": 1},
        "orders": {str(ACCOUNT): 1},
        "positions": {str(ACCOUNT): 1},
        "trades": {str(ACCOUNT): 1},
    }
    for i, method in enumerate((UNSUBSCRIBE_ORDERS, UNSUBSCRIBE_POSITIONS, UNSUBSCRIBE_ACCOUNT_TRADES)):
        assert "error" not in hub.invoke(method, ACCOUNT, f"un{i}")
    assert "error" not in hub.invoke(UNSUBSCRIBE_ACCOUNTS, [], "un-accounts")
    assert SimulatorControl(sim.control_url).status()["user_hub"]["subscriptions"] == {"accounts": {}, "orders": {}, "positions": {}, "trades": {}}
    hub.close()


def test_user_hub_pings_and_closes_silent_clients():
    with SimulatorServer(speed=600, rate_limits=False, ping_interval=0.2, client_timeout=1.0) as sim:
        hub = RawHub(sim, login(sim), path=USER_HUB_PATH)
        assert hub.wait_for(lambda m: m.get("type") == 6)["type"] == 6
        close = hub.wait_for(lambda m: m.get("type") == 7, timeout=5)
        assert "timeout" in close["error"].lower()


# --------------------------------------------------------------------------- stock public clients


def test_stock_signalrcore_negotiates_version_0_and_then_handshakes_version_0():
    """Evidence for the report: signalrcore 1.0.2 negotiates without `negotiateVersion` (so v0),
    then builds its hub protocol with the *negotiate* version as the *JSON protocol* version
    (protocol_factory.py), so its handshake announces version 0, which the gateway refuses."""
    from signalrcore.hub_connection_builder import HubConnectionBuilder

    sim, _control = start_sim(None, 600)
    try:
        token = login(sim)
        closed = threading.Event()
        received: deque = deque()
        connection = HubConnectionBuilder().with_url(f"{sim.rtc_url}{MARKET_HUB_PATH}", options={"access_token_factory": lambda: token}).build()
        connection.on_open(lambda: connection.send(SUBSCRIBE_TRADES, [MES]))
        connection.on_close(closed.set)
        connection.on(TRADE_EVENT, received.append)
        connection.start()
        try:
            assert connection.protocol.version == 0, "the negotiate version became the JSON protocol version"
            assert closed.wait(5), "the server refused the version 0 handshake and closed"
            assert not received
        finally:
            stop_bounded(connection)
    finally:
        sim.stop()


def signalrcore_negotiating(url: str, token: str):
    """A stock signalrcore connection with negotiation on; its one deviation from the defaults is
    the JSON protocol at version 1 (see the test above), as the platform's own daemon passes."""
    from signalrcore.hub_connection_builder import HubConnectionBuilder
    from signalrcore.protocol.json_hub_protocol import JsonHubProtocol

    return HubConnectionBuilder().with_url(url, options={"access_token_factory": lambda: token}).with_hub_protocol(JsonHubProtocol(version=1)).build()


def test_signalrcore_negotiating_receives_trades_and_user_hub_completions():
    sim, control = start_sim(None, 600)
    try:
        token = login(sim)
        received: deque = deque()
        market = signalrcore_negotiating(f"{sim.rtc_url}{MARKET_HUB_PATH}", token)
        market.on_open(lambda: market.send(SUBSCRIBE_TRADES, [MES]))
        market.on(TRADE_EVENT, received.append)
        completions: dict[str, object] = {}
        user = signalrcore_negotiating(f"{sim.rtc_url}{USER_HUB_PATH}", token)

        def subscribe_user() -> None:
            user.send(SUBSCRIBE_ACCOUNTS, [], on_invocation=lambda m: completions.__setitem__(SUBSCRIBE_ACCOUNTS, m))
            for method in USER_SUBSCRIPTIONS:
                user.send(method, [ACCOUNT], on_invocation=lambda m, method=method: completions.__setitem__(method, m))

        user.on_open(subscribe_user)
        market.start()
        user.start()
        try:
            wait_for(lambda: len(received) >= 3, 15, "GatewayTrade events through a negotiated signalrcore connection")
            contract_id, data = received[0]
            first = data if isinstance(data, dict) else data[0]
            assert contract_id == MES and first["symbolId"] == "F.US.MES" and first["volume"] >= 1
            wait_for(lambda: len(completions) == 4, 10, lambda: f"four user hub completions, got {sorted(completions)}")
            assert all(getattr(m, "error", None) is None for m in completions.values()), completions
            status = control.status()
            assert status["connections"] == 1 and status["user_hub"]["connections"] == 1
            assert status["user_hub"]["subscriptions"]["orders"] == {str(ACCOUNT): 1}
        finally:
            stop_bounded(market)
            stop_bounded(user)
    finally:
        sim.stop()


def test_pysignalr_with_its_defaults_negotiates_and_receives_trades():
    from pysignalr.client import SignalRClient

    sim, _control = start_sim(None, 600)
    try:
        token = login(sim)

        async def run() -> tuple[list, list]:
            # The token in the query string, as the gateway documents: pysignalr 1.3.3 applies its
            # access_token_factory only after negotiating, so negotiation would get 401.
            client = SignalRClient(f"{sim.rtc_url}{MARKET_HUB_PATH}?access_token={token}")
            completions: list = []
            trades: list = []
            got_trades = asyncio.Event()

            async def on_completion(message) -> None:
                completions.append(message)

            async def on_open() -> None:
                await client.send(SUBSCRIBE_TRADES, [MES], on_invocation=on_completion)

            async def on_trade(arguments) -> None:
                trades.append(arguments)
                if len(trades) >= 3:
                    got_trades.set()

            client.on_open(on_open)
            client.on(TRADE_EVENT, on_trade)
            running = asyncio.create_task(client.run())
            try:
                await asyncio.wait_for(got_trades.wait(), 15)
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            return completions, trades

        completions, trades = asyncio.run(run())
        assert len(completions) == 1 and completions[0].error is None
        contract_id, data = trades[0]
        assert contract_id == MES and (data if isinstance(data, dict) else data[0])["symbolId"] == "F.US.MES"
    finally:
        sim.stop()


# --------------------------------------------------------------------------- slow consumers


def test_a_client_that_stops_reading_is_dropped_and_the_market_goes_on():
    """A subscribed client that reads nothing must not hold the market: at speed "max" its socket
    buffer fills within moments; once a send has waited `send_timeout` it is dropped, and the
    clock, the other client's feed and the pings go on (before, the whole simulator froze)."""
    with SimulatorServer(speed="max", rate_limits=False, wait_for_subscriber=True, send_timeout=1.0, ping_interval=0.5) as sim:
        control = SimulatorControl(sim.control_url)
        token = login(sim)
        stuck = RawHub(sim, token)
        assert "error" not in stuck.invoke(SUBSCRIBE_TRADES, MES, "stuck")  # ...and never reads again
        reader = RawHub(sim, token)
        received = {"trades": 0, "pings": 0}
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                try:
                    message = reader.next(timeout=1.0)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return
                if message is not None and message.get("target") == TRADE_EVENT:
                    received["trades"] += 1
                elif message is not None and message.get("type") == 6:
                    received["pings"] += 1

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        try:
            reader.ws.send(json.dumps({"type": 1, "invocationId": "reader", "target": SUBSCRIBE_TRADES, "arguments": [MES]}) + RS)
            wait_for(lambda: control.status()["slow_consumers_dropped"] == 1, 30, "the client that stopped reading to be dropped")
            wait_for(lambda: control.status()["connections"] == 1, 10, "the dropped client's connection to be gone")
            trades, pings, sent = received["trades"], received["pings"], control.status()["trades_sent"]
            wait_for(lambda: received["trades"] > trades + 1000, 20, "the reading client's trades to go on after the drop")
            wait_for(lambda: received["pings"] > pings, 5, "the pings to go on after the drop")
            status = control.status()
            assert status["trades_sent"] > sent
            assert status["slow_consumers_dropped"] == 1  # the client that reads is never dropped
            assert status["clock_errors"] == 0
        finally:
            done.set()
            reading.join(5)
            reader.close()
