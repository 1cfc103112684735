"""The simulator's live feed: what the market clock releases, published to hub subscribers.

* `GatewayTrade` events carry one trade object or a list: of the trades of a contract released
  in one step, the first goes out alone as an object and the rest, if any, as one list.
* Timestamps rotate through four ISO forms (3 or 7 fractional digits, none on whole seconds,
  `Z` or `+00:00`), chosen by the trade's second so the choice is deterministic.
* `GatewayQuote` carries every field, `volume` being the running session total; quotes go out
  every `quote_interval` seconds of market time, and on to the end clock once a replay is over.
* `trades_published` counts trades released by the clock, whether or not anyone was subscribed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from projectx_pipeline.domain.timestamps import NS_PER_SECOND

from ..protocol import DEPTH_EVENT, ISO_SECONDS_FORMAT, QUOTE_EVENT, TRADE_EVENT
from . import market
from .clock import MarketClock
from .faults import malformed_record
from .hub_protocol import HubClient, MarketHubEndpoint, hub_event
from .market import MarketSource, Trades

# ProjectX DomType values used in GatewayDepth entries
_DOM_ASK, _DOM_BID, _DOM_RESET = 1, 2, 6


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


@dataclass
class SessionStats:
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


class MarketPublisher:
    """Releases the trades up to each new clock position and publishes trades, quotes and depth.

    `pending_malformed` holds the kinds of bad GatewayTrade events (see `faults.py`) still to be
    interleaved with the good ones, one per clock step."""

    def __init__(self, source: MarketSource, clock: MarketClock, hub: MarketHubEndpoint, quote_interval: float):
        self._source = source
        self._clock = clock
        self._hub = hub
        self._quote_interval = float(quote_interval)
        self.pending_malformed: deque[str] = deque()
        self._stats = {cid: SessionStats() for cid in source.contracts}
        for cid, stats in self._stats.items():
            stats.add(source.trades_between(cid, market.session_open_ns(clock.now_ns), clock.now_ns))
        self._last_quote_clock_ns: int | None = None
        self._last_quote_wall = 0.0
        self.trades_published = 0
        self.trades_sent = 0

    async def advance(self, target_ns: int) -> None:
        released = {cid: self._source.trades_between(cid, self._clock.now_ns, target_ns) for cid in self._source.contracts}
        self._clock.now_ns = target_ns
        for cid, trades in released.items():
            self._stats[cid].add(trades)
            self.trades_published += len(trades)
        await self._inject_malformed()
        for cid, trades in released.items():
            await self._publish_trades(cid, trades)
        finished = self._source.end_ns is not None and target_ns >= self._source.end_ns
        due = self._last_quote_clock_ns is None or target_ns - self._last_quote_clock_ns >= self._quote_interval * NS_PER_SECOND
        if due or finished:
            await self.publish_quotes()

    async def finished_tick(self, wall_now: float) -> None:
        """A tick of the clock after the replay's end: quotes go on at the wall-clock interval."""
        if wall_now - self._last_quote_wall >= self._quote_interval:
            await self.publish_quotes()

    async def on_subscribed(self, client: HubClient, feed: str, contract_id: str) -> None:
        if feed == "trades":
            self._clock.waiting_for_subscriber = False
        elif feed == "quotes":
            quote = self._quote(contract_id)
            if quote is not None:
                await self._hub.send(client, quote)
        else:
            reset = {"timestamp": format_timestamp(self._clock.now_ns, 0), "type": _DOM_RESET, "price": 0.0, "volume": 0, "currentVolume": 0}
            await self._hub.send(client, hub_event(DEPTH_EVENT, contract_id, [reset]))

    async def _publish_trades(self, contract_id: str, trades: Trades) -> None:
        subscribers = self._hub.subscribers("trades", contract_id)
        if not len(trades) or not subscribers:
            return
        symbol_id = self._source.contracts[contract_id].symbol_id
        objects = [
            {"symbolId": symbol_id, "price": price, "timestamp": format_timestamp(ts, _style_of(ts)), "type": side, "volume": size}
            for ts, price, size, side in zip(trades.ts_ns.tolist(), trades.price.tolist(), trades.size.tolist(), trades.side.tolist())
        ]
        records = [hub_event(TRADE_EVENT, contract_id, objects[0])]
        if len(objects) > 1:
            records.append(hub_event(TRADE_EVENT, contract_id, objects[1:]))
        delivered = await self._hub.broadcast(subscribers, records)
        self.trades_sent += len(objects) * sum(delivered)

    def _quote(self, contract_id: str) -> str | None:
        stats = self._stats[contract_id]
        if stats.last is None:
            return None
        assert stats.open is not None and stats.last_trade_ns is not None  # add() sets them with last
        contract = self._source.contracts[contract_id]
        change = stats.last - stats.open
        clock_ns = self._clock.now_ns
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
            "timestamp": format_timestamp(clock_ns, _style_of(clock_ns)),
        }
        return hub_event(QUOTE_EVENT, contract_id, quote)

    async def publish_quotes(self) -> None:
        self._last_quote_clock_ns, self._last_quote_wall = self._clock.now_ns, time.monotonic()
        for cid, contract in self._source.contracts.items():
            quote = self._quote(cid)
            if quote is None:
                continue
            await self._hub.broadcast(self._hub.subscribers("quotes", cid), [quote])
            depth_subscribers = self._hub.subscribers("depth", cid)
            if depth_subscribers:
                stats, stamp = self._stats[cid], format_timestamp(self._clock.now_ns, 0)
                assert stats.last is not None  # there is a quote
                # a deterministic book size per price keeps the depth feed reproducible
                size = 10 + int(stats.last / contract.tick_size) % 40
                levels = [
                    {"timestamp": stamp, "type": _DOM_BID, "price": stats.last, "volume": size, "currentVolume": size},
                    {
                        "timestamp": stamp,
                        "type": _DOM_ASK,
                        "price": round(stats.last + contract.tick_size, 10),
                        "volume": size + 3,
                        "currentVolume": size + 3,
                    },
                ]
                await self._hub.broadcast(depth_subscribers, [hub_event(DEPTH_EVENT, cid, levels)])

    async def _inject_malformed(self) -> None:
        targets = [c for c in self._hub.clients if c.trades]
        if not self.pending_malformed or not targets:
            return
        kind = self.pending_malformed.popleft()
        for client in targets:
            contract_id = sorted(client.trades)[0]
            last = self._stats[contract_id].last
            record = malformed_record(
                kind,
                contract_id,
                self._source.contracts[contract_id].symbol_id,
                last if last is not None else 1.0,
                format_timestamp(self._clock.now_ns, 0),
            )
            await self._hub.send(client, record)
