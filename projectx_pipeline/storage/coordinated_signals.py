"""Coordinated signals (multi-timeframe outputs of `domain.coordination.coordinate`) and the
coordinator watermarks that say up to when each rule has been applied to a contract.

Every function here works inside the CALLER's transaction: none of them commits or rolls back
(see `analysis.coordination_runner`). Every query is parameterized; contract ids are validated.

Writes are idempotent: coordinated signals are unique on (rule, contract, anchor signal); the
insert is `ON CONFLICT DO NOTHING` and returns how many rows were really added.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg2.extensions
import psycopg2.extras

from ..domain.coordination import STORED_OUTPUT_COLUMNS
from ..domain.series import SeriesId
from ..domain.timestamps import utc_series
from .trend_signals import TF_LABEL_SQL

# What a frame of coordinated signals must have: the output columns the table stores.
COORDINATED_COLUMNS = STORED_OUTPUT_COLUMNS


def insert_coordinated(conn: psycopg2.extensions.connection, frame: pd.DataFrame) -> int:
    """Insert coordinated signals (`domain.coordination.coordinate` layout); returns the rows added.

    Idempotent: unique on (rule, contract, anchor signal), ON CONFLICT DO NOTHING."""
    missing = [c for c in COORDINATED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"coordinated frame lacks column(s) {', '.join(missing)}: expected {', '.join(COORDINATED_COLUMNS)}")
    if frame.empty:
        return 0
    for cid in pd.unique(frame["contract_id"]):
        SeriesId(cid)
    signal_ts = utc_series(frame["signal_ts"])
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
    *COORDINATED_COLUMNS,
    "anchor_timeframe",
    "anchor_known_at",
    "trigger_timeframe",
    "trigger_known_at",
]


def read_coordinated(conn: psycopg2.extensions.connection, contract_id: str, *, latest: int | None = None) -> pd.DataFrame:
    """Coordinated signals of a contract with their inputs' timeframes and known_at; ordered by
    (signal_ts, rule, anchor), or the `latest` newest first."""
    SeriesId(contract_id)
    a_label, t_label = TF_LABEL_SQL.replace("d.", "a."), TF_LABEL_SQL.replace("d.", "t.")
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
        df[c] = utc_series(df[c])
    for c in ("id", "anchor_signal_id", "trigger_signal_id"):
        df[c] = df[c].astype(np.int64)
    return df


def count_coordinated(conn: psycopg2.extensions.connection, contract_id: str) -> int:
    SeriesId(contract_id)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM coordinated_signals WHERE contract_id = %s", (contract_id,))
        return int(cur.fetchone()[0])


# --------------------------------------------------------------------------- coordinator watermarks


def load_coordinator_watermarks(conn: psycopg2.extensions.connection, contract_id: str, rules: Iterable[str]) -> dict[str, datetime | None]:
    """last_known_at per rule name (None for a rule that has never advanced)."""
    SeriesId(contract_id)
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


def save_coordinator_watermark(conn: psycopg2.extensions.connection, rule: str, contract_id: str, last_known_at: datetime) -> None:
    SeriesId(contract_id)
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO coordinator_watermarks (rule, contract_id, last_known_at, updated_at)
            VALUES (%s, %s, %s, now())
            ON CONFLICT (rule, contract_id) DO UPDATE SET last_known_at = EXCLUDED.last_known_at, updated_at = now()""",
            (str(rule), contract_id, last_known_at),
        )


def rewind_coordinator_watermarks(conn: psycopg2.extensions.connection, contract_id: str, ts: datetime) -> int:
    """Move every coordinator watermark of the contract back to `ts` if it is later; returns how many moved."""
    SeriesId(contract_id)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE coordinator_watermarks SET last_known_at = %s, updated_at = now() WHERE contract_id = %s AND last_known_at > %s",
            (ts, contract_id, ts),
        )
        return cur.rowcount
