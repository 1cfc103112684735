"""`ListingSource`: the synthetic market of several listed months per symbol (listing mode).

Each symbol's months (`listings.SymbolListing`, relative to the clock's start) trade on the
synthetic engine, CME hours as `SyntheticSource`, each until its expiry instant and not after:

* one price level per symbol (keyed by the symbol, not the contract), plus the month's basis, so
  the months move together a stable gap apart; the walk inside a minute, the times, sizes and
  sides are keyed by the contract;
* volume at the month's share of the rate at that minute: the front month full, the next one
  10 %, the others 2 %, so it moves to the new front month at the roll instant;
* a month trades from SYNTHETIC_HISTORY_DAYS before the clock's start, or before its expiry when
  it expired earlier than that (an expired month has its last days of history), until its expiry.

Everything stays a pure function of (seed, contract, minute): history of any window, across a
roll or an expiry too, equals what the clock released live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from projectx_pipeline.domain.rolls import ExchangeDays
from projectx_pipeline.domain.timestamps import NS_PER_DAY, from_ns

from .listings import SymbolListing, basis_ticks, check_listable
from .market import NS_PER_MINUTE
from .synthetic import SYNTHETIC_HISTORY_DAYS, SyntheticSource, level_ticks, stream_key, trades_per_minute


class ListingSource(SyntheticSource):
    """The listed months of `symbols` (equity-index roots) at the clock's start `start_ns`,
    trading as one market per symbol. `stock_market_open` is the calendar of expiries (the NYSE's,
    `CalendarDays()`)."""

    def __init__(self, symbols: Sequence[str], seed: int, start_ns: int, stock_market_open: ExchangeDays):
        if not symbols:
            raise ValueError("listing mode needs at least one symbol")
        seen: set[str] = set()
        for symbol in symbols:
            check_listable(symbol)
            if symbol in seen:
                raise ValueError(f"symbol {symbol!r} given twice: expected each symbol once")
            seen.add(symbol)
        start_at = from_ns(int(start_ns))
        self.listings = {symbol: SymbolListing(symbol, start_at, stock_market_open) for symbol in symbols}
        super().__init__([cid for listing in self.listings.values() for cid in listing.contract_ids], seed, start_ns)
        self._place: dict[str, tuple[SymbolListing, int]] = {}
        self._spans: dict[str, tuple[int, int]] = {}
        history_ns = SYNTHETIC_HISTORY_DAYS * NS_PER_DAY
        for listing in self.listings.values():
            for index, (cid, expiry_ns) in enumerate(zip(listing.contract_ids, listing.expiries_ns.tolist())):
                self.contracts[cid] = replace(self.contracts[cid], expires_ns=expiry_ns)
                self._place[cid] = (listing, index)
                self._spans[cid] = (min(self.first_ns, expiry_ns // NS_PER_MINUTE * NS_PER_MINUTE - history_ns), expiry_ns)
        self.first_ns = min(first for first, _ in self._spans.values())
        self._symbol_keys = {symbol: stream_key(self.seed, symbol) for symbol in self.listings}

    def front_contract_ids(self, at_ns: int) -> set[str]:
        """The front month of every symbol at `at_ns`."""
        return {str(listing.front_month_at(at_ns).contract_id()) for listing in self.listings.values()}

    def _trading_span(self, contract_id: str) -> tuple[int, int | None]:
        return self._spans[contract_id]

    def _trade_counts(self, contract_id: str, minutes: np.ndarray, local: pd.DatetimeIndex) -> np.ndarray:
        listing, index = self._place[contract_id]
        share = listing.volume_share(index, minutes * NS_PER_MINUTE)
        return trades_per_minute(self._keys[contract_id], minutes, local, share)

    def _level_ticks(self, contract_id: str, minutes: np.ndarray) -> np.ndarray:
        contract = self.contracts[contract_id]
        listing, _ = self._place[contract_id]
        assert contract.expires_ns is not None  # every listed contract has its expiry
        symbol_level = level_ticks(self._symbol_keys[listing.symbol], minutes, contract.synthetic_base_price / contract.tick_size)
        return symbol_level + basis_ticks(contract.synthetic_base_price, contract.tick_size, contract.expires_ns, minutes * NS_PER_MINUTE)
