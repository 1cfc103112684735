"""Futures months, their expiries and the roll from one front month to the next (pure rules).

A contract id such as CON.F.US.MES.M25 names a symbol (MES) and a delivery month (M = June) of a
two-digit year (25). `ContractMonth` is that pair, parsed once from a `ContractId`.

Expiry: CME's equity-index futures (ES, MES, NQ, MNQ, RTY, M2K, YM, MYM) expire on the third
Friday of the contract month, at the open of the US stock market (the final settlement is the
Special Opening Quotation of the index). When the NYSE does not open that Friday (Good Friday on
2008-03-21, Juneteenth on 2026-06-19), the expiry is the NYSE business day before it. Which days
the NYSE opens is the caller's to say (`ExchangeDays`), so this module stays free of calendars.

Roll rules (which listed month is the front month on a trade date):

* `CalendarRoll` (the default, CME's equity-index convention): roll `days_before_expiry` (8)
  calendar days before the expiry, i.e. on the Thursday of the week before; a roll day the
  exchange does not trade moves to the trading day before it. From the roll date on, the next
  month is the front month.
* `VolumeRoll`: the front month is the one that traded the most on the previous trade date, and
  it never goes back to an earlier month (a quiet day in the new month does not undo the roll).
  A day whose previous trade date has no volumes follows `CalendarRoll`, under the same rule.

Instants: a roll date is a CME trade date, so the front month changes at the open of its session
(18:00 New York the evening before, `roll_instant`); a contract stops trading at its expiry
instant, the 09:30 New York open of the stock market on its expiry date (`expiry_instant`).
`RollPoint`s are the consecutive switches of a listing; `front_month_at` answers for an instant.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from .contracts import ContractId
from .errors import DomainError
from .sessions import NEW_YORK, trade_date_of, trade_date_session
from .timestamps import utc

MONTH_CODES = "FGHJKMNQUVXZ"  # January … December, the exchanges' letters
QUARTERLY_MONTHS = (3, 6, 9, 12)  # H, M, U, Z: the equity-index cycle
DEFAULT_DAYS_BEFORE_EXPIRY = 8

# Is the exchange open on this date? (a trading-calendar lookup, given by the caller)
ExchangeDays = Callable[[date], bool]


def weekdays_only(d: date) -> bool:
    """An `ExchangeDays` that knows no holidays: for tests and for symbols without a calendar."""
    return d.weekday() < 5


@dataclass(frozen=True, order=True)
class ContractMonth:
    """One delivery month of one symbol, ordered by time (then symbol)."""

    year: int
    month: int
    symbol: str

    @classmethod
    def of(cls, contract_id: ContractId | str) -> ContractMonth:
        """The month a contract id names; its two-digit year is taken as 20YY."""
        cid = ContractId(contract_id)
        code = cid.split(".")[4]
        return cls(2000 + int(code[1:]), MONTH_CODES.index(code[0]) + 1, cid.symbol)

    @property
    def code(self) -> str:
        """M25 for June 2025."""
        return f"{MONTH_CODES[self.month - 1]}{self.year % 100:02d}"

    def contract_id(self, prefix: str = "CON.F.US") -> ContractId:
        return ContractId(f"{prefix}.{self.symbol}.{self.code}")

    def next_quarterly(self) -> ContractMonth:
        """The next month of the March/June/September/December cycle."""
        later = [m for m in QUARTERLY_MONTHS if m > self.month]
        return ContractMonth(self.year, later[0], self.symbol) if later else ContractMonth(self.year + 1, QUARTERLY_MONTHS[0], self.symbol)


STOCK_MARKET_OPEN_LOCAL = time(9, 30)  # the Special Opening Quotation that settles an expiring contract


def third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(calendar.FRIDAY - first.weekday()) % 7 + 14)


def trading_day_on_or_before(d: date, is_open: ExchangeDays, limit_days: int = 10) -> date:
    """`d`, or the latest earlier date the exchange opens; a calendar closed for `limit_days`
    days in a row is refused (it would be a wrong calendar, not a holiday)."""
    for back in range(limit_days + 1):
        day = d - timedelta(days=back)
        if is_open(day):
            return day
    raise DomainError(f"no trading day within {limit_days} days before {d.isoformat()}: expected an exchange calendar with sessions")


def expiry_date(month: ContractMonth, stock_market_open: ExchangeDays) -> date:
    """The last trade date of an equity-index future: the third Friday of its month, or the
    stock market's business day before it when the stock market is closed that Friday."""
    return trading_day_on_or_before(third_friday(month.year, month.month), stock_market_open)


@dataclass(frozen=True)
class CalendarRoll:
    """Roll `days_before_expiry` calendar days before the expiry (moved to the trading day before
    when the exchange is closed then)."""

    days_before_expiry: int = DEFAULT_DAYS_BEFORE_EXPIRY

    def __post_init__(self) -> None:
        if not 0 <= self.days_before_expiry <= 60:
            raise DomainError(f"invalid days_before_expiry {self.days_before_expiry!r}: expected 0 to 60 calendar days")

    @property
    def name(self) -> str:
        """The rule as recorded with its roll points: calendar:8."""
        return f"calendar:{self.days_before_expiry}"

    def roll_date(self, month: ContractMonth, stock_market_open: ExchangeDays) -> date:
        """The first trade date on which `month` is no longer the front month."""
        expiry = expiry_date(month, stock_market_open)
        return trading_day_on_or_before(expiry - timedelta(days=self.days_before_expiry), stock_market_open)

    def front_month(self, listed: Iterable[ContractMonth], trade_date: date, stock_market_open: ExchangeDays) -> ContractMonth:
        """The earliest listed month whose roll date is after `trade_date`."""
        months = _one_symbol(listed)
        for m in months:
            if trade_date < self.roll_date(m, stock_market_open):
                return m
        raise DomainError(
            f"no listed contract is front month on {trade_date.isoformat()}: the latest listed, {months[-1].contract_id()},"
            f" rolls on {self.roll_date(months[-1], stock_market_open).isoformat()}"
        )


