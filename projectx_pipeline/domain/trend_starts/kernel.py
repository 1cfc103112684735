"""The batch form: one numba kernel over the whole series (`detect_trend_starts`,
`detect_trend_starts_frame`).

The kernel (and the streaming form, `streaming.py`) replaces the spec's window scans by
running extremes, which is exact because the windows only ever grow by one bar per step until
their candidate changes:
* PUS `u`: lowest low / highest high of the bars after `u` (sub-step B reads (u, n-2], D5 reads
  (u, n-1]; when F4 makes U the PDS these become the PDS's extremes);
* PDS `d`: highest high / lowest low of the bars (d, n-1] (NoHigherHigh, Pullback).
Only the forced-alternation search (§4.4) still scans, from the last emitted start to the
candidate; it runs once per emitted CUS/CDS.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
from numba import njit
from numba.core import config as numba_config

from ..timestamps import utc_index
from .rules import (
    _CDS_BASE,
    _FORCED_BY_CDS_BASE,
    _FORCED_BY_CUS_BASE,
    _TYPE_NAMES,
    _UP,
    DEFAULT_CONTAINMENT_GRACE,
    DEFAULT_EXHAUSTION_WINDOW,
    RULE_NAMES,
    _check_parameters,
)
from .types import Signal
from .validation import _bar_arrays, _validate_arrays


def _compiled(fn):
    """`njit` with numba's on-disk cache, which saves the compile on every later start, when a
    cache can be written. A read-only install with no writable home (the image's non-root user
    over a root-owned venv) offers numba no cache location, and `cache=True` would then raise at
    import; a per-user directory under the system temp dir is used instead, and with no writable
    place at all the kernel is compiled in memory only."""
    try:
        return njit(cache=True)(fn)
    except RuntimeError:  # "cannot cache function …: no locator available"
        pass
    # numba sets its config attributes at run time (_EnvReloader), so mypy cannot see them
    if not numba_config.CACHE_DIR:  # type: ignore[attr-defined]
        numba_config.CACHE_DIR = os.path.join(tempfile.gettempdir(), f"projectx-numba-cache-{os.getuid()}")  # type: ignore[attr-defined]
        try:
            return njit(cache=True)(fn)
        except RuntimeError:
            pass
    return njit(fn)


@_compiled
def _extreme_between_kernel(prices, a, b, highest):  # pragma: no cover - compiled
    """§4.4 over bars (a, b): the bar of the highest (or lowest) price, the earliest on ties; 0 for none."""
    j = 0
    for k in range(a + 1, b):
        if j == 0 or (prices[k] > prices[j] if highest else prices[k] < prices[j]):
            j = k
    return j


@_compiled
def _emit_kernel(kinds, starts, confirms, rules, count, kind, start, confirm, rule):  # pragma: no cover - compiled
    """Append one emission at `count`; returns the new count (the caller keeps the capacity)."""
    kinds[count] = kind
    starts[count] = start
    confirms[count] = confirm
    rules[count] = rule
    return count + 1


@_compiled
def _emissions_kernel(o, h, l, c, exhaustion_window, containment_grace):  # pragma: no cover - compiled
    """§5 over 1-based price arrays (index 0 unused). Returns (type, start, confirm, rule code)
    arrays in emission order. Bar number 0 means "none"."""
    n_bars = o.shape[0] - 1
    capacity = 64 + n_bars
    kinds = np.empty(capacity, np.int8)
    starts = np.empty(capacity, np.int64)
    confirms = np.empty(capacity, np.int64)
    rules = np.empty(capacity, np.int8)
    count = 0

    u = 0
    d = 0
    # u's window extremes: of (u, n-2] at the start of step n, of (u, n-1] after B.
    u_low = np.inf
    u_high = -np.inf
    d_high = -np.inf  # highest high of (d, n-1]
    d_low = np.inf  # lowest low of (d, n-1]
    cont = False
    rh = 0.0
    rl = 0.0
    s = 0
    last_type = -1
    last_bar = 0

    for n in range(2, n_bars + 1):
        if count + 4 > capacity:  # a step emits at most 4 signals (F1, F2, G1, G2)
            capacity *= 2
            kinds = np.concatenate((kinds, np.empty(capacity - kinds.shape[0], np.int8)))
            starts = np.concatenate((starts, np.empty(capacity - starts.shape[0], np.int64)))
            confirms = np.concatenate((confirms, np.empty(capacity - confirms.shape[0], np.int64)))
            rules = np.concatenate((rules, np.empty(capacity - rules.shape[0], np.int8)))
        p = n - 1
        ch = h[n]
        cl = l[n]
        cc = c[n]
        co = o[n]
        ph = h[p]
        pl = l[p]
        pc = c[p]

        # A, B. u is always at most n-2 here (H3 proposes bar n-1), so P extends u's window.
        u0 = u
        d0 = d
        if u0 != 0:
            if u_low < l[u0]:
                u = 0
                u0 = 0
            else:
                u_low = min(u_low, pl)
                u_high = max(u_high, ph)
        if d0 != 0 and p > d0:
            d_high = max(d_high, ph)
            d_low = min(d_low, pl)

        # C. containment
        if cont and not (ch <= rh and cl >= rl):
            cont = False
        if not cont:
            r = d0 if d0 != 0 else u0
            if r != 0 and ch <= h[r] and cl >= l[r]:
                cont = True
                rh = h[r]
                rl = l[r]
                s = n
        deep = cont and n > s + containment_grace

        outside = ch > ph and cl < pl
        up_close = cc > co
        down_close = cc < co

        # D. CUS
        cus = -1
        if u0 != 0 and not deep:
            if (ch < ph and cl < pl and cc < pc) and not (d0 != 0 and cl < l[d0]) and n - u0 <= exhaustion_window:
                cus = 0
            elif d0 != 0 and d0 > u0 and cl < l[d0] and ch <= h[d0] and cc > pc:
                cus = 1
            elif outside and down_close:
                cus = 2
            elif d0 != 0 and outside and cc > pc and up_close and cl < l[d0]:
                cus = 3
            elif d0 != 0 and d0 > u0 and not (u_low < l[u0]) and ch > h[d0] and cc > pc and up_close:
                cus = 4

        # E. CDS
        cds = -1
        if d0 != 0 and not deep:
            no_higher_high = not (d_high > h[d0])
            pullback = d_low <= l[d0]
            if outside and cc > pc and no_higher_high and cl < o[d0]:
                cds = 0
            elif ch > ph and cc > pc and cl < l[d0] and no_higher_high and pullback:
                cds = 1
            elif cc > pc and cl >= pl and ch > h[d0] and no_higher_high and pullback:
                cds = 2
            elif no_higher_high and pl < l[d0] and ch > ph and cc < pc and down_close:
                cds = 3
            elif (ch > ph and cl > pl and cc > pc) and no_higher_high and pl < l[d0]:
                cds = 4
            elif d0 == p and outside and cc > pc:
                cds = 5

        # F. apply the CUS
        if cus >= 0:
            if last_type == 1 and u0 > last_bar:
                j = _extreme_between_kernel(h, last_bar, u0, True)
                if j != 0:
                    count = _emit_kernel(kinds, starts, confirms, rules, count, 0, j, n, _FORCED_BY_CUS_BASE + cus)
            count = _emit_kernel(kinds, starts, confirms, rules, count, 1, u0, n, cus)
            last_type = 1
            last_bar = u0
            u = 0
            if cus == 2:  # TryPDS(C, P)
                if not (ch < ph) and (d == 0 or ch > h[d]):
                    d = n
                    d_high = -np.inf
                    d_low = np.inf
            elif cus != 3 and ch <= h[u0]:  # TryPDS(U, B[u0-1])
                if not (u0 > 1 and h[u0] < h[u0 - 1]) and (d == 0 or h[u0] > h[d]):
                    d = u0
                    d_high = u_high
                    d_low = u_low

        # G. apply the CDS
        if cds >= 0:
            if last_type == 0 and d0 > last_bar:
                j = _extreme_between_kernel(l, last_bar, d0, False)
                if j != 0:
                    count = _emit_kernel(kinds, starts, confirms, rules, count, 1, j, n, _FORCED_BY_CDS_BASE + cds)
            count = _emit_kernel(kinds, starts, confirms, rules, count, 0, d0, n, _CDS_BASE + cds)
            last_type = 0
            last_bar = d0
            if u != 0 and u < d0:
                u = 0
            if d == d0:
                d = 0

        # H. new pending starts
        if not (cont and s != n):
            pds_on_c = False
            if cds < 0 and ch > ph and down_close:  # TryPDS(C, P)
                if not (ch < ph) and (d == 0 or ch > h[d]):
                    d = n
                    d_high = -np.inf
                    d_low = np.inf
                    pds_on_c = True
            if cds < 0 and not pds_on_c and ch <= ph:  # TryPDS(P, PP)
                if not (n >= 3 and ph < h[n - 2]) and (d == 0 or ph > h[d]):
                    d = p
                    d_high = -np.inf
                    d_low = np.inf
            if cus < 0 and not pds_on_c and (cl >= pl or (outside and down_close)):  # TryPUS(P)
                if u == 0 or pl < l[u]:
                    u = p
                    u_low = np.inf
                    u_high = -np.inf

    return kinds[:count], starts[:count], confirms[:count], rules[:count]


def _order_and_dedupe(kinds, starts, confirms) -> np.ndarray:
    """Indices of the emissions kept by §6.1–6.2, in output order."""
    emission_order = np.arange(kinds.shape[0])
    order = np.lexsort((emission_order, confirms, kinds, starts))
    s, k = starts[order], kinds[order]
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = (s[1:] != s[:-1]) | (k[1:] != k[:-1])
    return order[first]


_FRAME_COLUMNS = ["type", "start_bar", "confirm_bar", "rule", "start_ts", "confirm_ts", "start_price"]


def detect_trend_starts_frame(
    bars_df: pd.DataFrame,
    exhaustion_window: int = DEFAULT_EXHAUSTION_WINDOW,
    containment_grace: int = DEFAULT_CONTAINMENT_GRACE,
) -> pd.DataFrame:
    """Batch detection as a frame with the `Signal` fields as columns, in §6 order.

    The columnar result avoids building one Python object per signal (the costly part at
    millions of bars); `detect_trend_starts` is the same result as `Signal`s."""
    _check_parameters(exhaustion_window, containment_grace)
    ts_ns, o, h, l, c = _bar_arrays(bars_df)
    _validate_arrays(ts_ns, o, h, l, c)
    padded = [np.concatenate((np.zeros(1), a)) for a in (o, h, l, c)]
    kinds, starts, confirms, rules = _emissions_kernel(*padded, int(exhaustion_window), int(containment_grace))
    keep = _order_and_dedupe(kinds, starts, confirms)
    kinds, starts, confirms, rules = kinds[keep], starts[keep], confirms[keep], rules[keep]
    start_idx, confirm_idx = starts - 1, confirms - 1
    return pd.DataFrame(
        {
            "type": np.array(_TYPE_NAMES, dtype=object)[kinds],
            "start_bar": starts,
            "confirm_bar": confirms,
            "rule": np.array(RULE_NAMES, dtype=object)[rules],
            "start_ts": utc_index(ts_ns[start_idx]),
            "confirm_ts": utc_index(ts_ns[confirm_idx]),
            "start_price": np.where(kinds == _UP, l[start_idx], h[start_idx]),
        },
        columns=_FRAME_COLUMNS,
    )


def detect_trend_starts(
    bars_df: pd.DataFrame,
    exhaustion_window: int = DEFAULT_EXHAUSTION_WINDOW,
    containment_grace: int = DEFAULT_CONTAINMENT_GRACE,
) -> list[Signal]:
    """Batch detection (numba), in §6 order; identical to `detect_trend_starts_reference`."""
    frame = detect_trend_starts_frame(bars_df, exhaustion_window, containment_grace)
    return list(
        map(
            Signal,
            frame["type"].tolist(),
            frame["start_bar"].tolist(),
            frame["confirm_bar"].tolist(),
            frame["rule"].tolist(),
            list(frame["start_ts"]),
            list(frame["confirm_ts"]),
            frame["start_price"].tolist(),
        )
    )
