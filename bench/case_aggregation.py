"""Aggregation: the MES sample replay's prints → bars of the six default timeframes (1m 5m 15m 1h 4h 1d).

* ours: the live `BarAggregator`, fed `add_trades` batches of 10,000 trades, every closed-bar
  frame materialised (`out.closed`, as the daemon does), `flush_open` at the end;
* baseline 1: pandas — per timeframe, labels from `bar_starts_ns` and one
  `groupby(...).agg(first, max, min, last, sum)` over all trades;
* baseline 2: a naive per-trade Python loop (a dict of open bars per timeframe, session
  labels looked up once per UTC hour with the scalar `bar_start`), on a subset; its per-trade
  rate is extrapolated.

The trades are the simulator's realistic prints of the packaged MES sample (mostly 1-3 lots, in
bursts, every sample bar reproduced exactly), in time order.
Equality (checked before timing): ours == pandas on all trades, naive == pandas on the subset.
The target is per core, so the rates use CPU time (process_time); wall rates are in the JSON.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from projectx_pipeline.domain.aggregation import BarAggregator
from projectx_pipeline.domain.timeframes import DEFAULT_TIMEFRAMES, bar_start, bar_starts_ns
from projectx_pipeline.domain.timestamps import from_ns

from . import MES, Context, compare, cprofile_top, sample_trades, write_text
from .report import Row

BATCH = 10_000
TARGET = 1_000_000  # trades/s/core


def ours(ts, px, sz) -> pd.DataFrame:
    agg = BarAggregator(MES, DEFAULT_TIMEFRAMES)
    frames = []
    for i in range(0, ts.size, BATCH):
        out = agg.add_trades(ts[i : i + BATCH], px[i : i + BATCH], sz[i : i + BATCH])
        if out.n_closed:
            frames.append(out.closed)
    frames.append(agg.flush_open().closed)
    return pd.concat(frames, ignore_index=True)


def pandas_groupby(ts, px, sz) -> pd.DataFrame:
    trades = pd.DataFrame({"price": px, "size": sz})
    pieces = []
    for tf in DEFAULT_TIMEFRAMES:
        labels = bar_starts_ns(ts, tf)
        bars = trades.groupby(labels, sort=True).agg(
            open=("price", "first"), high=("price", "max"), low=("price", "min"), close=("price", "last"), volume=("size", "sum")
        )
        bars.index.name = "ts"
        bars = bars.reset_index()
        bars["timeframe_unit"], bars["timeframe_value"] = tf.unit, tf.value
        pieces.append(bars)
    return pd.concat(pieces, ignore_index=True)


def naive_loop(ts_list: list[int], px_list: list[float], sz_list: list[int]) -> list[tuple]:
    """What a first hand-written live aggregator looks like: one Python step per trade and timeframe."""
    tfs = list(DEFAULT_TIMEFRAMES)
    clock = [(i, tf.step_ns) for i, tf in enumerate(tfs) if tf.is_clock_aligned]
    session = [(i, tf) for i, tf in enumerate(tfs) if not tf.is_clock_aligned]
    hour_ns = 3600 * 10**9
    cached_hour, session_labels = None, {}
    open_bars: list[list | None] = [None] * len(tfs)  # [label, open, high, low, close, volume]
    done: list[tuple] = []
    for t, p, s in zip(ts_list, px_list, sz_list):
        labels = [0] * len(tfs)
        for i, step in clock:
            labels[i] = t - t % step
        hour = t // hour_ns
        if hour != cached_hour:  # 4h and 1d windows are unions of whole UTC hours
            cached_hour = hour
            dt = from_ns(t)
            session_labels = {i: int(bar_start(dt, tf).timestamp()) * 10**9 for i, tf in session}
        for i, lab in session_labels.items():
            labels[i] = lab
        for i, lab in enumerate(labels):
            bar = open_bars[i]
            if bar is None or bar[0] != lab:
                if bar is not None:
                    done.append((tfs[i].unit, tfs[i].value, *bar))
                open_bars[i] = [lab, p, p, p, p, s]
            else:
                if p > bar[2]:
                    bar[2] = p
                if p < bar[3]:
                    bar[3] = p
                bar[4] = p
                bar[5] += s
    for i, bar in enumerate(open_bars):
        if bar is not None:
            done.append((tfs[i].unit, tfs[i].value, *bar))
    return done


_CANON = ["timeframe_unit", "timeframe_value", "ts", "open", "high", "low", "close", "volume"]


def canon(df: pd.DataFrame) -> pd.DataFrame:
    """Bars as plain columns (ns labels), sorted by timeframe and time, for exact comparison."""
    if "timestamp" in df.columns:
        df = df.assign(ts=df["timestamp"].array.asi8 if df["timestamp"].dt.unit == "ns" else df["timestamp"].dt.as_unit("ns").array.asi8)
    out = df.loc[:, _CANON].astype({"timeframe_unit": np.int64, "timeframe_value": np.int64, "ts": np.int64, "volume": np.int64})
    return out.sort_values(["timeframe_unit", "timeframe_value", "ts"], ignore_index=True)


def canon_tuples(rows: list[tuple]) -> pd.DataFrame:
    return canon(pd.DataFrame(rows, columns=_CANON))


def _same(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True, obj=what)


def run(ctx: Context) -> list[Row]:
    n = 1_000_000 if ctx.quick else 5_000_000
    repeats = 3 if ctx.quick else 5
    n_naive = 100_000 if ctx.quick else 300_000
    naive_repeats = 1 if ctx.quick else 3

    ctx.log(f"aggregation: generating {n:,} prints of the MES sample replay")
    ts, px, sz = sample_trades(n)
    span_days = (int(ts[-1]) - int(ts[0])) / 86_400e9

    ctx.log("aggregation: checking ours == pandas (all trades) and naive == pandas (subset)")
    ours_bars = ours(ts, px, sz)
    pandas_bars = pandas_groupby(ts, px, sz)
    _same(canon(ours_bars), canon(pandas_bars), "BarAggregator vs pandas")
    sub = slice(0, n_naive)
    ts_l, px_l, sz_l = ts[sub].tolist(), px[sub].tolist(), sz[sub].tolist()
    naive_bars = canon_tuples(naive_loop(ts_l, px_l, sz_l))
    _same(naive_bars, canon(pandas_groupby(ts[sub], px[sub], sz[sub])), "naive loop vs pandas (subset)")
    _same(canon(ours(ts[sub], px[sub], sz[sub])), naive_bars, "BarAggregator vs naive loop (subset)")
    n_bars = len(ours_bars)

    ctx.log(f"aggregation: timing ours vs pandas, {repeats} interleaved repeats")
    stats = compare({"ours": lambda: ours(ts, px, sz), "pandas": lambda: pandas_groupby(ts, px, sz)}, repeats, log=ctx.log)
    ctx.log(f"aggregation: timing the naive loop on {n_naive:,} trades, {naive_repeats} repeats")
    naive = compare({"naive": lambda: naive_loop(ts_l, px_l, sz_l)}, naive_repeats, log=ctx.log)["naive"]

    rate = lambda count, seconds: count / seconds  # noqa: E731
    ours_core, pandas_core, naive_core = rate(n, stats["ours"].cpu), rate(n, stats["pandas"].cpu), rate(n_naive, naive.cpu)
    details = {
        "trades": n,
        "bars": n_bars,
        "span_days": round(span_days, 1),
        "batch": BATCH,
        "timeframes": [tf.label for tf in DEFAULT_TIMEFRAMES],
        "ours": stats["ours"].as_dict(),
        "pandas": stats["pandas"].as_dict(),
        "naive": {**naive.as_dict(), "trades": n_naive},
        "wall_rates": {"ours": rate(n, stats["ours"].wall), "pandas": rate(n, stats["pandas"].wall), "naive": rate(n_naive, naive.wall)},
        "equality": "ours == pandas on all trades; naive == pandas == ours on the subset (exact OHLCV, every timeframe)",
    }
    if ctx.profile:
        _, top, text = cprofile_top(lambda: ours(ts, px, sz))
        details["profile_top"] = top
        write_text(ctx, "profile_aggregation.txt", text)

    label = f"{n / 1e6:g} M"
    return [
        Row(
            "aggregation",
            f"aggregation: BarAggregator, {label} trades → 6 TFs (trades/s/core)",
            ours_core,
            "trades/s",
            baseline=pandas_core,
            baseline_name="pandas groupby",
            ratio=ours_core / pandas_core,
            target="≥ 1 M trades/s/core",
            met=ours_core >= TARGET,
            details=details,
        ),
        Row(
            "aggregation",
            f"aggregation: vs naive per-trade loop ({n_naive // 1000}k subset, extrapolated)",
            ours_core,
            "trades/s",
            baseline=naive_core,
            baseline_name="naive loop",
            ratio=ours_core / naive_core,
            target="≥ 1 M trades/s/core",
            met=ours_core >= TARGET,
        ),
    ]
