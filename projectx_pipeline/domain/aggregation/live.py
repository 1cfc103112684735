"""The live form of aggregation: the daemon's per-contract `BarAggregator`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from ..contracts import ContractId
from ..errors import DomainError
from ..timeframes import DEFAULT_TIMEFRAMES, Timeframe, bar_end, bar_starts_ns, parse_timeframes
from ..timestamps import NS_PER_SECOND, from_ns, to_ns
from .trade_checks import NAT, check_now, coerce_trades, raise_if_invalid

# --------------------------------------------------------------------------- live aggregation
#
# The live aggregator keeps, per timeframe, at most one open bar and a "floor": the instant
# before which every window of that timeframe is closed. A trade earlier than the highest
# floor falls in a closed window of some timeframe and is late. Trades of a batch are first
# reduced to base windows (the gcd of all timeframes, so that every window of every timeframe
# is a union of base windows); each timeframe then reduces the base groups, so the per-trade
# work is independent of the number of timeframes.

_NS_PER_HOUR = 3600 * NS_PER_SECOND

# One row per bar being built or closed; first_ts/last_ts are the timestamps of the open and
# close trades, which decide where trades arriving in a later batch go.
_ROW = np.dtype(
    [
        ("start", "i8"),
        ("first_ts", "i8"),
        ("last_ts", "i8"),
        ("open", "f8"),
        ("high", "f8"),
        ("low", "f8"),
        ("close", "f8"),
        ("volume", "i8"),
    ]
)

REPAIR_COLUMNS = ["contract_id", "timestamp", "timeframe_unit", "timeframe_value", "late_trades"]


# ..................................................................... windows


def _base_step_ns(timeframes) -> int:
    """Length of the base window: the gcd of all timeframes, in ns.

    Hour, day, week and month windows begin and end at session opens (18:00 New York, a whole
    UTC hour) or whole hours after them, so they nest into 1 hour; second and minute windows
    are clock-aligned multiples of their length."""
    seconds = 0
    for tf in timeframes:
        seconds = math.gcd(seconds, tf.step_ns // NS_PER_SECOND if tf.is_clock_aligned else 3600)
    return seconds * NS_PER_SECOND


@lru_cache(maxsize=4096)
def _window_bounds(tf: Timeframe, label: int) -> tuple[int, int, int]:
    """(first instant, end, next window's first instant) of the window of `tf` labelled `label`.

    Trades in [first, next) belong to the window; `end` (from `bar_end`, before the grace) is when
    it may close. They differ from the label for calendar bars (a daily bar labelled D 00:00 UTC
    starts at 18:00 New York on D-1) and for session-anchored bars (the last 4h bar ends at the
    17:00 close, but trades in the halt still fall in it)."""
    if tf.is_clock_aligned:
        step = tf.step_ns
        assert step is not None  # clock-aligned (second and minute) bars have a fixed length
        return label, label + step, label + step
    end = to_ns(bar_end(from_ns(label), tf))
    # Window bounds of these timeframes are whole UTC hours (see _base_step_ns): scan the hours
    # around the label and keep those that `bar_starts_ns` assigns to it.
    span = tf.nominal_seconds // 3600 + 48
    hours = label + np.arange(-span, span + 1, dtype=np.int64) * _NS_PER_HOUR
    inside = np.flatnonzero(bar_starts_ns(hours, tf) == label)
    return int(hours[inside[0]]), end, int(hours[inside[-1] + 1])


def _reduce(keys, first_ts, last_ts, open_, high, low, close, volume) -> np.ndarray:
    """Rows of _ROW, one per run of equal `keys` (sorted), merging rows in order."""
    cut = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    first = np.concatenate(([0], cut))
    last = np.concatenate((cut - 1, [keys.size - 1]))
    rows = np.empty(first.size, dtype=_ROW)
    rows["start"] = keys[first]
    rows["first_ts"] = first_ts[first]
    rows["last_ts"] = last_ts[last]
    rows["open"] = open_[first]
    rows["high"] = np.maximum.reduceat(high, first)
    rows["low"] = np.minimum.reduceat(low, first)
    rows["close"] = close[last]
    rows["volume"] = np.add.reduceat(volume, first)
    return rows


def _merge(earlier: tuple, later: tuple) -> tuple:
    """One bar from two _ROW tuples of the same window, `earlier` built from trades received first.

    Matches a stable sort of all trades by timestamp: on equal timestamps the trade received
    first is the earlier one, so `earlier` keeps the open on ties and loses the close."""
    start, first_ts, last_ts, open_, high, low, close, volume = later
    e_first_ts, e_last_ts, e_open, e_high, e_low, e_close, e_volume = earlier[1:]
    if e_first_ts <= first_ts:
        first_ts, open_ = e_first_ts, e_open
    if e_last_ts > last_ts:
        last_ts, close = e_last_ts, e_close
    return (start, first_ts, last_ts, open_, max(high, e_high), min(low, e_low), close, volume + e_volume)


# ..................................................................... output


def _bars_frame(contract_id: str, pieces: list) -> pd.DataFrame:
    """BAR_COLUMNS + complete from (timeframe, rows, complete) pieces, in the canonical dtypes."""
    rows = np.concatenate([p[1] for p in pieces]) if pieces else np.empty(0, dtype=_ROW)
    counts = [p[1].size for p in pieces]
    return pd.DataFrame(
        {
            "contract_id": pd.Series(np.full(rows.size, contract_id, dtype=object), dtype=object),
            "timestamp": pd.DatetimeIndex(rows["start"].astype("datetime64[ns]"), tz="UTC"),
            "open": rows["open"],
            "high": rows["high"],
            "low": rows["low"],
            "close": rows["close"],
            "volume": rows["volume"],
            "timeframe_unit": np.repeat(np.array([p[0].unit for p in pieces], dtype=np.int64), counts),
            "timeframe_value": np.repeat(np.array([p[0].value for p in pieces], dtype=np.int64), counts),
            "complete": np.concatenate([p[2] for p in pieces]) if pieces else np.empty(0, dtype=bool),
        }
    )


class AggregatorOutput:
    """What one `BarAggregator` call produced.

    * `closed`: DataFrame of the bars closed by the call, BAR_COLUMNS + `complete` (bool),
      sorted by (timeframe_unit, timeframe_value, timestamp). `complete=False` bars may miss
      trades (feed restart, or flushed while open): output so that their repair can be
      scheduled, not to be stored as final.
    * `repairs`: DataFrame with REPAIR_COLUMNS (contract_id, timestamp = window start,
      timeframe_unit, timeframe_value, late_trades = how many late trades fell in it), one row
      per window of every timeframe that received late trades in this call, sorted like
      `closed`. Such a window was, or will be, emitted without those trades (possibly in a
      later call): re-fetch it from history once it is closed. The same window can be
      reported again by a later call.
    * `late_trades`: number of trades of the call that were late.

    The DataFrames are built on first access, so an output nobody looks at costs next to
    nothing; test `n_closed` / `bool(output)` first."""

    __slots__ = ("contract_id", "late_trades", "_bar_pieces", "_repair_pieces", "_closed", "_repairs")

    def __init__(self, contract_id: str, bar_pieces: list | None = None, repair_pieces: list | None = None, late_trades: int = 0):
        self.contract_id = contract_id
        self.late_trades = late_trades
        self._bar_pieces = bar_pieces or []
        self._repair_pieces = repair_pieces or []
        self._closed = None
        self._repairs = None

    @property
    def n_closed(self) -> int:
        return sum(p[1].size for p in self._bar_pieces)

    @property
    def n_repairs(self) -> int:
        return sum(p[1].size for p in self._repair_pieces)

    def __bool__(self) -> bool:
        return bool(self._bar_pieces or self._repair_pieces or self.late_trades)

    @property
    def closed(self) -> pd.DataFrame:
        if self._closed is None:
            self._closed = _bars_frame(self.contract_id, self._bar_pieces)
        return self._closed

    @property
    def repairs(self) -> pd.DataFrame:
        if self._repairs is None:
            pieces = self._repair_pieces
            starts = np.concatenate([p[1] for p in pieces]) if pieces else np.empty(0, dtype=np.int64)
            lengths = [p[1].size for p in pieces]
            self._repairs = pd.DataFrame(
                {
                    "contract_id": pd.Series(np.full(starts.size, self.contract_id, dtype=object), dtype=object),
                    "timestamp": pd.DatetimeIndex(starts.astype("datetime64[ns]"), tz="UTC"),
                    "timeframe_unit": np.repeat(np.array([p[0].unit for p in pieces], dtype=np.int64), lengths),
                    "timeframe_value": np.repeat(np.array([p[0].value for p in pieces], dtype=np.int64), lengths),
                    "late_trades": np.concatenate([p[2] for p in pieces]) if pieces else np.empty(0, dtype=np.int64),
                }
            )
        return self._repairs

    def __repr__(self) -> str:
        return f"AggregatorOutput({self.contract_id}, closed={self.n_closed}, repairs={self.n_repairs}, late_trades={self.late_trades})"


@dataclass(frozen=True)
class AggregatorCounters:
    """Running totals of a BarAggregator since it was created."""

    trades: int  # valid trades received, late ones included
    late_trades: int
    late_volume: int
    bars_complete: int
    bars_incomplete: int
    repairs_reported: int  # (timeframe, window) rows reported, repeats included
    feed_restarts: int  # mark_feed_restart calls
    clock_ns: int | None  # the aggregator's clock; None before the first trade or advance_clock


class _Collector:
    """Bars and repairs gathered during one call, per timeframe, in close order."""

    __slots__ = ("bars", "repairs", "late_trades")

    def __init__(self, n_timeframes: int):
        self.bars: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_timeframes)]  # (rows, complete)
        self.repairs: list[tuple[Timeframe, np.ndarray, np.ndarray]] = []  # (timeframe, starts, late trades)
        self.late_trades = 0


class _TimeframeState:
    __slots__ = ("tf", "index", "open", "open_end", "open_next", "floor", "complete_from", "clock_window")

    def __init__(self, tf: Timeframe, index: int):
        self.tf = tf
        self.index = index
        self.open: tuple | None = None  # the bar being built: a _ROW tuple
        self.open_end = self.open_next = NAT  # its _window_bounds (read only while open is set)
        self.floor = NAT  # every window before this instant is closed
        self.complete_from = NAT  # bars labelled before this may miss trades (feed restart)
        self.clock_window: tuple[int, int, int, int] | None = None  # (label, first, end, next) of the window the clock was last in


# ..................................................................... aggregator


class BarAggregator:
    """Live trades → bars of several timeframes for one contract (pure: no I/O, no wall clock).

    Feed trades with `add_trades` (numpy batches), move time forward with `advance_clock`,
    call `mark_feed_restart` after every (re)connect and `flush_open` at shutdown. Each call
    returns an `AggregatorOutput`. Bars are aligned and built exactly like `aggregate_trades`:

    * A bar closes when a trade for a later window of its timeframe arrives, or when the clock
      reaches `bar_end + grace_ns`. Adding trades moves the clock to their latest timestamp; the
      clock never goes back. A closed window (with or without a bar) stays closed: every bar is
      emitted at most once, and the bars of each timeframe close in ascending order.
    * Within a batch, trades are stably sorted by timestamp before use, so out-of-order arrival
      inside a batch is harmless; a trade of a later batch into a still open window is merged
      as if it had been sorted in.
    * A trade is late when its window of any timeframe is already closed (normally the finest
      one; a coarser one closes first only when a trade falls in the daily halt after the clock
      closed the session's last bars). A late trade goes into no bar; it is counted and its
      window of every timeframe is reported in `repairs`.
    * After `mark_feed_restart()` (and before the first trade ever), the earliest timestamp F of
      the next non-empty batch marks where the feed resumed: every bar closed afterwards whose
      window begins before F is `complete=False`, as is every bar closed while waiting for that
      batch. Several restarts keep the latest F.
    * Timeframes that do not nest (e.g. 8m and 1h) are handled: trades are first grouped by a
      base window that nests into all of them (the gcd of their lengths).
    """

    def __init__(self, contract_id: str, timeframes=DEFAULT_TIMEFRAMES, *, grace_ns: int = 2 * NS_PER_SECOND):
        self.contract_id = ContractId(contract_id)
        # Sorted by (unit, value), the order of the output frames.
        self.timeframes: tuple[Timeframe, ...] = tuple(sorted(parse_timeframes(timeframes)))
        if isinstance(grace_ns, bool) or not isinstance(grace_ns, (int, np.integer)) or grace_ns < 0:
            raise DomainError(f"invalid grace {grace_ns!r}: expected an integer number of ns >= 0")
        self.grace_ns = int(grace_ns)
        self._base_step = _base_step_ns(self.timeframes)
        self._states = [_TimeframeState(tf, i) for i, tf in enumerate(self.timeframes)]
        self._clock: int | None = None
        self._accept_from = NAT
        self._restart_pending = True
        self._resumed_at = NAT
        self._trades = self._late_trades = self._late_volume = 0
        self._bars_complete = self._bars_incomplete = self._repairs_reported = self._restarts = 0

    # ----------------------------------------------------------------- public

    def add_trades(self, ts_ns, price, size) -> AggregatorOutput:
        """Aggregate a batch of trades: int64 ns UTC timestamps, float64 prices, int64 sizes.

        Raises DomainError (a ValueError) naming the first offending value, before any state
        changes, for arrays of different lengths or dtypes, NaT or implausible timestamps
        (outside 1990..2200: e.g. seconds or ms given as ns), non-finite or non-positive prices
        and sizes <= 0. See `split_valid` to drop such rows instead."""
        ts, px, sz = coerce_trades(ts_ns, price, size)
        raise_if_invalid(ts, px, sz)
        if ts.size == 0:
            return AggregatorOutput(self.contract_id)
        if ts.size > 1 and not (ts[1:] >= ts[:-1]).all():
            order = np.argsort(ts, kind="stable")
            ts, px, sz = ts[order], px[order], sz[order]
        out = _Collector(len(self._states))
        self._trades += ts.size
        if self._restart_pending:
            self._set_resumed_at(int(ts[0]))
        # Sorted, so the late trades (before the floor) come first.
        n_late = int(np.searchsorted(ts, self._accept_from, side="left"))
        if n_late:
            self._report_late(ts[:n_late], sz[:n_late], out)
        if n_late < ts.size:
            self._fold(ts[n_late:], px[n_late:], sz[n_late:], out)
        self._advance(int(ts[-1]), out)
        return self._output(out)

    def advance_clock(self, now_ns: int) -> AggregatorOutput:
        """Move the clock to `now_ns` (ignored if earlier than the clock) and close every bar whose
        `bar_end + grace_ns` is reached."""
        now = check_now(now_ns)
        out = _Collector(len(self._states))
        self._advance(now, out)
        return self._output(out)

    def mark_feed_restart(self) -> None:
        """The feed (re)connected: bars that began before its first trade may miss trades."""
        self._restart_pending = True
        self._restarts += 1

    def flush_open(self, now_ns: int | None = None) -> AggregatorOutput:
        """For shutdown: advance the clock to `now_ns` if given, then close every open bar as
        `complete=False` (it may lack trades still to come). Their windows count as closed."""
        out = _Collector(len(self._states))
        if now_ns is not None:
            self._advance(check_now(now_ns), out)
        for st in self._states:
            if st.open is not None:
                st.floor = max(st.floor, st.open_next)
                self._emit(st, np.array([st.open], dtype=_ROW), out, complete=np.zeros(1, dtype=bool))
                st.open = None
        self._accept_from = max(st.floor for st in self._states)
        return self._output(out)

    def open_bars(self) -> pd.DataFrame:
        """The bars in progress, BAR_COLUMNS + `complete` (the flag they would close with now)."""
        pieces: list[tuple[Timeframe, np.ndarray, np.ndarray]] = []
        for st in self._states:
            if st.open is not None:
                bar = np.array([st.open], dtype=_ROW)
                pieces.append((st.tf, bar, self._complete(st, bar["start"])))
        return _bars_frame(self.contract_id, pieces)

    @property
    def counters(self) -> AggregatorCounters:
        return AggregatorCounters(
            trades=self._trades,
            late_trades=self._late_trades,
            late_volume=self._late_volume,
            bars_complete=self._bars_complete,
            bars_incomplete=self._bars_incomplete,
            repairs_reported=self._repairs_reported,
            feed_restarts=self._restarts,
            clock_ns=self._clock,
        )

    # ----------------------------------------------------------------- internals

    @staticmethod
    def _bounds(tf: Timeframe, label: int) -> tuple[int, int, int]:
        if tf.is_clock_aligned:
            step = tf.step_ns
            assert step is not None  # clock-aligned (second and minute) bars have a fixed length
            return label, label + step, label + step
        return _window_bounds(tf, label)

    def _label_of(self, st: _TimeframeState, ts: np.ndarray) -> np.ndarray:
        if st.tf.is_clock_aligned:
            return ts - ts % st.tf.step_ns
        return bar_starts_ns(ts, st.tf)

    def _set_resumed_at(self, first_ts: int) -> None:
        self._restart_pending = False
        self._resumed_at = max(self._resumed_at, first_ts)
        for st in self._states:
            label = int(self._label_of(st, np.array([self._resumed_at], dtype=np.int64))[0])
            # The window holding F is complete only if F is its very first instant.
            st.complete_from = label if self._bounds(st.tf, label)[0] == self._resumed_at else label + 1

    def _complete(self, st: _TimeframeState, starts: np.ndarray) -> np.ndarray:
        if self._restart_pending:
            return np.zeros(starts.size, dtype=bool)
        return starts >= st.complete_from

    def _emit(self, st: _TimeframeState, bars: np.ndarray, out: _Collector, complete: np.ndarray | None = None) -> None:
        if complete is None:
            complete = self._complete(st, bars["start"])
        n_complete = int(complete.sum())
        self._bars_complete += n_complete
        self._bars_incomplete += bars.size - n_complete
        out.bars[st.index].append((bars, complete))

    def _report_late(self, ts: np.ndarray, sz: np.ndarray, out: _Collector) -> None:
        self._late_trades += ts.size
        self._late_volume += int(sz.sum())
        out.late_trades += ts.size
        for st in self._states:
            labels = self._label_of(st, ts)  # sorted, as ts is
            first = np.concatenate(([0], np.flatnonzero(labels[1:] != labels[:-1]) + 1))
            counts = np.diff(np.append(first, labels.size))
            out.repairs.append((st.tf, labels[first], counts))
            self._repairs_reported += first.size

    def _fold(self, ts: np.ndarray, px: np.ndarray, sz: np.ndarray, out: _Collector) -> None:
        """Fold accepted, sorted trades into every timeframe; close the bars they supersede."""
        base = _reduce(ts - ts % self._base_step, ts, ts, px, px, px, px, sz)
        starts = base["start"]
        fields = (base["first_ts"], base["last_ts"], base["open"], base["high"], base["low"], base["close"], base["volume"])
        whole = None  # the batch as one bar (without its start), computed when first needed
        for st in self._states:
            if st.open is not None and starts[-1] < st.open_next:
                # The whole batch falls in the open window, the usual case live: nothing closes.
                if whole is None:
                    whole = (
                        int(fields[0][0]),
                        int(fields[1][-1]),
                        float(fields[2][0]),
                        float(fields[3].max()),
                        float(fields[4].min()),
                        float(fields[5][-1]),
                        int(fields[6].sum()),
                    )
                st.open = _merge(st.open, (st.open[0], *whole))
                continue
            if st.tf.is_clock_aligned and st.tf.step_ns == self._base_step:
                rows = base.copy()
            else:
                rows = _reduce(self._label_of(st, starts), *fields)
            closed = rows[:-1]
            if st.open is not None:
                if st.open[0] == rows["start"][0]:
                    rows[0] = _merge(st.open, rows[0].item())
                else:
                    closed = np.concatenate((np.array([st.open], dtype=_ROW), closed))
            st.open = rows[-1].item()
            first, st.open_end, st.open_next = self._bounds(st.tf, st.open[0])
            st.floor = max(st.floor, first)
            if closed.size:
                self._emit(st, closed, out)
        self._accept_from = max(st.floor for st in self._states)

    def _advance(self, now: int, out: _Collector) -> None:
        """Move the clock and close what it closes. Accepted trades never fall in a window the
        clock has closed (they are at or after the floors), so a clock that does not move
        closes nothing new."""
        if self._clock is not None and now <= self._clock:
            return
        self._clock = now
        t = now - self.grace_ns  # windows ending at or before t are closed
        for st in self._states:
            if st.open is not None and st.open_end <= t:
                st.floor = max(st.floor, st.open_next)
                self._emit(st, np.array([st.open], dtype=_ROW), out)
                st.open = None
            st.floor = max(st.floor, self._clock_floor(st, t))
        self._accept_from = max(st.floor for st in self._states)

    def _clock_floor(self, st: _TimeframeState, t: int) -> int:
        """First instant of the earliest window not closed by a clock at t + grace."""
        if st.tf.is_clock_aligned:
            step = st.tf.step_ns
            assert step is not None  # clock-aligned (second and minute) bars have a fixed length
            return t - t % step  # this window ends after t
        cw = st.clock_window
        if cw is None or not cw[1] <= t < cw[3]:
            label = int(bar_starts_ns(np.array([t], dtype=np.int64), st.tf)[0])
            cw = st.clock_window = (label, *_window_bounds(st.tf, label))
        _, first, end, nxt = cw
        return nxt if end <= t else first

    def _output(self, out: _Collector) -> AggregatorOutput:
        pieces = [(st.tf, bars, complete) for st in self._states for bars, complete in out.bars[st.index]]
        if not pieces and not out.repairs and not out.late_trades:
            return AggregatorOutput(self.contract_id)
        return AggregatorOutput(self.contract_id, pieces, out.repairs, out.late_trades)
