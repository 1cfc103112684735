"""Retention and compression: TimescaleDB policies when the extension is active, the
platform's own deletes on plain PostgreSQL. Nothing else in the code cares which."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from .migrate import timescaledb_active

log = logging.getLogger("projectx.storage")


def apply_policies(conn, *, trades_retention_days: int, bars_compress_after_days: int) -> str:
    """(Re)apply the settings' policies; returns 'timescaledb' or 'postgresql'."""
    if timescaledb_active(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT remove_retention_policy('trades', if_exists => true)")
            cur.execute("SELECT add_retention_policy('trades', %s::interval)", (f"{trades_retention_days} days",))
            for table in ("ohlc_bars", "trades"):
                cur.execute("SELECT remove_compression_policy(%s, if_exists => true)", (table,))
                cur.execute("SELECT add_compression_policy(%s, %s::interval)", (table, f"{bars_compress_after_days} days"))
        conn.commit()
        return "timescaledb"
    return "postgresql"


def enforce_trade_retention(conn, *, trades_retention_days: int, now: datetime | None = None) -> int:
    """Plain PostgreSQL: delete raw trades older than the retention (TimescaleDB drops chunks itself)."""
    if timescaledb_active(conn):
        return 0
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=trades_retention_days)
    with conn.cursor() as cur:
        cur.execute('DELETE FROM trades WHERE "timestamp" < %s', (cutoff,))
        deleted = cur.rowcount
    conn.commit()
    if deleted:
        log.info("event=trades_retention deleted=%d cutoff=%s", deleted, cutoff.isoformat())
    return deleted
