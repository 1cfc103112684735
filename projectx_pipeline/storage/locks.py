"""Advisory locks: the ingestion daemon's per-contract session locks and the analysis runs'
transaction locks. Every one-key lock comes from one helper, so no two lock families can collide.

Session locks last as long as the connection (a daemon holds its contracts while it runs);
transaction locks end with the caller's transaction (a run is serialized until it commits).

The daemon's lock keeps its original two-key form (namespace, hashtext(contract)): a daemon of
an earlier release, still running during an upgrade, holds the same lock, so the two still
exclude each other. PostgreSQL keeps two-key and one-key (bigint) locks apart, so it cannot
collide with the keys of `advisory_lock_key`.
"""

from __future__ import annotations

import hashlib

import psycopg2.extensions

from ..domain.contracts import ContractId
from ..domain.series import SeriesId
from ..domain.timeframes import Timeframe
from .trend_signals import check_timeframe, validate_analyzer_id

DAEMON_LOCK_NAMESPACE = 0x50584947  # "PXIG"


def advisory_lock_key(*parts: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock / pg_advisory_xact_lock from text parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def try_lock_contract(conn: psycopg2.extensions.connection, contract_id: str) -> bool:
    """Take the session lock "one ingestion daemon per contract"; False when another session holds it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (DAEMON_LOCK_NAMESPACE, ContractId(contract_id)))
        return bool(cur.fetchone()[0])


def lock_analysis(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe) -> None:
    """Serialize analysis runs of one (analyzer, contract, timeframe) until the transaction ends."""
    _xact_lock(conn, "analysis", validate_analyzer_id(analyzer_id), SeriesId(contract_id), check_timeframe(tf).label)


def lock_coordination(conn: psycopg2.extensions.connection, contract_id: str) -> None:
    """Serialize coordination runs of one contract (and the analysis recomputes that rewind them)."""
    _xact_lock(conn, "coordination", SeriesId(contract_id))


def _xact_lock(conn: psycopg2.extensions.connection, *parts: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_lock_key(*parts),))
