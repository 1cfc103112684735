"""Real ProjectX Gateway bars shipped with the package: `CON.F.US.MES.M25` at 5m, 1h and 4h.

The files are the gateway's own history, unchanged (one bar a row, `timestamp` = bar start, UTC);
`docs/market-conventions.md` describes their layout, their sessions and their known holes. They
are the simulator's default replay and the fixtures of the tests and benchmarks, so the project
runs on a machine that has nothing but this package.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_CONTRACT = "CON.F.US.MES.M25"
SAMPLE_TIMEFRAMES = ("5m", "1h", "4h")
SAMPLE_DIR = Path(__file__).resolve().parent


def sample_path(timeframe: str = "5m") -> Path:
    """The packaged sample CSV for a timeframe label (`5m`, `1h` or `4h`)."""
    if timeframe not in SAMPLE_TIMEFRAMES:
        raise ValueError(f"no packaged sample for timeframe {timeframe!r}: expected one of {', '.join(SAMPLE_TIMEFRAMES)}")
    return SAMPLE_DIR / f"{SAMPLE_CONTRACT}_{timeframe}.csv"
