"""Trend starts and coordination on a symbol's continuous front-month series (`analysis.series:
continuous`): the series id, forward adjustment, and against a real PostgreSQL server the
analysis of a series that rolls from one month to the next.

The oracle: the next month is the old month's real bars plus a constant (the carry between two
quarterly months), so the continuous series, forward-adjusted, is the old month's bars, and its
trend starts must be exactly those of the old month analysed as a contract, with the new month's
prices after the roll."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectx_pipeline.analysis.coordination_runner import run_coordination
from projectx_pipeline.analysis.trend_analysis import run_trend_analysis
from projectx_pipeline.domain.continuous import RollGap, back_adjust, forward_adjustments
from projectx_pipeline.domain.contracts import ContractId
from projectx_pipeline.domain.coordination import parse_rules
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import normalize_bars, read_bars_csv
from projectx_pipeline.domain.rolls import ContractMonth, RollPoint
from projectx_pipeline.domain.series import SeriesId
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.domain.timestamps import timestamps_ns
from projectx_pipeline.domain.trend_starts import ANALYZER_ID, detect_trend_starts_frame
from projectx_pipeline.storage import coordinated_signals as coordinated
from projectx_pipeline.storage import trend_signals
from projectx_pipeline.storage.bars import upsert_bars
from projectx_pipeline.storage.continuous import read_continuous_bars, record_roll_points

M25, U25 = "CON.F.US.MES.M25", "CON.F.US.MES.U25"
TF1H, TF4H = parse_timeframe("1h"), parse_timeframe("4h")
CARRY = 60.0  # U25 trades this much above M25 (a multiple of the tick: sums stay exact)
ROLL = datetime(2025, 4, 16, 22, tzinfo=timezone.utc)  # inside the sample: a session open mid-April
CUT = datetime(2025, 4, 16, 18, tzinfo=timezone.utc)  # four hours before the roll
RULES = parse_rules(
    [
        {
            "name": "long_4h_1h",
            "label": "long",
            "anchor": {"timeframe": "4h", "type": "uptrend"},
            "trigger": {"timeframe": "1h", "type": "uptrend"},
            "within_minutes": 240,
        },
        {
            "name": "short_4h_1h",
            "label": "short",
            "anchor": {"timeframe": "4h", "type": "downtrend"},
            "trigger": {"timeframe": "1h", "type": "downtrend"},
            "within_minutes": 240,
        },
    ]
)


def mes(code: str) -> ContractMonth:
    return ContractMonth.of(f"CON.F.US.MES.{code}")


# --------------------------------------------------------------------------- pure rules


def test_a_series_is_a_contract_or_a_symbol_and_anything_else_is_refused_by_name():
    contract, symbol = SeriesId(M25), SeriesId("MES")
    assert (contract.is_continuous, contract.symbol, contract.contract_id) == (False, "MES", M25)
    assert (symbol.is_continuous, symbol.symbol) == (True, "MES")
    assert SeriesId(ContractId(M25)) == M25 and SeriesId(symbol) is symbol
    with pytest.raises(DomainError, match="series 'MES' is the continuous series of a symbol"):
        _ = symbol.contract_id
    for bad in ["mes", "CON.F.US.MES", "MES'; DROP TABLE x; --", "", 7, None]:
        with pytest.raises(DomainError, match=f"invalid series {bad!r}: expected a contract id such as CON.F.US.MES.M25"):
            SeriesId(bad)


def _gap(point: RollPoint, gap: float | None) -> RollGap:
    return RollGap(point, TF1H, gap or 0.0, None, None, None, None, None if gap is not None else "unknown")


ROLLS = [RollPoint(ROLL + timedelta(days=91 * i), mes(a), mes(b)) for i, (a, b) in enumerate([("M25", "U25"), ("U25", "Z25"), ("Z25", "H26")])]
ticks = st.integers(-800, 800).map(lambda n: n * 0.25)


@given(
    st.lists(st.one_of(ticks, st.none()), min_size=3, max_size=3),
    st.lists(st.integers(-10 * 24, 300 * 24), min_size=1, max_size=40, unique=True),
    st.integers(0, 300 * 24),
)
def test_forward_adjustment_is_back_adjustment_as_of_any_instant_less_one_constant(gap_values, hours, as_of_hours):
    # so every price comparison (all the trend-start rules make) answers alike on both series
    gaps = [_gap(p, g) for p, g in zip(ROLLS, gap_values)]
    as_of = ROLL - timedelta(days=10) + as_of_hours * timedelta(hours=1)
    starts = sorted(ROLL + h * timedelta(hours=1) for h in hours)
    starts = [t for t in starts if t < as_of] or [as_of - timedelta(hours=1)]
    fronts = [next((p.to_month for p in reversed(ROLLS) if p.at <= t), ROLLS[0].from_month) for t in starts]
    bars = normalize_bars(
        pd.DataFrame(
            {
                "contract_id": [m.contract_id() for m in fronts],
                "timestamp": pd.to_datetime(starts, utc=True),
                "open": 5000.0,
                "high": 5001.0,
                "low": 4999.0,
                "close": 5000.0,
                "volume": 1,
                "timeframe_unit": TF1H.unit,
                "timeframe_value": TF1H.value,
            }
        )
    )
    forward = forward_adjustments(timestamps_ns(bars["timestamp"]), [g for g in gaps if g.point.at <= as_of])
    back = back_adjust(bars, gaps, as_of)["adjustment"].to_numpy()
    assert len(set((back - forward).tolist())) == 1
    # a bar's forward shift depends on the rolls at or before it only: later rolls never move it
    assert (forward_adjustments(timestamps_ns(bars["timestamp"]), gaps) == forward).all()


def test_forward_adjustment_refuses_what_is_no_chain_of_gaps():
    with pytest.raises(DomainError, match="expected ascending roll instants"):
        forward_adjustments(np.array([0], dtype=np.int64), [_gap(ROLLS[1], 1.0), _gap(ROLLS[0], 1.0)])
    with pytest.raises(DomainError, match="invalid roll gap 1.0: expected a continuous.RollGap"):
        forward_adjustments(np.array([0], dtype=np.int64), [1.0])


# --------------------------------------------------------------------------- against PostgreSQL


@pytest.fixture(scope="module")
def months(sample_dir) -> dict:
    """Per timeframe, M25's real bars and U25 = the same bars + CARRY."""
    out = {}
    for tf in (TF1H, TF4H):
        m25 = read_bars_csv(sample_dir / f"CON.F.US.MES.M25_{tf.label}.csv")
        u25 = m25.copy()
        u25["contract_id"] = U25
        for c in ("open", "high", "low", "close"):
            u25[c] = u25[c] + CARRY
        out[tf] = (m25, u25)
    return out


