"""`make bench`: the platform's benchmarks (never part of the tests).

Every case times "ours" next to a baseline in the same process and the same minutes, checks
that both produce the same result before timing them, and reports medians over repeated runs
(wall time and CPU time). This module holds what the cases share: the timing loop, the
database server, synthetic data, RSS and a sampling profiler for multi-threaded paths.
"""

from __future__ import annotations

import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
MES = "CON.F.US.MES.M25"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- run context


@dataclass
class Context:
    """What a case gets from the runner: the mode, the database server, where to write."""

    quick: bool = False
    profile: bool = False
    results_dir: Path = RESULTS_DIR
    _db: Any = None
    log_lines: list[str] = field(default_factory=list)
    _databases: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        self.log_lines.append(line)
        print(line, file=sys.stderr, flush=True)

    @property
    def db(self):
        """The TestDatabaseServer of this run (started on first use, as `make test` does)."""
        if self._db is None:
            from projectx_pipeline.storage.testing import TestDatabaseServer

            self.log("starting the test database server (TestDatabaseServer)")
            self._db = TestDatabaseServer().start()
        return self._db

    def create_database(self, prefix: str) -> str:
        """A fresh migrated database on the run's server; dropped at the latest by `close()`."""
        url = self.db.create_database(prefix)
        self._databases.append(url)
        return url

    def drop_database(self, url: str) -> None:
        self.db.drop_database(url)
        if url in self._databases:
            self._databases.remove(url)

    def close(self) -> None:
        if self._db is not None:
            for url in list(self._databases):  # what a failed case left (matters on an external server)
                try:
                    self.drop_database(url)
                except Exception:  # noqa: BLE001 — best effort: the server may be gone
                    pass
            self._db.stop()
            self._db = None


# --------------------------------------------------------------------------- timing


@dataclass
class Sample:
    wall: float  # seconds, perf_counter
    cpu: float  # seconds of this process (all threads), process_time
    server_cpu: float | None = None  # seconds of the PostgreSQL backends given to `timed`


def backend_cpu_seconds(pids) -> float:
    """utime + stime of the given (PostgreSQL backend) processes, from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLK_TCK


def timed(fn: Callable[[], Any], backend_pids=()) -> tuple[Any, Sample]:
    server0 = backend_cpu_seconds(backend_pids) if backend_pids else None
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    t1, c1 = time.perf_counter(), time.process_time()
    server = backend_cpu_seconds(backend_pids) - server0 if backend_pids else None
    return result, Sample(t1 - t0, c1 - c0, server)


@dataclass
class Stats:
    samples: list[Sample]

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)

    @property
    def server_cpu(self) -> float | None:
        values = [s.server_cpu for s in self.samples if s.server_cpu is not None]
        return statistics.median(values) if values else None

    def as_dict(self) -> dict:
        out = {
            "repeats": len(self.samples),
            "wall_median_s": self.wall,
            "cpu_median_s": self.cpu,
            "wall_s": [round(s.wall, 6) for s in self.samples],
            "cpu_s": [round(s.cpu, 6) for s in self.samples],
        }
        if self.server_cpu is not None:
            out["server_cpu_median_s"] = self.server_cpu
            out["server_cpu_s"] = [round(s.server_cpu, 6) for s in self.samples if s.server_cpu is not None]
        return out


def compare(
    methods: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    setup: Callable[[str], None] | None = None,
    backend_pids: dict[str, list[int]] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Time every method `repeats` times, interleaved (the order rotates each round), so ours and
    the baselines share the machine's conditions. `setup(name)` runs untimed before each call."""
    names = list(methods)
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if setup is not None:
                setup(name)
            gc.collect()
            _, s = timed(methods[name], (backend_pids or {}).get(name, ()))
            samples[name].append(s)
            if log is not None:
                log(
                    f"  round {r + 1}/{repeats} {name}: wall {s.wall:.4f} s, cpu {s.cpu:.4f} s"
                    + (f", server cpu {s.server_cpu:.4f} s" if s.server_cpu is not None else "")
                )
    return {n: Stats(v) for n, v in samples.items()}


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# --------------------------------------------------------------------------- machine facts


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- synthetic data


