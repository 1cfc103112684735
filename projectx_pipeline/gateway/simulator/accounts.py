"""The simulator's trading accounts: what `Account/search` lists and the user hub accepts.

The platform places no orders; these exist because public SDKs look for an account right after
login (and refuse to go on without one) and subscribe to it on `/hubs/user`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    balance: float
    can_trade: bool
    is_visible: bool = True
    simulated: bool = True

    @property
    def active(self) -> bool:
        """What `onlyActiveAccounts: true` keeps: an account that can trade."""
        return self.can_trade

    def to_gateway(self) -> dict:
        """The account object of `Account/search`."""
        return {
            "id": self.id,
            "name": self.name,
            "balance": self.balance,
            "canTrade": self.can_trade,
            "isVisible": self.is_visible,
            "simulated": self.simulated,
        }


# One practice account that trades and one that no longer may (a failed evaluation, say), so
# that `onlyActiveAccounts` has something to filter.
SIMULATED_ACCOUNTS: tuple[Account, ...] = (
    Account(id=7001, name="PRAC-SIM-7001", balance=50_000.0, can_trade=True),
    Account(id=7002, name="PRAC-SIM-7002", balance=48_250.0, can_trade=False),
)


def account_by_id(account_id: object) -> Account | None:
    if not isinstance(account_id, int) or isinstance(account_id, bool):
        return None
    return next((a for a in SIMULATED_ACCOUNTS if a.id == account_id), None)
