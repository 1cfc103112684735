"""The simulator's market: the trade sources behind both its history and its live feed.

There is exactly one source of truth per simulator, a `MarketSource` that answers "which trades
happened in [lo, hi)". The live feed releases those trades as the clock passes them and
`history_bars` aggregates the very same trades with `aggregate_trades`, so a bar built from the
live feed always equals the bar served from history for the same window.

* `ReplaySource` expands every bar of a bar CSV into a deterministic trade sequence whose
  aggregate reproduces that bar exactly.
* `SyntheticSource` generates trades as a pure function of (seed, contract, minute), so any past
  window can be regenerated and always equals what was streamed live.
"""

from __future__ import annotations

import math
import os
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from projectx_pipeline.domain.aggregation import aggregate_trades
from projectx_pipeline.domain.contracts import ContractId
from projectx_pipeline.domain.market import empty_bars, normalize_bars, read_bars_csv
from projectx_pipeline.domain.sessions import NEW_YORK, trade_date_session
from projectx_pipeline.domain.timeframes import UNIT_DAY, UNIT_MONTH, UNIT_WEEK, Timeframe, bar_end, bar_starts_ns
from projectx_pipeline.domain.timestamps import NS_PER_DAY, NS_PER_SECOND, from_ns, to_ns
from projectx_pipeline.sample_data import sample_path

NS_PER_MS = 1_000_000
NS_PER_MINUTE = 60 * NS_PER_SECOND

DEFAULT_SAMPLE = sample_path("5m").name

_MONTHS = {"F": 1, "G": 2, "H": 3, "J": 4, "K": 5, "M": 6, "N": 7, "Q": 8, "U": 9, "V": 10, "X": 11, "Z": 12}
_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")


@dataclass(frozen=True)
class _Root:
    description: str
    tick_size: float
    tick_value: float
    synthetic_base_price: float


# The common roots; any other root gets MES-like ticks (the ids are still validated).
_ROOTS = {
    "MES": _Root("Micro E-mini S&P 500", 0.25, 1.25, 5700.0),
    "ES": _Root("E-mini S&P 500", 0.25, 12.5, 5700.0),
    "MNQ": _Root("Micro E-mini Nasdaq-100", 0.25, 0.5, 20000.0),
    "NQ": _Root("E-mini Nasdaq-100", 0.25, 5.0, 20000.0),
    "M2K": _Root("Micro E-mini Russell 2000", 0.1, 0.5, 2100.0),
    "RTY": _Root("E-mini Russell 2000", 0.1, 5.0, 2100.0),
    "MYM": _Root("Micro E-mini Dow", 1.0, 0.5, 42000.0),
    "YM": _Root("E-mini Dow", 1.0, 5.0, 42000.0),
    "MCL": _Root("Micro WTI Crude Oil", 0.01, 1.0, 70.0),
    "CL": _Root("Crude Oil", 0.01, 10.0, 70.0),
    "MGC": _Root("Micro Gold", 0.1, 1.0, 3000.0),
    "GC": _Root("Gold", 0.1, 10.0, 3000.0),
}


