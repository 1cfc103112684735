"""Backfill: one year of 1m bars for one contract from the simulator, stored and validated.

* ours (the figure judged): one `client.retrieve_bars(MES, 1m, first session open, last session
  close)` over the year (the client pages it in 20,000-bar requests), `upsert_bars(replace,
  history)` of the result, `validate_bars(bars, tick 0.25)`; rate limits off on both sides.
* ours, per trade date (reported too): `backfill_trade_date(client, conn, MES, d, [1m])` for every
  trade date of the year, then the stored year read back and validated.
* baseline: raw COPY of the same rows into an empty ohlc_bars (text from `to_csv`).

The simulator runs in synthetic mode (`SimulatorServer(synthetic=[MES], rate_limits=False,
start_time=2026-01-05)`). Its synthetic history is bounded by the module constant
`simulator.synthetic.SYNTHETIC_HISTORY_DAYS` (60 days before the clock start), read when the
source is built; the bench raises it to 400 days for its own simulator instance, which gives
the whole year (no package change). Synthetic trades exist Sunday 18:00 – Friday 17:00 New York,
so the year is the 260 trade dates Monday 2025-01-06 … Friday 2026-01-02 (no holidays).

The simulator serves from the same process (its own threads), so its work — generating
~9 M synthetic trades and aggregating them, JSON encoding — is inside the figure, as it would
be with any gateway. The case also times that work alone (`market.history_bars` for the year,
in-process) so the share that is ours is visible. Quick mode does one month (20 trade dates).
"""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd

from projectx_pipeline.backfill import backfill_trade_date
from projectx_pipeline.domain.quality import validate_bars
from projectx_pipeline.domain.sessions import trade_date_session
from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.domain.timestamps import to_ns
from projectx_pipeline.gateway.client import GatewayClient
from projectx_pipeline.gateway.config import GatewayConfig
from projectx_pipeline.gateway.simulator import market, synthetic
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.storage.bars import BarStore, read_bars
from projectx_pipeline.storage.db import connect

from . import MES, Context, StackSampler, Stats, compare, format_sampler, timed, write_text
from .report import Row

TF = parse_timeframe("1m")
TICK = 0.25
CLOCK_START = datetime(2026, 1, 5, tzinfo=timezone.utc)  # a Monday 00:00 UTC: the year before it is complete
TARGET_S = 10.0
COLS_SQL = 'contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source'
COLUMNS = ["contract_id", "timeframe_unit", "timeframe_value", "timestamp", "open", "high", "low", "close", "volume"]


def trade_dates(first: date, last: date) -> list[date]:
    out, d = [], first
    while d <= last:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def copy_rows(conn, df: pd.DataFrame) -> None:
    buf = io.StringIO()
    df.loc[:, COLUMNS].assign(source="history").to_csv(buf, sep="\t", header=False, index=False)
    buf.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY ohlc_bars ({COLS_SQL}) FROM STDIN", buf)
    conn.commit()


def stored(conn) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(
            'SELECT contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source '
            'FROM ohlc_bars ORDER BY contract_id, timeframe_unit, timeframe_value, "timestamp"'
        )
        rows = cur.fetchall()
    conn.rollback()
    return pd.DataFrame(rows, columns=COLUMNS + ["source"])


