"""Stored bars against the simulator's history: what to expect, what is stored, the difference."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from projectx_pipeline.domain.market import normalize_bars
from projectx_pipeline.domain.timeframes import Timeframe, bar_end
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.storage.bars import read_bars
from projectx_pipeline.storage.db import connect

from .market import KEY, MES, VALUES


def complete_windows(bars: pd.DataFrame, tf: Timeframe, clock: datetime) -> pd.DataFrame:
    """The bars whose window has ended by `clock` (the one still in progress is left out)."""
    if bars.empty:
        return bars
    ends = [bar_end(ts.to_pydatetime(), tf) for ts in bars["timestamp"]]
    return bars[np.array([e <= clock for e in ends], dtype=bool)].reset_index(drop=True)


def expected_bars(sim: SimulatorServer, tf: Timeframe, start=None, end=None) -> pd.DataFrame:
    """The simulator's history of `tf` (bars labelled in [start, end)), the bar in progress left out."""
    return normalize_bars(complete_windows(sim.history_bars(MES, tf, start, end), tf, sim.clock()))


def stored_bars(url: str, tf: Timeframe, start=None, end=None) -> pd.DataFrame:
    conn = connect(url)
    try:
        return read_bars(conn, MES, tf, start, end)
    finally:
        conn.close()


def bar_diff(expected: pd.DataFrame, got: pd.DataFrame, label: str) -> str:
    """'' when equal, else a short description of the first differences."""
    m = expected.merge(got, on=KEY, how="outer", suffixes=("_want", "_got"), indicator=True)
    missing = m[m["_merge"] == "left_only"]
    extra = m[m["_merge"] == "right_only"]
    both = m[m["_merge"] == "both"]
    differ = both[np.logical_or.reduce([both[f"{c}_want"] != both[f"{c}_got"] for c in VALUES])] if len(both) else both
    if missing.empty and extra.empty and differ.empty:
        return ""
    show = lambda df: ", ".join(str(t) for t in df["timestamp"].head(5))  # noqa: E731
    parts = [f"{label}: {len(expected)} expected, {len(got)} stored"]
    if len(missing):
        parts.append(f"{len(missing)} missing ({show(missing)})")
    if len(extra):
        parts.append(f"{len(extra)} unexpected ({show(extra)})")
    if len(differ):
        row = differ.iloc[0]
        parts.append(
            f"{len(differ)} differ ({show(differ)}; first: want {[row[c + '_want'] for c in VALUES]} got {[row[c + '_got'] for c in VALUES]})"
        )
    return "; ".join(parts)
