"""Signal tables: detected trend starts, analyzer watermarks, coordinated signals and their watermarks.

Every function here works inside the CALLER's transaction: none of them commits or rolls back,
so a service can write signals and advance a watermark atomically (see `signals.analysis`).
Every query is parameterized; contract ids, analyzer ids and timeframes are validated first.

Writes are idempotent: detected signals are unique on (analyzer, contract, timeframe, type,
start time) and coordinated signals on (rule, contract, anchor signal); both inserts are
`ON CONFLICT DO NOTHING` and return how many rows were really added.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import numpy as np
import pandas as pd
import psycopg2.extras

from ..domain.coordination import known_at_ns
from ..domain.timeframes import DomainError, Timeframe, validate_contract_id
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
COORDINATED_COLUMNS = ["rule", "label", "contract_id", "signal_ts", "anchor_signal_id", "trigger_signal_id"]

_ANALYZER_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TF_LABEL_SQL = (
    "d.timeframe_value::text || CASE d.timeframe_unit WHEN 1 THEN 's' WHEN 2 THEN 'm' WHEN 3 THEN 'h'"
    " WHEN 4 THEN 'd' WHEN 5 THEN 'w' ELSE 'mo' END"
)


def validate_analyzer_id(analyzer_id: object) -> str:
    if not isinstance(analyzer_id, str) or not _ANALYZER_ID_RE.fullmatch(analyzer_id):
        raise DomainError(
            f"invalid analyzer id {analyzer_id!r}: expected 1-64 lower-case letters, digits or '_', "
            "starting with a letter (e.g. cus_cds_trend_finder)"
        )
    return analyzer_id


def _check_tf(tf: object) -> Timeframe:
    if not isinstance(tf, Timeframe):
        raise DomainError(f"invalid timeframe {tf!r}: expected a Timeframe (use parse_timeframe)")
    return tf


def _utc_series(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True).astype("datetime64[ns, UTC]")


def _utc_ns(column: pd.Series) -> np.ndarray:
    return _utc_series(column).dt.tz_convert(None).to_numpy().view(np.int64)


# --------------------------------------------------------------------------- locks

def advisory_lock_key(*parts: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock from text parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_analysis(conn, analyzer_id: str, contract_id: str, tf: Timeframe) -> None:
    """Serialize analysis runs of one (analyzer, contract, timeframe) until the transaction ends."""
    _xact_lock(conn, "analysis", validate_analyzer_id(analyzer_id), validate_contract_id(contract_id), _check_tf(tf).label)


def lock_coordination(conn, contract_id: str) -> None:
    """Serialize coordination runs of one contract (and the analysis recomputes that rewind them)."""
    _xact_lock(conn, "coordination", validate_contract_id(contract_id))


def _xact_lock(conn, *parts: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_lock_key(*parts),))


# --------------------------------------------------------------------------- detected signals

def _copy_escape(values: Iterable[str]) -> list[str]:
    """COPY text-format escaping of free text (backslash, tab, newline, carriage return)."""
    table = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    return [str(v).translate(table) for v in values]


def _ts_text(ns: np.ndarray) -> list[str]:
    # microsecond precision is what timestamptz keeps; bar labels are whole minutes anyway
    return list(np.datetime_as_string(ns.view("datetime64[ns]"), unit="us", timezone="UTC"))


def insert_detected_signals(conn, analyzer_id: str, contract_id: str, tf: Timeframe, frame: pd.DataFrame) -> int:
    """Insert detected signals (`detect_trend_starts_frame` layout) and return how many were new.

    known_at is derived here (the close of the confirming bar) so that it can never disagree with
    confirm_ts. Bulk: COPY into a session-temporary stage, then one INSERT … ON CONFLICT DO NOTHING.
    """
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    _check_tf(tf)
    missing = [c for c in DETECTED_FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"signals frame lacks column(s) {', '.join(missing)}: expected {', '.join(DETECTED_FRAME_COLUMNS)}")
    if frame.empty:
        return 0
    kinds = frame["type"].to_numpy(dtype=object)
    bad = ~np.isin(kinds, [UPTREND, DOWNTREND])
    if bad.any():
        raise ValueError(f"invalid signal type {kinds[np.argmax(bad)]!r}: expected uptrend or downtrend")
    start_ns, confirm_ns = _utc_ns(frame["start_ts"]), _utc_ns(frame["confirm_ts"])
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
        cur.copy_expert(
            "COPY _signals_stage (start_ts, confirm_ts, known_at, signal_type, price, rule, details) FROM STDIN", text
        )
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


def delete_signals_confirmed_from(conn, analyzer_id: str, contract_id: str, tf: Timeframe, ts: datetime) -> int:
    """Delete the signals of (analyzer, contract, tf) confirmed at or after `ts` (used on recompute).

    Coordinated signals built on them go with them (ON DELETE CASCADE). Returns the rows deleted."""
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    _check_tf(tf)
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM detected_signals WHERE analyzer_id = %s AND contract_id = %s AND timeframe_unit = %s"
            " AND timeframe_value = %s AND confirm_ts >= %s",
            (analyzer_id, contract_id, tf.unit, tf.value, ts),
        )
        return cur.rowcount


_SELECT_SIGNALS = f"""
    SELECT d.id, d.contract_id, {_TF_LABEL_SQL}, d.signal_type, d.start_ts, d.confirm_ts, d.known_at,
           d.price, d.rule, d.analyzer_id
    FROM detected_signals d"""


def _signals_frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=SIGNAL_COLUMNS)
    for c in ("start_ts", "confirm_ts", "known_at"):
        df[c] = _utc_series(df[c])
    df["signal_id"] = df["signal_id"].astype(np.int64)
    df["price"] = df["price"].astype(np.float64)
    for c in ("contract_id", "timeframe", "type", "rule", "analyzer_id"):
        df[c] = df[c].astype(object)
    return df


def read_signals(
    conn,
    contract_id: str,
    since_known_at: datetime | None = None,
    *,
    analyzer_id: str | None = None,
    timeframes: Iterable[Timeframe] | None = None,
) -> pd.DataFrame:
    """Detected signals of a contract with known_at >= `since_known_at` (all when None), ordered by
    (known_at, timeframe, start_ts, type). Columns SIGNAL_COLUMNS; `timeframe` is a label ('15m')."""
    validate_contract_id(contract_id)
    sql = _SELECT_SIGNALS + " WHERE d.contract_id = %s"
    params: list = [contract_id]
    if since_known_at is not None:
        sql += " AND d.known_at >= %s"
        params.append(since_known_at)
    if analyzer_id is not None:
        sql += " AND d.analyzer_id = %s"
        params.append(validate_analyzer_id(analyzer_id))
    if timeframes is not None:
        tfs = [_check_tf(tf) for tf in timeframes]
        if not tfs:
            return _signals_frame([])
        sql += " AND (d.timeframe_unit, d.timeframe_value) IN (" + ", ".join(["(%s, %s)"] * len(tfs)) + ")"
        for tf in tfs:
            params += [tf.unit, tf.value]
    sql += " ORDER BY d.known_at, d.timeframe_unit, d.timeframe_value, d.start_ts, d.signal_type"
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return _signals_frame(cur.fetchall())


def read_detected_signals(conn, analyzer_id: str, contract_id: str, tf: Timeframe) -> pd.DataFrame:
    """Every stored signal of one (analyzer, contract, timeframe), ordered by (start_ts, type)."""
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    _check_tf(tf)
    with conn.cursor() as cur:
        cur.execute(
            _SELECT_SIGNALS + " WHERE d.analyzer_id = %s AND d.contract_id = %s AND d.timeframe_unit = %s"
            " AND d.timeframe_value = %s ORDER BY d.start_ts, d.signal_type",
            (analyzer_id, contract_id, tf.unit, tf.value),
        )
        return _signals_frame(cur.fetchall())


def latest_signals(conn, analyzer_id: str, contract_id: str, tf: Timeframe | None = None, limit: int = 10) -> pd.DataFrame:
    """The `limit` most recently known signals (newest first)."""
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    sql = _SELECT_SIGNALS + " WHERE d.analyzer_id = %s AND d.contract_id = %s"
    params: list = [analyzer_id, contract_id]
    if tf is not None:
        _check_tf(tf)
        sql += " AND d.timeframe_unit = %s AND d.timeframe_value = %s"
        params += [tf.unit, tf.value]
    sql += " ORDER BY d.known_at DESC, d.start_ts DESC, d.signal_type LIMIT %s"
    params.append(int(limit))
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return _signals_frame(cur.fetchall())


def count_signals(conn, analyzer_id: str, contract_id: str, tf: Timeframe) -> int:
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    _check_tf(tf)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM detected_signals WHERE analyzer_id = %s AND contract_id = %s"
            " AND timeframe_unit = %s AND timeframe_value = %s",
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


def load_analyzer_watermark(conn, analyzer_id: str, contract_id: str, tf: Timeframe) -> AnalyzerWatermark | None:
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    _check_tf(tf)
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
    conn, analyzer_id: str, contract_id: str, tf: Timeframe, *, last_bar_ts: datetime, bars_processed: int, state: dict
) -> None:
    """Insert or replace the watermark (state must be JSON data: no NaN/inf)."""
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    _check_tf(tf)
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


def analyzer_last_bars(conn, analyzer_id: str, contract_id: str) -> dict[Timeframe, datetime]:
    """last_bar_ts of every analysed timeframe of (analyzer, contract)."""
    validate_analyzer_id(analyzer_id)
    validate_contract_id(contract_id)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT timeframe_unit, timeframe_value, last_bar_ts FROM analyzer_watermarks"
            " WHERE analyzer_id = %s AND contract_id = %s",
            (analyzer_id, contract_id),
        )
        return {Timeframe(u, v): ts for u, v, ts in cur.fetchall()}


# --------------------------------------------------------------------------- coordinated signals

def insert_coordinated(conn, frame: pd.DataFrame) -> int:
    """Insert coordinated signals (`domain.coordination.coordinate` layout); returns the rows added.

    Idempotent: unique on (rule, contract, anchor signal), ON CONFLICT DO NOTHING."""
    missing = [c for c in COORDINATED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"coordinated frame lacks column(s) {', '.join(missing)}: expected {', '.join(COORDINATED_COLUMNS)}")
    if frame.empty:
        return 0
    for cid in pd.unique(frame["contract_id"]):
        validate_contract_id(cid)
    signal_ts = _utc_series(frame["signal_ts"])
    if signal_ts.isna().any():
        raise ValueError("coordinated frame has a missing signal_ts")
    rows = list(
        zip(
            frame["rule"].astype(str).tolist(),
            frame["label"].astype(str).tolist(),
            frame["contract_id"].tolist(),
            [t.to_pydatetime() for t in signal_ts],
            [int(v) for v in frame["anchor_signal_id"].tolist()],
            [int(v) for v in frame["trigger_signal_id"].tolist()],
        )
    )
    with conn.cursor() as cur:
        inserted = psycopg2.extras.execute_values(
            cur,
            "INSERT INTO coordinated_signals (rule, label, contract_id, signal_ts, anchor_signal_id, trigger_signal_id)"
            " VALUES %s ON CONFLICT ON CONSTRAINT coordinated_signals_unique DO NOTHING RETURNING 1",
            rows,
            page_size=1000,
            fetch=True,
        )
    return len(inserted)


_COORDINATED_READ_COLUMNS = [
    "id",
    "rule",
    "label",
    "contract_id",
    "signal_ts",
    "anchor_signal_id",
    "trigger_signal_id",
    "anchor_timeframe",
    "anchor_known_at",
    "trigger_timeframe",
    "trigger_known_at",
]


def read_coordinated(conn, contract_id: str, *, latest: int | None = None) -> pd.DataFrame:
    """Coordinated signals of a contract with their inputs' timeframes and known_at; ordered by
    (signal_ts, rule, anchor), or the `latest` newest first."""
    validate_contract_id(contract_id)
    a_label, t_label = _TF_LABEL_SQL.replace("d.", "a."), _TF_LABEL_SQL.replace("d.", "t.")
    sql = f"""
        SELECT c.id, c.rule, c.label, c.contract_id, c.signal_ts, c.anchor_signal_id, c.trigger_signal_id,
               {a_label}, a.known_at, {t_label}, t.known_at
        FROM coordinated_signals c
        JOIN detected_signals a ON a.id = c.anchor_signal_id
        JOIN detected_signals t ON t.id = c.trigger_signal_id
        WHERE c.contract_id = %s"""
    params: list = [contract_id]
    if latest is None:
        sql += " ORDER BY c.signal_ts, c.rule, c.anchor_signal_id"
    else:
        sql += " ORDER BY c.signal_ts DESC, c.rule, c.anchor_signal_id LIMIT %s"
        params.append(int(latest))
    with conn.cursor() as cur:
        cur.execute(sql, params)
        df = pd.DataFrame(cur.fetchall(), columns=_COORDINATED_READ_COLUMNS)
    for c in ("signal_ts", "anchor_known_at", "trigger_known_at"):
        df[c] = _utc_series(df[c])
    for c in ("id", "anchor_signal_id", "trigger_signal_id"):
        df[c] = df[c].astype(np.int64)
    return df


def count_coordinated(conn, contract_id: str) -> int:
    validate_contract_id(contract_id)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM coordinated_signals WHERE contract_id = %s", (contract_id,))
        return int(cur.fetchone()[0])


# --------------------------------------------------------------------------- coordinator watermarks

def load_coordinator_watermarks(conn, contract_id: str, rules: Iterable[str]) -> dict[str, datetime | None]:
    """last_known_at per rule name (None for a rule that has never advanced)."""
    validate_contract_id(contract_id)
    names = list(rules)
    out: dict[str, datetime | None] = dict.fromkeys(names)
    if not names:
        return out
    with conn.cursor() as cur:
        cur.execute(
            "SELECT rule, last_known_at FROM coordinator_watermarks WHERE contract_id = %s AND rule = ANY(%s)",
            (contract_id, names),
        )
        out.update(dict(cur.fetchall()))
    return out


def save_coordinator_watermark(conn, rule: str, contract_id: str, last_known_at: datetime) -> None:
    validate_contract_id(contract_id)
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO coordinator_watermarks (rule, contract_id, last_known_at, updated_at)
            VALUES (%s, %s, %s, now())
            ON CONFLICT (rule, contract_id) DO UPDATE SET last_known_at = EXCLUDED.last_known_at, updated_at = now()""",
            (str(rule), contract_id, last_known_at),
        )


def rewind_coordinator_watermarks(conn, contract_id: str, ts: datetime) -> int:
    """Move every coordinator watermark of the contract back to `ts` if it is later; returns how many moved."""
    validate_contract_id(contract_id)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE coordinator_watermarks SET last_known_at = %s, updated_at = now()"
            " WHERE contract_id = %s AND last_known_at > %s",
            (ts, contract_id, ts),
        )
        return cur.rowcount
