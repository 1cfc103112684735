"""The simulator's live feed: what the market clock releases, published to hub subscribers.

* `GatewayTrade` events carry one trade object or a list: of the trades of a contract released
  in one step, the first goes out alone as an object and the rest, if any, as lists of at most
  TRADES_PER_EVENT (a busy bar has thousands of prints; a record of a few hundred stays well
  under the 64 KiB a client may accept, `gateway/events.py`).
* Timestamps rotate through four ISO forms (3 or 7 fractional digits, none on whole seconds,
  `Z` or `+00:00`), chosen by the trade's second so the choice is deterministic.
* `GatewayQuote` carries every field, `volume` being the running session total. The book is the
  one around the last trade (`prints.best_bid_ask`): a buy traded at the ask, a sell at the bid,
  the spread one tick, two after a large print. Quotes are throttled in market time: market time
  is cut into buckets of `quote_interval` seconds, and a bucket that holds a trade ends with one
  quote, stamped with the bucket's end and showing the book then; no trade, no quote (a halt is
  quiet). So quotes depend only on the trades, never on how the clock steps. Once a replay is
  over, a quote of the end clock goes out every `quote_interval` seconds of wall time, so that
  clients can close their last bar. `GatewayDepth` carries the same best bid and ask. The
  quotes (and depth) of one clock step go out in one WebSocket frame, one record each.
* A subscription to an expired contract (listing mode) succeeds and delivers nothing: it has no
  trades after its expiry instant, so no trades and no quotes, and no depth reset either.
* `trades_published` counts trades released by the clock, whether or not anyone was subscribed.
  A contract nobody watches has its trades counted and its session figures taken without
  generating them where the source can (`MarketSource.released_between`).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from projectx_pipeline.domain.timestamps import NS_PER_SECOND

from ..protocol import DEPTH_EVENT, ISO_SECONDS_FORMAT, QUOTE_EVENT, TRADE_EVENT
from . import market, prints
from .clock import MarketClock
from .faults import malformed_record
from .hub_protocol import HubClient, MarketHubEndpoint, hub_event
from .market import MarketSource, Trades

TRADES_PER_EVENT = 200  # about 110 characters each: ~22 KB a record

# ProjectX DomType values used in GatewayDepth entries
_DOM_ASK, _DOM_BID, _DOM_RESET = 1, 2, 6


def format_timestamp(ts_ns: int, style: int) -> str:
    """An ISO-8601 UTC timestamp in one of the four forms the gateway is seen to use (ms resolution)."""
    seconds, rem_ns = divmod(int(ts_ns), NS_PER_SECOND)
    base = _iso_seconds(seconds)
    millis = rem_ns // 1_000_000
    style %= 4
    if style == 0:
        return f"{base}.{millis:03d}+00:00"
    if style == 1:
        return f"{base}.{millis * 10_000:07d}Z"  # .NET's 7-digit ticks
    if rem_ns == 0:
        return f"{base}Z" if style == 2 else f"{base}+00:00"
    return f"{base}.{millis:03d}Z" if style == 2 else f"{base}.{millis * 1000:06d}+00:00"


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    """The whole-second part of a timestamp: shared by the many prints of a busy second."""
    return time.strftime(ISO_SECONDS_FORMAT, time.gmtime(seconds))


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
    last_side: int = 0
    last_size: int = 1
    # A range released by stand-ins (`released_between`): its last trade's instant, side and size
    # are not the real ones until `resolve` fetches that trade.
    unresolved: tuple[int, int] | None = None

    def add(self, trades: Trades) -> None:
        if not len(trades):
            return
        labels = market.session_labels_ns(trades.ts_ns)
        latest = int(labels[-1])
        if latest != self.session_label:
            trades = trades[int(np.searchsorted(labels, latest)) :]  # labels follow the sorted trades
            self.session_label, self.open, self.high, self.low, self.volume = latest, float(trades.price[0]), None, None, 0
        high, low = float(trades.price.max()), float(trades.price.min())
        self.high = high if self.high is None else max(self.high, high)
        self.low = low if self.low is None else min(self.low, low)
        self.last = float(trades.price[-1])
        self.volume += int(trades.size.sum())
        self.last_trade_ns = int(trades.ts_ns[-1])
        self.last_side, self.last_size = int(trades.side[-1]), int(trades.size[-1])
        self.unresolved = None

    def add_stand_ins(self, stand_ins: Trades, lo_ns: int, hi_ns: int) -> None:
        """Adds what `released_between(lo_ns, hi_ns)` stands in with."""
        if len(stand_ins):
            self.add(stand_ins)
            self.unresolved = (lo_ns, hi_ns)

    def resolve(self, source: MarketSource, contract_id: str) -> None:
        if self.unresolved is not None:
            last = source.trades_between(contract_id, *self.unresolved)
            self.last_trade_ns, self.last_side, self.last_size = int(last.ts_ns[-1]), int(last.side[-1]), int(last.size[-1])
            self.unresolved = None

    def snapshots(self, trades: Trades, counts: list[int]) -> list[SessionStats]:
        """The figures after the first c of `trades`, for each c of `counts`; then adds them all.

        Vectorized (running maxima per session), as a step may hold thousands of trades and
        hundreds of quote instants."""
        if not len(trades):
            return [replace(self) for _ in counts]
        labels = market.session_labels_ns(trades.ts_ns)
        high, low, volume, opening = np.empty(len(trades)), np.empty(len(trades)), np.empty(len(trades), np.int64), np.empty(len(trades))
        cuts = np.flatnonzero(labels[1:] != labels[:-1]) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(trades)]):
            carried = lo == 0 and int(labels[0]) == self.session_label  # the session the figures are in goes on
            price = trades.price[lo:hi]
            high[lo:hi] = np.maximum.accumulate(np.maximum(price, self.high if carried and self.high is not None else -np.inf))
            low[lo:hi] = np.minimum.accumulate(np.minimum(price, self.low if carried and self.low is not None else np.inf))
            volume[lo:hi] = np.cumsum(trades.size[lo:hi]) + (self.volume if carried else 0)
            opening[lo:hi] = self.open if carried and self.open is not None else price[0]
        out = [
            replace(self)
            if c == 0
            else SessionStats(
                int(labels[c - 1]),
                float(opening[c - 1]),
                float(high[c - 1]),
                float(low[c - 1]),
                float(trades.price[c - 1]),
                int(volume[c - 1]),
                int(trades.ts_ns[c - 1]),
                int(trades.side[c - 1]),
                int(trades.size[c - 1]),
            )
            for c in counts
        ]
        self.add(trades)
        return out


def quote_instants(ts_ns: np.ndarray, last_before_ns: int | None, lo_ns: int, hi_ns: int, interval_ns: int) -> np.ndarray:
    """The ends in (lo_ns, hi_ns] of the market-time buckets of `interval_ns` that hold a trade:
    those released in [lo_ns, hi_ns) (`ts_ns`) or the last one before (`last_before_ns`)."""
    before = np.array([] if last_before_ns is None else [last_before_ns], dtype=np.int64)
    ends = np.unique(np.concatenate((before, ts_ns)) // interval_ns * interval_ns + interval_ns)
    return ends[(ends > lo_ns) & (ends <= hi_ns)]


class MarketPublisher:
    """Releases the trades up to each new clock position and publishes trades, quotes and depth.

    `pending_malformed` holds the kinds of bad GatewayTrade events (see `faults.py`) still to be
    interleaved with the good ones, one per clock step."""

    def __init__(self, source: MarketSource, clock: MarketClock, hub: MarketHubEndpoint, quote_interval: float):
        self._source = source
        self._clock = clock
        self._hub = hub
        self._quote_interval = float(quote_interval)
        self._quote_interval_ns = max(1, round(quote_interval * NS_PER_SECOND))
        self.pending_malformed: deque[str] = deque()
        self._stats = {cid: SessionStats() for cid in source.contracts}
        for cid, stats in self._stats.items():
            session_open_ns = market.session_open_ns(clock.now_ns)
            stats.add_stand_ins(source.released_between(cid, session_open_ns, clock.now_ns)[0], session_open_ns, clock.now_ns)
        self._last_quote_wall = 0.0
        self.trades_published = 0
        self.trades_sent = 0

    async def advance(self, target_ns: int) -> None:
        lo_ns = self._clock.now_ns
        self._clock.now_ns = target_ns
        watched: dict[str, Trades] = {}
        for cid in self._source.contracts:
            if self._watched(cid):
                watched[cid] = self._source.trades_between(cid, lo_ns, target_ns)
                self.trades_published += len(watched[cid])
            else:
                stand_ins, count = self._source.released_between(cid, lo_ns, target_ns)
                self._stats[cid].add_stand_ins(stand_ins, lo_ns, target_ns)
                self.trades_published += count
        await self._inject_malformed()
        for cid, trades in watched.items():
            await self._publish_trades(cid, trades)
            await self._publish_quotes_in_step(cid, trades, lo_ns, target_ns)
        if self._source.end_ns is not None and target_ns >= self._source.end_ns:
            await self.publish_quotes()

    def _watched(self, contract_id: str) -> bool:
        return any(self._hub.subscribers(feed, contract_id) for feed in ("trades", "quotes", "depth"))

    async def _publish_quotes_in_step(self, contract_id: str, trades: Trades, lo_ns: int, hi_ns: int) -> None:
        """Adds the step's trades to the session figures and quotes them at each bucket end on the way."""
        stats = self._stats[contract_id]
        if not (self._hub.subscribers("quotes", contract_id) or self._hub.subscribers("depth", contract_id)):
            stats.add(trades)
            return
        stats.resolve(self._source, contract_id)
        instants = quote_instants(trades.ts_ns, stats.last_trade_ns, lo_ns, hi_ns, self._quote_interval_ns)
        counts = np.searchsorted(trades.ts_ns, instants, side="left").tolist()
        await self._publish_quotes(contract_id, list(zip(stats.snapshots(trades, counts), instants.tolist())))

    async def finished_tick(self, wall_now: float) -> None:
        """A tick of the clock after the replay's end: quotes of the end clock go on at the wall-clock interval."""
        if wall_now - self._last_quote_wall >= self._quote_interval:
            await self.publish_quotes()

    async def on_subscribed(self, client: HubClient, feed: str, contract_id: str) -> None:
        if feed == "trades":
            self._clock.waiting_for_subscriber = False
        elif not self._source.contracts[contract_id].active_at(self._clock.now_ns):
            return  # an expired contract: the subscription succeeds and delivers nothing, not even a book reset
        elif feed == "quotes":
            stats = self._stats[contract_id]
            stats.resolve(self._source, contract_id)
            if stats.last is not None:
                await self._hub.send(client, self._quote(contract_id, stats, self._clock.now_ns))
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
        records += [hub_event(TRADE_EVENT, contract_id, objects[i : i + TRADES_PER_EVENT]) for i in range(1, len(objects), TRADES_PER_EVENT)]
        delivered = await self._hub.broadcast(subscribers, records)
        self.trades_sent += len(objects) * sum(delivered)

    def _book(self, contract_id: str, stats: SessionStats) -> tuple[float, float]:
        assert stats.last is not None
        return prints.best_bid_ask(stats.last, stats.last_side, stats.last_size, self._source.contracts[contract_id].tick_size)

    def _quote(self, contract_id: str, stats: SessionStats, at_ns: int) -> str:
        """The GatewayQuote of session figures that hold a trade, stamped `at_ns`."""
        assert stats.last is not None and stats.open is not None and stats.last_trade_ns is not None  # add() sets them with last
        bid, ask = self._book(contract_id, stats)
        contract = self._source.contracts[contract_id]
        change = stats.last - stats.open
        quote = {
            "symbol": contract.symbol_id,
            "symbolName": f"/{contract.root}",
            "lastPrice": stats.last,
            "bestBid": bid,
            "bestAsk": ask,
            "change": round(change, 10),
            "changePercent": round(change / stats.open, 6) if stats.open else 0.0,
            "open": stats.open,
            "high": stats.high,
            "low": stats.low,
            "volume": stats.volume,  # the session total: never a trade size
            "lastUpdated": format_timestamp(stats.last_trade_ns, _style_of(stats.last_trade_ns)),
            "timestamp": format_timestamp(at_ns, _style_of(at_ns)),
        }
        return hub_event(QUOTE_EVENT, contract_id, quote)

    def _depth(self, contract_id: str, stats: SessionStats, at_ns: int) -> str:
        """GatewayDepth with the best bid and ask of the quote of the same instant."""
        bid, ask = self._book(contract_id, stats)
        tick, stamp = self._source.contracts[contract_id].tick_size, format_timestamp(at_ns, 0)
        # a deterministic book size per price keeps the depth feed reproducible
        levels = [
            {"timestamp": stamp, "type": dom_type, "price": price, "volume": size, "currentVolume": size}
            for dom_type, price, size in ((_DOM_BID, bid, 10 + int(bid / tick) % 40), (_DOM_ASK, ask, 13 + int(ask / tick) % 40))
        ]
        return hub_event(DEPTH_EVENT, contract_id, levels)

    async def _publish_quotes(self, contract_id: str, quotes: list[tuple[SessionStats, int]]) -> None:
        """Quotes (and depth) of a contract, one per (figures, instant) with a trade.

        The records of one call go out in one WebSocket frame (SignalR splits a frame on its
        record separators): at a fast replay that is hundreds of quotes a step, and a frame each
        would cost the clients more than the quotes themselves."""
        quotes = [(stats, at_ns) for stats, at_ns in quotes if stats.last is not None]
        quote_subscribers, depth_subscribers = self._hub.subscribers("quotes", contract_id), self._hub.subscribers("depth", contract_id)
        if quotes and quote_subscribers:
            await self._hub.broadcast(quote_subscribers, ["".join(self._quote(contract_id, stats, at_ns) for stats, at_ns in quotes)])
        if quotes and depth_subscribers:
            await self._hub.broadcast(depth_subscribers, ["".join(self._depth(contract_id, stats, at_ns) for stats, at_ns in quotes)])

    async def publish_quotes(self) -> None:
        """Quotes (and depth) of every contract, stamped with the clock."""
        self._last_quote_wall = time.monotonic()
        for cid, stats in self._stats.items():
            if self._hub.subscribers("quotes", cid) or self._hub.subscribers("depth", cid):
                stats.resolve(self._source, cid)
                await self._publish_quotes(cid, [(stats, self._clock.now_ns)])

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
