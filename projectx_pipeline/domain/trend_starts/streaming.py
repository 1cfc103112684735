"""The streaming form: `TrendStartDetector`, one bar at a time, with a persistable state.

Its running extremes stand in for the spec's window scans exactly as the kernel's do (see
`kernel.py`)."""

from __future__ import annotations

import math

import pandas as pd

from ..timestamps import aware_timestamp
from .rules import (
    _FORCED_BY_CDS_BASE,
    _FORCED_BY_CUS_BASE,
    _PRICE_COLUMNS,
    ANALYZER_ID,
    CDS_RULES,
    CUS_RULES,
    DEFAULT_CONTAINMENT_GRACE,
    DEFAULT_EXHAUSTION_WINDOW,
    DOWNTREND,
    RULE_NAMES,
    UPTREND,
    _check_parameters,
)
from .types import PendingStarts, Signal
from .validation import _bar_problem

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
        # Running extremes standing in for the window scans (see kernel.py's module docstring).
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
            assert u0 is not None  # a CUS is only looked for under a pending uptrend start (D)
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
            assert d0 is not None  # a CDS is only looked for under a pending downtrend start (E)
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
            "containment": ({"high": self._rh, "low": self._rl, "start_bar": self._s} if self._cont else None),
            "last_emitted": ({"type": self._last_type, "start_bar": self._last_bar} if self._last_type is not None else None),
            "emitted": sorted([start, kind] for start, kind in self._emitted if start >= first),
        }

    @classmethod
    def restore(cls, state: dict) -> TrendStartDetector:
        """A detector continuing from `snapshot()` data. Raises ValueError for data that is not
        a consistent snapshot of this analyzer."""
        try:
            if state["analyzer"] != ANALYZER_ID or state["format"] != _SNAPSHOT_FORMAT:
                raise ValueError(f"snapshot of {state['analyzer']!r} format {state['format']!r}: expected {ANALYZER_ID!r} format {_SNAPSHOT_FORMAT}")
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
        if len(ts_ns) != expected_bars or any(len(col) != expected_bars for col in columns):
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
