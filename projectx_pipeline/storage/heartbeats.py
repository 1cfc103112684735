"""`ingestion_heartbeats`: one row per contract, written by the daemon that ingests it.

Every function works inside the caller's transaction and never commits or rolls back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions


@dataclass(frozen=True)
class Heartbeat:
    """What a daemon last said about one contract (`counters` is a JSON object of counts)."""

    contract_id: str
    instance_id: str
    connection_state: str
    last_event_at: datetime | None
    last_trade_at: datetime | None
    last_bar_at: datetime | None
    started_at: datetime | None
    counters: dict


_UPSERT_SQL = (
    "INSERT INTO ingestion_heartbeats (contract_id, instance_id, connection_state, last_event_at, last_trade_at,"
    " last_bar_at, started_at, counters, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"
    " ON CONFLICT (contract_id) DO UPDATE SET instance_id = EXCLUDED.instance_id,"
    " connection_state = EXCLUDED.connection_state, last_event_at = EXCLUDED.last_event_at,"
    " last_trade_at = EXCLUDED.last_trade_at, last_bar_at = EXCLUDED.last_bar_at,"
    " started_at = EXCLUDED.started_at, counters = EXCLUDED.counters, updated_at = now()"
)


def write_heartbeats(conn: psycopg2.extensions.connection, heartbeats: Iterable[Heartbeat]) -> None:
    """Insert or replace each contract's heartbeat; `updated_at` is the server's now."""
    with conn.cursor() as cur:
        for h in heartbeats:
            cur.execute(
                _UPSERT_SQL,
                (
                    h.contract_id,
                    h.instance_id,
                    h.connection_state,
                    h.last_event_at,
                    h.last_trade_at,
                    h.last_bar_at,
                    h.started_at,
                    json.dumps(h.counters),
                ),
            )


def heartbeat_holder(conn: psycopg2.extensions.connection, contract_id: str) -> tuple[str, datetime] | None:
    """(instance_id, updated_at) of the contract's heartbeat, or None: who ingests it, lately."""
    with conn.cursor() as cur:
        cur.execute("SELECT instance_id, updated_at FROM ingestion_heartbeats WHERE contract_id = %s", (contract_id,))
        row = cur.fetchone()
    return (row[0], row[1]) if row else None


def read_heartbeats(conn: psycopg2.extensions.connection) -> tuple[list[tuple], datetime | None]:
    """Every heartbeat row as (contract_id, instance_id, connection_state, last_event_at,
    last_trade_at, last_bar_at, counters, updated_at), by contract, and the server's now (None
    when there are no rows): ages are measured against the server's clock."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT contract_id, instance_id, connection_state, last_event_at, last_trade_at, last_bar_at, counters, updated_at, now()"
            " FROM ingestion_heartbeats ORDER BY contract_id"
        )
        rows = cur.fetchall()
    return [r[:8] for r in rows], (rows[0][8] if rows else None)
