"""`projectx trend-starts FILE.csv`: detect trend starts in a CSV of bars, print them as CSV.

The input has the columns of the sample bar files (`contract_id, timestamp, open, high, low,
close, volume, timeframe_unit, timeframe_value`), one contract and timeframe, in ascending time
order. The output (stdout) is one row per confirmed start in the order of the rules' §6:
`type,start_ts,confirm_ts,rule,start_price`, times in ISO-8601 UTC (`2025-03-16T22:00:00Z`).
`confirm_ts` is the start label of the confirming bar: the signal is known when that bar closes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import pandas as pd

from projectx_pipeline.domain.market import BAR_COLUMNS, normalize_bars
from projectx_pipeline.domain.trend_starts import detect_trend_starts_frame
from projectx_pipeline.errors import UsageError

OUTPUT_COLUMNS = ["type", "start_ts", "confirm_ts", "rule", "start_price"]
_ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", type=Path, help="CSV of bars in the sample layout")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_bars(path: Path) -> pd.DataFrame:
    """The bars of `path`; any problem with the file is a UsageError naming it."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pandas parser errors are ValueErrors
        raise UsageError(f"{path}: not a readable CSV: {_one_line(exc)}") from None
    missing = [c for c in BAR_COLUMNS if c not in raw.columns]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(BAR_COLUMNS)}")
    try:
        return normalize_bars(raw)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: bad bar values: {_one_line(exc)}") from None


def run(args: argparse.Namespace) -> int:
    bars = read_bars(Path(args.file))
    try:
        starts = detect_trend_starts_frame(bars)
    except ValueError as exc:  # malformed bars (NaN price, high < low, time order)
        raise UsageError(f"{args.file}: {_one_line(exc)}") from None
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    writer.writerows(
        zip(
            starts["type"].tolist(),
            starts["start_ts"].dt.strftime(_ISO_UTC).tolist(),
            starts["confirm_ts"].dt.strftime(_ISO_UTC).tolist(),
            starts["rule"].tolist(),
            starts["start_price"].tolist(),
        )
    )
    return 0
