"""Versioned SQL migrations: applied in order, each in its own transaction, recorded in
`schema_migrations`, safe to re-run and safe when several processes migrate at once."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2.extensions

from ..logs import get_logger, kv

log = get_logger("projectx.storage")

# Any constant works as long as every migrator uses the same one: it serialises them.
MIGRATION_LOCK_KEY = 0x70726F6A78  # "projx"
# Earlier texts of a migration that may be recorded as applied and mean the same schema: 0002
# moved its TimescaleDB branch from the deprecated compression API to the columnstore API
# (same segment-by and order-by), and on plain PostgreSQL it does nothing either way.
EQUIVALENT_CHECKSUMS = {
    2: {"646b9be4bd558a8f75bb096b82aeddf62eec867ce96a36e3e9e893283dea3b75"},
}
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("projectx_pipeline.storage").joinpath("migrations").iterdir():
        m = _NAME_RE.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


def migrate(conn) -> list[int]:
    """Apply every pending migration; returns the versions applied now. Idempotent."""
    conn.autocommit = True
    applied_now: list[int] = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version, checksum FROM schema_migrations")
            done = dict(cur.fetchall())
        conn.commit()
        for mig in available_migrations():
            if mig.version in done:
                if done[mig.version] != mig.checksum and done[mig.version] not in EQUIVALENT_CHECKSUMS.get(mig.version, ()):
                    log.warning(kv("migration_changed", version=mig.version, name=mig.name, hint="applied migrations must not be edited"))
                continue
            with conn.cursor() as cur:
                cur.execute(mig.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
            conn.commit()
            applied_now.append(mig.version)
            log.info(kv("migration_applied", version=mig.version, name=mig.name))
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        conn.autocommit = False
    return applied_now


def timescaledb_active(conn: psycopg2.extensions.connection) -> str | None:
    """The installed TimescaleDB version, or None on plain PostgreSQL (in the caller's transaction)."""
    with conn.cursor() as cur:
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        row = cur.fetchone()
    return row[0] if row else None
