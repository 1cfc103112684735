"""Market-hub events parsed into typed objects.

Everything the hub receives is untrusted: the parsers here never raise on bad input. An item
that cannot be trusted is returned as a `Rejected` with a reason naming the field and its
value, and the good items around it are unaffected.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from projectx_pipeline.domain.contracts import CONTRACT_ID_RE
from projectx_pipeline.domain.market import Quote, Trade

_UTC = timezone.utc
PREVIEW_CHARS = 500


@dataclass(frozen=True)
class EventLimits:
    """What a plausible event looks like; `max_future` bounds timestamps after the receiver's clock."""

    max_future: timedelta = timedelta(days=1)
    earliest: datetime = datetime(2000, 1, 1, tzinfo=_UTC)
    max_trade_size: int = 1_000_000
    # futures prices live far inside these bounds; 1e300 or 1e-300 is corruption, not a trade
    min_price: float = 1e-6
    max_price: float = 1e7
    max_payload_chars: int = 64 * 1024
    max_depth: int = 16


DEFAULT_LIMITS = EventLimits()


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item that was not accepted: why (field and value), and a truncated preview of it."""

    reason: str
    raw: str


HubEventKind = Literal["connected", "disconnected", "logout", "malformed"]


@dataclass(frozen=True, slots=True)
class HubEvent:
    """A lifecycle event of the market-hub feed. 'connected' means the feed (re)started: whatever
    happened while it was down is not replayed and must be repaired from history."""

    kind: HubEventKind
    at: datetime
    detail: str = ""


_preview_repr = reprlib.Repr()
_preview_repr.maxlevel = 4
_preview_repr.maxlist = _preview_repr.maxtuple = _preview_repr.maxdict = 12
_preview_repr.maxstring = 120
_preview_repr.maxother = 60


def preview(obj: object, limit: int = PREVIEW_CHARS) -> str:
    """A bounded, never-raising text rendering of an untrusted value (for logs and rejections)."""
    text = obj if isinstance(obj, str) else _preview_repr.repr(obj)
    return text if len(text) <= limit else text[:limit] + "…"


def _field(name: str, value: object) -> str:
    """`name=value` for a reason string; strings are quoted so that '5' and 5 read differently."""
    shown = repr(value[:60]) if isinstance(value, str) else preview(value, 60)
    return f"{name}={shown}"


# --------------------------------------------------------------------------- timestamps

_ZERO_OFFSETS = frozenset({"", "Z", "z", "+00:00", "-00:00", "+0000", "-0000", "+00", "-00"})


def _digits(text: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as '٣' or '²'.
    return text.isascii() and text.isdigit()


def parse_timestamp(text: str) -> datetime:
    """Parse the ISO-8601 forms the gateway sends into an aware UTC datetime.

    `YYYY-MM-DDTHH:MM:SS[.f…][Z|±HH:MM|±HHMM|±HH]`: 1 to 9 fractional digits (.NET sends 7),
    truncated to microseconds so that an instant never moves into the next bar; no offset means
    UTC, the gateway's time zone. Raises ValueError saying what is wrong."""
    n = len(text)
    if n < 19 or n > 40:
        raise ValueError("not an ISO-8601 timestamp (wrong length)")
    if text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":" or text[16] != ":":
        raise ValueError("not an ISO-8601 timestamp (expected YYYY-MM-DDTHH:MM:SS)")
    date_time_digits = text[0:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
    if not _digits(date_time_digits):
        raise ValueError("not an ISO-8601 timestamp (non-digit in date or time)")
    pos = 19
    micro = 0
    if pos < n and text[pos] in ".,":
        end = pos + 1
        while end < n and "0" <= text[end] <= "9":
            end += 1
        fraction = text[pos + 1 : end]
        if not 1 <= len(fraction) <= 9:
            raise ValueError("fractional seconds must have 1 to 9 digits")
        micro = int(fraction[:6].ljust(6, "0"))
        pos = end
    offset = text[pos:]
    if offset in _ZERO_OFFSETS:
        delta = None
    else:
        sign = offset[0]
        hhmm = offset[1:].replace(":", "", 1) if len(offset) == 6 and offset[3] == ":" else offset[1:]
        if sign not in "+-" or len(hhmm) not in (2, 4) or not _digits(hhmm):
            raise ValueError(f"unrecognised UTC offset {offset[:12]!r}")
        hours, minutes = int(hhmm[:2]), int(hhmm[2:] or 0)
        if hours > 23 or minutes > 59:
            raise ValueError(f"UTC offset out of range {offset!r}")
        delta = timedelta(hours=hours, minutes=minutes)
        if sign == "-":
            delta = -delta
    try:
        parsed = datetime(
            int(text[0:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
            micro,
            tzinfo=_UTC,
        )
        return parsed if delta is None else parsed - delta
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"invalid date or time ({exc})") from None


# --------------------------------------------------------------------------- payload shape


def payload_problem(obj: object, limits: EventLimits = DEFAULT_LIMITS) -> str | None:
    """Why a decoded payload is too deep or too large to trust, or None. Iterative and bounded:
    it stops as soon as a limit is crossed, so a hostile payload costs little."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    size = 0
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            return f"payload nested deeper than {limits.max_depth} levels"
        if type(node) is dict:
            size += 2 + 6 * len(node)  # lower bound of '"k":v,' per entry, before walking it
            if size > limits.max_payload_chars:
                break
            for key, value in node.items():
                size += len(key) if type(key) is str else 8
                stack.append((value, depth + 1))
        elif type(node) is list or type(node) is tuple:
            size += 2 + len(node)
            if size > limits.max_payload_chars:
                break
            stack.extend((value, depth + 1) for value in node)
        elif type(node) is str:
            size += len(node) + 2
        else:
            size += 8
        if size > limits.max_payload_chars:
            break
    if size > limits.max_payload_chars:
        return f"payload larger than {limits.max_payload_chars} characters"
    return None


def decode_hub_record(text: object, limits: EventLimits = DEFAULT_LIMITS) -> tuple[dict | None, str | None]:
    """One SignalR JSON record (without its separator) → (message, None) or (None, reason)."""
    if not isinstance(text, str):
        return None, f"record is {type(text).__name__}, expected text"
    if len(text) > limits.max_payload_chars or (
        len(text) * 4 > limits.max_payload_chars and len(text.encode("utf-8", "surrogatepass")) > limits.max_payload_chars
    ):
        return None, f"record of {len(text)} characters exceeds {limits.max_payload_chars} bytes"
    try:
        message = json.loads(text)
    except RecursionError:
        return None, f"record nested deeper than {limits.max_depth} levels"
    except ValueError as exc:
        return None, f"record is not JSON ({exc})"
    if type(message) is not dict:
        return None, f"record is a JSON {type(message).__name__}, expected an object"
    problem = payload_problem(message, limits)
    if problem:
        return None, problem
    return message, None


# --------------------------------------------------------------------------- fields

_MISSING = object()


def _positive_price(name: str, value: object, limits: EventLimits = DEFAULT_LIMITS) -> float | str:
    if value is _MISSING:
        return f"{name}: missing"
    if type(value) not in (int, float):
        return f"{_field(name, value)}: expected a number, got {type(value).__name__}"
    assert isinstance(value, (int, float))  # its type is exactly int or float (checked above)
    try:
        price = float(value)
    except OverflowError:
        return f"{_field(name, value)}: not a finite number"
    if not math.isfinite(price):
        return f"{_field(name, value)}: not a finite number"
    if price <= 0:
        return f"{_field(name, value)}: not positive"
    if not limits.min_price <= price <= limits.max_price:
        return f"{_field(name, value)}: implausible, expected between {limits.min_price:g} and {limits.max_price:g}"
    return price


def _whole_number(name: str, value: object) -> int | str:
    """An integer (an integral float such as 3.0 is accepted: JSON does not distinguish them)."""
    if value is _MISSING:
        return f"{name}: missing"
    kind = type(value)
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value) and value.is_integer():
        return int(value)
    if kind is float:
        return f"{_field(name, value)}: not an integer"
    return f"{_field(name, value)}: expected an integer, got {kind.__name__}"


def _plausible_time(name: str, value: object, latest: datetime, limits: EventLimits) -> datetime | str:
    if value is _MISSING:
        return f"{name}: missing"
    if type(value) is not str:
        return f"{_field(name, value)}: expected an ISO-8601 string, got {type(value).__name__}"
    try:
        ts = parse_timestamp(value)
    except ValueError as exc:
        return f"{_field(name, value)}: {exc}"
    if ts < limits.earliest:
        return f"{_field(name, value)}: implausible, before {limits.earliest.date().isoformat()}"
    if ts > latest:
        return f"{_field(name, value)}: implausible, more than {limits.max_future} after the receiver's clock"
    return ts


def _event_contract(args: object, subscribed: Collection[str] | None, limits: EventLimits) -> tuple[str, object] | Rejected:
    """Validate the hub's `[contractId, data]` argument list; return (contract id, data)."""
    if not (type(args) is list or type(args) is tuple) or len(args) != 2:
        return Rejected("arguments: expected [contractId, data]", preview(args))
    problem = payload_problem(args, limits)
    if problem:
        return Rejected(problem, preview(args))
    contract_id, data = args
    if type(contract_id) is not str or not CONTRACT_ID_RE.fullmatch(contract_id):
        return Rejected(f"{_field('contractId', contract_id)}: not a contract id", preview(args))
    if subscribed is not None and contract_id not in subscribed:
        return Rejected(f"{_field('contractId', contract_id)}: not subscribed", preview(args))
    return contract_id, data


def _items(data: object) -> list | None:
    """A hub payload is one object or a list of them."""
    if type(data) is dict:
        return [data]
    if type(data) is list:
        return data
    return None


def _parse_event(
    args: object,
    subscribed: Collection[str] | None,
    now: datetime | None,
    limits: EventLimits,
    noun: str,
    parse_item: Callable[[object, str, datetime, EventLimits], object],
) -> tuple[list, list[Rejected]]:
    """The envelope of every `[contractId, data]` event: (items `parse_item` accepted, rejected
    items). `parse_item` returns the parsed item or a reason string; `noun` names the item in
    reasons ("trade", "quote")."""
    checked = _event_contract(args, subscribed, limits)
    if isinstance(checked, Rejected):
        return [], [checked]
    contract_id, data = checked
    items = _items(data)
    if items is None:
        return [], [Rejected(f"data: expected a {noun} object or a list, got {type(data).__name__}", preview(data))]
    latest = (now or datetime.now(_UTC)) + limits.max_future
    parsed: list = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        result = parse_item(item, contract_id, latest, limits)
        if type(result) is str:
            where = f"{noun}[{index}] " if type(data) is list else f"{noun} "
            rejected.append(Rejected(where + result, preview(item)))
        else:
            parsed.append(result)
    return parsed, rejected


# --------------------------------------------------------------------------- trades


def _trade(item: object, contract_id: str, latest: datetime, limits: EventLimits) -> Trade | str:
    if type(item) is not dict:
        return f"expected an object, got {type(item).__name__}"
    price = _positive_price("price", item.get("price", _MISSING), limits)
    if isinstance(price, str):
        return price
    size = _whole_number("volume", item.get("volume", _MISSING))
    if isinstance(size, str):
        return size
    if size <= 0:
        return f"volume={size}: not positive"
    if size > limits.max_trade_size:
        return f"volume={size}: absurd, above {limits.max_trade_size}"
    ts = _plausible_time("timestamp", item.get("timestamp", _MISSING), latest, limits)
    if isinstance(ts, str):
        return ts
    side = item.get("type")
    if side is not None and (type(side) is not int or side not in (0, 1)):
        return f"{_field('type', side)}: expected 0 (buy) or 1 (sell)"
    return Trade(contract_id=contract_id, timestamp=ts, price=price, size=size, side=side)


def parse_trade_event(
    args: object,
    *,
    subscribed: Collection[str] | None = None,
    now: datetime | None = None,
    limits: EventLimits = DEFAULT_LIMITS,
) -> tuple[list[Trade], list[Rejected]]:
    """A `GatewayTrade` event's arguments `[contractId, data]` → (trades, rejected items).

    `data` is one trade object or a list of them. `subscribed`, when given, is the set of
    contract ids the feed asked for; events for any other contract are rejected."""
    return _parse_event(args, subscribed, now, limits, "trade", _trade)


# --------------------------------------------------------------------------- quotes

_QUOTE_PRICES = (("lastPrice", "last_price"), ("bestBid", "best_bid"), ("bestAsk", "best_ask"))


def _quote(item: object, contract_id: str, latest: datetime, limits: EventLimits) -> Quote | str:
    # Quotes may carry only the fields that changed: every field is optional, but a field
    # that is present must be valid.
    if type(item) is not dict:
        return f"expected an object, got {type(item).__name__}"
    prices: dict[str, float | None] = {}
    for wire_name, name in _QUOTE_PRICES:
        value = item.get(wire_name)
        if value is None:
            prices[name] = None
            continue
        price = _positive_price(wire_name, value, limits)
        if isinstance(price, str):
            return price
        prices[name] = price
    volume = item.get("volume")
    if volume is not None:
        volume = _whole_number("volume", volume)
        if isinstance(volume, str):
            return volume
        if volume < 0:
            return f"volume={volume}: negative"
    stamp = item.get("timestamp")
    stamp_name = "timestamp"
    if stamp is None:
        stamp, stamp_name = item.get("lastUpdated"), "lastUpdated"
    ts = None if stamp is None else _plausible_time(stamp_name, stamp, latest, limits)
    if isinstance(ts, str):
        return ts
    # `volume` is the session's running total: carried for display, never a trade size.
    return Quote(contract_id=contract_id, timestamp=ts, volume=volume, **prices)


def parse_quote_event(
    args: object,
    *,
    subscribed: Collection[str] | None = None,
    now: datetime | None = None,
    limits: EventLimits = DEFAULT_LIMITS,
) -> tuple[list[Quote], list[Rejected]]:
    """A `GatewayQuote` event's arguments `[contractId, data]` → (quotes, rejected items)."""
    return _parse_event(args, subscribed, now, limits, "quote", _quote)