def sample_trades(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `n` prints of the simulator's replay of the packaged MES 5m sample (realistic
    counts and sizes, `simulator/prints.py`; about 18 M in all), from 2025-03-16 on: int64 ns
    timestamps, float64 prices, int64 sizes."""
    from projectx_pipeline.domain.timestamps import NS_PER_DAY
    from projectx_pipeline.gateway.simulator.replay import ReplaySource, default_replay_path

    src = ReplaySource(default_replay_path(), seed)
    (contract_id,) = src.contracts
    pieces, total, lo = [], 0, src.first_ns
    while total < n:
        if lo >= src.end_ns:
            raise ValueError(f"the sample holds fewer than {n:,} prints ({total:,})")
        hi = lo + 2 * NS_PER_DAY
        tr = src.trades_between(contract_id, lo, hi)
        pieces.append(tr)
        total += len(tr)
        lo = hi
    ts = np.concatenate([p.ts_ns for p in pieces])[:n]
    px = np.concatenate([p.price for p in pieces])[:n]
    sz = np.concatenate([p.size for p in pieces])[:n]
    return ts, px, sz


def synthetic_bars(n: int, seed: int = 1, contract_id: str = MES, start: str = "2020-01-01", timeframe=(2, 1)) -> pd.DataFrame:
    """`n` consecutive 1m bars (a random walk on a 0.25 tick grid) in the canonical layout."""
    rng = np.random.default_rng(seed)
    close = 4000.0 + np.cumsum(rng.integers(-4, 5, n)) * 0.25
    close = np.maximum(close, 100.0)
    open_ = np.concatenate(([close[0]], close[:-1])) + rng.integers(-1, 2, n) * 0.25
    high = np.maximum(open_, close) + rng.integers(0, 5, n) * 0.25
    low = np.minimum(open_, close) - rng.integers(0, 5, n) * 0.25
    step = 60 * 10**9
    ts = pd.Timestamp(start, tz="UTC").value + np.arange(n, dtype=np.int64) * step
    return pd.DataFrame(
        {
            "contract_id": pd.Series(np.full(n, contract_id, dtype=object), dtype=object),
            "timestamp": pd.DatetimeIndex(ts.view("datetime64[ns]"), tz="UTC"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.integers(1, 2000, n).astype(np.int64),
            "timeframe_unit": np.full(n, timeframe[0], dtype=np.int64),
            "timeframe_value": np.full(n, timeframe[1], dtype=np.int64),
        }
    )


# --------------------------------------------------------------------------- profiling


def cprofile_top(fn: Callable[[], Any], limit: int = 15) -> tuple[Any, list[dict], str]:
    """Run `fn` under cProfile; (result, top functions by own time, full text report)."""
    prof = cProfile.Profile()
    prof.enable()
    result = fn()
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values()) or 1e-12  # tottime sum
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{_short(filename)}:{line}({name})", "calls": nc, "own_s": tt, "cum_s": ct, "own_share": tt / total})
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    return result, rows[:limit], buf.getvalue()


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    try:
        return str(Path(filename).resolve().relative_to(REPO))
    except ValueError:
        return filename


# Python frames a thread sits in while it waits (blocked in C: lock, socket, select, sleep).
_IDLE = {
    "wait",
    "get",
    "select",
    "poll",
    "sleep",
    "_wait_for_tstate_lock",
    "join",
    "acquire",
    "_run_once",
    "_poll",
    "readinto",
    "recv_into",
    "accept",
    "run_forever",
    "_worker",
}


class StackSampler(threading.Thread):
    """A small sampling profiler over every thread of the process (py-spy is not installed):
    every `interval` s it records each thread's Python stack. Reports, per thread, the share of
    samples where a function is on top of the stack ("own", including the C calls it makes) and
    anywhere on the stack ("total")."""

    def __init__(self, interval: float = 0.005):
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self._halt = threading.Event()
        self.own: dict[str, Counter] = {}
        self.total: dict[str, Counter] = {}
        self.samples: Counter = Counter()

    def run(self) -> None:
        me = threading.get_ident()
        while not self._halt.is_set():
            threads = threading.enumerate()
            counts = Counter(t.name for t in threads)
            names = {t.ident: t.name if counts[t.name] == 1 else f"{t.name} [{t.ident % 100000}]" for t in threads}
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                tname = names.get(tid, str(tid))
                if tname.startswith("asyncio_") or tname.startswith("ThreadPoolExecutor"):
                    tname = "simulator-executor (all pool threads)"
                self.samples[tname] += 1
                own = self.own.setdefault(tname, Counter())
                tot = self.total.setdefault(tname, Counter())
                key = _frame_key(frame)
                own[key] += 1
                seen = set()
                f = frame
                while f is not None:
                    k = _frame_key(f)
                    if k not in seen:
                        seen.add(k)
                        tot[k] += 1
                    f = f.f_back
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def report(self, top: int = 12) -> dict:
        out = {}
        for tname, n in self.samples.most_common():
            own = self.own[tname]
            idle = sum(c for k, c in own.items() if k.rsplit("(", 1)[-1].rstrip(")") in _IDLE)
            out[tname] = {
                "samples": n,
                "idle_share": idle / n,
                "own": [{"function": k, "share": c / n} for k, c in own.most_common(top)],
                "total": [{"function": k, "share": c / n} for k, c in self.total[tname].most_common(top)],
            }
        return out


def _frame_key(frame) -> str:
    code = frame.f_code
    return f"{_short(code.co_filename)}:{code.co_firstlineno}({code.co_name})"


def format_sampler(report: dict, threads: int = 6, top: int = 10) -> str:
    lines = []
    for tname, r in list(report.items())[:threads]:
        lines.append(f"thread {tname}: {r['samples']} samples, {r['idle_share']:.0%} waiting")
        lines.append("  own (top of stack):")
        lines += [f"    {x['share']:6.1%}  {x['function']}" for x in r["own"][:top]]
        lines.append("  total (on the stack):")
        lines += [f"    {x['share']:6.1%}  {x['function']}" for x in r["total"][:top]]
    return "\n".join(lines)


def write_text(ctx: Context, name: str, text: str) -> Path:
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.results_dir / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- ingestion harness


class StubHub:
    """Stands in for the market hub: the bench puts `Trade` objects on `out` itself (the hub's
    parsed output), so the daemon runs exactly its own code from the events queue on."""

    def __init__(self, out, contracts):
        self.out = out
        self.contracts = contracts
        self.stats = {"state": "connected", "malformed": 0}

    def set_contracts(self, contracts) -> None:
        self.contracts = contracts

    def start(self) -> None:
        from projectx_pipeline.gateway.events import HubEvent

        self.out.put(HubEvent("connected", datetime.now(timezone.utc), "bench"))

    def stop(self) -> None:
        pass

    def reconnect(self, reason: str) -> None:
        pass


class StubGateway:
    """History for the daemon's repairer: nothing (the bench measures the live path)."""

    def __init__(self):
        self.requests = 0

    def retrieve_bars(self, contract_id, timeframe, start, end, **_):
        from projectx_pipeline.domain.market import empty_bars

        self.requests += 1
        return empty_bars()


