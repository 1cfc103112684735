"""Market data types shared by the gateway, the aggregator, storage and analysis (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

# The one bar frame layout used everywhere (the same columns as the sample CSVs).
# timestamp is datetime64[ns, UTC] (the bar's start), prices float64, volume int64.
BAR_COLUMNS = ["contract_id", "timestamp", "open", "high", "low", "close", "volume", "timeframe_unit", "timeframe_value"]

BUY, SELL = 0, 1


@dataclass(frozen=True, slots=True)
class Trade:
    """One exchange trade from the market hub. `side` is the aggressor: 0 buy, 1 sell."""

    contract_id: str
    timestamp: datetime  # aware, UTC
    price: float
    size: int
    side: int | None = None


@dataclass(frozen=True, slots=True)
class Quote:
    """A quote update. `volume` is the session total: it is never added into bars."""

    contract_id: str
    timestamp: datetime | None
    last_price: float | None = None
    best_bid: float | None = None
    best_ask: float | None = None
    volume: int | None = None


def empty_bars() -> pd.DataFrame:
    return normalize_bars(pd.DataFrame({c: [] for c in BAR_COLUMNS}))


def normalize_bars(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame to the canonical bar layout and dtypes (timestamps to ns UTC)."""
    out = df.loc[:, BAR_COLUMNS].copy()
    # Bars come from the gateway or its CSV exports, whose rule is that a time without an offset
    # is UTC (docs/projectx-gateway-api.md), unlike the domain's own inputs (domain.timestamps).
    ts = pd.to_datetime(out["timestamp"], utc=True)
    out["timestamp"] = ts.astype("datetime64[ns, UTC]")
    for c in ("open", "high", "low", "close"):
        out[c] = out[c].astype(np.float64)
    for c in ("volume", "timeframe_unit", "timeframe_value"):
        out[c] = out[c].astype(np.int64)
    out["contract_id"] = out["contract_id"].astype(object)
    return out.reset_index(drop=True)


def read_bars_csv(path) -> pd.DataFrame:
    """Read a CSV in the gateway-bar layout of the packaged samples (`projectx_pipeline/sample_data/`)."""
    return normalize_bars(pd.read_csv(path))
