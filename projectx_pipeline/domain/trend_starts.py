"""Trend starts (analyzer `cus_cds_trend_finder`): confirmed uptrend and downtrend starts.

The rules are defined exactly in `docs/trend-starts.md` ("§" below refers to it).
Pure domain code, no I/O. Three forms give identical results (the tests compare them on the
samples and on random bars):

* `detect_trend_starts_reference` — a literal per-bar transcription of §3–§6, window scans and
  all. It is the test oracle and the benchmark baseline, not meant for production volumes.
* `detect_trend_starts` / `detect_trend_starts_frame` — the batch form: one numba kernel.
* `TrendStartDetector` — the streaming form, one bar at a time, with a persistable state.

The fast forms replace the spec's window scans by running extremes, which is exact because the
windows only ever grow by one bar per step until their candidate changes:
* PUS `u`: lowest low / highest high of the bars after `u` (sub-step B reads (u, n-2], D5 reads
  (u, n-1]; when F4 makes U the PDS these become the PDS's extremes);
* PDS `d`: highest high / lowest low of the bars (d, n-1] (NoHigherHigh, Pullback).
Only the forced-alternation search (§4.4) still scans, from the last emitted start to the
candidate; it runs once per emitted CUS/CDS.

Malformed bars are rejected before detection (§7.8): `validate_bars_for_detection`.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit
from numba.core import config as numba_config

from .timestamps import aware_timestamp, timestamps_ns, utc_index

ANALYZER_ID = "cus_cds_trend_finder"

DEFAULT_EXHAUSTION_WINDOW = 6
DEFAULT_CONTAINMENT_GRACE = 5

UPTREND, DOWNTREND = "uptrend", "downtrend"

# Rule names, in the order tested by §5.D (D1..D5) and §5.E (E1..E6).
CUS_RULES = (
    "EXHAUSTION_REVERSAL",
    "LowUndercutHighRespect",
    "HigherHighLowerLowDownClose",
    "EngulfingUpPDSLowBreak",
    "BreakoutAfterFailedLowV2",
)
CDS_RULES = (
    "LowThenHigherClose_vs_PDSOpen",
    "RallyLowBreaksPeakLow_A",
    "NewHighWeakAdvance_B",
    "FailedRallyAfterLowBreak_F",
    "HigherOHLCAfterLowBreak_G",
    "OutsideBarStrongerClose_H",
)
# Rule codes used by the kernel: CUS i -> i, CDS i -> _CDS_BASE + i, and the forced signals
# named after the confirmation that forced them (§5 F1, G1).
_CDS_BASE = len(CUS_RULES)
_FORCED_BY_CUS_BASE = _CDS_BASE + len(CDS_RULES)
_FORCED_BY_CDS_BASE = _FORCED_BY_CUS_BASE + len(CUS_RULES)
RULE_NAMES = (
    CUS_RULES
    + CDS_RULES
    + tuple("FORCED_by_CUS_" + r for r in CUS_RULES)
    + tuple("FORCED_by_CDS_" + r for r in CDS_RULES)
)

# Type codes: downtrend sorts before uptrend (§6.1).
_DOWN, _UP = 0, 1
_TYPE_NAMES = (DOWNTREND, UPTREND)

_PRICE_COLUMNS = ("open", "high", "low", "close")


@dataclass(frozen=True)
class Signal:
    """A confirmed trend start (§6.3).

    `start_bar`/`confirm_bar` are 1-based bar numbers of the input; `confirm_ts` is the START
    label of the confirming bar: the signal is only known when that bar closes.
    `start_price` is the start bar's low for an uptrend and its high for a downtrend (the
    extreme the trend starts from).
    """

    type: str
    start_bar: int
    confirm_bar: int
    rule: str
    start_ts: pd.Timestamp
    confirm_ts: pd.Timestamp
    start_price: float


@dataclass(frozen=True)
class Emission:
    """A signal as emitted by §4.3, before §6 ordering and de-duplication."""

    type: str
    start_bar: int
    confirm_bar: int
    rule: str


@dataclass(frozen=True)
class PendingStarts:
    """The live PUS / PDS candidates (§6.4): bar numbers, or None."""

    uptrend_bar: int | None
    downtrend_bar: int | None


def _check_parameters(exhaustion_window: int, containment_grace: int) -> None:
    for name, value in (("exhaustion_window", exhaustion_window), ("containment_grace", containment_grace)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"invalid {name} {value!r}: expected a non-negative integer")


# --------------------------------------------------------------------------- validation

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
        return (
            f"{where}: timestamp is not after the previous bar's {_iso(previous_ts_ns)} "
            "(bars must be in strictly ascending time order)"
        )
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


# --------------------------------------------------------------------------- reference form

def reference_emissions(
    bars_df: pd.DataFrame,
    exhaustion_window: int = DEFAULT_EXHAUSTION_WINDOW,
    containment_grace: int = DEFAULT_CONTAINMENT_GRACE,
) -> list[Emission]:
    """The `signals` list of §3.5 after step N, in emission order (before §6).

    A direct transcription of §4–§5, one bar at a time, with the window scans as written."""
    _check_parameters(exhaustion_window, containment_grace)
    ts_ns, o, h, l, c = _bar_arrays(bars_df)
    _validate_arrays(ts_ns, o, h, l, c)
    # 1-based bar numbers (§1.2): index 0 is a placeholder.
    O, H, L, C = ([None] + a.tolist() for a in (o, h, l, c))
    N = len(o)

    u = d = None
    cont, RH, RL, s = False, None, None, None
    last_type, last_bar = None, None
    signals: list[Emission] = []

    def try_pds(x, g):  # §4.1; returns True when it set d
        nonlocal d
        if g is not None and H[x] < H[g]:
            return False
        if d is None or H[x] > H[d]:
            d = x
            return True
        return False

    def try_pus(x):  # §4.2
        nonlocal u
        if u is None or L[x] < L[u]:
            u = x

    def emit(kind, start, n, rule):  # §4.3
        nonlocal last_type, last_bar
        signals.append(Emission(kind, start, n, rule))
        last_type, last_bar = kind, start

    def extreme_between(a, b, kind):  # §4.4; earliest j on ties
        best = None
        for j in range(a + 1, b):
            if best is None or (H[j] > H[best] if kind == "highest high" else L[j] < L[best]):
                best = j
        return best

    def lower_bar(x, y):
        return H[x] < H[y] and L[x] < L[y] and C[x] < C[y]

    def higher_bar(x, y):
        return H[x] > H[y] and L[x] > L[y] and C[x] > C[y]

    def outside(x, y):
        return H[x] > H[y] and L[x] < L[y]

    def up_close(x):
        return C[x] > O[x]

    def down_close(x):
        return C[x] < O[x]

    for n in range(2, N + 1):
        P, PP = n - 1, (n - 2 if n >= 3 else None)
        # A. snapshot
        u0, d0 = u, d
        # B. PUS invalidation by an earlier lower low (window (u0, n-2])
        if u0 is not None and any(L[j] < L[u0] for j in range(u0 + 1, n - 1)):
            u = u0 = None
        # C. containment
        if cont and not (H[n] <= RH and L[n] >= RL):
            cont, RH, RL, s = False, None, None, None
        if not cont:
            R = d0 if d0 is not None else u0
            if R is not None and H[n] <= H[R] and L[n] >= L[R]:
                cont, RH, RL, s = True, H[R], L[R], n
        deep = cont and n > s + containment_grace

        # D. CUS
        cus_rule = None
        if u0 is not None and not deep:
            if lower_bar(n, P) and not (d0 is not None and L[n] < L[d0]) and n - u0 <= exhaustion_window:
                cus_rule = CUS_RULES[0]
            elif d0 is not None and d0 > u0 and L[n] < L[d0] and H[n] <= H[d0] and C[n] > C[P]:
                cus_rule = CUS_RULES[1]
            elif outside(n, P) and down_close(n):
                cus_rule = CUS_RULES[2]
            elif d0 is not None and outside(n, P) and C[n] > C[P] and up_close(n) and L[n] < L[d0]:
                cus_rule = CUS_RULES[3]
            elif (
                d0 is not None
                and d0 > u0
                and not any(L[j] < L[u0] for j in range(u0 + 1, n))
                and H[n] > H[d0]
                and C[n] > C[P]
                and up_close(n)
            ):
                cus_rule = CUS_RULES[4]

        # E. CDS
        cds_rule = None
        if d0 is not None and not deep:
            no_higher_high = not any(H[j] > H[d0] for j in range(d0 + 1, n))
            pullback = any(L[j] <= L[d0] for j in range(d0 + 1, n))
            if outside(n, P) and C[n] > C[P] and no_higher_high and L[n] < O[d0]:
                cds_rule = CDS_RULES[0]
            elif H[n] > H[P] and C[n] > C[P] and L[n] < L[d0] and no_higher_high and pullback:
                cds_rule = CDS_RULES[1]
            elif C[n] > C[P] and L[n] >= L[P] and H[n] > H[d0] and no_higher_high and pullback:
                cds_rule = CDS_RULES[2]
            elif no_higher_high and L[P] < L[d0] and H[n] > H[P] and C[n] < C[P] and down_close(n):
                cds_rule = CDS_RULES[3]
            elif higher_bar(n, P) and no_higher_high and L[P] < L[d0]:
                cds_rule = CDS_RULES[4]
            elif d0 == n - 1 and outside(n, P) and C[n] > C[P]:
                cds_rule = CDS_RULES[5]

        # F. apply the CUS
        if cus_rule is not None:
            if last_type == UPTREND and u0 > last_bar:
                j = extreme_between(last_bar, u0, "highest high")
                if j is not None:
                    emit(DOWNTREND, j, n, "FORCED_by_CUS_" + cus_rule)
            emit(UPTREND, u0, n, cus_rule)
            u = None
            if cus_rule == CUS_RULES[2]:
                try_pds(n, P)
            elif cus_rule != CUS_RULES[3] and H[n] <= H[u0]:
                try_pds(u0, u0 - 1 if u0 > 1 else None)

        # G. apply the CDS
        if cds_rule is not None:
            if last_type == DOWNTREND and d0 > last_bar:
                j = extreme_between(last_bar, d0, "lowest low")
                if j is not None:
                    emit(UPTREND, j, n, "FORCED_by_CDS_" + cds_rule)
            emit(DOWNTREND, d0, n, cds_rule)
            if u is not None and u < d0:
                u = None
            if d == d0:
                d = None

        # H. new pending starts
        if cont and s != n:
            continue
        pds_on_c = False
        if cds_rule is None and H[n] > H[P] and down_close(n):
            pds_on_c = try_pds(n, P)
        if cds_rule is None and not pds_on_c and H[n] <= H[P]:
            try_pds(P, PP)
        if cus_rule is None and not pds_on_c and (L[n] >= L[P] or (outside(n, P) and down_close(n))):
            try_pus(P)

    return signals


def detect_trend_starts_reference(
    bars_df: pd.DataFrame,
    exhaustion_window: int = DEFAULT_EXHAUSTION_WINDOW,
    containment_grace: int = DEFAULT_CONTAINMENT_GRACE,
) -> list[Signal]:
    """Trend starts by the literal reference form, in §6 order (sorted, de-duplicated)."""
    emitted = reference_emissions(bars_df, exhaustion_window, containment_grace)
    # §6.1: Python's sort is stable, so equal keys keep their emission order.
    ordered = sorted(emitted, key=lambda e: (e.start_bar, e.type != DOWNTREND, e.confirm_bar))
    seen: set[tuple[int, str]] = set()
    kept = []
    for e in ordered:  # §6.2
        if (e.start_bar, e.type) not in seen:
            seen.add((e.start_bar, e.type))
            kept.append(e)
    ts = pd.to_datetime(bars_df["timestamp"], utc=True).astype("datetime64[ns, UTC]").tolist()
    low, high = bars_df["low"].tolist(), bars_df["high"].tolist()
    return [
        Signal(
            e.type,
            e.start_bar,
            e.confirm_bar,
            e.rule,
            ts[e.start_bar - 1],
            ts[e.confirm_bar - 1],
            float(low[e.start_bar - 1] if e.type == UPTREND else high[e.start_bar - 1]),
        )
        for e in kept
    ]


# --------------------------------------------------------------------------- batch form

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
    if not numba_config.CACHE_DIR:
        numba_config.CACHE_DIR = os.path.join(tempfile.gettempdir(), f"projectx-numba-cache-{os.getuid()}")
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


# --------------------------------------------------------------------------- streaming form

_SNAPSHOT_FORMAT = 1


class TrendStartDetector:
    """Streaming trend-start detection: feed bars in time order with `update`.

    `update` returns the signals confirmed by that bar (§6.2 de-duplicated against everything
    this detector has returned, in §6 order). Collected over a run and put in §6 order they are
    exactly the batch result on the same bars (§7.7).

    State is bounded: only the bars that a future step can read are kept — from
    min(n-1, u-1, d, lastBar+1) on (P/PP, the F4 guard bar before the PUS, the PDS, and the
    forced-alternation window after the last emitted start). A PDS is never invalidated (§7.6),
    so while one sits unconfirmed for a long time, or no start is emitted for a long time, the
    kept window grows with it. `snapshot()` / `restore()` persist the state as JSON-compatible
    data so that an incremental run resumes exactly.
    """

    def __init__(
        self,
        exhaustion_window: int = DEFAULT_EXHAUSTION_WINDOW,
        containment_grace: int = DEFAULT_CONTAINMENT_GRACE,
    ) -> None:
        _check_parameters(exhaustion_window, containment_grace)
        self.exhaustion_window = int(exhaustion_window)
        self.containment_grace = int(containment_grace)
        self._n = 0  # bars processed
        # Kept bars: bar number self._base + i is at index i.
        self._base = 1
        self._ts: list[pd.Timestamp] = []
        self._o: list[float] = []
        self._h: list[float] = []
        self._l: list[float] = []
        self._c: list[float] = []
        self._u: int | None = None
        self._d: int | None = None
        self._cont = False
        self._rh = self._rl = 0.0
        self._s = 0
        self._last_type: str | None = None
        self._last_bar = 0
        # Running extremes standing in for the window scans (see the module docstring).
        self._u_low = math.inf  # of (u, n-1] after step n
        self._u_high = -math.inf
        self._d_high = -math.inf  # of (d, n-1] after step n
        self._d_low = math.inf
        self._emitted: set[tuple[int, str]] = set()  # (start bar, type) already returned

    @property
    def bars_processed(self) -> int:
        return self._n

    def pending(self) -> PendingStarts:
        """The current pending uptrend / downtrend start bars (§6.4)."""
        return PendingStarts(self._u, self._d)

    def update(self, ts, o: float, h: float, l: float, c: float) -> list[Signal]:
        """Process the next bar (it has closed). Raises ValueError, leaving the state unchanged,
        for a bar the detector must not see (see `validate_bars_for_detection`)."""
        t = aware_timestamp(ts)
        prices = (float(o), float(h), float(l), float(c))
        previous_ts_ns = self._ts[-1].value if self._ts else None  # bar n is always kept
        problem = _bar_problem(None if t is None else t.value, prices, previous_ts_ns)
        if problem is not None:
            raise ValueError(f"invalid bar {self._n + 1}: {problem}")
        co, ch, cl, cc = prices
        self._ts.append(t)
        self._o.append(co)
        self._h.append(ch)
        self._l.append(cl)
        self._c.append(cc)
        n = self._n = self._n + 1
        if n == 1:  # step 1 does nothing
            return []
        emissions = self._step(n, co, ch, cl, cc)
        signals = self._new_signals(emissions) if emissions else []
        self._forget_unneeded_bars()
        return signals

    def _step(self, n, co, ch, cl, cc) -> list[tuple[str, int, str]]:
        """Sub-steps A–H of §5 for bar n; returns the emissions (type, start, rule)."""
        H, L, O = self._h, self._l, self._o
        base = self._base
        p = n - 1
        ph, pl, pc = H[p - base], L[p - base], self._c[p - base]

        # A, B. u is always at most n-2 here (H3 proposes bar n-1), so P extends u's window.
        u0 = u = self._u
        d0 = d = self._d
        if u0 is not None:
            if self._u_low < L[u0 - base]:
                u0 = u = None
            else:
                self._u_low = min(self._u_low, pl)
                self._u_high = max(self._u_high, ph)
        if d0 is not None and p > d0:
            self._d_high = max(self._d_high, ph)
            self._d_low = min(self._d_low, pl)

        # C. containment
        cont = self._cont
        if cont and not (ch <= self._rh and cl >= self._rl):
            cont = self._cont = False
        if not cont:
            r = d0 if d0 is not None else u0
            if r is not None and ch <= H[r - base] and cl >= L[r - base]:
                cont = self._cont = True
                self._rh, self._rl, self._s = H[r - base], L[r - base], n
        deep = cont and n > self._s + self.containment_grace

        outside = ch > ph and cl < pl
        up_close = cc > co
        down_close = cc < co
        # NaN when there is no PDS: only read under "d0 is not None" below.
        dh, dl = (H[d0 - base], L[d0 - base]) if d0 is not None else (math.nan, math.nan)

        # D. CUS
        cus = None
        if u0 is not None and not deep:
            if (ch < ph and cl < pl and cc < pc) and not (d0 is not None and cl < dl) and n - u0 <= self.exhaustion_window:
                cus = 0
            elif d0 is not None and d0 > u0 and cl < dl and ch <= dh and cc > pc:
                cus = 1
            elif outside and down_close:
                cus = 2
            elif d0 is not None and outside and cc > pc and up_close and cl < dl:
                cus = 3
            elif d0 is not None and d0 > u0 and not (self._u_low < L[u0 - base]) and ch > dh and cc > pc and up_close:
                cus = 4

        # E. CDS
        cds = None
        if d0 is not None and not deep:
            no_higher_high = not (self._d_high > dh)
            pullback = self._d_low <= dl
            if outside and cc > pc and no_higher_high and cl < O[d0 - base]:
                cds = 0
            elif ch > ph and cc > pc and cl < dl and no_higher_high and pullback:
                cds = 1
            elif cc > pc and cl >= pl and ch > dh and no_higher_high and pullback:
                cds = 2
            elif no_higher_high and pl < dl and ch > ph and cc < pc and down_close:
                cds = 3
            elif (ch > ph and cl > pl and cc > pc) and no_higher_high and pl < dl:
                cds = 4
            elif d0 == p and outside and cc > pc:
                cds = 5

        emissions = []
        # F. apply the CUS
        if cus is not None:
            if self._last_type == UPTREND and u0 > self._last_bar:
                j = self._extreme_between(self._last_bar, u0, H, max)
                if j is not None:
                    emissions.append((DOWNTREND, j, RULE_NAMES[_FORCED_BY_CUS_BASE + cus]))
            emissions.append((UPTREND, u0, CUS_RULES[cus]))
            self._last_type, self._last_bar = UPTREND, u0
            u = None
            if cus == 2:
                if not (ch < ph) and (d is None or ch > H[d - base]):
                    d, self._d_high, self._d_low = n, -math.inf, math.inf
            elif cus != 3 and ch <= H[u0 - base]:
                uh = H[u0 - base]
                if not (u0 > 1 and uh < H[u0 - 1 - base]) and (d is None or uh > H[d - base]):
                    d, self._d_high, self._d_low = u0, self._u_high, self._u_low

        # G. apply the CDS
        if cds is not None:
            if self._last_type == DOWNTREND and d0 > self._last_bar:
                j = self._extreme_between(self._last_bar, d0, L, min)
                if j is not None:
                    emissions.append((UPTREND, j, RULE_NAMES[_FORCED_BY_CDS_BASE + cds]))
            emissions.append((DOWNTREND, d0, CDS_RULES[cds]))
            self._last_type, self._last_bar = DOWNTREND, d0
            if u is not None and u < d0:
                u = None
            if d == d0:
                d = None

        # H. new pending starts
        if not (cont and self._s != n):
            pds_on_c = False
            if cds is None and ch > ph and down_close:  # TryPDS(C, P)
                if not (ch < ph) and (d is None or ch > H[d - base]):
                    d, self._d_high, self._d_low = n, -math.inf, math.inf
                    pds_on_c = True
            if cds is None and not pds_on_c and ch <= ph:  # TryPDS(P, PP)
                if not (n >= 3 and ph < H[n - 2 - base]) and (d is None or ph > H[d - base]):
                    d, self._d_high, self._d_low = p, -math.inf, math.inf
            if cus is None and not pds_on_c and (cl >= pl or (outside and down_close)):  # TryPUS(P)
                if u is None or pl < L[u - base]:
                    u, self._u_low, self._u_high = p, math.inf, -math.inf
        self._u, self._d = u, d
        return emissions

    def _extreme_between(self, a: int, b: int, prices: list[float], pick) -> int | None:
        """§4.4: `pick` is max (highest high) or min (lowest low); the earliest bar on ties."""
        if b - a < 2:
            return None
        window = prices[a + 1 - self._base : b - self._base]
        return a + 1 + window.index(pick(window))

    def _new_signals(self, emissions: list[tuple[str, int, str]]) -> list[Signal]:
        n, base = self._n, self._base
        confirm_ts = self._ts[n - base]
        signals = []
        # §6.1 within one confirming bar: start asc, downtrend first, stable.
        for kind, start, rule in sorted(emissions, key=lambda e: (e[1], e[0] != DOWNTREND)):
            if (start, kind) in self._emitted:  # §6.2
                continue
            self._emitted.add((start, kind))
            price = self._l[start - base] if kind == UPTREND else self._h[start - base]
            signals.append(Signal(kind, start, n, rule, self._ts[start - base], confirm_ts, price))
        return signals

    def _first_needed_bar(self) -> int:
        """No future step reads a bar before this one, nor emits a start before it."""
        first = self._n - 1
        if self._u is not None:
            first = min(first, self._u - 1)
        if self._d is not None:
            first = min(first, self._d)
        if self._last_type is not None:
            first = min(first, self._last_bar + 1)
        return max(first, 1)

    def _forget_unneeded_bars(self) -> None:
        dead = self._first_needed_bar() - self._base
        # Trim only when at least half the kept bars are dead: amortized O(1) per bar.
        if dead * 2 <= len(self._h):
            return
        for column in (self._ts, self._o, self._h, self._l, self._c):
            del column[:dead]
        self._base += dead
        self._emitted = {key for key in self._emitted if key[0] >= self._base}

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict:
        """The full state as JSON-compatible data (ints, floats, strings, lists, dicts, None).

        Only the needed bars are included; `restore(snapshot)` continues exactly."""
        first = self._first_needed_bar() if self._n else 1
        i = first - self._base
        return {
            "analyzer": ANALYZER_ID,
            "format": _SNAPSHOT_FORMAT,
            "exhaustion_window": self.exhaustion_window,
            "containment_grace": self.containment_grace,
            "bars_processed": self._n,
            "first_bar": first,
            "bars": {
                "timestamp_ns": [t.value for t in self._ts[i:]],
                "open": self._o[i:],
                "high": self._h[i:],
                "low": self._l[i:],
                "close": self._c[i:],
            },
            "pending_uptrend_bar": self._u,
            "pending_downtrend_bar": self._d,
            "containment": (
                {"high": self._rh, "low": self._rl, "start_bar": self._s} if self._cont else None
            ),
            "last_emitted": (
                {"type": self._last_type, "start_bar": self._last_bar} if self._last_type is not None else None
            ),
            "emitted": sorted([start, kind] for start, kind in self._emitted if start >= first),
        }

    @classmethod
    def restore(cls, state: dict) -> TrendStartDetector:
        """A detector continuing from `snapshot()` data. Raises ValueError for data that is not
        a consistent snapshot of this analyzer."""
        try:
            if state["analyzer"] != ANALYZER_ID or state["format"] != _SNAPSHOT_FORMAT:
                raise ValueError(
                    f"snapshot of {state['analyzer']!r} format {state['format']!r}: "
                    f"expected {ANALYZER_ID!r} format {_SNAPSHOT_FORMAT}"
                )
            det = cls(state["exhaustion_window"], state["containment_grace"])
            n, first, bars = int(state["bars_processed"]), int(state["first_bar"]), state["bars"]
            ts_ns = [int(v) for v in bars["timestamp_ns"]]
            columns = [[float(v) for v in bars[name]] for name in _PRICE_COLUMNS]
            det._u, det._d = _optional_int(state["pending_uptrend_bar"]), _optional_int(state["pending_downtrend_bar"])
            containment, last = state["containment"], state["last_emitted"]
            emitted = {(int(start), str(kind)) for start, kind in state["emitted"]}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a trend-start detector snapshot: {exc!r}") from None

        expected_bars = n - first + 1 if n else 0
        if any(len(col) != expected_bars for col in [ts_ns, *columns]):
            raise ValueError(f"snapshot keeps bars {first}..{n} but holds {len(ts_ns)} rows")
        previous = None
        for k, (t, *prices) in enumerate(zip(ts_ns, *columns), start=first):
            problem = _bar_problem(t, tuple(prices), previous)
            if problem is not None:
                raise ValueError(f"invalid bar {k} in snapshot: {problem}")
            previous = t
        if det._u is not None and not (first <= max(det._u - 1, 1) and det._u < n):
            raise ValueError(f"snapshot pending uptrend bar {det._u} needs bars not kept ({first}..{n})")
        if det._d is not None and not first <= det._d <= n:
            raise ValueError(f"snapshot pending downtrend bar {det._d} is not among the kept bars {first}..{n}")

        det._n, det._base = n, first
        det._ts = [pd.Timestamp(t, tz="UTC") for t in ts_ns]
        det._o, det._h, det._l, det._c = columns
        if containment is not None:
            det._cont = True
            det._rh, det._rl, det._s = float(containment["high"]), float(containment["low"]), int(containment["start_bar"])
        if last is not None:
            if last["type"] not in (UPTREND, DOWNTREND):
                raise ValueError(f"snapshot last emitted type {last['type']!r}: expected uptrend or downtrend")
            det._last_type, det._last_bar = last["type"], int(last["start_bar"])
        det._emitted = emitted
        # The running extremes are derived from the kept bars: (u, n-1] and (d, n-1].
        if det._u is not None:
            window = slice(det._u + 1 - first, n - first)
            det._u_low = min(det._l[window], default=math.inf)
            det._u_high = max(det._h[window], default=-math.inf)
        if det._d is not None:
            window = slice(det._d + 1 - first, n - first)
            det._d_high = max(det._h[window], default=-math.inf)
            det._d_low = min(det._l[window], default=math.inf)
        return det


def _optional_int(value) -> int | None:
    return None if value is None else int(value)
