"""Detected signals in one comparable form, whether computed or read back from the store."""

from __future__ import annotations

import pandas as pd


def canonical_signals(frame: pd.DataFrame, price: str) -> pd.DataFrame:
    out = frame.loc[:, ["type", "start_ts", "confirm_ts", "rule", price]].rename(columns={price: "price"})
    for c in ("start_ts", "confirm_ts"):
        out[c] = pd.to_datetime(out[c], utc=True).astype("datetime64[ns, UTC]")
    out["type"] = out["type"].astype(object)
    out["rule"] = out["rule"].astype(object)
    return out.sort_values(["start_ts", "type"]).reset_index(drop=True)
