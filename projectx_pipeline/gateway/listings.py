"""The gateway's contract listing, as value types: which months of a symbol it lists and which
of them trade (`Contract/search`, `Contract/available`).

A symbol is resolved by searching its root and keeping the contracts whose id names exactly that
root (a search for "ES" also finds MES). An answer with a malformed id is skipped and logged:
one odd contract must not stop the platform collecting the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..domain.contracts import ContractId
from ..domain.errors import DomainError
from ..domain.rolls import ContractMonth
from ..logs import get_logger, kv

log = get_logger("projectx.gateway")


class ListingError(ValueError):
    """A symbol the gateway does not list; the message names it and what the gateway lists."""


class ContractSearch(Protocol):
    """What resolving needs of the gateway (`GatewayClient`)."""

    def search_contracts(self, text: str, live: bool = False) -> list[dict]: ...

    def available_contracts(self, live: bool = False) -> list[dict]: ...


@dataclass(frozen=True, order=True)
class ListedContract:
    """One listed month of a symbol, as the gateway describes it."""

    month: ContractMonth
    id: ContractId
    active: bool
    tick_size: float | None

    @classmethod
    def from_gateway(cls, contract: dict) -> ListedContract | None:
        """The value of a gateway contract object; None (logged) for one whose id is not a
        contract id this platform can store."""
        try:
            cid = ContractId(contract.get("id"))
        except DomainError as exc:
            log.warning(kv("listing_contract_skipped", reason=exc))
            return None
        tick = contract.get("tickSize")
        return cls(ContractMonth.of(cid), cid, bool(contract.get("activeContract", True)), float(tick) if isinstance(tick, (int, float)) else None)


def listed_months(gateway: ContractSearch, symbol: str) -> list[ListedContract]:
    """The active listed months of `symbol`, in time order. A symbol with none is a ListingError
    naming the symbols the gateway does list."""
    found = [c for c in (ListedContract.from_gateway(raw) for raw in gateway.search_contracts(symbol, live=False)) if c is not None]
    months = sorted({c for c in found if c.month.symbol == symbol and c.active})
    if months:
        return months
    listed = sorted({c.month.symbol for c in (ListedContract.from_gateway(raw) for raw in gateway.available_contracts(live=False)) if c is not None})
    raise ListingError(f"symbol {symbol!r} has no active contract at the gateway: expected one of the symbols it lists, {listed}")


def listing_of(gateway: ContractSearch, symbols: list[str]) -> dict[str, list[ListedContract]]:
    """`listed_months` of every symbol."""
    return {symbol: listed_months(gateway, symbol) for symbol in symbols}
