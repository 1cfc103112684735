"""Multi-timeframe coordination against the database (no Dagster).

`run_coordination` — one contract, every rule, one transaction, serialized by an advisory lock
on the contract. Per rule with watermark W it re-reads the signals with
known_at >= replay_start(W, [rule]), runs `coordinate`, inserts the outputs with signal_ts > W
(ON CONFLICT DO NOTHING) and advances W.

Coordinator watermark rule. W may only advance to a time up to which EVERY input of the rule is
complete: W_new = max(W, min over the rule's anchor and trigger timeframes of the close of the
last bar the analyzer has processed). A 15m trigger can be analysed before the 1h anchor it
belongs to: the watermark then stays at the 1h analysis' close, so the next run re-reads that
trigger and pairs it when the anchor arrives. Any output found is final and inserted even when
it lies beyond W_new: its trigger exists, so the trigger timeframe is analysed through the
trigger's bar, and no trigger known earlier can still appear. The analyzer watermarks are read
BEFORE the signals (READ COMMITTED), so every signal known up to W_new is in what was read.

The run owns its transaction (begins it, commits on success, rolls back on error); the storage
calls work inside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
import psycopg2.extensions

from ..domain.coordination import CoordinationRule, coordinate, known_at, replay_start
from ..domain.series import SeriesId
from ..domain.trend_starts import ANALYZER_ID
from ..storage import coordinated_signals as coordinated
from ..storage import locks, trend_signals
from ..storage.db import begin_read_committed
from .trend_analysis import LATEST_ROWS


@dataclass(frozen=True)
class CoordinationResult:
    new_outputs: int
    latest: pd.DataFrame
    contract_id: str = ""
    total_outputs: int = 0
    watermarks: dict = field(default_factory=dict)  # rule name -> last_known_at (None: not yet)


def run_coordination(
    conn: psycopg2.extensions.connection,
    contract_id: str,
    rules: Iterable[CoordinationRule],
    *,
    analyzer_id: str = ANALYZER_ID,
    latest: int = LATEST_ROWS,
) -> CoordinationResult:
    """Coordinate the contract's detected signals under every rule, incrementally (module docstring).

    Commits on success, rolls back on error."""
    SeriesId(contract_id)
    trend_signals.validate_analyzer_id(analyzer_id)
    rules = tuple(rules)
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate coordination rule names in {names}: names must be unique")
    begin_read_committed(conn)
    try:
        locks.lock_coordination(conn, contract_id)
        # Analyzer progress FIRST: signals read afterwards include everything it covers.
        last_bars = trend_signals.analyzer_last_bars(conn, analyzer_id, contract_id)
        watermarks = coordinated.load_coordinator_watermarks(conn, contract_id, names)
        starts = {r.name: None if watermarks[r.name] is None else replay_start(watermarks[r.name], [r]) for r in rules}
        new = 0
        if rules:
            known_starts = [s for s in starts.values() if s is not None]
            since = min(known_starts) if len(known_starts) == len(starts) else None
            timeframes = {tf for r in rules for tf in (r.anchor_timeframe, r.trigger_timeframe)}
            signals = trend_signals.read_signals(conn, contract_id, since, analyzer_id=analyzer_id, timeframes=timeframes)
        for rule in rules:
            wm = watermarks[rule.name]
            subset = signals if starts[rule.name] is None else signals[signals["known_at"] >= starts[rule.name]]
            out = coordinate(subset, [rule])
            if wm is not None:
                out = out[out["signal_ts"] > pd.Timestamp(wm)]
            new += coordinated.insert_coordinated(conn, out)
            closes = [known_at(last_bars[tf], tf) for tf in (rule.anchor_timeframe, rule.trigger_timeframe) if tf in last_bars]
            if len(closes) == 2:
                caught_up = min(closes).to_pydatetime()
                if wm is None or caught_up > wm:
                    coordinated.save_coordinator_watermark(conn, rule.name, contract_id, caught_up)
                    watermarks[rule.name] = caught_up
        result = CoordinationResult(
            new_outputs=new,
            latest=coordinated.read_coordinated(conn, contract_id, latest=latest),
            contract_id=contract_id,
            total_outputs=coordinated.count_coordinated(conn, contract_id),
            watermarks=dict(watermarks),
        )
        conn.commit()
        return result
    except BaseException:
        conn.rollback()
        raise
