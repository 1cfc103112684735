"""The trend-start analyzer's identity, parameters and rule names (`docs/trend-starts.md`, "§").

Shared by the three forms (reference, kernel, streaming), so that they name rules, types and
parameters alike."""

from __future__ import annotations

import numpy as np

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
RULE_NAMES = CUS_RULES + CDS_RULES + tuple("FORCED_by_CUS_" + r for r in CUS_RULES) + tuple("FORCED_by_CDS_" + r for r in CDS_RULES)

# Type codes: downtrend sorts before uptrend (§6.1).
_DOWN, _UP = 0, 1
_TYPE_NAMES = (DOWNTREND, UPTREND)

_PRICE_COLUMNS = ("open", "high", "low", "close")


def _check_parameters(exhaustion_window: int, containment_grace: int) -> None:
    for name, value in (("exhaustion_window", exhaustion_window), ("containment_grace", containment_grace)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"invalid {name} {value!r}: expected a non-negative integer")
