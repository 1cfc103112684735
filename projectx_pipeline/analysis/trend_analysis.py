"""Trend-start analysis against the database (no Dagster).

`run_trend_analysis` — one (analyzer, series, timeframe) per call, one transaction. A series is
a contract's bars or a symbol's continuous front-month series (`series_bars.py`: forward-adjusted
at the recorded rolls, whose gaps join the fingerprint below); "contract" below means either.

* Serialized by `pg_advisory_xact_lock` on (analyzer, contract, timeframe): an overlapping run
  waits, then reads the watermark the first one committed and finds nothing left to do.
* Incremental: the watermark row holds `last_bar_ts`, `bars_processed` and the JSON snapshot of a
  `TrendStartDetector`; a run reads only the bars after `last_bar_ts`, restores the detector, feeds
  them, and writes the new signals and the new watermark in the same transaction. The detector is
  exact under resume (§7.7 of the rules), so incremental equals a full recompute.
* Recompute trigger: before resuming, one scan of the stored bars at or before `last_bar_ts`
  compares (count, sum of `revisions`, max `ingested_at`) with what the watermark recorded. A bar
  that arrived behind the watermark (a repaired hole) changes the count; a replaced bar changes
  `revisions` and `ingested_at`. The count and revision sum do not depend on clocks, so a bar
  whose transaction started before the last run but committed after it is still caught (an
  `ingested_at` comparison alone would miss it). Any difference → recompute from scratch.
* Recompute (and the first run): all bars through the streaming detector (it yields the signals
  AND the state to persist in one pass; the batch kernel does not expose its final state), then
  the result is diffed with the stored rows: every stored signal confirmed at or after the first
  confirm time where the two differ is deleted and the recomputed ones from there on inserted.
  Rows before that point are identical in both, so the table ends up equal to the full result
  while older signal ids (and the coordinated signals built on them) stay untouched.
  Deleting a signal cascades to the coordinated signals built on it, so the recompute also
  rewinds the contract's coordinator watermarks to that confirm time (under the coordination
  lock, taken before any delete so the two never deadlock); the next coordination run rebuilds
  what was removed. Outputs with signal_ts at or before that time are unaffected: every changed
  signal became known strictly after it.

Every storage call here works in the run's transaction; the run owns it (begins it, commits on
success, rolls back on error).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg2.extensions

from ..domain.series import SeriesId
from ..domain.timeframes import Timeframe
from ..domain.timestamps import utc_series
from ..domain.trend_starts import ANALYZER_ID, Signal, TrendStartDetector
from ..storage import coordinated_signals as coordinated
from ..storage import locks
from ..storage import trend_signals as store
from ..storage.db import begin_read_committed
from .series_bars import ContinuousSeriesBars, ContractSeriesBars, SeriesBars, roll_record, series_bars

_STATE_FORMAT = 1
LATEST_ROWS = 10


@dataclass(frozen=True)
class AnalysisResult:
    """What one `run_trend_analysis` call did.

    `bars_processed`: bars fed to the detector in this run (every bar on a recompute);
    `new_signals`: rows inserted (on a recompute including re-inserted ones, see `deleted_signals`);
    `recomputed`: stored bars at or before the watermark had changed, so the run started over;
    `latest`: the most recently known signals of this (contract, timeframe), newest first."""

    bars_processed: int
    new_signals: int
    recomputed: bool
    latest: pd.DataFrame
    contract_id: str = ""
    timeframe: Timeframe | None = None
    deleted_signals: int = 0
    total_signals: int = 0
    last_bar_ts: datetime | None = None
    changed_from: datetime | None = None  # first confirm time rewritten by a recompute / first run
    mode: str = "incremental"  # incremental | initial | recompute


def _feed(detector: TrendStartDetector, rows: list[tuple]) -> list[Signal]:
    out: list[Signal] = []
    for ts, open_, high, low, close, _revisions, _ingested in rows:
        out.extend(detector.update(ts, open_, high, low, close))
    return out


def _signals_to_frame(signals: list[Signal]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "type": pd.Series([s.type for s in signals], dtype=object),
            "start_ts": utc_series(pd.Series([s.start_ts for s in signals], dtype=object)),
            "confirm_ts": utc_series(pd.Series([s.confirm_ts for s in signals], dtype=object)),
            "rule": pd.Series([s.rule for s in signals], dtype=object),
            "start_price": pd.Series([s.start_price for s in signals], dtype=np.float64),
        }
    )


def _state(detector: TrendStartDetector, read: SeriesBars, previous: dict | None) -> dict:
    """The watermark's JSON state: detector snapshot + the fingerprint of the bars it has seen
    (with a continuous series', the rolls at or before the last of them and their gaps)."""
    rows = read.rows
    revisions = (previous or {}).get("revisions", 0) + sum(int(r[5]) for r in rows)
    ingested = [r[6] for r in rows]
    if previous and previous.get("ingested_through"):
        ingested.append(datetime.fromisoformat(previous["ingested_through"]))
    return {
        "format": _STATE_FORMAT,
        "detector": detector.snapshot(),
        "revisions": revisions,
        "ingested_through": max(ingested).isoformat() if ingested else None,
        "rolls": roll_record(read.gaps),
    }


def _save_watermark(
    conn, analyzer_id: str, contract_id: str, tf: Timeframe, detector: TrendStartDetector, read: SeriesBars, previous: dict | None
) -> None:
    """Record that the detector has seen every bar through the last of `read.rows`, and its state."""
    store.save_analyzer_watermark(
        conn,
        analyzer_id,
        contract_id,
        tf,
        last_bar_ts=read.rows[-1][0],
        bars_processed=detector.bars_processed,
        state=_state(detector, read, previous),
    )


def _first_difference(stored: pd.DataFrame, computed: pd.DataFrame) -> pd.Timestamp | None:
    """The earliest confirm_ts at which stored and computed signals differ (None: identical).

    Rows are matched on the table's unique key (type, start_ts); a row differs when it is on one
    side only or its confirm_ts, rule or price differ."""
    s = stored.loc[:, ["type", "start_ts", "confirm_ts", "rule", "price"]]
    c = computed.loc[:, ["type", "start_ts", "confirm_ts", "rule", "start_price"]].rename(columns={"start_price": "price"})
    for frame in (s, c):
        for col in ("start_ts", "confirm_ts"):
            frame[col] = utc_series(frame[col])
    m = s.merge(c, on=["type", "start_ts"], how="outer", suffixes=("_s", "_c"), indicator=True)
    differs = (m["_merge"] != "both") | (m["confirm_ts_s"] != m["confirm_ts_c"]) | (m["rule_s"] != m["rule_c"]) | (m["price_s"] != m["price_c"])
    if not differs.any():
        return None
    candidates = pd.concat([m.loc[differs, "confirm_ts_s"], m.loc[differs, "confirm_ts_c"]]).dropna()
    return candidates.min()


def run_trend_analysis(
    conn: psycopg2.extensions.connection, contract_id: str, tf: Timeframe, *, analyzer_id: str = ANALYZER_ID, latest: int = LATEST_ROWS
) -> AnalysisResult:
    """Bring the detected signals of (analyzer, series, tf) up to date with the stored bars;
    `contract_id` is a series (domain/series.py): a contract id, or a symbol for its continuous
    front-month series (series_bars.py says how that one is fed).

    Commits on success, rolls back on error (see the module docstring for the rules)."""
    source = series_bars(SeriesId(contract_id))
    store.validate_analyzer_id(analyzer_id)
    if analyzer_id != ANALYZER_ID:
        raise ValueError(f"unknown analyzer {analyzer_id!r}: expected {ANALYZER_ID!r} (the only one implemented)")
    if not isinstance(tf, Timeframe):
        raise TypeError(f"invalid timeframe {tf!r}: expected a Timeframe")
    begin_read_committed(conn)
    try:
        locks.lock_analysis(conn, analyzer_id, contract_id, tf)
        watermark = store.load_analyzer_watermark(conn, analyzer_id, contract_id, tf)
        detector = previous = None
        if watermark is not None:
            detector, previous = _resumable(conn, watermark, source)
        if detector is not None:
            result = _incremental(conn, source, analyzer_id, contract_id, tf, watermark, detector, previous, latest)
        else:
            result = _full(conn, source, analyzer_id, contract_id, tf, recompute=watermark is not None, latest=latest)
        conn.commit()
        return result
    except BaseException:
        conn.rollback()
        raise


def _resumable(
    conn, watermark: store.AnalyzerWatermark, source: ContractSeriesBars | ContinuousSeriesBars
) -> tuple[TrendStartDetector | None, dict | None]:
    """The restored detector and state when the bars through the watermark are unchanged, else (None, None)."""
    state = watermark.state if isinstance(watermark.state, dict) else {}
    if state.get("format") != _STATE_FORMAT:
        return None, None
    try:
        detector = TrendStartDetector.restore(state["detector"])
        recorded_ingested = datetime.fromisoformat(state["ingested_through"]) if state["ingested_through"] else None
        recorded_revisions = int(state["revisions"])
    except (KeyError, TypeError, ValueError):
        return None, None
    if detector.bars_processed != watermark.bars_processed:
        return None, None
    seen = source.fingerprint(conn, watermark.timeframe, watermark.last_bar_ts)
    if seen.count != watermark.bars_processed or seen.revisions != recorded_revisions:
        return None, None
    if seen.ingested is not None and (recorded_ingested is None or seen.ingested > recorded_ingested):
        return None, None
    if seen.rolls != state.get("rolls", []):  # a roll recorded behind the watermark, or a gap changed by a repaired bar
        return None, None
    return detector, state


def _incremental(conn, source, analyzer_id, contract_id, tf, watermark, detector, previous, latest) -> AnalysisResult:
    read = source.read(conn, tf, after=watermark.last_bar_ts)
    rows = read.rows
    new = 0
    last_bar_ts = watermark.last_bar_ts
    if rows:
        signals = read.traded_prices(_signals_to_frame(_feed(detector, rows)))
        new = store.insert_detected_signals(conn, analyzer_id, contract_id, tf, signals)
        last_bar_ts = rows[-1][0]
        _save_watermark(conn, analyzer_id, contract_id, tf, detector, read, previous)
    return AnalysisResult(
        bars_processed=len(rows),
        new_signals=new,
        recomputed=False,
        latest=store.latest_signals(conn, analyzer_id, contract_id, tf, latest),
        contract_id=contract_id,
        timeframe=tf,
        total_signals=store.count_signals(conn, analyzer_id, contract_id, tf),
        last_bar_ts=last_bar_ts,
        mode="incremental",
    )


def _full(conn, source, analyzer_id, contract_id, tf, *, recompute: bool, latest: int) -> AnalysisResult:
    read = source.read(conn, tf, after=None)
    rows = read.rows
    detector = TrendStartDetector()
    computed = read.traded_prices(_signals_to_frame(_feed(detector, rows)))
    stored = store.read_detected_signals(conn, analyzer_id, contract_id, tf)
    changed_from = _first_difference(stored, computed)
    deleted = inserted = 0
    if changed_from is not None:
        # Before any delete: coordination runs of this contract hold this lock while they insert
        # rows referencing signals, so taking it first rules out a lock-order deadlock.
        locks.lock_coordination(conn, contract_id)
        deleted = store.delete_signals_confirmed_from(conn, analyzer_id, contract_id, tf, changed_from)
        inserted = store.insert_detected_signals(conn, analyzer_id, contract_id, tf, computed[computed["confirm_ts"] >= changed_from])
        coordinated.rewind_coordinator_watermarks(conn, contract_id, changed_from)
    last_bar_ts = rows[-1][0] if rows else None
    if rows:
        _save_watermark(conn, analyzer_id, contract_id, tf, detector, read, None)
    else:  # no bars at all (any more): nothing to resume from
        store.delete_analyzer_watermark(conn, analyzer_id, contract_id, tf)
    return AnalysisResult(
        bars_processed=len(rows),
        new_signals=inserted,
        recomputed=recompute,
        latest=store.latest_signals(conn, analyzer_id, contract_id, tf, latest),
        contract_id=contract_id,
        timeframe=tf,
        deleted_signals=deleted,
        total_signals=len(computed),
        last_bar_ts=last_bar_ts,
        changed_from=changed_from.to_pydatetime() if changed_from is not None else None,
        mode="recompute" if recompute else "initial",
    )