@dataclass(frozen=True)
class Contract:
    id: str
    name: str
    description: str
    tick_size: float
    tick_value: float
    symbol_id: str
    synthetic_base_price: float

    @property
    def root(self) -> str:
        return self.id.split(".")[3]

    def to_gateway(self) -> dict:
        """The contract object of the gateway's Contract endpoints."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "tickSize": self.tick_size,
            "tickValue": self.tick_value,
            "activeContract": True,
            "symbolId": self.symbol_id,
        }


def contract_for(contract_id: str) -> Contract:
    """Contract metadata for an id such as CON.F.US.MES.M25 (name MESM5, symbolId F.US.MES)."""
    ContractId(contract_id)
    _, _, country, root, expiry = contract_id.split(".")
    spec = _ROOTS.get(root, _Root(f"{root} futures", 0.25, 1.25, 100.0))
    month, year = _MONTHS[expiry[0]], 2000 + int(expiry[1:])
    return Contract(
        id=contract_id,
        name=f"{root}{expiry[0]}{expiry[-1]}",  # TopstepX names use a one-digit year: MESM5
        description=f"{spec.description}: {_MONTH_NAMES[month - 1]} {year}",
        tick_size=spec.tick_size,
        tick_value=spec.tick_value,
        symbol_id=f"F.{country}.{root}",
        synthetic_base_price=spec.synthetic_base_price,
    )


@dataclass(frozen=True)
class Trades:
    """Column arrays of trades sorted by time: ns UTC timestamps, prices, sizes, aggressor sides (0 buy, 1 sell)."""

    ts_ns: np.ndarray
    price: np.ndarray
    size: np.ndarray
    side: np.ndarray

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    def between(self, lo_ns: int, hi_ns: int) -> Trades:
        """The trades with lo_ns <= ts < hi_ns."""
        i, j = np.searchsorted(self.ts_ns, [lo_ns, hi_ns], side="left")
        return Trades(self.ts_ns[i:j], self.price[i:j], self.size[i:j], self.side[i:j])

    def bars(self, contract_id: str, tf: Timeframe) -> pd.DataFrame:
        return aggregate_trades(contract_id, self.ts_ns, self.price, self.size, tf)


def no_trades() -> Trades:
    return Trades(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64), np.empty(0, np.int8))


class MarketSource(Protocol):
    contracts: dict[str, Contract]
    first_ns: int  # no trade exists before this instant
    start_ns: int  # where the clock starts

    @property
    def end_ns(self) -> int | None: ...  # where the replay ends (None: the market never ends); read-only

    def trades_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> Trades: ...

    def next_step_ns(self, after_ns: int) -> int | None:
        """The next natural step boundary after `after_ns` (what speed "max" advances by), or None."""
        ...


# --------------------------------------------------------------------------- bar windows


def window_open_ns(label_ns: int, tf: Timeframe) -> int:
    """Where the trades of the bar labelled `label_ns` start.

    Day, week and month bars are labelled with a midnight UTC but their trades start at the
    18:00 New York session open before it."""
    if tf.unit not in (UNIT_DAY, UNIT_WEEK, UNIT_MONTH):
        return label_ns
    first_trade_date = from_ns(label_ns).date()
    return to_ns(trade_date_session(first_trade_date)[0])


def window_end_ns(label_ns: int, tf: Timeframe) -> int:
    return to_ns(bar_end(from_ns(label_ns), tf))


def _longest_window_ns(tf: Timeframe) -> int:
    """An upper bound of how far a bar's trades reach from its label, either way."""
    calendar_days = {UNIT_DAY: 1, UNIT_WEEK: 7, UNIT_MONTH: 31}
    if tf.unit in calendar_days:
        return calendar_days[tf.unit] * NS_PER_DAY
    return tf.nominal_seconds * NS_PER_SECOND


def _label_ns(ts_ns: int, tf: Timeframe) -> int:
    return int(bar_starts_ns(np.array([ts_ns], dtype=np.int64), tf)[0])


_DAY = Timeframe(UNIT_DAY, 1)


def session_open_ns(ts_ns: int) -> int:
    """UTC ns of the 18:00 New York session open at or before `ts_ns`."""
    return window_open_ns(_label_ns(ts_ns, _DAY), _DAY)


def session_labels_ns(ts_ns: np.ndarray) -> np.ndarray:
    """The trade-date label (ns) of each timestamp: the trades of one session share a label."""
    return bar_starts_ns(ts_ns, _DAY)


def bar_labels_ns(bars: pd.DataFrame) -> np.ndarray:
    """A bar frame's labels (start times) as int64 ns UTC."""
    return bars["timestamp"].array.asi8


# Bounds the work of one aggregation pass over a synthetic market (a few hundred thousand trades).
_HISTORY_CHUNK_NS = 3 * NS_PER_DAY