def run(ctx: Context) -> list[Row]:
    first = date(2025, 1, 6)
    last = date(2025, 1, 31) if ctx.quick else date(2026, 1, 2)
    repeats = 2
    dates = trade_dates(first, last)
    check_dates = dates[:10] if ctx.quick else dates[:20]
    # 260 requests of one trade date each: timed over a quarter in full mode, judged × 4
    per_date_dates = dates if ctx.quick else dates[:65]
    start, end = trade_date_session(first)[0], trade_date_session(last)[1]
    span = f"{len(dates)} trade dates {first}…{last}"

    saved = synthetic.SYNTHETIC_HISTORY_DAYS
    synthetic.SYNTHETIC_HISTORY_DAYS = 400
    try:
        sim = SimulatorServer(synthetic=[MES], rate_limits=False, start_time=CLOCK_START).start()
    finally:
        synthetic.SYNTHETIC_HISTORY_DAYS = saved
    client = GatewayClient(GatewayConfig(sim.api_url, sim.rtc_url, "bench", "bench", True), rate_limits=False)
    url = ctx.create_database("bench_backfill")
    conn = connect(url)
    store = BarStore(conn)
    phases: list[dict] = []

    def truncate() -> None:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE ohlc_bars, bar_revisions")
        conn.commit()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("CHECKPOINT")
        except Exception:  # noqa: BLE001
            pass
        finally:
            conn.autocommit = False

    def ours_one_call() -> pd.DataFrame:
        t = {}
        bars, s = timed(lambda: client.retrieve_bars(MES, TF, start, end))
        t["retrieve_bars (simulator + client)"] = s.wall
        result, s = timed(lambda: (store.upsert(bars, mode="replace", source="history"), conn.commit())[0])
        t["upsert_bars(replace)"] = s.wall
        problems, s = timed(lambda: validate_bars(bars, TICK))
        t["validate_bars"] = s.wall
        if not problems.empty:
            raise AssertionError(f"validate_bars found {len(problems)} problems: {problems.head(3).to_dict('records')}")
        if result.inserted != len(bars):
            raise AssertionError(f"upsert inserted {result.inserted} of {len(bars)} bars")
        phases.append(t)
        return bars

    def ours_per_date(days=dates) -> int:
        rows = 0
        for d in days:
            rows += backfill_trade_date(client, conn, MES, d, [TF]).rows[TF.label]
        back = read_bars(conn, MES, TF, trade_date_session(days[0])[0], trade_date_session(days[-1])[1])
        problems = validate_bars(back, TICK)
        if not problems.empty:
            raise AssertionError(f"validate_bars found {len(problems)} problems")
        return rows

    try:
        ctx.log(f"backfill: {span}; checking ours == COPY of the same rows")
        truncate()
        bars = ours_one_call()
        table_ours = stored(conn)
        truncate()
        copy_rows(conn, bars)
        table_copy = stored(conn)
        pd.testing.assert_frame_equal(table_ours, table_copy, check_exact=True, obj="one-call backfill vs COPY")
        truncate()
        ours_per_date(check_dates)
        last_check = pd.Timestamp(trade_date_session(check_dates[-1])[1])
        pd.testing.assert_frame_equal(
            stored(conn),
            table_copy[table_copy["timestamp"] < last_check].reset_index(drop=True),
            check_exact=True,
            obj=f"per-date backfill of {len(check_dates)} dates vs COPY",
        )
        phases.clear()

        ctx.log(f"backfill: timing one-call backfill and COPY, {repeats} interleaved repeats ({len(bars):,} bars)")
        stats = compare({"ours": ours_one_call, "copy": lambda: copy_rows(conn, bars)}, repeats, setup=lambda _: truncate(), log=ctx.log)
        ctx.log(f"backfill: timing the per-trade-date backfill once ({len(per_date_dates)} dates)")
        truncate()
        _, per_date = timed(lambda: ours_per_date(per_date_dates))
        ctx.log(f"  per date: wall {per_date.wall:.2f} s, cpu {per_date.cpu:.2f} s")
        last_pd = pd.Timestamp(trade_date_session(per_date_dates[-1])[1])
        pd.testing.assert_frame_equal(
            stored(conn), table_copy[table_copy["timestamp"] < last_pd].reset_index(drop=True), check_exact=True, obj="per-date backfill vs COPY"
        )
        per_date_stats = Stats([per_date])

        # The simulator's own work for the span, in-process (no HTTP, no client): the floor it imposes.
        ctx.log("backfill: timing the simulator's synthetic history alone (market.history_bars)")
        sim_only = compare(
            {"simulator": lambda: market.history_bars(sim._source, MES, TF, to_ns(start), to_ns(end), to_ns(CLOCK_START))}, 1, log=ctx.log
        )["simulator"]
        profile = None
        if ctx.profile:
            truncate()
            sampler = StackSampler(0.005)
            sampler.start()
            ours_one_call()
            sampler.stop()
            profile = sampler.report()
            write_text(ctx, "profile_backfill.txt", format_sampler(profile, threads=6, top=15))
    finally:
        client.close()
        sim.stop()
        conn.close()
        ctx.drop_database(url)

    phase_median = {k: float(np.median([p[k] for p in phases])) for k in phases[0]} if phases else {}
    details = {
        "span": span,
        "bars": len(bars),
        "requests_per_retrieve": int(np.ceil(len(bars) / 20_000)),
        "ours_one_call": stats["ours"].as_dict(),
        "copy": stats["copy"].as_dict(),
        "ours_per_trade_date": per_date_stats.as_dict(),
        "phases_median_s": phase_median,
        "simulator_history_alone": sim_only.as_dict(),
        "synthetic_history_days": "raised from 60 to 400 for the bench's simulator (module constant)",
        "equality": "ohlc_bars after the one-call backfill identical to a COPY of the retrieved rows (before timing); "
        f"per-date backfill identical on its first {len(check_dates)} dates before timing and on all the dates it "
        "was timed on after its run; validate_bars found no problem",
    }
    if profile is not None:
        details["profile_threads"] = {k: {"samples": v["samples"], "idle_share": v["idle_share"], "own": v["own"][:10]} for k, v in profile.items()}
    factor = 260 / len(dates)  # a year of synthetic trade dates
    scale = "" if len(dates) >= 250 else f" (quick; × {factor:.0f} = {stats['ours'].wall * factor:.0f} s a year)"
    o, c = stats["ours"].wall, stats["copy"].wall
    pd_factor = 260 / len(per_date_dates)
    pd_scale = f" ({len(per_date_dates)} dates timed; × {pd_factor:.0f} = {per_date.wall * pd_factor:.0f} s a year)"
    share = len(per_date_dates) / len(dates)
    details["judged_seconds_for_a_year"] = {"one_call": o * factor, "per_trade_date": per_date.wall * pd_factor}
    details["per_trade_date_dates_timed"] = len(per_date_dates)
    return [
        Row(
            "backfill",
            f"backfill 1m, {len(dates)} trade dates ({len(bars) // 1000}k bars): one retrieve_bars + upsert + validate{scale}",
            o,
            "s",
            baseline=c,
            baseline_name="raw COPY",
            ratio=c / o,
            ratio_kind="share",
            target="≤ 10 s",
            met=o * factor <= TARGET_S,
            details=details,
        ),
        # the COPY baseline was timed on the whole span: prorated to the dates timed here
        Row(
            "backfill",
            f"backfill, backfill_trade_date per date{pd_scale}",
            per_date.wall,
            "s",
            baseline=c * share,
            baseline_name="raw COPY, prorated",
            ratio=c * share / per_date.wall,
            ratio_kind="share",
            target="≤ 10 s",
            met=per_date.wall * pd_factor <= TARGET_S,
        ),
        Row(
            "backfill",
            "  (context) simulator's synthetic history alone, same span"
            + ("" if not scale else f" (quick; × {factor:.0f} = {sim_only.wall * factor:.0f} s a year)"),
            sim_only.wall,
            "s",
        ),
    ]
