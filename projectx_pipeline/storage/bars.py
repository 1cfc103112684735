"""The bar write path and bar reads.

Writes go through COPY into a session-temporary staging table and one `INSERT … ON CONFLICT`,
in one of two explicit modes:

* ``keep``    — keep-existing: a bar already stored is left as it is (live bars, re-runs);
* ``replace`` — replace-when-different: a stored bar whose OHLCV differs is overwritten and
  counted as a revision (history repair, backfills).

The same statement sends ``NOTIFY ohlc_update`` for every bar it inserted or revised, as JSON
arrays small enough for PostgreSQL's 8000-byte payload limit, so listeners hear about exactly
the bars that changed and only once the transaction commits.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Literal

import numpy as np
import pandas as pd

from ..domain.market import BAR_COLUMNS, empty_bars, normalize_bars
from ..domain.timeframes import Timeframe, validate_contract_id

OHLC_CHANNEL = "ohlc_update"
# Bars per NOTIFY payload. A bar's JSON is at most ~290 bytes (22-char contract id, five
# 24-char floats, an ISO timestamp, the keys); 25 of them stay under 8000 bytes. Tested.
BARS_PER_NOTIFY = 25

UpsertMode = Literal["keep", "replace"]
_STAGE_COLUMNS = BAR_COLUMNS  # same order as the frame, so the COPY text is built column-wise


@dataclass(frozen=True)
class UpsertResult:
    rows: int
    inserted: int
    revised: int
    notified: int

    @property
    def unchanged(self) -> int:
        return self.rows - self.inserted - self.revised


def _validate_frame(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"bars frame lacks columns {missing}: expected {BAR_COLUMNS}")
    df = normalize_bars(df)
    for cid in df["contract_id"].unique():
        validate_contract_id(cid)
    if df.duplicated(["contract_id", "timeframe_unit", "timeframe_value", "timestamp"]).any():
        dup = df[df.duplicated(["contract_id", "timeframe_unit", "timeframe_value", "timestamp"], keep=False)].iloc[0]
        raise ValueError(f"bars frame has duplicate key {dup['contract_id']} {dup['timeframe_unit']}/{dup['timeframe_value']} {dup['timestamp']}: expected each bar once")
    return df


def _copy_text(df: pd.DataFrame, source: str) -> io.StringIO:
    # repr() of a float is the shortest string that round-trips, so prices are stored exactly.
    ts = df["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S.%f+00").to_numpy()
    cols = [
        df["contract_id"].to_numpy(),
        df["timeframe_unit"].to_numpy(),
        df["timeframe_value"].to_numpy(),
        ts,
        *(np.array([repr(x) for x in df[c].to_numpy().tolist()], dtype=object) for c in ("open", "high", "low", "close")),
        df["volume"].to_numpy(),
    ]
    lines = "\n".join("\t".join(map(str, row)) + f"\t{source}" for row in zip(*cols))
    return io.StringIO(lines + "\n" if lines else "")


_TF_LABEL_SQL = (
    "w.timeframe_value::text || CASE w.timeframe_unit WHEN 1 THEN 's' WHEN 2 THEN 'm' WHEN 3 THEN 'h'"
    " WHEN 4 THEN 'd' WHEN 5 THEN 'w' ELSE 'mo' END"
)

_UPSERT_SQL = {
    "keep": """
        INSERT INTO ohlc_bars AS b (contract_id, timeframe_unit, timeframe_value, "timestamp",
                                    open, high, low, close, volume, source)
        SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source
        FROM _bars_stage
        ON CONFLICT (contract_id, timeframe_unit, timeframe_value, "timestamp") DO NOTHING
        RETURNING b.*, true AS inserted""",
    "replace": """
        INSERT INTO ohlc_bars AS b (contract_id, timeframe_unit, timeframe_value, "timestamp",
                                    open, high, low, close, volume, source)
        SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source
        FROM _bars_stage
        ON CONFLICT (contract_id, timeframe_unit, timeframe_value, "timestamp") DO UPDATE
            SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
                volume = EXCLUDED.volume, source = EXCLUDED.source, ingested_at = now(),
                revisions = b.revisions + 1
            WHERE (b.open, b.high, b.low, b.close, b.volume)
                  IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)
        RETURNING b.*, (xmax = 0) AS inserted""",
}


# Replace mode also records the overwritten bars. Every CTE reads the same snapshot, so
# `previous` sees the values from before the INSERT's update.
_AUDIT_SQL = """
        , previous AS (
            SELECT b.*, s.open AS n_open, s.high AS n_high, s.low AS n_low, s.close AS n_close,
                   s.volume AS n_volume, s.source AS n_source
            FROM ohlc_bars b
            JOIN _bars_stage s USING (contract_id, timeframe_unit, timeframe_value, "timestamp")
            WHERE (b.open, b.high, b.low, b.close, b.volume) IS DISTINCT FROM (s.open, s.high, s.low, s.close, s.volume))
        , audit AS (
            INSERT INTO bar_revisions (contract_id, timeframe_unit, timeframe_value, "timestamp",
                old_open, old_high, old_low, old_close, old_volume, old_source,
                new_open, new_high, new_low, new_close, new_volume, new_source)
            SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source,
                   n_open, n_high, n_low, n_close, n_volume, n_source
            FROM previous)"""


def _statement(mode: UpsertMode, notify: bool) -> str:
    notify_sql = f"""
        , chunks AS (
            SELECT (row_number() OVER (ORDER BY w.contract_id, w.timeframe_unit, w.timeframe_value, w."timestamp") - 1)
                       / {BARS_PER_NOTIFY} AS chunk,
                   json_build_object('contract_id', w.contract_id, 'timeframe', {_TF_LABEL_SQL},
                                     'timestamp', w."timestamp", 'open', w.open, 'high', w.high,
                                     'low', w.low, 'close', w.close, 'volume', w.volume) AS bar
            FROM written w)
        , notified AS (
            SELECT pg_notify('{OHLC_CHANNEL}', json_agg(bar)::text) FROM chunks GROUP BY chunk)"""
    return f"""
        WITH written AS ({_UPSERT_SQL[mode]}) {_AUDIT_SQL if mode == "replace" else ""} {notify_sql if notify else ""}
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
               {'(SELECT count(*) FROM notified)' if notify else '0'}
        FROM written"""


def _ensure_stage(cur) -> None:
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _bars_stage ("
        " contract_id text, timeframe_unit smallint, timeframe_value integer, \"timestamp\" timestamptz,"
        " open double precision, high double precision, low double precision, close double precision,"
        " volume bigint, source text) ON COMMIT DELETE ROWS"
    )


def upsert_bars(conn, bars: pd.DataFrame, *, mode: UpsertMode, source: Literal["live", "history"], notify: bool = True, commit: bool = True) -> UpsertResult:
    """Write bars in one transaction (COPY → staging → one INSERT … ON CONFLICT) and NOTIFY them.

    A bar that violates a CHECK constraint aborts the whole batch: nothing of it is stored, and
    the error names the constraint. Returns how many rows were inserted and revised."""
    if mode not in _UPSERT_SQL:
        raise ValueError(f"invalid upsert mode {mode!r}: expected 'keep' or 'replace'")
    if source not in ("live", "history"):
        raise ValueError(f"invalid bar source {source!r}: expected 'live' or 'history'")
    df = _validate_frame(bars)
    if df.empty:
        return UpsertResult(0, 0, 0, 0)
    try:
        with conn.cursor() as cur:
            _ensure_stage(cur)
            cur.copy_expert(
                'COPY _bars_stage (contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source) FROM STDIN',
                _copy_text(df, source),
            )
            cur.execute(_statement(mode, notify))
            inserted, revised, notified = cur.fetchone()
        if commit:
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return UpsertResult(len(df), inserted, revised, notified)


_READ_COLUMNS = 'contract_id, "timestamp", open, high, low, close, volume, timeframe_unit, timeframe_value'


def read_bars(conn, contract_id: str, timeframe: Timeframe, start: datetime | None = None, end: datetime | None = None, *, with_source: bool = False) -> pd.DataFrame:
    """Stored bars of one contract and timeframe with start in [start, end), ascending."""
    validate_contract_id(contract_id)
    sql = f"SELECT {_READ_COLUMNS}{', source' if with_source else ''} FROM ohlc_bars WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s"
    params: list = [contract_id, timeframe.unit, timeframe.value]
    if start is not None:
        sql += ' AND "timestamp" >= %s'
        params.append(start)
    if end is not None:
        sql += ' AND "timestamp" < %s'
        params.append(end)
    sql += ' ORDER BY "timestamp"'
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.rollback()  # end the read transaction: never hold a snapshot open
    if not rows:
        out = empty_bars()
        if with_source:
            out["source"] = pd.Series(dtype=object)
        return out
    cols = BAR_COLUMNS + (["source"] if with_source else [])
    df = pd.DataFrame(rows, columns=cols)
    extra = df["source"] if with_source else None
    out = normalize_bars(df)
    if with_source:
        out["source"] = extra.to_numpy()
    return out


def last_bar_times(conn, contract_id: str, timeframes: Iterable[Timeframe]) -> dict[Timeframe, datetime | None]:
    """Start of the newest stored bar per timeframe (None when there is none)."""
    validate_contract_id(contract_id)
    out: dict[Timeframe, datetime | None] = {}
    with conn.cursor() as cur:
        for tf in timeframes:
            cur.execute(
                'SELECT max("timestamp") FROM ohlc_bars WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s',
                (contract_id, tf.unit, tf.value),
            )
            out[tf] = cur.fetchone()[0]
    conn.rollback()
    return out


def read_live_versions(conn, contract_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The bars the live daemon built in [start, end), every timeframe: the stored bar when it is
    still the live one, else the live values a history replace overwrote (from bar_revisions)."""
    validate_contract_id(contract_id)
    sql = f"""
        SELECT {_READ_COLUMNS} FROM ohlc_bars
        WHERE contract_id = %(c)s AND "timestamp" >= %(s)s AND "timestamp" < %(e)s AND source = 'live'
        UNION ALL
        SELECT DISTINCT ON (timeframe_unit, timeframe_value, "timestamp")
               contract_id, "timestamp", old_open, old_high, old_low, old_close, old_volume, timeframe_unit, timeframe_value
        FROM bar_revisions
        WHERE contract_id = %(c)s AND "timestamp" >= %(s)s AND "timestamp" < %(e)s AND old_source = 'live'
        ORDER BY 8, 9, 2"""
    with conn.cursor() as cur:
        cur.execute(sql, {"c": contract_id, "s": start, "e": end})
        rows = cur.fetchall()
    conn.rollback()
    if not rows:
        return empty_bars()
    return normalize_bars(pd.DataFrame(rows, columns=BAR_COLUMNS))
