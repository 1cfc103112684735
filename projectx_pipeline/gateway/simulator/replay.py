"""`ReplaySource`: trades that reproduce the bars of a CSV exactly (the default market)."""

from __future__ import annotations

import math
import os
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.domain.timeframes import Timeframe
from projectx_pipeline.domain.timestamps import from_ns
from projectx_pipeline.sample_data import sample_path

from .contracts import contract_for
from .market import NS_PER_MS, Trades, bar_labels_ns, no_trades, window_end_ns, window_open_ns
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
    """Trades that reproduce the bars of a CSV in the sample layout, exactly.

    Every bar becomes a trade sequence inside its window: the open first, the close last, the low
    and the high touched in between (low first on an up bar, high first on a down bar), plus a few
    extra trades on the tick grid between those points. Sizes are >= 1 and sum exactly to the
    bar's volume; timestamps are strictly inside the window, strictly increasing, at millisecond
    resolution, and every third one falls on a whole second (so the feed shows both ISO forms).
    The sequence depends only on the file and the seed.

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
        contract = contract_for(str(contract_ids[0]))
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
        self._trades = self._expand(bars, opens, ends, contract.tick_size, seed)

    def trades_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> Trades:
        if contract_id not in self.contracts:
            return no_trades()
        return self._trades.between(lo_ns, hi_ns)

    def next_step_ns(self, after_ns: int) -> int | None:
        i = int(np.searchsorted(self._step_ends, after_ns, side="right"))
        return int(self._step_ends[i]) if i < self._step_ends.size else None

    @staticmethod
    def _expand(bars: pd.DataFrame, opens, ends, tick: float, seed: int) -> Trades:
        # Python's random() sequence is guaranteed stable across Python versions for a given seed.
        draw = random.Random(seed).random
        ts: list[int] = []
        price: list[float] = []
        size: list[int] = []
        rows = zip(
            opens.tolist(),
            ends.tolist(),
            bars["open"].tolist(),
            bars["high"].tolist(),
            bars["low"].tolist(),
            bars["close"].tolist(),
            bars["volume"].tolist(),
            bars["timestamp"],
        )
        for window_open, window_end, o, h, lo, c, volume, label in rows:
            if not (lo <= min(o, c) and h >= max(o, c)) or volume < 1:
                raise ValueError(f"replay bar {label} is inconsistent: o={o} h={h} l={lo} c={c} v={volume}")
            prices = _bar_prices(o, h, lo, c, volume, tick, draw)
            if len(prices) > volume:
                raise ValueError(f"replay bar {label}: volume {volume} is too small to touch open, high, low and close")
            ts += _bar_timestamps(window_open, window_end, len(prices), draw)
            price += prices
            size += _split_volume(volume, len(prices), draw)
        price_array = np.round(np.array(price, dtype=np.float64), 10)
        return Trades(np.array(ts, dtype=np.int64), price_array, np.array(size, dtype=np.int64), _aggressor_sides(price_array))


def _bar_prices(o: float, h: float, lo: float, c: float, volume: int, tick: float, draw) -> list[float]:
    path = [o, lo, h, c] if c >= o else [o, h, lo, c]
    if volume < len(path):
        # A point equal to its predecessor needs no trade of its own.
        path = [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
    extras = min(2 + volume.bit_length() // 2 + int(draw() * 3), max(volume - len(path), 0))
    if len(path) == 1:
        return [o] * (1 + extras)
    # (segment, fraction along it) of each extra trade, in path order
    placed = sorted((int(draw() * (len(path) - 1)), draw()) for _ in range(extras))
    out: list[float] = []
    for segment in range(len(path) - 1):
        a, b = path[segment], path[segment + 1]
        out.append(a)
        for _, frac in (p for p in placed if p[0] == segment):
            # on the tick grid counted from the low, and inside [low, high]
            out.append(min(h, max(lo, lo + round((a + frac * (b - a) - lo) / tick) * tick)))
    out.append(path[-1])
    return out


def _bar_timestamps(window_open: int, window_end: int, n: int, draw) -> list[int]:
    """n strictly increasing ms-resolution instants strictly inside (window_open, window_end).

    One slot per trade; on windows with room for it, a trade lands on a whole second of its slot
    and every third one has no milliseconds at all."""
    span_ms = (window_end - window_open) // NS_PER_MS
    if span_ms // 1000 > n:
        stride = (span_ms // 1000 - 1) // n
        seconds = [1 + i * stride + int(draw() * stride) for i in range(n)]
        offsets_ms = [s * 1000 + (0 if i % 3 == 0 else int(draw() * 1000)) for i, s in enumerate(seconds)]
    else:
        stride = (span_ms - 1) // n
        offsets_ms = [1 + i * stride + int(draw() * stride) for i in range(n)]
    return [window_open + ms * NS_PER_MS for ms in offsets_ms]


def _split_volume(volume: int, n: int, draw) -> list[int]:
    """n sizes >= 1 that sum exactly to `volume`, with random proportions."""
    weights = [-math.log(1.0 - draw()) for _ in range(n)]
    total = sum(weights)
    spare = volume - n
    sizes = [1 + int(spare * w / total) for w in weights]
    for i in range(volume - sum(sizes)):  # the rounding remainder (< n) goes one unit each to the first trades
        sizes[i] += 1
    return sizes


def _aggressor_sides(price: np.ndarray) -> np.ndarray:
    """Up-tick trades are buys, down-tick trades sells; an unchanged price keeps the previous side."""
    change = np.sign(np.diff(price, prepend=price[:1]))
    side = np.where(change > 0, 0, np.where(change < 0, 1, -1))
    known = np.where(side >= 0, np.arange(side.size), 0)
    np.maximum.accumulate(known, out=known)
    filled = side[known]
    return np.where(filled < 0, 0, filled).astype(np.int8)
