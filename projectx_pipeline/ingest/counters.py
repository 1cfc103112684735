"""Per-contract counters the daemon reports in its heartbeats (and `projectx status` prints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime


@dataclass
class Counters:
    trades: int = 0
    bars_written: int = 0
    late_trades: int = 0
    malformed_events: int = 0  # feed-wide: events the hub rejected (bad JSON, fields, contract)
    rejected_trades: int = 0  # trades of this contract rejected before aggregation
    reconnects: int = 0
    repairs: int = 0  # bars inserted or revised from history
    repair_requests: int = 0  # windows queued for repair (partial, late, dropped, rejected)
    partial_bars: int = 0  # bars not stored live because they may have missed trades
    bars_dropped: int = 0  # outage buffer overflow (each queued for repair)
    trades_dropped: int = 0  # raw trades lost to a full outage buffer
    ticks_not_notified: int = 0
    db_errors: int = 0
    gateway_errors: int = 0
    feed_stalls: int = 0  # times the market was open `stall_after_seconds` without a trade
    last_bar_at: datetime | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d.pop("last_bar_at")
        return d
