"""Detected trend-start signals and the analyzer watermarks that say how far each
(analyzer, contract, timeframe) has been analysed.

Every function here works inside the CALLER's transaction: none of them commits or rolls back,
so a run can write signals and advance its watermark atomically (see `analysis.trend_analysis`).
Every query is parameterized; contract ids, analyzer ids and timeframes are validated first.

Writes are idempotent: detected signals are unique on (analyzer, contract, timeframe, type,
start time); the insert is `ON CONFLICT DO NOTHING` and returns how many rows were really added.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg2.extensions

from ..domain.coordination import known_at_ns
from ..domain.errors import DomainError
from ..domain.series import SeriesId
from ..domain.timeframes import Timeframe
from ..domain.timestamps import timestamps_ns, utc_series
from ..domain.trend_starts import DOWNTREND, UPTREND

# Columns a frame of detected signals must have (`detect_trend_starts_frame` has them all).
DETECTED_FRAME_COLUMNS = ["type", "start_ts", "confirm_ts", "rule", "start_price"]
# `read_signals` columns; the first six are what `domain.coordination.coordinate` reads.
SIGNAL_COLUMNS = [
    "signal_id",
    "contract_id",
    "timeframe",
    "type",
    "start_ts",
    "confirm_ts",
    "known_at",
    "price",
    "rule",
    "analyzer_id",
]

_ANALYZER_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# A timeframe's label ('15m') from the columns of the detected_signals row aliased `d`.
TF_LABEL_SQL = (
    "d.timeframe_value::text || CASE d.timeframe_unit WHEN 1 THEN 's' WHEN 2 THEN 'm' WHEN 3 THEN 'h' WHEN 4 THEN 'd' WHEN 5 THEN 'w' ELSE 'mo' END"
)


def validate_analyzer_id(analyzer_id: object) -> str:
    if not isinstance(analyzer_id, str) or not _ANALYZER_ID_RE.fullmatch(analyzer_id):
        raise DomainError(
            f"invalid analyzer id {analyzer_id!r}: expected 1-64 lower-case letters, digits or '_', "
            "starting with a letter (e.g. cus_cds_trend_finder)"
        )
    return analyzer_id


def check_timeframe(tf: object) -> Timeframe:
    if not isinstance(tf, Timeframe):
        raise DomainError(f"invalid timeframe {tf!r}: expected a Timeframe (use parse_timeframe)")
    return tf


def _check_key(analyzer_id: str, contract_id: str, tf: Timeframe) -> None:
    """Validate the (analyzer, contract, timeframe) a query is about, before it reaches SQL."""
    validate_analyzer_id(analyzer_id)
    SeriesId(contract_id)
    check_timeframe(tf)


def _copy_escape(values: Iterable[str]) -> list[str]:
    """COPY text-format escaping of free text (backslash, tab, newline, carriage return)."""
    table = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    return [str(v).translate(table) for v in values]


def _ts_text(ns: np.ndarray) -> list[str]:
    # microsecond precision is what timestamptz keeps; bar labels are whole minutes anyway
    return list(np.datetime_as_string(ns.view("datetime64[ns]"), unit="us", timezone="UTC"))


def insert_detected_signals(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe, frame: pd.DataFrame) -> int:
    """Insert detected signals (`detect_trend_starts_frame` layout) and return how many were new.

    known_at is derived here (the close of the confirming bar) so that it can never disagree with
    confirm_ts. Bulk: COPY into a session-temporary stage, then one INSERT … ON CONFLICT DO NOTHING.
    """
    _check_key(analyzer_id, contract_id, tf)
    missing = [c for c in DETECTED_FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"signals frame lacks column(s) {', '.join(missing)}: expected {', '.join(DETECTED_FRAME_COLUMNS)}")
    if frame.empty:
        return 0
    kinds = frame["type"].to_numpy(dtype=object)
    bad = ~np.isin(kinds, [UPTREND, DOWNTREND])
    if bad.any():
        raise ValueError(f"invalid signal type {kinds[np.argmax(bad)]!r}: expected uptrend or downtrend")
    start_ns, confirm_ns = timestamps_ns(frame["start_ts"]), timestamps_ns(frame["confirm_ts"])
    known_ns = known_at_ns(confirm_ns, tf)
    prices = frame["start_price"].to_numpy(dtype=np.float64)
    if not np.isfinite(prices).all():
        raise ValueError("signals frame has a missing or non-finite start_price")
    details = [json.dumps({"price_basis": "low" if k == UPTREND else "high"}) for k in kinds]
    columns = [
        _ts_text(start_ns),
        _ts_text(confirm_ns),
        _ts_text(known_ns),
        list(kinds),
        [repr(p) for p in prices.tolist()],  # repr round-trips every float exactly
        _copy_escape(frame["rule"].tolist()),
        _copy_escape(details),
    ]
    text = io.StringIO("".join("\t".join(row) + "\n" for row in zip(*columns)))
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _signals_stage ("
            " start_ts timestamptz, confirm_ts timestamptz, known_at timestamptz, signal_type text,"
            " price double precision, rule text, details jsonb) ON COMMIT DELETE ROWS"
        )
        cur.execute("TRUNCATE _signals_stage")
        cur.copy_expert("COPY _signals_stage (start_ts, confirm_ts, known_at, signal_type, price, rule, details) FROM STDIN", text)
        cur.execute(
            """
            WITH written AS (
                INSERT INTO detected_signals (analyzer_id, contract_id, timeframe_unit, timeframe_value,
                                              signal_type, start_ts, confirm_ts, known_at, price, rule, details)
                SELECT %(a)s, %(c)s, %(u)s, %(v)s, signal_type, start_ts, confirm_ts, known_at, price, rule, details
                FROM _signals_stage
                ON CONFLICT ON CONSTRAINT detected_signals_unique DO NOTHING
                RETURNING 1)
            SELECT count(*) FROM written""",
            {"a": analyzer_id, "c": contract_id, "u": tf.unit, "v": tf.value},
        )
        return int(cur.fetchone()[0])


def delete_signals_confirmed_from(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe, ts: datetime) -> int:
    """Delete the signals of (analyzer, contract, tf) confirmed at or after `ts` (used on recompute).

    Coordinated signals built on them go with them (ON DELETE CASCADE). Returns the rows deleted."""
    _check_key(analyzer_id, contract_id, tf)
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM detected_signals WHERE analyzer_id = %s AND contract_id = %s AND timeframe_unit = %s"
            " AND timeframe_value = %s AND confirm_ts >= %s",
            (analyzer_id, contract_id, tf.unit, tf.value, ts),
        )
        return cur.rowcount


_SELECT_SIGNALS = f"""
    SELECT d.id, d.contract_id, {TF_LABEL_SQL}, d.signal_type, d.start_ts, d.confirm_ts, d.known_at,
           d.price, d.rule, d.analyzer_id
    FROM detected_signals d"""


def _signals_frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=SIGNAL_COLUMNS)
    for c in ("start_ts", "confirm_ts", "known_at"):
        df[c] = utc_series(df[c])
    df["signal_id"] = df["signal_id"].astype(np.int64)
    df["price"] = df["price"].astype(np.float64)
    for c in ("contract_id", "timeframe", "type", "rule", "analyzer_id"):
        df[c] = df[c].astype(object)
    return df


def read_signals(
    conn: psycopg2.extensions.connection,
    contract_id: str,
    since_known_at: datetime | None = None,
    *,
    analyzer_id: str | None = None,
    timeframes: Iterable[Timeframe] | None = None,
) -> pd.DataFrame:
    """Detected signals of a contract with known_at >= `since_known_at` (all when None), ordered by
    (known_at, timeframe, start_ts, type). Columns SIGNAL_COLUMNS; `timeframe` is a label ('15m')."""
    SeriesId(contract_id)
    sql = _SELECT_SIGNALS + " WHERE d.contract_id = %s"
    params: list = [contract_id]
    if since_known_at is not None:
        sql += " AND d.known_at >= %s"
        params.append(since_known_at)
    if analyzer_id is not None:
        sql += " AND d.analyzer_id = %s"
        params.append(validate_analyzer_id(analyzer_id))
    if timeframes is not None:
        tfs = [check_timeframe(tf) for tf in timeframes]
        if not tfs:
            return _signals_frame([])
        sql += " AND (d.timeframe_unit, d.timeframe_value) IN (" + ", ".join(["(%s, %s)"] * len(tfs)) + ")"
        for tf in tfs:
            params += [tf.unit, tf.value]
    sql += " ORDER BY d.known_at, d.timeframe_unit, d.timeframe_value, d.start_ts, d.signal_type"
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return _signals_frame(cur.fetchall())


def read_detected_signals(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe) -> pd.DataFrame:
    """Every stored signal of one (analyzer, contract, timeframe), ordered by (start_ts, type)."""
    _check_key(analyzer_id, contract_id, tf)
    with conn.cursor() as cur:
        cur.execute(
            _SELECT_SIGNALS + " WHERE d.analyzer_id = %s AND d.contract_id = %s AND d.timeframe_unit = %s"
            " AND d.timeframe_value = %s ORDER BY d.start_ts, d.signal_type",
            (analyzer_id, contract_id, tf.unit, tf.value),
        )
        return _signals_frame(cur.fetchall())


def latest_signals(
    conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe | None = None, limit: int = 10
) -> pd.DataFrame:
    """The `limit` most recently known signals (newest first)."""
    validate_analyzer_id(analyzer_id)
    SeriesId(contract_id)
    sql = _SELECT_SIGNALS + " WHERE d.analyzer_id = %s AND d.contract_id = %s"
    params: list = [analyzer_id, contract_id]
    if tf is not None:
        check_timeframe(tf)
        sql += " AND d.timeframe_unit = %s AND d.timeframe_value = %s"
        params += [tf.unit, tf.value]
    sql += " ORDER BY d.known_at DESC, d.start_ts DESC, d.signal_type LIMIT %s"
    params.append(int(limit))
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return _signals_frame(cur.fetchall())


def count_signals(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe) -> int:
    _check_key(analyzer_id, contract_id, tf)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM detected_signals WHERE analyzer_id = %s AND contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s",
            (analyzer_id, contract_id, tf.unit, tf.value),
        )
        return int(cur.fetchone()[0])


# --------------------------------------------------------------------------- analyzer watermarks


@dataclass(frozen=True)
class AnalyzerWatermark:
    """How far one (analyzer, contract, timeframe) has been analysed, and the state to resume."""

    analyzer_id: str
    contract_id: str
    timeframe: Timeframe
    last_bar_ts: datetime
    bars_processed: int
    state: dict


def load_analyzer_watermark(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe) -> AnalyzerWatermark | None:
    _check_key(analyzer_id, contract_id, tf)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT last_bar_ts, bars_processed, state FROM analyzer_watermarks WHERE analyzer_id = %s"
            " AND contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s",
            (analyzer_id, contract_id, tf.unit, tf.value),
        )
        row = cur.fetchone()
    if row is None:
        return None
    return AnalyzerWatermark(analyzer_id, contract_id, tf, row[0], int(row[1]), row[2])


def save_analyzer_watermark(
    conn: psycopg2.extensions.connection,
    analyzer_id: str,
    contract_id: str,
    tf: Timeframe,
    *,
    last_bar_ts: datetime,
    bars_processed: int,
    state: dict,
) -> None:
    """Insert or replace the watermark (state must be JSON data: no NaN/inf)."""
    _check_key(analyzer_id, contract_id, tf)
    payload = json.dumps(state, allow_nan=False)
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO analyzer_watermarks (analyzer_id, contract_id, timeframe_unit, timeframe_value,
                                             last_bar_ts, bars_processed, state, updated_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, now())
            ON CONFLICT (analyzer_id, contract_id, timeframe_unit, timeframe_value) DO UPDATE
                SET last_bar_ts = EXCLUDED.last_bar_ts, bars_processed = EXCLUDED.bars_processed,
                    state = EXCLUDED.state, updated_at = now()""",
            (analyzer_id, contract_id, tf.unit, tf.value, last_bar_ts, int(bars_processed), payload),
        )


def analyzer_last_bars(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str) -> dict[Timeframe, datetime]:
    """last_bar_ts of every analysed timeframe of (analyzer, contract)."""
    validate_analyzer_id(analyzer_id)
    SeriesId(contract_id)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT timeframe_unit, timeframe_value, last_bar_ts FROM analyzer_watermarks WHERE analyzer_id = %s AND contract_id = %s",
            (analyzer_id, contract_id),
        )
        return {Timeframe(u, v): ts for u, v, ts in cur.fetchall()}


def delete_analyzer_watermark(conn: psycopg2.extensions.connection, analyzer_id: str, contract_id: str, tf: Timeframe) -> None:
    """Forget how far (analyzer, contract, tf) was analysed: there are no bars to resume from."""
    _check_key(analyzer_id, contract_id, tf)
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM analyzer_watermarks WHERE analyzer_id = %s AND contract_id = %s AND timeframe_unit = %s AND timeframe_value = %s",
            (analyzer_id, contract_id, tf.unit, tf.value),
        )
