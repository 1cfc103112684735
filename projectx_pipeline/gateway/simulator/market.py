"""The simulator's market: the trade sources behind both its history and its live feed.

There is exactly one source of truth per simulator, a `MarketSource` that answers "which trades
happened in [lo, hi)". The live feed releases those trades as the clock passes them and
`history_bars` aggregates the very same trades with `aggregate_trades`, so a bar built from the
live feed always equals the bar served from history for the same window. This module holds
that contract (`Trades`, `MarketSource`), the bar windows and `history_bars`; the contract
catalogue is in `contracts.py`.

* `ReplaySource` (`replay.py`) turns every bar of a bar CSV into a deterministic sequence of realistic
  prints (`prints.py`) whose aggregate reproduces that bar exactly, one bar at a time on demand; it
  answers history of whole source bars from the bars themselves, which is the same by construction.
* `SyntheticSource` (`synthetic.py`) generates trades as a pure function of (seed, contract, minute), so any past
  window can be regenerated and always equals what was streamed live.
* `ListingSource` (`listing_source.py`) is the synthetic market of several listed months per
  symbol: one price path per symbol plus each month's basis, volume following the roll, each
  month trading until its expiry instant; still a pure function of (seed, contract, minute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from projectx_pipeline.domain.aggregation import aggregate_trades
from projectx_pipeline.domain.market import empty_bars, normalize_bars
from projectx_pipeline.domain.sessions import trade_date_session
from projectx_pipeline.domain.timeframes import UNIT_DAY, UNIT_MONTH, UNIT_WEEK, Timeframe, bar_end, bar_starts_ns
from projectx_pipeline.domain.timestamps import NS_PER_DAY, NS_PER_SECOND, from_ns, to_ns

from .contracts import Contract

NS_PER_MS = 1_000_000
NS_PER_MINUTE = 60 * NS_PER_SECOND


@dataclass(frozen=True)
class Trades:
    """Column arrays of trades sorted by time: ns UTC timestamps, prices, sizes, aggressor sides (0 buy, 1 sell)."""

    ts_ns: np.ndarray
    price: np.ndarray
    size: np.ndarray
    side: np.ndarray

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    def between(self, lo_ns: int, hi_ns: int) -> Trades:
        """The trades with lo_ns <= ts < hi_ns."""
        i, j = np.searchsorted(self.ts_ns, [lo_ns, hi_ns], side="left")
        return self[i:j]

    def __getitem__(self, rows: slice) -> Trades:
        return Trades(self.ts_ns[rows], self.price[rows], self.size[rows], self.side[rows])

    def bars(self, contract_id: str, tf: Timeframe) -> pd.DataFrame:
        return aggregate_trades(contract_id, self.ts_ns, self.price, self.size, tf)


def no_trades() -> Trades:
    return Trades(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64), np.empty(0, np.int8))


class MarketSource(Protocol):
    contracts: dict[str, Contract]
    first_ns: int  # no trade exists before this instant
    start_ns: int  # where the clock starts

    @property
    def end_ns(self) -> int | None: ...  # where the replay ends (None: the market never ends); read-only

    def trades_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> Trades: ...

    def bars_between(self, contract_id: str, tf: Timeframe, lo_ns: int, hi_ns: int) -> pd.DataFrame:
        """`trades_between(...).bars(contract_id, tf)`, possibly without generating every trade."""
        ...

    def released_between(self, contract_id: str, lo_ns: int, hi_ns: int) -> tuple[Trades, int]:
        """What the clock releases over [lo, hi) when nobody watches it: trades with the same
        figures per CME session as `trades_between` (open, high, low, last, volume, session) and
        how many trades there really are. The last trade's instant and side need not be exact."""
        ...

    def next_step_ns(self, after_ns: int) -> int | None:
        """The next natural step boundary after `after_ns` (what speed "max" advances by), or None."""
        ...


# --------------------------------------------------------------------------- bar windows


