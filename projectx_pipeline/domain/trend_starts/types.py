"""What the detector returns: confirmed trend starts (§6.3), raw emissions (§4.3) and the
pending candidates (§6.4)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Signal:
    """A confirmed trend start (§6.3).

    `start_bar`/`confirm_bar` are 1-based bar numbers of the input; `confirm_ts` is the START
    label of the confirming bar: the signal is only known when that bar closes.
    `start_price` is the start bar's low for an uptrend and its high for a downtrend (the
    extreme the trend starts from).
    """

    type: str
    start_bar: int
    confirm_bar: int
    rule: str
    start_ts: pd.Timestamp
    confirm_ts: pd.Timestamp
    start_price: float


@dataclass(frozen=True)
class Emission:
    """A signal as emitted by §4.3, before §6 ordering and de-duplication."""

    type: str
    start_bar: int
    confirm_bar: int
    rule: str


@dataclass(frozen=True)
class PendingStarts:
    """The live PUS / PDS candidates (§6.4): bar numbers, or None."""

    uptrend_bar: int | None
    downtrend_bar: int | None