class DaemonHarness:
    """`IngestDaemon` on a thread, wired like `projectx ingest` (default IngestConfig timings), with
    the hub and the gateway stubbed; trades go in through `daemon.events`."""

    def __init__(self, url: str, contracts: list[str], **config):
        from projectx_pipeline.domain.timeframes import DEFAULT_TIMEFRAMES
        from projectx_pipeline.ingest.daemon import IngestConfig, IngestDaemon

        self.gateway = StubGateway()
        self.daemon = IngestDaemon(IngestConfig(list(contracts), list(DEFAULT_TIMEFRAMES), url, **config), self.gateway, StubHub)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.daemon.run()), name="ingest-main", daemon=True)

    def start(self) -> DaemonHarness:
        self.daemon.start()
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        self.daemon.repairer.join(timeout)
        self.daemon.writer.join(timeout)


def listen(url: str, *channels: str):
    """An autocommit connection LISTENing on `channels`."""
    from projectx_pipeline.storage.db import connect

    conn = connect(url, application_name="bench_listener")
    conn.autocommit = True
    with conn.cursor() as cur:
        for ch in channels:
            cur.execute(f"LISTEN {ch}")
    return conn


def wait_notify(conn, match: Callable[[Any], bool], timeout: float = 10.0):
    """Block until a notification satisfying `match` arrives on `conn`; (perf_counter at receipt, notify)."""
    import select

    deadline = time.perf_counter() + timeout
    while True:
        while conn.notifies:
            n = conn.notifies.pop(0)
            if match(n):
                return time.perf_counter(), n
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"no matching notification within {timeout:.1f} s")
        select.select([conn], [], [], left)
        conn.poll()


