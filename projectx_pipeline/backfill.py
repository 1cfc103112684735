"""Backfill one CME trade date × contract from the gateway's history (used by the
`historical_bars` asset and the benchmarks). Idempotent: replace-when-different upserts
(`history.replace_from_history`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd
import psycopg2.extensions

from .domain.quality import Session, find_gaps
from .domain.sessions import trade_date_session
from .domain.timeframes import Timeframe
from .history import HistorySource, replace_from_history
from .storage.bars import BarStore
from .storage.db import transaction


@dataclass
class BackfillResult:
    rows: dict[str, int] = field(default_factory=dict)
    inserted: int = 0
    revised: int = 0
    first_bar: pd.Timestamp | None = None
    last_bar: pd.Timestamp | None = None
    holes: int = 0
    holes_timeframe: str | None = None


def backfill_trade_date(
    client: HistorySource,
    conn: psycopg2.extensions.connection,
    contract_id: str,
    trade_date: date,
    timeframes: list[Timeframe],
    sessions: list[Session] | None = None,
) -> BackfillResult:
    """Fetch every timeframe of the session of `trade_date` and upsert it, one commit per timeframe
    so a retry after a failure redoes only what is left. `sessions` (from the exchange calendar)
    enables the hole count on the finest intraday timeframe. Owns the transactions of `conn`: a
    failure rolls back the timeframe it was writing and raises."""
    session_open, session_close = trade_date_session(trade_date)
    result = BackfillResult()
    store = BarStore(conn)
    finest: tuple[Timeframe, pd.DataFrame] | None = None
    for tf in timeframes:
        with transaction(conn):
            bars, written = replace_from_history(client, store, contract_id, tf, session_open, session_close)
        result.rows[tf.label] = len(bars)
        result.inserted += written.inserted
        result.revised += written.revised
        if not bars.empty:
            lo, hi = bars["timestamp"].min(), bars["timestamp"].max()
            result.first_bar = lo if result.first_bar is None else min(result.first_bar, lo)
            result.last_bar = hi if result.last_bar is None else max(result.last_bar, hi)
        if finest is None and tf.step_ns:
            finest = (tf, bars)
    if finest is not None and sessions is not None:
        result.holes = len(find_gaps(finest[1], finest[0], sessions))
        result.holes_timeframe = finest[0].label
    return result
