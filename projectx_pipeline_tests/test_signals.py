"""Signal tables, incremental trend analysis, coordination and the Dagster signal assets, all
against a real PostgreSQL database (fixtures in conftest.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from projectx_pipeline.analysis.coordination_runner import run_coordination
from projectx_pipeline.analysis.trend_analysis import run_trend_analysis
from projectx_pipeline.domain.coordination import coordinate
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.domain.timeframes import bar_end, parse_timeframe
from projectx_pipeline.domain.trend_starts import ANALYZER_ID, detect_trend_starts_frame
from projectx_pipeline.storage import coordinated_signals as coordinated
from projectx_pipeline.storage import trend_signals as store
from projectx_pipeline.storage.bars import upsert_bars

from .support.coordination import RULES
from .support.database import run_concurrently
from .support.market import MES
from .support.signals import canonical_signals

TF5, TF15, TF1H, TF4H = (parse_timeframe(t) for t in ("5m", "15m", "1h", "4h"))


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def samples(sample_dir) -> dict:
    out = {tf: read_bars_csv(sample_dir / f"{MES}_{tf.label}.csv") for tf in (TF5, TF1H, TF4H)}
    out[TF15] = _resample(out[TF5], TF15)
    return out


def _resample(bars: pd.DataFrame, tf) -> pd.DataFrame:
    """Clock-aligned aggregation of finer bars (the samples have no 15m file)."""
    label = bars["timestamp"].dt.floor(f"{tf.value}min")
    g = bars.groupby(label, sort=True)
    out = pd.DataFrame(
        {
            "open": g["open"].first(),
            "high": g["high"].max(),
            "low": g["low"].min(),
            "close": g["close"].last(),
            "volume": g["volume"].sum(),
        }
    ).reset_index(names="timestamp")
    out["contract_id"] = MES
    out["timeframe_unit"], out["timeframe_value"] = tf.unit, tf.value
    return out


def _load(conn, bars: pd.DataFrame, mode: str = "keep") -> None:
    if not bars.empty:
        upsert_bars(conn, bars, mode=mode, source="history", notify=False)
        conn.commit()  # storage never commits: the caller does


def _stored(conn, tf) -> pd.DataFrame:
    df = store.read_detected_signals(conn, ANALYZER_ID, MES, tf)
    conn.rollback()
    return canonical_signals(df, "price")


def _expected(bars: pd.DataFrame) -> pd.DataFrame:
    return canonical_signals(detect_trend_starts_frame(bars), "start_price")


def _assert_stored_equals_full(conn, tf, bars) -> None:
    assert_frame_equal(_stored(conn, tf), _expected(bars))


def _coordinated_keys(conn) -> set[tuple]:
    df = coordinated.read_coordinated(conn, MES)
    conn.rollback()
    return set(zip(df["rule"], df["anchor_signal_id"], df["trigger_signal_id"], df["signal_ts"]))


def _full_coordination_keys(conn) -> set[tuple]:
    sigs = store.read_signals(conn, MES, analyzer_id=ANALYZER_ID)
    conn.rollback()
    out = coordinate(sigs, RULES)
    return set(zip(out["rule"], out["anchor_signal_id"], out["trigger_signal_id"], out["signal_ts"]))


def _assert_no_look_ahead(conn) -> int:
    """Every coordinated signal's time is at or after the known_at (close of the confirming bar)
    of both inputs, and after their confirm-bar labels; returns the row count checked."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT count(*), count(*) FILTER (WHERE c.signal_ts < a.known_at OR c.signal_ts < t.known_at
                                                   OR c.signal_ts <= a.confirm_ts OR c.signal_ts <= t.confirm_ts)
               FROM coordinated_signals c
               JOIN detected_signals a ON a.id = c.anchor_signal_id
               JOIN detected_signals t ON t.id = c.trigger_signal_id"""
        )
        total, bad = cur.fetchone()
    conn.rollback()
    assert bad == 0
    return total


def _hand_signals(*rows) -> pd.DataFrame:
    """rows: (type, confirm_ts[, start_ts]) for `insert_detected_signals`."""
    records = []
    for row in rows:
        kind, confirm = row[0], pd.Timestamp(row[1], tz="UTC")
        start = pd.Timestamp(row[2], tz="UTC") if len(row) > 2 else confirm - pd.Timedelta(hours=3)
        records.append({"type": kind, "start_ts": start, "confirm_ts": confirm, "rule": "hand_made", "start_price": 5000.0})
    return pd.DataFrame.from_records(records, columns=store.DETECTED_FRAME_COLUMNS)


def _signal_id(conn, tf, kind, confirm) -> int:
    df = store.read_signals(conn, MES, timeframes=[tf])
    conn.rollback()
    row = df[(df["type"] == kind) & (df["confirm_ts"] == pd.Timestamp(confirm, tz="UTC"))]
    assert len(row) == 1
    return int(row["signal_id"].iloc[0])


def _set_analyzer_watermark(conn, tf, last_bar_ts) -> None:
    store.save_analyzer_watermark(conn, ANALYZER_ID, MES, tf, last_bar_ts=pd.Timestamp(last_bar_ts, tz="UTC"), bars_processed=1, state={})
    conn.commit()


# --------------------------------------------------------------------------- storage


def test_detected_signal_inserts_are_idempotent(conn, samples):
    frame = detect_trend_starts_frame(samples[TF4H])
    assert store.insert_detected_signals(conn, ANALYZER_ID, MES, TF4H, frame) == len(frame) == 120
    conn.commit()
    assert store.insert_detected_signals(conn, ANALYZER_ID, MES, TF4H, frame) == 0
    assert store.insert_detected_signals(conn, ANALYZER_ID, MES, TF4H, frame.iloc[:10]) == 0
    conn.commit()
    assert store.count_signals(conn, ANALYZER_ID, MES, TF4H) == 120
    sigs = store.read_signals(conn, MES)
    conn.rollback()
    assert list(sigs.columns) == store.SIGNAL_COLUMNS
    assert set(sigs["timeframe"]) == {"4h"}
    # known_at is the close of the confirming bar (the session close for the last 4h bar of a day)
    expected_known = [pd.Timestamp(bar_end(t.to_pydatetime(), TF4H)) for t in sigs["confirm_ts"]]
    assert list(sigs["known_at"]) == expected_known
    assert (sigs["known_at"] > sigs["confirm_ts"]).all() and (sigs["confirm_ts"] > sigs["start_ts"]).all()
    assert sigs["known_at"].is_monotonic_increasing
    assert_frame_equal(_stored(conn, TF4H), _expected(samples[TF4H]))
    # since_known_at filters on known_at, not on start or confirm labels
    cut = sigs["known_at"].iloc[50]
    later = store.read_signals(conn, MES, cut)
    conn.rollback()
    assert len(later) == int((sigs["known_at"] >= cut).sum())


def test_coordinated_inserts_are_idempotent_and_ids_are_validated(conn):
    store.insert_detected_signals(conn, ANALYZER_ID, MES, TF1H, _hand_signals(("uptrend", "2025-03-18 10:00")))
    store.insert_detected_signals(conn, ANALYZER_ID, MES, TF15, _hand_signals(("uptrend", "2025-03-18 11:30")))
    conn.commit()
    sigs = store.read_signals(conn, MES)
    conn.rollback()
    out = coordinate(sigs, RULES)
    assert len(out) == 1
    assert coordinated.insert_coordinated(conn, out) == 1
    assert coordinated.insert_coordinated(conn, out) == 0
    conn.commit()
    assert coordinated.count_coordinated(conn, MES) == 1
    with pytest.raises(DomainError):
        store.read_signals(conn, "MES'; DROP TABLE detected_signals; --")
    with pytest.raises(DomainError):
        store.insert_detected_signals(conn, "Bad Analyzer", MES, TF1H, _hand_signals())


# --------------------------------------------------------------------------- incremental analysis


@pytest.mark.parametrize(("tf", "seed", "max_chunk"), [(TF1H, 1, 120), (TF1H, 2, 400), (TF4H, 3, 60), (TF5, 4, 3000)])
def test_incremental_analysis_in_random_chunks_equals_full_recompute(conn, samples, tf, seed, max_chunk):
    bars = samples[tf]
    rng = np.random.default_rng(seed)
    done, runs = 0, 0
    while done < len(bars):
        size = min(int(rng.integers(1, max_chunk + 1)) if rng.random() > 0.2 else 1, len(bars) - done)
        _load(conn, bars.iloc[done : done + size])
        done += size
        result = run_trend_analysis(conn, MES, tf)
        runs += 1
        assert not result.recomputed
        assert result.mode == ("initial" if runs == 1 else "incremental")
        assert result.bars_processed == size
        if tf != TF5:  # every prefix equals the full run on that prefix (§7.7)
            _assert_stored_equals_full(conn, tf, bars.iloc[:done])
    _assert_stored_equals_full(conn, tf, bars)
    again = run_trend_analysis(conn, MES, tf)
    assert (again.bars_processed, again.new_signals, again.recomputed) == (0, 0, False)
    assert again.total_signals == len(detect_trend_starts_frame(bars))
    assert list(again.latest["known_at"]) == sorted(again.latest["known_at"], reverse=True)
    wm = store.load_analyzer_watermark(conn, ANALYZER_ID, MES, tf)
    conn.rollback()
    assert wm.bars_processed == len(bars) and wm.last_bar_ts == bars["timestamp"].iloc[-1]


def test_bars_changed_behind_the_watermark_trigger_an_exact_recompute(conn, samples):
    bars = samples[TF1H].copy()
    hole = bars.index[500:503]
    _load(conn, bars.drop(hole))
    first = run_trend_analysis(conn, MES, TF1H)
    assert first.mode == "initial" and first.bars_processed == len(bars) - 3
    before = store.read_detected_signals(conn, ANALYZER_ID, MES, TF1H)
    conn.rollback()

    # a repaired hole: the bars arrive behind the watermark
    _load(conn, bars.loc[hole])
    repaired = run_trend_analysis(conn, MES, TF1H)
    assert repaired.recomputed and repaired.mode == "recompute" and repaired.bars_processed == len(bars)
    assert repaired.changed_from >= bars["timestamp"].iloc[500]
    _assert_stored_equals_full(conn, TF1H, bars)
    # rows confirmed before the first difference were kept as they were (same ids)
    after = store.read_detected_signals(conn, ANALYZER_ID, MES, TF1H)
    conn.rollback()
    kept = before[before["confirm_ts"] < pd.Timestamp(repaired.changed_from)]
    assert set(kept["signal_id"]) <= set(after["signal_id"])
    assert repaired.deleted_signals == int((before["confirm_ts"] >= pd.Timestamp(repaired.changed_from)).sum())

    # a history replace that changes a bar far behind the watermark
    changed = bars.copy()
    changed.loc[700, "low"] = changed.loc[700, "low"] - 20.0
    _load(conn, changed.loc[[700]], mode="replace")
    replaced = run_trend_analysis(conn, MES, TF1H)
    assert replaced.recomputed
    _assert_stored_equals_full(conn, TF1H, changed)

    # a bar whose transaction started before the last run but committed after it: its
    # ingested_at is older than anything recorded, the bar count still gives it away
    with conn.cursor() as cur:
        cur.execute(
            'DELETE FROM ohlc_bars WHERE contract_id = %s AND timeframe_unit = 3 AND timeframe_value = 1 AND "timestamp" = %s',
            (MES, changed["timestamp"].iloc[300].to_pydatetime()),
        )
    conn.commit()
    assert run_trend_analysis(conn, MES, TF1H).recomputed
    _load(conn, changed.loc[[300]])
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE ohlc_bars SET ingested_at = '2000-01-01' WHERE contract_id = %s AND timeframe_unit = 3"
            ' AND timeframe_value = 1 AND "timestamp" = %s',
            (MES, changed["timestamp"].iloc[300].to_pydatetime()),
        )
    conn.commit()
    late = run_trend_analysis(conn, MES, TF1H)
    assert late.recomputed
    _assert_stored_equals_full(conn, TF1H, changed)
    quiet = run_trend_analysis(conn, MES, TF1H)
    assert (quiet.recomputed, quiet.bars_processed, quiet.new_signals, quiet.deleted_signals) == (False, 0, 0, 0)


def test_overlapping_analysis_runs_process_each_bar_and_signal_once(db_url, conn, samples):
    bars = samples[TF5]
    _load(conn, bars.iloc[:4000])
    run_trend_analysis(conn, MES, TF5)
    _load(conn, bars.iloc[4000:])
    results, errors = run_concurrently(db_url, 3, lambda c: run_trend_analysis(c, MES, TF5))
    assert not errors
    assert sorted(r.bars_processed for r in results) == [0, 0, len(bars) - 4000]
    expected = _expected(bars)
    assert sum(r.new_signals for r in results) == len(expected) - len(_expected(bars.iloc[:4000]))
    _assert_stored_equals_full(conn, TF5, bars)


def test_analysis_refuses_a_connection_with_an_open_transaction(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(ValueError, match="open transaction"):
        run_trend_analysis(conn, MES, TF1H)
    conn.rollback()
    with pytest.raises(DomainError):
        run_trend_analysis(conn, "not-a-contract", TF1H)


# --------------------------------------------------------------------------- coordination


def test_coordination_cases_end_to_end_through_the_tables(conn):
    store.insert_detected_signals(
        conn,
        ANALYZER_ID,
        MES,
        TF1H,
        _hand_signals(
            ("uptrend", "2025-03-18 10:00"),  # known 11:00
            ("downtrend", "2025-03-18 15:00"),  # known 16:00
            ("uptrend", "2025-03-18 18:00"),  # known 19:00
            ("uptrend", "2025-03-19 10:00"),  # known 11:00
            ("uptrend", "2025-03-19 14:00"),  # known 15:00
        ),
    )
    store.insert_detected_signals(
        conn,
        ANALYZER_ID,
        MES,
        TF15,
        _hand_signals(
            ("uptrend", "2025-03-18 11:30"),  # known 11:45: inside the 1h anchor's 60 minutes
            ("downtrend", "2025-03-18 17:00"),  # known 17:15: 75 minutes after the anchor, outside
            ("downtrend", "2025-03-18 19:00"),  # known 19:15: inside in time, but the opposite type
            ("uptrend", "2025-03-19 10:45"),  # known 11:00: same instant as the anchor, inside
            ("uptrend", "2025-03-19 14:15"),  # known 14:30: confirmed by a bar inside the anchor's
        ),
    )  # confirm bar, known BEFORE the anchor: no match
    conn.commit()
    _set_analyzer_watermark(conn, TF1H, "2025-03-19 20:00")
    _set_analyzer_watermark(conn, TF15, "2025-03-19 20:45")

    first = run_coordination(conn, MES, RULES)
    assert first.new_outputs == 2 and first.total_outputs == 2
    rows = coordinated.read_coordinated(conn, MES)
    conn.rollback()
    assert list(rows["label"]) == ["long", "long"]
    assert list(rows["signal_ts"]) == [pd.Timestamp("2025-03-18 11:45", tz="UTC"), pd.Timestamp("2025-03-19 11:00", tz="UTC")]
    assert list(rows["anchor_signal_id"]) == [
        _signal_id(conn, TF1H, "uptrend", "2025-03-18 10:00"),
        _signal_id(conn, TF1H, "uptrend", "2025-03-19 10:00"),
    ]
    assert list(rows["trigger_signal_id"]) == [
        _signal_id(conn, TF15, "uptrend", "2025-03-18 11:30"),
        _signal_id(conn, TF15, "uptrend", "2025-03-19 10:45"),
    ]
    # the watermark: the earlier of the two analyses' last closes (1h: 21:00, 15m: 21:00 -> 21:00)
    assert first.watermarks == {"long_1h_15m": pd.Timestamp("2025-03-19 21:00", tz="UTC"), "short_1h_15m": pd.Timestamp("2025-03-19 21:00", tz="UTC")}
    assert _assert_no_look_ahead(conn) == 2

    rerun = run_coordination(conn, MES, RULES)
    assert rerun.new_outputs == 0 and rerun.total_outputs == 2
    # forget the watermarks entirely: a full replay still produces each output once
    with conn.cursor() as cur:
        cur.execute("DELETE FROM coordinator_watermarks")
    conn.commit()
    assert run_coordination(conn, MES, RULES).new_outputs == 0
    assert coordinated.count_coordinated(conn, MES) == 2


def test_a_trigger_analysed_before_its_anchor_is_paired_later(conn):
    # 15m analysis has run up to 13:45; the 1h analysis only to 09:00 (its 10:00 bar not yet analysed)
    store.insert_detected_signals(conn, ANALYZER_ID, MES, TF15, _hand_signals(("uptrend", "2025-03-18 11:30")))
    conn.commit()
    _set_analyzer_watermark(conn, TF15, "2025-03-18 13:45")
    _set_analyzer_watermark(conn, TF1H, "2025-03-18 09:00")
    early = run_coordination(conn, MES, RULES)
    assert early.new_outputs == 0
    # the watermark stops at the 1h analysis' close, not at the 15m one (14:00)
    assert early.watermarks["long_1h_15m"] == pd.Timestamp("2025-03-18 10:00", tz="UTC")

    store.insert_detected_signals(conn, ANALYZER_ID, MES, TF1H, _hand_signals(("uptrend", "2025-03-18 10:00")))
    conn.commit()
    _set_analyzer_watermark(conn, TF1H, "2025-03-18 12:00")
    late = run_coordination(conn, MES, RULES)
    assert late.new_outputs == 1
    assert late.watermarks["long_1h_15m"] == pd.Timestamp("2025-03-18 13:00", tz="UTC")
    row = coordinated.read_coordinated(conn, MES)
    conn.rollback()
    assert list(row["signal_ts"]) == [pd.Timestamp("2025-03-18 11:45", tz="UTC")]
    assert list(row["anchor_known_at"]) == [pd.Timestamp("2025-03-18 11:00", tz="UTC")]


def _feed_until(conn, samples, cut, withheld) -> None:
    for tf in (TF1H, TF15):
        bars = samples[tf]
        part = bars[bars["timestamp"] < cut]
        _load(conn, part.drop(index=[i for i in withheld.get(tf, []) if i in part.index]))


def test_incremental_analysis_and_coordination_with_repairs_equal_a_full_run(conn, samples):
    """Time-ordered chunks of 1h and 15m bars, the 15m analysis sometimes running before the 1h
    one (or alone), and holes repaired behind both watermarks: the tables end up exactly equal
    to a full run of detection and coordination, without look-ahead."""
    rng = np.random.default_rng(11)
    start, end = samples[TF15]["timestamp"].iloc[0], samples[TF15]["timestamp"].iloc[-1] + pd.Timedelta(minutes=15)
    cuts = sorted(pd.Timestamp(t, tz="UTC") for t in rng.uniform(start.value, end.value, 12).astype("int64")) + [end]
    withheld = {TF15: list(range(900, 905)), TF1H: [260, 261]}
    for k, cut in enumerate(cuts):
        if k == 8:
            withheld = {}  # the repair: the missing bars arrive behind the watermarks
        _feed_until(conn, samples, cut, withheld)
        order = [TF15, TF1H] if rng.random() < 0.5 else [TF1H, TF15]
        if rng.random() < 0.3 and k < len(cuts) - 1:
            order = order[:1]  # one timeframe lags behind for a while
        results = [run_trend_analysis(conn, MES, tf) for tf in order]
        if k == 8:
            assert any(r.recomputed for r in results)
        run_coordination(conn, MES, RULES)
    hourly = samples[TF1H][samples[TF1H]["timestamp"] < end]
    _assert_stored_equals_full(conn, TF1H, hourly)
    _assert_stored_equals_full(conn, TF15, samples[TF15])
    full = _full_coordination_keys(conn)
    assert len(full) > 20
    assert _coordinated_keys(conn) == full
    assert _assert_no_look_ahead(conn) == len(full)


def test_overlapping_coordination_runs_produce_each_output_once(db_url, conn, samples):
    _load(conn, samples[TF1H])
    _load(conn, samples[TF15])
    run_trend_analysis(conn, MES, TF1H)
    run_trend_analysis(conn, MES, TF15)
    results, errors = run_concurrently(db_url, 3, lambda c: run_coordination(c, MES, RULES))
    assert not errors
    full = _full_coordination_keys(conn)
    assert sorted(r.new_outputs for r in results) == [0, 0, len(full)]
    assert _coordinated_keys(conn) == full
    assert coordinated.count_coordinated(conn, MES) == len(full)


# --------------------------------------------------------------------------- Dagster


def _metadata(result, node: str) -> dict:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def test_dagster_assets_materialize_signals_and_coordination(db_url, conn, samples, tmp_path):
    from importlib import resources as package_files

    from dagster import DagsterInstance, materialize

    from projectx_pipeline.orchestration.analysis_assets import analyzed_timeframes, build_analysis_assets
    from projectx_pipeline.orchestration.resources import StorageResource
    from projectx_pipeline.settings import load_settings

    # the shipped settings with the sample's month fixed in place of the symbol (whose front month
    # today is another): "every configured contract" below is then the sample's
    shipped = package_files.files("projectx_pipeline").joinpath("default_settings.yaml").read_text()
    fixed = shipped.replace("instruments:\n  - symbol: MES\n", f"contracts:\n  - id: {MES}\n", 1)
    assert fixed != shipped
    (tmp_path / "settings.yaml").write_text(fixed)
    settings = load_settings({"PROJECTX_SETTINGS": str(tmp_path / "settings.yaml")})
    analysis = build_analysis_assets(settings)
    assert analyzed_timeframes(settings) == [TF5, TF15, TF1H, TF4H]
    assert [a.key.path[-1] for a in analysis.trend_starts] == ["trend_starts_5m", "trend_starts_15m", "trend_starts_1h", "trend_starts_4h"]
    for tf in (TF5, TF15, TF1H, TF4H):
        _load(conn, samples[tf])
    resources = {"storage": StorageResource(database_url=db_url)}
    with DagsterInstance.ephemeral() as instance:
        result = materialize(analysis.assets, resources=resources, instance=instance, run_config=analysis.run_config([MES]))
        assert result.success
        for tf in (TF5, TF15, TF1H, TF4H):
            md = _metadata(result, f"trend_starts_{tf.label}")
            expected = len(detect_trend_starts_frame(samples[tf]))
            assert (md["bars_processed"], md["new_signals"], md["total_signals"]) == (len(samples[tf]), expected, expected)
            assert md["contracts"] == [MES] and md["recomputed"] == []
            assert md["latest_signals"].startswith("| contract_id | timeframe | type |")
            assert md["latest_signals"].count("\n") == 11  # header, rule, 10 rows
            assert store.count_signals(conn, ANALYZER_ID, MES, tf) == expected
            conn.rollback()
        coord = _metadata(result, "coordinated_signals")
        total = coordinated.count_coordinated(conn, MES)
        conn.rollback()
        assert coord["new_outputs"] == coord["total_outputs"] == total > 0
        assert "| contract_id | label | rule | signal_ts |" in coord["latest_signals"]
        assert _coordinated_keys(conn) == _full_coordination_keys(conn)
        _assert_no_look_ahead(conn)

        again = materialize(
            analysis.assets, resources=resources, instance=instance, run_config=analysis.run_config([])
        )  # empty: every configured contract
        assert again.success
        md = _metadata(again, "trend_starts_1h")
        assert (md["bars_processed"], md["new_signals"]) == (0, 0)
        assert _metadata(again, "coordinated_signals")["new_outputs"] == 0


def test_definitions_load(monkeypatch):
    from dagster import Definitions

    monkeypatch.setenv("DATABASE_URL", "postgresql://user@localhost/projectx")
    from projectx_pipeline.definitions import defs

    loaded = defs()
    Definitions.validate_loadable(loaded)
    job = loaded.resolve_job_def("analysis_job")
    assert set(job.graph.node_names()) == {"trend_starts_5m", "trend_starts_15m", "trend_starts_1h", "trend_starts_4h", "coordinated_signals"}


def test_analysis_job_runs_with_the_sensors_run_config(db_url, conn, samples, monkeypatch):
    """The job as the new-bar sensor launches it: the definitions' resources, run config for one contract."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    from projectx_pipeline.definitions import defs
    from projectx_pipeline.orchestration.analysis_assets import build_analysis_assets
    from projectx_pipeline.settings import load_settings

    _load(conn, samples[TF1H].iloc[:400])
    _load(conn, samples[TF4H])
    job = defs().resolve_job_def("analysis_job")
    analysis_run_config = build_analysis_assets(load_settings()).run_config
    result = job.execute_in_process(run_config=analysis_run_config([MES]))
    assert result.success
    assert _metadata(result, "trend_starts_1h")["new_signals"] == len(detect_trend_starts_frame(samples[TF1H].iloc[:400]))
    assert _metadata(result, "trend_starts_15m")["bars_processed"] == 0
    _assert_stored_equals_full(conn, TF1H, samples[TF1H].iloc[:400])
    _load(conn, samples[TF1H].iloc[400:])
    second = job.execute_in_process(run_config=analysis_run_config([MES]))
    assert _metadata(second, "trend_starts_1h")["bars_processed"] == len(samples[TF1H]) - 400
    _assert_stored_equals_full(conn, TF1H, samples[TF1H])