def window_open_ns(label_ns: int, tf: Timeframe) -> int:
    """Where the trades of the bar labelled `label_ns` start.

    Day, week and month bars are labelled with a midnight UTC but their trades start at the
    18:00 New York session open before it."""
    if tf.unit not in (UNIT_DAY, UNIT_WEEK, UNIT_MONTH):
        return label_ns
    first_trade_date = from_ns(label_ns).date()
    return to_ns(trade_date_session(first_trade_date)[0])


def window_end_ns(label_ns: int, tf: Timeframe) -> int:
    return to_ns(bar_end(from_ns(label_ns), tf))


def _longest_window_ns(tf: Timeframe) -> int:
    """An upper bound of how far a bar's trades reach from its label, either way."""
    calendar_days = {UNIT_DAY: 1, UNIT_WEEK: 7, UNIT_MONTH: 31}
    if tf.unit in calendar_days:
        return calendar_days[tf.unit] * NS_PER_DAY
    return tf.nominal_seconds * NS_PER_SECOND


def _label_ns(ts_ns: int, tf: Timeframe) -> int:
    return int(bar_starts_ns(np.array([ts_ns], dtype=np.int64), tf)[0])


_DAY = Timeframe(UNIT_DAY, 1)


def session_open_ns(ts_ns: int) -> int:
    """UTC ns of the 18:00 New York session open at or before `ts_ns`."""
    return window_open_ns(_label_ns(ts_ns, _DAY), _DAY)


def session_labels_ns(ts_ns: np.ndarray) -> np.ndarray:
    """The trade-date label (ns) of each timestamp: the trades of one session share a label."""
    return bar_starts_ns(ts_ns, _DAY)


def bar_labels_ns(bars: pd.DataFrame) -> np.ndarray:
    """A bar frame's labels (start times) as int64 ns UTC."""
    return bars["timestamp"].array.asi8


# Bounds the work of one aggregation pass over a synthetic market (a few hundred thousand trades).
_HISTORY_CHUNK_NS = 3 * NS_PER_DAY


def history_bars(
    source: MarketSource,
    contract_id: str,
    tf: Timeframe,
    start_ns: int,
    end_ns: int,
    clock_ns: int,
    *,
    limit: int | None = None,
    include_partial: bool = True,
) -> pd.DataFrame:
    """Bars labelled in [start_ns, end_ns) from the trades before `clock_ns`, oldest first.

    `limit` keeps the most recent bars. The window is walked backwards in chunks cut at bar
    boundaries, so a request for the latest few bars of a long window generates only those."""
    if start_ns >= end_ns:
        return empty_bars()
    reach = _longest_window_ns(tf)
    trades_lo = max(source.first_ns, start_ns - reach)
    trades_hi = min(clock_ns, end_ns + reach)
    wanted = None if limit is None else limit + (0 if include_partial else 1)
    step = max(_HISTORY_CHUNK_NS, 2 * reach)
    pieces: list[pd.DataFrame] = []
    collected = 0
    chunk_hi = trades_hi
    while chunk_hi > trades_lo and (wanted is None or collected < wanted):
        probe = chunk_hi - step
        chunk_lo = trades_lo if probe <= trades_lo else max(trades_lo, window_open_ns(_label_ns(probe, tf), tf))
        bars = source.bars_between(contract_id, tf, chunk_lo, chunk_hi)
        labels = bar_labels_ns(bars)
        bars = bars[(labels >= start_ns) & (labels < end_ns)]
        pieces.append(bars)
        collected += len(bars)
        chunk_hi = chunk_lo
    if not pieces:
        return empty_bars()
    out = pd.concat(pieces[::-1], ignore_index=True) if len(pieces) > 1 else pieces[0].reset_index(drop=True)
    if not include_partial and len(out):
        # Only the latest bar can still be in progress: the one whose window holds the clock.
        last_label = int(bar_labels_ns(out)[-1])
        if window_end_ns(last_label, tf) > clock_ns:
            out = out.iloc[:-1]
    if limit is not None:
        out = out.iloc[-limit:] if limit > 0 else out.iloc[:0]
    return normalize_bars(out)
