"""Coordination of trend starts across timeframes: window, look-ahead, determinism, replay."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projectx_pipeline.domain.coordination import (
    OUTPUT_COLUMNS,
    CoordinationRule,
    coordinate,
    known_at,
    parse_rules,
    replay_start,
)
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.timeframes import bar_end, bar_starts_ns, parse_timeframe

from .support.coordination import LONG, RULES, SHORT
from .support.market import MES

MNQ = "CON.F.US.MNQ.M25"


def T(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def signals(*rows) -> pd.DataFrame:
    """rows: (signal_id, timeframe, type, confirm_ts[, start_ts[, contract_id]])."""
    records = []
    for row in rows:
        signal_id, tf, kind, confirm = row[:4]
        start = row[4] if len(row) > 4 else T(confirm) - parse_timeframe(tf).nominal_seconds * pd.Timedelta(seconds=3)
        contract = row[5] if len(row) > 5 else MES
        records.append(
            {
                "signal_id": signal_id,
                "contract_id": contract,
                "timeframe": tf,
                "type": kind,
                "start_ts": T(start) if isinstance(start, str) else start,
                "confirm_ts": T(confirm),
                "rule": "whatever",  # extra columns are allowed
            }
        )
    columns = ["signal_id", "contract_id", "timeframe", "type", "start_ts", "confirm_ts", "rule"]
    return pd.DataFrame.from_records(records, columns=columns)


def pairs(out: pd.DataFrame) -> list[tuple]:
    return list(zip(out["rule"], out["anchor_signal_id"], out["trigger_signal_id"], out["signal_ts"]))


# The 1h anchor confirmed by the 10:00 bar is known at 11:00; the window ends at 12:00.
ANCHOR = (1, "1h", "uptrend", "2025-03-18 10:00")


def test_trigger_inside_the_window():
    out = coordinate(signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 11:15")), RULES)
    assert pairs(out) == [("long_1h_15m", 1, 2, T("2025-03-18 11:30"))]
    row = out.iloc[0]
    assert row["label"] == "long" and row["contract_id"] == MES
    assert row["anchor_known_at"] == T("2025-03-18 11:00") and row["trigger_known_at"] == T("2025-03-18 11:30")
    assert list(out.columns) == OUTPUT_COLUMNS


def test_window_boundaries_are_inclusive():
    at_end = signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 11:45"))  # known 12:00 = 11:00 + 60 min
    assert pairs(coordinate(at_end, RULES)) == [("long_1h_15m", 1, 2, T("2025-03-18 12:00"))]
    same_time = signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 10:45"))  # known 11:00, with the anchor
    assert pairs(coordinate(same_time, RULES)) == [("long_1h_15m", 1, 2, T("2025-03-18 11:00"))]


def test_triggers_outside_the_window_do_not_match():
    after = signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 12:00"))  # known 12:15
    before = signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 10:30"))  # known 10:45, before the anchor
    for case in (after, before):
        assert coordinate(case, RULES).empty


def test_confirm_bar_label_is_not_when_a_signal_is_known():
    """A 15m trigger labelled 10:15 lies after the 1h anchor's label (10:00) but closes at 10:30,
    before the anchor's bar closes (11:00): using labels would be look-ahead."""
    out = coordinate(signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 10:15")), RULES)
    assert out.empty


def test_opposite_types_never_match():
    case = signals(ANCHOR, (2, "15m", "downtrend", "2025-03-18 11:15"), (3, "1h", "downtrend", "2025-03-18 10:00"))
    assert pairs(coordinate(case, RULES)) == [("short_1h_15m", 3, 2, T("2025-03-18 11:30"))]
    with pytest.raises(DomainError, match="opposite types"):
        CoordinationRule.from_dict({**LONG, "trigger": {"timeframe": "15m", "type": "downtrend"}})


def test_earliest_trigger_then_earliest_start_wins():
    case = signals(
        ANCHOR,
        (5, "15m", "uptrend", "2025-03-18 11:30", "2025-03-18 09:00"),
        (4, "15m", "uptrend", "2025-03-18 11:15", "2025-03-18 11:00"),
        (3, "15m", "uptrend", "2025-03-18 11:15", "2025-03-18 10:30"),
    )
    assert pairs(coordinate(case, RULES)) == [("long_1h_15m", 1, 3, T("2025-03-18 11:30"))]


def test_each_anchor_gives_one_output_and_anchors_may_share_a_trigger():
    case = signals(
        ANCHOR,
        (6, "1h", "uptrend", "2025-03-18 11:00"),  # known 12:00
        (2, "15m", "uptrend", "2025-03-18 11:45"),  # known 12:00
        (3, "15m", "uptrend", "2025-03-18 12:00"),
    )
    assert pairs(coordinate(case, RULES)) == [
        ("long_1h_15m", 1, 2, T("2025-03-18 12:00")),
        ("long_1h_15m", 6, 2, T("2025-03-18 12:00")),
    ]


def test_contracts_are_coordinated_separately():
    case = signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 11:15", "2025-03-18 11:00", MNQ))
    assert coordinate(case, RULES).empty
    out = coordinate(
        signals(
            (7, "1h", "uptrend", "2025-03-18 10:00", "2025-03-18 08:00", MNQ),
            ANCHOR,
            (2, "15m", "uptrend", "2025-03-18 11:15", "2025-03-18 11:00", MNQ),
        ),
        RULES,
    )
    assert list(zip(out["contract_id"], out["anchor_signal_id"], out["trigger_signal_id"])) == [(MNQ, 7, 2)]


def test_known_at_is_the_close_of_the_confirming_bar_even_at_the_session_close():
    # The 4h bar labelled 18:00 UTC (14:00 New York, summer) closes with the session at 21:00 UTC.
    assert known_at(T("2025-03-18 18:00"), "4h") == T("2025-03-18 21:00")
    assert known_at(T("2025-03-18 14:00"), "4h") == T("2025-03-18 18:00")
    rule = CoordinationRule.from_dict(
        {
            "name": "long_4h_1h",
            "label": "long",
            "anchor": {"timeframe": "4h", "type": "uptrend"},
            "trigger": {"timeframe": "1h", "type": "uptrend"},
            "within_minutes": 0,
        }
    )
    case = signals((1, "4h", "uptrend", "2025-03-18 18:00"), (2, "1h", "uptrend", "2025-03-18 20:00"))
    assert pairs(coordinate(case, [rule])) == [("long_4h_1h", 1, 2, T("2025-03-18 21:00"))]


def test_rerun_and_row_order_do_not_change_the_output():
    case = signals(
        ANCHOR,
        (6, "1h", "uptrend", "2025-03-18 11:00"),
        (2, "15m", "uptrend", "2025-03-18 11:45"),
        (3, "15m", "uptrend", "2025-03-18 11:45", "2025-03-18 11:30"),
        (8, "1h", "downtrend", "2025-03-18 12:00"),
        (9, "15m", "downtrend", "2025-03-18 13:00"),
    )
    first = coordinate(case, RULES)
    pd.testing.assert_frame_equal(coordinate(case, RULES), first)
    pd.testing.assert_frame_equal(coordinate(case.iloc[::-1], RULES), first)
    assert len(first) == 3


def test_misaligned_or_invalid_signals_are_rejected():
    with pytest.raises(ValueError, match="signal 2: confirm_ts .* is not the label of a 15m bar"):
        coordinate(signals(ANCHOR, (2, "15m", "uptrend", "2025-03-18 11:20")), RULES)
    with pytest.raises(ValueError, match="signal 2: invalid type 'up'"):
        coordinate(signals(ANCHOR, (2, "15m", "up", "2025-03-18 11:15")), RULES)
    with pytest.raises(ValueError, match="signal 2: invalid timeframe '15x'"):
        coordinate(signals(ANCHOR, (2, "15x", "uptrend", "2025-03-18 11:15", "2025-03-18 11:00")), RULES)
    with pytest.raises(ValueError, match="signal 2: confirm_ts 2025-03-18T21:00:00.* not the label of a 1h bar inside a trading session"):
        coordinate(signals(ANCHOR, (2, "1h", "uptrend", "2025-03-18 21:00")), RULES)  # 17:00 New York
    with pytest.raises(ValueError, match="missing column.*confirm_ts"):
        coordinate(signals(ANCHOR).drop(columns=["confirm_ts"]), RULES)


def test_empty_inputs():
    assert list(coordinate(signals(), RULES).columns) == OUTPUT_COLUMNS
    assert coordinate(signals(ANCHOR), []).empty
    assert str(coordinate(signals(ANCHOR), RULES)["signal_ts"].dtype) == "datetime64[ns, UTC]"


def test_rule_from_settings():
    rule = CoordinationRule.from_dict(LONG)
    assert rule == CoordinationRule("long_1h_15m", "long", parse_timeframe("1h"), "uptrend", parse_timeframe("15m"), "uptrend", timedelta(minutes=60))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"within_minutes": None}, "within_minutes None"),
        ({"within_minutes": -5}, "within_minutes -5: expected a number of minutes >= 0"),
        ({"within_minutes": True}, "within_minutes True"),
        ({"anchor": {"timeframe": "1x", "type": "uptrend"}}, "anchor.timeframe: invalid timeframe '1x'"),
        ({"anchor": {"timeframe": "1h", "type": "long"}}, "invalid anchor type 'long': expected uptrend or downtrend"),
        ({"anchor": {"timeframe": "1h"}}, "anchor: missing key.*'type'"),
        ({"trigger": "15m"}, "invalid trigger '15m'"),
        ({"trigger": {"timeframe": "1h", "type": "uptrend"}}, "both 1h"),
        ({"name": "bad name"}, "invalid coordination rule name 'bad name'"),
        ({"label": ""}, "invalid label ''"),
        ({"extra": 1}, "unknown key.*'extra'"),
    ],
)
def test_rule_validation_names_key_value_and_expectation(change, message):
    with pytest.raises(DomainError, match=message):
        CoordinationRule.from_dict({**LONG, **change})


