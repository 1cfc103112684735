"""Retention and compression: TimescaleDB policies when the extension is active, the
platform's own deletes on plain PostgreSQL. Nothing else in the code cares which.

Both work inside the caller's transaction: the caller commits.

TimescaleDB 2.18 renamed compression to the columnstore (`timescaledb.enable_columnstore`,
`add_columnstore_policy`) and deprecated the old names; the current API is used where the
server has it, the old one on older servers.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg2.extensions

from ..logs import get_logger, kv
from .migrate import timescaledb_active

log = get_logger("projectx.storage")

# The hypertables (0002 makes them so and sets their segment-by / order-by)
HYPERTABLES = ("ohlc_bars", "trades")
COLUMNSTORE_SINCE = (2, 18)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("-")[0].split(".")[:2])


def has_columnstore_api(version: str) -> bool:
    return _version(version) >= COLUMNSTORE_SINCE


def apply_policies(conn: psycopg2.extensions.connection, *, trades_retention_days: int, bars_compress_after_days: int) -> str:
    """(Re)apply the settings' policies; returns 'timescaledb' or 'postgresql'. Idempotent: the
    services call it at every start, so a changed setting takes effect on the next start."""
    version = timescaledb_active(conn)
    if not version:
        return "postgresql"
    columnstore = has_columnstore_api(version)
    with conn.cursor() as cur:
        cur.execute("SELECT remove_retention_policy('trades', if_exists => true)")
        cur.execute("SELECT add_retention_policy('trades', %s::interval)", (f"{trades_retention_days} days",))
        for table in HYPERTABLES:
            after = f"{bars_compress_after_days} days"
            if columnstore:
                cur.execute("CALL remove_columnstore_policy(%s, if_exists => true)", (table,))
                cur.execute("CALL add_columnstore_policy(%s, after => %s::interval)", (table, after))
            else:
                cur.execute("SELECT remove_compression_policy(%s, if_exists => true)", (table,))
                cur.execute("SELECT add_compression_policy(%s, %s::interval)", (table, after))
    log.info(
        kv(
            "storage_policies_applied",
            backend="timescaledb",
            version=version,
            api="columnstore" if columnstore else "compression",
            trades_retention_days=trades_retention_days,
            compress_after_days=bars_compress_after_days,
        )
    )
    return "timescaledb"


def enforce_trade_retention(conn: psycopg2.extensions.connection, *, trades_retention_days: int, now: datetime | None = None) -> int:
    """Plain PostgreSQL: delete raw trades older than the retention (TimescaleDB drops chunks itself)."""
    if timescaledb_active(conn):
        return 0
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=trades_retention_days)
    with conn.cursor() as cur:
        cur.execute('DELETE FROM trades WHERE "timestamp" < %s', (cutoff,))
        deleted = cur.rowcount
    if deleted:
        log.info(kv("trades_retention", deleted=deleted, cutoff=cutoff.isoformat()))
    return deleted
