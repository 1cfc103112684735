"""The prints of one replay bar: trades that look like a market and reproduce the bar exactly.

Pure functions of (bar, seed, bar index), vectorized with numpy; `ReplaySource` calls them one bar
at a time, on demand. Each aspect of a bar draws from its own random stream
(`PCG64([seed, bar index, stream])`), so the number of prints and their times can be known
without drawing their prices:

* sizes (`print_sizes`): mostly 1-3 lots, a tenth above 5, one print in 25 a block from 8 lots up
  to `MAX_BLOCK_LOTS` (Pareto tail); the mean is about 3.3 lots. Sizes are drawn until they
  cover the bar's volume, the last one cut so that they sum to it exactly.
* times (`print_times`): bursts of prints (short exponential gaps) with longer pauses between
  them, at distinct milliseconds strictly inside the bar's window, at least one in each of its
  minutes when the bar has as many prints as minutes. A window with fewer free
  milliseconds than prints gets fewer, larger prints (`fit_to_window`): one per millisecond.
* prices (`print_ticks`): a walk on the tick grid through open → low → high → close (open →
  high → low → close on a down bar), moving 0 or ±1 tick from print to print, kept inside
  [low, high]. Only a leg with fewer prints than ticks to cover moves in larger steps.
* sides: the tick rule (`aggressor_sides`).
* the book around a print (`best_bid_ask`): a buy lifts the ask, a sell hits the bid; the spread
  is one tick, two after a print of `WIDE_SPREAD_LOTS` or more (it emptied its level).
"""

from __future__ import annotations

import numpy as np

from .market import NS_PER_MINUTE, NS_PER_MS

MEAN_PRINT_LOTS = 3.3  # what `_draw_sizes` averages; sizes the first batch of draws
MAX_BLOCK_LOTS = 500
WIDE_SPREAD_LOTS = 10

_SIZES, _TIMES, _PRICES = range(3)  # the random streams of a bar
_ONE_LOT_ODDS = 0.42  # geometric sizes: P(1 lot) among the small prints
_BLOCK_ODDS = 0.04
_BURST_PAUSE_ODDS = 1 / 12  # a pause ends a burst of about a dozen prints
_BURST_PAUSE_FACTOR = 40.0


def bar_stream(seed: int, bar_index: int, stream: int) -> np.random.Generator:
    """The random numbers of one aspect (`stream`) of one bar: independent of every other bar."""
    return np.random.Generator(np.random.PCG64([seed & 0xFFFF_FFFF_FFFF_FFFF, bar_index, stream]))


def path_ticks(o: float, h: float, lo: float, c: float, tick: float) -> list[int]:
    """The points a bar's prints pass through, in ticks above the low: open, low, high, close on an
    up bar (high before low on a down bar), a point equal to its predecessor left out."""
    o_t, h_t, c_t = (round((p - lo) / tick) for p in (o, h, c))
    points = [o_t, 0, h_t, c_t] if c >= o else [o_t, h_t, 0, c_t]
    return [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]


