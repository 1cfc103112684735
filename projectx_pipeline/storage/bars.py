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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from ..domain.contracts import ContractId
from ..domain.market import BAR_COLUMNS, empty_bars, normalize_bars
from ..domain.timeframes import Timeframe

OHLC_CHANNEL = "ohlc_update"
# Bars per NOTIFY payload. A bar's JSON is at most ~290 bytes (22-char contract id, five
# 24-char floats, an ISO timestamp, the keys); 25 of them stay under 8000 bytes. Tested.
BARS_PER_NOTIFY = 25

UpsertMode = Literal["keep", "replace"]
_STAGE_COLS_SQL = 'contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source'
_CANONICAL_DTYPES = {
    "timestamp": "datetime64[ns, UTC]",
    "open": "float64",
    "high": "float64",
    "low": "float64",
    "close": "float64",
    "volume": "int64",
    "timeframe_unit": "int64",
    "timeframe_value": "int64",
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
        ContractId(cid)
    key = np.empty(len(df), dtype=[("c", np.int64), ("u", np.int64), ("v", np.int64), ("t", np.int64)])
    key["c"] = pd.Index(contracts).get_indexer(df["contract_id"]) if len(contracts) > 1 else 0
    key["u"], key["v"] = df["timeframe_unit"].to_numpy(), df["timeframe_value"].to_numpy()
    key["t"] = df["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if len(np.unique(key)) != len(key):
        dup = df[df.duplicated(["contract_id", "timeframe_unit", "timeframe_value", "timestamp"], keep=False)].iloc[0]
        raise ValueError(
            f"bars frame has duplicate key {dup['contract_id']} {dup['timeframe_unit']}/{dup['timeframe_value']} {dup['timestamp']}: "
            "expected each bar once"
        )
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
        fields = [
            ("n", ">i2"),
            ("lc", ">i4"),
            ("c", f"S{len(c)}"),
            ("lu", ">i4"),
            ("u", ">i2"),
            ("lv", ">i4"),
            ("v", ">i4"),
            ("lt", ">i4"),
            ("t", ">i8"),
        ]
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
    "w.timeframe_value::text || CASE w.timeframe_unit WHEN 1 THEN 's' WHEN 2 THEN 'm' WHEN 3 THEN 'h' WHEN 4 THEN 'd' WHEN 5 THEN 'w' ELSE 'mo' END"
)

# Both modes insert every staged bar; they differ in what a conflict with a stored bar does.
_INSERT_STAGED_SQL = """
        INSERT INTO ohlc_bars AS b (contract_id, timeframe_unit, timeframe_value, "timestamp",
                                    open, high, low, close, volume, source)
        SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source
        FROM {stage}
        ON CONFLICT (contract_id, timeframe_unit, timeframe_value, "timestamp")"""

_UPSERT_SQL = {
    "keep": _INSERT_STAGED_SQL
    + """ DO NOTHING
        RETURNING b.*, true AS inserted""",
    "replace": _INSERT_STAGED_SQL
    + """ DO UPDATE
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
    ' AS u(contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source))'
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
        WITH {_ARRAYS_STAGE + "," if arrays else ""} written AS ({_UPSERT_SQL[mode].format(stage=stage)}) {audit} {notify_sql if notify else ""}
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
               {"(SELECT count(*) FROM notified)" if notify else "0"}
        FROM written"""


# The session's staging table for the COPY path. Not ON COMMIT DELETE ROWS: on an autocommit
# connection the COPY commits on its own, and the rows must still be there for the INSERT (the
# INSERT alone touches shared tables, so the write stays atomic). Emptied before every COPY, and
# created IF NOT EXISTS each time: a caller's rollback may have undone its creation.
_STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS _bars_stage ("
    ' contract_id text, timeframe_unit smallint, timeframe_value integer, "timestamp" timestamptz,'
    " open double precision, high double precision, low double precision, close double precision,"
    " volume bigint, source text); TRUNCATE _bars_stage"
)


def _as_arrays(df: pd.DataFrame, source: str) -> list:
    return [
        df["contract_id"].tolist(),
        df["timeframe_unit"].tolist(),
        df["timeframe_value"].tolist(),
        df["timestamp"].dt.to_pydatetime().tolist(),
        *(df[c].tolist() for c in ("open", "high", "low", "close")),  # repr() on the wire: exact
        df["volume"].tolist(),
        [source] * len(df),
    ]


class BarStore:
    """The bar write path of one connection: the upsert statements are prepared once per session
    and remembered here, so a live write is one EXECUTE (or COPY + EXECUTE), with no planning.

    Lives as long as the caller keeps it: create one per connection (a new one after a reconnect).
    Nothing outlives the connection, unlike a module-level cache keyed by connection.

    Works inside the caller's transaction and never commits or rolls back (see `upsert`)."""

    def __init__(self, conn: psycopg2.extensions.connection):
        self.conn = conn
        self._backend_pid: int | None = None
        self._prepared: set[str] = set()

    def upsert(self, bars: pd.DataFrame, *, mode: UpsertMode, source: Literal["live", "history"], notify: bool = True) -> UpsertResult:
        """Write bars (staging → one INSERT … ON CONFLICT) and NOTIFY them, in the caller's transaction.

        The caller commits (listeners hear of the bars then) or rolls back; on an autocommit
        connection the write is atomic on its own, one statement touching the shared tables. A
        bar that violates a CHECK constraint fails the whole batch: nothing of it is stored, and
        the error names the constraint. Returns how many rows were inserted and revised."""
        if mode not in _UPSERT_SQL:
            raise ValueError(f"invalid upsert mode {mode!r}: expected 'keep' or 'replace'")
        if source not in ("live", "history"):
            raise ValueError(f"invalid bar source {source!r}: expected 'live' or 'history'")
        df = _validate_frame(bars)
        if df.empty:
            return UpsertResult(0, 0, 0, 0)
        arrays = _as_arrays(df, source) if len(df) <= SMALL_BATCH else None
        for attempt in (1, 2):
            try:
                with self.conn.cursor() as cur:
                    if arrays is None:
                        cur.execute(_STAGE_SQL)
                        cur.copy_expert(f"COPY _bars_stage ({_STAGE_COLS_SQL}) FROM STDIN WITH (FORMAT binary)", _copy_binary(df, source))
                    inserted, revised, notified = self._execute_upsert(cur, mode, notify, arrays)
                break
            except psycopg2.errors.InvalidSqlStatementName:
                # the session's statements were deallocated (DISCARD ALL) under the same
                # connection: prepare again. Only an autocommit connection can simply retry; in a
                # transaction the caller rolls back and retries, as after any failed statement.
                self._prepared.clear()
                if attempt == 2 or not self.conn.autocommit:
                    raise
        return UpsertResult(len(df), inserted, revised, notified)

    def _session_statements(self) -> set[str]:
        """The upsert statements this session has prepared. Read from the server once per session:
        PREPARE outlives a rolled-back transaction, and another BarStore may have prepared them."""
        pid = self.conn.info.backend_pid
        if self._backend_pid != pid:
            with self.conn.cursor() as cur:
                cur.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'projectx\\_upsert\\_%'")
                self._prepared = {name for (name,) in cur.fetchall()}
            self._backend_pid = pid
        return self._prepared

    def _execute_upsert(self, cur, mode: UpsertMode, notify: bool, arrays: list | None = None) -> tuple:
        name = f"projectx_upsert_{mode}{'_notify' if notify else ''}{'_arrays' if arrays is not None else ''}"
        prepared = self._session_statements()
        if name not in prepared:
            params = f"({_ARRAYS_PARAMS})" if arrays is not None else ""
            cur.execute(f"PREPARE {name}{params} AS {_statement(mode, notify, arrays is not None)}")
            prepared.add(name)
        if arrays is None:
            cur.execute(f"EXECUTE {name}")
        else:
            cur.execute(f"EXECUTE {name} ({', '.join(['%s'] * len(arrays))})", arrays)
        return cur.fetchone()


def upsert_bars(
    conn: psycopg2.extensions.connection, bars: pd.DataFrame, *, mode: UpsertMode, source: Literal["live", "history"], notify: bool = True
) -> UpsertResult:
    """One write with a BarStore of its own (`BarStore.upsert`): for a caller writing once; one
    that writes repeatedly keeps a BarStore, which reads the session's statements only once."""
    return BarStore(conn).upsert(bars, mode=mode, source=source, notify=notify)


_READ_COLUMNS = 'contract_id, "timestamp", open, high, low, close, volume, timeframe_unit, timeframe_value'


def read_bars(
    conn: psycopg2.extensions.connection,
    contract_id: str,
    timeframe: Timeframe,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    with_source: bool = False,
) -> pd.DataFrame:
    """Stored bars of one contract and timeframe with start in [start, end), ascending."""
    ContractId(contract_id)
    sql = (
        f"SELECT {_READ_COLUMNS}{', source' if with_source else ''} FROM ohlc_bars"
        " WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s"
    )
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
    if not rows:
        out = empty_bars()
        if with_source:
            out["source"] = pd.Series(dtype=object)
        return out
    cols = BAR_COLUMNS + (["source"] if with_source else [])
    df = pd.DataFrame(rows, columns=cols)
    source = df["source"].to_numpy() if with_source else None
    out = normalize_bars(df)
    if source is not None:
        out["source"] = source
    return out


_LAST_BAR_SQL = 'SELECT max("timestamp") FROM ohlc_bars WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s'


def last_bar_times(
    conn: psycopg2.extensions.connection, contract_id: str, timeframes: Iterable[Timeframe], before: Mapping[Timeframe, datetime] | None = None
) -> dict[Timeframe, datetime | None]:
    """Start of the newest stored bar per timeframe (None when there is none); with `before`, the
    newest of those starting before `before[tf]`."""
    ContractId(contract_id)
    out: dict[Timeframe, datetime | None] = {}
    with conn.cursor() as cur:
        for tf in timeframes:
            if before is None:
                cur.execute(_LAST_BAR_SQL, (contract_id, tf.unit, tf.value))
            else:
                cur.execute(_LAST_BAR_SQL + ' AND "timestamp" < %s', (contract_id, tf.unit, tf.value, before[tf]))
            out[tf] = cur.fetchone()[0]
    return out


def read_live_versions(conn: psycopg2.extensions.connection, contract_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The bars the live daemon built in [start, end), every timeframe: the stored bar when it is
    still the live one, else the live values a history replace overwrote (from bar_revisions)."""
    ContractId(contract_id)
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
    if not rows:
        return empty_bars()
    return normalize_bars(pd.DataFrame(rows, columns=BAR_COLUMNS))


# --------------------------------------------------------------------------- reads for the trend analysis


def _bars_sql(after: bool) -> str:
    return (
        'SELECT "timestamp", open, high, low, close, revisions, ingested_at FROM ohlc_bars'
        " WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s"
        + (' AND "timestamp" > %s' if after else "")
        + ' ORDER BY "timestamp"'
    )


def read_analysis_bars(conn: psycopg2.extensions.connection, contract_id: str, tf: Timeframe, after: datetime | None) -> list[tuple]:
    """Rows (timestamp, open, high, low, close, revisions, ingested_at) of the stored bars starting
    after `after` (all when None), ascending: what the trend analysis feeds its detector."""
    ContractId(contract_id)
    params: list = [contract_id, tf.unit, tf.value]
    if after is not None:
        params.append(after)
    with conn.cursor() as cur:
        cur.execute(_bars_sql(after is not None), params)
        return cur.fetchall()


def bars_fingerprint(conn: psycopg2.extensions.connection, contract_id: str, tf: Timeframe, through: datetime) -> tuple[int, int, datetime | None]:
    """(count, sum of revisions, newest ingested_at) of the stored bars starting at or before
    `through`: a bar added behind a watermark or replaced since changes it."""
    ContractId(contract_id)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), coalesce(sum(revisions), 0), max(ingested_at) FROM ohlc_bars"
            ' WHERE contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s AND "timestamp" <= %s',
            (contract_id, tf.unit, tf.value, through),
        )
        count, revisions, ingested = cur.fetchone()
    return int(count), int(revisions), ingested
