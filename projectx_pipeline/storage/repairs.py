"""`bar_repairs`: the windows of bars to fetch again from history (partial bars, late trades,
bars dropped in an outage), each due at a feed time.

Every function works inside the caller's transaction and never commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions
import psycopg2.extras


@dataclass
class RepairRequest:
    contract_id: str
    timeframe_unit: int
    timeframe_value: int
    window_start: datetime
    due_at: datetime
    reason: str


def _dedupe(rows: Iterable[RepairRequest]) -> list[RepairRequest]:
    """One request per window, the latest due: one statement may not touch a row twice."""
    by_key: dict[tuple, RepairRequest] = {}
    for r in rows:
        key = (r.contract_id, r.timeframe_unit, r.timeframe_value, r.window_start)
        if key not in by_key or r.due_at > by_key[key].due_at:
            by_key[key] = r
    return list(by_key.values())


def queue_repairs(conn: psycopg2.extensions.connection, requests: Iterable[RepairRequest]) -> None:
    """Record the windows; a window already queued becomes due at the later of the two times."""
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO bar_repairs (contract_id, timeframe_unit, timeframe_value, window_start, due_at, reason) VALUES %s "
            "ON CONFLICT (contract_id, timeframe_unit, timeframe_value, window_start)"
            " DO UPDATE SET due_at = GREATEST(bar_repairs.due_at, EXCLUDED.due_at)",
            [(r.contract_id, r.timeframe_unit, r.timeframe_value, r.window_start, r.due_at, r.reason) for r in _dedupe(requests)],
        )


def due_repairs(conn: psycopg2.extensions.connection, contracts: list[str], now: datetime, limit: int) -> list[tuple]:
    """Up to `limit` windows of `contracts` due by `now`, oldest first, as
    (contract_id, timeframe_unit, timeframe_value, window_start)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT contract_id, timeframe_unit, timeframe_value, window_start FROM bar_repairs"
            " WHERE due_at <= %s AND contract_id = ANY(%s) ORDER BY window_start LIMIT %s",
            (now, contracts, limit),
        )
        return cur.fetchall()


def remove_repairs(conn: psycopg2.extensions.connection, contract_id: str, unit: int, value: int, window_starts: list[datetime]) -> None:
    """Forget the windows of one contract and timeframe (they have been repaired)."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM bar_repairs WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s AND window_start = ANY(%s)",
            (contract_id, unit, value, window_starts),
        )