def test_rule_names_must_be_unique():
    with pytest.raises(DomainError, match="duplicate coordination rule name.*long_1h_15m"):
        parse_rules([LONG, LONG])
    with pytest.raises(DomainError, match="duplicate"):
        coordinate(signals(ANCHOR), [CoordinationRule.from_dict(LONG)] * 2)


def test_replay_start_is_the_watermark_minus_the_longest_window():
    rules = parse_rules([LONG, {**SHORT, "within_minutes": 240}])
    assert replay_start(T("2025-03-18 12:00"), rules) == T("2025-03-18 08:00")
    assert replay_start(T("2025-03-18 12:00"), []) == T("2025-03-18 12:00")
    with pytest.raises(DomainError, match="timezone-aware"):
        replay_start(pd.Timestamp("2025-03-18 12:00"), rules)


# --------------------------------------------------------------------------- properties

TIMEFRAMES = ("15m", "1h", "4h")
EPOCH = T("2025-03-16 22:00")


@st.composite
def signal_frames(draw) -> pd.DataFrame:
    """Random trend starts of two contracts on 15m/1h/4h bars over three days (labels aligned
    as the platform labels bars, including the 4h bar cut short by the session close)."""
    n = draw(st.integers(0, 60))
    rows = []
    for signal_id in range(n):
        tf = parse_timeframe(draw(st.sampled_from(TIMEFRAMES)))
        instant = EPOCH.value + draw(st.integers(0, 3 * 24 * 60)) * 60 * 10**9
        confirm = int(bar_starts_ns(np.array([instant]), tf)[0])
        if known_at(pd.Timestamp(confirm, tz="UTC"), tf) == pd.Timestamp(confirm, tz="UTC"):
            # no hour bar starts in the daily maintenance break: take the next session's
            confirm = int(bar_starts_ns(np.array([instant + 3600 * 10**9]), tf)[0])
        start = confirm - draw(st.integers(1, 20)) * tf.nominal_seconds * 10**9
        rows.append(
            {
                "signal_id": signal_id,
                "contract_id": draw(st.sampled_from((MES, MNQ))),
                "timeframe": tf.label,
                "type": draw(st.sampled_from(("uptrend", "downtrend"))),
                "start_ts": pd.Timestamp(start, tz="UTC"),
                "confirm_ts": pd.Timestamp(confirm, tz="UTC"),
            }
        )
    columns = ["signal_id", "contract_id", "timeframe", "type", "start_ts", "confirm_ts"]
    return pd.DataFrame.from_records(rows, columns=columns)


