"""The reference form: a literal per-bar transcription of §3–§6, window scans and all.

It is the test oracle and the benchmark baseline, not meant for production volumes; the batch
(`kernel.py`) and streaming (`streaming.py`) forms must give identical results."""

from __future__ import annotations

import pandas as pd

from .rules import (
    CDS_RULES,
    CUS_RULES,
    DEFAULT_CONTAINMENT_GRACE,
    DEFAULT_EXHAUSTION_WINDOW,
    DOWNTREND,
    UPTREND,
    _check_parameters,
)
from .types import Emission, Signal
from .validation import _bar_arrays, _validate_arrays


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
        deep = False
        if cont:
            assert s is not None  # s is set together with cont
            deep = n > s + containment_grace

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
            elif d0 is not None and d0 > u0 and not any(L[j] < L[u0] for j in range(u0 + 1, n)) and H[n] > H[d0] and C[n] > C[P] and up_close(n):
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
            assert u0 is not None  # D looks for a CUS only under a pending uptrend start
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
            assert d0 is not None  # E looks for a CDS only under a pending downtrend start
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
