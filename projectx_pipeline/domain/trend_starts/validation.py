"""Malformed bars are rejected before detection (§7.8), by every form alike."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..timestamps import timestamps_ns
from .rules import _PRICE_COLUMNS


def _iso(ts_ns: int) -> str:
    return pd.Timestamp(ts_ns, tz="UTC").isoformat().replace("+00:00", "Z")


def _bar_problem(ts_ns: int | None, prices: tuple[float, float, float, float], previous_ts_ns: int | None) -> str | None:
    """Why one bar cannot be given to the detector, or None. Shared by the batch and streaming forms."""
    if ts_ns is None:
        return "timestamp is missing"
    where = f"bar at {_iso(ts_ns)}"
    for name, value in zip(_PRICE_COLUMNS, prices):
        if not math.isfinite(value):
            return f"{where}: {name} is {value!r}, expected a finite price"
    if prices[1] < prices[2]:
        return f"{where}: high {prices[1]!r} < low {prices[2]!r}"
    if previous_ts_ns is not None and ts_ns <= previous_ts_ns:
        return f"{where}: timestamp is not after the previous bar's {_iso(previous_ts_ns)} (bars must be in strictly ascending time order)"
    return None


def _bar_arrays(bars_df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    missing = [c for c in ("timestamp",) + _PRICE_COLUMNS if c not in bars_df.columns]
    if missing:
        raise ValueError(f"bars are missing column(s) {', '.join(missing)}: expected timestamp, open, high, low, close")
    ts_ns = timestamps_ns(bars_df["timestamp"])
    o, h, l, c = (bars_df[name].to_numpy(dtype=np.float64) for name in _PRICE_COLUMNS)
    return ts_ns, o, h, l, c


def validate_bars_for_detection(bars_df: pd.DataFrame) -> None:
    """Reject bars the detector must not see (§7.8): missing timestamp, NaN/inf price,
    high < low, or a timestamp not strictly after the previous one.

    Raises ValueError naming the first offending bar (number, timestamp and value); a naive
    timestamp is a DomainError (a ValueError) naming it (`domain/timestamps.py`)."""
    _validate_arrays(*_bar_arrays(bars_df))


def _validate_arrays(ts_ns, o, h, l, c) -> None:
    nat = ts_ns == np.iinfo(np.int64).min
    bad = nat | ~np.isfinite(o) | ~np.isfinite(h) | ~np.isfinite(l) | ~np.isfinite(c) | (h < l)
    bad[1:] |= ts_ns[1:] <= ts_ns[:-1]
    if not bad.any():
        return
    k = int(np.argmax(bad))  # the first bad bar: every bar before it has a timestamp
    previous = None if k == 0 else int(ts_ns[k - 1])
    prices = (float(o[k]), float(h[k]), float(l[k]), float(c[k]))
    raise ValueError(f"invalid bar {k + 1}: {_bar_problem(None if nat[k] else int(ts_ns[k]), prices, previous)}")