@st.composite
def rule_sets(draw) -> tuple[CoordinationRule, ...]:
    rules = []
    for k in range(draw(st.integers(1, 3))):
        anchor, trigger = draw(st.lists(st.sampled_from(TIMEFRAMES), min_size=2, max_size=2, unique=True))
        kind = draw(st.sampled_from(("uptrend", "downtrend")))
        rules.append(
            CoordinationRule.from_dict(
                {
                    "name": f"rule_{k}",
                    "label": "long" if kind == "uptrend" else "short",
                    "anchor": {"timeframe": anchor, "type": kind},
                    "trigger": {"timeframe": trigger, "type": kind},
                    "within_minutes": draw(st.sampled_from((0, 15, 60, 240, 600))),
                }
            )
        )
    return tuple(rules)


def brute_force(sigs: pd.DataFrame, rules) -> set[tuple]:
    """The definition, one anchor at a time, with the scalar `bar_end`."""
    rows = list(sigs.itertuples())
    known = {r.signal_id: known_at(r.confirm_ts, r.timeframe) for r in rows}
    timeframe = {r.signal_id: parse_timeframe(r.timeframe) for r in rows}
    found = set()
    for rule in rules:
        for a in rows:
            if timeframe[a.signal_id] != rule.anchor_timeframe or a.type != rule.anchor_type:
                continue
            candidates = [
                (known[t.signal_id], t.start_ts, t.signal_id)
                for t in rows
                if timeframe[t.signal_id] == rule.trigger_timeframe
                and t.type == rule.trigger_type
                and t.contract_id == a.contract_id
                and known[a.signal_id] <= known[t.signal_id] <= known[a.signal_id] + rule.within
            ]
            if candidates:
                best = min(candidates)
                found.add((rule.name, a.contract_id, a.signal_id, best[2], best[0]))
    return found


