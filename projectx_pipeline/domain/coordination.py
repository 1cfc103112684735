"""Multi-timeframe coordination of trend starts (pure domain code, no I/O).

A `CoordinationRule` pairs an *anchor* trend start on one timeframe with a *trigger* of the same
type on another timeframe that becomes known soon after it, e.g. a 1h uptrend start followed
within 60 minutes by a 15m uptrend start gives one `long` signal.

Look-ahead. A detected signal's `confirm_ts` is the START label of its confirming bar; the
signal only exists once that bar has CLOSED. Coordination therefore works on

    known_at = bar_end(confirm_ts, timeframe)

and on nothing else (never the start bar, never the confirm bar's label). For each anchor
signal A, the trigger signal T chosen is the one with the earliest known_at (then the earliest
start_ts, then the smallest signal_id) among those with

    A.known_at <= T.known_at <= A.known_at + within        (equal times count as inside)

and the output is one row at `signal_ts = T.known_at`, so an output never precedes either of
its inputs being known. Opposite types never match (a rule's anchor and trigger types are equal).

Window property. An output depends only on signals with known_at in [A.known_at, T.known_at].
Hence coordinating just the signals with known_at in [t0, t1] gives exactly the full result's
rows with anchor_known_at >= t0 and signal_ts <= t1.

Bounded replay (incremental runs). Let W (the watermark) be a time such that every signal with
known_at <= W was present in the earlier runs, whose outputs with signal_ts <= W are final.
A run that re-reads only the signals with known_at >= `replay_start(W, rules)` = W - max(within)
and keeps its outputs with signal_ts > W produces exactly the full run's outputs with
signal_ts > W: such an output has anchor_known_at >= signal_ts - within > W - max(within).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from .errors import DomainError
from .timeframes import Timeframe, bar_end, bar_starts_ns, parse_timeframe
from .timestamps import aware_timestamp, from_ns, timestamps_ns, to_ns
from .trend_starts import DOWNTREND, UPTREND

SIGNAL_COLUMNS = ["signal_id", "contract_id", "timeframe", "type", "start_ts", "confirm_ts"]
# What identifies and describes an output: the columns the coordinated_signals table stores.
STORED_OUTPUT_COLUMNS = ["rule", "label", "contract_id", "signal_ts", "anchor_signal_id", "trigger_signal_id"]
OUTPUT_COLUMNS = [*STORED_OUTPUT_COLUMNS, "anchor_known_at", "trigger_known_at"]
SIGNAL_TYPES = (UPTREND, DOWNTREND)

# Rule names end up in tables, logs and URLs.
_RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RULE_KEYS = ("name", "label", "anchor", "trigger", "within_minutes")
_SIDE_KEYS = ("timeframe", "type")
_NS_PER_US = 1000


@dataclass(frozen=True)
class CoordinationRule:
    """Anchor (timeframe, type) followed within `within` by a trigger (timeframe, type)."""

    name: str
    label: str
    anchor_timeframe: Timeframe
    anchor_type: str
    trigger_timeframe: Timeframe
    trigger_type: str
    within: timedelta

    def __post_init__(self) -> None:
        where = f"coordination rule {self.name!r}"
        if not isinstance(self.name, str) or not _RULE_NAME_RE.fullmatch(self.name):
            raise DomainError(f"invalid coordination rule name {self.name!r}: expected 1-64 letters, digits, '_', '.' or '-'")
        if not isinstance(self.label, str) or not self.label.strip():
            raise DomainError(f"{where}: invalid label {self.label!r}: expected a non-empty string such as long")
        for side, tf, kind in (
            ("anchor", self.anchor_timeframe, self.anchor_type),
            ("trigger", self.trigger_timeframe, self.trigger_type),
        ):
            if not isinstance(tf, Timeframe):
                raise DomainError(f"{where}: {side} timeframe {tf!r} is not a Timeframe")
            if kind not in SIGNAL_TYPES:
                raise DomainError(f"{where}: invalid {side} type {kind!r}: expected uptrend or downtrend")
        if self.anchor_type != self.trigger_type:
            raise DomainError(f"{where}: anchor type {self.anchor_type} and trigger type {self.trigger_type} differ: opposite types never coordinate")
        if self.anchor_timeframe == self.trigger_timeframe:
            raise DomainError(f"{where}: anchor and trigger are both {self.anchor_timeframe}: expected two different timeframes")
        if not isinstance(self.within, timedelta) or self.within < timedelta(0):
            raise DomainError(f"{where}: invalid within {self.within!r}: expected a non-negative duration")

    @classmethod
    def from_dict(cls, data: Mapping) -> CoordinationRule:
        """From settings: `{name, label, anchor: {timeframe, type}, trigger: {timeframe, type}, within_minutes}`."""
        if not isinstance(data, Mapping):
            raise DomainError(f"invalid coordination rule {data!r}: expected a mapping with keys {', '.join(_RULE_KEYS)}")
        where = f"coordination rule {data.get('name')!r}"
        _check_keys(data, _RULE_KEYS, where)
        sides = {}
        for side in ("anchor", "trigger"):
            value = data[side]
            if not isinstance(value, Mapping):
                raise DomainError(f"{where}: invalid {side} {value!r}: expected a mapping with keys timeframe, type")
            _check_keys(value, _SIDE_KEYS, f"{where} {side}")
            try:
                tf = parse_timeframe(value["timeframe"])
            except DomainError as exc:
                raise DomainError(f"{where}: {side}.timeframe: {exc}") from None
            sides[side] = (tf, value["type"])
        minutes = data["within_minutes"]
        if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or not math.isfinite(minutes) or minutes < 0:
            raise DomainError(f"{where}: invalid within_minutes {minutes!r}: expected a number of minutes >= 0, e.g. 60")
        return cls(
            name=data["name"],
            label=data["label"],
            anchor_timeframe=sides["anchor"][0],
            anchor_type=sides["anchor"][1],
            trigger_timeframe=sides["trigger"][0],
            trigger_type=sides["trigger"][1],
            within=timedelta(minutes=minutes),
        )


def _check_keys(data: Mapping, expected: tuple[str, ...], where: str) -> None:
    missing = [k for k in expected if k not in data]
    unknown = [k for k in data if k not in expected]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing key(s) {', '.join(map(repr, missing))}")
        if unknown:
            problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}")
        raise DomainError(f"{where}: {'; '.join(problems)}: expected keys {', '.join(expected)}")


def parse_rules(items: Iterable[Mapping]) -> tuple[CoordinationRule, ...]:
    """Rules from a settings list; names must be unique."""
    rules = tuple(CoordinationRule.from_dict(item) for item in items)
    _check_unique_names(rules)
    return rules


def _check_unique_names(rules: tuple[CoordinationRule, ...]) -> None:
    names = [r.name for r in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DomainError(f"duplicate coordination rule name(s) {', '.join(duplicates)}: names must be unique")


def replay_start(watermark: datetime | pd.Timestamp, rules: Iterable[CoordinationRule]) -> pd.Timestamp:
    """Earliest known_at an incremental run must re-read to reproduce the full run after `watermark`."""
    longest = max((r.within for r in rules), default=timedelta(0))
    return _utc(watermark) - longest


def known_at(confirm_ts: datetime | pd.Timestamp, timeframe: Timeframe | str) -> pd.Timestamp:
    """When a signal confirmed by the bar labelled `confirm_ts` becomes known: that bar's close."""
    return pd.Timestamp(bar_end(_utc(confirm_ts).to_pydatetime(), parse_timeframe(timeframe)))


