"""The benchmark table (stdout), the same as JSON (`bench/results/latest.json`) and the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass
class Row:
    """One line of the table.

    `ratio` compares ours with the baseline of the row:
    * kind "speed": baseline time / our time (how many times faster ours is; > 1 = faster);
    * kind "latency": our latency / the baseline's (how many times the bare operation takes);
    * kind "share": our figure / the baseline's, for a fraction such as the COPY limit.
    """

    case: str
    metric: str
    ours: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    ratio_kind: str = "speed"
    target: str = ""
    met: bool | None = None
    note: str = ""
    details: dict = field(default_factory=dict)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "trades/s" or unit == "bars/s" or unit.endswith("/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f} M {unit}"
        if value >= 1e3:
            return f"{value / 1e3:.1f} k {unit}"
        return f"{value:.0f} {unit}"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "µs/bar":
        return f"{value:.2f} µs/bar"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:g} {unit}"


def fmt_ratio(row: Row) -> str:
    if row.ratio is None:
        return "—"
    if row.ratio_kind == "latency":
        return f"{row.ratio:.1f}× bare"
    if row.ratio_kind == "share":
        return f"{row.ratio:.2f}×"
    return f"{row.ratio:.2f}×"


def fmt_met(row: Row) -> str:
    return {True: "yes", False: "NO", None: "—"}[row.met]


def table(rows: list[Row]) -> str:
    header = ["metric", "ours", "baseline", "ratio", "target", "met?"]
    body = []
    for r in rows:
        base = fmt_value(r.baseline, r.unit) if r.baseline is not None else "—"
        if r.baseline_name:
            base = f"{base} ({r.baseline_name})"
        body.append([r.metric, fmt_value(r.ours, r.unit) if r.ours is not None else (r.note or "—"), base, fmt_ratio(r), r.target, fmt_met(r)])
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) if body else len(header[i]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def machine_info(db_url: str | None = None) -> dict:
    info: dict = {
        "cpu_model": _cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "virtualised": _virtualised(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": _versions(),
        "git": _git(),
    }
    if db_url:
        info.update(_postgres(db_url))
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _virtualised() -> bool:
    try:
        return " hypervisor " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


def _versions() -> dict:
    out = {}
    for name in ("numpy", "pandas", "numba", "psycopg2", "pandera"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?").split()[0]
        except Exception:  # noqa: BLE001 — a missing package is just not reported
            pass
    return out


def _git() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
        return {"head": head, "uncommitted_changes": dirty}
    except (OSError, subprocess.SubprocessError):
        return {}


def _postgres(db_url: str) -> dict:
    from projectx_pipeline.storage.db import connect

    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0]
            cur.execute("SELECT version()")
            full = cur.fetchone()[0]
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            row = cur.fetchone()
            cur.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', 'fsync', 'synchronous_commit', 'max_wal_size', 'work_mem')"
            )
            settings = dict(cur.fetchall())
        conn.rollback()
    finally:
        conn.close()
    return {
        "postgresql_version": version,
        "postgresql_full": full,
        "timescaledb": row[0] if row else None,
        "postgresql_settings": settings,
        "database": "ephemeral local cluster (TestDatabaseServer)"
        if not os.environ.get("PROJECTX_TEST_DATABASE_URL")
        else "PROJECTX_TEST_DATABASE_URL",
    }


def machine_line(m: dict) -> str:
    ts = f"TimescaleDB {m['timescaledb']}" if m.get("timescaledb") else "no TimescaleDB"
    load = m.get("loadavg_start"), m.get("loadavg_end")
    return (
        f"machine: {m['cpu_model']}, {m['cores_usable']} cores{' (VM)' if m.get('virtualised') else ''}, "
        f"{m['memory_gb']} GB; PostgreSQL {m.get('postgresql_version', '?')}, {ts}; Python {m['python']}; "
        f"load average at start {load[0]}, at end {load[1]}"
    )


def write_json(path: Path, rows: list[Row], machine: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "machine": machine,
        "columns": ["metric", "ours", "baseline", "ratio", "target", "met"],
        "ratio_meaning": Row.__doc__.strip(),
        "rows": [
            {
                **asdict(r),
                "ours_text": fmt_value(r.ours, r.unit) if r.ours is not None else (r.note or None),
                "baseline_text": fmt_value(r.baseline, r.unit) if r.baseline is not None else None,
                "ratio_text": fmt_ratio(r),
            }
            for r in rows
        ],
    }
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.bool_):
            return bool(o)
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)
