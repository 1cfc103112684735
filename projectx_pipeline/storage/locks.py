"""Advisory locks: the ingestion daemon's per-contract session locks and the analysis runs'
transaction locks. Every key comes from one helper, so no two lock families can collide.

Session locks last as long as the connection (a daemon holds its contracts while it runs);
transaction locks end with the caller's transaction (a run is serialized until it commits).
"""

from __future__ import annotations

import hashlib

import psycopg2.extensions

from ..domain.timeframes import Timeframe, validate_contract_id
from .trend_signals import check_timeframe, validate_analyzer_id


def advisory_lock_key(*parts: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock / pg_advisory_xact_lock from text parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def try_lock_contract(conn: psycopg2.extensions.connection, contract_id: str) -> bool:
    """Take the session lock "one ingestion daemon per contract"; False when another session holds it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (advisory_lock_key("ingest", validate_contract_id(contract_id)),))
        return bool(cur.fetchone()[0])


def lock_analysis(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe) -> None:
    """Serialize analysis runs of one (analyzer, contract, timeframe) until the transaction ends."""
    _xact_lock(conn, "analysis", validate_analyzer_id(analyzer_id), validate_contract_id(contract_id), check_timeframe(tf).label)


def lock_coordination(conn: psycopg2.extensions.connection, contract_id: str) -> None:
    """Serialize coordination runs of one contract (and the analysis recomputes that rewind them)."""
    _xact_lock(conn, "coordination", validate_contract_id(contract_id))


def _xact_lock(conn: psycopg2.extensions.connection, *parts: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_lock_key(*parts),))
