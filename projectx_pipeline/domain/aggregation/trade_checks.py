"""Checks of raw trade columns before aggregation: whole-array errors raise DomainError naming
the value; per-row problems are found together, so a bad batch costs one pass."""

from __future__ import annotations

import numpy as np

from ..errors import DomainError
from ..timestamps import NS_PER_SECOND

NAT = np.iinfo(np.int64).min  # the int64 of NaT: never a valid trade time
TS_MIN_NS = 631_152_000 * NS_PER_SECOND  # 1990-01-01 UTC
TS_MAX_NS = 7_258_118_400 * NS_PER_SECOND  # 2200-01-01 UTC


def coerce_trades(ts_ns, price, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three trade columns as 1-D int64/float64/int64 arrays of equal length, or DomainError."""
    ts = np.asarray(ts_ns)
    px = np.asarray(price)
    sz = np.asarray(size)
    for name, a in (("timestamps", ts), ("prices", px), ("sizes", sz)):
        if a.ndim != 1:
            raise DomainError(f"trade {name} have shape {a.shape}: expected a 1-D array")
    if not ts.size == px.size == sz.size:
        raise DomainError(
            f"trade arrays of different lengths: {ts.size} timestamps, {px.size} prices, {sz.size} sizes: expected one of each per trade"
        )
    if ts.dtype.kind == "M":
        ts = ts.astype("datetime64[ns]").view(np.int64)
    elif ts.dtype.kind in "iu":
        ts = ts.astype(np.int64, copy=False)
    else:
        raise DomainError(f"trade timestamps of dtype {ts.dtype}: expected int64 ns since the epoch (or datetime64)")
    if px.dtype.kind not in "fiu":
        raise DomainError(f"trade prices of dtype {px.dtype}: expected float64")
    if sz.dtype.kind not in "iu":
        raise DomainError(f"trade sizes of dtype {sz.dtype}: expected int64")
    return ts, px.astype(np.float64, copy=False), sz.astype(np.int64, copy=False)


def _row_checks(ts: np.ndarray, px: np.ndarray, sz: np.ndarray):
    """(mask of offending rows, message for row i) per rule, in order of precedence."""

    def ts_message(i):
        return (
            f"trade timestamp {int(ts[i])} ns ({np.datetime64(int(ts[i]), 'ns')}) at index {i} out of range: "
            "expected ns since the epoch between 1990-01-01 and 2200-01-01"
        )

    return (
        (ts == NAT, lambda i: f"trade timestamp NaT at index {i}: expected int64 ns since the epoch"),
        ((ts != NAT) & ((ts < TS_MIN_NS) | (ts >= TS_MAX_NS)), ts_message),
        (~np.isfinite(px), lambda i: f"trade price {float(px[i])!r} at index {i}: expected a finite price > 0"),
        (px <= 0, lambda i: f"trade price {float(px[i])!r} at index {i}: expected a finite price > 0"),
        (sz <= 0, lambda i: f"trade size {int(sz[i])} at index {i}: expected an integer size > 0"),
    )


def split_valid(ts_ns, price, size) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise validation of trade columns, for callers that drop bad rows instead of failing.

    Returns `(valid, reasons)`: a bool mask, and an object array holding None for valid rows
    and, for each invalid row, the message `BarAggregator.add_trades` would raise for it (NaT or
    out-of-range timestamp, non-finite or non-positive price, size <= 0). Problems that concern
    the arrays as a whole (lengths, dimensions, dtypes) still raise DomainError (a ValueError).
    Usage: `ok, why = split_valid(ts, px, sz); agg.add_trades(ts[ok], px[ok], sz[ok])`.
    """
    ts, px, sz = coerce_trades(ts_ns, price, size)
    reasons = np.full(ts.size, None, dtype=object)
    for mask, message in _row_checks(ts, px, sz):
        for i in np.flatnonzero(mask):
            if reasons[i] is None:
                reasons[i] = message(i)
    return np.equal(reasons, None), reasons  # type: ignore[call-overload]  # numpy's stubs reject None, which object arrays compare elementwise


def raise_if_invalid(ts: np.ndarray, px: np.ndarray, sz: np.ndarray) -> None:
    # One combined test first (false for NaN too): messages are worked out only for a bad batch.
    if ((ts >= TS_MIN_NS) & (ts < TS_MAX_NS) & (px > 0) & (px < np.inf) & (sz > 0)).all():
        return
    checks = _row_checks(ts, px, sz)
    bad = np.zeros(ts.size, dtype=bool)
    for mask, _ in checks:
        bad |= mask
    i = int(np.argmax(bad))
    message = next(msg(i) for mask, msg in checks if mask[i])
    more = int(bad.sum()) - 1
    raise DomainError(message + (f" ({more} more invalid trades in the batch)" if more else ""))


def check_now(now_ns) -> int:
    if isinstance(now_ns, bool) or not isinstance(now_ns, (int, np.integer)):
        raise DomainError(f"invalid clock {now_ns!r}: expected int ns since the epoch")
    if not TS_MIN_NS <= now_ns < TS_MAX_NS:
        raise DomainError(f"invalid clock {now_ns} ns: expected ns since the epoch between 1990-01-01 and 2200-01-01")
    return int(now_ns)