def known_at_ns(confirm_ns: np.ndarray, tf: Timeframe) -> np.ndarray:
    """Vectorized `known_at` on int64 ns; every value must be a bar label of `tf`."""
    confirm_ns = np.asarray(confirm_ns, dtype=np.int64)
    if tf.is_clock_aligned:
        return confirm_ns + tf.step_ns
    # Session-anchored and calendar bars can end early (session close): the scalar rule.
    unique, inverse = np.unique(confirm_ns, return_inverse=True)
    ends = np.array([to_ns(bar_end(from_ns(v), tf)) for v in unique.tolist()], dtype=np.int64)
    return ends[inverse]


def _utc(ts) -> pd.Timestamp:
    t = aware_timestamp(ts)
    if t is None:
        raise DomainError(f"missing time {ts!r}: expected a timezone-aware time")
    return t.tz_convert("UTC")


def _empty_output(signal_ids: pd.Series) -> pd.DataFrame:
    ts = pd.Series([], dtype="datetime64[ns, UTC]")
    return pd.DataFrame(
        {
            "rule": pd.Series([], dtype=str),
            "label": pd.Series([], dtype=str),
            "contract_id": pd.Series([], dtype=str),
            "signal_ts": ts,
            "anchor_signal_id": signal_ids.iloc[:0].reset_index(drop=True),
            "trigger_signal_id": signal_ids.iloc[:0].reset_index(drop=True),
            "anchor_known_at": ts,
            "trigger_known_at": ts,
        },
        columns=OUTPUT_COLUMNS,
    )


def _signal_name(work: pd.DataFrame, row: int) -> str:
    return f"signal {work['signal_id'].iloc[row : row + 1].tolist()[0]!r}"


