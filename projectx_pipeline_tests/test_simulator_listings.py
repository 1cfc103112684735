"""The simulator's listing mode: several contract months per symbol, listed relative to its clock,
rolling and expiring by the rules of domain/rolls.py, over real sockets and real HTTP."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import requests

from projectx_pipeline.domain.aggregation import aggregate_trades
from projectx_pipeline.domain.market import normalize_bars
from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import CalendarRoll, ContractMonth, expiry_instant, front_month_at, roll_instant
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.domain.timestamps import from_ns, to_ns
from projectx_pipeline.errors import UsageError
from projectx_pipeline.gateway.client import GatewayClient
from projectx_pipeline.gateway.config import GatewayConfig
from projectx_pipeline.gateway.errors import GatewayError
from projectx_pipeline.gateway.protocol import RECORD_SEPARATOR as RS
from projectx_pipeline.gateway.simulator import commands
from projectx_pipeline.gateway.simulator.clock import TICK_SECONDS
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.listing_source import ListingSource
from projectx_pipeline.gateway.simulator.listings import BASIS_PER_MONTH, NS_PER_MONTH, SymbolListing
from projectx_pipeline.gateway.simulator.server import SimulatorServer

from .support.hub_wire import RawHub
from .support.simulator import api, login

pytestmark = pytest.mark.timeout(90)

CALENDAR = CalendarDays()  # the NYSE's days, shared so that each year is looked up once
ROLL = CalendarRoll()
SYMBOLS = ["MES", "MNQ"]
# A Tuesday in the New York cash session: H26 is the front month, U25 and Z25 have expired.
START = datetime(2026, 3, 10, 15, 0, tzinfo=timezone.utc)
MINUTE_NS = 60 * 10**9
MES_TICK, MES_BASE_PRICE = 0.25, 5700.0


def month(code: str, symbol: str = "MES") -> ContractMonth:
    return ContractMonth.of(f"CON.F.US.{symbol}.{code}")


def cid(code: str, symbol: str = "MES") -> str:
    return str(month(code, symbol).contract_id())


def expected_listing(symbol: str, at: datetime) -> list[ContractMonth]:
    """The quarterly months expiring from 200 days before `at` to 300 days after, straight from the rules."""
    candidates = [ContractMonth(year, m, symbol) for year in range(at.year - 2, at.year + 3) for m in (3, 6, 9, 12)]
    return [m for m in candidates if at - timedelta(days=200) <= expiry_instant(m, CALENDAR) <= at + timedelta(days=300)]


def listing_sim(start: datetime, **options) -> SimulatorServer:
    """A listing simulator (not started yet: `with` starts it) whose clock starts at `start`."""
    options = {"rate_limits": False, "stock_market_open": CALENDAR, "symbols": SYMBOLS, **options}
    return SimulatorServer(start_time=start, **options)


def gateway_client(sim: SimulatorServer) -> GatewayClient:
    return GatewayClient(GatewayConfig(sim.api_url, sim.rtc_url, "tester", "key", True), rate_limits=False)


def bars_body(contract_id: str, start: datetime, end: datetime, unit: int, unit_number: int = 1) -> dict:
    return {
        "contractId": contract_id,
        "live": False,
        "startTime": start.isoformat(),
        "endTime": end.isoformat(),
        "unit": unit,
        "unitNumber": unit_number,
        "limit": 20_000,
        "includePartialBar": True,
    }


def retrieve(sim: SimulatorServer, token: str, *args, **kwargs) -> list[dict]:
    body = api(sim, "History/retrieveBars", bars_body(*args, **kwargs), token).json()
    assert body["success"] and body["errorCode"] == 0, body
    return body["bars"]


def listed_by_id(sim: SimulatorServer) -> dict[str, dict]:
    return {c["id"]: c for c in SimulatorControl(sim.control_url).status()["listed_contracts"]}


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def ceil_minute(ns: int) -> int:
    return -(-ns // MINUTE_NS) * MINUTE_NS


def floor_minute(ns: int) -> int:
    return ns // MINUTE_NS * MINUTE_NS


def bar_rows(bars) -> list[tuple]:
    """Bars (a frame, or the gateway's dicts) as comparable (start ns, o, h, l, c, v) rows, oldest first."""
    if isinstance(bars, list):
        rows = [(to_ns(datetime.fromisoformat(b["t"])), b["o"], b["h"], b["l"], b["c"], b["v"]) for b in bars]
    else:
        columns = zip(bars["timestamp"].array.asi8, bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"])
        rows = [(int(t), float(o), float(h), float(lo), float(c), int(v)) for t, o, h, lo, c, v in columns]
    return sorted(rows)


# --------------------------------------------------------------------------- playing the clock through a roll or an expiry


class LiveFeed:
    """A raw hub client subscribed to the trades of `contract_ids`, keeping every trade it receives."""

    def __init__(self, sim: SimulatorServer, contract_ids: list[str]):
        self.sim, self.control = sim, SimulatorControl(sim.control_url)
        self.hub = RawHub(sim, login(sim))
        self.trades: dict[str, list[dict]] = {c: [] for c in contract_ids}
        self.other_events: list[dict] = []
        for i, contract_id in enumerate(contract_ids):
            completion = self.hub.invoke("SubscribeContractTrades", contract_id, f"trades-{i}")
            assert "error" not in completion, completion
        # Every contract receives every trade from here on (the clock started at the first subscription).
        self.subscribed_ns = to_ns(sim.clock())

    def take(self, message: dict | None) -> dict | None:
        if message and message.get("type") == 1 and message.get("target") == "GatewayTrade":
            contract_id, data = message["arguments"]
            self.trades[contract_id] += data if isinstance(data, list) else [data]
        elif message and message.get("type") == 1:
            self.other_events.append(message)
        return message

    def run_until(self, until: datetime) -> int:
        """Receive until the clock has passed `until`, pause it, and receive what it released; the clock then."""
        while self.sim.clock() < until:
            self.take(self.hub.next())
        self.control.pause()
        pings = 0
        while pings < 2:  # the step in progress at the pause has been sent in full before a second ping
            pings += (self.take(self.hub.next()) or {}).get("type") == 6
        sent = self.control.status()["trades_sent"]
        while self.received() < sent:
            self.take(self.hub.next())
        assert self.received() == sent, "every trade the simulator sent, and nothing else"
        return to_ns(self.sim.clock())

    def received(self) -> int:
        return sum(len(t) for t in self.trades.values())

    def bars(self, contract_id: str, lo_ns: int, hi_ns: int):
        trades = [t for t in self.trades[contract_id] if lo_ns <= to_ns(datetime.fromisoformat(t["timestamp"])) < hi_ns]
        ts = np.array([to_ns(datetime.fromisoformat(t["timestamp"])) for t in trades], dtype=np.int64)
        price = np.array([t["price"] for t in trades], dtype=np.float64)
        size = np.array([t["volume"] for t in trades], dtype=np.int64)
        return normalize_bars(aggregate_trades(contract_id, ts, price, size, parse_timeframe("1m")))

    def volume(self, contract_id: str, lo: datetime, hi: datetime) -> int:
        return sum(t["volume"] for t in self.trades[contract_id] if lo <= datetime.fromisoformat(t["timestamp"]) < hi)

    def assert_history_equals_live(self, contract_ids: list[str], hi_ns: int) -> None:
        """Each month's 1m history over the whole minutes watched equals the bars of its live trades."""
        lo_ns, hi_ns = ceil_minute(self.subscribed_ns), floor_minute(hi_ns)
        assert hi_ns - lo_ns >= 10 * MINUTE_NS
        client = gateway_client(self.sim)
        for contract_id in contract_ids:
            served = client.retrieve_bars(contract_id, parse_timeframe("1m"), from_ns(lo_ns), from_ns(hi_ns), include_partial_bar=True)
            assert bar_rows(served) == bar_rows(self.bars(contract_id, lo_ns, hi_ns)), contract_id

    def close(self) -> None:
        self.hub.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def listing():
    """Both symbols listed at START; the clock barely moves during the tests (speed 1)."""
    sim = listing_sim(START).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def hourly_listing():
    sim = listing_sim(START, expired_history="hourly").start()
    yield sim
    sim.stop()


# --------------------------------------------------------------------------- the listing


@pytest.mark.parametrize(
    "at",
    [
        START,
        datetime(2025, 6, 20, 13, 29, tzinfo=timezone.utc),  # a minute before M25 expires
        datetime(2026, 6, 18, 13, 31, tzinfo=timezone.utc),  # a minute after M26 expires (on Thursday: Juneteenth)
    ],
)
def test_the_listing_is_relative_to_the_clock(at):
    with listing_sim(at) as sim:
        listed = listed_by_id(sim)
        status = SimulatorControl(sim.control_url).status()
    assert status["mode"] == "listing" and status["expired_history"] == "all"
    for symbol in SYMBOLS:
        months = expected_listing(symbol, at)
        ids = [str(m.contract_id()) for m in months]
        assert [c for c in listed if f".{symbol}." in c] == ids
        front = front_month_at(months, at, ROLL, CALENDAR)
        for m in months:
            entry = listed[str(m.contract_id())]
            expiry = expiry_instant(m, CALENDAR)
            assert entry["name"] == f"{symbol}{m.code[0]}{m.code[-1]}"
            assert datetime.fromisoformat(entry["expiry"]) == expiry
            assert entry["active"] is (at < expiry)
            assert entry["front"] is (m == front)
        expired = [m for m in months if expiry_instant(m, CALENDAR) <= at]
        assert len(expired) >= 2 and len(months) - len(expired) >= 3, "two or so expired, the front month and the next two or three"
        assert front > expired[-1]


def test_the_front_month_switches_exactly_at_the_roll_instant():
    """The market's minute-by-minute front month (what sets the volumes) is rolls.front_month_at."""
    listing = SymbolListing("MES", START, CALENDAR)
    for code in ("H26", "M26", "U26"):
        roll = roll_instant(month(code), ROLL, CALENDAR)
        for offset in (-timedelta(minutes=1), -timedelta(microseconds=1), timedelta(0), timedelta(minutes=1)):
            at = roll + offset
            assert listing.front_month_at(to_ns(at)) == front_month_at(listing.months, at, ROLL, CALENDAR), at
        assert listing.front_month_at(to_ns(roll)) == month(code).next_quarterly()


def test_the_listing_follows_the_exchange_calendar(listing):
    """M26 expires on Thursday 2026-06-18: the NYSE closes on Friday the 19th (Juneteenth)."""
    m26 = listed_by_id(listing)[cid("M26")]
    assert datetime.fromisoformat(m26["expiry"]) == datetime(2026, 6, 18, 13, 30, tzinfo=timezone.utc)


def test_contract_endpoints_list_active_months_and_resolve_expired_ones(listing):
    client = gateway_client(listing)
    active = ["H26", "M26", "U26", "Z26"]
    mes = client.search_contracts("MES")
    assert [c["id"] for c in mes] == [cid(code) for code in active]
    assert all(c["activeContract"] is True for c in mes)
    everything = client.search_contracts("")
    assert [c["id"] for c in everything] == [cid(code, symbol) for symbol in SYMBOLS for code in active]
    assert [c["id"] for c in client.search_contracts("MNQZ6")] == [cid("Z26", "MNQ")], "names are searched too"
    assert [c["id"] for c in client.available_contracts()] == [c["id"] for c in everything]

    expired = client.contract_by_id(cid("U25"))
    assert expired == {
        "id": cid("U25"),
        "name": "MESU5",
        "description": "Micro E-mini S&P 500: September 2025",
        "tickSize": 0.25,
        "tickValue": 1.25,
        "activeContract": False,
        "symbolId": "F.US.MES",
    }
    assert client.contract_by_id(cid("H26"))["activeContract"] is True
    with pytest.raises(GatewayError) as not_listed:
        client.contract_by_id(cid("M25"))  # expired more than 200 days before the clock's start
    assert not_listed.value.error_code == 1


def test_other_modes_never_expire_their_contracts():
    with SimulatorServer(synthetic=["CON.F.US.MES.M25"], start_time=START, rate_limits=False) as sim:
        token = login(sim)
        found = api(sim, "Contract/search", {"searchText": "MES", "live": False}, token).json()["contracts"]
        assert [c["activeContract"] for c in found] == [True], "M25 expired before the clock, but only listed months expire"
        assert listed_by_id(sim)["CON.F.US.MES.M25"] == {"id": "CON.F.US.MES.M25", "name": "MESM5", "expiry": None, "active": True, "front": None}
        assert retrieve(sim, token, "CON.F.US.MES.M25", START - timedelta(hours=1), START, unit=2), "minute history as ever"


# --------------------------------------------------------------------------- history of expired months


def test_hourly_history_only_for_an_expired_month(hourly_listing):
    sim, token = hourly_listing, login(hourly_listing)
    u25_expiry = expiry_instant(month("U25"), CALENDAR)
    window = (u25_expiry - timedelta(days=20), u25_expiry + timedelta(days=1))
    for unit in (1, 2):  # seconds and minutes: an empty success, as users report of the real gateway
        assert retrieve(sim, token, cid("U25"), *window, unit=unit) == []
    for unit in (3, 4, 5, 6):
        bars = retrieve(sim, token, cid("U25"), *window, unit=unit)
        assert bars and all(datetime.fromisoformat(b["t"]) < u25_expiry for b in bars)
    hourly = retrieve(sim, token, cid("U25"), u25_expiry - timedelta(hours=5), u25_expiry, unit=3)
    assert datetime.fromisoformat(hourly[0]["t"]) == u25_expiry.replace(minute=0), "it traded up to its expiry instant (newest first)"
    assert retrieve(sim, token, cid("H26"), START - timedelta(hours=1), START, unit=2), "an active month serves minutes"
    assert gateway_client(sim).retrieve_bars(cid("Z25", "MNQ"), parse_timeframe("5m"), window[0], START).empty


def test_every_unit_for_an_expired_month_by_default(listing):
    token = login(listing)
    u25_expiry = expiry_instant(month("U25"), CALENDAR)
    minutes = retrieve(listing, token, cid("U25"), u25_expiry - timedelta(hours=2), u25_expiry + timedelta(hours=2), unit=2)
    assert minutes and max(datetime.fromisoformat(b["t"]) for b in minutes) < u25_expiry


def test_the_history_of_a_month_turns_hourly_when_the_clock_passes_its_expiry():
    h26_expiry = expiry_instant(month("H26"), CALENDAR)
    with listing_sim(h26_expiry - timedelta(minutes=2), symbols=["MES"], speed=600, expired_history="hourly") as sim:
        token = login(sim)
        last_hour = (h26_expiry - timedelta(hours=1), h26_expiry + timedelta(hours=1))
        assert retrieve(sim, token, cid("H26"), *last_hour, unit=2), "served while H26 trades"
        wait_until(lambda: sim.clock() >= h26_expiry, timeout=10, what="the clock to pass H26's expiry")
        assert retrieve(sim, token, cid("H26"), *last_hour, unit=2) == []
        assert retrieve(sim, token, cid("H26"), *last_hour, unit=3)
        assert retrieve(sim, token, cid("M26"), *last_hour, unit=2), "the next month goes on"


# --------------------------------------------------------------------------- one market per symbol


def test_months_trade_a_stable_basis_apart(listing):
    client = gateway_client(listing)
    window = (START - timedelta(days=1), START)
    closes = {}
    for code in ("H26", "M26"):
        bars = client.retrieve_bars(cid(code), parse_timeframe("1m"), *window)
        closes[code] = dict(zip(bars["timestamp"].array.asi8.tolist(), bars["close"].tolist()))
    both = sorted(set(closes["H26"]) & set(closes["M26"]))
    assert len(both) > 100
    gap_ticks = np.array([(closes["M26"][t] - closes["H26"][t]) / MES_TICK for t in both])
    months_apart = (to_ns(expiry_instant(month("M26"), CALENDAR)) - to_ns(expiry_instant(month("H26"), CALENDAR))) / NS_PER_MONTH
    expected = MES_BASE_PRICE / MES_TICK * BASIS_PER_MONTH * months_apart  # about 100 ticks: 25 points
    # One price path: a minute's close is the same level in both months, plus each one's basis on the tick grid.
    assert np.all(np.abs(gap_ticks - expected) <= 1.0), (expected, gap_ticks.min(), gap_ticks.max())
    assert expected > 80


def test_volume_moves_to_the_new_front_month_at_the_roll():
    roll = roll_instant(month("H26"), ROLL, CALENDAR)
    with listing_sim(roll + timedelta(days=1), symbols=["MES"]) as sim:
        client = gateway_client(sim)

        def volume(code: str, lo: datetime, hi: datetime) -> int:
            return int(client.retrieve_bars(cid(code), parse_timeframe("1h"), lo, hi)["volume"].sum())

        session_before, session_after = (roll - timedelta(hours=23), roll), (roll, roll + timedelta(hours=23))
        before = {code: volume(code, *session_before) for code in ("H26", "M26", "U26")}
        after = {code: volume(code, *session_after) for code in ("H26", "M26", "U26")}
    assert before["H26"] > 5 * before["M26"] > 0, before  # the front month full, the next one about 10 %
    assert before["M26"] > 2 * before["U26"] > 0, before  # and the others about 2 %
    assert after["M26"] > 5 * after["U26"] > 0, after
    assert after["M26"] > 20 * after["H26"] > 0, after


# --------------------------------------------------------------------------- live equals history, across a roll and an expiry


def test_live_trades_equal_history_across_a_roll():
    roll = roll_instant(month("H26"), ROLL, CALENDAR)
    months = expected_listing("MES", roll)
    ids = [str(m.contract_id()) for m in months]
    with listing_sim(roll - timedelta(minutes=10), symbols=["MES"], speed=600, wait_for_subscriber=True, ping_interval=0.2) as sim:
        assert {c for c, entry in listed_by_id(sim).items() if entry["front"]} == {cid("H26")}
        feed = LiveFeed(sim, ids)
        clock_ns = feed.run_until(roll + timedelta(minutes=20))
        feed.close()
        status = SimulatorControl(sim.control_url).status()
        assert {c["id"] for c in status["listed_contracts"] if c["front"]} == {cid("M26")}
        assert status["clock_errors"] == 0
        feed.assert_history_equals_live(ids, clock_ns)
    after = (roll, from_ns(clock_ns))
    assert feed.volume(cid("M26"), *after) > 10 * feed.volume(cid("H26"), *after), "the new front month has the volume"
    assert feed.volume(cid("H26"), *after) > 0, "the old front month still trades a little"
    assert not feed.trades[cid("U25")] and not feed.trades[cid("Z25")], "expired months deliver nothing"
    assert not feed.other_events


def test_live_trades_equal_history_across_an_expiry_and_the_month_turns_inactive():
    h26_expiry = expiry_instant(month("H26"), CALENDAR)
    months = expected_listing("MES", h26_expiry - timedelta(minutes=10))
    ids = [str(m.contract_id()) for m in months]
    with listing_sim(h26_expiry - timedelta(minutes=10), symbols=["MES"], speed=600, wait_for_subscriber=True, ping_interval=0.2) as sim:
        client = gateway_client(sim)
        assert client.contract_by_id(cid("H26"))["activeContract"] is True
        assert cid("H26") in [c["id"] for c in client.search_contracts("MES")]
        feed = LiveFeed(sim, ids)
        clock_ns = feed.run_until(h26_expiry + timedelta(minutes=10))
        feed.assert_history_equals_live(ids, clock_ns)

        expired_trades = [datetime.fromisoformat(t["timestamp"]) for t in feed.trades[cid("H26")]]
        assert expired_trades and max(expired_trades) < h26_expiry, "H26 traded live up to its expiry instant, not after"
        assert feed.volume(cid("M26"), h26_expiry, from_ns(clock_ns)) > 0, "the front month goes on"
        assert client.contract_by_id(cid("H26"))["activeContract"] is False
        assert cid("H26") not in [c["id"] for c in client.search_contracts("MES")]
        assert cid("H26") not in [c["id"] for c in client.available_contracts()]
        assert listed_by_id(sim)[cid("H26")]["active"] is False

        # Subscribing the month that has just expired succeeds and delivers nothing, although it
        # traded in this session: no quote, no depth reset. M26, subscribed after it, gets both at once.
        feed.close()
        hub = RawHub(sim, login(sim))
        invocations = [
            ("SubscribeContractQuotes", cid("H26")),
            ("SubscribeContractMarketDepth", cid("H26")),
            ("SubscribeContractMarketDepth", cid("M26")),
            ("SubscribeContractQuotes", cid("M26")),
        ]
        for i, (method, contract_id) in enumerate(invocations):  # sent at once: every answer is kept, in order
            hub.ws.send(json.dumps({"type": 1, "invocationId": str(i), "target": method, "arguments": [contract_id]}) + RS)
        seen: list[dict] = []
        while not any(m.get("target") == "GatewayQuote" for m in seen):
            seen.append(hub.next() or {})
        hub.close()
        completions = [m for m in seen if m.get("type") == 3]
        assert [m["invocationId"] for m in completions] == ["0", "1", "2", "3"] and not any("error" in m for m in completions)
        events = [(m["target"], m["arguments"][0]) for m in seen if m.get("type") == 1]
        assert events == [("GatewayDepth", cid("M26")), ("GatewayQuote", cid("M26"))]
    assert not feed.other_events


def test_the_hub_knows_listed_months_only(listing):
    hub = RawHub(listing, login(listing))
    assert "error" not in hub.invoke("SubscribeContractTrades", cid("U25"), "expired")
    unknown = hub.invoke("SubscribeContractTrades", cid("M25"), "unknown")
    assert "CON.F.US.MES.M25" in unknown["error"] and "not found" in unknown["error"]
    hub.close()


def test_generation_keeps_up_with_a_fast_clock():
    """What the clock generates for one wall second at speed 600 (every month of two symbols, in
    the busy cash session) takes well under that second: a roll can be played in a test."""
    source = ListingSource(SYMBOLS, 0, to_ns(START), CALENDAR)
    step_ns = int(TICK_SECONDS * 600 * 10**9)

    def one_wall_second(offset_ns: int) -> tuple[float, int]:
        began, count = time.perf_counter(), 0
        for step in range(round(1 / TICK_SECONDS)):
            lo = source.start_ns + offset_ns + step * step_ns
            count += sum(source.released_between(c, lo, lo + step_ns)[1] for c in source.contracts)
        return time.perf_counter() - began, count

    runs = [one_wall_second(i * 600 * 10**9) for i in range(3)]
    assert all(count > 1000 for _, count in runs), runs
    assert min(seconds for seconds, _ in runs) < 0.5, runs


# --------------------------------------------------------------------------- status and errors


def test_status_reports_the_listing_over_http(listing):
    status = requests.get(f"{listing.control_url}/status", timeout=5).json()
    assert status["mode"] == "listing"
    listed = {c["id"]: c for c in status["listed_contracts"]}
    assert sorted(listed) == sorted(status["contracts"])
    client = gateway_client(listing)
    for contract_id, entry in listed.items():
        assert client.contract_by_id(contract_id)["activeContract"] is entry["active"]
    assert [c for c, e in listed.items() if e["front"]] == [cid("H26"), cid("H26", "MNQ")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"symbols": ["XYZ"]}, r"unknown symbol 'XYZ'.*MES, MNQ"),
        ({"symbols": ["CL"]}, r"unknown symbol 'CL'.*equity-index roots"),
        ({"symbols": ["MES", "MES"]}, r"'MES' given twice"),
        ({"symbols": []}, r"symbols is empty"),
        ({"symbols": ["MES"], "synthetic": ["CON.F.US.MES.M25"]}, r"not synthetic and symbols"),
        ({"symbols": ["MES"], "expired_history": "daily"}, r"invalid expired_history 'daily': expected one of all, hourly"),
        ({"synthetic": ["CON.F.US.MES.M25"], "expired_history": "hourly"}, r"needs listed symbols"),
        ({"symbols": ["MES"], "speed": "max"}, r"speed 'max' needs a replay"),
    ],
)
def test_bad_listing_options_are_refused_naming_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        SimulatorServer(start_time=START, stock_market_open=CALENDAR, **options)


