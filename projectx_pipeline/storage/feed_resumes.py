"""`feed_resumes`: the points where a contract's live feed resumed and whose gap before them is
not repaired yet (see migration 0004). The ingest writer records them, the repairer reads and
forgets them.

Every function works inside the caller's transaction and never commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import psycopg2.extensions
import psycopg2.extras


def record_feed_resumes(conn: psycopg2.extensions.connection, resumes: Iterable[tuple[str, datetime]]) -> None:
    """Record (contract_id, resumed_at) pairs; a pair already recorded is kept as it is."""
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO feed_resumes (contract_id, resumed_at) VALUES %s ON CONFLICT DO NOTHING",
            sorted(set(resumes)),
        )


def oldest_unrepaired_resume(conn: psycopg2.extensions.connection, contract_id: str) -> datetime | None:
    """The earliest recorded resume point of `contract_id` whose gap is still to repair."""
    with conn.cursor() as cur:
        cur.execute("SELECT min(resumed_at) FROM feed_resumes WHERE contract_id = %s", (contract_id,))
        return cur.fetchone()[0]


def forget_feed_resumes(conn: psycopg2.extensions.connection, contract_id: str, repaired_until: datetime) -> int:
    """Forget the resume points a gap repair up to `repaired_until` has covered; returns how many."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM feed_resumes WHERE contract_id = %s AND resumed_at <= %s", (contract_id, repaired_until))
        return cur.rowcount
