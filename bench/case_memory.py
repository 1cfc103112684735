"""Daemon memory: 20 contracts, 10,000,000 trades through the ingestion path; RSS over the run.

What runs (in a fresh child process, so nothing else of the bench is in its memory): the real
`IngestDaemon` (default `IngestConfig`: 6 timeframes, writer, repairer; every trade is also
stored in `trades` and announced on tick_data_channel, as in production) with a stub hub and a
stub history gateway. The child's main thread plays the hub: it builds `Trade` objects (aware
datetime, price on the tick grid, size, side) for 20 contracts in time order — each contract
trades every 100 ms of feed time — and puts them on `daemon.events`, holding back while more
than 20,000 events wait or the writer has more than 20 trade batches queued (a feed arriving as fast
as the daemon can take it; without that the bench's own queue would be what grows). A sampler
thread reads VmRSS every 0.25 s. At the end the bench waits until the writer has stored
everything, then stops the daemon and checks the counts (trades stored == trades sent, no drops).

Reported: peak RSS, RSS before the first trade, and the growth after the warm-up (the first
20% of the trades): "flat" means that growth is ≤ 10 MB. To tell live memory from memory the
allocator merely holds, every sample also records Python's allocated blocks
(`sys.getallocatedblocks()`), and at the end RSS is read again after glibc's `malloc_trim(0)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from . import REPO, Context, rss_mb
from .report import Row

ROOTS = ["MES", "ES", "MNQ", "NQ", "M2K", "RTY", "MYM", "YM", "MCL", "CL", "MGC", "GC"]
CONTRACTS = [f"CON.F.US.{r}.{m}25" for m in ("M", "U") for r in ROOTS][:20]
TICKS = {
    "MES": 0.25,
    "ES": 0.25,
    "MNQ": 0.25,
    "NQ": 0.25,
    "M2K": 0.1,
    "RTY": 0.1,
    "MYM": 1.0,
    "YM": 1.0,
    "MCL": 0.01,
    "CL": 0.01,
    "MGC": 0.1,
    "GC": 0.1,
}
TARGET_MB = 200.0
FLAT_MB = 10.0
MAX_EVENTS_WAITING = 20_000
MAX_WRITER_BATCHES = 20  # TradeBatches (one per contract per drain); the writer drops past 100,000 buffered trades


def run(ctx: Context) -> list[Row]:
    n = 400_000 if ctx.quick else 10_000_000
    url = ctx.create_database("bench_memory")
    ctx.log(f"memory: child process, {len(CONTRACTS)} contracts, {n:,} trades")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if ctx.profile:
        env["BENCH_PROFILE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.case_memory", "--child", url, str(n)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ctx.drop_database(url)
    for line in proc.stderr.strip().splitlines()[-5:]:
        ctx.log(f"  child: {line}")

    samples = np.asarray(result["samples"], dtype=np.float64)  # [elapsed, trades, rss MB, Python allocated blocks]
    peak = float(samples[:, 2].max())
    warm = samples[samples[:, 1] >= 0.2 * n]
    growth = float(warm[-1, 2] - warm[0, 2]) if len(warm) > 1 else 0.0
    slope = float(np.polyfit(warm[:, 1] / 1e6, warm[:, 2], 1)[0]) if len(warm) > 2 else 0.0
    flat = growth <= FLAT_MB
    lost = result["trades"] - result["stored_trades"]
    note = f"; {lost:,} trades not stored (writer buffer overflow)" if lost else ""
    # In the full run RSS keeps settling for the first few million trades (see docs/benchmarks.md):
    # a quick run is all warm-up, so it reports the growth but does not judge flatness.
    judged = None if ctx.quick else (flat and not lost)
    if "profile_threads" in result:
        from . import format_sampler, write_text

        write_text(ctx, "profile_memory.txt", format_sampler(result["profile_threads"], threads=6, top=15))
        result["profile_threads"] = {
            k: {"samples": v["samples"], "idle_share": v["idle_share"], "own": v["own"][:10]} for k, v in result["profile_threads"].items()
        }
    blocks = (int(warm[0, 3]), int(warm[-1, 3])) if len(warm) > 1 else None
    details = {
        **{k: v for k, v in result.items() if k != "samples"},
        "peak_rss_mb": peak,
        "rss_growth_after_warmup_mb": growth,
        "rss_slope_mb_per_million_trades": slope,
        "python_allocated_blocks_after_warmup_and_at_end": blocks,
        "peak_sample": max(result["samples"], key=lambda x: x[2]),
        "samples_every_s": 0.25,
        "samples": result["samples"][:: max(1, len(result["samples"]) // 400)],
    }
    return [
        Row(
            "memory",
            f"daemon memory: {len(CONTRACTS)} contracts, {n / 1e6:g} M trades, peak RSS",
            peak,
            "MB",
            target="≤ 200 MB",
            met=peak <= TARGET_MB,
            details=details,
        ),
        Row(
            "memory",
            f"daemon memory: RSS growth after warm-up (first 20%), {result['trades_per_s']:.0f} trades/s sustained",
            growth,
            "MB",
            target="flat (≤ 10 MB)" if not ctx.quick else "flat (judged in full mode only)",
            met=judged,
            note=note,
        ),
        Row(
            "memory",
            f"  (context) RSS at the end {result['rss_end_mb']:.0f} MB; after glibc malloc_trim(0)",
            result["rss_after_malloc_trim_mb"],
            "MB",
        ),
    ]


# --------------------------------------------------------------------------- the child


def _child(url: str, n: int) -> dict:
    from projectx_pipeline.domain.market import Trade
    from projectx_pipeline.domain.timestamps import from_ns

    from . import DaemonHarness, StackSampler

    rss = []
    progress = {"trades": 0}
    stop = threading.Event()
    t_start = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            rss.append((round(time.monotonic() - t_start, 3), progress["trades"], round(rss_mb(), 2), sys.getallocatedblocks()))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    profiler = StackSampler(0.01) if os.environ.get("BENCH_PROFILE") else None
    harness = DaemonHarness(url, CONTRACTS).start()
    daemon = harness.daemon
    events, inbox = daemon.events, daemon.writer.inbox
    rss_before = rss_mb()
    sampler.start()
    if profiler is not None:
        profiler.start()

    rng = np.random.default_rng(5)
    base_ns = 1_736_121_600 * 10**9  # Monday 2025-01-06 00:00 UTC (Sunday 19:00 New York: in session)
    step_ns = 100_000_000  # each contract trades every 100 ms of feed time
    k = len(CONTRACTS)
    ticks = [TICKS[c.split(".")[3]] for c in CONTRACTS]
    levels = [4000.0 / t for t in ticks]  # price in ticks
    chunk = 2_000  # trades generated per round (then the queue is checked)
    sent = 0
    waits = 0
    t0 = time.monotonic()
    put = events.put_nowait  # as the hub does, one event at a time
    while sent < n:
        m = min(chunk, n - sent)
        moves = rng.integers(-1, 2, m).tolist()
        sizes = (1 + rng.integers(0, 3, m)).tolist()
        for j in range(m):
            i = sent + j
            c = i % k
            mv = moves[j]
            lv = levels[c] = levels[c] + mv
            put(Trade(CONTRACTS[c], from_ns(base_ns + (i // k) * step_ns + c * 1_000_000), round(lv * ticks[c], 10), sizes[j], 0 if mv >= 0 else 1))
        sent += m
        progress["trades"] = sent
        while events.qsize() > MAX_EVENTS_WAITING or inbox.qsize() > MAX_WRITER_BATCHES:
            waits += 1
            time.sleep(0.001)
    feed_seconds = time.monotonic() - t0
    # wait until the daemon has taken every event and the writer has stored every trade
    deadline = time.monotonic() + 300
    counters = daemon.counters
    while time.monotonic() < deadline:
        if events.empty() and inbox.empty() and sum(c.trades for c in counters.values()) >= n and not daemon.writer.pending.trades:
            break
        time.sleep(0.05)
    drain_seconds = time.monotonic() - t0 - feed_seconds
    stop.set()
    sampler.join()
    profile = None
    if profiler is not None:
        profiler.stop()
        profile = profiler.report(top=15)
    rss.append((round(time.monotonic() - t_start, 3), sent, round(rss_mb(), 2), sys.getallocatedblocks()))
    # How much of the RSS is memory the allocator holds but nothing uses: glibc gives it back on
    # malloc_trim. (Python's own objects are counted by sys.getallocatedblocks in every sample.)
    rss_end = rss_mb()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        rss_trimmed = rss_mb()
    except OSError:
        rss_trimmed = None
    harness.stop()

    from projectx_pipeline.storage.db import connect

    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trades")
        stored_trades = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM ohlc_bars")
        stored_bars = cur.fetchone()[0]
    conn.close()
    totals = {
        key: sum(getattr(c, key) for c in counters.values())
        for key in ("trades", "bars_written", "trades_dropped", "bars_dropped", "late_trades", "partial_bars", "db_errors")
    }
    return {
        "contracts": len(CONTRACTS),
        "trades": n,
        "rss_before_trades_mb": rss_before,
        "samples": rss,
        "feed_seconds": round(feed_seconds, 2),
        "drain_seconds": round(drain_seconds, 2),
        "trades_per_s": n / (feed_seconds + drain_seconds),
        "producer_waits": waits,
        "stored_trades": stored_trades,
        "stored_bars": stored_bars,
        "counters": totals,
        "rss_end_mb": rss_end,
        "rss_after_malloc_trim_mb": rss_trimmed,
        "feed_time_span_h": round(n / k * step_ns / 3.6e12, 2),
        **({"profile_threads": profile} if profile is not None else {}),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
        print(json.dumps(_child(sys.argv[2], int(sys.argv[3]))))
    else:
        sys.exit("usage: python -m bench.case_memory --child DATABASE_URL TRADES (run by `python -m bench`)")
