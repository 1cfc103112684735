"""The bars a trend analysis feeds its detector, per kind of series (domain/series.py): one
contract's stored bars, or a symbol's continuous front-month series forward-adjusted at its
recorded rolls (domain/continuous.py).

Why forward adjustment and not back-adjustment: the detector runs incrementally from a saved
state, and back-adjustment shifts every earlier bar at each new roll, which would invalidate that
state (and rewrite every stored signal's price) four times a year. Forward adjustment shifts each
bar by the gaps of the rolls at or before its start only, fixed once the bar is known; the
trend-start rules compare prices only, so its signals are those of the back-adjusted series as
known at any instant. A roll after a bar never changes what is fed for it: the analysis never
looks across a roll into bars not yet known. Stored signal prices are the traded ones: the
price of the start bar in its own month (the adjustment taken off again).

Each series also names what must stay unchanged behind a watermark for the detector to resume
(`fingerprint`): for a continuous series that includes the rolls and their gaps, since a roll
recorded late or a repaired bar before a roll changes the series without touching its count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
import psycopg2.extensions

from ..domain.continuous import RollGap, forward_adjustments
from ..domain.errors import DomainError
from ..domain.series import SeriesId
from ..domain.timeframes import Timeframe
from ..domain.timestamps import timestamps_ns
from ..logs import get_logger, kv
from ..storage import bars as bar_store
from ..storage import continuous as continuous_store

log = get_logger("projectx.analysis")


@dataclass(frozen=True)
class Fingerprint:
    """What the bars at or before a watermark looked like: count, sum of revisions, newest
    ingested_at, and (continuous series) each roll there with its gap, as JSON-able lists."""

    count: int
    revisions: int
    ingested: datetime | None
    rolls: list[list] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesBars:
    """Bars read for the detector: `rows` (timestamp, open, high, low, close, revisions,
    ingested_at) ascending, in the detector's price frame, and the gaps of the rolls at or before
    the last of them (none for a contract)."""

    rows: list[tuple]
    gaps: tuple[RollGap, ...] = ()

    def traded_prices(self, signals: pd.DataFrame) -> pd.DataFrame:
        """`signals` (with `start_ts`, `start_price` in the detector's frame) with the start price
        of each in its own month: the forward adjustment at its start taken off again."""
        if not self.gaps or signals.empty:
            return signals
        out = signals.copy()
        out["start_price"] = out["start_price"].to_numpy() - forward_adjustments(timestamps_ns(out["start_ts"]), self.gaps)
        return out


def roll_record(gaps: tuple[RollGap, ...] | list[RollGap]) -> list[list]:
    """The rolls as a watermark's state keeps them: [instant, from, to, gap or None]."""
    return [[g.point.at.isoformat(), g.point.from_month.contract_id(), g.point.to_month.contract_id(), g.gap if g.known else None] for g in gaps]


class ContractSeriesBars:
    """One contract's stored bars, as stored."""

    def __init__(self, series: SeriesId):
        self.contract_id = series.contract_id

    def read(self, conn: psycopg2.extensions.connection, tf: Timeframe, after: datetime | None) -> SeriesBars:
        return SeriesBars(bar_store.read_analysis_bars(conn, self.contract_id, tf, after))

    def fingerprint(self, conn: psycopg2.extensions.connection, tf: Timeframe, through: datetime) -> Fingerprint:
        return Fingerprint(*bar_store.bars_fingerprint(conn, self.contract_id, tf, through))


class ContinuousSeriesBars:
    """A symbol's front-month bars (view `continuous_bars`), forward-adjusted at the recorded rolls."""

    def __init__(self, series: SeriesId):
        self.symbol = series.symbol

    def _gaps_through(self, conn: psycopg2.extensions.connection, tf: Timeframe, through: datetime | None) -> tuple[RollGap, ...]:
        if through is None:
            return ()
        return tuple(continuous_store.roll_gaps(conn, self.symbol, tf, as_of=through))

    def read(self, conn: psycopg2.extensions.connection, tf: Timeframe, after: datetime | None) -> SeriesBars:
        raw = continuous_store.read_continuous_analysis_bars(conn, self.symbol, tf, after)
        if not raw:
            if not continuous_store.recorded_roll_points(conn, self.symbol):
                # no roll, no series (the view stitches at the recorded rolls): say so, not "0 bars"
                raise DomainError(
                    f"no roll of {self.symbol} is recorded, so its continuous series has no bars: expected the ingest daemon,"
                    f" following {self.symbol} in instruments, to record the rolls between the months the gateway lists"
                    " (contract_rolls); analyse a contract id instead, or set analysis.series: contract"
                )
            return SeriesBars([])
        gaps = self._gaps_through(conn, tf, raw[-1][0])
        for g in gaps:
            if not g.known:
                log.warning(kv("roll_gap_missing", symbol=self.symbol, timeframe=tf.label, roll_at=g.point.at.isoformat(), reason=g.missing))
        shift = forward_adjustments(timestamps_ns(pd.Series([r[0] for r in raw], dtype=object)), gaps)
        rows = [(ts, o + d, h + d, lo + d, c + d, rev, ing) for (ts, _cid, o, h, lo, c, rev, ing), d in zip(raw, shift.tolist())]
        return SeriesBars(rows, gaps)

    def fingerprint(self, conn: psycopg2.extensions.connection, tf: Timeframe, through: datetime) -> Fingerprint:
        count, revisions, ingested = continuous_store.continuous_bars_fingerprint(conn, self.symbol, tf, through)
        return Fingerprint(count, revisions, ingested, roll_record(self._gaps_through(conn, tf, through)))


def series_bars(series: SeriesId) -> ContractSeriesBars | ContinuousSeriesBars:
    """The bar source of `series`."""
    return ContinuousSeriesBars(series) if series.is_continuous else ContractSeriesBars(series)
