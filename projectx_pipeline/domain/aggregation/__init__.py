"""Trades → OHLCV bars (pure domain code), in two forms that must give identical bars.

* `batch.aggregate_trades`: every trade of a window in one call. The simulator builds its
  history with it.
* `live.BarAggregator`: the live form, used by the ingestion daemon for one contract: numpy
  batches of trades in, closed bars of several timeframes out, with late trades, feed restarts
  and a grace period handled explicitly (see its docstring).
* `trade_checks.split_valid` screens raw trade columns for the rows the aggregator would reject.
"""

from .batch import aggregate_trades
from .live import REPAIR_COLUMNS, AggregatorCounters, AggregatorOutput, BarAggregator
from .trade_checks import split_valid

__all__ = ["REPAIR_COLUMNS", "AggregatorCounters", "AggregatorOutput", "BarAggregator", "aggregate_trades", "split_valid"]