def path_point_counts(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> np.ndarray:
    """`len(path_ticks(...))` of every bar at once: the fewest prints that touch o, h, l and c."""
    up = c >= o
    first, second = np.where(up, lo, h), np.where(up, h, lo)
    return 1 + (first != o).astype(np.int64) + (second != first) + (c != second)


def _size_quantiles() -> np.ndarray:
    """The print size at each of 2**16 evenly spaced quantiles of the size distribution: small
    prints geometric (P(1 lot) = _ONE_LOT_ODDS), a share _BLOCK_ODDS of blocks Pareto (from 8
    lots, index 1.3) up to MAX_BLOCK_LOTS. One 16-bit draw per print then picks its size, the
    cheapest draw there is (the number of prints of a bar is known only from its sizes)."""
    lots = np.arange(1, MAX_BLOCK_LOTS + 1, dtype=np.float64)
    blocks = np.where(lots < 8, 0.0, 1.0 - ((lots + 1) / 8.0) ** -1.3)
    blocks[-1] = 1.0
    cdf = (1 - _BLOCK_ODDS) * (1.0 - (1.0 - _ONE_LOT_ODDS) ** lots) + _BLOCK_ODDS * blocks
    quantiles = (np.arange(2**16) + 0.5) / 2**16
    return (np.searchsorted(cdf, quantiles) + 1).astype(np.int64)


_SIZE_AT_QUANTILE = _size_quantiles()


def _draw_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    return _SIZE_AT_QUANTILE[rng.integers(0, 2**16, n, dtype=np.uint16)]


def print_sizes(volume: int, min_prints: int, seed: int, bar_index: int) -> np.ndarray:
    """Print sizes >= 1 that sum exactly to `volume`, at least `min_prints` of them (<= volume)."""
    rng = bar_stream(seed, bar_index, _SIZES)
    batches, total = [], 0
    while total < volume:
        batch = _draw_sizes(rng, int((volume - total) / MEAN_PRINT_LOTS * 1.1) + 16)
        batches.append(batch)
        total += int(batch.sum())
    sizes = np.concatenate(batches)
    covered = np.cumsum(sizes)
    n = int(np.searchsorted(covered, volume)) + 1  # the first print that reaches the volume
    sizes = sizes[:n].copy()
    sizes[-1] -= int(covered[n - 1]) - volume
    while sizes.size < min_prints:
        # too few prints (a block took most of a quiet bar): the largest splits in two, side by side
        k = int(np.argmax(sizes))
        half = int(sizes[k]) // 2
        sizes = np.insert(sizes, k + 1, half)
        sizes[k] -= half
    return sizes


def window_minutes(window_open_ns, window_end_ns):
    """The minutes a window touches, a last partial one included (arrays too)."""
    return -(-(window_end_ns - window_open_ns) // NS_PER_MINUTE)


def min_print_count(points, volume, window_open_ns, window_end_ns):
    """The fewest prints a bar gets (arrays too): enough to touch its open, high, low and close
    (`points`) and, volume permitting, one in every minute of its window (`print_times`)."""
    return np.maximum(points, np.minimum(volume, window_minutes(window_open_ns, window_end_ns)))


def window_capacity(window_open_ns, window_end_ns):
    """How many prints fit at distinct milliseconds strictly inside the window (arrays too)."""
    return np.maximum(0, (window_end_ns - window_open_ns) // NS_PER_MS - 1)


def fit_to_window(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """At most `capacity` prints: consecutive ones merged into evenly spread groups (same total)."""
    if sizes.size <= capacity:
        return sizes
    return np.add.reduceat(sizes, np.linspace(0, sizes.size, capacity, endpoint=False).astype(np.int64))


def print_times(n: int, window_open_ns: int, window_end_ns: int, seed: int, bar_index: int) -> np.ndarray:
    """n strictly increasing ms-resolution instants strictly inside (window_open, window_end), in
    bursts, with at least one in every minute of the window when there are prints enough.

    The minute guarantee is what the real tape shows: MES trades every minute of the session, and
    the gateway's 1m history of the sample's days has no hole where its 5m bar has volume (the
    quietest sample bar holds 57 lots). Bursts alone leave a quiet 5m bar's minute empty now and
    then, a 1m hole the gateway would not have."""
    rng = bar_stream(seed, bar_index, _TIMES)
    minutes = int(window_minutes(window_open_ns, window_end_ns))
    per_minute = n >= minutes >= 2
    at = _burst_fractions(rng, n - minutes if per_minute else n)
    if not per_minute:
        return _spread_in(window_open_ns, window_end_ns, at)
    # one print at a random instant of every minute, the others where the bursts put them
    slot_open = window_open_ns + np.arange(minutes, dtype=np.int64) * NS_PER_MINUTE
    slot_end = np.minimum(slot_open + NS_PER_MINUTE, window_end_ns)
    anchors = (slot_open - window_open_ns + rng.random(minutes) * (slot_end - slot_open)) / (window_end_ns - window_open_ns)
    at = np.sort(np.concatenate((at, anchors)))
    # a print's minute: where its fraction falls on the window's own scale (the last one may be short)
    slot = np.minimum(np.searchsorted(slot_open, window_open_ns + at * (window_end_ns - window_open_ns), side="right") - 1, minutes - 1)
    counts = np.bincount(slot, minlength=minutes)
    if np.any(counts > window_capacity(slot_open, slot_end)):
        return _spread_in(window_open_ns, window_end_ns, np.sort(at))  # one minute too busy for its milliseconds
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out = np.empty(n, dtype=np.int64)
    for j in range(minutes):
        lo, hi = slot_open[j], slot_end[j]
        inner = at[first[j] : first[j] + counts[j]] * (window_end_ns - window_open_ns) + window_open_ns - lo
        out[first[j] : first[j] + counts[j]] = _spread_in(int(lo), int(hi), np.clip(inner / (hi - lo), 0.0, np.nextafter(1.0, 0.0)))
    return out


def _burst_fractions(rng: np.random.Generator, n: int) -> np.ndarray:
    """n increasing fractions of [0, 1): short exponential gaps with now and then a long pause."""
    gaps = rng.exponential(1.0, n + 1) * np.where(rng.random(n + 1) < _BURST_PAUSE_ODDS, _BURST_PAUSE_FACTOR, 1.0)
    return np.cumsum(gaps)[:-1] / gaps.sum()


def _spread_in(open_ns: int, end_ns: int, at: np.ndarray) -> np.ndarray:
    """Increasing fractions of [0, 1) as strictly increasing distinct milliseconds strictly inside
    (open_ns, end_ns); at most `window_capacity` of them."""
    room = int(window_capacity(open_ns, end_ns)) - at.size  # the free milliseconds
    # one millisecond per print keeps them strictly increasing; the free ones go where `at` puts them
    offsets_ms = 1 + np.arange(at.size, dtype=np.int64) + np.floor(at * room).astype(np.int64)
    return open_ns + offsets_ms * NS_PER_MS


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers >= 0 proportional to `weights` that sum to `total` (largest remainders round up)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(out - exact, kind="stable")[: total - int(out.sum())]] += 1
    return out


def print_ticks(points: list[int], high_ticks: int, n: int, seed: int, bar_index: int) -> np.ndarray:
    """n prices in ticks above the low: points[0] first, points[-1] last, every point reached in
    order, none outside [0, high_ticks], consecutive prints mostly 0 or ±1 tick apart."""
    if len(points) == 1:
        return np.full(n, points[0], dtype=np.int64)
    rng = bar_stream(seed, bar_index, _PRICES)
    legs = np.diff(np.array(points, dtype=np.int64))
    distance = np.abs(legs)
    steps_total = n - 1
    if steps_total >= distance.sum():
        # each leg gets the steps it needs plus a random share of the spare ones
        lengths = distance + _allocate(steps_total - int(distance.sum()), distance * (0.5 + rng.random(legs.size)))
    else:
        lengths = 1 + _allocate(steps_total - legs.size, np.maximum(distance - 1, 1e-9))
    spare = lengths - distance
    # A leg of L steps covering D ticks: |D| steps toward its end, u back-and-forth pairs, the rest
    # 0, in random order. The pairs make the walk wander about as far as the bar's range; clipping
    # to [0, high] keeps it in the bar and its steps within one tick, and never moves a point.
    activity = min(0.6, max(0.05, high_ticks**2 / max(1, int(spare.sum()))))
    pairs = rng.binomial(np.maximum(spare, 0) // 2, activity)
    steps = []
    for d, length, u in zip(legs.tolist(), lengths.tolist(), pairs.tolist()):
        if length < abs(d):  # a leg shorter than its distance moves in the fewest, most even jumps
            steps.append(np.diff(np.round(np.arange(length + 1) * d / length)).astype(np.int64))
            continue
        ups, downs = max(d, 0) + u, max(-d, 0) + u
        order = rng.permutation(length)
        steps.append(np.where(order < ups, 1, np.where(order < ups + downs, -1, 0)))
    walk = np.concatenate(([points[0]], points[0] + np.cumsum(np.concatenate(steps))))
    return np.clip(walk, 0, high_ticks)


def tick_prices(o: float, h: float, lo: float, c: float, high_ticks: int, tick: float) -> np.ndarray:
    """The price of each tick above the low, on the grid, with the bar's own four prices exact."""
    prices = np.round(lo + np.arange(high_ticks + 1) * tick, 10)
    for p in (o, c, lo, h):
        prices[round((p - lo) / tick)] = p
    return prices


def aggressor_sides(price: np.ndarray, before: float, side_before: int) -> np.ndarray:
    """The tick rule: up-tick prints are buys (0), down-tick prints sells (1), an unchanged price
    keeps the side before it; `before` and `side_before` stand for the print before the first."""
    change = np.sign(np.diff(price, prepend=before))
    side = np.where(change > 0, 0, np.where(change < 0, 1, -1))
    known = np.where(side >= 0, np.arange(side.size), -1)
    np.maximum.accumulate(known, out=known)
    return np.where(known < 0, side_before, side[np.maximum(known, 0)]).astype(np.int8)


def best_bid_ask(price: float, side: int, size: int, tick: float) -> tuple[float, float]:
    """The book just after a print: a buy traded at the ask, a sell at the bid, the other side one
    tick away, two after a print of WIDE_SPREAD_LOTS or more. (Scalar: a quote needs one.)"""
    spread = 2 * tick if size >= WIDE_SPREAD_LOTS else tick
    return (round(price - spread, 10), price) if side == 0 else (price, round(price + spread, 10))
