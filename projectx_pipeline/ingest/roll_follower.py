"""Which months of its symbols the daemon follows, through every roll, without a restart.

`RollFollower` holds the gateway's listing of each symbol and answers, for an instant of the
feed, the months to collect (`rolls.months_to_follow`: the front month and the one after it, so
the next month's bars already flow when the roll comes). `ListingWatcher` asks the gateway for
the listing again now and then on a thread of its own and hands the answer to the main loop as a
`ListingUpdate` on the events queue, so the main loop itself never waits on the network.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..domain.contracts import ContractId
from ..domain.rolls import CalendarRoll, ExchangeDays, RollPoint, front_month_at, months_to_follow, next_roll_after, roll_points
from ..gateway.listings import ListedContract
from ..logs import get_logger, kv

log = get_logger("projectx.ingest")


@dataclass(frozen=True)
class ListingUpdate:
    """The gateway's listing of the followed symbols, asked again."""

    listing: dict[str, list[ListedContract]]


class RollFollower:
    def __init__(self, symbols: list[str], listing: dict[str, list[ListedContract]], rule: CalendarRoll, stock_market_open: ExchangeDays):
        missing = [s for s in symbols if not listing.get(s)]
        if missing:
            raise ValueError(f"no listed month for the symbols {missing}: expected the gateway's listing of every followed symbol")
        self.symbols = list(symbols)
        self.rule = rule
        self.stock_market_open = stock_market_open
        self.listing = {s: sorted(listing[s]) for s in symbols}

    def follow(self, at: datetime) -> list[ContractId]:
        """The months to collect at `at`, symbol by symbol."""
        out: list[ContractId] = []
        for symbol in self.symbols:
            ids = {c.month: c.id for c in self.listing[symbol]}
            out += [ids[m] for m in months_to_follow(ids, at, self.rule, self.stock_market_open)]
        return out

    def front_months(self, at: datetime) -> list[ContractId]:
        """Each symbol's front month at `at` (its latest listed month when none is front then)."""
        out = []
        for symbol in self.symbols:
            ids = {c.month: c.id for c in self.listing[symbol]}
            try:
                out.append(ids[front_month_at(ids, at, self.rule, self.stock_market_open)])
            except ValueError:
                out.append(ids[max(ids)])
        return out

    def next_change_after(self, at: datetime) -> datetime | None:
        """The first roll instant of any followed symbol after `at` (None: no later roll listed)."""
        upcoming = [next_roll_after([c.month for c in self.listing[s]], at, self.rule, self.stock_market_open) for s in self.symbols]
        return min((t for t in upcoming if t is not None), default=None)

    def roll_points(self) -> list[RollPoint]:
        """Every roll between consecutive listed months of the followed symbols."""
        return [p for symbol in self.symbols for p in roll_points([c.month for c in self.listing[symbol]], self.rule, self.stock_market_open)]

    def update(self, listing: dict[str, list[ListedContract]]) -> dict[str, str]:
        """Adopt a new listing; a symbol the answer lacks keeps its former listing (a partial
        answer must not stop a feed). Returns what changed, for the log (empty: nothing)."""
        changes: dict[str, str] = {}
        for symbol in self.symbols:
            new = sorted(listing.get(symbol) or [])
            if not new or new == self.listing[symbol]:
                continue
            before, after = {c.id for c in self.listing[symbol]}, {c.id for c in new}
            changes[symbol] = f"listed+{','.join(sorted(after - before)) or 'none'} unlisted-{','.join(sorted(before - after)) or 'none'}"
            self.listing[symbol] = new
        return changes


class ListingWatcher(threading.Thread):
    """Every `every_seconds`, `fetch()` the listing and put it on `out` as a ListingUpdate; a
    failure (gateway down, bad answer) is logged and tried again next time."""

    def __init__(self, fetch: Callable[[], dict[str, list[ListedContract]]], out: queue.Queue, every_seconds: float):
        super().__init__(name="projectx-listing", daemon=True)
        self.fetch = fetch
        self.out = out
        self.every_seconds = every_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every_seconds):
            try:
                listing = self.fetch()
            except Exception as exc:  # noqa: BLE001 — the feed goes on with the listing it has
                log.warning(kv("listing_refresh_failed", error=f"{type(exc).__name__}: {exc}"))
                continue
            self.out.put(ListingUpdate(listing))

    def stop(self) -> None:
        self._stop_event.set()