# --------------------------------------------------------------------------- database call tracing


class ExplainDone(Exception):
    """Raised by a tracing cursor after it ran EXPLAIN ANALYZE in place of the upsert statement
    (the caller's transaction is rolled back, so nothing of it stays)."""


def _label(sql: str) -> str:
    words = sql.split()
    if not words:
        return "?"
    head = words[0].upper()
    if head in ("COPY", "EXECUTE", "PREPARE", "DEALLOCATE") and len(words) > 1:
        return f"{head} {words[1].split('(')[0]}"
    if head == "CREATE":
        return " ".join(words[:4])
    if head == "INSERT" and len(words) > 2:
        return f"INSERT INTO {words[2]}"
    if head == "WITH":
        return "WITH … INSERT INTO ohlc_bars (upsert)" if "INTO OHLC_BARS" in sql.upper() else "WITH …"
    return " ".join(words[:3])[:60]


def _is_upsert_statement(text: str) -> bool:
    upper = text.lstrip().upper()
    return upper.startswith("EXECUTE PROJECTX_UPSERT") or ("INTO OHLC_BARS" in upper and "ON CONFLICT" in upper)


def tracing_connection(url: str, **kwargs):
    """A psycopg2 connection that times every execute / copy_expert / commit it serves (the
    database's share of a call seen from the client: round trip + server work), so a public
    function such as `upsert_bars` can be cut into its database calls and the Python around them."""
    import psycopg2
    import psycopg2.extensions

    from projectx_pipeline.storage.db import connect

    class TracingCursor(psycopg2.extensions.cursor):
        def execute(self, sql, vars=None):
            conn = self.connection
            text = sql if isinstance(sql, str) else sql.decode()
            if conn.explain and _is_upsert_statement(text):
                super().execute("EXPLAIN (ANALYZE, BUFFERS) " + text, vars)
                conn.plans.append("\n".join(r[0] for r in self.fetchall()))
                raise ExplainDone()
            t0 = time.perf_counter()
            try:
                return super().execute(sql, vars)
            finally:
                conn.events.append((_label(text), time.perf_counter() - t0, t0))

        def copy_expert(self, sql, file, size=8192):
            t0 = time.perf_counter()
            try:
                return super().copy_expert(sql, file, size)
            finally:
                self.connection.events.append((_label(sql), time.perf_counter() - t0, t0))

    class TracingConnection(psycopg2.extensions.connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cursor_factory = TracingCursor
            self.events: list[tuple[str, float, float]] = []  # (call, seconds, perf_counter at start)
            self.plans: list[str] = []
            self.explain = False

        def commit(self):
            t0 = time.perf_counter()
            try:
                return super().commit()
            finally:
                self.events.append(("COMMIT", time.perf_counter() - t0, t0))

    kwargs.setdefault("application_name", "bench_trace")
    return connect(url, connection_factory=TracingConnection, **kwargs)


def trace_call(conn, fn: Callable[[], Any]) -> dict:
    """Run `fn` (which uses `conn`, a tracing connection) and split its wall time into the
    database calls (by statement kind) and the Python in between."""
    conn.events.clear()
    t0 = time.perf_counter()
    fn()
    total = time.perf_counter() - t0
    by_label: dict[str, float] = {}
    for label, seconds, _ in conn.events:
        by_label[label] = by_label.get(label, 0.0) + seconds
    db = sum(by_label.values())
    return {"total_s": total, "python_s": total - db, "database_calls": len(conn.events), **{f"db: {k}": v for k, v in by_label.items()}}


def explain_call(conn, fn: Callable[[], Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the upsert statement `fn` would run, in a rolled-back transaction."""
    conn.plans.clear()
    conn.explain = True
    try:
        fn()
    except ExplainDone:
        pass
    finally:
        conn.explain = False
        if not conn.autocommit:
            conn.rollback()
    return conn.plans[-1] if conn.plans else "(no upsert statement seen)"