def _store(conn, months, tf, start=None, end=None) -> None:
    for frame in months[tf]:
        ts = frame["timestamp"]
        keep = pd.Series(True, index=frame.index)
        if start is not None:
            keep &= ts >= pd.Timestamp(start)
        if end is not None:
            keep &= ts < pd.Timestamp(end)
        upsert_bars(conn, frame[keep].reset_index(drop=True), mode="replace", source="history", notify=False)
    conn.commit()


def _record_roll(conn, at=ROLL) -> None:
    record_roll_points(conn, [RollPoint(at, mes("M25"), mes("U25"))], "test")
    conn.commit()


def _signals(conn, series: str, tf) -> pd.DataFrame:
    frame = trend_signals.read_detected_signals(conn, ANALYZER_ID, series, tf)
    conn.rollback()
    return frame.sort_values(["start_ts", "type"]).reset_index(drop=True)


def _key(frame: pd.DataFrame) -> list[tuple]:
    return list(frame[["type", "start_ts", "confirm_ts", "rule"]].itertuples(index=False, name=None))


def _analysed(conn, series: str, tf) -> pd.DataFrame:
    run_trend_analysis(conn, series, tf)
    return _signals(conn, series, tf)


def _back_adjusted_oracle(conn, tf) -> pd.DataFrame:
    """The batch detector over the series as back-adjusted by storage (a path of its own), each
    start priced in its own month (the adjustment at the start bar taken off)."""
    series = read_continuous_bars(conn, "MES", tf, None, None, back_adjusted=True)
    conn.rollback()
    found = detect_trend_starts_frame(series)
    found["price"] = found["start_price"].to_numpy() - series["adjustment"].to_numpy()[found["start_bar"].to_numpy() - 1]
    return found.sort_values(["start_ts", "type"]).reset_index(drop=True)


def _assert_stored_is_the_oracle(conn, tf) -> None:
    got, want = _signals(conn, "MES", tf), _back_adjusted_oracle(conn, tf)
    assert len(got) > 10 and _key(got) == _key(want)
    assert got["price"].tolist() == want["price"].tolist()


@pytest.mark.parametrize("tf", [TF1H, TF4H])
def test_the_continuous_series_finds_the_trend_starts_of_the_old_month_at_the_new_months_prices(conn, months, tf):
    _store(conn, months, tf)
    _record_roll(conn)
    oracle = run_trend_analysis(conn, M25, tf)  # the old month alone: the series less its carry
    result = run_trend_analysis(conn, "MES", tf)
    assert result.mode == "initial" and result.contract_id == "MES"
    assert result.bars_processed == oracle.bars_processed == len(months[tf][0])  # M25 to the roll, U25 from it
    want, got = _signals(conn, M25, tf), _signals(conn, "MES", tf)
    assert len(got) > 10 and _key(got) == _key(want)
    _assert_stored_is_the_oracle(conn, tf)
    # the price of each start is the traded one: M25's before the roll, U25's (CARRY higher) from it
    after = got["start_ts"] >= pd.Timestamp(ROLL)
    assert 0 < after.sum() < len(got)
    assert (got["price"] - want["price"]).tolist() == [CARRY if a else 0.0 for a in after]


