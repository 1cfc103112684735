"""Raw trades: the `trades` table (COPY) and their live announcement on `tick_data_channel`.

Both work inside the caller's transaction and never commit or roll back. The NOTIFY payloads
reach listeners when the caller's transaction commits (at once on an autocommit connection).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions

from ..domain.timeframes import from_ns

TICK_CHANNEL = "tick_data_channel"
TICK_PAYLOAD_LIMIT = 7900  # PostgreSQL rejects NOTIFY payloads of 8000 bytes or more
_COPY_NULL = "\\N"


@dataclass
class TradeBatch:
    """Trades of one contract as they arrived, in columns (times in ns since the epoch)."""

    contract_id: str
    ts_ns: list[int]
    price: list[float]
    size: list[int]
    side: list[int | None]
    received_at: datetime


def tick_payloads(batch: TradeBatch) -> list[str]:
    """Compact JSON arrays of trades, each under the NOTIFY payload limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 2
    for ts, px, sz, side in zip(batch.ts_ns, batch.price, batch.size, batch.side):
        item = json.dumps(
            {"c": batch.contract_id, "t": from_ns(ts).isoformat().replace("+00:00", "Z"), "p": px, "s": sz, "a": side}, separators=(",", ":")
        )
        if current and size + len(item) + 1 > TICK_PAYLOAD_LIMIT:
            payloads.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item) + 1
    if current:
        payloads.append("[" + ",".join(current) + "]")
    return payloads


def copy_trades(conn: psycopg2.extensions.connection, batches: Iterable[TradeBatch]) -> None:
    """Append the trades to `trades` with one COPY (prices as repr(): stored exactly)."""
    buf = io.StringIO()
    for b in batches:
        rec = b.received_at.isoformat()
        for ts, px, sz, side in zip(b.ts_ns, b.price, b.size, b.side):
            side_text = _COPY_NULL if side is None else side
            buf.write(f"{b.contract_id}\t{from_ns(ts).isoformat()}\t{px!r}\t{sz}\t{side_text}\t{rec}\n")
    buf.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert('COPY trades (contract_id, "timestamp", price, size, side, received_at) FROM STDIN', buf)


def notify_ticks(conn: psycopg2.extensions.connection, batches: Iterable[TradeBatch]) -> None:
    """Announce the trades on tick_data_channel, in payloads under the size limit, in one statement."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (TICK_CHANNEL, [p for b in batches for p in tick_payloads(b)]))
