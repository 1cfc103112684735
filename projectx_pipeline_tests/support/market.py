"""Contracts, timeframes and slices of the sample that the tests share."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from projectx_pipeline.domain.timeframes import parse_timeframe, parse_timeframes

MES = "CON.F.US.MES.M25"
TIMEFRAMES = parse_timeframes("1m,5m,15m,1h,4h,1d")
TF_5M = parse_timeframe("5m")
KEY = ["contract_id", "timeframe_unit", "timeframe_value", "timestamp"]
VALUES = ["open", "high", "low", "close", "volume"]

# Twelve hours of the MES 5m sample (132 bars): a daily halt, the close of a trade date.
SLICE = ("2025-03-17T16:00:00Z", "2025-03-18T04:00:00Z")
SLICE_BARS = 132


def write_replay_slice(sample_dir: Path, directory: Path, span: tuple[str, str], bars: int) -> Path:
    """The rows of the MES 5m sample labelled in `span` ([start, end)), copied verbatim into a
    replay file in `directory`; there must be `bars` of them."""
    src = sample_dir / f"{MES}_5m.csv"
    lo, hi = (pd.Timestamp(t) for t in span)
    lines = src.read_text().splitlines()
    kept = [lines[0]] + [ln for ln in lines[1:] if lo <= pd.Timestamp(ln.split(",")[1]) < hi]
    assert len(kept) - 1 == bars, len(kept)
    path = directory / "mes_slice_5m.csv"
    path.write_text("\n".join(kept) + "\n")
    return path
