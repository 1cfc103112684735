"""The contract months the simulator lists for a symbol, and how one market is shared among them (pure rules).

A listing is relative to the clock's start `at`: the quarterly months (H, M, U, Z) whose expiry
instant lies from LISTED_DAYS_BEFORE days before `at` to LISTED_DAYS_AFTER days after it. That
is two or three months already expired (searchById and hourly history still know them), the
front month and the two or three after it, as a gateway lists them.

Expiries, roll instants and the front month are the rules of `domain/rolls.py` (the default
`CalendarRoll`), on the stock market's calendar the caller gives (an `ExchangeDays`, normally
`CalendarDays()`: the NYSE). Only the equity-index roots can be listed: their months and
expiries are the ones those rules know.

How the months of one symbol share its market, minute by minute:

* Volume: the front month at that minute trades at the full rate, the month after it at
  NEXT_MONTH_SHARE, every other month at OTHER_MONTH_SHARE. So at a roll instant the volume
  moves to the new front month, as traders roll their positions.
* Price: one price path per symbol, plus each month's basis (`basis_ticks`): the base price ×
  BASIS_PER_MONTH per month of time to expiry, on the tick grid. A later month trades higher
  (carry), and two months trade a nearly constant gap apart (their expiries' distance × the
  rate), so a roll shows a visible, stable jump in the front month's price.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from projectx_pipeline.domain.rolls import (
    QUARTERLY_MONTHS,
    CalendarRoll,
    ContractMonth,
    ExchangeDays,
    expiry_instant,
    roll_instant,
    roll_points,
)
from projectx_pipeline.domain.timestamps import NS_PER_DAY, to_ns, utc

from .contracts import LISTABLE_ROOTS

LISTED_DAYS_BEFORE = 200  # months that expired up to this long before the start are still listed
LISTED_DAYS_AFTER = 300  # months that expire up to this long after the start are already listed
NEXT_MONTH_SHARE = 0.10  # of the front month's trading rate, for the month after the front
OTHER_MONTH_SHARE = 0.02  # for every other listed month
BASIS_PER_MONTH = 0.0015  # of the base price, per month of time to expiry
NS_PER_MONTH = int(365.25 / 12 * NS_PER_DAY)  # an average calendar month
DEFAULT_ROLL = CalendarRoll()  # CME's equity-index convention: 8 calendar days before the expiry


def check_listable(symbol: object) -> str:
    """`symbol` when the simulator can list its months, else ValueError naming it and the roots it knows."""
    if not isinstance(symbol, str) or symbol not in LISTABLE_ROOTS:
        raise ValueError(
            f"unknown symbol {symbol!r} for a listing: expected one of the equity-index roots {', '.join(LISTABLE_ROOTS)}"
            " (quarterly months expiring on the third Friday)"
        )
    return symbol


def listed_months(symbol: str, at: datetime, stock_market_open: ExchangeDays) -> list[ContractMonth]:
    """The quarterly months of `symbol` whose expiry instant lies in [at - LISTED_DAYS_BEFORE days,
    at + LISTED_DAYS_AFTER days], in time order."""
    check_listable(symbol)
    at = utc(at)
    lo, hi = at - timedelta(days=LISTED_DAYS_BEFORE), at + timedelta(days=LISTED_DAYS_AFTER)
    month = ContractMonth(lo.year - 1, QUARTERLY_MONTHS[-1], symbol)  # expires before `lo` whatever the day
    listed: list[ContractMonth] = []
    while (expiry := expiry_instant(month, stock_market_open)) <= hi:
        if expiry >= lo:
            listed.append(month)
        month = month.next_quarterly()
    return listed


def basis_ticks(base_price: float, tick_size: float, expiry_ns: int, at_ns: np.ndarray) -> np.ndarray:
    """The basis of a month expiring at `expiry_ns`, at each of `at_ns`, in whole ticks."""
    months_to_expiry = (expiry_ns - at_ns.astype(np.float64)) / NS_PER_MONTH
    return np.round(base_price / tick_size * BASIS_PER_MONTH * months_to_expiry)


class SymbolListing:
    """The listed months of one symbol at the clock's start `at`: their expiry and roll instants,
    which month is front at a minute, and each month's share of the symbol's volume."""

    def __init__(self, symbol: str, at: datetime, stock_market_open: ExchangeDays, rule: CalendarRoll = DEFAULT_ROLL):
        self.symbol = symbol
        self.rule = rule
        self.months = listed_months(symbol, at, stock_market_open)
        self.expiries_ns = np.array([to_ns(expiry_instant(m, stock_market_open)) for m in self.months], dtype=np.int64)
        # When each month stops being front: the roll to the month after it; the last listed
        # month's own roll instant, after which it stays front, as nothing later is listed.
        rolls = [to_ns(p.at) for p in roll_points(self.months, rule, stock_market_open)]
        self.rolls_ns = np.array([*rolls, to_ns(roll_instant(self.months[-1], rule, stock_market_open))], dtype=np.int64)

    @property
    def contract_ids(self) -> list[str]:
        return [str(m.contract_id()) for m in self.months]

    def front_index(self, at_ns: np.ndarray) -> np.ndarray:
        """The index (in `months`) of the front month at each instant: the first month whose roll
        is after it (`rolls.front_month_at`), or the last listed one once every roll has passed."""
        return np.minimum(np.searchsorted(self.rolls_ns, at_ns, side="right"), len(self.months) - 1)

    def front_month_at(self, at_ns: int) -> ContractMonth:
        return self.months[int(self.front_index(np.array([at_ns], dtype=np.int64))[0])]

    def volume_share(self, index: int, at_ns: np.ndarray) -> np.ndarray:
        """The share of the full trading rate month `index` trades at, at each instant."""
        front = self.front_index(at_ns)
        return np.where(front == index, 1.0, np.where(front + 1 == index, NEXT_MONTH_SHARE, OTHER_MONTH_SHARE))
