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
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Literal

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors

from ..domain.market import BAR_COLUMNS, empty_bars, normalize_bars
from ..domain.timeframes import Timeframe, validate_contract_id

OHLC_CHANNEL = "ohlc_update"
# Bars per NOTIFY payload. A bar's JSON is at most ~290 bytes (22-char contract id, five
# 24-char floats, an ISO timestamp, the keys); 25 of them stay under 8000 bytes. Tested.
BARS_PER_NOTIFY = 25

UpsertMode = Literal["keep", "replace"]
_STAGE_COLS_SQL = 'contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source'
_CANONICAL_DTYPES = {
    "timestamp": "datetime64[ns, UTC]", "open": "float64", "high": "float64", "low": "float64",
    "close": "float64", "volume": "int64", "timeframe_unit": "int64", "timeframe_value": "int64",
}


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
    # frames from the aggregator or read_bars are already canonical: skip the (slow, for the
    # handful of bars a live close writes) coercion
    if any(str(df[c].dtype) != t for c, t in _CANONICAL_DTYPES.items()):
        df = normalize_bars(df)
    contracts = pd.unique(df["contract_id"])
    for cid in contracts:
        validate_contract_id(cid)
    key = np.empty(len(df), dtype=[("c", np.int64), ("u", np.int64), ("v", np.int64), ("t", np.int64)])
    key["c"] = pd.Index(contracts).get_indexer(df["contract_id"]) if len(contracts) > 1 else 0
    key["u"], key["v"] = df["timeframe_unit"].to_numpy(), df["timeframe_value"].to_numpy()
    key["t"] = df["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if len(np.unique(key)) != len(key):
        dup = df[df.duplicated(["contract_id", "timeframe_unit", "timeframe_value", "timestamp"], keep=False)].iloc[0]
        raise ValueError(f"bars frame has duplicate key {dup['contract_id']} {dup['timeframe_unit']}/{dup['timeframe_value']} {dup['timestamp']}: expected each bar once")
    return df


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since 1970: PostgreSQL's timestamp zero


def _copy_binary(df: pd.DataFrame, source: str) -> io.BytesIO:
    """PostgreSQL's binary COPY format, built with one numpy record array per contract: no
    per-value Python work, and floats travel as IEEE bits, so prices are stored exactly."""
    parts = [_COPY_HEADER]
    src = source.encode()
    for cid in pd.unique(df["contract_id"]):
        part = df[df["contract_id"] == cid] if df["contract_id"].iloc[0] != cid or len(pd.unique(df["contract_id"])) > 1 else df
        c = cid.encode()
        fields = [("n", ">i2"), ("lc", ">i4"), ("c", f"S{len(c)}"), ("lu", ">i4"), ("u", ">i2"), ("lv", ">i4"), ("v", ">i4"),
                  ("lt", ">i4"), ("t", ">i8")]
        fields += [(f, ">f8") if i % 2 else (f"l{f}", ">i4") for f in ("o", "h", "l", "cl") for i in (0, 1)]
        fields += [("lvol", ">i4"), ("vol", ">i8"), ("ls", ">i4"), ("s", f"S{len(src)}")]
        rec = np.empty(len(part), dtype=np.dtype(fields))
        rec["n"], rec["lc"], rec["c"], rec["lu"], rec["lv"], rec["lt"] = 10, len(c), c, 2, 4, 8
        rec["u"], rec["v"] = part["timeframe_unit"].to_numpy(), part["timeframe_value"].to_numpy()
        rec["t"] = part["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64) // 1000 - _PG_EPOCH_US
        for f, col in (("o", "open"), ("h", "high"), ("l", "low"), ("cl", "close")):
            rec[f"l{f}"], rec[f] = 8, part[col].to_numpy()
        rec["lvol"], rec["vol"], rec["ls"], rec["s"] = 8, part["volume"].to_numpy(), len(src), src
        parts.append(rec.tobytes())
    parts.append(_COPY_TRAILER)
    return io.BytesIO(b"".join(parts))


_TF_LABEL_SQL = (
    "w.timeframe_value::text || CASE w.timeframe_unit WHEN 1 THEN 's' WHEN 2 THEN 'm' WHEN 3 THEN 'h'"
    " WHEN 4 THEN 'd' WHEN 5 THEN 'w' ELSE 'mo' END"
)

_UPSERT_SQL = {
    "keep": """
        INSERT INTO ohlc_bars AS b (contract_id, timeframe_unit, timeframe_value, "timestamp",
                                    open, high, low, close, volume, source)
        SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source
        FROM {stage}
        ON CONFLICT (contract_id, timeframe_unit, timeframe_value, "timestamp") DO NOTHING
        RETURNING b.*, true AS inserted""",
    "replace": """
        INSERT INTO ohlc_bars AS b (contract_id, timeframe_unit, timeframe_value, "timestamp",
                                    open, high, low, close, volume, source)
        SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source
        FROM {stage}
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
            JOIN {stage} s USING (contract_id, timeframe_unit, timeframe_value, "timestamp")
            WHERE (b.open, b.high, b.low, b.close, b.volume) IS DISTINCT FROM (s.open, s.high, s.low, s.close, s.volume))
        , audit AS (
            INSERT INTO bar_revisions (contract_id, timeframe_unit, timeframe_value, "timestamp",
                old_open, old_high, old_low, old_close, old_volume, old_source,
                new_open, new_high, new_low, new_close, new_volume, new_source)
            SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source,
                   n_open, n_high, n_low, n_close, n_volume, n_source
            FROM previous)"""


# Small batches (a live bar close) skip COPY: the bars travel as arrays in one prepared
# statement, so an autocommit write is a single round trip.
SMALL_BATCH = 2000
_ARRAYS_PARAMS = "text[], smallint[], integer[], timestamptz[], float8[], float8[], float8[], float8[], bigint[], text[]"
_ARRAYS_STAGE = (
    "stage AS (SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    " AS u(contract_id, timeframe_unit, timeframe_value, \"timestamp\", open, high, low, close, volume, source))"
)


def _statement(mode: UpsertMode, notify: bool, arrays: bool) -> str:
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
    stage = "stage" if arrays else "_bars_stage"
    audit = _AUDIT_SQL.format(stage=stage) if mode == "replace" else ""
    return f"""
        WITH {_ARRAYS_STAGE + ',' if arrays else ''} written AS ({_UPSERT_SQL[mode].format(stage=stage)}) {audit} {notify_sql if notify else ""}
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
               {'(SELECT count(*) FROM notified)' if notify else '0'}
        FROM written"""


# Per session (keyed by the connection and its backend pid): the temporary stage table and the
# prepared upsert statements exist once, so a live write is COPY + EXECUTE, with no DDL or planning.
_prepared_sessions: dict[int, tuple[int, set[str]]] = {}


def _session_statements(conn) -> set[str]:
    pid = conn.info.backend_pid
    known = _prepared_sessions.get(id(conn))
    if known is None or known[0] != pid:
        with conn.cursor() as cur:
            # PREPARE outlives a rolled-back transaction but CREATE TEMP TABLE does not: start clean
            cur.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'projectx\\_upsert\\_%'")
            for (name,) in cur.fetchall():
                cur.execute(f"DEALLOCATE {name}")
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _bars_stage ("
                " contract_id text, timeframe_unit smallint, timeframe_value integer, \"timestamp\" timestamptz,"
                " open double precision, high double precision, low double precision, close double precision,"
                " volume bigint, source text) ON COMMIT DELETE ROWS"
            )
        known = (pid, set())
        _prepared_sessions[id(conn)] = known
    return known[1]


def _execute_upsert(cur, conn, mode: UpsertMode, notify: bool, arrays: list | None = None) -> tuple:
    name = f"projectx_upsert_{mode}{'_notify' if notify else ''}{'_arrays' if arrays is not None else ''}"
    prepared = _session_statements(conn)
    if name not in prepared:
        params = f"({_ARRAYS_PARAMS})" if arrays is not None else ""
        cur.execute(f"PREPARE {name}{params} AS {_statement(mode, notify, arrays is not None)}")
        prepared.add(name)
    if arrays is None:
        cur.execute(f"EXECUTE {name}")
    else:
        cur.execute(f"EXECUTE {name} ({', '.join(['%s'] * len(arrays))})", arrays)
    return cur.fetchone()


def _as_arrays(df: pd.DataFrame, source: str) -> list:
    return [
        df["contract_id"].tolist(), df["timeframe_unit"].tolist(), df["timeframe_value"].tolist(),
        df["timestamp"].dt.to_pydatetime().tolist(),
        *(df[c].tolist() for c in ("open", "high", "low", "close")),  # repr() on the wire: exact
        df["volume"].tolist(), [source] * len(df),
    ]


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
    arrays = _as_arrays(df, source) if len(df) <= SMALL_BATCH else None
    # COPY and the INSERT must share a transaction; a single-statement write in autocommit mode
    # is atomic on its own
    own_transaction = conn.autocommit and arrays is None
    if own_transaction:
        conn.autocommit = False
    try:
        for attempt in (1, 2):
            try:
                _session_statements(conn)
                with conn.cursor() as cur:
                    if arrays is None:
                        cur.copy_expert(f"COPY _bars_stage ({_STAGE_COLS_SQL}) FROM STDIN WITH (FORMAT binary)", _copy_binary(df, source))
                    inserted, revised, notified = _execute_upsert(cur, conn, mode, notify, arrays)
                if commit and not conn.autocommit:
                    conn.commit()
                break
            except (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSqlStatementName):
                # the session was replaced under the same connection object: prepare again, once
                if not conn.autocommit:
                    conn.rollback()
                _prepared_sessions.pop(id(conn), None)
                if attempt == 2:
                    raise
            except BaseException:
                if not conn.autocommit:
                    conn.rollback()
                _prepared_sessions.pop(id(conn), None)  # the stage may have been created in this transaction
                raise
    finally:
        if own_transaction:
            conn.autocommit = True
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
