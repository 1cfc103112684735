"""The supervised market hub against the real simulator over sockets, through every injected fault."""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import timezone

import pytest
import requests

from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import Quote, Trade
from projectx_pipeline.gateway import GatewayClient, GatewayConfig, HubEvent, MarketHub
from projectx_pipeline.gateway.hub import SIGNALRCORE_LOGGER
from projectx_pipeline.gateway.simulator.faults import MALFORMED_KINDS
from projectx_pipeline.gateway.simulator.server import SimulatorServer

from .support.market import MES

pytestmark = pytest.mark.timeout(60)

UNKNOWN = "CON.F.US.ZZZ.Z99"
# Small timings so that every recovery happens within seconds.
FAST = dict(stale_after=5.0, backoff_base=0.2, backoff_cap=1.0, stop_timeout=2.0, connect_timeout=3.0)


def start_simulator(**options) -> SimulatorServer:
    # 300 × real time: a steady flow of trades for the whole test, starting at the first subscription.
    settings = dict(speed=300.0, wait_for_subscriber=True, ping_interval=1.0)
    return SimulatorServer(**{**settings, **options}).start()


@pytest.fixture
def sim():
    server = start_simulator()
    yield server
    server.stop()


@pytest.fixture
def client(sim):
    config = GatewayConfig(sim.api_url, sim.rtc_url, "tester", "secret-api-key", use_simulator=True)
    with GatewayClient(config, session=requests.Session()) as gateway:
        yield gateway


@pytest.fixture
def hubs():
    """Hubs started by a test, stopped at its end whatever happens."""
    started: list[MarketHub] = []
    yield started
    for hub in started:
        hub.stop()


class Feed:
    """Reads a hub's output queue in the test thread and answers questions about what arrived."""

    def __init__(self, out: queue.Queue):
        self.out = out
        self.items: list = []

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; got {self.summary()}")
            try:
                self.items.append(self.out.get(timeout=min(remaining, 0.1)))
            except queue.Empty:
                pass

    def events(self, kind: str) -> list[HubEvent]:
        return [i for i in self.items if isinstance(i, HubEvent) and i.kind == kind]

    def trades(self) -> list[Trade]:
        return [i for i in self.items if isinstance(i, Trade)]

    def trades_after_connect(self, number: int) -> list[Trade]:
        """Trades received after the `number`-th 'connected' event (1-based)."""
        seen = 0
        trades = []
        for item in self.items:
            if isinstance(item, HubEvent) and item.kind == "connected":
                seen += 1
            elif isinstance(item, Trade) and seen >= number:
                trades.append(item)
        return trades

    def wait_for_trades_after_connect(self, number: int, count: int = 10, timeout: float = 20.0) -> None:
        self.wait(lambda: len(self.trades_after_connect(number)) >= count, timeout, f"{count} trades after connection {number}")

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for item in self.items:
            key = f"HubEvent:{item.kind}" if isinstance(item, HubEvent) else type(item).__name__
            counts[key] = counts.get(key, 0) + 1
        return counts


def start_hub(hubs, client: GatewayClient, contracts=(MES,), **options) -> tuple[MarketHub, Feed]:
    out: queue.Queue = queue.Queue()
    hub = client.market_hub(list(contracts), out, **{**FAST, **options})
    hubs.append(hub)
    hub.start()
    return hub, Feed(out)


def signalr_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("projectx-hub", "projectx-market-hub", "Signalrcore"))]


# --------------------------------------------------------------------------- the feed