def test_the_series_across_a_roll_is_analysed_incrementally_and_keeps_what_was_known(conn, months):
    # the daemon collects both months; before the roll the series is M25's
    _store(conn, months, TF1H, end=CUT)
    _record_roll(conn)
    before = run_trend_analysis(conn, "MES", TF1H)
    assert before.mode == "initial"
    known = _signals(conn, "MES", TF1H)
    assert len(known) > 5 and (known["start_ts"] < pd.Timestamp(CUT)).all()

    # the rest arrives: the roll is crossed by the running detector, nothing before it rewritten
    _store(conn, months, TF1H, start=CUT)
    across = run_trend_analysis(conn, "MES", TF1H)
    assert across.mode == "incremental" and not across.recomputed and across.deleted_signals == 0
    got = _signals(conn, "MES", TF1H)
    assert set(known["signal_id"]) <= set(got["signal_id"])
    assert _key(got.iloc[: len(known)]) == _key(known)

    # ... and equals the old month analysed at once, and the back-adjusted series
    assert _key(got) == _key(_analysed(conn, M25, TF1H))
    _assert_stored_is_the_oracle(conn, TF1H)

    # nothing new: nothing to do
    again = run_trend_analysis(conn, "MES", TF1H)
    assert (again.mode, again.bars_processed, again.new_signals) == ("incremental", 0, 0)


def test_a_changed_gap_or_a_roll_recorded_late_makes_the_series_recompute(conn, months):
    _store(conn, months, TF1H)
    _record_roll(conn)
    assert run_trend_analysis(conn, "MES", TF1H).mode == "initial"

    # a repaired U25 bar before the roll changes the roll's gap (but no bar of the series itself)
    m25, u25 = months[TF1H]
    last_before = u25[u25["timestamp"] < pd.Timestamp(ROLL)].tail(1).copy()
    last_before["close"] = last_before["close"] + 1.0
    upsert_bars(conn, last_before.reset_index(drop=True), mode="replace", source="history", notify=False)
    conn.commit()
    changed = run_trend_analysis(conn, "MES", TF1H)
    assert changed.mode == "recompute" and changed.recomputed
    # the series after the roll is now a point lower than M25 there: the oracle decides
    _assert_stored_is_the_oracle(conn, TF1H)

    # the roll moved a day earlier (a late or changed record): a day of M25 bars leaves the series
    record_roll_points(conn, [RollPoint(ROLL - timedelta(days=1), mes("M25"), mes("U25"))], "test:moved")
    conn.commit()
    moved = run_trend_analysis(conn, "MES", TF1H)
    assert moved.mode == "recompute"
    _assert_stored_is_the_oracle(conn, TF1H)
    # each start priced in the month front at it: U25's from the moved roll on
    got = _signals(conn, "MES", TF1H)
    month = np.where(got["start_ts"] >= pd.Timestamp(ROLL - timedelta(days=1)), 1, 0)
    column = np.where(got["type"] == "uptrend", "low", "high")
    traded = [(m25, u25)[m].set_index("timestamp").loc[ts, c] for m, ts, c in zip(month, got["start_ts"], column)]
    assert got["price"].tolist() == traded and 0 < month.sum() < len(got)


def test_a_symbol_without_a_recorded_roll_is_refused_by_name(conn, months):
    _store(conn, months, TF1H)
    with pytest.raises(DomainError, match="no roll of MES is recorded, so its continuous series has no bars"):
        run_trend_analysis(conn, "MES", TF1H)
    assert trend_signals.load_analyzer_watermark(conn, ANALYZER_ID, "MES", TF1H) is None  # nothing written
    conn.rollback()


def test_coordination_of_the_series_pairs_what_the_old_month_pairs(conn, months):
    for tf in (TF1H, TF4H):
        _store(conn, months, tf)
    _record_roll(conn)
    for series in (M25, "MES"):
        for tf in (TF1H, TF4H):
            run_trend_analysis(conn, series, tf)
    oracle = run_coordination(conn, M25, RULES)
    result = run_coordination(conn, "MES", RULES)
    assert result.total_outputs == oracle.total_outputs > 0
    want = coordinated.read_coordinated(conn, M25)
    got = coordinated.read_coordinated(conn, "MES")
    conn.rollback()
    columns = ["label", "rule", "signal_ts", "anchor_timeframe", "trigger_timeframe"]
    assert (got["contract_id"] == "MES").all()
    assert got[columns].reset_index(drop=True).equals(want[columns].reset_index(drop=True))
