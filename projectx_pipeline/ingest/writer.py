"""The daemon's only database writer: closed bars, raw trades, tick notifications, repair
requests and heartbeats, on one connection owned by one thread.

This module is the buffering, ordering, reconnecting and transaction side; the SQL of each table
is in `storage` (bars, trades, repairs, heartbeats, locks). The writer owns every transaction:
its connection is in autocommit (one statement, one asynchronous commit) and several statements
or a durable commit go through `_transaction`.

A database outage never reaches the aggregation: items wait here in memory (bounded), are
written in order when the database returns, and when the bar buffer overflows the oldest bars
are dropped, counted and turned into repair requests, so history fills them in later.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import pandas as pd
import psycopg2
import psycopg2.extensions

from ..domain.errors import DomainError
from ..domain.rolls import RollPoint
from ..domain.timeframes import Timeframe, bar_end
from ..logs import get_logger, kv
from ..storage.bars import BarStore
from ..storage.continuous import record_roll_points
from ..storage.db import close_quietly, commit_asynchronously, commit_durably, connect, is_connection_error, is_transient_error
from ..storage.feed_resumes import record_feed_resumes
from ..storage.heartbeats import Heartbeat, heartbeat_holder, write_heartbeats
from ..storage.locks import try_lock_contract
from ..storage.repairs import RepairRequest, queue_repairs
from ..storage.trades import TradeBatch, copy_trades, notify_ticks
from ..storage.urls import redact_url
from .counters import Counters

T = TypeVar("T")

log = get_logger("projectx.ingest.writer")

MAX_BARS_PER_STATEMENT = 50_000
# Bars commit asynchronously (see _ensure_connection); a server crash can lose at most the last
# 3 × wal_writer_delay (600 ms by default) of them. Bars written this recently are kept and
# written again (keep-existing: survivors are untouched) after the connection comes back.
ASYNC_COMMIT_RISK_SECONDS = 5.0


class AnotherDaemonRunning(RuntimeError):
    pass


@dataclass
class _Pending:
    bars: collections.deque = field(default_factory=collections.deque)  # DataFrames, in close order
    bar_count: int = 0
    repairs: list = field(default_factory=list)
    trades: collections.deque = field(default_factory=collections.deque)
    trade_count: int = 0
    ticks: list = field(default_factory=list)  # TradeBatches not yet announced on tick_data_channel
    resumes: list = field(default_factory=list)  # (contract_id, resumed_at) not yet recorded in feed_resumes
    roll_points: list = field(default_factory=list)  # (RollPoint list, rule name) not yet recorded in contract_rolls


class StoreWriter(threading.Thread):
    def __init__(
        self,
        database_url: str,
        contracts: list[str],
        counters: dict[str, Counters],
        *,
        instance_id: str,
        outage_buffer_bars: int,
        trade_flush_seconds: float,
        trade_batch_size: int,
        heartbeat_seconds: float,
        repair_delay_seconds: float,
        heartbeat_state,
    ):
        super().__init__(name="projectx-writer", daemon=True)
        self.url = database_url
        self.contracts = contracts
        self.counters = counters
        self.instance_id = instance_id
        self.outage_buffer_bars = outage_buffer_bars
        self.trade_flush_seconds = trade_flush_seconds
        self.trade_batch_size = trade_batch_size
        self.max_buffered_trades = max(100_000, trade_batch_size * 20)
        self.heartbeat_seconds = heartbeat_seconds
        self.repair_delay_seconds = repair_delay_seconds
        self.heartbeat_state = heartbeat_state  # callable -> {contract: {...}}
        self.inbox: queue.Queue = queue.Queue()
        self.pending = _Pending()
        self.conn: psycopg2.extensions.connection | None = None
        self.bar_store: BarStore | None = None  # the write path of `conn`, new with every connection
        self.db_up = False
        self.fatal: BaseException | None = None
        self._stop_event = threading.Event()
        self._final_heartbeat = False
        self._recent_bars: collections.deque = collections.deque()  # (monotonic time, frame) written lately
        self._rewrite_bars: list[pd.DataFrame] = []  # written just before a lost connection: write again
        self._pause_until = 0.0  # after a transient server error (disk full, timeout): retry then
        self._next_connect = 0.0
        self._backoff = 0.5
        self._last_trade_flush = time.monotonic()
        self._last_heartbeat = 0.0
        self.started_at = datetime.now(timezone.utc)

    # ------------------------------------------------------------------ public API (any thread)
    def submit_bars(self, bars: pd.DataFrame) -> None:
        if not bars.empty:
            self.inbox.put(("bars", bars))

    def submit_feed_resumed(self, contract_id: str, resumed_at: datetime) -> None:
        """The feed of `contract_id` resumed at `resumed_at` after a (re)connect: recorded durably
        before any bar submitted after this call, so a daemon killed before its gap repair leaves
        the gap's start for the next one."""
        self.inbox.put(("resumed", (contract_id, resumed_at)))

    def submit_trades(self, batch: TradeBatch) -> None:
        self.inbox.put(("trades", batch))

    def submit_repairs(self, requests: list[RepairRequest]) -> None:
        if requests:
            self.inbox.put(("repairs", requests))

    def add_contracts(self, contract_ids: list[str]) -> None:
        """Write for these contracts too from now on (a month followed after a roll): their
        locks are taken, their heartbeats written, before any of their bars."""
        self.inbox.put(("contracts", list(contract_ids)))

    def submit_roll_points(self, points: list[RollPoint], rule: str) -> None:
        """Record the roll points of the followed symbols (`contract_rolls`, which the continuous
        front-month series reads)."""
        if points:
            self.inbox.put(("roll_points", (list(points), rule)))

    def request_heartbeat(self) -> None:
        self.inbox.put(("heartbeat", None))

    def acquire_locks(self) -> None:
        """Take the per-contract locks (called once at start, before the feed opens)."""
        self._ensure_connection(raise_on_failure=True)

    def stop(self, timeout: float) -> bool:
        """Flush what can be flushed within `timeout`, write a final heartbeat, close."""
        self.inbox.put(("final_heartbeat", None))
        self._stop_event.set()
        self.join(timeout)
        return not self.is_alive()

    # ------------------------------------------------------------------ thread
    def run(self) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is not None:
                self._accept(item)
                # take everything already waiting before touching the database
                while True:
                    try:
                        self._accept(self.inbox.get_nowait())
                    except queue.Empty:
                        break
            try:
                self._flush()
            except Exception as exc:  # noqa: BLE001 — a bug, not a database state: stop loudly, never hang
                log.exception(kv("writer_failed", error=str(exc)))
                self.fatal = exc
            if self._stop_event.is_set() and self.inbox.empty() and self.fatal is None:
                # the last chance to write: try to connect now rather than wait out a reconnect
                # backoff (the database may have just come back), or the buffered bars, the repair
                # requests of dropped ones and the final heartbeat would be lost
                self._next_connect = 0.0
                self._flush(force=True)
                self._close()
                return
            if self.fatal is not None:
                self._close()
                return

    def _accept(self, item) -> None:
        kind, payload = item
        p = self.pending
        if kind == "bars":
            p.bars.append(payload)
            p.bar_count += len(payload)
            while p.bar_count > self.outage_buffer_bars and len(p.bars) > 1:
                self._drop_oldest_bars()
        elif kind == "trades":
            p.trades.append(payload)
            p.trade_count += len(payload.ts_ns)
            p.ticks.append(payload)
            while p.trade_count > self.max_buffered_trades and len(p.trades) > 1:
                old = p.trades.popleft()
                p.trade_count -= len(old.ts_ns)
                self.counters[old.contract_id].trades_dropped += len(old.ts_ns)
                log.warning(kv("trades_dropped", contract=old.contract_id, count=len(old.ts_ns), reason="buffer_full"))
        elif kind == "repairs":
            p.repairs.extend(payload)
        elif kind == "resumed":
            p.resumes.append(payload)
        elif kind == "roll_points":
            p.roll_points.append(payload)
        elif kind == "contracts":
            new = [c for c in payload if c not in self.contracts]
            self.contracts = self.contracts + new
            if new and self.conn is not None and self.conn.closed == 0:
                # else the next connection locks them with the others
                try:
                    self._lock_contracts(new)
                except AnotherDaemonRunning as exc:
                    log.error(kv("fatal", reason=exc))
                    self.fatal = exc
                except psycopg2.Error as exc:
                    self._on_db_error(exc, "locks")
        elif kind == "heartbeat":
            self._last_heartbeat = 0.0
        elif kind == "final_heartbeat":
            self._final_heartbeat = True

    def _drop_oldest_bars(self) -> None:
        p = self.pending
        old = p.bars.popleft()
        p.bar_count -= len(old)
        for row in old.itertuples(index=False):
            self.counters[row.contract_id].bars_dropped += 1
            p.repairs.append(self._repair_of(row, "outage_buffer_full"))
        log.warning(kv("bars_dropped", count=len(old), reason="outage_buffer_full", action="queued_for_repair"))

    # ------------------------------------------------------------------ database
    def _ensure_connection(self, raise_on_failure: bool = False) -> bool:
        if self.conn is not None and self.conn.closed == 0:
            return True
        if not raise_on_failure and time.monotonic() < self._next_connect:
            return False
        try:
            self.conn = connect(self.url, application_name=f"projectx_ingest:{self.instance_id}")
            self.bar_store = BarStore(self.conn)
            self._lock_contracts()
        except AnotherDaemonRunning as exc:
            self.fatal = exc
            self._close()
            if raise_on_failure:
                raise
            log.error(kv("fatal", reason=exc))
            return False
        except Exception as exc:
            self._close()
            self._next_connect = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 5.0)
            if raise_on_failure:
                raise
            log.warning(kv("db_unavailable", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__, retry_in_s=f"{self._backoff:.1f}"))
            return False
        # Live bars and ticks commit asynchronously and one statement at a time (autocommit): a
        # durable commit waits for a WAL flush (~5 ms here) and every extra round trip costs more,
        # together beyond the bar-close → NOTIFY budget. What a server crash can lose is written
        # again from _recent_bars. Repair requests and raw trades (not re-fetchable) commit durably.
        commit_asynchronously(self.conn)
        if not self.db_up:
            log.info(kv("db_connected", url=redact_url(self.url)))
        self.db_up = True
        self._backoff = 0.5
        return True

    def _open_conn(self) -> psycopg2.extensions.connection:
        """The connection, for code that runs only after `_ensure_connection` succeeded."""
        assert self.conn is not None, "no database connection"
        return self.conn

    def _store(self) -> BarStore:
        """The bar store of the connection, under the same condition."""
        assert self.bar_store is not None, "no database connection"
        return self.bar_store

    def _lock_contracts(self, contract_ids: list[str] | None = None) -> None:
        conn = self._open_conn()
        conn.autocommit = True
        for cid in self.contracts if contract_ids is None else contract_ids:
            if not try_lock_contract(conn, cid):
                held = heartbeat_holder(conn, cid)
                holder = f" (instance {held[0]}, last heartbeat {held[1].isoformat()})" if held else ""
                raise AnotherDaemonRunning(f"another ingestion daemon is already running for {cid}{holder}: refusing to start a second one")

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False):
        """Several statements, or a durable commit, on the autocommit connection."""
        conn = self._open_conn()
        conn.autocommit = False
        try:
            if durable:
                commit_durably(conn)
            yield
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            if self.conn is not None and not self.conn.closed:
                with contextlib.suppress(Exception):
                    self.conn.autocommit = True

    def _close(self) -> None:
        close_quietly(self.conn)
        self.conn = None
        self.bar_store = None
        self.db_up = False

    def _on_db_error(self, exc: BaseException, what: str) -> None:
        for c in self.counters.values():
            c.db_errors += 1
        if is_connection_error(exc):
            if self.db_up:
                log.error(kv("db_lost", during=what, error=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
            self._close()
            self._next_connect = time.monotonic() + self._backoff
            self._rewrite_recent_bars()
        elif is_transient_error(exc):
            # disk full, statement timeout...: the data is fine, the server is not; keep everything
            # buffered (the outage buffer bounds it) and retry on the same connection later
            log.error(kv("db_error_transient", during=what, error=str(exc).strip().splitlines()[0], retry_in_s=f"{self._backoff:.1f}"))
            self._pause_until = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 5.0)
        else:
            log.error(kv("db_error", during=what, error=str(exc).strip()))
            try:
                self._open_conn().rollback()
            except Exception:
                self._close()

    def _rewrite_recent_bars(self) -> None:
        """After losing the connection: bars committed asynchronously just before may be lost with
        a crashed server. They are written again first thing after reconnecting — kept apart from
        the outage buffer (they are few, and already counted as written)."""
        self._rewrite_bars.extend(f for _, f in self._recent_bars)
        self._recent_bars.clear()

    def _remember_written(self, df: pd.DataFrame) -> None:
        now = time.monotonic()
        self._recent_bars.append((now, df))
        while self._recent_bars and now - self._recent_bars[0][0] > ASYNC_COMMIT_RISK_SECONDS:
            self._recent_bars.popleft()

    def _flush(self, force: bool = False) -> None:
        p = self.pending
        if not (
            p.bars
            or p.ticks
            or p.repairs
            or p.resumes
            or p.roll_points
            or self._rewrite_bars
            or self._trades_due(force)
            or self._heartbeat_due(force)
        ):
            return
        if time.monotonic() < self._pause_until and not force:
            self._forget_ticks()
            return
        if not self._ensure_connection():
            self._forget_ticks()
            return
        # resume points before bars: a live bar after a resume is never stored while the start
        # of the gap before it is known only to this process
        if p.resumes and not self._write_resumes():
            return
        if self._rewrite_bars:
            try:
                self._store().upsert(
                    pd.concat(self._rewrite_bars, ignore_index=True).drop_duplicates(
                        ["contract_id", "timeframe_unit", "timeframe_value", "timestamp"], keep="last"
                    ),
                    mode="keep",
                    source="live",
                )
            except psycopg2.Error as exc:
                self._on_db_error(exc, "bars")
                self._forget_ticks()
                return
            self._rewrite_bars = []
        # bars first and in order: the newest bar must never overtake an older one. Everything
        # waiting goes in one statement, so a backlog costs one round trip, not one per batch.
        while p.bars:
            if self.conn is None:  # lost while handling a refused batch: retry next round
                return
            frames: list[pd.DataFrame] = []
            while p.bars and sum(len(f) for f in frames) < MAX_BARS_PER_STATEMENT:
                frames.append(p.bars.popleft())
            df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
            try:
                result = self._store().upsert(df, mode="keep", source="live")
            except psycopg2.Error as exc:
                if is_connection_error(exc) or is_transient_error(exc):
                    p.bars.extendleft(reversed(frames))
                    self._on_db_error(exc, "bars")
                    self._forget_ticks()
                    return
                # a bar the database refuses (should never come from the aggregator): report it,
                # queue its windows for repair from history, and keep the feed going
                self._on_db_error(exc, "bars")
                p.bar_count -= len(df)
                self._repair_rejected(df, str(exc))
                continue
            p.bar_count -= len(df)
            self._remember_written(df)
            for cid, n in df.groupby("contract_id").size().items():
                c = self.counters[cid]
                c.bars_written += int(n)
                c.last_bar_at = max(c.last_bar_at or df["timestamp"].min(), df.loc[df.contract_id == cid, "timestamp"].max())
            log.debug(kv("bars_written", rows=result.rows, inserted=result.inserted, notified=result.notified))
        if p.ticks and not self._notify_ticks():
            return
        if p.repairs and not self._write_repairs():
            return
        if p.roll_points and not self._write_roll_points():
            return
        if self._trades_due(force) and not self._write_trades():
            return
        if self._heartbeat_due(force):
            self._write_heartbeats(final=force and self._final_heartbeat)

    def _repair_rejected(self, df: pd.DataFrame, reason: str) -> None:
        for row in df.itertuples(index=False):
            self.pending.repairs.append(self._repair_of(row, "rejected_by_database"))
        log.error(kv("bars_rejected", rows=len(df), action="queued_for_repair", reason=reason.splitlines()[0]))

    def _repair_of(self, row, reason: str) -> RepairRequest:
        """A repair request for a closed bar. `due_at` is in feed time, like every repair request
        (the repairer compares it with the feed clock): the bar's end plus the repair delay. The
        machine's time would never come due on a replay and mean nothing on a lagging feed."""
        tf = Timeframe(int(row.timeframe_unit), int(row.timeframe_value))
        start = row.timestamp.to_pydatetime()
        return RepairRequest(row.contract_id, tf.unit, tf.value, start, bar_end(start, tf) + timedelta(seconds=self.repair_delay_seconds), reason)

    def _durably(self, what: str, write: Callable[..., T], *args: object) -> tuple[bool, T | None]:
        """`write(conn, *args)` in one durable transaction: (True, its result), or (False, None)
        when the database refused it (handled and logged as `what`; the caller keeps its rows to retry)."""
        try:
            with self._transaction(durable=True):
                return True, write(self.conn, *args)
        except psycopg2.Error as exc:
            self._on_db_error(exc, what)
            return False, None

    def _write_repairs(self) -> bool:
        written, _ = self._durably("repairs", queue_repairs, self.pending.repairs)
        if written:
            self.pending.repairs = []
        return written

    def _write_resumes(self) -> bool:
        written, _ = self._durably("feed_resumes", record_feed_resumes, self.pending.resumes)
        if written:
            self.pending.resumes = []
        else:
            self._forget_ticks()
        return written

    def _write_roll_points(self) -> bool:
        while self.pending.roll_points:
            points, rule = self.pending.roll_points[0]
            try:
                written, changed = self._durably("roll_points", record_roll_points, points, rule)
            except DomainError as exc:  # a listing that contradicts the recorded rolls: say so, keep the feed
                log.error(kv("roll_points_refused", rule=rule, error=exc))
                written, changed = True, 0
            if not written:
                return False
            self.pending.roll_points.pop(0)
            if changed:
                log.info(kv("roll_points_recorded", rule=rule, changed=changed, points=len(points)))
        return True

    def _trades_due(self, force: bool) -> bool:
        p = self.pending
        if not p.trades:
            return False
        return force or p.trade_count >= self.trade_batch_size or time.monotonic() - self._last_trade_flush >= self.trade_flush_seconds

    def _write_trades(self) -> bool:
        p = self.pending
        try:
            with self._transaction(durable=True):
                copy_trades(self.conn, p.trades)
        except psycopg2.Error as exc:
            self._on_db_error(exc, "trades")
            if not (is_connection_error(exc) or is_transient_error(exc)):
                # unstorable rows (cannot come from the parser); drop them, loudly
                log.error(kv("trades_rejected", count=p.trade_count))
                p.trades.clear()
                p.trade_count = 0
            return False
        p.trades.clear()
        p.trade_count = 0
        self._last_trade_flush = time.monotonic()
        return True

    def _forget_ticks(self) -> None:
        """Tick notifications are live-only: while the database is away they are counted, not queued."""
        for batch in self.pending.ticks:
            self.counters[batch.contract_id].ticks_not_notified += len(batch.ts_ns)
        self.pending.ticks = []

    def _notify_ticks(self) -> bool:
        """False when the connection failed (it may be gone: nothing more this round)."""
        batches, self.pending.ticks = self.pending.ticks, []
        try:
            notify_ticks(self.conn, batches)
        except psycopg2.Error as exc:
            self.pending.ticks = batches
            self._forget_ticks()
            self._on_db_error(exc, "ticks")
            return False
        return True

    def _heartbeat_due(self, force: bool) -> bool:
        return force or time.monotonic() - self._last_heartbeat >= self.heartbeat_seconds

    def _write_heartbeats(self, final: bool = False) -> None:
        state = self.heartbeat_state()
        beats = [
            Heartbeat(
                cid,
                self.instance_id,
                "stopped" if final and state[cid]["connection_state"] != "rolled" else state[cid]["connection_state"],
                state[cid]["last_event_at"],
                state[cid]["last_trade_at"],
                self.counters[cid].last_bar_at,
                self.started_at,
                self.counters[cid].as_dict(),
            )
            for cid in self.contracts
        ]
        try:
            with self._transaction():
                write_heartbeats(self.conn, beats)
            self._last_heartbeat = time.monotonic()
        except psycopg2.Error as exc:
            self._on_db_error(exc, "heartbeat")


def instance_name() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}"