def _prepare(signals: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Checked signals with int64 ns `start_ns`, `known_ns` and the parsed timeframe of each label."""
    missing = [c for c in SIGNAL_COLUMNS if c not in signals.columns]
    if missing:
        raise ValueError(f"signals are missing column(s) {', '.join(missing)}: expected {', '.join(SIGNAL_COLUMNS)}")
    work = signals.loc[:, SIGNAL_COLUMNS].reset_index(drop=True)
    start_ns, confirm_ns = timestamps_ns(work["start_ts"]), timestamps_ns(work["confirm_ts"])
    nat = np.iinfo(np.int64).min
    missing_time = (start_ns == nat) | (confirm_ns == nat)
    if missing_time.any():
        k = int(np.argmax(missing_time))
        raise ValueError(f"{_signal_name(work, k)}: start_ts or confirm_ts is missing")
    bad_type = ~work["type"].isin(SIGNAL_TYPES).to_numpy()
    if bad_type.any():
        k = int(np.argmax(bad_type))
        raise ValueError(f"{_signal_name(work, k)}: invalid type {work['type'].iloc[k]!r}: expected uptrend or downtrend")

    timeframes = {}
    known_ns = np.empty(len(work), dtype=np.int64)
    labels = work["timeframe"].to_numpy(dtype=object)
    for label in pd.unique(labels):
        rows = labels == label
        try:
            tf = timeframes[label] = parse_timeframe(label)
        except DomainError as exc:
            k = int(np.argmax(rows))
            raise ValueError(f"{_signal_name(work, k)}: {exc}") from None
        confirm = confirm_ns[rows]
        misaligned = bar_starts_ns(confirm, tf) != confirm
        if misaligned.any():
            k = int(np.flatnonzero(rows)[np.argmax(misaligned)])
            raise ValueError(
                f"{_signal_name(work, k)}: confirm_ts {pd.Timestamp(int(confirm_ns[k]), tz='UTC').isoformat()} is not the label of a {tf} bar"
            )
        known = known_ns[rows] = known_at_ns(confirm, tf)
        # A session-anchored label in the daily maintenance break would "close" as it opens.
        empty_bar = known <= confirm
        if empty_bar.any():
            k = int(np.flatnonzero(rows)[np.argmax(empty_bar)])
            raise ValueError(
                f"{_signal_name(work, k)}: confirm_ts {pd.Timestamp(int(confirm_ns[k]), tz='UTC').isoformat()} "
                f"is not the label of a {tf} bar inside a trading session"
            )
    work["start_ns"] = start_ns
    work["known_ns"] = known_ns
    return work, timeframes


def coordinate(signals: pd.DataFrame, rules: Iterable[CoordinationRule]) -> pd.DataFrame:
    """Coordinated signals of every rule, per contract (see the module docstring).

    `signals` has columns SIGNAL_COLUMNS (others are ignored); `timeframe` holds labels such as
    '1h'. The result has OUTPUT_COLUMNS, one row per anchor signal that found a trigger, ordered
    by (contract_id, signal_ts, rule, anchor_known_at, anchor_signal_id); it does not depend on
    the order of the input rows."""
    rules = tuple(rules)
    _check_unique_names(rules)
    work, timeframes = _prepare(signals)
    parts = []
    for rule in rules:
        anchors = work[_selects(work, timeframes, rule.anchor_timeframe, rule.anchor_type)]
        triggers = work[_selects(work, timeframes, rule.trigger_timeframe, rule.trigger_type)]
        if anchors.empty or triggers.empty:
            continue
        within_ns = rule.within // timedelta(microseconds=1) * _NS_PER_US
        # Earliest known_at, then earliest start, then smallest id: first in this order wins.
        triggers = triggers.sort_values(["known_ns", "start_ns", "signal_id"], kind="mergesort")
        trigger_groups = dict(tuple(triggers.groupby("contract_id", sort=False)))
        for contract_id, contract_anchors in anchors.groupby("contract_id", sort=False):
            contract_triggers = trigger_groups.get(contract_id)
            if contract_triggers is None:
                continue
            trigger_known = contract_triggers["known_ns"].to_numpy()
            anchor_known = contract_anchors["known_ns"].to_numpy()
            pos = np.searchsorted(trigger_known, anchor_known, side="left")
            found = pos < trigger_known.size
            pos = np.minimum(pos, trigger_known.size - 1)
            found &= trigger_known[pos] <= anchor_known + within_ns
            if not found.any():
                continue
            matched = contract_triggers.iloc[pos[found]]
            parts.append(
                pd.DataFrame(
                    {
                        "rule": rule.name,
                        "label": rule.label,
                        "contract_id": contract_id,
                        "signal_ts": matched["known_ns"].to_numpy(),
                        "anchor_signal_id": contract_anchors["signal_id"].to_numpy()[found],
                        "trigger_signal_id": matched["signal_id"].to_numpy(),
                        "anchor_known_at": anchor_known[found],
                        "trigger_known_at": matched["known_ns"].to_numpy(),
                    }
                )
            )
    if not parts:
        return _empty_output(work["signal_id"])
    out = pd.concat(parts, ignore_index=True)
    for column in ("signal_ts", "anchor_known_at", "trigger_known_at"):
        out[column] = pd.to_datetime(out[column].to_numpy(), utc=True)
    out = out.sort_values(["contract_id", "signal_ts", "rule", "anchor_known_at", "anchor_signal_id"], kind="mergesort")
    return out.reset_index(drop=True)[OUTPUT_COLUMNS]


def _selects(work: pd.DataFrame, timeframes: dict, tf: Timeframe, kind: str) -> np.ndarray:
    labels = [label for label, parsed in timeframes.items() if parsed == tf]
    return (work["timeframe"].isin(labels) & (work["type"] == kind)).to_numpy()
