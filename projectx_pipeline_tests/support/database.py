"""Reading the market database in a test: counts, the heartbeat, the repair queue."""

from __future__ import annotations

import threading

from projectx_pipeline.domain.timeframes import Timeframe
from projectx_pipeline.storage.db import connect

from .market import MES, TF_5M


def scalar(url: str, sql: str, params=()):
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def count_bars(url: str, tf: Timeframe | None = TF_5M) -> int:
    if tf is None:
        return scalar(url, "SELECT count(*) FROM ohlc_bars")
    return scalar(
        url, "SELECT count(*) FROM ohlc_bars WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s", (MES, tf.unit, tf.value)
    )


def assert_no_duplicates(url: str) -> None:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT count(*), count(DISTINCT (contract_id, timeframe_unit, timeframe_value, "timestamp")) FROM ohlc_bars')
            rows, distinct = cur.fetchone()
    finally:
        conn.close()
    assert rows == distinct, f"{rows - distinct} duplicate bars"


def table_names(conn) -> set[str]:
    """The tables of the public schema (the read is rolled back: `conn` is left idle)."""
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        names = {r[0] for r in cur.fetchall()}
    conn.rollback()
    return names


def repair_requests(url: str) -> list[tuple]:
    """The MES windows queued in `bar_repairs`: (timeframe unit, value, window start, reason)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT timeframe_unit, timeframe_value, window_start, reason FROM bar_repairs WHERE contract_id = %s", (MES,))
            return cur.fetchall()
    finally:
        conn.close()


def heartbeat(url: str) -> dict | None:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT instance_id, connection_state, counters, updated_at FROM ingestion_heartbeats WHERE contract_id = %s", (MES,))
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return {"instance": row[0], "state": row[1], "counters": row[2], "updated_at": row[3]}


def run_concurrently(url: str, n: int, work) -> tuple[list, list[BaseException]]:
    """`work(conn)` on `n` threads released at once by a barrier, each with its own connection
    to `url`; returns (the results, the exceptions raised), for the caller to assert on."""
    barrier = threading.Barrier(n)
    results: list = []
    errors: list[BaseException] = []

    def worker():
        c = connect(url)
        try:
            barrier.wait()
            results.append(work(c))
        except BaseException as exc:  # collected and asserted by the caller
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors
