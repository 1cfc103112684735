"""Storage against a real PostgreSQL server: migrations, both upsert modes, NOTIFY, constraints."""

from __future__ import annotations

import json
import select

import numpy as np
import pandas as pd
import psycopg2
import pytest

from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.storage.bars import last_bar_times, read_bars, upsert_bars
from projectx_pipeline.storage.db import connect
from projectx_pipeline.storage.migrate import available_migrations, migrate, timescaledb_active
from projectx_pipeline.storage.policies import apply_policies, enforce_trade_retention

from .support.database import run_concurrently, table_names
from .support.market import MES

TF5 = parse_timeframe("5m")


def _listen(url: str, channel: str):
    lconn = connect(url)
    lconn.autocommit = True
    with lconn.cursor() as cur:
        cur.execute(f"LISTEN {channel}")
    return lconn


def _drain(lconn, timeout: float = 2.0) -> list[str]:
    payloads: list[str] = []
    while select.select([lconn], [], [], timeout) != ([], [], []):
        lconn.poll()
        while lconn.notifies:
            payloads.append(lconn.notifies.pop(0).payload)
        timeout = 0.2
    return payloads


def _empty_database(db_server, name: str) -> str:
    """The URL of database `name`, dropped if it was there and created empty (no migration)."""
    url = db_server.admin_url.rsplit("/", 1)[0] + "/postgres"
    admin = connect(url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return url.rsplit("/", 1)[0] + f"/{name}"


# --------------------------------------------------------------------------- migrations


def test_migrations_from_empty_and_rerun(db_server):
    conn = connect(_empty_database(db_server, "mig_empty"))
    try:
        assert table_names(conn) == set()
        applied = migrate(conn)
        assert applied == [m.version for m in available_migrations()]
        assert {
            "ohlc_bars",
            "trades",
            "detected_signals",
            "analyzer_watermarks",
            "coordinator_watermarks",
            "coordinated_signals",
            "ingestion_heartbeats",
            "schema_migrations",
            "bar_repairs",
            "bar_revisions",
        } <= table_names(conn)
        assert migrate(conn) == []  # re-run: nothing to do
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [r[0] for r in cur.fetchall()] == applied
    finally:
        conn.close()


def test_concurrent_migrators_apply_each_migration_once(db_server):
    target = _empty_database(db_server, "mig_race")
    results, errors = run_concurrently(target, 4, migrate)
    assert errors == []
    all_versions = [m.version for m in available_migrations()]
    assert sorted(v for r in results for v in r) == all_versions  # each applied exactly once
    assert sum(1 for r in results if r) == 1


def test_storage_mode_reported(conn):
    # Plain PostgreSQL here (TimescaleDB is not installable on these machines); a TimescaleDB
    # server given as PROJECTX_TEST_DATABASE_URL takes the other branch of the same code.
    mode = apply_policies(conn, trades_retention_days=30, bars_compress_after_days=7)
    assert mode == ("timescaledb" if timescaledb_active(conn) else "postgresql")


# --------------------------------------------------------------------------- upserts


def test_keep_existing_inserts_then_keeps(conn, sample_5m):
    bars = sample_5m.iloc[:500]
    r1 = upsert_bars(conn, bars, mode="keep", source="history")
    assert (r1.rows, r1.inserted, r1.revised) == (500, 500, 0)
    changed = bars.copy()
    changed.loc[:, "volume"] += 1
    r2 = upsert_bars(conn, changed, mode="keep", source="live")
    assert (r2.inserted, r2.revised, r2.unchanged) == (0, 0, 500)
    stored = read_bars(conn, MES, TF5)
    pd.testing.assert_frame_equal(stored, bars.reset_index(drop=True))


def test_replace_when_different_counts_revisions_and_partial_overlap(conn, sample_5m):
    upsert_bars(conn, sample_5m.iloc[:300], mode="keep", source="live")
    # overlap rows 200..399: 100 stored (5 of them changed) and 100 new
    batch = sample_5m.iloc[200:400].copy()
    idx = batch.index[:5]
    batch.loc[idx, "close"] = batch.loc[idx, "low"]
    batch.loc[idx, "volume"] += 7
    r = upsert_bars(conn, batch, mode="replace", source="history")
    conn.commit()  # storage never commits: the caller does
    assert (r.rows, r.inserted, r.revised, r.unchanged) == (200, 100, 5, 95)
    stored = read_bars(conn, MES, TF5, with_source=True)
    assert len(stored) == 400
    expected = pd.concat([sample_5m.iloc[:200], batch]).reset_index(drop=True)
    pd.testing.assert_frame_equal(stored.drop(columns="source"), expected)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ohlc_bars WHERE revisions = 1")
        assert cur.fetchone()[0] == 5
    conn.rollback()
    # replaying the same batch changes nothing
    r2 = upsert_bars(conn, batch, mode="replace", source="history")
    assert (r2.inserted, r2.revised, r2.unchanged) == (0, 0, 200)


def test_prices_round_trip_exactly(conn):
    ts = pd.Timestamp("2025-03-17T14:00:00Z")
    prices = [5719.25, 0.1 + 0.2, 1e-9 + 1234.5, 98765.4321, 1 / 3]
    rows = [
        {
            "contract_id": MES,
            "timestamp": ts + pd.Timedelta(minutes=5 * i),
            "open": p,
            "high": p,
            "low": p,
            "close": p,
            "volume": 2**40 + i,
            "timeframe_unit": 2,
            "timeframe_value": 5,
        }
        for i, p in enumerate(prices)
    ]
    df = pd.DataFrame(rows)
    upsert_bars(conn, df, mode="keep", source="live")
    stored = read_bars(conn, MES, TF5)
    assert stored["close"].tolist() == prices  # exact float equality, not approximate
    assert stored["volume"].tolist() == [2**40 + i for i in range(len(prices))]


def test_invalid_bar_rejects_whole_batch_with_clear_error(conn, sample_5m):
    batch = sample_5m.iloc[:50].copy()
    batch.loc[batch.index[10], "high"] = batch.loc[batch.index[10], "low"] - 1  # high < low
    with pytest.raises(psycopg2.errors.CheckViolation) as exc:
        upsert_bars(conn, batch, mode="keep", source="live")
    conn.rollback()  # the caller ends the failed transaction
    # the message names the violated rule and the offending bar (row 10 starts 22:50)
    assert 'violates check constraint "ohlc_bars_' in str(exc.value)
    assert "2025-03-16 22:50:00+00" in str(exc.value)
    assert read_bars(conn, MES, TF5).empty  # nothing of that batch stored

    negative = sample_5m.iloc[:3].copy()
    negative.loc[negative.index[1], "volume"] = -1
    with pytest.raises(psycopg2.errors.CheckViolation, match="ohlc_bars_volume_non_negative"):
        upsert_bars(conn, negative, mode="replace", source="history")
    conn.rollback()
    nan = sample_5m.iloc[:3].copy()
    nan.loc[nan.index[2], "open"] = np.nan
    with pytest.raises(psycopg2.errors.CheckViolation, match="ohlc_bars_finite_prices"):
        upsert_bars(conn, nan, mode="keep", source="live")
    conn.rollback()
    assert read_bars(conn, MES, TF5).empty


@pytest.mark.parametrize(
    "bad_id",
    ["CON.F.US.MES.M25'; DROP TABLE ohlc_bars; --", "CON.F.US.MES.M25 OR 1=1", "../../etc/passwd", "", "con.f.us.mes.m25", "CON.F.US.MES.M2"],
)
def test_injection_shaped_contract_ids_are_rejected(conn, sample_5m, bad_id):
    batch = sample_5m.iloc[:2].copy()
    batch["contract_id"] = bad_id
    with pytest.raises(DomainError, match="invalid contract id"):
        upsert_bars(conn, batch, mode="keep", source="live")
    with pytest.raises(DomainError):
        read_bars(conn, bad_id, TF5)
    assert "ohlc_bars" in table_names(conn)


def test_bad_mode_and_duplicate_keys_are_rejected(conn, sample_5m):
    with pytest.raises(ValueError, match="invalid upsert mode 'merge'"):
        upsert_bars(conn, sample_5m.iloc[:2], mode="merge", source="live")
    dup = pd.concat([sample_5m.iloc[:2], sample_5m.iloc[1:2]])
    with pytest.raises(ValueError, match="duplicate key"):
        upsert_bars(conn, dup, mode="keep", source="live")


def test_last_bar_times(conn, sample_5m):
    assert last_bar_times(conn, MES, [TF5]) == {TF5: None}
    upsert_bars(conn, sample_5m.iloc[:10], mode="keep", source="live")
    assert last_bar_times(conn, MES, [TF5])[TF5] == sample_5m["timestamp"].iloc[9].to_pydatetime()


# --------------------------------------------------------------------------- NOTIFY


def test_notify_received_by_listen_connection_with_payloads(db_url, conn, sample_5m):
    listener = _listen(db_url, "ohlc_update")
    try:
        batch = sample_5m.iloc[:3]
        upsert_bars(conn, batch, mode="keep", source="live")
        conn.commit()  # listeners hear of the bars when the caller commits
        payloads = _drain(listener)
        assert len(payloads) == 1
        bars = json.loads(payloads[0])
        assert [b["timestamp"] for b in bars] == ["2025-03-16T22:00:00+00:00", "2025-03-16T22:05:00+00:00", "2025-03-16T22:10:00+00:00"]
        first = bars[0]
        assert first == {
            "contract_id": MES,
            "timeframe": "5m",
            "timestamp": "2025-03-16T22:00:00+00:00",
            "open": 5679.75,
            "high": 5684.0,
            "low": 5675.25,
            "close": 5678.25,
            "volume": 2177,
        }
        # unchanged bars are not announced again
        upsert_bars(conn, batch, mode="keep", source="live")
        conn.commit()
        assert _drain(listener, timeout=0.5) == []
    finally:
        listener.close()


def test_notify_splits_a_large_batch_under_8000_bytes(db_url, conn, sample_5m):
    listener = _listen(db_url, "ohlc_update")
    try:
        batch = sample_5m.iloc[:1000].copy()
        # worst-case float text: every price with 17 significant digits
        batch.loc[:, ["open", "high", "low", "close"]] = 1234.5678901234567
        batch["volume"] = 9_223_372_036_854_775_807 // 4
        r = upsert_bars(conn, batch, mode="keep", source="live")
        conn.commit()
        assert r.inserted == 1000
        payloads = _drain(listener)
        assert len(payloads) == r.notified > 1
        assert all(len(p.encode()) < 8000 for p in payloads)
        announced = [b["timestamp"] for p in payloads for b in json.loads(p)]
        assert len(announced) == 1000 == len(set(announced))
    finally:
        listener.close()


def test_nothing_is_notified_when_the_batch_fails(db_url, conn, sample_5m):
    listener = _listen(db_url, "ohlc_update")
    try:
        batch = sample_5m.iloc[:5].copy()
        batch.loc[batch.index[4], "low"] = batch.loc[batch.index[4], "high"] + 1
        with pytest.raises(psycopg2.errors.CheckViolation):
            upsert_bars(conn, batch, mode="keep", source="live")
        assert _drain(listener, timeout=0.5) == []
    finally:
        listener.close()


# --------------------------------------------------------------------------- retention


def test_plain_postgres_trade_retention(conn):
    now = pd.Timestamp("2025-05-01T00:00:00Z").to_pydatetime()
    with conn.cursor() as cur:
        for days in (1, 29, 31, 90):
            cur.execute(
                'INSERT INTO trades (contract_id, "timestamp", price, size, side, received_at) VALUES (%s, %s, 1.0, 1, 0, %s)',
                (MES, now - pd.Timedelta(days=days), now),
            )
    conn.commit()
    deleted = enforce_trade_retention(conn, trades_retention_days=30, now=now)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trades")
        remaining = cur.fetchone()[0]
    conn.rollback()
    if timescaledb_active(conn):
        assert deleted == 0  # TimescaleDB's retention policy does this job
    else:
        assert (deleted, remaining) == (2, 2)


def test_replace_records_the_overwritten_bar(conn, sample_5m):
    live = sample_5m.iloc[:3].copy()
    live.loc[live.index[1], "volume"] = 1
    upsert_bars(conn, live, mode="keep", source="live")
    upsert_bars(conn, sample_5m.iloc[:3], mode="replace", source="history")
    with conn.cursor() as cur:
        cur.execute('SELECT "timestamp", old_volume, old_source, new_volume, new_source FROM bar_revisions')
        rows = cur.fetchall()
    conn.rollback()
    assert len(rows) == 1
    ts, old_v, old_src, new_v, new_src = rows[0]
    assert pd.Timestamp(ts) == sample_5m["timestamp"].iloc[1]
    assert (old_v, old_src, new_v, new_src) == (1, "live", int(sample_5m["volume"].iloc[1]), "history")


def test_large_batches_take_the_copy_path_with_the_same_results(conn, sample_5m):
    from projectx_pipeline.storage.bars import SMALL_BATCH

    assert len(sample_5m) > SMALL_BATCH  # binary COPY + staged INSERT, not the array statement
    r1 = upsert_bars(conn, sample_5m, mode="keep", source="live")
    assert (r1.inserted, r1.revised) == (len(sample_5m), 0)
    changed = sample_5m.copy()
    changed.loc[changed.index[::100], "volume"] += 1
    r2 = upsert_bars(conn, changed, mode="replace", source="history")
    assert (r2.inserted, r2.revised) == (0, len(changed.index[::100]))
    pd.testing.assert_frame_equal(read_bars(conn, MES, TF5), changed.reset_index(drop=True))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bar_revisions")
        assert cur.fetchone()[0] == len(changed.index[::100])
    conn.rollback()


def test_autocommit_connections_write_atomically(db_url, sample_5m):
    c = connect(db_url)
    c.autocommit = True
    try:
        small, large = sample_5m.iloc[:10], sample_5m.iloc[10:]
        assert upsert_bars(c, small, mode="keep", source="live").inserted == 10
        assert upsert_bars(c, large, mode="keep", source="live").inserted == len(large)
        assert c.autocommit  # restored after the COPY path's own transaction
        bad = sample_5m.iloc[:5].copy()
        bad["timestamp"] += pd.Timedelta(days=365)
        bad.loc[bad.index[3], "high"] = bad.loc[bad.index[3], "low"] - 1
        with pytest.raises(psycopg2.errors.CheckViolation):
            upsert_bars(c, bad, mode="keep", source="live")
        assert len(read_bars(c, MES, TF5)) == len(sample_5m)  # nothing of the bad batch
    finally:
        c.close()
