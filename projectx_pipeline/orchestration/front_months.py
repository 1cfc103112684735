"""Which contracts the deployment follows on a trade date: the one answer the schedule, the
backfill, the freshness check and the analysis share (pure over the contract partition keys).

A symbol of the settings (`instruments`) has no fixed contract: its months are the contract
partitions of that symbol the instance knows (the `contract_listings` sensor adds every month the
gateway lists, and keeps the expired ones). On a trade date

* its front month is `CalendarRoll.front_month` over those months, on the NYSE's days
  (`CalendarDays`), as the settings' `rolls` say;
* it is followed with the month after it (`rolls.months_to_follow` at the open of that trade
  date's session: what the live daemon collects), or, when every known month has rolled already,
  the latest known month alone, as the daemon does with a gateway that lists only one month.

Explicit contracts (`contracts`) are followed on every date, whatever their month. What the
analysis runs over follows from it and `analysis.series`: each followed contract's own bars, or
for a symbol its continuous front-month series (`SeriesId` of the symbol). Nothing here
asks the gateway or the instance: callers pass the partition keys they read
(`instance.get_dynamic_partitions(CONTRACTS)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from ..domain.contracts import ContractId
from ..domain.errors import DomainError
from ..domain.market_hours import CalendarDays
from ..domain.rolls import CalendarRoll, ContractMonth, ExchangeDays, months_to_follow
from ..domain.series import SeriesId
from ..domain.sessions import trade_date_of, trade_date_session
from ..domain.timestamps import utc
from ..settings import Settings


class FrontMonthError(DomainError):
    """No known month of a symbol fits a date; the message names the symbol and the months known."""


@dataclass(frozen=True)
class Followed:
    """The contracts followed (explicit ones first, then each symbol's months, in settings order)
    and, per symbol that none fits, why."""

    contracts: list[ContractId]
    unresolved: dict[str, str]


@dataclass(frozen=True)
class FrontMonths:
    """The roll rule and the followed symbols and contracts of one deployment."""

    contracts: tuple[ContractId, ...]  # explicit contract ids, followed on every date
    symbols: tuple[str, ...]  # symbols whose front month (and the next) are followed
    rule: CalendarRoll = CalendarRoll()
    stock_market_open: ExchangeDays = field(default_factory=CalendarDays, compare=False)
    continuous_analysis: bool = False  # analysis.series: continuous

    @classmethod
    def from_settings(cls, settings: Settings, stock_market_open: ExchangeDays | None = None) -> FrontMonths:
        return cls(
            tuple(ContractId(c) for c in settings.contract_ids),
            tuple(settings.symbols),
            settings.roll_rule(),
            stock_market_open if stock_market_open is not None else CalendarDays(),
            settings.file.analysis.series == "continuous",
        )

    def symbol_of(self, contract_id: str) -> str | None:
        """The followed symbol `contract_id` is a month of (None: an explicit contract, or one of
        a symbol that is not followed)."""
        symbol = ContractId(contract_id).symbol
        return symbol if symbol in self.symbols and contract_id not in self.contracts else None

    def known_months(self, symbol: str, known: Iterable[str]) -> dict[ContractMonth, ContractId]:
        """The months of `symbol` among the partition keys `known`, in time order."""
        self._check_symbol(symbol)
        months: dict[ContractMonth, ContractId] = {}
        for key in known:
            try:
                cid = ContractId(key)
            except DomainError:  # a key added by hand that is no contract id is no month either
                continue
            if cid.symbol == symbol:
                months.setdefault(ContractMonth.of(cid), cid)
        return dict(sorted(months.items()))

    def front_month(self, symbol: str, trade_date: date, known: Iterable[str]) -> ContractId:
        """The front month of `symbol` on `trade_date` among the known months."""
        months = self._months_or_error(symbol, known)
        try:
            return months[self.rule.front_month(months, trade_date, self.stock_market_open)]
        except DomainError:
            latest = max(months)
            raise FrontMonthError(
                f"no known month of {symbol} is its front month on {trade_date.isoformat()}: the months known,"
                f" {_listed(months)}, have all rolled (the latest, {months[latest]}, on"
                f" {self.rule.roll_date(latest, self.stock_market_open).isoformat()}); expected the contract_listings sensor"
                " to add the months the gateway lists"
            ) from None

    def front_month_at(self, symbol: str, at: datetime, known: Iterable[str]) -> ContractId:
        """The front month of `symbol` at the instant `at` (that of the trade date `at` belongs to)."""
        return self.front_month(symbol, trade_date_of(utc(at)), known)

    def months_followed(self, symbol: str, trade_date: date, known: Iterable[str]) -> list[ContractId]:
        """The months of `symbol` followed on `trade_date`: its front month and the next known
        one, or the latest known month alone when every known month has rolled before."""
        months = self._months_or_error(symbol, known)
        session_open = trade_date_session(trade_date)[0]
        return [months[m] for m in months_to_follow(months, session_open, self.rule, self.stock_market_open)]

    def followed_on(self, trade_date: date, known: Iterable[str]) -> Followed:
        """Every contract followed on `trade_date`: the explicit ones, and each symbol's months."""
        known = list(known)
        contracts, unresolved = list(self.contracts), {}
        for symbol in self.symbols:
            try:
                contracts += [c for c in self.months_followed(symbol, trade_date, known) if c not in contracts]
            except FrontMonthError as exc:
                unresolved[symbol] = str(exc)
        return Followed(contracts, unresolved)

    def followed_now(self, at: datetime, known: Iterable[str]) -> Followed:
        """The contracts to judge or analyse at `at`: the explicit ones and each symbol's front
        month then (never a month that has rolled: a symbol whose known months all have is unresolved)."""
        known = list(known)
        contracts, unresolved = list(self.contracts), {}
        for symbol in self.symbols:
            try:
                front = self.front_month_at(symbol, at, known)
            except FrontMonthError as exc:
                unresolved[symbol] = str(exc)
                continue
            if front not in contracts:
                contracts.append(front)
        return Followed(contracts, unresolved)

    def analysed_now(self, at: datetime, known: Iterable[str]) -> tuple[list[SeriesId], dict[str, str]]:
        """The series an analysis run without a list of its own takes at `at`, and per symbol why
        it is left out: the explicit contracts, then each symbol's continuous series or (by
        contract) its front month then (`followed_now`)."""
        if self.continuous_analysis:
            return [*map(SeriesId, self.contracts), *map(SeriesId, self.symbols)], {}
        followed = self.followed_now(at, known)
        return [SeriesId(c) for c in followed.contracts], followed.unresolved

    def series_of(self, contract_id: str) -> SeriesId:
        """The series new bars of `contract_id` feed: a followed symbol's continuous series when
        the analysis runs on those, else the contract's own."""
        symbol = self.symbol_of(contract_id)
        return SeriesId(symbol if self.continuous_analysis and symbol is not None else ContractId(contract_id))

    def is_configured(self, series: SeriesId) -> bool:
        """Whether the settings name `series`: an explicit contract, a followed symbol or one of its months."""
        return series in self.contracts or series.symbol in self.symbols

    def why_not_followed(self, contract_id: str, trade_date: date, known: Iterable[str]) -> str | None:
        """None when `contract_id` is followed on `trade_date` (explicit contracts and contracts of
        symbols not followed always are); else why not, naming the front month of that date."""
        symbol = self.symbol_of(contract_id)
        if symbol is None:
            return None
        known = list(known)
        followed = self.months_followed(symbol, trade_date, [*known, contract_id])
        if contract_id in followed:
            return None
        try:
            front = f"the front month of {symbol} on {trade_date.isoformat()} is {self.front_month(symbol, trade_date, [*known, contract_id])}"
        except FrontMonthError as exc:
            front = str(exc)
        return f"{contract_id} is not followed on {trade_date.isoformat()}: {front}; followed that day: {', '.join(followed)}"

    def _months_or_error(self, symbol: str, known: Iterable[str]) -> dict[ContractMonth, ContractId]:
        months = self.known_months(symbol, known)
        if not months:
            raise FrontMonthError(
                f"no month of {symbol} is known: expected a contract partition of {symbol} (the contract_listings sensor adds"
                " the months the gateway lists)"
            )
        return months

    def _check_symbol(self, symbol: str) -> None:
        if symbol not in self.symbols:
            raise FrontMonthError(f"symbol {symbol!r} is not followed: expected one of the symbols in instruments, {list(self.symbols)}")


def _listed(months: dict[ContractMonth, ContractId]) -> str:
    return ", ".join(months.values())
