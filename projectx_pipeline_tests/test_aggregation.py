"""Batch and live trade aggregation: alignment, live == batch, late trades, partial bars, bad input."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectx_pipeline.domain.aggregation import (
    REPAIR_COLUMNS,
    BarAggregator,
    aggregate_trades,
    split_valid,
)
from projectx_pipeline.domain.market import BAR_COLUMNS, normalize_bars, read_bars_csv
from projectx_pipeline.domain.sessions import trade_date_session
from projectx_pipeline.domain.timeframes import DEFAULT_TIMEFRAMES, UNIT_DAY, Timeframe, bar_end, bar_start, parse_timeframes
from projectx_pipeline.domain.timestamps import NS_PER_SECOND, from_ns, to_ns

from .support.market import MES
from .support.paths import SAMPLE_DIR

CONTRACT = MES
SAMPLE_5M = SAMPLE_DIR / f"{MES}_5m.csv"
S = NS_PER_SECOND
TF = {t.label: t for t in DEFAULT_TIMEFRAMES}


def ns(text: str) -> int:
    return to_ns(datetime.fromisoformat(text).replace(tzinfo=timezone.utc))


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def one_trade(ts: int, price: float = 5000.0, size: int = 1):
    return np.array([ts], dtype=np.int64), np.array([price]), np.array([size], dtype=np.int64)


def bars_of(frame: pd.DataFrame, tf) -> pd.DataFrame:
    sel = frame[(frame["timeframe_unit"] == tf.unit) & (frame["timeframe_value"] == tf.value)]
    return normalize_bars(sel).sort_values("timestamp").reset_index(drop=True)


def batch_bars(ts, price, size, tf) -> pd.DataFrame:
    return normalize_bars(aggregate_trades(CONTRACT, ts, price, size, tf))


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize(
    "trade, expected",
    [
        # summer (EDT): 4h anchored at 22:00 UTC, trade date rolls at 22:00 UTC
        (
            "2025-06-17 01:37:12",
            {
                "1m": "2025-06-17 01:37",
                "5m": "2025-06-17 01:35",
                "15m": "2025-06-17 01:30",
                "1h": "2025-06-17 01:00",
                "4h": "2025-06-16 22:00",
                "1d": "2025-06-17",
            },
        ),
        (
            "2025-06-17 20:59:59",
            {
                "1m": "2025-06-17 20:59",
                "5m": "2025-06-17 20:55",
                "15m": "2025-06-17 20:45",
                "1h": "2025-06-17 20:00",
                "4h": "2025-06-17 18:00",
                "1d": "2025-06-17",
            },
        ),
        (
            "2025-06-17 22:00:00",
            {
                "1m": "2025-06-17 22:00",
                "5m": "2025-06-17 22:00",
                "15m": "2025-06-17 22:00",
                "1h": "2025-06-17 22:00",
                "4h": "2025-06-17 22:00",
                "1d": "2025-06-18",
            },
        ),
        # winter (EST): 4h anchored at 23:00 UTC, trade date rolls at 23:00 UTC
        (
            "2025-01-15 01:30:00",
            {
                "1m": "2025-01-15 01:30",
                "5m": "2025-01-15 01:30",
                "15m": "2025-01-15 01:30",
                "1h": "2025-01-15 01:00",
                "4h": "2025-01-14 23:00",
                "1d": "2025-01-15",
            },
        ),
        (
            "2025-01-15 03:10:00",
            {
                "1m": "2025-01-15 03:10",
                "5m": "2025-01-15 03:10",
                "15m": "2025-01-15 03:00",
                "1h": "2025-01-15 03:00",
                "4h": "2025-01-15 03:00",
                "1d": "2025-01-15",
            },
        ),
        ("2025-01-15 21:59:59", {"4h": "2025-01-15 19:00", "1d": "2025-01-15"}),
        ("2025-01-15 22:59:59", {"4h": "2025-01-15 19:00", "1d": "2025-01-15"}),  # halt
        ("2025-01-15 23:00:00", {"4h": "2025-01-15 23:00", "1d": "2025-01-16"}),
        # DST weeks: Friday before spring-forward is EST, the Sunday open after it EDT
        ("2025-03-07 23:00:00", {"4h": "2025-03-07 23:00", "1d": "2025-03-08"}),
        ("2025-03-09 22:00:00", {"4h": "2025-03-09 22:00", "1d": "2025-03-10"}),
        ("2025-03-10 03:00:00", {"4h": "2025-03-10 02:00", "1d": "2025-03-10"}),
        # fall-back week: Friday EDT, Sunday EST
        ("2025-10-31 22:00:00", {"4h": "2025-10-31 22:00", "1d": "2025-11-01"}),
        ("2025-11-02 23:00:00", {"4h": "2025-11-02 23:00", "1d": "2025-11-03"}),
        ("2025-11-03 02:59:00", {"4h": "2025-11-02 23:00", "1d": "2025-11-03"}),
    ],
)
def test_live_alignment_of_default_timeframes(trade, expected):
    agg = BarAggregator(CONTRACT)
    # A trade in the 17:00-18:00 New York halt closes its session's bars at once.
    seen = pd.concat([agg.add_trades(*one_trade(ns(trade))).closed, agg.open_bars()])
    for label, start in expected.items():
        assert bars_of(seen, TF[label])["timestamp"].tolist() == [utc(start)], label
        assert bar_start(from_ns(ns(trade)), TF[label]) == utc(start).to_pydatetime()


def test_daily_bars_across_the_halt_and_dst_change():
    # Trades just before the 17:00 close and just after the 18:00 open New York, every day of the
    # spring-forward week: each session is one daily bar labelled with its trade date.
    agg = BarAggregator(CONTRACT, ["1d"])
    days = pd.date_range("2025-03-05", "2025-03-12", freq="D")
    ts, labels = [], []
    for d in days:
        open_, close = trade_date_session(d.date())
        ts += [to_ns(open_), to_ns(close) - S]
        labels.append(utc(d.strftime("%Y-%m-%d")))
    out = agg.add_trades(np.array(ts), np.full(len(ts), 5000.0), np.ones(len(ts), dtype=np.int64))
    closed = pd.concat([out.closed, agg.flush_open().closed])
    assert closed["timestamp"].tolist() == labels
    assert (closed["volume"] == 2).all()
    # the sessions open at 23:00 UTC before the change and at 22:00 UTC after it
    assert [from_ns(t).hour for t in ts[::2]] == [23] * 5 + [22] * 3


# --------------------------------------------------------------------------- live == batch


def sample_trades():
    """Four trades per 5m bar of the sample (open, high, low, close), sizes summing to the volume."""
    bars = read_bars_csv(SAMPLE_5M)
    start = bars["timestamp"].astype("int64").to_numpy()
    offsets = np.array([0, 61, 122, 299], dtype=np.int64) * S + np.array([0, 0, 0, 999_999_999])
    ts = (start[:, None] + offsets).ravel()
    price = bars[["open", "high", "low", "close"]].to_numpy().ravel()
    vol = bars["volume"].to_numpy()
    q = vol // 4
    size = np.stack([q, q, q, vol - 3 * q], axis=1).ravel()
    return bars, ts, price, size


def feed_in_random_batches(agg, ts, price, size, rng):
    """Random-size batches, each shuffled (the aggregator sorts a batch before use)."""
    frames = []
    cuts = np.sort(rng.choice(np.arange(1, ts.size), size=ts.size // 50, replace=False))
    for idx in np.split(np.arange(ts.size), cuts):
        idx = rng.permutation(idx)
        out = agg.add_trades(ts[idx], price[idx], size[idx])
        assert out.late_trades == 0 and out.repairs.empty
        frames.append(out.closed)
    frames.append(agg.flush_open(int(ts.max()) + 2 * 86_400 * S).closed)
    return pd.concat(frames, ignore_index=True)


def test_live_bars_from_sample_equal_sample_and_batch():
    bars, ts, price, size = sample_trades()
    agg = BarAggregator(CONTRACT)
    closed = feed_in_random_batches(agg, ts, price, size, np.random.default_rng(7))
    # The first trade is at the 18:00 New York open, the first instant of every first window.
    assert closed["complete"].all()
    pd.testing.assert_frame_equal(bars_of(closed, TF["5m"]), bars)
    for label in ("1m", "15m", "1h", "4h", "1d"):
        pd.testing.assert_frame_equal(bars_of(closed, TF[label]), batch_bars(ts, price, size, TF[label]), obj=label)
    c = agg.counters
    assert (c.trades, c.late_trades, c.bars_incomplete) == (ts.size, 0, 0)


def _assert_live_equals_batch(ts, price, size, timeframes: str, seed: int) -> None:
    tfs = parse_timeframes(timeframes)
    agg = BarAggregator(CONTRACT, tfs)
    closed = feed_in_random_batches(agg, ts, price, size, np.random.default_rng(seed))
    for tf in tfs:
        pd.testing.assert_frame_equal(bars_of(closed, tf), batch_bars(ts, price, size, tf), obj=tf.label)


def test_non_nesting_timeframes_equal_batch():
    _, ts, price, size = sample_trades()
    ts, price, size = ts[:8000], price[:8000], size[:8000]
    _assert_live_equals_batch(ts, price, size, "8m,45m,1h,4h", seed=3)


def test_calendar_timeframes_equal_batch():
    _, ts, price, size = sample_trades()
    _assert_live_equals_batch(ts, price, size, "1h,1d,1w,1mo", seed=5)


def test_one_batch_closing_many_bars_at_once():
    rng = np.random.default_rng(1)
    ts = ns("2025-03-17 00:00") + np.sort(rng.integers(0, 60 * 86_400 * S, 300_000))
    price = 5000 + 0.25 * np.cumsum(rng.integers(-2, 3, ts.size))
    size = rng.integers(1, 5, ts.size)
    agg = BarAggregator(CONTRACT)
    closed = pd.concat([agg.add_trades(ts, price, size).closed, agg.flush_open().closed])
    for tf in DEFAULT_TIMEFRAMES:
        pd.testing.assert_frame_equal(bars_of(closed, tf), batch_bars(ts, price, size, tf), obj=tf.label)


# --------------------------------------------------------------------------- closing, grace, late, partial


def test_quiet_market_closes_a_bar_only_after_end_plus_grace():
    agg = BarAggregator(CONTRACT, ["1m", "5m"], grace_ns=2 * S)
    agg.add_trades(*one_trade(ns("2025-06-17 14:03:10")))
    assert agg.advance_clock(ns("2025-06-17 14:04:00")).n_closed == 0
    assert agg.advance_clock(ns("2025-06-17 14:04:01") + S - 1).n_closed == 0
    out = agg.advance_clock(ns("2025-06-17 14:04:02"))
    assert bars_of(out.closed, TF["1m"])["timestamp"].tolist() == [utc("2025-06-17 14:03")]
    assert out.n_closed == 1
    assert agg.advance_clock(ns("2025-06-17 14:05:01")).n_closed == 0
    out = agg.advance_clock(ns("2025-06-17 14:05:02"))
    assert bars_of(out.closed, TF["5m"])["timestamp"].tolist() == [utc("2025-06-17 14:00")]
    assert agg.advance_clock(ns("2025-06-17 14:00")).n_closed == 0  # the clock never goes back
    assert agg.counters.clock_ns == ns("2025-06-17 14:05:02")


def test_a_trade_for_a_later_window_closes_the_bar_immediately():
    agg = BarAggregator(CONTRACT, ["1m"], grace_ns=30 * S)
    agg.add_trades(*one_trade(ns("2025-06-17 14:03:10")))
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:04:00")))
    assert out.closed["timestamp"].tolist() == [utc("2025-06-17 14:03")]


def test_last_bars_of_a_session_close_at_17_new_york():
    agg = BarAggregator(CONTRACT, ["1h", "4h", "1d"])
    agg.add_trades(*one_trade(ns("2025-06-17 20:30")))  # 16:30 New York
    assert agg.advance_clock(ns("2025-06-17 21:00:01")).n_closed == 0
    out = agg.advance_clock(ns("2025-06-17 21:00:02"))  # 17:00:02 New York
    assert out.closed["timestamp"].tolist() == [utc("2025-06-17 20:00"), utc("2025-06-17 18:00"), utc("2025-06-17")]


def test_late_trade_is_counted_reported_and_not_folded():
    agg = BarAggregator(CONTRACT, ["1m", "5m", "1h"])
    agg.add_trades(*one_trade(ns("2025-06-17 14:03:10"), 5000.0, 2))
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:04:05"), 5001.0, 3))
    assert out.closed["timestamp"].tolist() == [utc("2025-06-17 14:03")]
    published = out.closed.copy()
    late = agg.add_trades(*one_trade(ns("2025-06-17 14:03:50"), 4000.0, 7))
    assert late.late_trades == 1 and late.n_closed == 0
    assert list(late.repairs.columns) == REPAIR_COLUMNS
    reported = list(zip(late.repairs["timeframe_value"], late.repairs["timestamp"], late.repairs["late_trades"]))
    assert reported == [(1, utc("2025-06-17 14:03"), 1), (5, utc("2025-06-17 14:00"), 1), (1, utc("2025-06-17 14:00"), 1)]
    c = agg.counters
    assert (c.late_trades, c.late_volume, c.repairs_reported) == (1, 7, 3)
    # the still open 5m and 1h bars do not get it, and the published 1m bar is unchanged
    rest = agg.flush_open().closed
    assert list(zip(rest["timeframe_unit"], rest["timeframe_value"])) == [(2, 1), (2, 5), (3, 1)]
    assert rest["low"].tolist()[1:] == [5000.0, 5000.0] and rest["volume"].tolist()[1:] == [5, 5]
    assert published["volume"].tolist() == [2]


def test_trade_into_a_window_the_clock_closed_is_late_even_without_a_bar():
    agg = BarAggregator(CONTRACT, ["5m"])
    agg.add_trades(*one_trade(ns("2025-06-17 14:03")))
    agg.advance_clock(ns("2025-06-17 14:12"))
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:06")))  # window 14:05, ended 14:10
    assert out.late_trades == 1 and out.repairs["timestamp"].tolist() == [utc("2025-06-17 14:05")]
    assert agg.add_trades(*one_trade(ns("2025-06-17 14:11"))).late_trades == 0


def test_trade_in_the_halt_after_the_clock_closed_the_session_is_late():
    agg = BarAggregator(CONTRACT, ["1m", "4h", "1d"])
    agg.advance_clock(ns("2025-06-17 21:10"))  # 17:10 New York: the session's 4h and daily windows are closed
    out = agg.add_trades(*one_trade(ns("2025-06-17 21:20")))
    assert out.late_trades == 1 and out.n_closed == 0 and agg.open_bars().empty
    assert out.repairs["timestamp"].tolist() == [utc("2025-06-17 21:20"), utc("2025-06-17 18:00"), utc("2025-06-17")]
    assert agg.add_trades(*one_trade(ns("2025-06-17 22:00:01"))).late_trades == 0  # next session


def test_a_bar_closed_by_a_trade_stays_closed_within_the_grace():
    agg = BarAggregator(CONTRACT, ["1m"], grace_ns=30 * S)
    agg.add_trades(*one_trade(ns("2025-06-17 14:03:10")))
    assert agg.add_trades(*one_trade(ns("2025-06-17 14:04:01"))).n_closed == 1
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:03:59")))
    assert out.late_trades == 1 and out.n_closed == 0


def test_a_trade_at_the_first_instant_of_an_open_window_is_accepted():
    agg = BarAggregator(CONTRACT, ["1m", "5m"])
    agg.add_trades(*one_trade(ns("2025-06-17 14:05:30")))
    agg.advance_clock(ns("2025-06-17 14:06:01"))
    assert agg.add_trades(*one_trade(ns("2025-06-17 14:05:00"))).late_trades == 0
    assert agg.add_trades(*one_trade(ns("2025-06-17 14:06:00"))).late_trades == 0
    assert agg.open_bars()["volume"].tolist() == [1, 3]


def test_trades_of_a_later_batch_into_an_open_bar_merge_as_if_sorted():
    ts = np.array([ns("2025-06-17 14:03:30"), ns("2025-06-17 14:03:10"), ns("2025-06-17 14:03:30"), ns("2025-06-17 14:03:50")])
    price = np.array([1.0, 2.0, 3.0, 4.0])
    size = np.array([1, 2, 3, 4])
    agg = BarAggregator(CONTRACT, ["1m"])
    for i in (2, 0, 1, 3):  # one trade per batch; equal timestamps keep their arrival order
        agg.add_trades(ts[i : i + 1], price[i : i + 1], size[i : i + 1])
    live = agg.flush_open().closed
    order = [2, 0, 1, 3]
    batch = batch_bars(ts[order], price[order], size[order], TF["1m"])
    pd.testing.assert_frame_equal(normalize_bars(live), batch)


def test_equal_timestamps_across_batches_keep_arrival_order():
    agg = BarAggregator(CONTRACT, ["1m"])
    for t, p in (("14:03:10", 1.0), ("14:03:10", 2.0), ("14:03:50", 3.0), ("14:03:50", 4.0)):
        agg.add_trades(*one_trade(ns(f"2025-06-17 {t}"), p))
    bar = agg.flush_open().closed.iloc[0]
    assert (bar["open"], bar["close"]) == (1.0, 4.0)


def test_later_restart_with_older_trades_keeps_the_latest_resume_point():
    agg = BarAggregator(CONTRACT, ["1m"])
    agg.add_trades(*one_trade(ns("2025-06-17 14:00:00")))
    agg.mark_feed_restart()
    agg.add_trades(*one_trade(ns("2025-06-17 14:10:30")))
    agg.mark_feed_restart()
    agg.add_trades(*one_trade(ns("2025-06-17 14:10:00")))  # older than the first resume point
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:11:00")))
    assert out.closed["complete"].tolist() == [False]


def test_first_bars_after_start_and_restart_are_incomplete():
    agg = BarAggregator(CONTRACT, ["1m", "5m"])
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:03:10")))
    assert agg.open_bars()["complete"].tolist() == [False, False]
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:05:00")))  # 5:00 is the first instant of both windows
    assert out.closed["complete"].tolist() == [False, False]
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:10:20")))
    assert out.closed["complete"].tolist() == [True, True]
    assert agg.counters.bars_incomplete == 2
    agg.mark_feed_restart()
    # while waiting for the first trade after the restart, bars closing are incomplete
    out = agg.advance_clock(ns("2025-06-17 14:11:05"))
    assert out.closed["complete"].tolist() == [False]
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:13:30")))  # F
    assert agg.open_bars()["complete"].tolist() == [False, False]
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:14:10")))
    assert out.closed["complete"].tolist() == [False]  # 1m 14:13 began before F
    out = agg.add_trades(*one_trade(ns("2025-06-17 14:15:10")))
    assert bars_of(out.closed, TF["1m"])["timestamp"].tolist() == [utc("2025-06-17 14:14")]
    assert out.closed["complete"].tolist() == [True, False]  # 1m 14:14 complete, 5m 14:10 not
    assert agg.counters.feed_restarts == 1


def test_flush_open_returns_open_bars_as_incomplete_once():
    agg = BarAggregator(CONTRACT, ["1m", "5m"])
    agg.add_trades(*one_trade(ns("2025-06-17 14:00:00")))
    agg.add_trades(*one_trade(ns("2025-06-17 14:01:30")))
    out = agg.flush_open(ns("2025-06-17 14:02:30"))
    got = list(zip(out.closed["timeframe_value"], out.closed["timestamp"], out.closed["complete"]))
    assert got == [(1, utc("2025-06-17 14:01"), True), (5, utc("2025-06-17 14:00"), False)]
    assert agg.open_bars().empty and agg.flush_open().n_closed == 0
    assert agg.add_trades(*one_trade(ns("2025-06-17 14:03"))).late_trades == 1


def test_empty_input_and_output():
    agg = BarAggregator(CONTRACT)
    out = agg.add_trades(np.array([], dtype=np.int64), np.array([]), np.array([], dtype=np.int64))
    assert not out and out.n_closed == 0 and out.late_trades == 0
    assert list(out.closed.columns) == BAR_COLUMNS + ["complete"] and out.closed.empty
    assert list(out.repairs.columns) == REPAIR_COLUMNS
    pd.testing.assert_frame_equal(normalize_bars(out.closed), normalize_bars(agg.open_bars()))
    assert agg.counters.clock_ns is None


def test_output_dtypes_are_canonical():
    agg = BarAggregator(CONTRACT, ["1m"])
    agg.add_trades(*one_trade(ns("2025-06-17 14:00:00")))
    closed = agg.flush_open().closed
    pd.testing.assert_frame_equal(closed[BAR_COLUMNS], normalize_bars(closed))
    assert closed["complete"].dtype == bool


# --------------------------------------------------------------------------- bad input

GOOD_TS = ns("2025-06-17 14:00")


@pytest.mark.parametrize(
    "ts, price, size, message",
    [
        ([GOOD_TS, GOOD_TS], [1.0], [1], "different lengths"),
        ([GOOD_TS, np.iinfo(np.int64).min], [1.0, 1.0], [1, 1], "timestamp NaT at index 1"),
        ([GOOD_TS // 1_000_000], [1.0], [1], f"trade timestamp {GOOD_TS // 1_000_000} ns"),
        ([GOOD_TS, GOOD_TS], [1.0, np.nan], [1, 1], "trade price nan at index 1"),
        ([GOOD_TS], [np.inf], [1], "trade price inf at index 0"),
        ([GOOD_TS], [-0.25], [1], "trade price -0.25 at index 0: expected a finite price > 0"),
        ([GOOD_TS], [0.0], [1], "trade price 0.0"),
        ([GOOD_TS], [1.0], [0], "trade size 0 at index 0: expected an integer size > 0"),
        ([GOOD_TS, GOOD_TS], [1.0, 1.0], [-3, 0], "trade size -3 at index 0.*1 more invalid"),
        ([GOOD_TS], [1.0], [1.5], "trade sizes of dtype float64"),
        ([float(GOOD_TS)], [1.0], [1], "trade timestamps of dtype float64"),
    ],
)
def test_bad_input_raises_naming_the_value_and_changes_nothing(ts, price, size, message):
    agg = BarAggregator(CONTRACT, ["1m", "5m"])
    agg.add_trades(*one_trade(GOOD_TS - 30 * S))
    before = (agg.open_bars(), agg.counters)
    with pytest.raises(ValueError, match=message):
        agg.add_trades(np.array(ts), np.array(price), np.array(size))
    pd.testing.assert_frame_equal(agg.open_bars(), before[0])
    assert agg.counters == before[1]


def test_bad_clock_and_construction():
    agg = BarAggregator(CONTRACT)
    with pytest.raises(ValueError, match="invalid clock 1.5"):
        agg.advance_clock(1.5)
    with pytest.raises(ValueError, match="invalid clock 5 ns"):
        agg.flush_open(5)
    with pytest.raises(ValueError, match="invalid grace -1"):
        BarAggregator(CONTRACT, grace_ns=-1)
    with pytest.raises(ValueError, match="invalid contract id"):
        BarAggregator("MES")
    with pytest.raises(ValueError, match="invalid timeframe"):
        BarAggregator(CONTRACT, ["7x"])


def test_split_valid_reports_reasons_per_row():
    ts = np.array([GOOD_TS, np.iinfo(np.int64).min, GOOD_TS, GOOD_TS, GOOD_TS])
    price = np.array([1.0, 1.0, np.nan, 1.0, -1.0])
    size = np.array([1, 1, 1, 0, 0])
    valid, reasons = split_valid(ts, price, size)
    assert valid.tolist() == [True, False, False, False, False]
    assert reasons[0] is None
    assert "NaT at index 1" in reasons[1] and "price nan at index 2" in reasons[2]
    assert "size 0 at index 3" in reasons[3] and "price -1.0 at index 4" in reasons[4]
    agg = BarAggregator(CONTRACT)
    agg.add_trades(ts[valid], price[valid], size[valid])
    assert agg.counters.trades == 1


# --------------------------------------------------------------------------- properties

TIMEFRAME_SETS = [DEFAULT_TIMEFRAMES, parse_timeframes("8m,1h,1d"), parse_timeframes("30s,45m,4h"), parse_timeframes("2m,1d")]
ANCHORS = ["2025-03-07 20:50", "2025-06-17 20:40", "2025-10-31 18:00", "2025-01-15 22:30", "2025-03-09 21:55"]
STEPS = [0, 1, 1_000_000, S, 20 * S, 59 * S, 61 * S, 299 * S, 3600 * S, 4 * 3600 * S, 23 * 3600 * S]


@st.composite
def scenarios(draw):
    tfs = draw(st.sampled_from(TIMEFRAME_SETS))
    grace = draw(st.sampled_from([0, 2 * S, 90 * S]))
    n = draw(st.integers(1, 120))
    steps = draw(st.lists(st.sampled_from(STEPS), min_size=n, max_size=n))
    wiggle = draw(st.lists(st.just(0) | st.integers(0, 999_999_999), min_size=n, max_size=n))  # ties too
    disorder = draw(st.sampled_from([0, S, 45 * S, 400 * S]))
    back = draw(st.lists(st.integers(0, disorder), min_size=n, max_size=n))
    ts = ns(draw(st.sampled_from(ANCHORS))) + np.cumsum(np.array(steps) + np.array(wiggle)) - np.array(back)
    price = 0.25 * np.array(draw(st.lists(st.integers(19_000, 21_000), min_size=n, max_size=n)), dtype=np.float64)
    size = np.array(draw(st.lists(st.integers(1, 9), min_size=n, max_size=n)), dtype=np.int64)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=n // 3)))
    events = []
    for idx in np.split(np.arange(n), cuts):
        if idx.size:
            events.append(("trades", idx))
        extra = draw(st.sampled_from([None, None, "clock", "restart"]))
        if extra == "clock":
            events.append(("clock", draw(st.sampled_from([-60 * S, 0, S, 2 * S, 61 * S, 3600 * S, 86_400 * S]))))
        elif extra == "restart":
            events.append(("restart", None))
    return tfs, grace, ts, price, size, events


def first_instant(label: int, tf) -> int:
    if tf.unit == UNIT_DAY:
        return to_ns(trade_date_session(from_ns(label).date())[0])
    return label


def label_of(ts: int, tf) -> int:
    return to_ns(bar_start(from_ns(ts), tf))


def end_of(label: int, tf) -> int:
    return to_ns(bar_end(from_ns(label), tf))


def timeframe_of(row) -> Timeframe:
    return Timeframe(int(row.timeframe_unit), int(row.timeframe_value))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_live_matches_batch_on_random_streams(scenario):
    """A scalar reference model decides which trades are late; the live bars must equal
    `aggregate_trades` on the other trades, window by window, with the expected flags."""
    tfs, grace, ts, price, size, events = scenario
    agg = BarAggregator(CONTRACT, tfs, grace_ns=grace)
    latest = {tf: None for tf in tfs}  # latest window with an accepted trade
    clock = None
    pending, resumed_at = True, None
    accepted, late, unreported = [], [], {}  # unreported: (tf, window) -> late trades not yet reported
    emitted = []  # (tf, row, expected complete)
    last_label = {tf: None for tf in tfs}

    def record(out):
        for row in out.closed.itertuples(index=False):
            tf, label = timeframe_of(row), to_ns(row.timestamp.to_pydatetime())
            assert last_label[tf] is None or label > last_label[tf], "bars of a timeframe close in order, once"
            last_label[tf] = label
            emitted.append((tf, row, not pending and first_instant(label, tf) >= resumed_at))

    for kind, arg in events:
        if kind == "restart":
            agg.mark_feed_restart()
            pending = True
            continue
        if kind == "clock":
            now = (clock or int(ts[0])) + arg
            out = agg.advance_clock(now)
            clock = now if clock is None else max(clock, now)
        else:
            batch = arg[np.argsort(ts[arg], kind="stable")]
            if pending:
                pending, resumed_at = False, max(resumed_at or ts[batch[0]], ts[batch[0]])
            batch_accepted, batch_late = [], []
            for i in batch:
                labels = {tf: label_of(int(ts[i]), tf) for tf in tfs}
                if any(
                    (latest[tf] is not None and labels[tf] < latest[tf]) or (clock is not None and end_of(labels[tf], tf) + grace <= clock)
                    for tf in tfs
                ):
                    batch_late.append(i)
                    for key in labels.items():
                        unreported[key] = unreported.get(key, 0) + 1
                else:
                    batch_accepted.append(i)
            for i in batch_accepted:
                for tf in tfs:
                    latest[tf] = max(latest[tf] or 0, label_of(int(ts[i]), tf))
            accepted += batch_accepted
            late += batch_late
            out = agg.add_trades(ts[arg], price[arg], size[arg])
            assert out.late_trades == len(batch_late)
            for r in out.repairs.itertuples(index=False):
                unreported[(timeframe_of(r), to_ns(r.timestamp.to_pydatetime()))] -= r.late_trades
            clock = int(ts[arg].max()) if clock is None else max(clock, int(ts[arg].max()))
        record(out)
        # open: exactly the latest window of each timeframe, unless the clock has closed it
        expected_open = {tf: label for tf, label in latest.items() if label is not None and end_of(label, tf) + grace > clock}
        open_ = agg.open_bars()
        assert {timeframe_of(r): to_ns(r.timestamp.to_pydatetime()) for r in open_.itertuples()} == expected_open
        assert len(open_) == len(expected_open)

    assert all(v == 0 for v in unreported.values()), "each late trade reported once in each timeframe"
    flushed = agg.flush_open()
    assert not flushed.closed["complete"].any()
    pending = True  # flushed bars are incomplete
    record(flushed)

    acc = np.array(sorted(accepted), dtype=np.int64)
    c = agg.counters
    assert c.late_trades == len(late) and c.late_volume == int(size[late].sum())
    for tf in tfs:
        got = normalize_bars(pd.DataFrame([row for t, row, _ in emitted if t == tf], columns=BAR_COLUMNS + ["complete"]))
        expected = batch_bars(ts[acc], price[acc], size[acc], tf) if acc.size else normalize_bars(pd.DataFrame(columns=BAR_COLUMNS))
        pd.testing.assert_frame_equal(got, expected, obj=tf.label)
        assert got["volume"].sum() + c.late_volume == size.sum()
    assert [bool(row.complete) for _, row, _ in emitted] == [complete for _, _, complete in emitted]