def as_set(out: pd.DataFrame) -> set[tuple]:
    return set(zip(out["rule"], out["contract_id"], out["anchor_signal_id"], out["trigger_signal_id"], out["signal_ts"]))


def known_column(sigs: pd.DataFrame) -> pd.Series:
    return pd.Series([known_at(c, tf) for c, tf in zip(sigs["confirm_ts"], sigs["timeframe"])], index=sigs.index)


@settings(max_examples=100, deadline=None)
@given(sigs=signal_frames(), rules=rule_sets())
def test_matches_the_definition(sigs, rules):
    out = coordinate(sigs, rules)
    assert as_set(out) == brute_force(sigs, rules)
    assert len(out) == len(as_set(out))


@settings(max_examples=100, deadline=None)
@given(sigs=signal_frames(), rules=rule_sets())
def test_no_output_before_its_inputs_are_known(sigs, rules):
    out = coordinate(sigs, rules)
    by_id = sigs.set_index("signal_id")
    for row in out.itertuples():
        for signal_id, known in ((row.anchor_signal_id, row.anchor_known_at), (row.trigger_signal_id, row.trigger_known_at)):
            signal = by_id.loc[signal_id]
            bar_close = bar_end(signal["confirm_ts"].to_pydatetime(), parse_timeframe(signal["timeframe"]))
            assert known == bar_close
            assert row.signal_ts >= bar_close
            assert row.signal_ts > signal["confirm_ts"]
        assert row.signal_ts == row.trigger_known_at >= row.anchor_known_at


@settings(max_examples=100, deadline=None)
@given(sigs=signal_frames(), rules=rule_sets(), data=st.data())
def test_incremental_replay_reproduces_the_full_run(sigs, rules, data):
    full = coordinate(sigs, rules)
    known = known_column(sigs)
    watermark = EPOCH + pd.Timedelta(minutes=data.draw(st.integers(0, 3 * 24 * 60)))
    # Earlier runs saw every signal known by the watermark; their outputs up to it are final.
    earlier = coordinate(sigs[known <= watermark], rules)
    earlier = earlier[earlier["signal_ts"] <= watermark]
    replay = coordinate(sigs[known >= replay_start(watermark, rules)], rules)
    replay = replay[replay["signal_ts"] > watermark]
    combined = pd.concat([earlier, replay], ignore_index=True)
    combined = combined.sort_values(["contract_id", "signal_ts", "rule", "anchor_known_at", "anchor_signal_id"], kind="mergesort")
    pd.testing.assert_frame_equal(combined.reset_index(drop=True), full, check_dtype=False)


@settings(max_examples=100, deadline=None)
@given(sigs=signal_frames(), rules=rule_sets(), data=st.data())
def test_window_property(sigs, rules, data):
    known = known_column(sigs)
    t0, t1 = sorted(EPOCH + pd.Timedelta(minutes=data.draw(st.integers(0, 3 * 24 * 60))) for _ in range(2))
    full = coordinate(sigs, rules)
    expected = full[(full["anchor_known_at"] >= t0) & (full["signal_ts"] <= t1)]
    assert as_set(coordinate(sigs[(known >= t0) & (known <= t1)], rules)) == as_set(expected)


@settings(max_examples=50, deadline=None)
@given(sigs=signal_frames(), rules=rule_sets(), seed=st.integers(0, 2**32 - 1))
def test_deterministic_whatever_the_row_order(sigs, rules, seed):
    shuffled = sigs.sample(frac=1, random_state=seed)
    pd.testing.assert_frame_equal(coordinate(shuffled, rules), coordinate(sigs, rules))