def test_trades_and_quotes_arrive_after_a_connected_event(sim, control, client, hubs):
    hub, feed = start_hub(hubs, client)
    feed.wait_for_trades_after_connect(1, count=50)
    first = feed.items[0]
    assert isinstance(first, HubEvent) and first.kind == "connected"
    trades = feed.trades()
    assert all(t.contract_id == MES and t.size > 0 and t.price > 0 and t.side in (0, 1) for t in trades)
    assert all(t.timestamp.tzinfo is timezone.utc for t in trades)
    assert [t.timestamp for t in trades] == sorted(t.timestamp for t in trades)
    feed.wait(lambda: any(isinstance(i, Quote) for i in feed.items), 5, "a quote")
    status = control.status()
    assert status["connections"] == 1
    assert status["subscriptions"]["trades"] == {MES: 1} and status["subscriptions"]["quotes"] == {MES: 1}
    # Everything the simulator sent was received, parsed and delivered: nothing lost, nothing extra.
    control.pause()
    time.sleep(0.5)
    feed.wait(lambda: len(feed.trades()) == hub.stats["trades"], 5, "the queue to drain")
    assert hub.stats["trades"] == control.status()["trades_sent"]
    stats = hub.stats
    assert stats["state"] == "connected" and stats["connects"] == 1 and stats["reconnects"] == 0
    assert stats["malformed"] == 0 and stats["messages"] >= stats["trades"] // 10
    assert stats["last_message_at"].tzinfo is timezone.utc


def test_a_refused_subscription_does_not_stop_the_feed(sim, client, hubs):
    hub, feed = start_hub(hubs, client, contracts=(MES, UNKNOWN))
    feed.wait_for_trades_after_connect(1, count=20)
    assert hub.stats["errors"] == 2  # the trades and quotes subscriptions of the unknown contract
    assert {t.contract_id for t in feed.trades()} == {MES}


def test_contract_ids_are_validated_up_front():
    with pytest.raises(DomainError):
        MarketHub("http://127.0.0.1:1", lambda: "token", ["MES"], queue.Queue())
    with pytest.raises(ValueError):
        MarketHub("http://127.0.0.1:1", lambda: "token", [], queue.Queue())


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("fault", ["drop", "close"])
def test_resubscribes_after_the_connection_is_lost(sim, control, client, hubs, fault):
    hub, feed = start_hub(hubs, client)
    feed.wait_for_trades_after_connect(1)
    getattr(control, fault)()
    feed.wait_for_trades_after_connect(2)
    assert [e.kind for e in feed.items if isinstance(e, HubEvent)] == ["connected", "disconnected", "connected"]
    assert hub.stats["reconnects"] == 1 and hub.stats["connects"] == 2
    # One connection, one subscription: signalrcore did not reconnect on its own next to ours.
    status = control.status()
    assert status["connections"] == 1 and status["subscriptions"]["trades"] == {MES: 1}


def test_recovers_after_the_gateway_refused_connections(sim, control, client, hubs, caplog):
    # signalrcore's own reconnect dies for good when its first retry is refused (trap 3).
    caplog.set_level(logging.INFO, logger="projectx.gateway")
    hub, feed = start_hub(hubs, client)
    feed.wait_for_trades_after_connect(1)
    control.refuse(8)
    refused_at = time.monotonic()
    control.drop()
    feed.wait_for_trades_after_connect(2, timeout=25)
    assert time.monotonic() - refused_at >= 7.5
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=hub_connect_failed")]
    assert len(refusals) >= 3 and all("503 Service Unavailable" in line for line in refusals)
    assert hub.stats["connects"] == 2 and control.status()["connections"] == 1


def test_watchdog_rebuilds_a_silent_connection(sim, control, client, hubs):
    hub, feed = start_hub(hubs, client, stale_after=3.0, connect_timeout=2.0)
    feed.wait_for_trades_after_connect(1)
    control.stall(5)
    stalled_at = time.monotonic()
    feed.wait(lambda: feed.events("disconnected"), 10, "the watchdog")
    assert 2.5 <= time.monotonic() - stalled_at <= 6.0
    assert feed.events("disconnected")[0].detail.startswith("stale: no message for")
    feed.wait_for_trades_after_connect(2, timeout=20)
    assert hub.stats["connects"] == 2 and control.status()["connections"] == 1