def simulate_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--symbols", "MES", "XYZ"], r"--symbols: unknown symbol 'XYZ'.*ES, M2K, MES, MNQ, MYM, NQ, RTY, YM"),
        (["--symbols", "MES", "--synthetic", "CON.F.US.MES.M25"], r"--synthetic and --symbols are exclusive"),
        (["--replay", "x.csv", "--symbols", "MES"], r"--replay and --symbols are exclusive"),
        (["--expired-history", "hourly"], r"--expired-history needs --symbols"),
        (["--symbols", "MES", "--expired-history", "daily"], r"--expired-history daily: expected all or hourly"),
        (["--symbols", "MES", "--shift-to-now"], r"--shift-to-now moves a replay"),
        (["--symbols", "MES", "--start", "yesterday"], r"invalid --start 'yesterday'"),
        (["--symbols", "MES", "--speed", "max"], r"speed 'max' needs a replay"),
    ],
)
def test_cli_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        commands.run(simulate_args(*argv))


def test_cli_serves_a_listing_and_prints_it():
    script = (
        "import argparse, sys\n"
        "from projectx_pipeline.gateway.simulator import commands\n"
        "parser = argparse.ArgumentParser(); commands.add_arguments(parser)\n"
        "sys.exit(commands.run(parser.parse_args(sys.argv[1:])))\n"
    )
    argv = ["--port", "0", "--symbols", "MES", "--expired-history", "hourly", "--start", "2026-03-10T15:00:00Z", "--no-rate-limit"]
    process = subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        urls = dict(part.split("=", 1) for part in process.stdout.readline().split())
        assert process.stdout.readline().startswith("control: ")
        listed = [process.stdout.readline().strip() for _ in expected_listing("MES", START)]
        assert listed[0] == "listed CON.F.US.MES.U25 expires 2025-09-19T13:30:00+00:00 (expired)"
        assert listed[2] == "listed CON.F.US.MES.H26 expires 2026-03-20T13:30:00+00:00"
        status = requests.get(f"{urls['PROJECTX_API_URL']}/control/status", timeout=5).json()
        assert status["mode"] == "listing" and status["expired_history"] == "hourly"
        process.terminate()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()
