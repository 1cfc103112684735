"""A symbol's continuous front-month series: which contract's bars it takes when, and the
back-adjustment that closes the price gaps at its rolls (pure rules, no I/O).

Stitching: a symbol's roll points (`rolls.RollPoint`, consecutive and ascending) cut time into
front spans (`Segment`). Before the first roll its `from_month` is front; from each roll on, its
`to_month`, up to the next roll. A bar belongs to the series when its contract is front at the
bar's start. The view `continuous_bars` (storage migration 0005) applies the same rule in SQL.

Back-adjustment (additive; the latest known month keeps its prices):

* the gap of a roll, per timeframe, is the close of the new month's last bar starting before the
  roll minus the close of the old month's last bar starting before it;
* a bar's adjustment is the sum of the gaps of the rolls after the bar's start and at or before
  `as_of`. A roll after `as_of` is not known at `as_of` and adjusts nothing, so a series read as
  of an instant is the one an analysis running then saw: a later roll shifts every earlier bar by
  the same amount and changes none of the price moves already seen;
* forward adjustment, for an analysis fed bar by bar: each bar minus the gaps of the rolls at or
  before its start (`forward_adjustments`). The earliest month keeps its prices and a bar's shift
  is fixed once the bar is known, so a detector's state stays valid across a roll; at any instant
  it differs from the back-adjusted series as of then by one constant, so every comparison of
  prices (all the trend-start rules make) answers the same;
* a gap that cannot be computed (a month without a bar before the roll) counts as 0: the
  `RollGap` says why (`missing`), and the bars it should have adjusted are flagged
  (`adjustment_complete` False). It is never invented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from .contracts import ContractId
from .errors import DomainError
from .market import BAR_COLUMNS
from .rolls import ContractMonth, RollPoint
from .timeframes import Timeframe
from .timestamps import to_ns, utc

ADJUSTED_PRICE_COLUMNS = ("open", "high", "low", "close")


@dataclass(frozen=True)
class Segment:
    """`contract_id` is the front month from `start` (inclusive; None: since ever) to `end`
    (exclusive; None: until a later roll is known)."""

    contract_id: ContractId
    start: datetime | None
    end: datetime | None

    def contains(self, at: datetime) -> bool:
        at = utc(at)
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)


@dataclass(frozen=True)
class RollGap:
    """The price gap of one roll in one timeframe: `new_close - old_close`, the closes of the two
    months' last bars starting before the roll (at `old_bar_at`, `new_bar_at`). When one of them
    has no such bar, `gap` is 0 and `missing` says which bar is missing."""

    point: RollPoint
    timeframe: Timeframe
    gap: float
    old_close: float | None
    new_close: float | None
    old_bar_at: datetime | None
    new_bar_at: datetime | None
    missing: str | None = None

    @property
    def known(self) -> bool:
        return self.missing is None


def check_roll_points(points: Sequence[RollPoint]) -> list[RollPoint]:
    """`points` as one symbol's consecutive rolls, or a DomainError naming the point at fault:
    each a RollPoint at an aware instant, to a later month of the same symbol, ascending, each
    from the month the previous one rolled to."""
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
        raise DomainError(f"invalid roll points {points!r}: expected a list of rolls.RollPoint")
    checked: list[RollPoint] = []
    for p in points:
        if not isinstance(p, RollPoint):
            raise DomainError(f"invalid roll point {p!r}: expected a rolls.RollPoint")
        if not isinstance(p.from_month, ContractMonth) or not isinstance(p.to_month, ContractMonth):
            raise DomainError(f"invalid roll point {p!r}: expected its from_month and to_month as rolls.ContractMonth")
        at = utc(p.at, "roll instant")
        if p.to_month.symbol != p.from_month.symbol:
            raise DomainError(
                f"invalid roll at {at.isoformat()} from {p.from_month.contract_id()} to {p.to_month.contract_id()}: expected two months of one symbol"
            )
        if not p.to_month > p.from_month:
            raise DomainError(
                f"invalid roll at {at.isoformat()} from {p.from_month.contract_id()} to {p.to_month.contract_id()}: expected a later month to roll to"
            )
        if checked:
            previous = checked[-1]
            if p.symbol != previous.symbol:
                raise DomainError(f"roll points of several symbols {sorted({previous.symbol, p.symbol})}: expected the rolls of one symbol")
            if at <= previous.at:
                raise DomainError(
                    f"roll at {at.isoformat()} follows the roll at {previous.at.isoformat()}: expected ascending roll instants, each once"
                )
            if p.from_month != previous.to_month:
                raise DomainError(
                    f"roll at {at.isoformat()} leaves {p.from_month.contract_id()}, but the roll at {previous.at.isoformat()} made"
                    f" {previous.to_month.contract_id()} the front month: expected consecutive rolls, each from the month the one before rolled to"
                )
        checked.append(RollPoint(at, p.from_month, p.to_month))
    return checked


def front_segments(points: list[RollPoint]) -> list[Segment]:
    """The front spans the rolls of one symbol cut time into, oldest first: the first roll's old
    month until it, then each roll's new month until the next roll (the last one open-ended).
    No roll point: no segment (without a roll, no month is known to be front)."""
    checked = check_roll_points(points)
    if not checked:
        return []
    segments = [Segment(checked[0].from_month.contract_id(), None, checked[0].at)]
    for p, following in zip(checked, [*checked[1:], None]):
        segments.append(Segment(p.to_month.contract_id(), p.at, following.at if following is not None else None))
    return segments


def stitch_front_bars(bars: pd.DataFrame, segments: Sequence[Segment]) -> pd.DataFrame:
    """The bars of `bars` (any contracts and timeframes) whose contract is front at the bar's start,
    ordered by timeframe and start: what the view `continuous_bars` selects, for one symbol."""
    _check_bar_frame(bars)
    keep = np.zeros(len(bars), dtype=bool)
    contracts = bars["contract_id"].to_numpy()
    ts = bars["timestamp"]
    for s in segments:
        if not isinstance(s, Segment):
            raise DomainError(f"invalid segment {s!r}: expected a continuous.Segment (from front_segments)")
        in_span = contracts == s.contract_id
        if s.start is not None:
            in_span &= (ts >= pd.Timestamp(s.start)).to_numpy()
        if s.end is not None:
            in_span &= (ts < pd.Timestamp(s.end)).to_numpy()
        keep |= in_span
    out = bars[keep].sort_values(["timeframe_unit", "timeframe_value", "timestamp"], kind="stable")
    return out.reset_index(drop=True)


LastBar = tuple[datetime, float]  # (start, close) of a month's last bar before a roll


def roll_gap(point: RollPoint, timeframe: Timeframe, old_last: LastBar | None, new_last: LastBar | None) -> RollGap:
    """The gap of the roll `point` in `timeframe`, from the last bar starting before the roll of the
    old month (`old_last`) and of the new month (`new_last`); None for a month without one."""
    (point,) = check_roll_points([point])
    if not isinstance(timeframe, Timeframe):
        raise DomainError(f"invalid timeframe {timeframe!r}: expected a timeframes.Timeframe")
    old_at, old_close = _last_bar(old_last, point, point.from_month)
    new_at, new_close = _last_bar(new_last, point, point.to_month)
    absent = [m.contract_id() for m, bar in ((point.from_month, old_last), (point.to_month, new_last)) if bar is None]
    if absent:
        missing = (
            f"no {timeframe} bar of {' nor of '.join(absent)} starts before the roll at {point.at.isoformat()}: its gap is unknown, counted as 0"
        )
        return RollGap(point, timeframe, 0.0, old_close, new_close, old_at, new_at, missing)
    assert old_close is not None and new_close is not None  # both bars are given (no month absent)
    return RollGap(point, timeframe, new_close - old_close, old_close, new_close, old_at, new_at)


def _last_bar(bar: LastBar | None, point: RollPoint, month: ContractMonth) -> tuple[datetime | None, float | None]:
    if bar is None:
        return None, None
    try:
        at, close = bar
    except (TypeError, ValueError):
        raise DomainError(f"invalid last bar {bar!r} of {month.contract_id()}: expected (start, close) or None") from None
    at = utc(at, f"start of the last {month.contract_id()} bar")
    if at >= point.at:
        raise DomainError(
            f"invalid last bar of {month.contract_id()} at {at.isoformat()}: expected a bar starting before the roll at {point.at.isoformat()}"
        )
    if isinstance(close, bool) or not isinstance(close, (int, float)) or not math.isfinite(close):
        raise DomainError(f"invalid close {close!r} of the {month.contract_id()} bar at {at.isoformat()}: expected a finite price")
    return at, float(close)


def back_adjust(bars: pd.DataFrame, gaps: Sequence[RollGap], as_of: datetime | None = None) -> pd.DataFrame:
    """`bars` (one symbol's front-month bars of one timeframe, all starting before `as_of`) with
    their OHLC back-adjusted: each price plus the gaps of the rolls after the bar's start and at
    or before `as_of` (None: every roll of `gaps` is known). Adds `adjustment` (what was added)
    and `adjustment_complete` (False when a gap counted in it is unknown).

    `gaps` are the gaps of the symbol's rolls in the bars' timeframe, ascending (`roll_gap`). Each
    bar must be of the month the known rolls make front at its start: bars stitched under other
    rolls than the gaps' would be adjusted by the wrong gaps."""
    _check_bar_frame(bars)
    if as_of is not None:
        as_of = utc(as_of, "as_of")
    _check_gaps(gaps)
    timeframes = {g.timeframe for g in gaps} | {
        Timeframe(int(u), int(v)) for u, v in bars[["timeframe_unit", "timeframe_value"]].drop_duplicates().itertuples(index=False)
    }
    if len(timeframes) > 1:
        raise DomainError(f"bars and gaps of several timeframes {sorted(tf.label for tf in timeframes)}: expected one timeframe")
    known = [g for g in gaps if as_of is None or g.point.at <= as_of]

    ts_ns = bars["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if as_of is not None and len(ts_ns) and ts_ns.max() >= to_ns(as_of):
        late = bars["timestamp"].iloc[int(np.argmax(ts_ns >= to_ns(as_of)))]
        raise DomainError(f"bar at {late.isoformat()} starts at or after as_of {as_of.isoformat()}: expected only bars known at as_of")
    roll_ns = np.array([to_ns(g.point.at) for g in known], dtype=np.int64)
    # rolls at or before each bar's start: the bar is adjusted by the known rolls from there on
    rolls_before = np.searchsorted(roll_ns, ts_ns, side="right")
    _check_front_months(bars, known, rolls_before)
    gap_after = np.append(np.cumsum([g.gap for g in reversed(known)])[::-1], 0.0)
    unknown_after = np.append(np.cumsum([not g.known for g in reversed(known)])[::-1], 0)

    out = bars.copy()
    adjustment = gap_after[rolls_before].astype(np.float64)
    for c in ADJUSTED_PRICE_COLUMNS:
        out[c] = out[c].to_numpy() + adjustment
    out["adjustment"] = adjustment
    out["adjustment_complete"] = unknown_after[rolls_before] == 0
    return out


def forward_adjustments(starts: np.ndarray, gaps: Sequence[RollGap]) -> np.ndarray:
    """What forward adjustment adds to the prices of bars starting at `starts` (int64 ns since the
    epoch, any order): minus the sum of the gaps of the rolls at or before each start. `gaps` are
    one symbol's, ascending (`roll_gap`); an unknown gap counts as 0, as in `back_adjust`."""
    _check_gaps(gaps)
    starts = np.asarray(starts, dtype=np.int64)
    roll_ns = np.array([to_ns(g.point.at) for g in gaps], dtype=np.int64)
    gap_through = np.concatenate([[0.0], np.cumsum([g.gap for g in gaps], dtype=np.float64)])
    return -gap_through[np.searchsorted(roll_ns, starts, side="right")]


def _check_gaps(gaps: Sequence[RollGap]) -> None:
    """`gaps` as one symbol's roll gaps, ascending (`roll_gap`), or a DomainError naming the fault."""
    for g in gaps:
        if not isinstance(g, RollGap):
            raise DomainError(f"invalid roll gap {g!r}: expected a continuous.RollGap (from roll_gap)")
    check_roll_points([g.point for g in gaps])


def _check_front_months(bars: pd.DataFrame, known: list[RollGap], rolls_before: np.ndarray) -> None:
    """Each bar's month is the front month the known rolls give at its start."""
    if bars.empty:
        return
    if not known:
        contracts = sorted(pd.unique(bars["contract_id"]))
        if len(contracts) > 1:
            raise DomainError(f"bars of several contracts {contracts} and no roll known between them: expected the bars of one front month")
        return
    # the months of a chain differ, so each contract is front in at most one span: compare span
    # numbers (integers), not a month object per bar
    fronts = [known[0].point.from_month] + [g.point.to_month for g in known]
    contracts = pd.Categorical(bars["contract_id"])
    span_of = np.array([fronts.index(m) if (m := ContractMonth.of(c)) in fronts else -1 for c in contracts.categories], dtype=np.int64)
    wrong = np.flatnonzero(span_of[contracts.codes] != rolls_before)
    if len(wrong):
        i = int(wrong[0])
        raise DomainError(
            f"bar at {bars['timestamp'].iloc[i].isoformat()} is of {bars['contract_id'].iloc[i]}, but the rolls given make"
            f" {fronts[rolls_before[i]].contract_id()} the front month then: expected the front-month bars of the same rolls"
        )


def _check_bar_frame(bars: object) -> None:
    if not isinstance(bars, pd.DataFrame):
        raise DomainError(f"invalid bars {type(bars).__name__}: expected a bar frame with columns {BAR_COLUMNS}")
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise DomainError(f"bar frame lacks columns {missing}: expected {BAR_COLUMNS}")
    if str(bars["timestamp"].dtype) != "datetime64[ns, UTC]":
        raise DomainError(f"invalid bar timestamps of dtype {bars['timestamp'].dtype}: expected datetime64[ns, UTC] (market.normalize_bars)")
