"""`SyntheticSource`: trades as a pure function of (seed, contract, minute), for any window."""

from __future__ import annotations

import math
import zlib

import numpy as np
import numpy.typing as npt
import pandas as pd

from projectx_pipeline.domain.sessions import NEW_YORK
from projectx_pipeline.domain.timeframes import Timeframe
from projectx_pipeline.domain.timestamps import NS_PER_DAY

from .contracts import contract_for
from .market import NS_PER_MINUTE, NS_PER_MS, Trades, no_trades

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
_S_COUNT, _S_BURST, _S_TIME, _S_STEP, _S_SIZE, _S_BLOCK, _S_SIDE, _S_LEVEL, _S_DITHER = range(9)

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
        self._keys = {cid: stream_key(self.seed, cid) for cid in self.contracts}

    def next_step_ns(self, after_ns: int) -> int | None:
        return None

    def trades_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> Trades:
        if contract_id not in self.contracts:
            return no_trades()
        first_ns, end_ns = self._trading_span(contract_id)
        lo_ns, hi_ns = max(lo_ns, first_ns), hi_ns if end_ns is None else min(hi_ns, end_ns)
        if hi_ns <= lo_ns:
            return no_trades()
        first_minute = lo_ns // NS_PER_MINUTE
        last_minute = -(-hi_ns // NS_PER_MINUTE)
        return self._minutes(contract_id, np.arange(first_minute, last_minute, dtype=np.int64)).between(lo_ns, hi_ns)

    def bars_between(self, contract_id: str, tf: Timeframe, lo_ns: int, hi_ns: int) -> pd.DataFrame:
        return self.trades_between(contract_id, lo_ns, hi_ns).bars(contract_id, tf)

    def released_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> tuple[Trades, int]:
        trades = self.trades_between(contract_id, lo_ns, hi_ns)
        return trades, len(trades)

    # ------------------------------------------------------------------ what a market of listed months changes

    def _trading_span(self, contract_id: str) -> tuple[int, int | None]:
        """[first, end) of the instants a contract trades in (end None: it never expires)."""
        return self.first_ns, None

    def _trade_counts(self, contract_id: str, minutes: np.ndarray, local: pd.DatetimeIndex) -> np.ndarray:
        """How many trades each of `minutes` (trading minutes; `local`: their New York times) holds."""
        return trades_per_minute(self._keys[contract_id], minutes, local)

    def _level_ticks(self, contract_id: str, minutes: np.ndarray) -> np.ndarray:
        """The price level, in ticks, at the start of each of `minutes`: a walk of its own per contract."""
        contract = self.contracts[contract_id]
        return level_ticks(self._keys[contract_id], minutes, contract.synthetic_base_price / contract.tick_size)

    # ------------------------------------------------------------------ the trades of whole minutes

    def _minutes(self, contract_id: str, minutes: np.ndarray) -> Trades:
        contract = self.contracts[contract_id]
        key = self._keys[contract_id]
        local = pd.DatetimeIndex(minutes * NS_PER_MINUTE, tz="UTC").tz_convert(NEW_YORK)
        trading = _trading_minutes(local)
        minutes, local = minutes[trading], local[trading]
        counts = self._trade_counts(contract_id, minutes, local)
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
        level_now = np.repeat(self._level_ticks(contract_id, minutes), counts)
        level_next = np.repeat(self._level_ticks(contract_id, minutes + 1), counts)
        frac = (k + 1) / n
        ticks = np.maximum(1.0, np.round(level_now + walk - frac * walk_end + frac * (level_next - level_now)))
        price = np.round(ticks * contract.tick_size, 10)

        # Size: mostly small, sometimes a block.
        size = 1 + np.floor(-np.log1p(-_uniform(key, _S_SIZE, minute, k)) * 2.0).astype(np.int64)
        size = np.where(_uniform(key, _S_BLOCK, minute, k) < 0.02, size * 25, size)
        side = np.where(step > 0, 0, np.where(step < 0, 1, (_uniform(key, _S_SIDE, minute, k) < 0.5).astype(np.int64)))
        return Trades(ts.astype(np.int64), price, size, side.astype(np.int8))


def stream_key(seed: int, name: str) -> np.uint64:
    """The hash key of the draws of one contract (or one symbol's price path) under `seed`."""
    return _mix(np.array([(int(seed) ^ (zlib.crc32(name.encode()) << 32)) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]


def level_ticks(key: np.uint64, minute: np.ndarray, base_ticks: float) -> np.ndarray:
    """A random-walk-like price level in ticks around `base_ticks`, at each of `minute`, keyed by `key`."""
    minute = np.asarray(minute, dtype=np.int64)
    # Every scale at once (one row each): the hashes are elementwise, so this equals a loop over
    # the scales, with a tenth of the calls (a clock step asks for a handful of minutes).
    scales = np.array(_LEVEL_SCALES, dtype=np.int64).reshape(-1, *([1] * minute.ndim))
    knot, into = np.divmod(minute[np.newaxis], scales)
    before, after = _normal(key, _S_LEVEL, scales[np.newaxis], np.stack((knot, knot + 1)))
    moves = (before + (after - before) * (into / scales)) * _TICKS_PER_SQRT_MINUTE * np.sqrt(scales)
    level = np.full(minute.shape, float(base_ticks))
    for move in moves:  # added scale by scale, in the order (and the rounding) of the sum it always was
        level += move
    return level


def _trading_minutes(local: pd.DatetimeIndex) -> np.ndarray:
    """True for minutes (New York starts) inside CME Globex equity hours: Sun 18:00 - Fri 17:00, halt 17:00-18:00."""
    hour, weekday = local.hour.to_numpy(), local.day_of_week.to_numpy()  # Monday = 0
    closed = (weekday == 5) | ((weekday == 6) & (hour < 18)) | ((weekday == 4) & (hour >= 17)) | (hour == 17)
    return ~closed


def trades_per_minute(key, minutes: np.ndarray, local: pd.DatetimeIndex, share: np.ndarray | None = None) -> np.ndarray:
    """Busier in the New York cash session, with bursts in about one minute out of twelve.

    `share` scales the rate (a listed month that is not front trades a fraction of it); the
    fraction of a trade is then dithered, so that a 2 % share still trades now and then."""
    minute_of_day = local.hour.to_numpy() * 60 + local.minute.to_numpy()
    cash_session = (minute_of_day >= 9 * 60 + 30) & (minute_of_day < 16 * 60)
    rate = np.where(cash_session, 40.0, 10.0)
    rate = np.where(_uniform(key, _S_BURST, minutes) < 0.08, rate * 5.0, rate)
    drawn = rate * 2.0 * _uniform(key, _S_COUNT, minutes)
    if share is not None:
        drawn = drawn * share + _uniform(key, _S_DITHER, minutes)
    return np.minimum(400, np.floor(drawn)).astype(np.int64)
