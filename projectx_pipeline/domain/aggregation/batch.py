"""The batch form of aggregation: all trades of the windows at once (the simulator's history)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..market import BAR_COLUMNS, empty_bars
from ..timeframes import Timeframe, bar_starts_ns


def aggregate_trades(contract_id: str, ts_ns, price, size, tf: Timeframe) -> pd.DataFrame:
    """Bars of timeframe `tf` from trades (int64 ns timestamps, prices, sizes).

    Trades are ordered by timestamp (stable, so equal timestamps keep their given order):
    the open is the earliest trade, the close the latest. Windows without trades have no bar.
    """
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    price = np.asarray(price, dtype=np.float64)
    size = np.asarray(size, dtype=np.int64)
    if ts_ns.size == 0:
        return empty_bars()
    order = np.argsort(ts_ns, kind="stable")
    ts_ns, price, size = ts_ns[order], price[order], size[order]
    starts = bar_starts_ns(ts_ns, tf)
    # starts is non-decreasing because ts is sorted and alignment is monotone
    cut = np.flatnonzero(np.diff(starts)) + 1
    first = np.concatenate(([0], cut))
    last = np.concatenate((cut - 1, [ts_ns.size - 1]))
    out = pd.DataFrame(
        {
            "contract_id": contract_id,
            "timestamp": pd.to_datetime(starts[first], utc=True).astype("datetime64[ns, UTC]"),
            "open": price[first],
            "high": np.maximum.reduceat(price, first),
            "low": np.minimum.reduceat(price, first),
            "close": price[last],
            "volume": np.add.reduceat(size, first),
            "timeframe_unit": tf.unit,
            "timeframe_value": tf.value,
        }
    )
    return out[BAR_COLUMNS]
