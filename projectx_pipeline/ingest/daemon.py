"""The ingestion daemon: market hub → live bars for every timeframe → database, repaired from history.

Threads and what they own:
* hub (signalrcore + supervisor): parses events onto `events`; no I/O in its callbacks;
* main loop (`run`): drains `events` in batches, feeds one `BarAggregator` per contract, and
  hands closed bars / trades / repair requests to the writer — never touches the database;
* writer: every database write, buffered through outages (`writer.StoreWriter`);
* repairer: gap repair and due repair windows from the REST history (`repair.Repairer`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

import numpy as np

from ..domain.aggregation import BarAggregator, split_valid
from ..domain.contracts import ContractId
from ..domain.market import Quote, Trade
from ..domain.market_hours import SessionCalendar, StallWatch
from ..domain.rolls import CalendarRoll, ExchangeDays
from ..domain.timeframes import Timeframe, bar_end
from ..domain.timestamps import NS_PER_SECOND, from_ns, to_ns
from ..gateway.events import HubEvent
from ..gateway.listings import ListedContract
from ..history import HistorySource
from ..logs import get_logger, kv
from ..storage.db import connect, transaction
from ..storage.migrate import migrate
from ..storage.policies import apply_policies
from ..storage.repairs import RepairRequest
from ..storage.trades import TradeBatch
from .clock import FeedClock
from .counters import Counters
from .repair import Repairer
from .roll_follower import ListingUpdate, ListingWatcher, RollFollower
from .writer import StoreWriter, instance_name

log = get_logger("projectx.ingest")

DRAIN_MAX_ITEMS = 20_000
IDLE_WAIT_SECONDS = 0.05
SHUTDOWN_BUDGET_SECONDS = 8.0  # the whole stop must fit in 10 s
STALL_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class IngestConfig:
    contracts: list[ContractId]  # the explicit contracts (settings `contracts` or --contracts)
    timeframes: list[Timeframe]
    database_url: str
    grace_seconds: float = 2.0
    heartbeat_seconds: float = 5.0
    trade_flush_seconds: float = 1.0
    trade_batch_size: int = 5000
    outage_buffer_bars: int = 100_000
    initial_lookback: timedelta = timedelta(days=3)
    repair_delay_seconds: float = 5.0
    stale_after_seconds: float = 45.0
    db_wait_seconds: float = 60.0
    # a contract without a trade for this long while `calendar` says the market is open counts
    # as stalled: logged, counted, the hub reconnected (None: no such watch, e.g. in benches)
    stall_after_seconds: float | None = None
    calendar: SessionCalendar | None = None
    # storage policies applied at start (TimescaleDB) and trade retention run hourly (plain
    # PostgreSQL); None leaves both alone (tests that own their database)
    trades_retention_days: int | None = None
    bars_compress_after_days: int | None = None
    # Symbols whose front month (and the month after it) is followed through every roll, from
    # `listing` (the gateway's listed months of each symbol, asked again every
    # `listing_refresh_seconds` on a thread of its own). `contracts` are followed as well, always.
    symbols: list[str] = field(default_factory=list)
    roll_rule: CalendarRoll = CalendarRoll()
    stock_market_open: ExchangeDays | None = None
    listing: Callable[[], dict[str, list[ListedContract]]] | None = None
    listing_refresh_seconds: float = 3600.0


class MarketHub(Protocol):
    """The live feed (`gateway.hub`): puts Trades, Quotes and HubEvents on the queue it was made with."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def reconnect(self, reason: str) -> None: ...

    def set_contracts(self, contracts: list[str]) -> None: ...


class BarWriter(Protocol):
    """What the main loop hands its output to (`writer.StoreWriter`): it never waits on the database."""

    fatal: BaseException | None

    def acquire_locks(self) -> None: ...

    def start(self) -> None: ...

    def submit_bars(self, bars) -> None: ...

    def submit_trades(self, batch: TradeBatch) -> None: ...

    def submit_feed_resumed(self, contract_id: str, resumed_at: datetime) -> None: ...

    def submit_repairs(self, requests: list[RepairRequest]) -> None: ...

    def submit_roll_points(self, points: list, rule: str) -> None: ...

    def add_contracts(self, contract_ids: list[str]) -> None: ...

    def stop(self, timeout: float) -> bool: ...


class GapRepairer(Protocol):
    """What the main loop tells about the feed (`repair.Repairer`), which repairs from history."""

    def start(self) -> None: ...

    def request_gap_repair(self) -> None: ...

    def feed_resumed(self, contract_id: str, first_trade_ns: int) -> None: ...

    def add_contracts(self, contract_ids: list[str]) -> None: ...

    def stop(self, timeout: float) -> None: ...


