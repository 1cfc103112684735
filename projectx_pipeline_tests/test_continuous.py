"""The continuous front-month series: the pure rules (`domain/continuous.py`), then against a real
PostgreSQL server the recorded rolls and the view `continuous_bars` (migration 0005,
`storage/continuous.py`): the switch at the roll instant, back-adjustment and what it may know."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import psycopg2.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projectx_pipeline.domain.continuous import RollGap, Segment, back_adjust, front_segments, roll_gap, stitch_front_bars
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import normalize_bars
from projectx_pipeline.domain.market_hours import CalendarDays
from projectx_pipeline.domain.rolls import CalendarRoll, ContractMonth, RollPoint, front_month_at, roll_points
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.storage.bars import read_bars, upsert_bars
from projectx_pipeline.storage.continuous import read_continuous_bars, record_roll_points, recorded_roll_points, roll_gaps

nyse_open = CalendarDays()  # the product's stock-market calendar
RULE = CalendarRoll()
TF1 = parse_timeframe("1m")
TF5 = parse_timeframe("5m")
MINUTE = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def mes(code: str) -> ContractMonth:
    return ContractMonth.of(f"CON.F.US.MES.{code}")


# The NYSE calendar's rolls of 2025: the session opens (18:00 New York) before the Thursdays 8 days
# before each third-Friday expiry.
R_M25 = utc(2025, 6, 11, 22)  # M25 -> U25
R_U25 = utc(2025, 9, 10, 22)  # U25 -> Z25


def test_the_2025_roll_instants():
    assert [p.at for p in roll_points([mes("M25"), mes("U25"), mes("Z25")], RULE, nyse_open)] == [R_M25, R_U25]


def bars(contract: str, first: datetime, count: int, first_close: float, tf=TF1) -> pd.DataFrame:
    """`count` bars of `contract` one `tf` apart from `first`; closes rise a tick (0.25) a bar."""
    close = first_close + 0.25 * np.arange(count)
    step = timedelta(seconds=tf.nominal_seconds)
    return normalize_bars(
        pd.DataFrame(
            {
                "contract_id": contract,
                "timestamp": [first + i * step for i in range(count)],
                "open": close,
                "high": close + 0.5,
                "low": close - 0.5,
                "close": close,
                "volume": 1,
                "timeframe_unit": tf.unit,
                "timeframe_value": tf.value,
            }
        )
    )


# --------------------------------------------------------------------------- front segments


def test_front_segments_cut_time_at_each_roll():
    points = roll_points([mes("M25"), mes("U25"), mes("Z25")], RULE, nyse_open)
    assert front_segments(points) == [
        Segment("CON.F.US.MES.M25", None, R_M25),
        Segment("CON.F.US.MES.U25", R_M25, R_U25),
        Segment("CON.F.US.MES.Z25", R_U25, None),
    ]
    first, second, last = front_segments(points)
    assert first.contains(R_M25 - MINUTE) and not first.contains(R_M25)
    assert second.contains(R_M25) and not second.contains(R_U25) and last.contains(R_U25)
    assert front_segments([]) == []  # no roll known: no month is known to be front


MNQ_U25 = ContractMonth.of("CON.F.US.MNQ.U25")


def _point(at, a, b):
    return RollPoint(at, mes(a), mes(b))


@pytest.mark.parametrize(
    "points, message",
    [
        ([_point(R_U25, "U25", "Z25"), _point(R_M25, "M25", "U25")], "follows the roll at 2025-09-10T22:00:00\\+00:00: expected ascending"),
        ([_point(R_M25, "M25", "U25"), _point(R_U25, "Z25", "H26")], "leaves CON.F.US.MES.Z25, but the roll at .* made CON.F.US.MES.U25 the front"),
        ([_point(R_M25, "M25", "U25"), _point(R_M25, "U25", "Z25")], "expected ascending roll instants, each once"),
        ([_point(datetime(2025, 6, 11, 22), "M25", "U25")], "naive roll instant"),
        ([_point(R_M25, "M25", "M25")], "from CON.F.US.MES.M25 to CON.F.US.MES.M25: expected a later month"),
        ([_point(R_M25, "U25", "M25")], "expected a later month to roll to"),
        ([RollPoint(R_M25, mes("M25"), MNQ_U25)], "expected two months of one symbol"),
        ([_point(R_M25, "M25", "U25"), RollPoint(R_U25, MNQ_U25, ContractMonth.of("CON.F.US.MNQ.Z25"))], "several symbols"),
        (["M25>U25"], "invalid roll point 'M25>U25': expected a rolls.RollPoint"),
        ("M25", "invalid roll points 'M25'"),
    ],
)
def test_rolls_that_are_no_chain_are_refused_by_name(points, message):
    with pytest.raises(DomainError, match=message):
        front_segments(points)


QUARTERS = [ContractMonth(y, m, "MES") for y in range(2025, 2029) for m in (3, 6, 9, 12)]
# The first example to reach a year loads its NYSE calendar (most of a second, then cached): no deadline.
no_deadline = settings(deadline=None)
# bars near the rolls (where the stitching can go wrong), the roll instant and the minute before
# it included: (which roll, minutes from it, which listed month)
near_a_roll = st.tuples(st.integers(0, 3), st.one_of(st.sampled_from([-1, 0]), st.integers(-3 * 1440, 3 * 1440)), st.integers(0, 4))


@no_deadline
@given(st.integers(0, len(QUARTERS) - 5), st.integers(2, 5), st.lists(near_a_roll, max_size=60))
def test_the_stitched_series_takes_each_instant_once_from_its_front_month(first, count, wanted):
    listed = QUARTERS[first : first + count]
    points = roll_points(listed, RULE, nyse_open)
    rows = {(listed[m % count].contract_id(), points[r % len(points)].at + k * MINUTE) for r, k, m in wanted}
    stored = pd.concat([bars(c, t, 1, 5000.0) for c, t in sorted(rows)]) if rows else bars(listed[0].contract_id(), R_M25, 0, 0.0)
    stitched = stitch_front_bars(stored.reset_index(drop=True), front_segments(points))
    assert stitched["timestamp"].is_unique and stitched["timestamp"].is_monotonic_increasing
    for cid, ts in zip(stitched["contract_id"], stitched["timestamp"]):
        assert cid == front_month_at(listed, ts.to_pydatetime(), RULE, nyse_open).contract_id()
    # none lost: every stored bar of the month front at its start is in the series
    front = sum(c == front_month_at(listed, t, RULE, nyse_open).contract_id() for c, t in rows)
    assert len(stitched) == front


# --------------------------------------------------------------------------- gaps and back-adjustment


def test_a_roll_gap_is_the_new_close_minus_the_old_before_the_roll():
    point = _point(R_M25, "M25", "U25")
    g = roll_gap(point, TF1, (R_M25 - MINUTE, 6007.25), (R_M25 - 2 * MINUTE, 6047.0))
    assert (g.gap, g.old_close, g.new_close, g.new_bar_at, g.known) == (39.75, 6007.25, 6047.0, R_M25 - 2 * MINUTE, True)
    missing = roll_gap(point, TF1, (R_M25 - MINUTE, 6007.25), None)
    assert (missing.gap, missing.known) == (0.0, False)
    assert missing.missing == "no 1m bar of CON.F.US.MES.U25 starts before the roll at 2025-06-11T22:00:00+00:00: its gap is unknown, counted as 0"
    with pytest.raises(DomainError, match="last bar of CON.F.US.MES.M25 at 2025-06-11T22:00:00\\+00:00: expected a bar starting before the roll"):
        roll_gap(point, TF1, (R_M25, 6007.25), None)
    with pytest.raises(DomainError, match="invalid close nan of the CON.F.US.MES.U25 bar"):
        roll_gap(point, TF1, None, (R_M25 - MINUTE, float("nan")))
    with pytest.raises(DomainError, match="invalid timeframe '1m'"):
        roll_gap(point, "1m", None, None)


def _gap(point: RollPoint, gap: float | None, tf=TF1) -> RollGap:
    """The RollGap of `point` whose two last bars close `gap` apart (None: the new month has none)."""
    return roll_gap(point, tf, (point.at - MINUTE, 5000.0), (point.at - MINUTE, 5000.0 + gap) if gap is not None else None)


def _stitched(points: list[RollPoint], times: list[datetime]) -> pd.DataFrame:
    segments = front_segments(points)
    return pd.concat([bars(next(s.contract_id for s in segments if s.contains(t)), t, 1, 5000.0) for t in times]).reset_index(drop=True)


def test_back_adjustment_adds_the_gaps_of_the_later_known_rolls():
    points = roll_points([mes("M25"), mes("U25"), mes("Z25")], RULE, nyse_open)
    series = _stitched(points, [R_M25 - MINUTE, R_M25, R_U25 - MINUTE, R_U25])
    gaps = [_gap(points[0], 40.0), _gap(points[1], -12.5)]
    adjusted = back_adjust(series, gaps)
    assert adjusted["adjustment"].tolist() == [27.5, -12.5, -12.5, 0.0]
    assert (adjusted["close"] - series["close"]).tolist() == [27.5, -12.5, -12.5, 0.0]
    assert (adjusted["high"] - adjusted["low"]).tolist() == (series["high"] - series["low"]).tolist()
    assert adjusted["adjustment_complete"].all()
    # as of the second roll's eve it is not known: it adjusts nothing
    as_of = R_U25 - timedelta(hours=1)
    early = back_adjust(series[series["timestamp"] < as_of], gaps, as_of)
    assert early["adjustment"].tolist() == [40.0, 0.0]
    # an unknown gap counts 0 and flags the bars it should have adjusted
    unknown = back_adjust(series, [_gap(points[0], 40.0), _gap(points[1], None)])
    assert unknown["adjustment"].tolist() == [40.0, 0.0, 0.0, 0.0]
    assert unknown["adjustment_complete"].tolist() == [False, False, False, True]


def test_back_adjustment_refuses_what_it_cannot_adjust_rightly():
    points = roll_points([mes("M25"), mes("U25"), mes("Z25")], RULE, nyse_open)
    series = _stitched(points, [R_M25 - MINUTE, R_M25, R_U25])
    gaps = [_gap(points[0], 40.0), _gap(points[1], 2.0)]
    with pytest.raises(DomainError, match="bar at 2025-09-10T22:00:00\\+00:00 starts at or after as_of 2025-09-10T22:00:00\\+00:00"):
        back_adjust(series, gaps, as_of=R_U25)
    with pytest.raises(DomainError, match="bar at 2025-06-11T21:59:00\\+00:00 is of CON.F.US.MES.M25, but the rolls given make CON.F.US.MES.U25"):
        back_adjust(series, gaps[1:])  # the first roll left out: the bars were stitched under other rolls
    with pytest.raises(DomainError, match="several timeframes \\['1m', '5m'\\]"):
        back_adjust(series, [_gap(points[0], 40.0, TF5), _gap(points[1], 2.0, TF5)])
    with pytest.raises(DomainError, match="naive as_of"):
        back_adjust(series, gaps, as_of=datetime(2025, 9, 1))
    with pytest.raises(DomainError, match="bar frame lacks columns \\['volume'\\]"):
        back_adjust(series.drop(columns="volume"), gaps)
    with pytest.raises(DomainError, match="expected ascending roll instants"):
        back_adjust(series, gaps[::-1])


ticks = st.integers(-800, 800).map(lambda n: n * 0.25)  # gaps on the tick grid: sums stay exact


@no_deadline
@given(
    st.lists(st.one_of(ticks, st.none()), min_size=3, max_size=3),
    st.lists(st.integers(-5 * 1440, 100 * 1440), min_size=1, max_size=40, unique=True),
    st.integers(-5 * 1440, 100 * 1440),
    st.integers(1, 100 * 1440),
)
def test_a_later_roll_shifts_every_bar_known_before_it_alike(gap_values, minutes, first_as_of, later):
    # what was seen as of an instant never changes shape when rolls after it become known:
    # every bar known then moves by the same amount, the sum of the newly known gaps
    points = roll_points(QUARTERS[1:5], RULE, nyse_open)  # three rolls, R_M25 the first
    gaps = [_gap(p, g) for p, g in zip(points, gap_values)]
    as_of_1 = R_M25 + first_as_of * MINUTE
    as_of_2 = as_of_1 + later * MINUTE
    series = _stitched(points, sorted(R_M25 + m * MINUTE for m in minutes))
    seen = series[series["timestamp"] < as_of_1]
    before = back_adjust(seen, gaps, as_of_1)
    after = back_adjust(seen, gaps, as_of_2)
    shift = after["adjustment"] - before["adjustment"]
    assert (shift == sum(g.gap for g in gaps if as_of_1 < g.point.at <= as_of_2)).all()
    assert (after["close"] - before["close"] == shift).all()
    # bars starting after every known roll keep their prices
    latest = max((g.point.at for g in gaps if g.point.at <= as_of_1), default=None)
    if latest is not None:
        assert (before.loc[before["timestamp"] >= latest, "adjustment"] == 0).all()


# --------------------------------------------------------------------------- the table and the view


def store(conn, *frames: pd.DataFrame) -> None:
    upsert_bars(conn, pd.concat(frames).reset_index(drop=True), mode="keep", source="history", notify=False)


def test_contract_rolls_refuses_rolls_that_make_no_sense(conn):
    sql = "INSERT INTO contract_rolls (symbol, roll_at, from_contract, to_contract, rule) VALUES (%s, %s, %s, %s, 'calendar:8')"
    refused = [
        (("MES", R_M25, "CON.F.US.MES.M25", "CON.F.US.MES.M25"), psycopg2.errors.CheckViolation, "contract_rolls_d_distinct_months"),
        (("MES", R_M25, "CON.F.US.MES.U25", "CON.F.US.MES.M25"), psycopg2.errors.CheckViolation, "contract_rolls_e_forward"),
        (("MES", R_M25, "CON.F.US.MES.H26", "CON.F.US.MES.Z25"), psycopg2.errors.CheckViolation, "contract_rolls_e_forward"),
        (("MES", R_M25, "CON.F.US.MNQ.M25", "CON.F.US.MNQ.U25"), psycopg2.errors.CheckViolation, "contract_rolls_c_of_the_symbol"),
        (("MES", R_M25, "MES.M25", "MES.U25"), psycopg2.errors.CheckViolation, "contract_rolls_b_contract_forms"),
        (("mes", R_M25, "CON.F.US.MES.M25", "CON.F.US.MES.U25"), psycopg2.errors.CheckViolation, "contract_rolls_a_symbol_form"),
        (("MES", R_U25, "CON.F.US.MES.M25", "CON.F.US.MES.Z25"), psycopg2.errors.UniqueViolation, "contract_rolls_from_once"),
    ]
    with conn.cursor() as cur:
        cur.execute(sql, ("MES", R_M25 - timedelta(days=90), "CON.F.US.MES.M25", "CON.F.US.MES.U25"))
        for values, error, constraint in refused:
            cur.execute("SAVEPOINT s")
            with pytest.raises(error, match=constraint):
                cur.execute(sql, values)
            cur.execute("ROLLBACK TO SAVEPOINT s")
        # a December-to-March roll crosses the year: forward all the same
        cur.execute(sql, ("MES", R_U25 + timedelta(days=91), "CON.F.US.MES.Z25", "CON.F.US.MES.H26"))


def test_the_view_switches_contract_exactly_at_the_roll(conn):
    # both months stored for the half hour either side of the roll
    m25 = bars("CON.F.US.MES.M25", R_M25 - 30 * MINUTE, 60, 6000.0)
    u25 = bars("CON.F.US.MES.U25", R_M25 - 30 * MINUTE, 60, 6040.0)
    store(conn, m25, u25, bars("CON.F.US.MES.U25", R_M25 - 30 * MINUTE, 12, 6040.0, TF5))
    record_roll_points(conn, roll_points([mes("M25"), mes("U25")], RULE, nyse_open), "calendar:8")
    series = read_continuous_bars(conn, "MES", TF1, None, None)
    # every minute once: none lost and none doubled at the boundary
    assert series["timestamp"].tolist() == m25["timestamp"].tolist()
    assert series["contract_id"].tolist() == ["CON.F.US.MES.M25"] * 30 + ["CON.F.US.MES.U25"] * 30
    assert series.loc[series["timestamp"] == R_M25, "close"].item() == u25.loc[30, "close"]  # the new month's bar at the roll
    assert series.loc[series["timestamp"] == R_M25 - MINUTE, "close"].item() == m25.loc[29, "close"]  # the old one's just before
    assert (series["symbol"] == "MES").all() and (series["timeframe_value"] == 1).all()
    # the same bars the domain's stitching takes from everything stored
    stored = pd.concat([read_bars(conn, c, TF1) for c in ("CON.F.US.MES.M25", "CON.F.US.MES.U25")]).reset_index(drop=True)
    expected = stitch_front_bars(stored, front_segments(recorded_roll_points(conn, "MES")))
    pd.testing.assert_frame_equal(series.drop(columns="symbol"), expected)
    # a range that starts at the roll starts with the new month
    assert read_continuous_bars(conn, "MES", TF1, R_M25, R_M25 + 5 * MINUTE)["contract_id"].unique().tolist() == ["CON.F.US.MES.U25"]
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM continuous_bars LIMIT 0")
        assert [d.name for d in cur.description] == [
            "symbol",
            "contract_id",
            "timeframe_unit",
            "timeframe_value",
            "timestamp",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "revisions",  # migration 0006: what the analysis fingerprints the series by
            "ingested_at",
        ]


def test_before_the_first_roll_the_series_is_its_old_month(conn):
    early = bars("CON.F.US.MES.M25", R_M25 - timedelta(days=30), 10, 5900.0)
    store(conn, early, bars("CON.F.US.MES.U25", R_M25 - timedelta(days=30), 10, 5940.0))
    assert read_continuous_bars(conn, "MES", TF1, None, None).empty  # no roll recorded: no front month known
    record_roll_points(conn, roll_points([mes("M25"), mes("U25"), mes("Z25")], RULE, nyse_open), "calendar:8")
    series = read_continuous_bars(conn, "MES", TF1, None, R_M25)
    assert series["contract_id"].unique().tolist() == ["CON.F.US.MES.M25"]
    assert series["close"].tolist() == early["close"].tolist()
    assert read_continuous_bars(conn, "MNQ", TF1, None, None).empty  # another symbol's rolls: none


def test_the_view_reads_each_front_span_by_a_range_scan_of_the_primary_key(conn):
    # three days of both months' 1m bars, analyzed as autovacuum analyzes a table in use (a table
    # never analyzed, as a fresh test database's, is planned from guesses)
    days = 3 * 1440
    store(conn, bars("CON.F.US.MES.M25", R_M25 - days * MINUTE, 2 * days, 6000.0), bars("CON.F.US.MES.U25", R_M25 - days * MINUTE, 2 * days, 6040.0))
    record_roll_points(conn, roll_points([mes("M25"), mes("U25")], RULE, nyse_open), "calendar:8")
    with conn.cursor() as cur:
        cur.execute("ANALYZE ohlc_bars")
        cur.execute("ANALYZE contract_rolls")
        cur.execute(
            "EXPLAIN SELECT * FROM continuous_bars WHERE symbol = 'MES' AND timeframe_unit = 2 AND timeframe_value = 1"
            " AND \"timestamp\" >= '2025-06-11T21:45Z' AND \"timestamp\" < '2025-06-11T22:15Z'"
        )
        plan = "\n".join(r[0] for r in cur.fetchall())
    # on TimescaleDB the scan is of each chunk's copy of the key ("1_ohlc_bars_pkey" on _hyper_1_1_chunk)
    assert re.search(r'Index Scan using "?\w*ohlc_bars_pkey"? on (ohlc_bars|_hyper_\w+_chunk)', plan), plan
    condition = next(line for line in plan.splitlines() if "Index Cond" in line and "contract_id" in line)
    # one scan per front span, bounded by the span and by the caller's range
    assert "contract_id = contract_rolls" in condition and '"timestamp" >= contract_rolls' in condition, plan
    assert "2025-06-11 21:45:00+00" in condition and "2025-06-11 22:15:00+00" in condition, plan


# --------------------------------------------------------------------------- recording rolls


def _recorded(conn, symbol="MES") -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute("SELECT roll_at, from_contract, to_contract, rule, recorded_at FROM contract_rolls WHERE symbol = %s ORDER BY roll_at", (symbol,))
        return cur.fetchall()


def test_record_roll_points_is_idempotent_and_updates_a_changed_rule(conn):
    listing = [mes(c) for c in ("M25", "U25", "Z25", "H26")]
    points = roll_points(listing, RULE, nyse_open)
    mnq = roll_points([ContractMonth.of("CON.F.US.MNQ.U25"), ContractMonth.of("CON.F.US.MNQ.Z25")], RULE, nyse_open)
    assert record_roll_points(conn, points + mnq, "calendar:8") == 4
    conn.commit()
    first = _recorded(conn)
    assert recorded_roll_points(conn, "MES") == points and recorded_roll_points(conn, "MNQ") == mnq
    # the same listing again, in another order and with a point twice: nothing new is written
    assert record_roll_points(conn, points[::-1] + points[:1], "calendar:8") == 0
    conn.commit()
    assert _recorded(conn) == first
    # a later listing (the expired month gone, a new one listed) adds its one new roll
    later = roll_points(listing[1:] + [mes("M26")], RULE, nyse_open)
    assert record_roll_points(conn, later, "calendar:8") == 1
    assert [r[2] for r in _recorded(conn)] == ["CON.F.US.MES.U25", "CON.F.US.MES.Z25", "CON.F.US.MES.H26", "CON.F.US.MES.M26"]
    conn.commit()
    # the same instants computed by another rule's name: updated, and stamped anew
    assert record_roll_points(conn, points[:1], "calendar:8 nyse") == 1
    conn.commit()
    updated = _recorded(conn)
    assert (updated[0][3], updated[1][3]) == ("calendar:8 nyse", "calendar:8")
    assert updated[0][4] > first[0][4] and updated[1][4] == first[1][4]


def test_a_moved_roll_replaces_the_recorded_one_and_a_broken_chain_is_refused(conn):
    record_roll_points(conn, roll_points([mes("M25"), mes("U25"), mes("Z25")], RULE, nyse_open), "calendar:8")
    five_days = roll_points([mes("M25"), mes("U25")], CalendarRoll(5), nyse_open)
    assert five_days[0].at == utc(2025, 6, 12, 22)  # 5 days before is a Sunday: the Friday before's session
    assert record_roll_points(conn, five_days, "calendar:5") == 1
    assert [(r[0], r[1], r[3]) for r in _recorded(conn)] == [
        (utc(2025, 6, 12, 22), "CON.F.US.MES.M25", "calendar:5"),
        (R_U25, "CON.F.US.MES.U25", "calendar:8"),
    ]
    before = _recorded(conn)
    # H26 -> M26 recorded after U25 -> Z25 would leave Z25 -> H26 unknown: the series would run on in Z25
    with pytest.raises(DomainError, match="leaves CON.F.US.MES.H26, but the roll at 2025-09-10T22:00:00\\+00:00 made CON.F.US.MES.Z25 the front"):
        record_roll_points(conn, roll_points([mes("H26"), mes("M26")], RULE, nyse_open), "calendar:8")
    assert _recorded(conn) == before  # nothing of the refused call is written


# --------------------------------------------------------------------------- back-adjusted reads


def _three_months(conn) -> dict[str, pd.DataFrame]:
    """M25, U25 and Z25 1m bars: each pair of months for the half hour either side of its roll."""
    stored = {
        "m25": bars("CON.F.US.MES.M25", R_M25 - 30 * MINUTE, 60, 6000.0),
        "u25a": bars("CON.F.US.MES.U25", R_M25 - 30 * MINUTE, 60, 6040.0),
        "u25b": bars("CON.F.US.MES.U25", R_U25 - 30 * MINUTE, 60, 6100.0),
        "z25": bars("CON.F.US.MES.Z25", R_U25 - 30 * MINUTE, 60, 6087.5),
    }
    store(conn, *stored.values())
    record_roll_points(conn, roll_points([mes("M25"), mes("U25"), mes("Z25")], RULE, nyse_open), "calendar:8")
    return stored


def test_back_adjustment_closes_the_gap_at_each_roll(conn):
    stored = _three_months(conn)
    plain = read_continuous_bars(conn, "MES", TF1, None, None)
    adjusted = read_continuous_bars(conn, "MES", TF1, None, None, back_adjusted=True)
    gap_m25, gap_u25 = (g.gap for g in roll_gaps(conn, "MES", TF1))
    assert (gap_m25, gap_u25) == (40.0, -12.5)
    # the last bar before each roll: adjusted old close == new month's close, adjusted alike
    last_m25 = adjusted[adjusted["timestamp"] == R_M25 - MINUTE].iloc[0]
    assert last_m25["contract_id"] == "CON.F.US.MES.M25"
    assert last_m25["close"] == stored["u25a"].loc[29, "close"] + gap_u25
    last_u25 = adjusted[adjusted["timestamp"] == R_U25 - MINUTE].iloc[0]
    assert last_u25["contract_id"] == "CON.F.US.MES.U25"
    assert last_u25["close"] == stored["z25"].loc[29, "close"]
    by_contract = adjusted.groupby("contract_id")["adjustment"].unique().map(list).to_dict()
    assert by_contract == {"CON.F.US.MES.M25": [gap_m25 + gap_u25], "CON.F.US.MES.U25": [gap_u25], "CON.F.US.MES.Z25": [0.0]}
    for c in ("open", "high", "low", "close"):
        assert (adjusted[c] == plain[c] + adjusted["adjustment"]).all()
    assert adjusted["adjustment_complete"].all()
    shifted = {c: plain[c] + adjusted["adjustment"] for c in ("open", "high", "low", "close")}
    pd.testing.assert_frame_equal(adjusted[plain.columns], plain.assign(**shifted))


def test_as_of_before_a_roll_leaves_the_bars_unadjusted_by_it(conn):
    _three_months(conn)
    between = R_U25 - 10 * MINUTE
    seen = read_continuous_bars(conn, "MES", TF1, None, None, back_adjusted=True, as_of=between)
    assert seen["timestamp"].max() < between  # nothing after as_of is known
    assert seen.groupby("contract_id")["adjustment"].unique().map(list).to_dict() == {"CON.F.US.MES.M25": [40.0], "CON.F.US.MES.U25": [0.0]}
    assert [g.point.at for g in roll_gaps(conn, "MES", TF1, as_of=between)] == [R_M25]
    before_all = read_continuous_bars(conn, "MES", TF1, None, None, back_adjusted=True, as_of=R_M25 - 10 * MINUTE)
    assert len(before_all) == 20 and (before_all["adjustment"] == 0).all()
    assert before_all["close"].tolist() == read_continuous_bars(conn, "MES", TF1, None, None, as_of=R_M25 - 10 * MINUTE)["close"].tolist()
    # a roll at as_of has happened: it adjusts every bar before it
    at_roll = read_continuous_bars(conn, "MES", TF1, R_U25 - 5 * MINUTE, None, back_adjusted=True, as_of=R_U25)
    assert (at_roll["adjustment"] == -12.5).all() and len(at_roll) == 5


def test_a_missing_gap_is_reported_and_not_invented(conn, caplog):
    store(conn, bars("CON.F.US.MES.M25", R_M25 - 30 * MINUTE, 60, 6000.0), bars("CON.F.US.MES.U25", R_M25, 30, 6040.0))  # U25: none before
    record_roll_points(conn, roll_points([mes("M25"), mes("U25")], RULE, nyse_open), "calendar:8")
    (gap,) = roll_gaps(conn, "MES", TF1)
    assert (gap.gap, gap.known, gap.old_close, gap.new_close) == (0.0, False, 6007.25, None)
    assert "no 1m bar of CON.F.US.MES.U25 starts before the roll at 2025-06-11T22:00:00+00:00" in gap.missing
    adjusted = read_continuous_bars(conn, "MES", TF1, None, None, back_adjusted=True)
    before = adjusted["timestamp"] < R_M25
    assert (adjusted["adjustment"] == 0).all()
    assert adjusted["adjustment_complete"].tolist() == [False] * 30 + [True] * 30
    assert before.sum() == 30
    assert "event=roll_gap_missing" in caplog.text and "CON.F.US.MES.U25" in caplog.text
    # the 5m series has no bars at all here: both months missing, said so
    (gap_5m,) = roll_gaps(conn, "MES", TF5)
    assert "no 5m bar of CON.F.US.MES.M25 nor of CON.F.US.MES.U25" in gap_5m.missing


def test_bad_input_is_refused_by_name(conn):
    points = roll_points([mes("M25"), mes("U25")], RULE, nyse_open)
    with pytest.raises(DomainError, match='invalid symbol "MES\'; DROP TABLE ohlc_bars"'):
        read_continuous_bars(conn, "MES'; DROP TABLE ohlc_bars", TF1, None, None)
    with pytest.raises(DomainError, match="invalid symbol 'CON.F.US.MES.M25': expected a futures root"):
        recorded_roll_points(conn, "CON.F.US.MES.M25")
    with pytest.raises(DomainError, match="naive start"):
        read_continuous_bars(conn, "MES", TF1, datetime(2025, 6, 1), None)
    with pytest.raises(DomainError, match="invalid range \\[2025-06-11T22:00:00\\+00:00, 2025-06-11T22:00:00\\+00:00\\): expected start before end"):
        read_continuous_bars(conn, "MES", TF1, R_M25, R_M25)
    with pytest.raises(DomainError, match="invalid timeframe '1m': expected a Timeframe"):
        read_continuous_bars(conn, "MES", "1m", None, None)
    with pytest.raises(DomainError, match="naive as_of"):
        read_continuous_bars(conn, "MES", TF1, None, None, back_adjusted=True, as_of=datetime(2025, 6, 1))
    with pytest.raises(DomainError, match="invalid roll rule '': expected the rule's name"):
        record_roll_points(conn, points, "")
    with pytest.raises(DomainError, match="invalid roll point 'M25': expected a rolls.RollPoint"):
        record_roll_points(conn, ["M25"], "calendar:8")
    with pytest.raises(DomainError, match="naive roll instant"):
        record_roll_points(conn, [RollPoint(datetime(2025, 6, 11, 22), mes("M25"), mes("U25"))], "calendar:8")
    assert _recorded(conn) == []


def test_an_aware_time_in_another_zone_is_the_same_instant(conn):
    store(conn, bars("CON.F.US.MES.M25", R_M25 - 30 * MINUTE, 60, 6000.0), bars("CON.F.US.MES.U25", R_M25 - 30 * MINUTE, 60, 6040.0))
    new_york = timezone(timedelta(hours=-4))
    local = [RollPoint(p.at.astimezone(new_york), p.from_month, p.to_month) for p in roll_points([mes("M25"), mes("U25")], RULE, nyse_open)]
    assert record_roll_points(conn, local, "calendar:8") == 1
    assert recorded_roll_points(conn, "MES")[0].at == R_M25
    series = read_continuous_bars(conn, "MES", TF1, (R_M25 - MINUTE).astimezone(new_york), (R_M25 + MINUTE).astimezone(new_york))
    assert series["contract_id"].tolist() == ["CON.F.US.MES.M25", "CON.F.US.MES.U25"]
