"""Trend starts (`cus_cds_trend_finder`): spec §8 vectors, agreement of the reference, batch and
streaming forms, persistence, causality, validation and the `trend-starts` command."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from functools import cache

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectx_pipeline.analysis import commands
from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.domain.trend_starts import (
    ANALYZER_ID,
    Signal,
    TrendStartDetector,
    detect_trend_starts,
    detect_trend_starts_frame,
    detect_trend_starts_reference,
    reference_emissions,
    validate_bars_for_detection,
)
from projectx_pipeline.errors import UsageError

from .support.paths import SAMPLE_DIR

DATA = SAMPLE_DIR
SAMPLES = ("4h", "1h", "5m")


@cache
def _sample(tf: str) -> pd.DataFrame:
    return read_bars_csv(DATA / f"CON.F.US.MES.M25_{tf}.csv")


def sample(tf: str) -> pd.DataFrame:
    return _sample(tf).copy()


def spec_order(signals: list[Signal]) -> list[Signal]:
    """§6 order; (start_bar, type) is unique after de-duplication."""
    return sorted(signals, key=lambda s: (s.start_bar, s.type != "downtrend", s.confirm_bar))


def bar_rows(df: pd.DataFrame) -> list[tuple]:
    return list(zip(df["timestamp"], df["open"].tolist(), df["high"].tolist(), df["low"].tolist(), df["close"].tolist()))


def stream(df: pd.DataFrame, detector: TrendStartDetector | None = None, **params) -> list[Signal]:
    detector = detector or TrendStartDetector(**params)
    out = []
    for row in bar_rows(df):
        out += detector.update(*row)
    return out


def bars_frame(rows: list[tuple[float, float, float, float]], freq: str = "5min") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2025-03-16T22:00:00Z", periods=len(rows), freq=freq),
            "open": [r[0] for r in rows],
            "high": [r[1] for r in rows],
            "low": [r[2] for r in rows],
            "close": [r[3] for r in rows],
        }
    )


@st.composite
def bar_series(draw, max_size: int = 120, well_formed: bool = True) -> pd.DataFrame:
    """Random bars on a coarse tick grid (many equal prices, so every < / ≤ matters) around a
    random walk (so that trends, containments and long-sitting candidates occur)."""
    n = draw(st.integers(0, max_size))
    steps = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    quads = draw(st.lists(st.tuples(*[st.integers(0, 8)] * 4), min_size=n, max_size=n))
    rows = []
    for level, (a, b, c, d) in zip(np.cumsum(steps).tolist(), quads):
        if well_formed:
            low, high, open_, close = min(a, b, c, d), max(a, b, c, d), a, b
        else:  # only high >= low: open/close may lie outside the range (§1.4, E6)
            (low, high), open_, close = sorted((a, b)), c, d
        rows.append(tuple(0.25 * (level + p) for p in (open_, high, low, close)))
    return bars_frame(rows)


parameters = st.fixed_dictionaries({"exhaustion_window": st.integers(0, 10), "containment_grace": st.integers(0, 8)})


# --------------------------------------------------------------------------- §8 test vectors


def test_first_4h_rows_match_the_spec():
    expected = [
        ("downtrend", 1, 3, "LowThenHigherClose_vs_PDSOpen"),
        ("uptrend", 1, 3, "EngulfingUpPDSLowBreak"),
        ("uptrend", 3, 9, "LowUndercutHighRespect"),
        ("downtrend", 6, 9, "RallyLowBreaksPeakLow_A"),
        ("uptrend", 8, 12, "FORCED_by_CDS_RallyLowBreaksPeakLow_A"),
        ("downtrend", 9, 12, "RallyLowBreaksPeakLow_A"),
        ("uptrend", 11, 15, "LowUndercutHighRespect"),
        ("downtrend", 13, 16, "NewHighWeakAdvance_B"),
        ("uptrend", 15, 18, "EngulfingUpPDSLowBreak"),
        ("downtrend", 17, 18, "LowThenHigherClose_vs_PDSOpen"),
        ("downtrend", 18, 29, "RallyLowBreaksPeakLow_A"),
        ("uptrend", 18, 21, "EXHAUSTION_REVERSAL"),
    ]
    for detect in (detect_trend_starts_reference, detect_trend_starts):
        got = detect(sample("4h"))
        assert [(s.type, s.start_bar, s.confirm_bar, s.rule) for s in got[: len(expected)]] == expected
    first_down, first_up = detect_trend_starts(sample("4h"))[:2]
    assert first_down.start_ts == pd.Timestamp("2025-03-16T22:00:00Z")
    assert first_down.confirm_ts == pd.Timestamp("2025-03-17T06:00:00Z")
    assert (first_down.start_price, first_up.start_price) == (5684.0, 5654.25)  # B1 high, B1 low


def test_worked_example_state():
    detector = TrendStartDetector()
    rows = bar_rows(sample("4h"))
    assert detector.update(*rows[0]) == []
    assert detector.update(*rows[1]) == []
    assert (detector.pending().uptrend_bar, detector.pending().downtrend_bar) == (1, 1)
    confirmed = detector.update(*rows[2])
    assert [(s.type, s.start_bar, s.rule) for s in confirmed] == [
        ("downtrend", 1, "LowThenHigherClose_vs_PDSOpen"),
        ("uptrend", 1, "EngulfingUpPDSLowBreak"),
    ]
    assert (detector.pending().uptrend_bar, detector.pending().downtrend_bar) == (None, None)


@pytest.mark.parametrize(
    "tf, bars, total, removed",
    [("4h", 282, 104, None), ("4h", None, 120, None), ("1h", None, 335, 12), ("5m", None, 3607, 103)],
)
def test_totals(tf, bars, total, removed):
    df = sample(tf).iloc[:bars]
    assert len(detect_trend_starts(df)) == total
    assert len(detect_trend_starts_reference(df)) == total
    if removed is not None:
        assert len(reference_emissions(df)) - total == removed


@pytest.mark.parametrize("tf, bars, in_emission_order, in_output", [("4h", 282, 1, 4), ("1h", None, 1, 29)])
def test_alternation_counts(tf, bars, in_emission_order, in_output):
    """§7.5: adjacent same-type pairs, in emission order and in the output."""

    def adjacent_same(types):
        return sum(a == b for a, b in zip(types, types[1:]))

    df = sample(tf).iloc[:bars]
    assert adjacent_same([e.type for e in reference_emissions(df)]) == in_emission_order
    assert adjacent_same([s.type for s in detect_trend_starts(df)]) == in_output


# --------------------------------------------------------------------------- the three forms agree


@pytest.mark.parametrize("tf", SAMPLES)
def test_forms_agree_on_samples(tf):
    df = sample(tf)
    reference = detect_trend_starts_reference(df)
    assert detect_trend_starts(df) == reference
    assert spec_order(stream(df)) == reference
    assert all(s.start_bar < s.confirm_bar for s in reference)
    assert len({(s.start_bar, s.type) for s in reference}) == len(reference)


def test_frame_matches_signals():
    df = sample("1h")
    frame = detect_trend_starts_frame(df)
    signals = detect_trend_starts(df)
    assert list(frame.columns) == ["type", "start_bar", "confirm_bar", "rule", "start_ts", "confirm_ts", "start_price"]
    assert str(frame["start_ts"].dtype) == "datetime64[ns, UTC]"
    assert [Signal(*row) for row in frame.itertuples(index=False, name=None)] == signals


def test_signal_fields_are_plain_python_values():
    s = detect_trend_starts(sample("4h"))[0]
    assert type(s.start_bar) is int and type(s.confirm_bar) is int and type(s.start_price) is float
    assert isinstance(s.start_ts, pd.Timestamp) and str(s.start_ts.tz) == "UTC"


def test_streaming_returns_signals_at_their_confirming_bar():
    detector = TrendStartDetector()
    for n, row in enumerate(bar_rows(sample("1h")), start=1):
        for s in detector.update(*row):
            assert s.confirm_bar == n
    assert detector.bars_processed == len(sample("1h"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bars=bar_series(), params=parameters)
def test_forms_agree_on_random_bars(bars, params):
    reference = detect_trend_starts_reference(bars, **params)
    assert detect_trend_starts(bars, **params) == reference
    assert spec_order(stream(bars, **params)) == reference
    assert all(s.start_bar < s.confirm_bar for s in reference)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bars=bar_series(well_formed=False))
def test_forms_agree_on_bars_with_open_or_close_outside_the_range(bars):
    reference = detect_trend_starts_reference(bars)
    assert detect_trend_starts(bars) == reference
    assert spec_order(stream(bars)) == reference


def test_e6_is_reachable_on_malformed_bars():
    """§5.E6 can only fire when the PDS bar opens below its low; implemented anyway."""
    bars = bars_frame([(4, 3, 1, 3), (5, 3, 0, 0), (1, 1, 1, 1), (1, 3, 0, 2), (3, 4, 4, 2), (4, 5, 3, 5)], freq="1h")
    expected = ("downtrend", 5, 6, "OutsideBarStrongerClose_H")
    for signals in (detect_trend_starts_reference(bars), detect_trend_starts(bars), spec_order(stream(bars))):
        assert expected in [(s.type, s.start_bar, s.confirm_bar, s.rule) for s in signals]


# --------------------------------------------------------------------------- causality (§7.7)


@pytest.mark.parametrize("tf", ["4h", "1h"])
def test_every_prefix_gives_the_full_runs_signals(tf):
    df = sample(tf)
    full = detect_trend_starts(df)
    for m in range(1, len(df) + 1):
        assert detect_trend_starts(df.iloc[:m]) == [s for s in full if s.confirm_bar <= m]


@settings(max_examples=150, deadline=None)
@given(bars=bar_series(), data=st.data())
def test_prefix_property_on_random_bars(bars, data):
    m = data.draw(st.integers(0, len(bars)))
    full = detect_trend_starts(bars)
    assert detect_trend_starts(bars.iloc[:m]) == [s for s in full if s.confirm_bar <= m]


# --------------------------------------------------------------------------- persistence


def run_in_chunks(df: pd.DataFrame, sizes: list[int]) -> tuple[list[Signal], dict]:
    """An incremental run: each chunk restores the JSON state left by the previous one."""
    rows = bar_rows(df)
    state = json.dumps(TrendStartDetector().snapshot())
    out, start = [], 0
    for size in sizes + [len(rows)]:
        detector = TrendStartDetector.restore(json.loads(state))
        for row in rows[start : start + size]:
            out += detector.update(*row)
        start += size
        snapshot = detector.snapshot()
        assert TrendStartDetector.restore(json.loads(json.dumps(snapshot))).snapshot() == snapshot
        state = json.dumps(snapshot, allow_nan=False)
    return out, json.loads(state)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 400), max_size=8))
def test_incremental_run_with_snapshots_equals_batch_on_sample(sizes):
    df = sample("1h")
    out, final = run_in_chunks(df, sizes)
    assert spec_order(out) == detect_trend_starts(df)
    assert final["bars_processed"] == len(df)


@settings(max_examples=100, deadline=None)
@given(bars=bar_series(), sizes=st.lists(st.integers(1, 40), max_size=6))
def test_incremental_run_with_snapshots_equals_batch_on_random_bars(bars, sizes):
    out, _ = run_in_chunks(bars, sizes)
    assert spec_order(out) == detect_trend_starts(bars)


def test_snapshot_is_plain_json_and_bounded():
    df = sample("5m")
    detector = TrendStartDetector()
    most_kept = 0
    for row in bar_rows(df):
        detector.update(*row)
        most_kept = max(most_kept, len(detector.snapshot()["bars"]["high"]))
    snapshot = detector.snapshot()
    assert json.loads(json.dumps(snapshot, allow_nan=False)) == snapshot
    assert snapshot["analyzer"] == ANALYZER_ID
    assert snapshot["bars_processed"] == len(df)
    assert most_kept < 500  # of 10,000 bars
    first = snapshot["first_bar"]
    assert all(start >= first for start, _ in snapshot["emitted"])


def test_restore_rejects_a_foreign_or_inconsistent_snapshot():
    detector = TrendStartDetector()
    for row in bar_rows(sample("4h"))[:50]:
        detector.update(*row)
    snapshot = detector.snapshot()
    with pytest.raises(ValueError, match="other_analyzer"):
        TrendStartDetector.restore({**snapshot, "analyzer": "other_analyzer"})
    with pytest.raises(ValueError, match="holds"):
        TrendStartDetector.restore({**snapshot, "bars_processed": snapshot["bars_processed"] + 1})
    with pytest.raises(ValueError, match="not a trend-start detector snapshot"):
        TrendStartDetector.restore({"analyzer": ANALYZER_ID, "format": 1})


def test_parameters_are_kept_by_snapshots():
    df = sample("1h")
    params = {"exhaustion_window": 3, "containment_grace": 2}
    detector = TrendStartDetector(**params)
    first = stream(df.iloc[:400], detector)
    resumed = TrendStartDetector.restore(json.loads(json.dumps(detector.snapshot())))
    assert spec_order(first + stream(df.iloc[400:], resumed)) == detect_trend_starts_reference(df, **params)
    assert detect_trend_starts(df, **params) != detect_trend_starts(df)


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_parameters_must_be_non_negative_integers(bad):
    with pytest.raises(ValueError, match="exhaustion_window"):
        TrendStartDetector(exhaustion_window=bad)
    with pytest.raises(ValueError, match="containment_grace"):
        detect_trend_starts(sample("4h"), containment_grace=bad)


# --------------------------------------------------------------------------- validation (§7.8)


def _bad_bars(row: int, column: str, value) -> pd.DataFrame:
    df = sample("4h").iloc[:10].copy()
    df.loc[row, column] = value
    return df


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("close", np.nan, r"invalid bar 4: bar at 2025-03-17T10:00:00Z: close is nan"),
        ("open", np.inf, r"invalid bar 4: bar at 2025-03-17T10:00:00Z: open is inf"),
        ("high", 5600.0, r"invalid bar 4: bar at 2025-03-17T10:00:00Z: high 5600.0 < low 5664.75"),
    ],
)
def test_bad_prices_are_rejected_by_every_form(column, value, message):
    df = _bad_bars(3, column, value)
    for check in (validate_bars_for_detection, detect_trend_starts, detect_trend_starts_reference, stream):
        with pytest.raises(ValueError, match=message):
            check(df)


def test_timestamps_must_be_strictly_ascending():
    df = sample("4h").iloc[:10].copy()
    df.loc[5, "timestamp"] = df.loc[3, "timestamp"]
    message = r"invalid bar 6: bar at 2025-03-17T10:00:00Z: timestamp is not after the previous bar's 2025-03-17T14:00:00Z"
    for check in (validate_bars_for_detection, detect_trend_starts, stream):
        with pytest.raises(ValueError, match=message):
            check(df)
    df.loc[5, "timestamp"] = df.loc[4, "timestamp"]  # equal is not after either
    with pytest.raises(ValueError, match="invalid bar 6: .*not after"):
        detect_trend_starts(df)


def test_missing_timestamp_and_missing_columns_are_rejected():
    df = sample("4h").iloc[:10].copy()
    df["timestamp"] = df["timestamp"].astype(object)
    df.loc[2, "timestamp"] = None
    with pytest.raises(ValueError, match="invalid bar 3: timestamp is missing"):
        detect_trend_starts(df)
    with pytest.raises(ValueError, match="missing column.*close"):
        detect_trend_starts(sample("4h").drop(columns=["close"]))


def test_streaming_rejects_a_bad_bar_without_changing_state():
    rows = bar_rows(sample("1h"))
    detector = TrendStartDetector()
    out = []
    for row in rows[:300]:
        out += detector.update(*row)
    before = detector.snapshot()
    ts, o, h, low, c = rows[300]
    for bad in [(ts, o, low - 1, low, c), (ts, math.nan, h, low, c), (rows[299][0], o, h, low, c), (None, o, h, low, c)]:
        with pytest.raises(ValueError, match="invalid bar"):
            detector.update(*bad)
        assert detector.snapshot() == before
    for row in rows[300:]:
        out += detector.update(*row)
    assert spec_order(out) == detect_trend_starts(sample("1h"))


def test_empty_and_tiny_inputs():
    assert detect_trend_starts(sample("4h").iloc[:0]) == []
    assert detect_trend_starts_reference(sample("4h").iloc[:2]) == []
    assert TrendStartDetector().pending().uptrend_bar is None


# --------------------------------------------------------------------------- the command


def test_command_prints_csv(capsys):
    assert commands.run(argparse.Namespace(file=str(DATA / "CON.F.US.MES.M25_4h.csv"))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "type,start_ts,confirm_ts,rule,start_price",
        "downtrend,2025-03-16T22:00:00Z,2025-03-17T06:00:00Z,LowThenHigherClose_vs_PDSOpen,5684.0",
        "uptrend,2025-03-16T22:00:00Z,2025-03-17T06:00:00Z,EngulfingUpPDSLowBreak,5654.25",
        "uptrend,2025-03-17T06:00:00Z,2025-03-18T06:00:00Z,LowUndercutHighRespect,5651.25",
    ]
    assert len(lines) == 1 + 120


def test_command_in_a_subprocess():
    code = "import argparse, sys; from projectx_pipeline.analysis import commands; sys.exit(commands.run(argparse.Namespace(file=sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", code, str(DATA / "CON.F.US.MES.M25_1h.csv")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "type,start_ts,confirm_ts,rule,start_price" and len(lines) == 1 + 335


def test_command_usage_errors(tmp_path):
    def run(path):
        with pytest.raises(UsageError) as info:
            commands.run(argparse.Namespace(file=str(path)))
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "no such file" in run(tmp_path / "missing.csv")
    assert "not a file" in run(tmp_path)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert "missing column(s) contract_id, timestamp" in run(tmp_path / "other.csv")
    (tmp_path / "empty.csv").write_text("")
    assert "not a readable CSV" in run(tmp_path / "empty.csv")
    text = (DATA / "CON.F.US.MES.M25_4h.csv").read_text().splitlines()
    (tmp_path / "dates.csv").write_text("\n".join(text[:2] + [text[2].replace("2025-03-17T02:00:00Z", "yesterday")]))
    assert "bad bar values" in run(tmp_path / "dates.csv")
    header, first, second = text[0], text[1], text[2].split(",")
    second[3] = ""  # no high
    (tmp_path / "nan.csv").write_text("\n".join([header, first, ",".join(second)]))
    assert "high is nan" in run(tmp_path / "nan.csv")
