"""Which bars were written recently: what the new-bar sensor polls.

The caller owns the transaction (and the connection): these functions only read.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import psycopg2.extensions


class IngestedBars(NamedTuple):
    """The bars of one (contract, timeframe) written after a point in time."""

    contract_id: str
    timeframe_unit: int
    timeframe_value: int
    newest_bar: datetime  # the latest bar's start time
    bar_count: int
    last_ingested_at: datetime  # when the latest of them was written


def bars_ingested_since(conn: psycopg2.extensions.connection, since: datetime) -> list[IngestedBars]:
    """Per (contract, timeframe), the bars whose `ingested_at` is after `since`."""
    with conn.cursor() as cur:
        cur.execute(
            'SELECT contract_id, timeframe_unit, timeframe_value, max("timestamp"), count(*), max(ingested_at)'
            " FROM ohlc_bars WHERE ingested_at > %s GROUP BY 1, 2, 3",
            (since,),
        )
        return [IngestedBars(*row) for row in cur.fetchall()]
