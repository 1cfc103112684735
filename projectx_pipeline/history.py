"""The one path from the gateway's history to the database: fetch a span of bars, then upsert
it replace-when-different, so a stored bar that differs from history is overwritten and counted
as a revision. Used by the backfill (`backfill.py`) and by the daemon's repairs (`ingest.repair`).

The caller owns the transaction: nothing here commits.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol

import pandas as pd

from .domain.timeframes import Timeframe
from .storage.bars import BarStore, UpsertResult


class HistorySource(Protocol):
    """Where history comes from (the gateway client): bars of [start, end), ascending."""

    def retrieve_bars(self, contract_id: str, tf: Timeframe, start: datetime, end: datetime) -> pd.DataFrame: ...


def replace_from_history(
    source: HistorySource,
    store: BarStore,
    contract_id: str,
    tf: Timeframe,
    start: datetime,
    end: datetime,
    *,
    windows: Collection[pd.Timestamp] | None = None,
) -> tuple[pd.DataFrame, UpsertResult]:
    """Fetch [start, end) of `contract_id` × `tf` and write it replace-when-different; with
    `windows`, only the bars starting at one of them. Returns the bars written and the counts."""
    bars = source.retrieve_bars(contract_id, tf, start, end)
    if windows is not None and not bars.empty:
        bars = bars[bars["timestamp"].isin(windows)]
    return bars, store.upsert(bars, mode="replace", source="history")
