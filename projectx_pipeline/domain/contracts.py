"""Contract ids, parsed once at the edges of the platform into a value type."""

from __future__ import annotations

import re

from .errors import DomainError

# Contract ids look like CON.F.US.MES.M25 (inferred from examples, not documented): the
# pattern is strict on purpose, because ids reach SQL, URLs and log lines.
CONTRACT_ID_RE = re.compile(r"^CON\.F\.[A-Z]{2}\.[A-Z0-9]{1,8}\.[FGHJKMNQUVXZ][0-9]{2}$")
SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,8}$")  # a futures root: the fourth part of a contract id


class ContractId(str):
    """A gateway contract id such as CON.F.US.MES.M25, known to be well formed.

    `ContractId(value)` checks a raw value once and raises a DomainError naming it; a value that
    is already a ContractId passes through unchecked. So settings, the CLI, partition keys and the
    gateway's answers parse ids where they enter, and the storage, gateway and domain entry points
    that must refuse a bad id (it would reach SQL, a URL or a log line) pay nothing for ids that
    were parsed already. It is a `str`: SQL parameters, JSON, pandas and Dagster take it as is.
    """

    __slots__ = ()

    def __new__(cls, value: object) -> ContractId:
        if type(value) is cls:
            return value
        if not isinstance(value, str) or not CONTRACT_ID_RE.fullmatch(value):
            raise DomainError(
                f"invalid contract id {value!r}: expected the gateway's form CON.F.<country>.<root>.<month code><2-digit year>, e.g. CON.F.US.MES.M25"
            )
        return super().__new__(cls, value)

    @property
    def symbol(self) -> str:
        """The root symbol the id names: MES for CON.F.US.MES.M25."""
        return self.split(".")[3]