def history_bars(
    source: MarketSource,
    contract_id: str,
    tf: Timeframe,
    start_ns: int,
    end_ns: int,
    clock_ns: int,
    *,
    limit: int | None = None,
    include_partial: bool = True,
) -> pd.DataFrame:
    """Bars labelled in [start_ns, end_ns) from the trades before `clock_ns`, oldest first.

    `limit` keeps the most recent bars. The window is walked backwards in chunks cut at bar
    boundaries, so a request for the latest few bars of a long window generates only those."""
    if start_ns >= end_ns:
        return empty_bars()
    reach = _longest_window_ns(tf)
    trades_lo = max(source.first_ns, start_ns - reach)
    trades_hi = min(clock_ns, end_ns + reach)
    wanted = None if limit is None else limit + (0 if include_partial else 1)
    step = max(_HISTORY_CHUNK_NS, 2 * reach)
    pieces: list[pd.DataFrame] = []
    collected = 0
    chunk_hi = trades_hi
    while chunk_hi > trades_lo and (wanted is None or collected < wanted):
        probe = chunk_hi - step
        chunk_lo = trades_lo if probe <= trades_lo else max(trades_lo, window_open_ns(_label_ns(probe, tf), tf))
        bars = source.trades_between(contract_id, chunk_lo, chunk_hi).bars(contract_id, tf)
        labels = bar_labels_ns(bars)
        bars = bars[(labels >= start_ns) & (labels < end_ns)]
        pieces.append(bars)
        collected += len(bars)
        chunk_hi = chunk_lo
    if not pieces:
        return empty_bars()
    out = pd.concat(pieces[::-1], ignore_index=True) if len(pieces) > 1 else pieces[0].reset_index(drop=True)
    if not include_partial and len(out):
        # Only the latest bar can still be in progress: the one whose window holds the clock.
        last_label = int(bar_labels_ns(out)[-1])
        if window_end_ns(last_label, tf) > clock_ns:
            out = out.iloc[:-1]
    if limit is not None:
        out = out.iloc[-limit:] if limit > 0 else out.iloc[:0]
    return normalize_bars(out)


