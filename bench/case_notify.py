"""Bar close → NOTIFY received by a LISTEN connection.

* ours (the target): `StoreWriter`, the daemon's database thread. The bench calls
  `submit_bars(<the closed 1m bar as a one-row frame>)` and stops the clock when a separate
  LISTEN connection has received the `ohlc_update` notification naming that bar (the writer's
  thread ran `upsert_bars(keep)` + NOTIFY + commit in between). Default daemon settings
  (heartbeats every 5 s run on the same thread, as in production).
* ours, whole daemon: `IngestDaemon` with a stub hub: the bench puts the `Trade` that opens
  the next minute on `daemon.events` and waits for the notification of the 1m bar it closed
  (main loop → aggregator → writer → NOTIFY). Timing starts at the queue put.
* baseline: a bare NOTIFY round trip, `SELECT pg_notify(...)` on an autocommit connection,
  received on the LISTEN connection, with a payload of the same size.

The three are sampled in turn (one of each, repeated), after a warm-up; each notification's
payload is compared with the bar submitted (or the trade sent) before it counts.
"""

from __future__ import annotations

import json
import queue
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from projectx_pipeline.domain.market import Trade
from projectx_pipeline.domain.timestamps import NS_PER_SECOND, from_ns
from projectx_pipeline.ingest.counters import Counters
from projectx_pipeline.ingest.writer import StoreWriter
from projectx_pipeline.storage.bars import OHLC_CHANNEL
from projectx_pipeline.storage.db import connect

from . import MES, Context, DaemonHarness, StackSampler, format_sampler, listen, percentile, synthetic_bars, wait_notify, write_text
from .report import Row

BARE_CHANNEL = "bench_bare"
NS_PER_MINUTE = 60 * NS_PER_SECOND


def _bars_in(payload: str) -> list[dict]:
    return json.loads(payload)


def _find_bar(payload: str, ts_ns: int) -> dict | None:
    for bar in _bars_in(payload):
        if bar["timeframe"] == "1m" and pd.Timestamp(bar["timestamp"]).value == ts_ns:
            return bar
    return None


def make_writer(url: str) -> StoreWriter:
    counters = {MES: Counters()}
    now = datetime.now(timezone.utc)
    w = StoreWriter(
        url,
        [MES],
        counters,
        instance_id="bench-notify",
        outage_buffer_bars=100_000,
        trade_flush_seconds=1.0,
        trade_batch_size=5000,
        heartbeat_seconds=5.0,
        repair_delay_seconds=5.0,
        heartbeat_state=lambda: {MES: {"connection_state": "connected", "last_event_at": now, "last_trade_at": now}},
    )
    w.acquire_locks()
    w.start()
    return w


def one_bar_steps(url: str, frames: list[pd.DataFrame], profile: bool) -> tuple[dict, list | None, str | None, str]:
    """Where a one-bar `upsert_bars(keep)` spends its time, on a tracing connection (each database
    call timed from the client: round trip + server work; the rest is Python): p50 / p99 over
    the frames, run on the bench's thread after the sampling. Plus the statement's plan."""
    from projectx_pipeline.storage.bars import BarStore

    from . import explain_call, trace_call, tracing_connection

    conn = tracing_connection(url)
    store = BarStore(conn)

    def upsert_and_commit(bars: pd.DataFrame):  # as the platform's callers write: storage never commits
        result = store.upsert(bars, mode="keep", source="live")
        conn.commit()
        return result

    runs = [trace_call(conn, lambda f=f: upsert_and_commit(f)) for f in frames]
    # calls made only once per session (stage table, PREPARE) are left out of the per-bar figures
    keys = [
        k
        for k in sorted({k for r in runs for k in r}, key=lambda k: (k != "total_s", k != "python_s", k))
        if sum(k in r for r in runs) >= 0.5 * len(runs)
    ]
    out = {
        k: {"p50_ms": percentile([r.get(k, 0.0) for r in runs], 50) * 1000, "p99_ms": percentile([r.get(k, 0.0) for r in runs], 99) * 1000}
        for k in keys
        if k != "database_calls"
    }
    out["database_calls_per_upsert"] = float(np.median([r["database_calls"] for r in runs]))
    later = frames[-1].copy()
    later["timestamp"] = later["timestamp"] + pd.Timedelta(days=1)
    plan = explain_call(conn, lambda: upsert_and_commit(later))
    top = text_report = None
    if profile:
        from . import cprofile_top

        with conn.cursor() as cur:
            cur.execute("TRUNCATE ohlc_bars")
        conn.commit()
        _, top, text_report = cprofile_top(lambda: [upsert_and_commit(f) for f in frames])
    conn.close()
    return out, top, text_report, plan


