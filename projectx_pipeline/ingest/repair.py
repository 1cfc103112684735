"""Gap repair from the gateway's history.

* After every (re)connect: for every configured timeframe, history from the newest bar stored
  before the point where the feed resumed (or a configured look-back on an empty database) to
  the feed's now, upserted replace-when-different, revisions counted. The resume point is also
  recorded in `feed_resumes` before the first live bar after it (by the writer), and forgotten
  once repaired: a daemon killed in between leaves it to the next daemon, whose gap search then
  starts before it, not after the live bars stored since.
* Continuously: windows in `bar_repairs` that are due (partial bars after a restart, late
  trades, bars dropped in an outage) are re-fetched once the window has closed, then removed.

Runs on its own thread with its own connection, so a slow REST answer or a database outage
never stalls the feed. The repairer owns that connection's transactions: every unit of work
(one history span, one batch of due windows with their removal) commits on its own.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import psycopg2.extensions

from ..domain.timeframes import Timeframe, bar_end, bar_start
from ..domain.timestamps import from_ns
from ..history import HistorySource, replace_from_history
from ..logs import get_logger, kv
from ..storage.bars import BarStore, last_bar_times
from ..storage.db import close_quietly, connect, is_connection_error, transaction
from ..storage.feed_resumes import forget_feed_resumes, oldest_unrepaired_resume
from ..storage.policies import enforce_trade_retention
from ..storage.repairs import due_repairs, remove_repairs
from .clock import FeedClock
from .counters import Counters

log = get_logger("projectx.ingest.repair")

# Wait this long for the first event after a connect (which tells the feed's "now") before
# falling back to the machine's clock for the end of a gap repair.
FEED_TIME_WAIT_SECONDS = 5.0
REPAIR_BATCH = 500
RETENTION_INTERVAL_SECONDS = 3600.0


class Repairer(threading.Thread):
    def __init__(
        self,
        database_url: str,
        gateway: HistorySource,
        contracts: list[str],
        timeframes: list[Timeframe],
        clock: FeedClock,
        counters: dict[str, Counters],
        *,
        initial_lookback: timedelta,
        poll_seconds: float = 0.5,
        trades_retention_days: int | None = None,
    ):
        super().__init__(name="projectx-repair", daemon=True)
        self.url = database_url
        self.gateway = gateway
        # every contract of this daemon, rolled months included: their gaps up to now and their
        # due windows are repaired (a rolled month trades until its expiry; its bars stay its own)
        self.contracts = contracts
        self.timeframes = timeframes
        self.clock = clock
        self.counters = counters
        self.initial_lookback = initial_lookback
        self.poll_seconds = poll_seconds
        self.trades_retention_days = trades_retention_days
        self._next_retention = 0.0  # monotonic time of the next plain-PostgreSQL trade retention
        self.conn: psycopg2.extensions.connection | None = None
        self.bar_store: BarStore | None = None  # the write path of `conn`, new with every connection
        self._stop_event = threading.Event()
        self._gap_requested_at: float | None = None
        # contract → its first trade after the oldest (re)connect whose gap is not repaired yet
        self._resume_floor: dict[str, int] = {}
        self._awaiting_resume = True  # no trade yet since the latest feed (re)connect
        self._lock = threading.Lock()
        self.gap_repairs_done = 0
        self.idle = threading.Event()

    def request_gap_repair(self) -> None:
        """The feed (re)connected: once its first trade arrived, repair from the newest bar stored
        before it resumed to the feed's now."""
        with self._lock:
            if self._gap_requested_at is None:
                self._resume_floor = {}
            # else the gap of an earlier reconnect is not repaired yet (history down, repairer
            # busy): keep its resume point, or the live bars stored since would hide that gap
            self._gap_requested_at = time.monotonic()
            self._awaiting_resume = True
        self.idle.clear()

    def add_contracts(self, contract_ids: list[str]) -> None:
        """Repair these contracts too from now on (a month followed after a roll)."""
        self.contracts = self.contracts + [c for c in contract_ids if c not in self.contracts]  # one assignment: the thread reads either list

    def feed_resumed(self, contract_id: str, first_trade_ns: int) -> None:
        """The first trade of `contract_id` since the last (re)connect (the aggregator's resume point)."""
        with self._lock:
            self._resume_floor.setdefault(contract_id, int(first_trade_ns))
            self._awaiting_resume = False

    def stop(self, timeout: float) -> None:
        self._stop_event.set()
        self.join(timeout)

    # ------------------------------------------------------------------ thread
    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                did_gap = self._maybe_gap_repair()
                did_due = self._repair_due_windows()
                self._maybe_enforce_retention()
                if not did_gap and not did_due and self._gap_requested_at is None:
                    self.idle.set()
            except Exception as exc:  # noqa: BLE001 — logged, retried; the feed must go on
                if is_connection_error(exc):
                    log.warning(kv("repair_db_unavailable", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                    self._close()
                else:
                    for c in self.counters.values():
                        c.gateway_errors += 1
                    log.error(kv("repair_failed", error=str(exc)))
                self._stop_event.wait(min(5.0, self.poll_seconds * 4))
                continue
            self._stop_event.wait(self.poll_seconds)
        self._close()

    def _maybe_enforce_retention(self) -> None:
        """Plain PostgreSQL has no retention job: delete expired raw trades hourly (a no-op on
        TimescaleDB, whose retention policy drops the chunks)."""
        if self.trades_retention_days is None or time.monotonic() < self._next_retention:
            return
        with transaction(self._connection()) as conn:
            enforce_trade_retention(conn, trades_retention_days=self.trades_retention_days)
        self._next_retention = time.monotonic() + RETENTION_INTERVAL_SECONDS

    def _connection(self) -> psycopg2.extensions.connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.url, application_name="projectx_ingest_repair")
            self.bar_store = BarStore(self.conn)
        return self.conn

    def _close(self) -> None:
        close_quietly(self.conn)
        self.conn = None
        self.bar_store = None

    def _feed_now(self, requested_at: float) -> datetime | None:
        """The feed's now for a gap repair: once the feed resumed (its first trade after the
        (re)connect arrived), else after FEED_TIME_WAIT_SECONDS (a quiet market) the clock, or
        the machine's time before any event. Not the clock alone: after a reconnect it is known
        but stale (carried forward from before the outage), and a repair up to it misses the gap."""
        with self._lock:
            resumed = not self._awaiting_resume
        now_ns = self.clock.now_ns()
        if resumed and now_ns is not None:
            return from_ns(now_ns)
        if time.monotonic() - requested_at >= FEED_TIME_WAIT_SECONDS:
            return from_ns(now_ns) if now_ns is not None else datetime.now(timezone.utc)
        return None

    def _gap_starts(self, conn, cid: str) -> dict[Timeframe, datetime | None]:
        """Per timeframe, the newest stored bar whose window began before the one where the feed
        resumed. Not simply the newest stored bar: by the time this runs the live feed has often
        stored complete bars from after the reconnect (and the window holding the resume point
        may have been repaired already), while the gap lies before them."""
        with self._lock:
            resumed_ns = self._resume_floor.get(cid)
        with transaction(conn):  # a read: ends at once, never holds a snapshot
            # a resume point recorded by an earlier daemon that stopped before repairing its gap
            recorded = oldest_unrepaired_resume(conn, cid)
            resumed = from_ns(resumed_ns) if resumed_ns is not None else None
            if recorded is not None and (resumed is None or recorded < resumed):
                resumed = recorded
            if resumed is None:  # no trade since the (re)connect: nothing newer can be stored live
                return last_bar_times(conn, cid, self.timeframes)
            return last_bar_times(conn, cid, self.timeframes, before={tf: bar_start(resumed, tf) for tf in self.timeframes})

    def _maybe_gap_repair(self) -> bool:
        with self._lock:
            requested_at = self._gap_requested_at
        if requested_at is None:
            return False
        now = self._feed_now(requested_at)
        if now is None:
            return False
        conn = self._connection()
        contracts = self.contracts
        for cid in contracts:
            last = self._gap_starts(conn, cid)
            for tf in self.timeframes:
                start = last[tf] or (now - self.initial_lookback)
                with transaction(conn):
                    self._fetch_and_store(cid, tf, start, now, reason="gap")
            with transaction(conn):  # every timeframe's gap up to `now` is stored
                forget_feed_resumes(conn, cid, now)
        with self._lock:
            if self._gap_requested_at == requested_at:
                self._gap_requested_at = None  # a newer request (another reconnect) stays pending
        self.gap_repairs_done += 1
        log.info(kv("gap_repair_done", contracts=len(contracts), timeframes=len(self.timeframes), until=now.isoformat()))
        return True

    def _fetch_and_store(self, cid: str, tf: Timeframe, start: datetime, end: datetime, reason: str, windows: set | None = None) -> int:
        """Replace [start, end) from history (only `windows`, when given), in the caller's
        transaction when one is open; returns the bars inserted or revised."""
        if end <= start:
            return 0
        assert self.bar_store is not None, "repairs run on an open connection"
        _, result = replace_from_history(self.gateway, self.bar_store, cid, tf, start, end, windows=windows)
        changed = result.inserted + result.revised
        self.counters[cid].repairs += changed
        if changed:
            log.info(
                kv(
                    "bars_repaired",
                    contract=cid,
                    timeframe=tf.label,
                    reason=reason,
                    inserted=result.inserted,
                    revised=result.revised,
                    **{"from": start.isoformat()},
                    to=end.isoformat(),
                )
            )
        return changed

    def _repair_due_windows(self) -> bool:
        now_ns = self.clock.now_ns()
        if now_ns is None:
            return False
        conn = self._connection()
        with transaction(conn):
            rows = due_repairs(conn, self.contracts, from_ns(now_ns), REPAIR_BATCH)
        if not rows:
            return False
        groups: dict[tuple, list[datetime]] = {}
        for cid, unit, value, start in rows:
            groups.setdefault((cid, unit, value), []).append(start)
        for (cid, unit, value), starts in groups.items():
            tf = Timeframe(unit, value)
            window = {pd.Timestamp(s).tz_convert("UTC") for s in starts}
            # the repaired bars and the removal of their windows commit together
            with transaction(conn):
                self._fetch_and_store(cid, tf, min(starts), bar_end(max(starts), tf), reason="window", windows=window)
                remove_repairs(conn, cid, unit, value, starts)
        return True
