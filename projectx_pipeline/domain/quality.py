"""Bar quality rules (pure): schema and invariants, gaps against the session calendar,
live-vs-history reconciliation. The Dagster checks run these on stored bars."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
import pandera.pandas as pa

from .market import BAR_COLUMNS
from .timeframes import UNIT_DAY, Timeframe, bar_starts_ns
from .timestamps import to_ns


@dataclass(frozen=True)
class Session:
    trade_date: date
    open: datetime  # UTC
    close: datetime  # UTC (early closes included)


def sessions_from_calendar(calendar_name: str, start: date, end: date, closed_dates=()) -> list[Session]:
    """Trading sessions by trade date from pandas_market_calendars (holidays and early closes),
    minus `closed_dates`: days the library lists but the exchange did not trade."""
    import pandas_market_calendars as mcal

    schedule = mcal.get_calendar(calendar_name).schedule(start_date=start.isoformat(), end_date=end.isoformat())
    closed = set(closed_dates)
    return [
        Session(idx.date(), row.market_open.to_pydatetime(), row.market_close.to_pydatetime())
        for idx, row in schedule.iterrows()
        if idx.date() not in closed
    ]


def _on_tick_grid(values: pd.Series, tick: float) -> pd.Series:
    ratio = values / tick
    return (ratio - ratio.round()).abs() < 1e-6


def bar_schema(tick_size: float) -> pa.DataFrameSchema:
    """Types, OHLC invariants, tick grid, non-negative volume, unique keys, ascending timestamps."""

    def price(name: str) -> pa.Column:
        return pa.Column(
            float,
            [
                pa.Check(np.isfinite, element_wise=False, error=f"{name} must be finite"),
                pa.Check(lambda s: _on_tick_grid(s, tick_size), error=f"{name} must be a multiple of the tick size {tick_size}"),
            ],
        )

    return pa.DataFrameSchema(
        {
            "contract_id": pa.Column(str),
            "timestamp": pa.Column(pd.DatetimeTZDtype("ns", "UTC")),
            "open": price("open"),
            "high": price("high"),
            "low": price("low"),
            "close": price("close"),
            "volume": pa.Column("int64", pa.Check.ge(0, error="volume must be >= 0")),
            "timeframe_unit": pa.Column("int64", pa.Check.isin([1, 2, 3, 4, 5, 6])),
            "timeframe_value": pa.Column("int64", pa.Check.gt(0)),
        },
        checks=[
            pa.Check(lambda d: d.high >= d.low, error="high must be >= low"),
            pa.Check(lambda d: (d.open >= d.low) & (d.open <= d.high), error="open must lie within [low, high]"),
            pa.Check(lambda d: (d.close >= d.low) & (d.close <= d.high), error="close must lie within [low, high]"),
            pa.Check(
                lambda d: ~d.duplicated(["contract_id", "timeframe_unit", "timeframe_value", "timestamp"], keep=False),
                error="key (contract, timeframe, timestamp) must be unique",
            ),
            pa.Check(
                lambda d: (
                    d.groupby(["contract_id", "timeframe_unit", "timeframe_value"])["timestamp"].diff().fillna(pd.Timedelta(1)) > pd.Timedelta(0)
                ),
                error="timestamps must ascend within a contract and timeframe",
            ),
        ],
        strict=False,
        coerce=False,
    )


def validate_bars(bars: pd.DataFrame, tick_size: float) -> pd.DataFrame:
    """Every violation as a row: the bar (contract, timeframe, timestamp), the rule and the value.
    Empty when the bars pass."""
    try:
        bar_schema(tick_size).validate(bars.loc[:, BAR_COLUMNS], lazy=True)
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
        rows = []
        for case in fc.itertuples(index=False):
            idx = case.index
            bar = bars.loc[idx] if idx is not None and not pd.isna(idx) and idx in bars.index else None
            rows.append(
                {
                    "contract_id": bar["contract_id"] if bar is not None else None,
                    "timeframe": f"{bar['timeframe_value']}/{bar['timeframe_unit']}" if bar is not None else None,
                    "timestamp": bar["timestamp"].isoformat() if bar is not None else None,
                    "column": case.column,
                    "rule": str(case.check),
                    "value": str(case.failure_case),
                }
            )
        return pd.DataFrame(rows)
    return pd.DataFrame(columns=["contract_id", "timeframe", "timestamp", "column", "rule", "value"])


def expected_bar_starts(tf: Timeframe, session: Session) -> pd.DatetimeIndex:
    """Bar starts a complete series has inside one session (no bar in the halt or weekends)."""
    if tf.unit >= UNIT_DAY:
        return pd.DatetimeIndex([pd.Timestamp(session.trade_date, tz="UTC")]) if tf.unit == UNIT_DAY else pd.DatetimeIndex([], tz="UTC")
    step = tf.step_ns
    assert step is not None  # second, minute and hour bars have a fixed length
    open_ns, close_ns = to_ns(session.open), to_ns(session.close)
    # every base instant of the session, aligned and de-duplicated
    grid = np.arange(open_ns, close_ns, min(step, 60_000_000_000), dtype=np.int64)
    starts = np.unique(bar_starts_ns(grid, tf))
    starts = starts[(starts >= open_ns - step + 1) & (starts < close_ns)]
    return pd.DatetimeIndex(starts.astype("datetime64[ns]"), tz="UTC")


def find_gaps(bars: pd.DataFrame, tf: Timeframe, sessions: list[Session]) -> pd.DatetimeIndex:
    """Bar starts that a session should have but `bars` lacks (the halt, weekends and holidays are not gaps)."""
    present = pd.DatetimeIndex(bars["timestamp"])
    expected = pd.DatetimeIndex([], tz="UTC")
    for s in sessions:
        expected = expected.append(expected_bar_starts(tf, s))
    return expected.difference(present)


def reconcile(live: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Bars whose live and history versions differ, or that exist on one side only.

    Columns: timeframe_unit, timeframe_value, timestamp, field, live, history."""
    key = ["timeframe_unit", "timeframe_value", "timestamp"]
    merged = live.merge(history, on=key, how="outer", suffixes=("_live", "_history"), indicator="side")
    rows = []
    for r in merged.to_dict("records"):
        base = {k: r[k] for k in key}
        if r["side"] == "left_only":
            rows.append({**base, "field": "bar", "live": "present", "history": "missing"})
        elif r["side"] == "right_only":
            rows.append({**base, "field": "bar", "live": "missing", "history": "present"})
        else:
            rows.extend(
                {**base, "field": f, "live": r[f"{f}_live"], "history": r[f"{f}_history"]}
                for f in ("open", "high", "low", "close", "volume")
                if r[f"{f}_live"] != r[f"{f}_history"]
            )
    return pd.DataFrame(rows, columns=key + ["field", "live", "history"])