def attribute(events: list, windows: list[tuple[float, float]]) -> dict:
    """Per latency sample (t0 = submit/put, t1 = receipt), the writer connection's database calls
    that started inside it, by kind; the rest of the sample is Python, queues and thread wake-ups."""
    events = sorted(events, key=lambda e: e[2])
    starts = np.array([e[2] for e in events])
    per_label: dict[str, list[float]] = {}
    before: dict[str, int] = {}
    rest = []
    for t0, t1 in windows:
        i, j = np.searchsorted(starts, [t0, t1])
        sums: dict[str, float] = {}
        upsert_at = next((e[2] for e in events[i:j] if e[0].startswith(("EXECUTE projectx_upsert", "WITH"))), None)
        for label, seconds, started in events[i:j]:
            sums[label] = sums.get(label, 0.0) + min(seconds, t1 - started)
        for label in {e[0] for e in events[i:j]}:
            first = min(e[2] for e in events[i:j] if e[0] == label)
            if upsert_at is not None and first < upsert_at:
                before[label] = before.get(label, 0) + 1
        for label in set(per_label) | set(sums):
            per_label.setdefault(label, [0.0] * len(rest)).append(sums.get(label, 0.0))
        rest.append((t1 - t0) - sum(sums.values()))
    out = {
        "samples": len(windows),
        "outside database calls (Python, queues, wake-ups)": {"mean_ms": float(np.mean(rest)) * 1000, "p50_ms": percentile(rest, 50) * 1000},
    }
    for label, values in sorted(per_label.items(), key=lambda kv: -sum(kv[1])):
        v = np.asarray(values)
        out[f"db: {label}"] = {
            "mean_ms": float(v.mean()) * 1000,
            "p50_ms": percentile(v, 50) * 1000,
            "in_share_of_samples": float((v > 0).mean()),
            "before_the_upsert_share_of_samples": before.get(label, 0) / max(1, len(windows)),
        }
    return out


