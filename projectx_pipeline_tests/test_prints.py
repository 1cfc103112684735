"""The replay's prints (`simulator/prints.py`, `ReplaySource`): realistic, exact, lazy, and the quotes around them.

Pure logic, no server: the per-bar generator, the lazy source against an eager expansion, the
history answered from the bars against the history aggregated from the prints, the book and the
quote throttle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectx_pipeline.domain.aggregation import aggregate_trades
from projectx_pipeline.domain.market import normalize_bars
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.gateway.simulator import market, prints, replay
from projectx_pipeline.gateway.simulator.market import Trades
from projectx_pipeline.gateway.simulator.publisher import quote_instants
from projectx_pipeline.gateway.simulator.replay import ReplaySource, default_replay_path

from .support.market import MES, TIMEFRAMES

TICK = 0.25
NS_PER_MS = 1_000_000
FAR_FUTURE_NS = 2**62


@pytest.fixture(scope="module")
def sample_source() -> ReplaySource:
    return ReplaySource(default_replay_path())


@pytest.fixture(scope="module")
def sample_prints(sample_source) -> Trades:
    """Every print of the sample, expanded eagerly bar by bar (about 18 M)."""
    return sample_source.trades_between(MES, sample_source.first_ns, sample_source.end_ns)


def bar_prints_of(source: ReplaySource, i: int) -> Trades:
    bar = source.bars.iloc[i]
    lo = market.window_open_ns(bar["timestamp"].value, source.timeframe)
    return source.trades_between(MES, lo, market.window_end_ns(bar["timestamp"].value, source.timeframe))


def write_bars(path: Path, rows: list[tuple[str, float, float, float, float, int]], unit: int = 2, value: int = 5) -> Path:
    frame = pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close", "volume"])
    frame.insert(0, "contract_id", MES)
    frame["timeframe_unit"], frame["timeframe_value"] = unit, value
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- one bar


def assert_reproduces_the_bar(trades: Trades, bar: pd.Series, lo_ns: int, hi_ns: int) -> None:
    assert int(trades.size.sum()) == bar["volume"] and trades.size.min() >= 1
    assert np.all(np.diff(trades.ts_ns) > 0) and trades.ts_ns[0] > lo_ns and trades.ts_ns[-1] < hi_ns
    assert np.all(trades.ts_ns % NS_PER_MS == 0), "millisecond resolution"
    assert (trades.price[0], trades.price[-1]) == (bar["open"], bar["close"])
    assert (trades.price.max(), trades.price.min()) == (bar["high"], bar["low"])
    ticks = (trades.price - bar["low"]) / TICK
    np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-9, err_msg="on the tick grid")


def test_every_sampled_bar_is_reproduced_exactly_by_its_prints(sample_source):
    chosen = np.random.default_rng(7).choice(len(sample_source.bars), 300, replace=False)
    for i in sorted(chosen.tolist()):
        bar = sample_source.bars.iloc[i]
        trades = bar_prints_of(sample_source, i)
        lo = market.window_open_ns(bar["timestamp"].value, sample_source.timeframe)
        assert_reproduces_the_bar(trades, bar, lo, lo + 300 * 10**9)
        pd.testing.assert_frame_equal(
            normalize_bars(aggregate_trades(MES, trades.ts_ns, trades.price, trades.size, sample_source.timeframe)),
            normalize_bars(sample_source.bars.iloc[[i]].reset_index(drop=True)),
        )
        moves = np.abs(np.diff(np.round(trades.price / TICK)))
        assert moves.max() <= 1, "print to print the price moves 0 or 1 tick"
        assert (moves == 0).mean() >= 0.3, "and mostly not at all"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    low=st.integers(20_000, 24_000),
    legs=st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60)),
    volume=st.integers(1, 30_000),
    seed=st.integers(0, 2**32),
    window_s=st.sampled_from([1, 60, 300]),
)
def test_any_consistent_bar_is_reproduced_or_refused_clearly(tmp_path, low, legs, volume, seed, window_s):
    # legs: open above the low, high above max(open, close), close above the low (in ticks)
    o_t, extra_t, c_t = legs
    h_t = max(o_t, c_t) + extra_t
    o, h, lo, c = ((low + t) * TICK for t in (o_t, h_t, 0, c_t))
    unit, value = {1: (1, 1), 60: (2, 1), 300: (2, 5)}[window_s]
    path = write_bars(tmp_path / f"bar_{window_s}.csv", [("2025-03-18T14:00:00Z", o, h, lo, c, volume)], unit, value)
    if volume < len(prints.path_ticks(o, h, lo, c, TICK)):
        with pytest.raises(ValueError, match="too small to touch open, high, low and close"):
            ReplaySource(path, seed)
        return
    source = ReplaySource(path, seed)
    trades = source.trades_between(MES, source.first_ns, source.end_ns)
    assert_reproduces_the_bar(trades, source.bars.iloc[0], source.first_ns, source.end_ns)
    assert len(trades) <= window_s * 1000 - 1, "a short window gets fewer, larger prints: one per millisecond at most"


def test_inconsistent_bars_keep_their_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="is inconsistent"):
        ReplaySource(write_bars(tmp_path / "a.csv", [("2025-03-18T14:00:00Z", 5000.0, 4999.0, 4998.0, 5000.5, 10)]))
    with pytest.raises(ValueError, match="is inconsistent"):
        ReplaySource(write_bars(tmp_path / "b.csv", [("2025-03-18T14:00:00Z", 5000.0, 5001.0, 4999.0, 5000.0, 0)]))
    with pytest.raises(ValueError, match="volume 3 is too small"):
        ReplaySource(write_bars(tmp_path / "c.csv", [("2025-03-18T14:00:00Z", 5000.0, 5001.0, 4999.0, 5000.5, 3)]))


def test_prints_depend_only_on_the_file_and_the_seed(tmp_path, sample_source):
    path = tmp_path / "head.csv"
    sample_source.bars.iloc[:40].to_csv(path, index=False)
    first, again, other = (ReplaySource(path, seed) for seed in (5, 5, 6))
    everything = [s.trades_between(MES, s.first_ns, s.end_ns) for s in (first, again, other)]
    for column in ("ts_ns", "price", "size", "side"):
        np.testing.assert_array_equal(getattr(everything[0], column), getattr(everything[1], column))
    assert not np.array_equal(everything[0].size, everything[2].size), "another seed, other prints"


# --------------------------------------------------------------------------- the whole sample


def test_print_sizes_and_counts_look_like_the_mes_tape(sample_source, sample_prints):
    sizes = sample_prints.size
    assert int(sizes.sum()) == int(sample_source.bars["volume"].sum())
    assert np.median(sizes) <= 5 and (sizes <= 10).mean() >= 0.8 and (sizes == 1).mean() >= 0.25
    assert 100 <= sizes.max() <= prints.MAX_BLOCK_LOTS, "a heavy tail, now and then a block"
    counts = np.diff(np.searchsorted(sample_prints.ts_ns, np.append(market.bar_labels_ns(sample_source.bars), sample_source.end_ns)))
    volume = sample_source.bars["volume"].to_numpy()
    busy, quiet = counts[volume >= 15_000], counts[volume <= 100]
    assert busy.min() >= 2_000 and 5 <= np.median(quiet) <= 40, "a 20k-lot bar has thousands of prints, a 60-lot bar a dozen or so"
    order = np.argsort(volume)
    deciles = [chunk.mean() for chunk in np.array_split(counts[order], 10)]
    assert deciles == sorted(deciles), "more volume, more prints"


def test_every_minute_of_the_sample_has_a_print(sample_source, sample_prints):
    """The gateway's 1m history has no hole inside a traded 5m bar: neither may the replay's."""
    minutes = np.unique(sample_prints.ts_ns // (60 * 10**9))
    opens = market.bar_labels_ns(sample_source.bars) // (60 * 10**9)
    expected = (opens[:, None] + np.arange(5)).ravel()
    assert np.setdiff1d(expected, minutes).size == 0 and minutes.size == expected.size


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 20_000),
    window_ms=st.integers(2, 4 * 3_600_000),
    seed=st.integers(0, 2**32),
)
def test_print_times_are_distinct_inside_the_window_and_cover_its_minutes(n, window_ms, seed):
    open_ns = 1_742_306_400 * 10**9  # a minute boundary
    end_ns = open_ns + window_ms * NS_PER_MS
    n = min(n, int(prints.window_capacity(open_ns, end_ns)))
    if n == 0:
        return
    ts = prints.print_times(n, open_ns, end_ns, seed, 0)
    assert ts.size == n and np.all(np.diff(ts) > 0) and ts[0] > open_ns and ts[-1] < end_ns
    assert np.all(ts % NS_PER_MS == 0)
    minutes = -(-window_ms // 60_000)
    if n >= minutes:
        covered = np.unique((ts - open_ns) // (60 * 10**9))
        assert covered.size == minutes or np.bincount((ts - open_ns) // (60 * 10**9)).max() > 59_000, "every minute has a print"


def test_sides_follow_the_tick_rule(sample_source, sample_prints):
    change = np.sign(np.diff(sample_prints.price))
    later = sample_prints.side[1:]
    assert np.all(later[change > 0] == 0) and np.all(later[change < 0] == 1)
    # an unchanged price keeps the side before it (a bar's first print cannot see its predecessor's side)
    unchanged = np.flatnonzero(change == 0) + 1
    bar_firsts = np.searchsorted(sample_prints.ts_ns, market.bar_labels_ns(sample_source.bars))
    unchanged = unchanged[~np.isin(unchanged, bar_firsts)]
    assert unchanged.size > 1_000_000
    assert np.all(sample_prints.side[unchanged] == sample_prints.side[unchanged - 1])


@pytest.mark.parametrize("tf", TIMEFRAMES, ids=str)
def test_history_from_the_bars_equals_history_from_the_prints(sample_source, sample_prints, tf):
    from_prints = normalize_bars(sample_prints.bars(MES, tf))
    pd.testing.assert_frame_equal(market.history_bars(sample_source, MES, tf, 0, FAR_FUTURE_NS, sample_source.end_ns), from_prints)
    # a clock inside a bar: the bar in progress comes from the prints before it
    clock = int(sample_prints.ts_ns[len(sample_prints) * 2 // 3]) + 1
    upto_clock = normalize_bars(sample_prints.between(0, clock).bars(MES, tf))
    pd.testing.assert_frame_equal(market.history_bars(sample_source, MES, tf, 0, FAR_FUTURE_NS, clock), upto_clock)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_lazy_windows_equal_the_eager_expansion(sample_source, sample_prints, data):
    span = sample_source.end_ns - sample_source.first_ns
    lo = sample_source.first_ns - 10**9 + data.draw(st.integers(0, span), label="lo offset")
    hi = lo + data.draw(st.integers(0, 2 * 86_400 * 10**9), label="length")
    lazy, eager = sample_source.trades_between(MES, lo, hi), sample_prints.between(lo, hi)
    for column in ("ts_ns", "price", "size", "side"):
        np.testing.assert_array_equal(getattr(lazy, column), getattr(eager, column))
    stand_ins, count = sample_source.released_between(MES, lo, hi)
    assert count == len(eager), "trades_published stays exact"
    day = parse_timeframe("1d")
    pd.testing.assert_frame_equal(stand_ins.bars(MES, day), eager.bars(MES, day), obj="session figures")


def test_an_evicted_bar_is_regenerated_identically(sample_source, monkeypatch):
    monkeypatch.setattr(replay, "CACHE_PRINTS", 10_000)
    source = ReplaySource(default_replay_path())
    busiest = int(sample_source.bars["volume"].to_numpy().argmax())
    first = bar_prints_of(source, busiest)
    for i in range(200, 260):  # enough other bars to evict it
        bar_prints_of(source, i)
    again = bar_prints_of(source, busiest)
    assert first is not again
    np.testing.assert_array_equal(first.ts_ns, again.ts_ns)
    np.testing.assert_array_equal(first.price, again.price)


# --------------------------------------------------------------------------- the book and the quotes


@given(
    price_ticks=st.lists(st.integers(20_000, 20_100), min_size=1, max_size=50),
    sizes=st.lists(st.integers(1, 400), min_size=50, max_size=50),
)
def test_the_book_straddles_every_print(price_ticks, sizes):
    price = np.array(price_ticks) * TICK
    sides = prints.aggressor_sides(price, price[0], 0).tolist()
    for p, side, size in zip(price.tolist(), sides, sizes):
        bid, ask = prints.best_bid_ask(p, side, size, TICK)
        assert round((ask - bid) / TICK) == (2 if size >= prints.WIDE_SPREAD_LOTS else 1)
        assert (ask if side == 0 else bid) == p, "a buy trades at the ask, a sell at the bid"
        assert round(bid / TICK) * TICK == bid and round(ask / TICK) * TICK == ask, "on the tick grid"


def test_the_sample_spread_is_mostly_one_tick(sample_prints):
    some = sample_prints[:200_000]
    spreads = [
        round((a - b) / TICK) for b, a in map(prints.best_bid_ask, some.price.tolist(), some.side.tolist(), some.size.tolist(), [TICK] * len(some))
    ]
    one_tick = np.array(spreads) == 1
    assert 0.85 <= one_tick.mean() < 1.0, "usually one tick, sometimes two"


@given(
    ts_ms=st.lists(st.integers(0, 20_000), max_size=80, unique=True),
    cuts_ms=st.lists(st.integers(1, 20_000), max_size=6, unique=True),
    interval_ms=st.sampled_from([1, 200, 250, 1000]),
)
def test_quote_instants_are_throttled_and_do_not_depend_on_the_steps(ts_ms, cuts_ms, interval_ms):
    ts = np.array(sorted(ts_ms), dtype=np.int64) * NS_PER_MS
    interval = interval_ms * NS_PER_MS
    end = 20_001 * NS_PER_MS
    whole = quote_instants(ts, None, 0, end, interval)
    # one bucket end per bucket holding a trade, right after it
    assert np.all(np.diff(whole) >= interval)
    assert set(whole.tolist()) == {int(t) // interval * interval + interval for t in ts if int(t) // interval * interval + interval <= end}
    stepped, last_before, lo = [], None, 0
    for hi in [*sorted(c * NS_PER_MS for c in cuts_ms), end]:
        step = ts[(ts >= lo) & (ts < hi)]
        stepped += quote_instants(step, last_before, lo, hi, interval).tolist()
        last_before = int(step[-1]) if step.size else last_before
        lo = hi
    assert stepped == whole.tolist(), "the same quotes however the clock steps"