# --------------------------------------------------------------------------- replay


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
    The sequence depends only on the file and the seed."""

    def __init__(self, path: str | os.PathLike, seed: int = 0):
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
        self.start_ns = int(opens[0])
        self.end_ns = int(ends[-1])
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


# --------------------------------------------------------------------------- synthetic

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a counter-based hash, so any trade can be computed without the ones before it."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(key: np.uint64, *counters: npt.ArrayLike) -> np.ndarray:
    """Uniform [0, 1) numbers that are a pure function of (key, counters...)."""
    h = np.full(np.broadcast(*counters).shape, key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in counters:
            h = _mix(h ^ np.asarray(c).astype(np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normal(key, *counters) -> np.ndarray:
    """Approximately standard normal (Irwin-Hall with 4 uniforms), deterministic."""
    total = sum((_uniform(key, *counters, np.int64(i)) for i in range(4)), np.zeros(()))  # an array start: an array sum
    return (total - 2.0) * math.sqrt(3.0)


# Streams keep the hashed draws of one (contract, minute) independent of each other.
_S_COUNT, _S_BURST, _S_TIME, _S_STEP, _S_SIZE, _S_BLOCK, _S_SIDE, _S_LEVEL = range(8)

# Price level = sum over these scales (minutes) of a piecewise-linear noise with knots every
# `scale` minutes and amplitude ~ sqrt(scale): a random-walk-like path computable at any minute.
_LEVEL_SCALES = (4, 32, 256, 2048, 16384)
_TICKS_PER_SQRT_MINUTE = 4.0

SYNTHETIC_HISTORY_DAYS = 60


class SyntheticSource:
    """A seeded random walk per contract on its tick grid, trading CME Globex equity hours.

    Trades exist from Sunday 18:00 to Friday 17:00 New York, with a daily halt 17:00-18:00
    (exchange holidays are not modelled). Activity is higher in the New York cash session and
    comes in bursts. All trades of a minute are a pure function of (seed, contract, minute), so
    history for any window is regenerated identically; trades exist from SYNTHETIC_HISTORY_DAYS
    before the clock's start (a bound on what one history request can cost)."""

    def __init__(self, contract_ids: list[str], seed: int, start_ns: int):
        if not contract_ids:
            raise ValueError("synthetic mode needs at least one contract id")
        self.contracts = {c.id: c for c in (contract_for(cid) for cid in contract_ids)}
        self.seed = int(seed)
        self.start_ns = int(start_ns)
        self.first_ns = self.start_ns // NS_PER_MINUTE * NS_PER_MINUTE - SYNTHETIC_HISTORY_DAYS * NS_PER_DAY
        self.end_ns = None
        self._keys = {
            cid: _mix(np.array([(self.seed ^ (zlib.crc32(cid.encode()) << 32)) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0] for cid in self.contracts
        }

    def next_step_ns(self, after_ns: int) -> int | None:
        return None

    def trades_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> Trades:
        lo_ns = max(lo_ns, self.first_ns)
        if contract_id not in self.contracts or hi_ns <= lo_ns:
            return no_trades()
        first_minute = lo_ns // NS_PER_MINUTE
        last_minute = -(-hi_ns // NS_PER_MINUTE)
        return self._minutes(contract_id, np.arange(first_minute, last_minute, dtype=np.int64)).between(lo_ns, hi_ns)

    def _minutes(self, contract_id: str, minutes: np.ndarray) -> Trades:
        contract = self.contracts[contract_id]
        key = self._keys[contract_id]
        local = pd.DatetimeIndex(minutes * NS_PER_MINUTE, tz="UTC").tz_convert(NEW_YORK)
        trading = _trading_minutes(local)
        minutes, local = minutes[trading], local[trading]
        counts = _trades_per_minute(key, minutes, local)
        minutes, counts = minutes[counts > 0], counts[counts > 0]
        total = int(counts.sum())
        if total == 0:
            return no_trades()
        minute = np.repeat(minutes, counts)
        n = np.repeat(counts, counts)
        k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)  # index within its minute

        # Time: one slot of 60 s / n per trade, so the minute's trades are strictly increasing;
        # every third one moves to a whole second when that stays inside its slot.
        slot_ms = 60_000 // n
        offset_ms = k * slot_ms + (_uniform(key, _S_TIME, minute, k) * slot_ms).astype(np.int64)
        rounded_up = -(-offset_ms // 1000) * 1000
        offset_ms = np.where((k % 3 == 0) & (rounded_up < (k + 1) * slot_ms), rounded_up, offset_ms)
        ts = minute * NS_PER_MINUTE + offset_ms * NS_PER_MS

        # Price: a tick walk inside the minute, bridged from this minute's level to the next one's.
        firsts, lasts = np.cumsum(counts) - counts, np.cumsum(counts) - 1
        step = np.floor(_uniform(key, _S_STEP, minute, k) * 3.0) - 1.0
        walk = np.cumsum(step)
        walk -= np.repeat(walk[firsts] - step[firsts], counts)  # restart the walk at every minute
        walk_end = np.repeat(walk[lasts], counts)
        level_now = np.repeat(self._level_ticks(key, minutes, contract), counts)
        level_next = np.repeat(self._level_ticks(key, minutes + 1, contract), counts)
        frac = (k + 1) / n
        ticks = np.maximum(1.0, np.round(level_now + walk - frac * walk_end + frac * (level_next - level_now)))
        price = np.round(ticks * contract.tick_size, 10)

        # Size: mostly small, sometimes a block.
        size = 1 + np.floor(-np.log1p(-_uniform(key, _S_SIZE, minute, k)) * 2.0).astype(np.int64)
        size = np.where(_uniform(key, _S_BLOCK, minute, k) < 0.02, size * 25, size)
        side = np.where(step > 0, 0, np.where(step < 0, 1, (_uniform(key, _S_SIDE, minute, k) < 0.5).astype(np.int64)))
        return Trades(ts.astype(np.int64), price, size, side.astype(np.int8))

    def _level_ticks(self, key, minute: np.ndarray, contract: Contract) -> np.ndarray:
        level = np.full(minute.shape, contract.synthetic_base_price / contract.tick_size)
        for scale in _LEVEL_SCALES:
            knot, into = np.divmod(minute, scale)
            before = _normal(key, _S_LEVEL, np.int64(scale), knot)
            after = _normal(key, _S_LEVEL, np.int64(scale), knot + 1)
            level += (before + (after - before) * (into / scale)) * _TICKS_PER_SQRT_MINUTE * math.sqrt(scale)
        return level


def _trading_minutes(local: pd.DatetimeIndex) -> np.ndarray:
    """True for minutes (New York starts) inside CME Globex equity hours: Sun 18:00 - Fri 17:00, halt 17:00-18:00."""
    hour, weekday = local.hour.to_numpy(), local.day_of_week.to_numpy()  # Monday = 0
    closed = (weekday == 5) | ((weekday == 6) & (hour < 18)) | ((weekday == 4) & (hour >= 17)) | (hour == 17)
    return ~closed


def _trades_per_minute(key, minutes: np.ndarray, local: pd.DatetimeIndex) -> np.ndarray:
    """Busier in the New York cash session, with bursts in about one minute out of twelve."""
    minute_of_day = local.hour.to_numpy() * 60 + local.minute.to_numpy()
    cash_session = (minute_of_day >= 9 * 60 + 30) & (minute_of_day < 16 * 60)
    rate = np.where(cash_session, 40.0, 10.0)
    rate = np.where(_uniform(key, _S_BURST, minutes) < 0.08, rate * 5.0, rate)
    return np.minimum(400, np.floor(rate * 2.0 * _uniform(key, _S_COUNT, minutes))).astype(np.int64)