def run(ctx: Context) -> list[Row]:
    n = 100 if ctx.quick else 1000
    warmup = 10 if ctx.quick else 20
    url_w = ctx.create_database("bench_notify_writer")
    url_d = ctx.create_database("bench_notify_daemon")

    bars = synthetic_bars(n + warmup, start="2025-01-06 00:00")
    frames = [bars.iloc[i : i + 1].reset_index(drop=True) for i in range(len(bars))]
    sample_bar = json.dumps(
        {
            "contract_id": MES,
            "timeframe": "1m",
            "timestamp": "2025-01-06T00:00:00+00:00",
            "open": 4000.25,
            "high": 4001.5,
            "low": 3999.75,
            "close": 4000.5,
            "volume": 1234,
        }
    )
    bare_payload = "[" + sample_bar + "]"

    # The writers' own connections are tracing ones (each database call timed, ~1 µs of overhead),
    # so every latency sample can be split into the database calls it contained.
    import projectx_pipeline.ingest.writer as writer_module

    from . import tracing_connection

    traced: dict[str, object] = {}

    def traced_connect(url: str, **kwargs):
        conn = tracing_connection(url, **kwargs)
        traced.setdefault(url, conn)
        return conn

    saved_connect = writer_module.connect
    writer_module.connect = traced_connect
    try:
        writer = make_writer(url_w)
        harness = DaemonHarness(url_d, [MES]).start()
    finally:
        writer_module.connect = saved_connect
    listen_w = listen(url_w, OHLC_CHANNEL, BARE_CHANNEL)
    listen_d = listen(url_d, OHLC_CHANNEL)
    sender = connect(url_w, application_name="bench_bare_sender")
    sender.autocommit = True
    base_ns = pd.Timestamp("2025-01-07 00:00", tz="UTC").value  # daemon trades: one per minute, on the minute
    events: queue.Queue = harness.daemon.events
    # When the daemon's main loop hands the closed bars to its writer (instance attribute: only
    # this daemon's writer is wrapped): splits a daemon sample into main loop and writer.
    handed: list[float] = []
    daemon_writer = harness.daemon.writer
    submit = daemon_writer.submit_bars

    def timed_submit(frame, _submit=submit):
        handed.append(time.perf_counter())
        return _submit(frame)

    daemon_writer.submit_bars = timed_submit
    # --profile: cProfile the daemon's main-loop work (`_process`, on its own thread) over the samples
    loop_profile = None
    if ctx.profile:
        import cProfile

        loop_profile = cProfile.Profile()
        process = harness.daemon._process

        def profiled_process(items, _process=process):
            loop_profile.enable()
            try:
                return _process(items)
            finally:
                loop_profile.disable()

        harness.daemon._process = profiled_process
    sampler = StackSampler(0.002) if ctx.profile else None

    lat = {"writer": [], "daemon": [], "bare": []}
    windows = {"writer": [], "daemon": []}
    mismatches = []
    try:
        # the daemon's first trade opens the first bar; each later one closes the bar before it
        events.put(Trade(MES, from_ns(base_ns), 5000.0, 1, 0))
        time.sleep(0.2)
        if sampler is not None:
            sampler.start()
        ctx.log(f"notify: {n} samples of each after {warmup} warm-up samples")
        for i in range(n + warmup):
            keep = i >= warmup
            # -- ours: StoreWriter
            frame = frames[i]
            ts_ns = int(frame["timestamp"].array.asi8[0])
            t0 = time.perf_counter()
            writer.submit_bars(frame)
            t1, note = wait_notify(listen_w, lambda m: m.channel == OHLC_CHANNEL and _find_bar(m.payload, ts_ns) is not None)
            got = _find_bar(note.payload, ts_ns)
            want = frame.iloc[0]
            if [got[k] for k in ("open", "high", "low", "close", "volume")] != [want.open, want.high, want.low, want.close, want.volume]:
                mismatches.append(("writer", i, got))
            if keep:
                lat["writer"].append(t1 - t0)
                windows["writer"].append((t0, t1))
            # -- baseline: bare NOTIFY
            payload = bare_payload.replace("1234", str(100000 + i))
            t0 = time.perf_counter()
            with sender.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, %s)", (BARE_CHANNEL, payload))
            t1, note = wait_notify(listen_w, lambda m: m.channel == BARE_CHANNEL and m.payload == payload)
            if keep:
                lat["bare"].append(t1 - t0)
            # -- ours: the whole daemon, trade → NOTIFY
            closed_ns = base_ns + i * NS_PER_MINUTE
            price = 5000.0 + (i % 40) * 0.25
            t0 = time.perf_counter()
            events.put(Trade(MES, from_ns(closed_ns + NS_PER_MINUTE), price, 2, 0))
            t1, note = wait_notify(listen_d, lambda m: _find_bar(m.payload, closed_ns) is not None)
            got = _find_bar(note.payload, closed_ns)
            prev_price = 5000.0 + ((i - 1) % 40) * 0.25 if i > 0 else 5000.0
            want_v = 1 if i == 0 else 2
            if [got[k] for k in ("open", "high", "low", "close", "volume")] != [prev_price] * 4 + [want_v]:
                mismatches.append(("daemon", i, got))
            if keep:
                lat["daemon"].append(t1 - t0)
                windows["daemon"].append((t0, t1))
            time.sleep(0.002)  # let the writer's loop go back to waiting, as between real bar closes
    finally:
        if sampler is not None:
            sampler.stop()
        writer.stop(timeout=10)
        harness.stop()
        for c in (listen_w, listen_d, sender):
            c.close()
    if mismatches:
        raise AssertionError(f"notification payloads differ from the bars sent: {mismatches[:3]}")

    ms = {k: np.asarray(v) * 1000 for k, v in lat.items()}
    summary = {
        k: {
            "p50_ms": percentile(v, 50),
            "p90_ms": percentile(v, 90),
            "p99_ms": percentile(v, 99),
            "max_ms": float(v.max()),
            "mean_ms": float(v.mean()),
            "samples": int(v.size),
        }
        for k, v in ms.items()
    }
    main_loop = []
    h = np.asarray(handed)
    for t0, t1 in windows["daemon"]:
        k = int(np.searchsorted(h, t0))
        if k < h.size and h[k] <= t1:
            main_loop.append(h[k] - t0)
    details_main = (
        {
            "p50_ms": percentile(main_loop, 50) * 1000,
            "mean_ms": float(np.mean(main_loop)) * 1000,
            "p99_ms": percentile(main_loop, 99) * 1000,
            "samples": len(main_loop),
        }
        if main_loop
        else {}
    )
    details = {
        "latency_ms": summary,
        "warmup": warmup,
        "daemon_main_loop_ms (trade put → closed bars handed to the writer)": details_main,
        "inside_each_sample_ms": {
            kind: attribute(traced[url].events, windows[kind]) for kind, url in (("writer", url_w), ("daemon", url_d)) if url in traced
        },
        "equality": "each notification carried exactly the bar submitted (writer) / the bar the trade closed (daemon); bare payloads echoed exactly",
        "counters_daemon": harness.daemon.counters[MES].as_dict(),
    }
    if loop_profile is not None:
        import io as _io
        import pstats

        buf = _io.StringIO()
        st = pstats.Stats(loop_profile, stream=buf)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(25)
        write_text(ctx, "profile_notify_daemon_main_loop.txt", buf.getvalue())
    if sampler is not None:
        report = sampler.report()
        details["profile_threads"] = {k: {"samples": v["samples"], "idle_share": v["idle_share"], "own": v["own"][:8]} for k, v in report.items()}
        write_text(ctx, "profile_notify.txt", format_sampler(report, threads=8, top=15))
    ctx.log("notify: one-bar upsert step by step")
    later = synthetic_bars(len(frames), start="2026-01-05 00:00")
    steps, top, text, plan = one_bar_steps(url_w, [later.iloc[i : i + 1].reset_index(drop=True) for i in range(len(later))], ctx.profile)
    details["one_bar_upsert_steps_ms"] = steps
    write_text(ctx, "notify_one_bar_plan.txt", plan)
    if top is not None:
        details["profile_top_one_bar_upsert"] = top
        write_text(ctx, "profile_notify_upsert.txt", text)
    ctx.drop_database(url_w)
    ctx.drop_database(url_d)

    s, b = summary, summary["bare"]
    return [
        Row(
            "notify",
            "bar close → NOTIFY, StoreWriter path, p50",
            s["writer"]["p50_ms"],
            "ms",
            baseline=b["p50_ms"],
            baseline_name="bare NOTIFY",
            ratio=s["writer"]["p50_ms"] / b["p50_ms"],
            ratio_kind="latency",
            target="p50 ≤ 3 ms",
            met=s["writer"]["p50_ms"] <= 3.0,
            details=details,
        ),
        Row(
            "notify",
            "bar close → NOTIFY, StoreWriter path, p99",
            s["writer"]["p99_ms"],
            "ms",
            baseline=b["p99_ms"],
            baseline_name="bare NOTIFY",
            ratio=s["writer"]["p99_ms"] / b["p99_ms"],
            ratio_kind="latency",
            target="p99 ≤ 10 ms",
            met=s["writer"]["p99_ms"] <= 10.0,
        ),
        Row(
            "notify",
            "trade closing a bar → NOTIFY, whole daemon, p50",
            s["daemon"]["p50_ms"],
            "ms",
            baseline=b["p50_ms"],
            baseline_name="bare NOTIFY",
            ratio=s["daemon"]["p50_ms"] / b["p50_ms"],
            ratio_kind="latency",
            target="p50 ≤ 3 ms",
            met=s["daemon"]["p50_ms"] <= 3.0,
        ),
        Row(
            "notify",
            "trade closing a bar → NOTIFY, whole daemon, p99",
            s["daemon"]["p99_ms"],
            "ms",
            baseline=b["p99_ms"],
            baseline_name="bare NOTIFY",
            ratio=s["daemon"]["p99_ms"] / b["p99_ms"],
            ratio_kind="latency",
            target="p99 ≤ 10 ms",
            met=s["daemon"]["p99_ms"] <= 10.0,
        ),
    ]