class IngestDaemon:
    writer: BarWriter
    repairer: GapRepairer
    hub: MarketHub
    clock: FeedClock

    def __init__(
        self,
        config: IngestConfig,
        gateway: HistorySource,
        hub_factory: Callable[[queue.Queue, list[str]], MarketHub],
        listing: dict[str, list[ListedContract]] | None = None,
    ):
        """`gateway`: a GatewayClient (history + tokens); `hub_factory(out_queue, contracts) -> hub`
        with start()/stop()/set_contracts()/stats; `listing`: the symbols' listed months at start
        (resolved by the caller, so that a bad symbol fails before anything starts)."""
        self.config = config
        self.gateway = gateway
        self.events: queue.Queue = queue.Queue()
        self.clock = FeedClock()
        self.follower: RollFollower | None = None
        if config.symbols:
            if listing is None or config.stock_market_open is None:
                raise ValueError("symbols need their listing and the stock market's days (the expiries and rolls)")
            self.follower = RollFollower(config.symbols, listing, config.roll_rule, config.stock_market_open)
        # the contracts followed now: the configured ones, plus each symbol's front and next month
        # by the machine's clock (corrected by the feed's own clock once its first event arrives)
        self.followed: list[str] = self._wanted(time.time_ns())
        if not self.followed:
            raise ValueError("nothing to ingest: expected contract ids or symbols")
        self.hub = hub_factory(self.events, list(self.followed))
        self.instance_id = instance_name()
        self.counters: dict[str, Counters] = {}
        self.aggregators: dict[str, BarAggregator] = {}
        self._last_trade_ns: dict[str, int | None] = {}
        self._last_event_ns: int | None = None
        self._connection_state = "starting"
        self._connects = 0
        self._awaiting_resume: set[str] = set()
        self._stop = threading.Event()
        self._stall_watches: dict[str, StallWatch] = {}
        if config.stall_after_seconds is not None and config.calendar is None:
            raise ValueError("stall_after_seconds needs a calendar: the market's sessions say when trades are due")
        self._track(self.followed)
        self._next_follow_check = 0.0
        self._next_roll_ns: int | None = None  # the feed time of the next roll instant, once known
        self._listing_watcher = (
            ListingWatcher(config.listing, self.events, config.listing_refresh_seconds) if self.follower and config.listing else None
        )
        self._watch_from_ns: int | None = None  # when the watch began: a contract's reference until its first trade
        self._next_stall_check = 0.0
        self.writer = StoreWriter(
            config.database_url,
            list(self.followed),
            self.counters,
            instance_id=self.instance_id,
            outage_buffer_bars=config.outage_buffer_bars,
            trade_flush_seconds=config.trade_flush_seconds,
            trade_batch_size=config.trade_batch_size,
            heartbeat_seconds=config.heartbeat_seconds,
            repair_delay_seconds=config.repair_delay_seconds,
            heartbeat_state=self._heartbeat_state,
        )
        self.repairer = Repairer(
            config.database_url,
            gateway,
            list(self.followed),
            config.timeframes,
            self.clock,
            self.counters,
            initial_lookback=config.initial_lookback,
            trades_retention_days=config.trades_retention_days,
        )

    # ------------------------------------------------------------------ contracts and rolls
    def _wanted(self, at_ns: int) -> list[str]:
        """The configured contracts and the months the roll rule follows at `at_ns`."""
        wanted = [str(c) for c in self.config.contracts]
        if self.follower is not None:
            wanted += [c for c in self.follower.follow(from_ns(at_ns)) if c not in wanted]
        return wanted

    def _track(self, contract_ids: list[str]) -> None:
        """Counters, an aggregator and a stall watch for contracts new to this daemon."""
        for cid in contract_ids:
            self.counters.setdefault(cid, Counters())
            self._last_trade_ns.setdefault(cid, None)
            # a fresh aggregator treats its first window as joined mid-way (partial, repaired)
            self.aggregators[cid] = BarAggregator(cid, self.config.timeframes, grace_ns=int(self.config.grace_seconds * NS_PER_SECOND))
            self._awaiting_resume.add(cid)
            if self.config.stall_after_seconds is not None and self.config.calendar is not None:
                self._stall_watches[cid] = StallWatch(self.config.calendar, timedelta(seconds=self.config.stall_after_seconds))

    def _follow_rolls(self) -> None:
        """Once a second: the months to follow at the feed's now; a change (a roll instant passed,
        a month listed) subscribes the new months ahead and drops the rolled one, no restart."""
        if self.follower is None:
            return
        now_ns = self.clock.now_ns()
        # at the latest once a second, and at once when the feed's clock passes the next roll
        # instant (a fast replay moves minutes of market in that second)
        if time.monotonic() < self._next_follow_check and (now_ns is None or self._next_roll_ns is None or now_ns < self._next_roll_ns):
            return
        self._next_follow_check = time.monotonic() + STALL_CHECK_SECONDS
        at_ns = now_ns if now_ns is not None else time.time_ns()
        wanted = self._wanted(at_ns)
        upcoming = self.follower.next_change_after(from_ns(at_ns))
        self._next_roll_ns = to_ns(upcoming) if upcoming is not None else None
        if wanted != self.followed:
            self._change_followed(wanted, now_ns)

    def _change_followed(self, wanted: list[str], now_ns: int | None) -> None:
        added = [c for c in wanted if c not in self.followed]
        dropped = [c for c in self.followed if c not in wanted]
        if added:
            # the new month's bars are stored from its first trade on; its gap repair fetches
            # what it traded before (from its newest stored bar, or the initial look-back)
            self._track(added)
            self.writer.add_contracts(added)
            self.repairer.add_contracts(added)
            self.repairer.request_gap_repair()
        for cid in dropped:
            # its open bars are incomplete: queued for repair from history like at a shutdown
            agg = self.aggregators.pop(cid)
            self._handle_output(cid, agg.flush_open(now_ns))
            self._stall_watches.pop(cid, None)
            self._awaiting_resume.discard(cid)
        self.followed = wanted
        self.hub.set_contracts(wanted)
        assert self.follower is not None
        at = from_ns(now_ns) if now_ns is not None else datetime.now(timezone.utc)
        log.info(
            kv(
                "contracts_followed",
                contracts=",".join(wanted),
                added=",".join(added) or "none",
                dropped=",".join(dropped) or "none",
                front_months=",".join(self.follower.front_months(at)),
                at=at.isoformat(),
            )
        )

    def _on_listing(self, update: ListingUpdate) -> None:
        assert self.follower is not None
        changes = self.follower.update(update.listing)
        if changes:
            log.info(kv("listing_changed", **changes))
            self.writer.submit_roll_points(self.follower.roll_points(), self.config.roll_rule.name)
        self._next_follow_check = 0.0  # decide at once

    # ------------------------------------------------------------------ lifecycle
    def _migrate_with_retry(self) -> None:
        deadline = time.monotonic() + self.config.db_wait_seconds
        delay = 0.5
        while True:
            try:
                conn = connect(self.config.database_url)
                try:
                    migrate(conn)
                    if self.config.trades_retention_days is not None and self.config.bars_compress_after_days is not None:
                        with transaction(conn):
                            apply_policies(
                                conn,
                                trades_retention_days=self.config.trades_retention_days,
                                bars_compress_after_days=self.config.bars_compress_after_days,
                            )
                finally:
                    conn.close()
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(kv("db_wait", error=str(exc).splitlines()[0], retry_in_s=f"{delay:.1f}"))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def start(self) -> None:
        """Migrate, take the per-contract locks (a second daemon refuses here), open the feed."""
        self._migrate_with_retry()
        self.writer.acquire_locks()
        self.writer.start()
        self.repairer.start()
        # the first connect is a feed start: repair from the newest stored bar to now
        self.repairer.request_gap_repair()
        self.hub.start()
        if self.follower is not None:
            self.writer.submit_roll_points(self.follower.roll_points(), self.config.roll_rule.name)
        if self._listing_watcher is not None:
            self._listing_watcher.start()
        log.info(
            kv(
                "ingest_started",
                instance=self.instance_id,
                contracts=",".join(self.followed),
                symbols=",".join(self.config.symbols) or "none",
                timeframes=",".join(tf.label for tf in self.config.timeframes),
            )
        )

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """The main loop; returns when stopped (SIGTERM/SIGINT) or on a fatal writer error."""
        while not self._stop.is_set():
            items = self._drain()
            if items:
                self._process(items)
            self._advance_clocks()
            self._check_stalls()
            self._follow_rolls()
            if self.writer.fatal is not None:
                log.error(kv("ingest_fatal", error=str(self.writer.fatal)))
                self.shutdown()
                return 1
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_BUDGET_SECONDS
        log.info(kv("ingest_stopping"))
        if self._listing_watcher is not None:
            self._listing_watcher.stop()
        try:
            self.hub.stop()
        except Exception as exc:  # a hub that fails to stop must not block the flush
            log.warning(kv("hub_stop_failed", error=str(exc)))
        items = self._drain(wait=False)
        if items:
            self._process(items)
        # bars still open are incomplete: never stored as final, repaired after the restart
        now_ns = self.clock.now_ns()
        for cid, agg in self.aggregators.items():
            self._handle_output(cid, agg.flush_open(now_ns))
        self.repairer.stop(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
        self._connection_state = "stopped"
        flushed = self.writer.stop(timeout=max(0.5, deadline - time.monotonic()))
        log.info(kv("ingest_stopped", flushed=flushed, counters={cid: c.as_dict() for cid, c in self.counters.items()}))

    # ------------------------------------------------------------------ main loop
    def _drain(self, wait: bool = True) -> list:
        items = []
        try:
            items.append(self.events.get(timeout=IDLE_WAIT_SECONDS) if wait else self.events.get_nowait())
        except queue.Empty:
            return items
        while len(items) < DRAIN_MAX_ITEMS:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                break
        return items

    def _process(self, items: list) -> None:
        trades: dict[str, list[Trade]] = {}
        for item in items:
            if isinstance(item, Trade):
                trades.setdefault(item.contract_id, []).append(item)
            elif isinstance(item, Quote):
                if item.timestamp is not None:
                    self._observe(to_ns(item.timestamp))
            elif isinstance(item, HubEvent):
                # trades received before the event belong to the connection before it
                self._aggregate(trades)
                trades = {}
                self._on_hub_event(item)
            elif isinstance(item, ListingUpdate):
                self._on_listing(item)
        self._aggregate(trades)

    def _observe(self, event_ns: int) -> None:
        self.clock.observe(event_ns)
        if self._last_event_ns is None or event_ns > self._last_event_ns:
            self._last_event_ns = event_ns

    def _on_hub_event(self, event: HubEvent) -> None:
        if event.kind == "connected":
            self._connection_state = "connected"
            self._connects += 1
            for cid, agg in self.aggregators.items():
                agg.mark_feed_restart()
                if self._connects > 1:
                    self.counters[cid].reconnects += 1
            self._awaiting_resume = set(self.aggregators)
            self.repairer.request_gap_repair()
            log.info(kv("feed_connected", detail=event.detail))
        elif event.kind == "disconnected":
            self._connection_state = "disconnected"
            log.warning(kv("feed_disconnected", detail=event.detail))
        elif event.kind == "logout":
            log.warning(kv("gateway_logout", detail=event.detail))
        # 'malformed' events are counted by the hub itself (feed-wide, see _heartbeat_state)

    def _aggregate(self, trades: dict[str, list[Trade]]) -> None:
        received_at = datetime.now(timezone.utc)
        for cid, batch in trades.items():
            agg = self.aggregators.get(cid)
            if agg is None:
                continue  # not ours (the hub only subscribes ours; defensive)
            ts = np.fromiter((to_ns(t.timestamp) for t in batch), dtype=np.int64, count=len(batch))
            px = np.fromiter((t.price for t in batch), dtype=np.float64, count=len(batch))
            sz = np.fromiter((t.size for t in batch), dtype=np.int64, count=len(batch))
            valid, reasons = split_valid(ts, px, sz)
            if not valid.all():
                bad = np.flatnonzero(~valid)
                self.counters[cid].rejected_trades += bad.size
                log.warning(kv("trades_rejected", contract=cid, count=bad.size, first_reason=reasons[bad[0]]))
                keep = np.flatnonzero(valid)
                batch = [batch[i] for i in keep]
                ts, px, sz = ts[valid], px[valid], sz[valid]
            if ts.size == 0:
                continue
            self._observe(int(ts.max()))
            if cid in self._awaiting_resume:
                # where the aggregator resumes after a (re)connect: the gap repair ends its search
                # for the newest stored bar there (bars after it may already be stored live)
                self._awaiting_resume.discard(cid)
                resumed_ns = int(ts.min())
                self.repairer.feed_resumed(cid, resumed_ns)
                # durable before the first bar of this connection (submitted below, in order): a
                # daemon killed before its gap repair ran leaves the gap's start to the next one
                self.writer.submit_feed_resumed(cid, from_ns(resumed_ns))
            c = self.counters[cid]
            c.trades += ts.size
            last = int(ts.max())
            previous = self._last_trade_ns[cid]
            if previous is None or last > previous:
                self._last_trade_ns[cid] = last
            # the bars a trade closes go to the writer before the trade itself, so the bar's write
            # and NOTIFY never wait behind the raw-trade and tick work of the same batch
            self._handle_output(cid, agg.add_trades(ts, px, sz))
            self.writer.submit_trades(TradeBatch(cid, ts.tolist(), px.tolist(), sz.tolist(), [t.side for t in batch], received_at))

    def _advance_clocks(self) -> None:
        now_ns = self.clock.now_ns()
        if now_ns is None:
            return
        for cid, agg in self.aggregators.items():
            out = agg.advance_clock(now_ns)
            if out:
                self._handle_output(cid, out)

    def _check_stalls(self) -> None:
        """Once a second: a contract whose market has been open `stall_after_seconds` since its
        last trade is stalled (the hub may still ping): log, count, reconnect; and log its end."""
        if not self._stall_watches or time.monotonic() < self._next_stall_check:
            return
        self._next_stall_check = time.monotonic() + STALL_CHECK_SECONDS
        # before any event the feed has no clock of its own: the live gateway's is the wall clock
        # (a subscription that never delivers, such as an expired contract's, is a stall too)
        now_ns = self.clock.now_ns()
        if now_ns is None:
            now_ns = time.time_ns()
        if self._watch_from_ns is None:
            self._watch_from_ns = now_ns
        now = from_ns(now_ns)
        stalled = []
        for cid, watch in self._stall_watches.items():
            last = self._last_trade_ns[cid]
            event = watch.observe(from_ns(last if last is not None else self._watch_from_ns), now)
            if event is None:
                continue
            seconds = f"{event.open_without_trades.total_seconds():.1f}"
            if event.kind == "resumed":
                log.info(kv("feed_resumed", contract=cid, open_seconds_without_trades=seconds))
                continue
            self.counters[cid].feed_stalls += 1
            stalled.append(cid)
            log.warning(
                kv(
                    "feed_stalled",
                    contract=cid,
                    open_seconds_without_trades=seconds,
                    last_trade_at=from_ns(last).isoformat() if last is not None else "none",
                    action="reconnect",
                )
            )
        if stalled:
            self.hub.reconnect(f"no trade of {','.join(stalled)} for {self.config.stall_after_seconds:g} s of open market")

    def _handle_output(self, cid: str, out) -> None:
        if not out:
            return
        c = self.counters[cid]
        repairs: list[RepairRequest] = []
        delay = timedelta(seconds=self.config.repair_delay_seconds)
        if out.n_closed:
            closed = out.closed
            complete = closed["complete"].to_numpy()
            if complete.all():
                self.writer.submit_bars(closed.drop(columns="complete"))
            elif complete.any():
                self.writer.submit_bars(closed.loc[complete].drop(columns="complete"))
            if not complete.all():
                partial = closed.loc[~complete]
                c.partial_bars += len(partial)
                for row in partial.itertuples(index=False):
                    repairs.append(self._repair(cid, row.timeframe_unit, row.timeframe_value, row.timestamp, delay, "partial"))
        if out.late_trades:
            c.late_trades += out.late_trades
            log.warning(kv("late_trades", contract=cid, count=out.late_trades, action="queued_for_repair"))
        if out.n_repairs:
            for row in out.repairs.itertuples(index=False):
                repairs.append(self._repair(cid, row.timeframe_unit, row.timeframe_value, row.timestamp, delay, "late_trade"))
        if repairs:
            c.repair_requests += len(repairs)
            self.writer.submit_repairs(repairs)

    @staticmethod
    def _repair(cid: str, unit: int, value: int, start, delay: timedelta, reason: str) -> RepairRequest:
        tf = Timeframe(int(unit), int(value))
        start_dt = start.to_pydatetime()
        return RepairRequest(cid, tf.unit, tf.value, start_dt, bar_end(start_dt, tf) + delay, reason)

    # ------------------------------------------------------------------ heartbeats
    def hub_stats(self) -> dict:
        stats = getattr(self.hub, "stats", None)
        return dict(stats) if isinstance(stats, dict) else {}

    def _heartbeat_state(self) -> dict:
        stats = self.hub_stats()
        state = stats.get("state", self._connection_state) if self._connection_state != "stopped" else "stopped"
        out = {}
        for cid in self.counters:
            # malformed events are rejected by the hub before they reach a contract: feed-wide
            self.counters[cid].malformed_events = int(stats.get("malformed", 0))
            last_trade = self._last_trade_ns[cid]
            stalled = cid in self._stall_watches and self._stall_watches[cid].stalled_since is not None
            if cid not in self.followed:
                shown = "rolled"  # rolled out of (no longer followed): also after a stop, so status tells it apart
            else:
                shown = "stalled" if stalled and state != "stopped" else str(state)
            out[cid] = {
                "connection_state": shown,
                "last_event_at": from_ns(self._last_event_ns) if self._last_event_ns is not None else None,
                "last_trade_at": from_ns(last_trade) if last_trade is not None else None,
            }
        return out
