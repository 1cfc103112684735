"""`ReplaySource`: trades that reproduce the bars of a CSV exactly (the default market)."""

from __future__ import annotations

import os
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from projectx_pipeline.domain.contracts import ContractId
from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.timeframes import UNIT_DAY, Timeframe, bar_starts_ns
from projectx_pipeline.domain.timestamps import from_ns
from projectx_pipeline.sample_data import sample_path

from . import prints
from .contracts import LISTABLE_ROOTS, contract_for
from .listings import SymbolListing
from .market import Trades, bar_labels_ns, no_trades, window_end_ns, window_open_ns
from .replay_time import resolve_start_ns, shift_bars_weeks, weeks_to_now

DEFAULT_SAMPLE = sample_path("5m").name


def default_replay_path() -> Path:
    """The packaged MES 5m sample, or the same file name under `$PROJECTX_SAMPLE_DIR` if set."""
    override = os.environ.get("PROJECTX_SAMPLE_DIR")
    path = Path(override) / DEFAULT_SAMPLE if override else sample_path("5m")
    if not path.is_file():
        raise FileNotFoundError(
            f"default replay sample not found at {path}: pass a replay CSV or set PROJECTX_SAMPLE_DIR to the directory holding {DEFAULT_SAMPLE}"
        )
    return path


class ReplaySource:
    """Trades that reproduce the bars of a CSV in the sample layout, exactly, and look like a market.

    Every bar becomes a sequence of prints inside its window (`prints.py` says how): mostly 1-10
    lots (a third one-lots, now and then a block of up to a few hundred), as many as its volume
    needs (a 20,000-lot bar has about 6,000, a 60-lot bar about 18), arriving in bursts at
    distinct milliseconds strictly inside the window, their sizes summing exactly to the volume.
    Prices walk the tick grid 0 or ±1 tick at a time through open → low → high → close (high
    before low on a down bar), inside [low, high]; the open is the first print and the close
    the last. Sides follow the tick rule.

    A bar's prints are a pure function of (file, seed, bar index), generated when first asked
    for and kept in a bounded cache, so construction reads and checks the bars only. What needs
    no single print is answered from the bars themselves: `bars_between` for timeframes whose
    windows hold whole source bars, and `released_between` (what the clock passes when nobody
    watches).

    The clock starts at `start` (see `replay_time.resolve_start_ns`; default the first bar) and
    history holds every trade before it. With `shift_to_ns` (the present, for a replay that
    happens now) every bar is moved by the whole weeks of New York time that bring the start to
    at most that instant and less than a week before it, and the clock starts at that instant:
    history then answers "the last N days" like the live gateway. `weeks_shifted` says by how much."""

    def __init__(self, path: str | os.PathLike, seed: int = 0, start: datetime | str | None = None, shift_to_ns: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"replay file not found: {path}")
        bars = read_bars_csv(path)
        if bars.empty:
            raise ValueError(f"replay file {path} holds no bars")
        contract_ids = bars["contract_id"].unique()
        if len(contract_ids) != 1:
            raise ValueError(f"replay file {path} mixes contracts {sorted(contract_ids)}: expected exactly one")
        tfs = bars[["timeframe_unit", "timeframe_value"]].drop_duplicates()
        if len(tfs) != 1:
            raise ValueError(f"replay file {path} mixes timeframes: expected exactly one")
        self.timeframe = Timeframe(int(tfs.iloc[0, 0]), int(tfs.iloc[0, 1]))
        self.weeks_shifted = 0
        if shift_to_ns is not None:
            labels = bar_labels_ns(bars)
            position = resolve_start_ns(start, window_open_ns(int(labels[0]), self.timeframe), window_end_ns(int(labels[-1]), self.timeframe))
            self.weeks_shifted = weeks_to_now(position, shift_to_ns)
            bars = shift_bars_weeks(bars, self.weeks_shifted)
        recorded_as = ContractId(str(contract_ids[0]))
        # A replay shifted to now plays as the month that is front now: the recorded month
        # expired long ago, and a gateway lists only months that trade (a platform following the
        # symbol must find its bars under a month whose roll is still ahead).
        served_as = front_month_at_start(recorded_as, shift_to_ns) if shift_to_ns is not None else recorded_as
        if served_as != recorded_as:
            bars = bars.assign(contract_id=str(served_as))
        self.recorded_as = recorded_as
        contract = contract_for(str(served_as))
        self.contracts = {contract.id: contract}
        self.bars = bars
        labels = bar_labels_ns(bars)
        if np.any(np.diff(labels) <= 0):
            raise ValueError(f"replay file {path}: timestamps must be strictly increasing")
        opens = np.array([window_open_ns(int(x), self.timeframe) for x in labels], dtype=np.int64)
        ends = np.array([window_end_ns(int(x), self.timeframe) for x in labels], dtype=np.int64)
        self._step_ends = ends
        self.first_ns = int(opens[0])
        self.end_ns = int(ends[-1])
        if shift_to_ns is None:
            self.start_ns = resolve_start_ns(start, self.first_ns, self.end_ns)
        elif self.first_ns <= shift_to_ns < self.end_ns:
            self.start_ns = shift_to_ns
        else:
            raise ValueError(
                f"replay {path} shifted by {self.weeks_shifted} weeks ends at {from_ns(self.end_ns).isoformat()}, before"
                f" {from_ns(shift_to_ns).isoformat()}: choose an earlier start (less than a week before the end is too late)"
            )
        self._prints = BarPrints(bars, opens, ends, contract.tick_size, seed)

    def trades_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> Trades:
        if contract_id not in self.contracts:
            return no_trades()
        return self._prints.between(lo_ns, hi_ns)

    def bars_between(self, contract_id: str, tf: Timeframe, lo_ns: int, hi_ns: int) -> pd.DataFrame:
        return self._prints.outline_between(lo_ns, hi_ns, tf).bars(contract_id, tf)

    def released_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> tuple[Trades, int]:
        if contract_id not in self.contracts:
            return no_trades(), 0
        return self._prints.outline_between(lo_ns, hi_ns, _SESSION), self._prints.count_between(lo_ns, hi_ns)

    def next_step_ns(self, after_ns: int) -> int | None:
        i = int(np.searchsorted(self._step_ends, after_ns, side="right"))
        return int(self._step_ends[i]) if i < self._step_ends.size else None


