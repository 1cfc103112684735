"""Trend starts on 1,000,000 bars.

* ours, batch: `detect_trend_starts_frame(bars)` (the numba kernel; compiled and warmed up before
  timing) — bars/s;
* ours, incremental: `TrendStartDetector.update(ts, o, h, l, c)` once per bar over the same bars
  (inputs pre-extracted to Python lists: pd.Timestamp and floats, as a caller iterating a frame
  passes them) — µs per bar;
* baseline: `detect_trend_starts_reference` (the per-bar rules written plainly) on a subset, its
  per-bar rate extrapolated.

Bars: a random walk on a 0.25 tick grid, 1-minute labels. Equality before timing: batch ==
incremental (collected, in §6 order) on all bars, and batch == reference on the subset.
"""

from __future__ import annotations

import pandas as pd

from projectx_pipeline.domain.trend_starts import (
    DOWNTREND,
    TrendStartDetector,
    detect_trend_starts_frame,
    detect_trend_starts_reference,
)

from . import Context, compare, cprofile_top, synthetic_bars, write_text
from .report import Row

TARGET_BATCH = 1_000_000  # bars/s
TARGET_INCREMENTAL_US = 20.0


def frame_signals(frame: pd.DataFrame) -> list[tuple]:
    return list(
        zip(
            frame["type"].tolist(),
            frame["start_bar"].tolist(),
            frame["confirm_bar"].tolist(),
            frame["rule"].tolist(),
            [t.value for t in frame["start_ts"]],
            [t.value for t in frame["confirm_ts"]],
            frame["start_price"].tolist(),
        )
    )


def signal_tuples(signals) -> list[tuple]:
    return [
        (s.type, s.start_bar, s.confirm_bar, s.rule, pd.Timestamp(s.start_ts).value, pd.Timestamp(s.confirm_ts).value, float(s.start_price))
        for s in signals
    ]


def incremental(ts, o, h, l, c) -> list:
    det = TrendStartDetector()
    out = []
    update = det.update
    for args in zip(ts, o, h, l, c):
        sigs = update(*args)
        if sigs:
            out.extend(sigs)
    return out


def section6(signals: list) -> list:
    return sorted(signals, key=lambda s: (s.start_bar, s.type != DOWNTREND, s.confirm_bar))


def run(ctx: Context) -> list[Row]:
    n = 1_000_000
    n_inc = 100_000 if ctx.quick else 1_000_000  # bars checked against the batch form
    n_inc_timed = 100_000 if ctx.quick else 300_000  # bars timed (µs/bar does not need all of them)
    n_ref = 5_000 if ctx.quick else 50_000
    repeats = 3 if ctx.quick else 5
    inc_repeats = 1 if ctx.quick else 3

    bars = synthetic_bars(n, seed=11)
    ts, o, h, l, c = (list(bars["timestamp"]), bars["open"].tolist(), bars["high"].tolist(), bars["low"].tolist(), bars["close"].tolist())
    sub = bars.iloc[:n_ref].reset_index(drop=True)

    ctx.log("trend: warming up the numba kernel, checking batch == incremental == reference")
    batch = frame_signals(detect_trend_starts_frame(bars))
    checked = batch if n_inc == n else frame_signals(detect_trend_starts_frame(bars.iloc[:n_inc].reset_index(drop=True)))
    inc_all = signal_tuples(section6(incremental(ts[:n_inc], o[:n_inc], h[:n_inc], l[:n_inc], c[:n_inc])))
    if checked != inc_all:
        raise AssertionError(f"batch ({len(checked)}) and incremental ({len(inc_all)}) signals differ on {n_inc:,} bars")
    ref = signal_tuples(detect_trend_starts_reference(sub))
    if frame_signals(detect_trend_starts_frame(sub)) != ref:
        raise AssertionError("batch and reference signals differ on the subset")

    ctx.log(f"trend: timing batch on {n:,} bars ({repeats} repeats) and the reference on {n_ref:,} bars")
    stats = compare({"batch": lambda: detect_trend_starts_frame(bars)}, repeats, log=ctx.log)
    stats.update(compare({"reference": lambda: detect_trend_starts_reference(sub)}, 1 if ctx.quick else 3, log=ctx.log))
    ctx.log(f"trend: timing incremental update on {n_inc_timed:,} bars ({inc_repeats} repeats)")
    args = (ts[:n_inc_timed], o[:n_inc_timed], h[:n_inc_timed], l[:n_inc_timed], c[:n_inc_timed])
    stats.update(compare({"incremental": lambda: incremental(*args)}, inc_repeats, log=ctx.log))

    batch_rate = n / stats["batch"].cpu
    ref_rate = n_ref / stats["reference"].cpu
    inc_us = stats["incremental"].cpu / n_inc_timed * 1e6
    ref_us = stats["reference"].cpu / n_ref * 1e6
    details = {
        "bars": n,
        "signals": len(batch),
        "incremental_bars_checked": n_inc,
        "incremental_bars_timed": n_inc_timed,
        "reference_bars": n_ref,
        **{k: v.as_dict() for k, v in stats.items()},
        "wall_based": {
            "batch_bars_per_s": n / stats["batch"].wall,
            "incremental_us_per_bar": stats["incremental"].wall / n_inc_timed * 1e6,
            "reference_bars_per_s": n_ref / stats["reference"].wall,
        },
        "equality": f"batch == incremental on {n_inc:,} bars ({len(inc_all)} signals); batch == reference on {n_ref:,} bars ({len(ref)} signals)",
    }
    if ctx.profile:
        _, top, text = cprofile_top(lambda: incremental(*(a[:100_000] for a in args)))
        details["profile_top_incremental"] = top
        write_text(ctx, "profile_trend.txt", text)
    return [
        Row(
            "trend",
            "trend starts, batch detect_trend_starts_frame on 1 M bars (bars/s/core)",
            batch_rate,
            "bars/s",
            baseline=ref_rate,
            baseline_name="reference",
            ratio=batch_rate / ref_rate,
            target="≥ 1 M bars/s",
            met=batch_rate >= TARGET_BATCH,
            details=details,
        ),
        Row(
            "trend",
            f"trend starts, incremental TrendStartDetector.update ({n_inc_timed // 1000}k bars timed)",
            inc_us,
            "µs/bar",
            baseline=ref_us,
            baseline_name="reference, per bar",
            ratio=ref_us / inc_us,
            target="≤ 20 µs/bar",
            met=inc_us <= TARGET_INCREMENTAL_US,
        ),
    ]