def expiry_instant(month: ContractMonth, stock_market_open: ExchangeDays) -> datetime:
    """When `month` stops trading: 09:30 New York on its expiry date, in UTC."""
    local = datetime.combine(expiry_date(month, stock_market_open), STOCK_MARKET_OPEN_LOCAL, NEW_YORK)
    return utc(local)


def roll_instant(month: ContractMonth, rule: CalendarRoll, stock_market_open: ExchangeDays) -> datetime:
    """When `month` stops being the front month: the session open of its roll date, in UTC."""
    return trade_date_session(rule.roll_date(month, stock_market_open))[0]


@dataclass(frozen=True)
class RollPoint:
    """At `at` the front month of a symbol changes from `from_month` to `to_month`."""

    at: datetime
    from_month: ContractMonth
    to_month: ContractMonth

    @property
    def symbol(self) -> str:
        return self.from_month.symbol


def roll_points(listed: Iterable[ContractMonth], rule: CalendarRoll, stock_market_open: ExchangeDays) -> list[RollPoint]:
    """The roll from each listed month to the next listed one, in time order."""
    months = _one_symbol(listed)
    return [RollPoint(roll_instant(a, rule, stock_market_open), a, b) for a, b in zip(months, months[1:])]


def front_month_at(listed: Iterable[ContractMonth], at: datetime, rule: CalendarRoll, stock_market_open: ExchangeDays) -> ContractMonth:
    """The front month at the instant `at` (the front month of the trade date `at` belongs to)."""
    return rule.front_month(listed, trade_date_of(utc(at)), stock_market_open)


def months_to_follow(listed: Iterable[ContractMonth], at: datetime, rule: CalendarRoll, stock_market_open: ExchangeDays) -> list[ContractMonth]:
    """What a live feed of one symbol collects at `at`: its front month and the listed month
    after it (subscribed ahead, so the roll finds its bars already flowing). When no listed month
    is front at `at` (all of them rolled before: a gateway that lists only the month it trades,
    or a clock behind the listing), the latest listed month alone."""
    months = _one_symbol(listed)
    try:
        front = front_month_at(months, at, rule, stock_market_open)
    except DomainError:
        return [months[-1]]
    later = [m for m in months if m > front]
    return [front, *later[:1]]


def next_roll_after(listed: Iterable[ContractMonth], at: datetime, rule: CalendarRoll, stock_market_open: ExchangeDays) -> datetime | None:
    """The first roll instant of the listing after `at` (None: no later roll is listed)."""
    at = utc(at)
    return min((p.at for p in roll_points(listed, rule, stock_market_open) if p.at > at), default=None)


@dataclass(frozen=True)
class VolumeRoll:
    """The front month is the listed month with the most volume on the previous trade date,
    never an earlier one than the day before's front month; without volumes, `fallback` decides."""

    fallback: CalendarRoll = CalendarRoll()

    def front_months(
        self,
        listed: Iterable[ContractMonth],
        trade_dates: Sequence[date],
        volumes: Mapping[date, Mapping[ContractMonth, int]],
        stock_market_open: ExchangeDays,
    ) -> dict[date, ContractMonth]:
        """The front month of each of `trade_dates` (ascending), from `volumes[d][month]` of the
        trade dates before it. A month that has expired is never chosen."""
        months = _one_symbol(listed)
        out: dict[date, ContractMonth] = {}
        current: ContractMonth | None = None
        previous: date | None = None
        for d in trade_dates:
            if previous is not None and d <= previous:
                raise DomainError(f"trade dates must ascend: {d.isoformat()} follows {previous.isoformat()}")
            live = [m for m in months if d <= expiry_date(m, stock_market_open)]
            if not live:
                raise DomainError(f"no listed contract trades on {d.isoformat()}: the latest listed, {months[-1].contract_id()}, has expired")
            seen = volumes.get(previous, {}) if previous is not None else {}
            traded = {m: v for m, v in seen.items() if m in live and v > 0}
            if traded:
                choice = max(traded, key=lambda m: (traded[m], m))
            else:  # no volume of the day before: the calendar decides that day
                choice = self.fallback.front_month(live, d, stock_market_open)
            if current is not None and current > choice:
                choice = current
            if choice not in live:  # the day before's front month expired: the next one listed
                choice = live[0]
            out[d] = current = choice
            previous = d
        return out


def _one_symbol(listed: Iterable[ContractMonth]) -> list[ContractMonth]:
    months = sorted(set(listed))
    if not months:
        raise DomainError("no contract listed: expected at least one contract month of the symbol")
    symbols = sorted({m.symbol for m in months})
    if len(symbols) > 1:
        raise DomainError(f"contracts of several symbols {symbols} given to one roll: expected the months of one symbol")
    return months
