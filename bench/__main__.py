"""python -m bench [--quick] [--only CASE[,CASE...]] [--profile]

Runs the benchmark cases against a real PostgreSQL (started like `make test` does, or
PROJECTX_TEST_DATABASE_URL) and the gateway simulator, prints one table and writes it as JSON
to bench/results/latest.json together with the machine it ran on."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import time
import traceback
from pathlib import Path

from . import RESULTS_DIR, Context, loadavg
from .report import Row, machine_info, machine_line, table, write_json

CASES = ["aggregation", "upsert", "notify", "backfill", "trend", "memory", "sensor"]


def _sensor_row(ctx: Context) -> list[Row]:
    """Measured by the integrator's Dagster end-to-end test, which writes sensor_latency.json."""
    import json

    path = ctx.results_dir / "sensor_latency.json"
    if not path.is_file():
        return [
            Row(
                "sensor",
                "new bar → signal row through the Dagster sensor",
                None,
                "s",
                target="≤ 30 s",
                note="not measured (see docs)",
                details={"source": str(path), "present": False},
            )
        ]
    data = json.loads(path.read_text())
    value = None
    for key in ("p50_s", "median_s", "latency_s", "seconds", "value"):
        if isinstance(data.get(key), (int, float)):
            value = float(data[key])
            break
    worst = next((float(data[k]) for k in ("max_s", "p99_s", "worst_s") if isinstance(data.get(k), (int, float))), None)
    judged = worst if worst is not None else value
    return [
        Row(
            "sensor",
            "new bar → signal row through the Dagster sensor",
            value,
            "s",
            target="≤ 30 s",
            met=None if judged is None else judged <= 30.0,
            note="" if value is not None else "unreadable sensor_latency.json",
            details={"source": str(path), "data": data},
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (< 2 min)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="CASE", help=f"run only these cases (repeatable or comma-separated): {', '.join(CASES)}"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile ours in each case (cProfile / stack sampling) into bench/results/profile_*.txt"
    )
    parser.add_argument("--output", default=str(RESULTS_DIR / "latest.json"), help="JSON output (default: %(default)s)")
    args = parser.parse_args(argv)

    selected = [c.strip() for item in args.only for c in item.split(",") if c.strip()] or CASES
    unknown = [c for c in selected if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}: expected some of {CASES}")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    ctx = Context(quick=args.quick, profile=args.profile)
    started = time.monotonic()
    load_start = loadavg()
    ctx.log(f"bench mode={'quick' if args.quick else 'full'} cases={','.join(selected)} load average {load_start}")
    rows: list[Row] = []
    timings: dict[str, float] = {}
    failed: list[str] = []
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the database server is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for name in selected:
            t0 = time.monotonic()
            ctx.log(f"case {name}")
            try:
                if name == "sensor":
                    rows += _sensor_row(ctx)
                else:
                    module = importlib.import_module(f"bench.case_{name}")
                    rows += module.run(ctx)
            except Exception as exc:  # noqa: BLE001 — one broken case must not hide the others
                trace = traceback.format_exc()
                ctx.log(f"case {name} FAILED: {exc!r}\n{trace}")
                failed.append(name)
                rows.append(Row(name, f"{name}: failed", None, "", met=False, note=f"error: {exc!r}"[:120], details={"traceback": trace}))
            timings[name] = round(time.monotonic() - t0, 1)
            ctx.log(f"case {name} done in {timings[name]} s")
        machine = machine_info(_any_db_url(ctx))
        machine["loadavg_start"] = load_start
        machine["loadavg_end"] = loadavg()
    finally:
        ctx.close()
    total = round(time.monotonic() - started, 1)

    print()
    print(f"ProjectX Pipeline benchmarks ({'quick' if args.quick else 'full'} mode, {total} s)")
    print(machine_line(machine))
    print()
    print(table(rows))
    print()
    print(
        "ratio: speed rows = baseline time / our time (× faster); latency rows = our latency / bare NOTIFY; "
        '"share" rows = our rate / the limit\'s rate'
    )
    write_json(
        Path(args.output),
        rows,
        machine,
        {"mode": "quick" if args.quick else "full", "cases": selected, "seconds": total, "case_seconds": timings, "log": ctx.log_lines},
    )
    Path(args.output).with_suffix(".txt").write_text(table(rows) + "\n\n" + machine_line(machine) + "\n")
    print(f"written: {args.output}")
    # A missed target is a result, not an error: the exit status only reports cases that broke.
    return 1 if failed else 0


def _any_db_url(ctx: Context) -> str | None:
    """The machine record names the PostgreSQL version even when no database case ran."""
    try:
        return ctx.create_database("machine")
    except Exception:  # noqa: BLE001 — no server: the record says so
        return None


if __name__ == "__main__":
    sys.exit(main())
