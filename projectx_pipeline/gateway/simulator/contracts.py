"""The simulator's contract catalogue: the roots it knows and the contract an id names.

A contract of the replay or of `--synthetic` never expires (`expires_ns` None): it is active
whatever the clock says. A listed contract (`listings.py`) expires at its expiry instant, and
from then on the gateway calls it inactive (`activeContract: false`)."""

from __future__ import annotations

from dataclasses import dataclass

from projectx_pipeline.domain.contracts import ContractId

_MONTHS = {"F": 1, "G": 2, "H": 3, "J": 4, "K": 5, "M": 6, "N": 7, "Q": 8, "U": 9, "V": 10, "X": 11, "Z": 12}
_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")


@dataclass(frozen=True)
class _Root:
    description: str
    tick_size: float
    tick_value: float
    synthetic_base_price: float
    # CME equity-index futures: quarterly months expiring on the third Friday (domain/rolls.py)
    equity_index: bool = False


# The common roots; any other root gets MES-like ticks (the ids are still validated).
_ROOTS = {
    "MES": _Root("Micro E-mini S&P 500", 0.25, 1.25, 5700.0, equity_index=True),
    "ES": _Root("E-mini S&P 500", 0.25, 12.5, 5700.0, equity_index=True),
    "MNQ": _Root("Micro E-mini Nasdaq-100", 0.25, 0.5, 20000.0, equity_index=True),
    "NQ": _Root("E-mini Nasdaq-100", 0.25, 5.0, 20000.0, equity_index=True),
    "M2K": _Root("Micro E-mini Russell 2000", 0.1, 0.5, 2100.0, equity_index=True),
    "RTY": _Root("E-mini Russell 2000", 0.1, 5.0, 2100.0, equity_index=True),
    "MYM": _Root("Micro E-mini Dow", 1.0, 0.5, 42000.0, equity_index=True),
    "YM": _Root("E-mini Dow", 1.0, 5.0, 42000.0, equity_index=True),
    "MCL": _Root("Micro WTI Crude Oil", 0.01, 1.0, 70.0),
    "CL": _Root("Crude Oil", 0.01, 10.0, 70.0),
    "MGC": _Root("Micro Gold", 0.1, 1.0, 3000.0),
    "GC": _Root("Gold", 0.1, 10.0, 3000.0),
}

# The roots a listing can hold: the equity-index futures, whose months and expiries the roll
# rules know (energy and metals expire monthly, by other rules).
LISTABLE_ROOTS = tuple(sorted(root for root, spec in _ROOTS.items() if spec.equity_index))


@dataclass(frozen=True)
class Contract:
    id: str
    name: str
    description: str
    tick_size: float
    tick_value: float
    symbol_id: str
    synthetic_base_price: float
    expires_ns: int | None = None  # its expiry instant, UTC ns; None: it never expires

    @property
    def root(self) -> str:
        return ContractId(self.id).symbol

    def active_at(self, clock_ns: int) -> bool:
        """Does it still trade at `clock_ns`? (from its expiry instant on, it does not)"""
        return self.expires_ns is None or clock_ns < self.expires_ns

    def to_gateway(self, active: bool = True) -> dict:
        """The contract object of the gateway's Contract endpoints; `active` is `activeContract`."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "tickSize": self.tick_size,
            "tickValue": self.tick_value,
            "activeContract": active,
            "symbolId": self.symbol_id,
        }


def contract_for(contract_id: str) -> Contract:
    """Contract metadata for an id such as CON.F.US.MES.M25 (name MESM5, symbolId F.US.MES)."""
    ContractId(contract_id)
    _, _, country, root, expiry = contract_id.split(".")
    spec = _ROOTS.get(root, _Root(f"{root} futures", 0.25, 1.25, 100.0))
    month, year = _MONTHS[expiry[0]], 2000 + int(expiry[1:])
    return Contract(
        id=contract_id,
        name=f"{root}{expiry[0]}{expiry[-1]}",  # TopstepX names use a one-digit year: MESM5
        description=f"{spec.description}: {_MONTH_NAMES[month - 1]} {year}",
        tick_size=spec.tick_size,
        tick_value=spec.tick_value,
        symbol_id=f"F.{country}.{root}",
        synthetic_base_price=spec.synthetic_base_price,
    )
