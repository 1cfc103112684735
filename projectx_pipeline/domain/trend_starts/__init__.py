"""Trend starts (analyzer `cus_cds_trend_finder`): confirmed uptrend and downtrend starts.

The rules are defined exactly in `docs/trend-starts.md` ("§" below refers to it).
Pure domain code, no I/O. Three forms give identical results (the tests compare them on the
samples and on random bars):

* `detect_trend_starts_reference` — a literal per-bar transcription of §3–§6, window scans and
  all (`reference.py`). It is the test oracle and the benchmark baseline, not meant for
  production volumes.
* `detect_trend_starts` / `detect_trend_starts_frame` — the batch form: one numba kernel
  (`kernel.py`).
* `TrendStartDetector` — the streaming form, one bar at a time, with a persistable state
  (`streaming.py`).

Names and parameters are in `rules.py`, the result types in `types.py`. Malformed bars are
rejected before detection (§7.8): `validate_bars_for_detection` (`validation.py`).
"""

from .kernel import detect_trend_starts, detect_trend_starts_frame
from .reference import detect_trend_starts_reference, reference_emissions
from .rules import (
    ANALYZER_ID,
    CDS_RULES,
    CUS_RULES,
    DEFAULT_CONTAINMENT_GRACE,
    DEFAULT_EXHAUSTION_WINDOW,
    DOWNTREND,
    RULE_NAMES,
    UPTREND,
)
from .streaming import TrendStartDetector
from .types import Emission, PendingStarts, Signal
from .validation import validate_bars_for_detection

__all__ = [
    "ANALYZER_ID",
    "CDS_RULES",
    "CUS_RULES",
    "DEFAULT_CONTAINMENT_GRACE",
    "DEFAULT_EXHAUSTION_WINDOW",
    "DOWNTREND",
    "RULE_NAMES",
    "UPTREND",
    "Emission",
    "PendingStarts",
    "Signal",
    "TrendStartDetector",
    "detect_trend_starts",
    "detect_trend_starts_frame",
    "detect_trend_starts_reference",
    "reference_emissions",
    "validate_bars_for_detection",
]