_SESSION = Timeframe(UNIT_DAY, 1)  # SessionStats' windows: the CME session
# How many prints the bar cache holds at most (about 25 bytes each): a few hundred busy bars.
CACHE_PRINTS = 2_000_000
# How many stand-in rows the cache of bars finer than the source's holds at most (1m bars of the
# whole MES 5m sample: 200,000), so that repeated fine history does not regenerate prints.
CACHE_FINE_ROWS = 2_000_000


def front_month_at_start(recorded_as: ContractId, start_ns: int) -> ContractId:
    """The month of `recorded_as`'s symbol that is front at `start_ns` (CME's calendar roll on the
    NYSE's days); a root without quarterly equity-index months keeps its recorded id."""
    if recorded_as.symbol not in LISTABLE_ROOTS:
        return recorded_as
    listing = SymbolListing(recorded_as.symbol, from_ns(start_ns), CalendarDays())
    return listing.front_month_at(start_ns).contract_id()


class BarPrints:
    """The prints of every bar of a replay, generated per bar on demand (`prints.py`), the
    latest ones cached (up to CACHE_PRINTS prints)."""

    def __init__(self, bars: pd.DataFrame, opens: np.ndarray, ends: np.ndarray, tick: float, seed: int):
        self._open, self._high, self._low, self._close = (bars[col].to_numpy(np.float64) for col in ("open", "high", "low", "close"))
        self._volume = bars["volume"].to_numpy(np.int64)
        self._opens, self._ends, self._tick, self._seed = opens, ends, tick, int(seed)
        self._points = prints.path_point_counts(self._open, self._high, self._low, self._close)  # the fewest prints per bar
        self._check(bars["timestamp"])
        self._counts = np.full(len(bars), -1, dtype=np.int64)  # prints per bar, -1 until known
        self._cache: OrderedDict[int, Trades] = OrderedDict()
        self._cached_prints = 0
        self._whole_windows: dict[Timeframe, np.ndarray] = {}
        self._fine: OrderedDict[tuple[Timeframe, int], Trades] = OrderedDict()
        self._fine_rows = 0

    def _check(self, labels: pd.Series) -> None:
        o, h, lo, c, v = self._open, self._high, self._low, self._close, self._volume
        inconsistent = ~((lo <= np.minimum(o, c)) & (h >= np.maximum(o, c))) | (v < 1)
        points = self._points
        capacity = prints.window_capacity(self._opens, self._ends)
        for i in np.flatnonzero(inconsistent | (points > v) | (points > capacity))[:1]:
            bar = f"o={o[i]} h={h[i]} l={lo[i]} c={c[i]} v={v[i]}"
            if inconsistent[i]:
                raise ValueError(f"replay bar {labels.iloc[i]} is inconsistent: {bar}")
            if points[i] > v[i]:
                raise ValueError(f"replay bar {labels.iloc[i]}: volume {v[i]} is too small to touch open, high, low and close")
            raise ValueError(f"replay bar {labels.iloc[i]}: its window is too short for the prints that touch open, high, low and close")

    def _sizes(self, i: int) -> np.ndarray:
        fewest = prints.min_print_count(int(self._points[i]), int(self._volume[i]), int(self._opens[i]), int(self._ends[i]))
        sizes = prints.print_sizes(int(self._volume[i]), int(fewest), self._seed, i)
        return prints.fit_to_window(sizes, int(prints.window_capacity(self._opens[i], self._ends[i])))

    def count(self, i: int) -> int:
        """How many prints bar i has (drawing its sizes only)."""
        if self._counts[i] < 0:
            self._counts[i] = self._sizes(i).size
        return int(self._counts[i])

    def trades(self, i: int) -> Trades:
        cached = self._cache.get(i)
        if cached is not None:
            self._cache.move_to_end(i)
            return cached
        trades = self._generate(i)
        self._cache[i] = trades
        self._cached_prints += len(trades)
        while self._cached_prints > CACHE_PRINTS and len(self._cache) > 1:
            self._cached_prints -= len(self._cache.popitem(last=False)[1])
        return trades

    def _generate(self, i: int) -> Trades:
        o, h, lo, c = (float(a[i]) for a in (self._open, self._high, self._low, self._close))
        sizes = self._sizes(i)
        self._counts[i] = n = sizes.size
        ts = prints.print_times(n, int(self._opens[i]), int(self._ends[i]), self._seed, i)
        points = prints.path_ticks(o, h, lo, c, self._tick)
        high_ticks = round((h - lo) / self._tick)
        price = prints.tick_prices(o, h, lo, c, high_ticks, self._tick)[prints.print_ticks(points, high_ticks, n, self._seed, i)]
        # The print before the bar's first is the previous bar's close; its side is not at hand
        # without that bar's prints, so the previous bar's direction stands for it.
        before, side_before = (float(self._close[i - 1]), int(self._close[i - 1] < self._open[i - 1])) if i else (o, 0)
        return Trades(ts, price, sizes, prints.aggressor_sides(price, before, side_before))

    def _bars_in(self, lo_ns: int, hi_ns: int) -> range:
        """The bars whose windows meet [lo_ns, hi_ns)."""
        return range(int(np.searchsorted(self._ends, lo_ns, side="right")), int(np.searchsorted(self._opens, hi_ns, side="left")))

    def between(self, lo_ns: int, hi_ns: int) -> Trades:
        pieces = [self._trades_of(i, lo_ns, hi_ns) for i in self._bars_in(lo_ns, hi_ns)]
        return _concat(pieces)

    def _trades_of(self, i: int, lo_ns: int, hi_ns: int) -> Trades:
        trades = self.trades(i)
        return trades if self._inside(i, lo_ns, hi_ns) else trades.between(lo_ns, hi_ns)

    def _inside(self, i: int, lo_ns: int, hi_ns: int) -> bool:
        """Whether bar i's window lies inside [lo_ns, hi_ns)."""
        return bool(lo_ns <= self._opens[i] and self._ends[i] <= hi_ns)

    def count_between(self, lo_ns: int, hi_ns: int) -> int:
        return sum(self.count(i) if self._inside(i, lo_ns, hi_ns) else len(self._trades_of(i, lo_ns, hi_ns)) for i in self._bars_in(lo_ns, hi_ns))

    def _whole(self, tf: Timeframe) -> np.ndarray:
        """True for the bars whose window lies inside a single `tf` window."""
        if tf not in self._whole_windows:
            self._whole_windows[tf] = bar_starts_ns(self._opens, tf) == bar_starts_ns(self._ends - 1, tf)
        return self._whole_windows[tf]

    def outline_between(self, lo_ns: int, hi_ns: int, tf: Timeframe) -> Trades:
        """Trades that aggregate to `tf` (or any coarser windows made of whole `tf` windows)
        exactly like those of [lo_ns, hi_ns): a bar inside the range and inside one `tf` window
        stands as four points (the open with the bar's volume, low and high, the close, at
        instants of its window); a bar inside the range split by second or minute windows, as
        four points per window of its prints (cached); any other bar as its prints in the range."""
        bars = self._bars_in(lo_ns, hi_ns)
        index = np.arange(bars.start, bars.stop)
        whole = (self._opens[index] >= lo_ns) & (self._ends[index] <= hi_ns) & self._whole(tf)[index]
        pieces, run_start = [], 0
        for k in [*np.flatnonzero(~whole).tolist(), index.size]:
            if k > run_start:
                pieces.append(self._outlines(index[run_start:k]))
            if k < index.size:
                i = int(index[k])
                fine = tf.is_clock_aligned and self._inside(i, lo_ns, hi_ns)
                pieces.append(self._fine_stand_ins(i, tf) if fine else self._trades_of(i, lo_ns, hi_ns))
            run_start = k + 1
        return _concat(pieces)

    def _outlines(self, index: np.ndarray) -> Trades:
        at = self._opens[index]
        o, h, lo, c, v = (a[index] for a in (self._open, self._high, self._low, self._close, self._volume))
        return _stand_ins(at, self._ends[index] - 1, o, h, lo, c, v)

    def _fine_stand_ins(self, i: int, tf: Timeframe) -> Trades:
        """Bar i's prints aggregated to the second or minute windows `tf`, as stand-ins."""
        cached = self._fine.get((tf, i))
        if cached is not None:
            self._fine.move_to_end((tf, i))
            return cached
        trades = self.trades(i)
        windows = bar_starts_ns(trades.ts_ns, tf)
        first = np.flatnonzero(np.diff(windows, prepend=windows[0] - 1))
        last = np.append(first[1:] - 1, len(trades) - 1)
        high, low = np.maximum.reduceat(trades.price, first), np.minimum.reduceat(trades.price, first)
        at = np.maximum(windows[first], self._opens[i])  # inside both the window and the bar
        stand_ins = _stand_ins(at, at, trades.price[first], high, low, trades.price[last], np.add.reduceat(trades.size, first))
        self._fine[(tf, i)] = stand_ins
        self._fine_rows += len(stand_ins)
        while self._fine_rows > CACHE_FINE_ROWS and len(self._fine) > 1:
            self._fine_rows -= len(self._fine.popitem(last=False)[1])
        return stand_ins


def _stand_ins(open_ns: np.ndarray, close_ns: np.ndarray, o, h, lo, c, volume) -> Trades:
    """Four points per bar that aggregate to it: the open (with all the volume), the extremes
    (low first on an up bar), the close; at `open_ns` and, for the close, `close_ns`."""
    up = c >= o
    price = np.empty(4 * o.size)
    price[0::4], price[3::4] = o, c
    price[1::4], price[2::4] = np.where(up, lo, h), np.where(up, h, lo)
    size = np.zeros(price.size, dtype=np.int64)
    size[0::4] = volume
    # equal instants keep this order in aggregation (a stable sort): open first, close last
    ts = np.repeat(open_ns, 4)
    ts[3::4] = close_ns
    return Trades(ts, price, size, np.zeros(ts.size, dtype=np.int8))


def _concat(pieces: list[Trades]) -> Trades:
    if not pieces:
        return no_trades()
    if len(pieces) == 1:
        return pieces[0]
    return Trades(*(np.concatenate([getattr(p, f) for p in pieces]) for f in ("ts_ns", "price", "size", "side")))