def test_keep_alive_pings_keep_a_quiet_connection_open(hubs):
    # The simulator drops a client silent for 2 s; only signalrcore's pinger keeps us connected.
    sim = start_simulator(client_timeout=2.0)
    try:
        config = GatewayConfig(sim.api_url, sim.rtc_url, "tester", "key", use_simulator=True)
        with GatewayClient(config) as client:
            hub, feed = start_hub(hubs, client, keep_alive_interval=0.5)
            feed.wait_for_trades_after_connect(1)
            time.sleep(6)
            assert hub.stats["connects"] == 1 and feed.events("disconnected") == []
    finally:
        sim.stop()


def test_malformed_events_are_counted_and_the_feed_goes_on(sim, control, client, hubs, caplog):
    caplog.set_level(logging.WARNING, logger="projectx.gateway")
    hub, feed = start_hub(hubs, client)
    feed.wait_for_trades_after_connect(1)
    injected = 2 * len(MALFORMED_KINDS)
    control.malformed(injected)
    feed.wait(lambda: len(feed.events("malformed")) >= injected, 15, "the malformed events")
    trades_before = len(feed.trades())
    feed.wait(lambda: len(feed.trades()) >= trades_before + 20, 15, "trades after the malformed ones")
    assert hub.stats["malformed"] == injected and len(feed.events("malformed")) == injected
    assert hub.stats["connects"] == 1 and feed.events("disconnected") == []
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=hub_malformed")]
    assert any("record is not JSON" in line and 'raw="{\\"type\\":1' in line for line in lines)
    assert any("not subscribed" in line for line in lines)


def test_logout_reconnects_with_a_fresh_login_and_tokens_stay_out_of_logs(sim, control, client, hubs, caplog):
    caplog.set_level(logging.DEBUG)  # signalrcore logs its URL, with the token, at debug level
    # ...and configure_logging (run in-process by CLI tests) caps signalrcore's logger at WARNING
    caplog.set_level(logging.DEBUG, logger=SIGNALRCORE_LOGGER)
    tokens: list[str] = []

    def token_provider() -> str:
        tokens.append(client.token())
        return tokens[-1]

    out: queue.Queue = queue.Queue()
    hub = MarketHub(sim.rtc_url, token_provider, [MES], out, token_rejected=client.invalidate_token, **FAST)
    hubs.append(hub)
    hub.start()
    feed = Feed(out)
    feed.wait_for_trades_after_connect(1)
    control.logout()
    feed.wait_for_trades_after_connect(2)
    assert [e.kind for e in feed.items if isinstance(e, HubEvent)] == ["connected", "logout", "disconnected", "connected"]
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    hub.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "access_token=***" in logged  # signalrcore's own lines went through the redaction
    assert all(token not in logged for token in tokens)


def test_expired_tokens_are_replaced_after_the_hub_refuses_them(sim, control, client, hubs):
    hub, feed = start_hub(hubs, client)
    feed.wait_for_trades_after_connect(1)
    first = client.token()
    control.expire_tokens()
    feed.wait_for_trades_after_connect(2, timeout=20)
    assert client.token() != first
    assert hub.stats["connects"] == 2


# --------------------------------------------------------------------------- stopping


def test_stop_is_bounded_even_when_the_gateway_is_silent(sim, control, client, hubs):
    hub, feed = start_hub(hubs, client, stale_after=30.0, stop_timeout=2.0)
    feed.wait_for_trades_after_connect(1)
    control.stall(30)
    time.sleep(0.5)
    started = time.monotonic()
    hub.stop()
    assert time.monotonic() - started < 3.0
    assert hub.stats["state"] == "stopped"
    feed.wait(lambda: feed.events("disconnected"), 2, "the disconnected event")
    assert feed.events("disconnected")[0].detail == "stopping"
    deadline = time.monotonic() + 3
    while signalr_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert signalr_threads() == []
