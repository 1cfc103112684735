"""What an analysis runs over, parsed once at the edges: one contract's bars, or a symbol's
continuous front-month series (domain/continuous.py stitches it at the recorded rolls)."""

from __future__ import annotations

from .contracts import CONTRACT_ID_RE, SYMBOL_RE, ContractId
from .errors import DomainError


class SeriesId(str):
    """A contract id such as CON.F.US.MES.M25 (that month's bars), or a symbol such as MES (its
    continuous front-month series). The analysis tables key their rows by it in their
    `contract_id` column: the two forms cannot be mistaken for each other (a symbol has no dots).

    Like ContractId: `SeriesId(value)` checks a raw value once and raises a DomainError naming it;
    a SeriesId or ContractId passes through unchecked."""

    __slots__ = ()

    def __new__(cls, value: object) -> SeriesId:
        if type(value) is cls:
            return value
        if type(value) is ContractId:
            return super().__new__(cls, value)
        if not isinstance(value, str) or not (CONTRACT_ID_RE.fullmatch(value) or SYMBOL_RE.fullmatch(value)):
            raise DomainError(
                f"invalid series {value!r}: expected a contract id such as CON.F.US.MES.M25 (that month's bars) or a symbol"
                " such as MES (its continuous front-month series)"
            )
        return super().__new__(cls, value)

    @property
    def is_continuous(self) -> bool:
        return "." not in self

    @property
    def symbol(self) -> str:
        """MES for both MES and CON.F.US.MES.M25."""
        return str(self) if self.is_continuous else ContractId(str(self)).symbol

    @property
    def contract_id(self) -> ContractId:
        """The contract of a contract series; a DomainError for a continuous one."""
        if self.is_continuous:
            raise DomainError(f"series {str(self)!r} is the continuous series of a symbol: expected a contract's series")
        return ContractId(str(self))
