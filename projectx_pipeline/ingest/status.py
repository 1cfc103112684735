"""`projectx status`: the ingestion heartbeats, with lag; `--check` makes it a health check."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a heartbeat of this daemon's contracts (the settings', the months followed for its symbols, or the shard's)"
        " is stale or stopped, or its feed stalled",
    )
    parser.add_argument("--max-age", type=float, default=30.0, help="seconds before a heartbeat counts as stale (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _age(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "-"
    seconds = (now - ts).total_seconds()
    if abs(seconds) < 120:
        return f"{seconds:.1f}s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def run(args: argparse.Namespace) -> int:
    from ..domain.contracts import ContractId
    from ..settings import load_settings
    from ..storage.db import StorageUnavailable, connect
    from ..storage.heartbeats import read_heartbeats
    from ..storage.local_db import LocalDatabaseError, default_cluster

    settings = load_settings()
    try:
        url = settings.database_url.get() if settings.database_url else default_cluster().urls()["DATABASE_URL"]
    except LocalDatabaseError as exc:
        raise UsageError(str(exc)) from None
    try:
        conn = connect(url)
    except StorageUnavailable as exc:
        raise UsageError(str(exc)) from None
    try:
        rows, now = read_heartbeats(conn)
    finally:
        conn.close()
    if not rows:
        print("no ingestion heartbeats yet: is `projectx ingest` running?")
        return 1 if args.check else 0
    assert now is not None  # the server's clock comes with every row
    # only this deployment's contracts count: another shard's daemon, or a rolled contract's
    # last 'stopped' row, must not make this one unhealthy
    own = set(settings.contract_ids)
    # a followed symbol counts through the months its latest daemon heartbeats for: an earlier
    # front month's last row (another instance, or 'rolled' out of) says nothing of the feed now
    for symbol in settings.symbols:
        of_symbol = [r for r in rows if ContractId(r[0]).symbol == symbol]
        latest = max(of_symbol, key=lambda r: r[7])[1] if of_symbol else None
        followed = {r[0] for r in of_symbol if r[1] == latest and r[2] != "rolled"}
        own |= followed or {f"{symbol} (no month followed)"}
    stale = [r[0] for r in rows if r[0] in own and ((now - r[7]).total_seconds() > args.max_age or r[2] in ("stopped", "stalled"))]
    missing = own - {r[0] for r in rows}
    stale += sorted(missing)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "contract_id": r[0],
                        "instance": r[1],
                        "state": r[2],
                        "last_event_at": r[3] and r[3].isoformat(),
                        "last_trade_at": r[4] and r[4].isoformat(),
                        "last_bar_at": r[5] and r[5].isoformat(),
                        "counters": r[6],
                        "heartbeat_age_s": (now - r[7]).total_seconds(),
                        "stale": r[0] in stale,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
    else:
        wall = datetime.now(timezone.utc)
        print(f"{'contract':<20} {'state':<13} {'heartbeat':>9} {'trade lag':>9} {'last trade (UTC)':<20} {'last bar (UTC)':<20} counters")
        for r in rows:
            counters = " ".join(f"{k}={v}" for k, v in r[6].items() if v)
            last_trade = r[4].strftime("%Y-%m-%d %H:%M:%S") if r[4] else "-"
            last_bar = r[5].strftime("%Y-%m-%d %H:%M:%S") if r[5] else "-"
            print(f"{r[0]:<20} {r[2]:<13} {_age(r[7], now):>9} {_age(r[4], wall):>9} {last_trade:<20} {last_bar:<20} {counters}")
        # trade lag is against this machine's clock: a replayed feed shows its distance from today
    if args.check and stale:
        print(f"stale: {', '.join(stale)}")
        return 1
    return 0
