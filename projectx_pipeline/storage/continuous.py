"""`contract_rolls` and the view `continuous_bars`: each symbol's recorded roll points and its
continuous front-month series, unadjusted or back-adjusted by domain/continuous.py's rule.

The roll gaps are read in SQL, two primary-key probes per roll (each month's last bar before the
roll), rather than by reading the months' bars into pandas: a roll's gap needs two bars of the
millions stored.

Every function works inside the caller's transaction and never commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import pandas as pd
import psycopg2.extensions
import psycopg2.extras

from ..domain.continuous import RollGap, back_adjust, check_roll_points, roll_gap
from ..domain.contracts import SYMBOL_RE
from ..domain.errors import DomainError
from ..domain.market import BAR_COLUMNS, empty_bars, normalize_bars
from ..domain.rolls import ContractMonth, RollPoint
from ..domain.timeframes import Timeframe
from ..domain.timestamps import utc
from ..logs import get_logger, kv
from .locks import advisory_lock_key

log = get_logger("projectx.storage")

MAX_RULE_LENGTH = 200


def _check_symbol(symbol: object) -> str:
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise DomainError(f"invalid symbol {symbol!r}: expected a futures root such as MES (1 to 8 capital letters or digits)")
    return symbol


def _check_rule(rule: object) -> str:
    if not isinstance(rule, str) or not rule.strip() or len(rule) > MAX_RULE_LENGTH:
        raise DomainError(f"invalid roll rule {rule!r}: expected the rule's name, 1 to {MAX_RULE_LENGTH} characters, such as 'calendar:8'")
    return rule


def _check_timeframe(tf: object) -> Timeframe:
    if not isinstance(tf, Timeframe):
        raise DomainError(f"invalid timeframe {tf!r}: expected a Timeframe (timeframes.parse_timeframe)")
    return tf


def _read_rolls(cur, symbol: str) -> list[RollPoint]:
    cur.execute("SELECT roll_at, from_contract, to_contract FROM contract_rolls WHERE symbol = %s ORDER BY roll_at", (symbol,))
    return [RollPoint(utc(at), ContractMonth.of(f), ContractMonth.of(t)) for at, f, t in cur.fetchall()]


_UPSERT_ROLLS_SQL = """
    INSERT INTO contract_rolls AS r (symbol, roll_at, from_contract, to_contract, rule) VALUES %s
    ON CONFLICT (symbol, roll_at) DO UPDATE
        SET from_contract = EXCLUDED.from_contract, to_contract = EXCLUDED.to_contract, rule = EXCLUDED.rule, recorded_at = now()
        WHERE (r.from_contract, r.to_contract, r.rule) IS DISTINCT FROM (EXCLUDED.from_contract, EXCLUDED.to_contract, EXCLUDED.rule)
    RETURNING 1"""


def record_roll_points(conn: psycopg2.extensions.connection, points: Iterable[RollPoint], rule: str) -> int:
    """Record roll points computed by `rule` (its name, e.g. 'calendar:8'); returns how many rows
    were inserted or changed. Idempotent: a point recorded already with the same months and rule
    writes nothing; the same roll instant with other months or another rule is updated.

    A new point replaces a recorded roll of the same transition at another instant (the roll
    moved: a changed rule or listing), and the result must stay one chain per symbol (each roll
    from the month the one before rolled to): a point that would break it is refused with a
    DomainError and nothing of the call is written. Several symbols may be given at once;
    recording serializes per symbol (a transaction lock), so concurrent recorders cannot
    interleave into a broken chain."""
    rule = _check_rule(rule)
    if isinstance(points, (str, bytes)) or not isinstance(points, Iterable):
        raise DomainError(f"invalid roll points {points!r}: expected a list of rolls.RollPoint")
    by_symbol: dict[str, list[RollPoint]] = {}
    for p in points:
        (p,) = check_roll_points([p])  # each point valid on its own; together they may come in any order
        by_symbol.setdefault(p.symbol, []).append(p)
    # every symbol's points are checked (one chain each, a point given twice counted once) before anything is written
    new_by_symbol = {s: check_roll_points(sorted(set(ps), key=lambda p: p.at)) for s, ps in sorted(by_symbol.items())}
    written = 0
    with conn.cursor() as cur:
        for symbol, new in new_by_symbol.items():
            _check_symbol(symbol)
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_lock_key("contract_rolls", symbol),))
            recorded = _read_rolls(cur, symbol)
            stale = _replaced_rolls(recorded, new)
            new_instants = {p.at for p in new}
            kept = [r for r in recorded if r not in stale and r.at not in new_instants]
            check_roll_points(sorted(kept + new, key=lambda p: p.at))
            if stale:
                cur.execute("DELETE FROM contract_rolls WHERE symbol = %s AND roll_at = ANY(%s)", (symbol, [r.at for r in stale]))
                replaced = ",".join(f"{r.from_month.code}>{r.to_month.code}@{r.at.isoformat()}" for r in stale)
                log.info(kv("contract_rolls_replaced", symbol=symbol, rolls=replaced))
            rows = [(symbol, p.at, p.from_month.contract_id(), p.to_month.contract_id(), rule) for p in new]
            written += len(psycopg2.extras.execute_values(cur, _UPSERT_ROLLS_SQL, rows, fetch=True))
    return written


def _replaced_rolls(recorded: list[RollPoint], new: list[RollPoint]) -> list[RollPoint]:
    """The recorded rolls the new points replace: the same transition (a month rolled from or to)
    at another instant, and the instants of a new point where other months were recorded. Deleted
    before the upsert, so the one-roll-per-month constraints never see two versions at once."""
    new_at = {p.at: p for p in new}
    froms = {p.from_month for p in new}
    tos = {p.to_month for p in new}
    stale = []
    for r in recorded:
        same_instant = new_at.get(r.at)
        if same_instant is not None:
            if (same_instant.from_month, same_instant.to_month) != (r.from_month, r.to_month):
                stale.append(r)
        elif r.from_month in froms or r.to_month in tos:
            stale.append(r)
    return stale


def recorded_roll_points(conn: psycopg2.extensions.connection, symbol: str) -> list[RollPoint]:
    """The recorded rolls of `symbol`, oldest first."""
    with conn.cursor() as cur:
        return _read_rolls(cur, _check_symbol(symbol))


_ROLL_GAPS_SQL = """
    SELECT r.roll_at, r.from_contract, r.to_contract, o."timestamp", o.close, n."timestamp", n.close
    FROM contract_rolls r
    LEFT JOIN LATERAL (
        SELECT "timestamp", close FROM ohlc_bars
        WHERE contract_id = r.from_contract AND timeframe_unit = %(unit)s AND timeframe_value = %(value)s AND "timestamp" < r.roll_at
        ORDER BY "timestamp" DESC LIMIT 1) o ON true
    LEFT JOIN LATERAL (
        SELECT "timestamp", close FROM ohlc_bars
        WHERE contract_id = r.to_contract AND timeframe_unit = %(unit)s AND timeframe_value = %(value)s AND "timestamp" < r.roll_at
        ORDER BY "timestamp" DESC LIMIT 1) n ON true
    WHERE r.symbol = %(symbol)s AND (%(as_of)s::timestamptz IS NULL OR r.roll_at <= %(as_of)s::timestamptz)
    ORDER BY r.roll_at"""


def roll_gaps(conn: psycopg2.extensions.connection, symbol: str, tf: Timeframe, as_of: datetime | None = None) -> list[RollGap]:
    """The gap of each recorded roll of `symbol` in `tf` known at `as_of` (roll at or before it;
    None: every recorded roll), oldest first. A roll after `as_of` is not read at all."""
    symbol, tf = _check_symbol(symbol), _check_timeframe(tf)
    as_of = utc(as_of, "as_of") if as_of is not None else None
    with conn.cursor() as cur:
        cur.execute(_ROLL_GAPS_SQL, {"symbol": symbol, "unit": tf.unit, "value": tf.value, "as_of": as_of})
        rows = cur.fetchall()
    return [
        roll_gap(
            RollPoint(utc(at), ContractMonth.of(f), ContractMonth.of(t)),
            tf,
            (old_at, old_close) if old_at is not None else None,
            (new_at, new_close) if new_at is not None else None,
        )
        for at, f, t, old_at, old_close, new_at, new_close in rows
    ]


# open ends of a read's range, as timestamps: one literal statement serves every range
_NO_START = datetime(1900, 1, 1, tzinfo=timezone.utc)
_NO_END = datetime(9999, 1, 1, tzinfo=timezone.utc)


def read_continuous_bars(
    conn: psycopg2.extensions.connection,
    symbol: str,
    tf: Timeframe,
    start: datetime | None,
    end: datetime | None,
    *,
    back_adjusted: bool = False,
    as_of: datetime | None = None,
) -> pd.DataFrame:
    """The front-month bars of `symbol` in `tf` starting in [start, end) (None: unbounded),
    ascending, from the view `continuous_bars`: the bar layout (`market.BAR_COLUMNS`, each bar's
    own contract id) plus `symbol`.

    `as_of` reads the series as known at that instant: only bars starting before it, and with
    `back_adjusted` only the rolls at or before it adjust them. `back_adjusted` adds OHLC + the
    gaps of the later known rolls (domain `back_adjust`), with the columns `adjustment` and
    `adjustment_complete` (False where a gap counted in it could not be computed; each unknown gap
    is logged as `roll_gap_missing`, and `roll_gaps` returns it with the reason).

    Rolls recorded while this reads can make the bars and the gaps disagree: the adjustment then
    refuses them with a DomainError (read again), rather than adjust bars by the wrong gaps."""
    symbol, tf = _check_symbol(symbol), _check_timeframe(tf)
    start = utc(start, "start") if start is not None else None
    end = utc(end, "end") if end is not None else None
    as_of = utc(as_of, "as_of") if as_of is not None else None
    if start is not None and end is not None and start >= end:
        raise DomainError(f"invalid range [{start.isoformat()}, {end.isoformat()}): expected start before end")
    if as_of is not None:
        end = as_of if end is None else min(end, as_of)
    gaps = roll_gaps(conn, symbol, tf, as_of) if back_adjusted else []
    with conn.cursor() as cur:
        cur.execute(
            'SELECT contract_id, "timestamp", open, high, low, close, volume, timeframe_unit, timeframe_value FROM continuous_bars'
            ' WHERE symbol = %s AND timeframe_unit = %s AND timeframe_value = %s AND "timestamp" >= %s AND "timestamp" < %s'
            ' ORDER BY "timestamp"',
            (symbol, tf.unit, tf.value, start or _NO_START, end or _NO_END),
        )
        rows = cur.fetchall()
    bars = normalize_bars(pd.DataFrame(rows, columns=BAR_COLUMNS)) if rows else empty_bars()
    bars["symbol"] = pd.Series(symbol, index=bars.index, dtype=object)  # as contract_id: object, not pandas' str dtype
    if not back_adjusted:
        return bars
    for g in gaps:
        if not g.known:
            log.warning(kv("roll_gap_missing", symbol=symbol, timeframe=tf.label, roll_at=g.point.at.isoformat(), reason=g.missing))
    return back_adjust(bars, gaps, as_of)


_ANALYSIS_BARS_SQL = (
    'SELECT "timestamp", contract_id, open, high, low, close, revisions, ingested_at FROM continuous_bars'
    ' WHERE symbol = %s AND timeframe_unit = %s AND timeframe_value = %s AND "timestamp" > %s ORDER BY "timestamp"'
)


def read_continuous_analysis_bars(conn: psycopg2.extensions.connection, symbol: str, tf: Timeframe, after: datetime | None) -> list[tuple]:
    """Rows (timestamp, contract_id, open, high, low, close, revisions, ingested_at) of the
    front-month bars of `symbol` in `tf` starting after `after` (all when None), ascending,
    unadjusted: what the trend analysis of the continuous series adjusts and feeds its detector."""
    symbol, tf = _check_symbol(symbol), _check_timeframe(tf)
    after = utc(after, "after") if after is not None else _NO_START
    with conn.cursor() as cur:
        cur.execute(_ANALYSIS_BARS_SQL, (symbol, tf.unit, tf.value, after))
        return cur.fetchall()


def continuous_bars_fingerprint(
    conn: psycopg2.extensions.connection, symbol: str, tf: Timeframe, through: datetime
) -> tuple[int, int, datetime | None]:
    """(count, sum of revisions, newest ingested_at) of the front-month bars of `symbol` in `tf`
    starting at or before `through`, as `bars.bars_fingerprint` of one contract: a bar added
    behind a watermark, replaced, or moved in or out of the series by a roll changes it."""
    symbol, tf = _check_symbol(symbol), _check_timeframe(tf)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), coalesce(sum(revisions), 0), max(ingested_at) FROM continuous_bars"
            ' WHERE symbol = %s AND timeframe_unit = %s AND timeframe_value = %s AND "timestamp" <= %s',
            (symbol, tf.unit, tf.value, utc(through, "through")),
        )
        count, revisions, ingested = cur.fetchone()
    return int(count), int(revisions), ingested
