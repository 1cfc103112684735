"""The storage features of each backend, asserted on the server the suite runs against.

CI runs the whole suite twice: on plain PostgreSQL and on TimescaleDB (PROJECTX_PG_BINDIR points
the ephemeral server at a TimescaleDB build, PROJECTX_EXPECT_TIMESCALEDB says which pass it is).
Every test here asserts the behaviour of the backend it finds: hypertables, columnstore chunks
that still take upserts and revisions, and retention and compression jobs that really run on
TimescaleDB; BRIN indexes and the platform's own retention on plain PostgreSQL.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pandas as pd

from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.storage.bars import read_bars, upsert_bars
from projectx_pipeline.storage.migrate import available_migrations, migrate, timescaledb_active
from projectx_pipeline.storage.policies import apply_policies, enforce_trade_retention, has_columnstore_api

from .support.market import MES, VALUES

TF5 = parse_timeframe("5m")


def _all(conn, sql, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def _one(conn, sql, params=()):
    rows = _all(conn, sql, params)
    return rows[0] if rows else None


def _compressed_chunks(conn, table: str) -> tuple[int, int]:
    """(compressed, total) chunks of a hypertable."""
    return _one(
        conn, "SELECT count(*) FILTER (WHERE is_compressed), count(*) FROM timescaledb_information.chunks WHERE hypertable_name = %s", (table,)
    )


def test_the_suite_runs_on_the_backend_it_was_asked_for(conn):
    expected = os.environ.get("PROJECTX_EXPECT_TIMESCALEDB")
    version = timescaledb_active(conn)
    if expected is not None:
        assert bool(version) == (expected == "1"), (
            f"PROJECTX_EXPECT_TIMESCALEDB={expected!r} but the test server runs {'TimescaleDB ' + version if version else 'plain PostgreSQL'}"
        )
    if version:
        hypertables = {r[0] for r in _all(conn, "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert hypertables == {"ohlc_bars", "trades"}
        settings = (
            {
                (r[0], r[1], r[2])
                for r in _all(conn, "SELECT hypertable::text, segmentby, orderby FROM timescaledb_information.hypertable_columnstore_settings")
            }
            if has_columnstore_api(version)
            else None
        )
        if settings is not None:
            assert ("ohlc_bars", "contract_id,timeframe_unit,timeframe_value", '"timestamp"') in settings
            assert ("trades", "contract_id", '"timestamp"') in settings
    else:
        brin = {r[0] for r in _all(conn, "SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%%USING brin%%'")}
        assert {"ohlc_bars_timestamp_brin", "trades_timestamp_brin"} <= brin
        assert _one(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")[0] == 0


def test_upserts_and_revisions_land_in_columnstore_chunks(conn, sample_5m):
    """Bars already in compressed (columnstore) chunks: keep-existing leaves them, replace revises
    them and keeps the old values, new bars in the same range are inserted; on plain PostgreSQL
    the same writes behave the same, without chunks."""
    stored = sample_5m.iloc[:2000:2]  # every other bar: the gaps are inserted later
    upsert_bars(conn, stored, mode="keep", source="history")
    conn.commit()  # storage never commits: the caller does
    version = timescaledb_active(conn)
    if version:
        chunks = [r[0] for r in _all(conn, "SELECT c::text FROM show_chunks('ohlc_bars') c")]
        with conn.cursor() as cur:
            for chunk in chunks:
                if has_columnstore_api(version):  # a procedure from 2.18 on
                    cur.execute("CALL convert_to_columnstore(%s::regclass)", (chunk,))
                else:
                    cur.execute("SELECT compress_chunk(%s::regclass)", (chunk,))
        conn.commit()
        compressed, total = _compressed_chunks(conn, "ohlc_bars")
        assert total >= 2 and compressed == total

    changed = stored.copy()
    changed.loc[:, "volume"] += 7
    kept = upsert_bars(conn, changed, mode="keep", source="live")
    conn.commit()
    assert (kept.inserted, kept.revised, kept.unchanged) == (0, 0, len(stored))
    assert read_bars(conn, MES, TF5)[VALUES].equals(stored[VALUES].reset_index(drop=True))

    revised = upsert_bars(conn, changed.iloc[:100], mode="replace", source="history")
    conn.commit()
    assert (revised.inserted, revised.revised) == (0, 100)
    assert _one(conn, "SELECT count(*), min(new_volume - old_volume), max(new_volume - old_volume) FROM bar_revisions") == (100, 7, 7)

    gaps = sample_5m.iloc[1:2000:2]
    filled = upsert_bars(conn, gaps, mode="replace", source="history")
    conn.commit()
    assert (filled.inserted, filled.revised) == (len(gaps), 0)
    want = pd.concat([changed.iloc[:100], stored.iloc[100:], gaps]).sort_values("timestamp").reset_index(drop=True)
    got = read_bars(conn, MES, TF5)
    assert len(got) == 2000 and got[VALUES].equals(want[VALUES])
    assert _one(conn, 'SELECT count(*) - count(DISTINCT "timestamp") FROM ohlc_bars')[0] == 0
    assert _one(conn, "SELECT sum(revisions) FROM ohlc_bars")[0] == 100


def _insert_trades(conn, now: datetime, ages_days: list[int]) -> None:
    with conn.cursor() as cur:
        for days in ages_days:
            cur.execute(
                'INSERT INTO trades (contract_id, "timestamp", price, size, side, received_at) VALUES (%s, %s, 5000.25, 1, 0, %s)',
                (MES, now - timedelta(days=days), now),
            )
    conn.commit()


def _job_id(conn, proc: str, table: str) -> int:
    row = _one(conn, "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = %s AND hypertable_name = %s", (proc, table))
    assert row is not None, f"no {proc} job on {table}"
    return row[0]


def test_retention_and_compression_jobs_run(conn, sample_5m):
    """The policies the services apply at start do their work when their jobs run: trades past
    the retention are gone, old bar chunks are compressed. Plain PostgreSQL: the platform's own
    retention deletes the same trades."""
    now = datetime.now(timezone.utc)
    _insert_trades(conn, now, [1, 29, 31, 90])
    upsert_bars(conn, sample_5m.iloc[:3000], mode="keep", source="history")  # 2025: long past 7 days
    mode = apply_policies(conn, trades_retention_days=30, bars_compress_after_days=7)
    conn.commit()  # storage never commits: the caller does
    version = timescaledb_active(conn)
    assert mode == ("timescaledb" if version else "postgresql")
    if version:
        assert apply_policies(conn, trades_retention_days=30, bars_compress_after_days=7) == "timescaledb"  # idempotent
        conn.commit()
        compress_proc = "policy_compression"
        jobs = _all(conn, "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")
        assert sorted(jobs) == sorted([("policy_retention", "trades"), (compress_proc, "ohlc_bars"), (compress_proc, "trades")])
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CALL run_job(%s)", (_job_id(conn, "policy_retention", "trades"),))
            cur.execute("CALL run_job(%s)", (_job_id(conn, compress_proc, "ohlc_bars"),))
        conn.autocommit = False
        compressed, total = _compressed_chunks(conn, "ohlc_bars")
        assert total >= 2 and compressed == total
        assert len(read_bars(conn, MES, TF5)) == 3000  # compressed bars read back whole
        assert enforce_trade_retention(conn, trades_retention_days=30) == 0  # TimescaleDB's job did it
    else:
        assert enforce_trade_retention(conn, trades_retention_days=30) == 2
    ages = sorted(round((now - r[0]).total_seconds() / 86400) for r in _all(conn, 'SELECT "timestamp" FROM trades'))
    assert ages == [1, 29]


def test_a_migration_recorded_with_an_equivalent_earlier_text_is_not_reported_as_edited(conn, caplog):
    """0002 moved to the columnstore API; a database that recorded the earlier text migrates
    quietly, while any other checksum mismatch is still reported."""
    from projectx_pipeline.storage.migrate import EQUIVALENT_CHECKSUMS

    with conn.cursor() as cur:
        cur.execute("UPDATE schema_migrations SET checksum = %s WHERE version = 2", (next(iter(EQUIVALENT_CHECKSUMS[2])),))
        cur.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 3")
    conn.commit()
    with caplog.at_level("WARNING", logger="projectx.storage"):
        assert migrate(conn) == []
    changed = [r.getMessage() for r in caplog.records if "migration_changed" in r.getMessage()]
    assert len(changed) == 1 and "version=3" in changed[0], changed
    assert [m.version for m in available_migrations()][:3] == [1, 2, 3]
