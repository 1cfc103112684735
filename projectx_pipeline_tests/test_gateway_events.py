"""Parsing of market-hub events: every ISO form, every rejection, and fuzzing (never raises)."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectx_pipeline.domain.market import Quote, Trade
from projectx_pipeline.gateway.events import (
    DEFAULT_LIMITS,
    EventLimits,
    Rejected,
    decode_hub_record,
    parse_quote_event,
    parse_timestamp,
    parse_trade_event,
    payload_problem,
)

from .support.market import MES

pytestmark = pytest.mark.timeout(120)

UTC = timezone.utc
ES = "CON.F.US.EP.M25"
NOW = datetime(2025, 3, 17, 15, 0, tzinfo=UTC)


def good_trade(i: int = 0) -> dict:
    return {
        "symbolId": "F.US.MES",
        "price": 5719.25 + 0.25 * i,
        "timestamp": f"2025-03-17T14:03:{i % 60:02d}.123+00:00",
        "type": i % 2,
        "volume": 1 + i,
    }


def expected_trade(i: int = 0) -> Trade:
    return Trade(MES, datetime(2025, 3, 17, 14, 3, i % 60, 123000, tzinfo=UTC), 5719.25 + 0.25 * i, 1 + i, i % 2)


def trades_of(data, **kwargs):
    return parse_trade_event([MES, data], subscribed={MES}, now=NOW, **kwargs)


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2025-03-17T14:03:21Z", datetime(2025, 3, 17, 14, 3, 21, tzinfo=UTC)),
        ("2025-03-17T14:03:21+00:00", datetime(2025, 3, 17, 14, 3, 21, tzinfo=UTC)),
        ("2025-03-17T14:03:21", datetime(2025, 3, 17, 14, 3, 21, tzinfo=UTC)),
        ("2025-03-17 14:03:21z", datetime(2025, 3, 17, 14, 3, 21, tzinfo=UTC)),
        ("2025-03-17T14:03:21.1Z", datetime(2025, 3, 17, 14, 3, 21, 100000, tzinfo=UTC)),
        ("2025-03-17T14:03:21.123+00:00", datetime(2025, 3, 17, 14, 3, 21, 123000, tzinfo=UTC)),
        ("2025-03-17T14:03:21.123456Z", datetime(2025, 3, 17, 14, 3, 21, 123456, tzinfo=UTC)),
        # .NET sends 7 fractional digits (100 ns ticks): truncated, never rounded into the next second.
        ("2025-03-17T14:03:21.9999999+00:00", datetime(2025, 3, 17, 14, 3, 21, 999999, tzinfo=UTC)),
        ("2025-03-17T14:03:21.1234567Z", datetime(2025, 3, 17, 14, 3, 21, 123456, tzinfo=UTC)),
        ("2025-03-17T16:03:21.5+02:00", datetime(2025, 3, 17, 14, 3, 21, 500000, tzinfo=UTC)),
        ("2025-03-17T09:03:21-0500", datetime(2025, 3, 17, 14, 3, 21, tzinfo=UTC)),
        ("2025-03-17T23:33:21+09:30", datetime(2025, 3, 17, 14, 3, 21, tzinfo=UTC)),
        ("2025-03-17T14:03:21+00", datetime(2025, 3, 17, 14, 3, 21, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_accepts_every_iso_form(text, expected):
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-03-17",
        "2025-03-17T14:03",
        "2025/03/17T14:03:21Z",
        "2025-13-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-03-17T24:00:00Z",
        "2025-03-17T14:03:61Z",
        "2025-03-17T14:03:21.Z",
        "2025-03-17T14:03:21.1234567890Z",
        "2025-03-17T14:03:21+24:00",
        "2025-03-17T14:03:21+5:00",
        "2025-03-17T14:03:21 UTC",
        "2O25-03-17T14:03:21Z",
        "２０２５-03-17T14:03:21Z",
        "2025-03-17T14:03:2١Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_parse_timestamp_rejects_malformed_text(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


_SUFFIXES = ["Z", "z", "+00:00", "", "+0000"]


@given(
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    ticks=st.integers(0, 9_999_999),
    digits=st.integers(0, 7),
    suffix=st.sampled_from(_SUFFIXES),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
)
def test_parse_timestamp_roundtrips_generated_forms(moment, ticks, digits, suffix, offset_minutes):
    moment = moment.replace(microsecond=0)
    fraction = f"{ticks:07d}"[:digits]
    micro = int(fraction[:6].ljust(6, "0")) if digits else 0
    if offset_minutes and not suffix:
        sign = "+" if offset_minutes > 0 else "-"
        suffix = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
        local = moment + timedelta(minutes=offset_minutes)
    else:
        local = moment
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + suffix
    assert parse_timestamp(text) == moment.replace(microsecond=micro, tzinfo=UTC)


@given(st.text(max_size=45))
def test_parse_timestamp_only_ever_raises_value_error(text):
    try:
        parsed = parse_timestamp(text)
    except ValueError:
        return
    assert parsed.tzinfo is UTC


def test_parse_timestamp_is_fast():
    texts = [f"2025-03-17T14:{i % 60:02d}:{i % 59:02d}.{i:07d}+00:00" for i in range(50_000)]
    started = time.perf_counter()
    for text in texts:
        parse_timestamp(text)
    assert time.perf_counter() - started < 2.0


# --------------------------------------------------------------------------- trades


def test_single_trade_object_and_list_are_both_accepted():
    assert trades_of(good_trade()) == ([expected_trade()], [])
    trades, rejected = trades_of([good_trade(i) for i in range(5)])
    assert trades == [expected_trade(i) for i in range(5)] and rejected == []
    assert trades_of([]) == ([], [])


def test_side_is_optional():
    item = good_trade()
    del item["type"]
    trades, _ = trades_of(item)
    assert trades[0].side is None


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("price", float("nan"), ["price=nan", "finite"]),
        ("price", float("inf"), ["price=inf", "finite"]),
        ("price", 0, ["price=0", "not positive"]),
        ("price", -5.25, ["price=-5.25", "not positive"]),
        ("price", "5719.25", ["price='5719.25'", "number"]),
        ("price", True, ["price=True", "number"]),
        ("price", None, ["price=None", "number"]),
        ("price", 10**400, ["price=", "finite"]),
        ("volume", 0, ["volume=0", "not positive"]),
        ("volume", -3, ["volume=-3", "not positive"]),
        ("volume", 2.5, ["volume=2.5", "integer"]),
        ("volume", float("nan"), ["volume=nan", "integer"]),
        ("volume", "3", ["volume='3'", "integer"]),
        ("volume", False, ["volume=False", "integer"]),
        ("volume", 1_000_001, ["volume=1000001", "absurd"]),
        ("timestamp", "yesterday", ["timestamp='yesterday'", "ISO-8601"]),
        ("timestamp", 1742220201, ["timestamp=1742220201", "ISO-8601"]),
        ("timestamp", "1999-12-31T23:59:59Z", ["timestamp='1999-12-31T23:59:59Z'", "implausible"]),
        ("timestamp", "2025-03-18T15:00:01Z", ["timestamp='2025-03-18T15:00:01Z'", "implausible"]),
        ("type", 2, ["type=2", "0 (buy) or 1 (sell)"]),
        ("type", "buy", ["type='buy'", "0 (buy) or 1 (sell)"]),
    ],
)
def test_bad_trade_fields_are_rejected_with_the_field_and_value(field, value, words):
    item = good_trade()
    item[field] = value
    trades, rejected = trades_of(item)
    assert trades == []
    assert len(rejected) == 1
    for word in words:
        assert word in rejected[0].reason


@pytest.mark.parametrize("field", ["price", "volume", "timestamp"])
def test_missing_trade_fields_are_rejected(field):
    item = good_trade()
    del item[field]
    _, rejected = trades_of(item)
    assert rejected[0].reason == f"trade {field}: missing"


def test_integral_float_volume_is_accepted():
    item = good_trade()
    item["volume"] = 4.0
    trades, _ = trades_of(item)
    assert trades[0].size == 4 and type(trades[0].size) is int


def test_future_bound_is_a_parameter():
    item = good_trade()
    item["timestamp"] = "2025-03-17T15:30:00Z"  # 30 minutes after NOW
    assert len(trades_of(item)[0]) == 1
    strict = EventLimits(max_future=timedelta(minutes=5))
    trades, rejected = trades_of(item, limits=strict)
    assert trades == [] and "implausible" in rejected[0].reason


def test_future_bound_defaults_to_the_receiving_machine_clock():
    item = good_trade()
    item["timestamp"] = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    assert len(parse_trade_event([MES, item])[0]) == 1
    item["timestamp"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    assert parse_trade_event([MES, item])[1][0].reason.startswith("trade timestamp=")


def test_unsubscribed_and_malformed_contracts_are_rejected():
    trades, rejected = parse_trade_event([ES, good_trade()], subscribed={MES}, now=NOW)
    assert trades == [] and "contractId='CON.F.US.EP.M25': not subscribed" in rejected[0].reason
    for bad_id in ["MES", "", None, 42, "CON.F.US.MES.M25; DROP TABLE bars"]:
        trades, rejected = parse_trade_event([bad_id, good_trade()], now=NOW)
        assert trades == [] and "contractId=" in rejected[0].reason


@pytest.mark.parametrize("args", [None, 42, "x", {}, [], [MES], [MES, good_trade(), 3], {"contractId": MES}])
def test_bad_argument_lists_are_rejected(args):
    trades, rejected = parse_trade_event(args, now=NOW)
    assert trades == [] and rejected[0].reason.startswith("arguments:")


@pytest.mark.parametrize("data", [None, 5, "trade", 1.5, True])
def test_bad_data_is_rejected(data):
    trades, rejected = trades_of(data)
    assert trades == [] and rejected[0].reason.startswith("data:")


def test_oversized_and_deeply_nested_payloads_are_rejected():
    big = [good_trade(i) for i in range(2000)]  # about 190 KB of JSON
    assert len(json.dumps(big)) > 64 * 1024
    trades, rejected = trades_of(big)
    assert trades == [] and "larger than 65536" in rejected[0].reason
    nested: object = good_trade()
    for _ in range(50):
        nested = [nested]
    trades, rejected = trades_of(nested)
    assert trades == [] and "nested deeper" in rejected[0].reason
    assert len(rejected[0].raw) <= 501


def test_bad_items_do_not_affect_the_good_ones_around_them():
    bad_items = [5, {"price": 1}, {**good_trade(), "price": float("nan")}, {**good_trade(), "volume": 0}, None]
    data = []
    for i, bad in enumerate(bad_items):
        data += [good_trade(i), bad]
    trades, rejected = trades_of(data)
    assert trades == [expected_trade(i) for i in range(len(bad_items))]
    assert [r.reason.split(" ")[0] for r in rejected] == [f"trade[{2 * i + 1}]" for i in range(len(bad_items))]


# --------------------------------------------------------------------------- fuzzing

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=40,
)
_adversarial_field = st.one_of(
    _json_values,
    st.sampled_from([0, -1, 1e300, -0.0, float("nan"), float("inf"), 10**30, 2**63, "", "NaN", [], {}]),
    st.sampled_from(["2025-03-17T14:03:21Z", "1970-01-01T00:00:00Z", "3025-01-01T00:00:00Z", "2025-03-17T14:03:21.12345678Z"]),
)
_adversarial_trade = st.dictionaries(st.sampled_from(["price", "volume", "timestamp", "type", "symbolId", "extra"]), _adversarial_field, max_size=6)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(args=_json_values)
def test_fuzz_random_arguments_never_raise(args):
    for parse in (parse_trade_event, parse_quote_event):
        items, rejected = parse(args, subscribed={MES}, now=NOW)
        assert all(isinstance(r, Rejected) and r.reason for r in rejected)
        assert items == []  # random arguments cannot name a subscribed contract


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.one_of(_adversarial_trade, _json_values), max_size=8), good=st.lists(st.integers(0, 50), max_size=5))
def test_fuzz_adversarial_trades_are_rejected_and_good_ones_kept(data, good):
    mixed = list(data)
    for position, i in enumerate(good):
        mixed.insert(min(position * 2, len(mixed)), good_trade(i))
    trades, rejected = trades_of(mixed)
    assert len(trades) + len(rejected) == len(mixed)
    for trade in trades:
        assert math.isfinite(trade.price) and trade.price > 0
        assert type(trade.size) is int and 0 < trade.size <= DEFAULT_LIMITS.max_trade_size
        assert datetime(2000, 1, 1, tzinfo=UTC) <= trade.timestamp <= NOW + timedelta(days=1)
    for reject in rejected:
        assert reject.reason.startswith("trade[") and len(reject.raw) <= 501
    kept = {(t.price, t.size, t.timestamp) for t in trades}
    for i in good:
        e = expected_trade(i)
        assert (e.price, e.size, e.timestamp) in kept


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200), _json_values.map(lambda v: json.dumps(v)), st.binary(max_size=50).map(lambda b: b.decode("latin-1"))))
def test_fuzz_decode_hub_record_never_raises(text):
    message, problem = decode_hub_record(text)
    assert (message is None) != (problem is None)
    if message is not None:
        assert isinstance(message, dict)


# --------------------------------------------------------------------------- raw records


def test_decode_hub_record_rejects_oversized_nested_and_non_json_text():
    assert decode_hub_record('{"type":6}') == ({"type": 6}, None)
    assert "exceeds 65536" in decode_hub_record('{"a":"' + "x" * 70_000 + '"}')[1]
    # Multi-byte text: 20,000 characters but 80 KB of UTF-8.
    assert "exceeds" in decode_hub_record('{"a":"' + "\U0001f600" * 20_000 + '"}')[1]
    assert "nested deeper" in decode_hub_record("[" * 5000 + "]" * 5000)[1]
    assert "nested deeper" in decode_hub_record('{"a":' * 40 + "1" + "}" * 40)[1]
    assert "not JSON" in decode_hub_record("{not json")[1]
    assert "expected an object" in decode_hub_record("[1, 2]")[1]
    assert decode_hub_record(b"{}")[1].startswith("record is bytes")


def test_payload_problem_is_bounded_on_huge_inputs():
    huge = list(range(10_000_000))
    started = time.perf_counter()
    assert "larger than" in payload_problem(huge)
    assert time.perf_counter() - started < 0.5


# --------------------------------------------------------------------------- quotes


def test_quote_carries_session_volume_and_partial_fields():
    data = {
        "symbol": "F.US.MES",
        "lastPrice": 5719.25,
        "bestBid": 5719.0,
        "bestAsk": 5719.5,
        "volume": 1_234_567,
        "timestamp": "2025-03-17T14:03:21.1234567Z",
        "lastUpdated": "2025-03-17T14:03:20Z",
    }
    quotes, rejected = parse_quote_event([MES, data], subscribed={MES}, now=NOW)
    assert rejected == []
    assert quotes == [Quote(MES, datetime(2025, 3, 17, 14, 3, 21, 123456, tzinfo=UTC), 5719.25, 5719.0, 5719.5, 1_234_567)]
    # The session total is carried on the Quote only: a quote never becomes a Trade.
    assert not any(isinstance(q, Trade) for q in quotes)
    partial, _ = parse_quote_event([MES, {"bestBid": 5719.0, "lastUpdated": "2025-03-17T14:03:20Z"}], now=NOW)
    assert partial == [Quote(MES, datetime(2025, 3, 17, 14, 3, 20, tzinfo=UTC), None, 5719.0, None, None)]
    assert parse_quote_event([MES, {}], now=NOW) == ([Quote(MES, None)], [])


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("lastPrice", float("nan"), "lastPrice=nan"),
        ("bestBid", -1, "bestBid=-1"),
        ("bestAsk", "x", "bestAsk='x'"),
        ("volume", -5, "volume=-5"),
        ("volume", 1.5, "volume=1.5"),
        ("timestamp", "soon", "timestamp='soon'"),
        ("timestamp", "1990-01-01T00:00:00Z", "implausible"),
    ],
)
def test_bad_quote_fields_are_rejected(field, value, words):
    quotes, rejected = parse_quote_event([MES, {"lastPrice": 5719.25, field: value}], now=NOW)
    assert quotes == [] and words in rejected[0].reason
