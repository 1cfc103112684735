"""Hostile input and security (issue 8).

* Hostile input: hypothesis feeds the hub's receive path (SignalR records → `decode_hub_record`
  → `parse_trade_event` / `parse_quote_event`, and the hub's own protocol and dispatch) and the
  live aggregator with thousands of random and adversarial payloads. Nothing raises; every bad
  item is rejected with a reason that names what is wrong; the good items around them are parsed
  exactly and the bars built from them equal `aggregate_trades` of the good trades alone. The
  trend detector and the pandera checks reject malformed bars with a clear error.
* Secrets: the daemon and a Dagster backfill run with a recognisable API key (from the
  environment), successfully and with a wrong key; the key appears in no log record (every
  logger at DEBUG, signalrcore's and urllib3's included), no Dagster event or run record and no
  exception text.
* SQL: every statement is parameterized (a scan of the package's source, with an audited
  allow-list of the constant interpolations), and injection-shaped contract ids and timeframes
  are refused at every public entry point before any SQL or request is made.
* Binding: the simulator, the local database and `projectx dev` bind to 127.0.0.1 by default
  (the listening sockets themselves are checked); the control endpoint exists only in the
  simulator; the local database asks for a password on every connection.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import math
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectx_pipeline import logs as platform_logs
from projectx_pipeline.domain.aggregation import BarAggregator, aggregate_trades, split_valid
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import Quote, Trade, normalize_bars
from projectx_pipeline.domain.quality import validate_bars
from projectx_pipeline.domain.timeframes import Timeframe, parse_timeframe, parse_timeframes
from projectx_pipeline.domain.timestamps import to_ns
from projectx_pipeline.domain.trend_starts import (
    TrendStartDetector,
    detect_trend_starts_frame,
    validate_bars_for_detection,
)
from projectx_pipeline.gateway.client import GatewayClient
from projectx_pipeline.gateway.config import GatewayConfig
from projectx_pipeline.gateway.errors import GatewayClientError, GatewayError
from projectx_pipeline.gateway.events import decode_hub_record, parse_quote_event, parse_trade_event
from projectx_pipeline.gateway.hub import MarketHub, _Connection, _SupervisedJsonProtocol
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.storage.bars import last_bar_times, read_bars, read_live_versions, upsert_bars
from projectx_pipeline.storage.db import connect

from .support.dagster import instance_with_contracts
from .support.database import table_names
from .support.market import MES, TIMEFRAMES
from .support.paths import REPO

PACKAGE = REPO / "projectx_pipeline"
UTC = timezone.utc
RS = "\x1e"

# =========================================================================== hostile input: the hub

T0 = datetime(2025, 3, 17, 13, 58, 30, tzinfo=UTC)  # the good trades start here
NOW = T0 + timedelta(days=1)  # the receiver's clock (timestamps up to NOW + 1 day are plausible)
T0_NS = int(T0.timestamp()) * 1_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FUZZ_TIMEFRAMES = parse_timeframes("1m,5m,1h,1d")
_MISSING = object()


def _iso(ns: int, style: int) -> str:
    """The ISO forms the gateway is seen to use (and two it could): ms resolution."""
    ms = ns // 1_000_000
    ts = EPOCH + timedelta(seconds=ms // 1000)
    frac = ms % 1000
    style %= 5
    if style == 0:
        return ts.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:03d}+00:00"
    if style == 1:
        return ts.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac * 10_000:07d}Z"  # .NET ticks
    if style == 2:
        return ts.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:03d}Z" if frac else "Z")
    if style == 3:  # another offset: the same instant
        return (ts + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:03d}+02:00"
    return ts.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:03d}"  # no offset: UTC


def _record(arguments_json: str, target: str = "GatewayTrade") -> str:
    return '{"type":1,"target":"' + target + '","arguments":' + arguments_json + "}"


def _good_item(ns: int, ticks: int, size: int, side, style: int) -> tuple[dict, Trade]:
    price = 5000.0 + 0.25 * ticks
    item = {"symbolId": "F.US.MES", "price": price, "timestamp": _iso(ns, style), "type": side, "volume": size}
    if side is None:
        del item["type"]
    trade = Trade(MES, EPOCH + timedelta(milliseconds=ns // 1_000_000), price, size, side)
    return item, trade


# Adversarial values of one field of an otherwise good trade, as raw JSON text (NaN, Infinity,
# 1e400 and 400-digit integers are not expressible as Python floats but are valid to the parser).
BAD_FIELDS: list[tuple[str, object]] = [
    ("price", '"5700.25"'),
    ("price", "null"),
    ("price", "true"),
    ("price", "[]"),
    ("price", "{}"),
    ("price", "NaN"),
    ("price", "Infinity"),
    ("price", "-Infinity"),
    ("price", "1e400"),
    ("price", "-1e400"),
    ("price", "-5700.25"),
    ("price", "0"),
    ("price", "-0.0"),
    ("price", "1" + "0" * 400),
    ("price", _MISSING),
    ("volume", "-3"),
    ("volume", "0"),
    ("volume", "2.5"),
    ("volume", "NaN"),
    ("volume", "Infinity"),
    ("volume", '"3"'),
    ("volume", "null"),
    ("volume", "true"),
    ("volume", "1000001"),
    ("volume", "1e30"),
    ("volume", "1" + "0" * 40),
    ("volume", "-" + "9" * 30),
    ("volume", _MISSING),
    ("timestamp", '"1900-01-01T00:00:00Z"'),
    ("timestamp", '"1999-12-31T23:59:59.999Z"'),
    ("timestamp", '"0001-01-01T00:00:00Z"'),
    ("timestamp", '"9999-12-31T23:59:59Z"'),
    ("timestamp", '"2100-01-01T00:00:00Z"'),
    ("timestamp", '"2025-13-45T25:61:00Z"'),
    ("timestamp", '""'),
    ("timestamp", "12345"),
    ("timestamp", "1742220000000"),
    ("timestamp", "null"),
    ("timestamp", '"2025-03-17T14:03:21+25:00"'),
    ("timestamp", '"2025-03-17T14:03:21.1234567890Z"'),
    ("timestamp", '"\u0662\u0660\u0662\u0665-03-17T14:03:21Z"'),
    ("timestamp", '"' + "9" * 300 + '"'),
    ("timestamp", '"2025-03-17T14:03:21Z; DROP TABLE ohlc_bars;--"'),
    ("timestamp", _MISSING),
    ("type", "2"),
    ("type", "-1"),
    ("type", '"buy"'),
    ("type", "true"),
    ("type", "1.0"),
]

# Whole events that are wrong: (name, arguments JSON or a whole record, words the reason must contain).
_TRADE = '{"symbolId":"F.US.MES","price":5701.25,"timestamp":"2025-03-17T14:00:00Z","type":0,"volume":1}'
_NESTED = "[" * 40 + _TRADE + "]" * 40
BAD_EVENTS: list[tuple[str, str, str]] = [
    ("unknown contract", _record(f'["CON.F.US.ZZZ.Z99",{_TRADE}]'), "not subscribed"),
    ("another real contract", _record(f'["CON.F.US.EP.M25",{_TRADE}]'), "not subscribed"),
    ("injection-shaped contract", _record(f'["CON.F.US.MES.M25\'; DROP TABLE ohlc_bars;--",{_TRADE}]'), "not a contract id"),
    ("lower-case contract", _record(f'["con.f.us.mes.m25",{_TRADE}]'), "not a contract id"),
    ("numeric contract", _record(f"[5,{_TRADE}]"), "not a contract id"),
    ("null contract", _record(f"[null,{_TRADE}]"), "not a contract id"),
    ("missing data", _record(f'["{MES}"]'), "arguments"),
    ("missing contract", _record(f"[{_TRADE}]"), "arguments"),
    ("extra argument", _record(f'["{MES}",{_TRADE},{_TRADE}]'), "arguments"),
    ("no arguments", _record("[]"), "arguments"),
    ("arguments object", _record('{"contractId":"' + MES + '"}'), "arguments"),
    ("arguments string", _record('"' + MES + '"'), "arguments"),
    ("data number", _record(f'["{MES}",5]'), "data"),
    ("data string", _record(f'["{MES}","trade"]'), "data"),
    ("data null", _record(f'["{MES}",null]'), "data"),
    ("data bool", _record(f'["{MES}",true]'), "data"),
    ("deeply nested data", _record(f'["{MES}",{_NESTED}]'), "nested deeper"),
    ("deeply nested record", "[" * 100_000 + "]" * 100_000, "record"),
    ("oversized list", _record(f'["{MES}",[' + ",".join([_TRADE] * 800) + "]]"), "exceeds"),
    ("oversized string", _record(f'["{MES}",' + '{"price":1,"volume":1,"timestamp":"' + "x" * 70_000 + '"}]'), "exceeds"),
    ("multi-byte oversized", _record(f'["{MES}",["' + "\U0001f600" * 17_000 + '"]]'), "exceeds"),
    ("not JSON", '{"type":1,"target":"GatewayTrade","arguments":["' + MES + '",{"price":', "not JSON"),
    ("JSON array record", "[1,2,3]", "expected an object"),
    ("JSON string record", '"GatewayTrade"', "expected an object"),
    ("bare NaN record", "NaN", "expected an object"),
]

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
_good_spec = st.tuples(
    st.integers(0, 95_000),  # ms after the previous good trade: bars of every timeframe open and close
    st.integers(-200, 200),  # price in ticks around 5000
    st.integers(1, 50),  # size
    st.sampled_from([0, 1, None]),  # side
    st.integers(0, 4),  # timestamp form
)
_event = st.one_of(
    st.tuples(st.just("good"), st.lists(_good_spec, min_size=1, max_size=4)),
    st.tuples(st.just("bad_field"), st.sampled_from(range(len(BAD_FIELDS))), _good_spec),
    st.tuples(
        st.just("mixed"),
        st.lists(
            st.one_of(
                st.tuples(st.just("good"), _good_spec),
                st.tuples(st.just("bad"), st.sampled_from(range(len(BAD_FIELDS))), _good_spec),
                st.tuples(st.just("junk"), _json_values.filter(lambda v: not isinstance(v, dict))),
            ),
            min_size=2,
            max_size=6,
        ),
    ),
    st.tuples(st.just("bad_event"), st.sampled_from(range(len(BAD_EVENTS)))),
    st.tuples(st.just("random_args"), _json_values),
    st.tuples(st.just("random_text"), st.text(max_size=60).filter(lambda t: RS not in t)),
    st.tuples(st.just("quote"), _good_spec),
    st.tuples(
        st.just("bad_quote"),
        st.sampled_from(["lastPrice", "bestBid", "bestAsk", "volume", "timestamp", "lastUpdated"]),
        st.sampled_from(['"x"', "NaN", "-1", "Infinity", "[]", '"2025-02-30T00:00:00Z"', "true"]),
    ),
)


class _Expected:
    """What a stream of records must produce."""

    def __init__(self):
        self.records: list[str] = []
        self.trades: list[list[Trade]] = []  # per record
        self.quotes: list[int] = []  # per record
        self.rejections: list[int | None] = []  # per record; None: not determined (random text)
        self.words: list[list[str]] = []  # per record: words each reason must contain, in order
        self.clock_ms = 0

    def next_ns(self, gap_ms: int) -> int:
        self.clock_ms += gap_ms
        return T0_NS + self.clock_ms * 1_000_000

    def add(self, record: str, trades=(), quotes: int = 0, rejections: int | None = 0, words=()):
        self.records.append(record)
        self.trades.append(list(trades))
        self.quotes.append(quotes)
        self.rejections.append(rejections)
        self.words.append(list(words))


def _bad_item_json(index: int, spec) -> tuple[str, str]:
    """A good trade with one field replaced by an adversarial raw JSON value → (JSON, field)."""
    field, raw = BAD_FIELDS[index]
    item, _ = _good_item(T0_NS, spec[1], spec[2], spec[3], spec[4])
    item[field] = "@@RAW@@"
    if raw is _MISSING:
        del item[field]
        return json.dumps(item), field
    return json.dumps(item).replace('"@@RAW@@"', str(raw)), field


def build_stream(events) -> _Expected:
    exp = _Expected()
    for event in events:
        kind = event[0]
        if kind == "good":
            items, trades = zip(*(_good_item(exp.next_ns(s[0]), *s[1:]) for s in event[1]))
            data = items[0] if len(items) == 1 else list(items)
            exp.add(_record(json.dumps([MES, data])), trades)
        elif kind == "bad_field":
            text, field = _bad_item_json(event[1], event[2])
            exp.add(_record(f'["{MES}",{text}]'), rejections=1, words=[field])
        elif kind == "mixed":
            parts, trades, words = [], [], []
            for entry in event[1]:
                if entry[0] == "good":
                    item, trade = _good_item(exp.next_ns(entry[1][0]), *entry[1][1:])
                    parts.append(json.dumps(item))
                    trades.append(trade)
                elif entry[0] == "bad":
                    text, field = _bad_item_json(entry[1], entry[2])
                    parts.append(text)
                    words.append(f"trade[{len(parts) - 1}] ")
                else:
                    parts.append(json.dumps(entry[1]))
                    words.append(f"trade[{len(parts) - 1}] expected an object")
            exp.add(_record(f'["{MES}",[' + ",".join(parts) + "]]"), trades, rejections=len(words), words=words)
        elif kind == "bad_event":
            _, record, word = BAD_EVENTS[event[1]]
            exp.add(record, rejections=1, words=[word])
        elif kind == "random_args":
            exp.add(_record(json.dumps(event[1])), rejections=1)
        elif kind == "random_text":
            exp.add(event[1], rejections=None)
        elif kind == "quote":
            ns = exp.next_ns(event[1][0])
            price = 5000.0 + 0.25 * event[1][1]
            quote = {
                "symbol": "F.US.MES",
                "lastPrice": price,
                "bestBid": price,
                "bestAsk": price + 0.25,
                "volume": 1000 + event[1][2],
                "lastUpdated": _iso(ns, event[1][4]),
                "timestamp": _iso(ns, event[1][4]),
            }
            exp.add(_record(json.dumps([MES, quote]), "GatewayQuote"), quotes=1)
        else:  # bad_quote
            field, raw = event[1], event[2]
            quote = '{"symbol":"F.US.MES","lastPrice":5001.0,"' + field + '":' + raw + "}"
            exp.add(_record(f'["{MES}",{quote}]', "GatewayQuote"), rejections=1, words=[field])
    return exp


def parse_record(record: str) -> tuple[list[Trade], list[Quote], list[str]]:
    """The public pipeline the hub runs for one record: decode, then the event parsers."""
    message, problem = decode_hub_record(record)
    if message is None:
        return [], [], [problem]
    if message.get("type") != 1:
        return [], [], []  # pings, completions, ...: not events
    target, args = message.get("target"), message.get("arguments")
    if target == "GatewayTrade":
        trades, rejected = parse_trade_event(args, subscribed={MES}, now=NOW)
        return trades, [], [r.reason for r in rejected]
    if target == "GatewayQuote":
        quotes, rejected = parse_quote_event(args, subscribed={MES}, now=NOW)
        return [], quotes, [r.reason for r in rejected]
    return [], [], []


def bar_rows(frames) -> dict[tuple[int, int], list[tuple]]:
    """Bars as {(unit, value): [(timestamp ns, open, high, low, close, volume), ...]} sorted by time
    (plain tuples: thousands of comparisons without pandas' per-call overhead)."""
    out: dict[tuple[int, int], list[tuple]] = {(tf.unit, tf.value): [] for tf in FUZZ_TIMEFRAMES}
    for df in frames:
        if df is None or df.empty:
            continue
        ts = pd.DatetimeIndex(df["timestamp"]).as_unit("ns").asi8.tolist()
        cols = [df[c].to_numpy().tolist() for c in ("open", "high", "low", "close", "volume", "timeframe_unit", "timeframe_value")]
        for t, o, h, lo, c, v, unit, value in zip(ts, *cols):
            out[(int(unit), int(value))].append((t, float(o), float(h), float(lo), float(c), int(v)))
    return {k: sorted(v) for k, v in out.items()}


def aggregate_batch(ts, px, sz) -> dict[tuple[int, int], list[tuple]]:
    return bar_rows([aggregate_trades(MES, ts, px, sz, tf) for tf in FUZZ_TIMEFRAMES] if len(ts) else [])


def aggregate_live(batches: list[list[Trade]]) -> dict[tuple[int, int], list[tuple]]:
    """Trades batch by batch through split_valid and a BarAggregator; every bar it closes, then flush."""
    agg = BarAggregator(MES, FUZZ_TIMEFRAMES, grace_ns=0)
    closed = []
    for batch in batches:
        if not batch:
            continue
        ts = np.array([to_ns(t.timestamp) for t in batch], dtype=np.int64)
        px = np.array([t.price for t in batch], dtype=np.float64)
        sz = np.array([t.size for t in batch], dtype=np.int64)
        valid, reasons = split_valid(ts, px, sz)
        assert valid.all(), reasons  # the parser let nothing through that the aggregator refuses
        out = agg.add_trades(ts, px, sz)
        assert out.late_trades == 0
        if out.n_closed:
            closed.append(out.closed)
    final = agg.flush_open()
    if final.n_closed:
        closed.append(final.closed)
    return bar_rows(closed)


class _HubReceivePath:
    """The market hub's own receive path, without a socket: its SignalR protocol (decode and
    message building), signalrcore's dispatch to the hub's handlers, and the output queue."""

    def __init__(self):
        self.out: queue.Queue = queue.Queue()
        self.hub = MarketHub("http://127.0.0.1:9", lambda: "token", [MES], self.out, logger=logging.getLogger("fuzz.hub"))
        self.connection = _Connection(self.hub, 1, "token")
        self.hub._current = self.connection
        self.protocol = _SupervisedJsonProtocol(self.connection)

    def feed(self, frame: str) -> None:
        messages = self.protocol.parse_messages(frame)
        # signalrcore's dispatch minus close/completion handling (no transport here); events only
        self.connection.signalr.on_message([m for m in messages if m.type.value == 1])

    def drain(self) -> list:
        items = []
        while True:
            try:
                items.append(self.out.get_nowait())
            except queue.Empty:
                return items


_receive_path: _HubReceivePath | None = None


def receive_path() -> _HubReceivePath:
    global _receive_path
    if _receive_path is None:
        logging.getLogger("fuzz.hub").setLevel(logging.ERROR)  # thousands of hub_malformed warnings
        _receive_path = _HubReceivePath()
    return _receive_path


@pytest.mark.timeout(120)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=st.lists(_event, min_size=3, max_size=20), frame_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=16))
def test_fuzz_hub_records_bad_ones_rejected_with_reasons_good_ones_and_their_bars_unaffected(events, frame_sizes):
    exp = build_stream(events)
    # 1. the public pipeline, record by record
    for i, record in enumerate(exp.records):
        trades, quotes, reasons = parse_record(record)
        assert trades == exp.trades[i], record[:300]
        assert len(quotes) == exp.quotes[i]
        if exp.rejections[i] is not None:
            assert len(reasons) == exp.rejections[i], (record[:300], reasons)
        assert all(isinstance(r, str) and r.strip() for r in reasons)
        for reason, word in zip(reasons, exp.words[i]):
            assert word in reason, (reason, record[:300])
        for quote in quotes:
            assert quote.last_price is not None and math.isfinite(quote.last_price)
    # 2. the bars from the good trades equal the batch aggregation of the good trades alone
    good = [t for batch in exp.trades for t in batch]
    ts = np.array([to_ns(t.timestamp) for t in good], dtype=np.int64)
    assert aggregate_live(exp.trades) == aggregate_batch(ts, [t.price for t in good], [t.size for t in good])
    # 3. the hub's own receive path, several records per frame: same trades, one malformed per rejection
    path = receive_path()
    path.drain()
    before = path.hub.stats["malformed"]
    records, k = list(exp.records), 0
    for size in frame_sizes * (len(records) // max(1, sum(frame_sizes)) + 1):
        if k >= len(records):
            break
        path.feed("".join(r + RS for r in records[k : k + size]))
        k += size
    items = path.drain()
    assert [x for x in items if isinstance(x, Trade)] == good
    assert len([x for x in items if isinstance(x, Quote)]) == sum(exp.quotes)
    malformed = [x for x in items if getattr(x, "kind", None) == "malformed"]
    assert path.hub.stats["malformed"] - before == len(malformed)
    if all(r is not None for r in exp.rejections):
        assert len(malformed) == sum(exp.rejections)
    assert all(m.detail.strip() for m in malformed)


def test_every_adversarial_field_and_event_is_rejected_naming_what_is_wrong():
    """The catalogue itself, once each, with the reasons shown in a failure."""
    for index, (field, raw) in enumerate(BAD_FIELDS):
        text, _ = _bad_item_json(index, (0, 4, 1, 0, 0))
        trades, _, reasons = parse_record(_record(f'["{MES}",{text}]'))
        assert trades == [] and len(reasons) == 1 and field in reasons[0], (field, raw, reasons)
    for name, record, word in BAD_EVENTS:
        started = time.perf_counter()
        trades, _, reasons = parse_record(record)
        assert trades == [] and len(reasons) == 1 and word in reasons[0], (name, reasons)
        assert time.perf_counter() - started < 0.5, f"{name}: a hostile record must be cheap to reject"
        assert len(reasons[0]) < 1000  # reasons are bounded: they go to logs


def test_extreme_magnitudes_that_are_still_valid_pass_through_exactly():
    """Finite extremes the parser accepts must reach the bars unchanged (no overflow, no rounding)."""
    items = [
        {"price": 0.25, "volume": 1, "timestamp": "2025-03-17T14:00:00Z"},
        {"price": 987654.75, "volume": 1_000_000, "timestamp": "2025-03-17T14:00:01.9999999Z"},
        {"price": 5000.0, "volume": 3.0, "timestamp": "2000-01-01T00:00:00Z"},
    ]
    trades, rejected = parse_trade_event([MES, items], subscribed={MES}, now=NOW)
    assert rejected == [] and [t.size for t in trades] == [1, 1_000_000, 3]
    assert trades[1].timestamp == datetime(2025, 3, 17, 14, 0, 1, 999999, tzinfo=UTC)  # truncated, not rounded up


def test_absurd_finite_prices_are_rejected():
    for price in (1e300, 1.7976931348623157e308, 1e-300):
        trades, rejected = parse_trade_event([MES, {"price": price, "volume": 1, "timestamp": "2025-03-17T14:00:00Z"}], subscribed={MES}, now=NOW)
        assert trades == [] and len(rejected) == 1 and "price" in rejected[0].reason, price


# --------------------------------------------------------------------------- signalrcore dispatch

HOSTILE_SIGNALR_RECORDS = [
    '{"type":1,"target":["GatewayTrade"],"arguments":[]}',
    '{"type":1,"target":{"a":1},"arguments":[]}',
    '{"type":3,"invocationId":["1"]}',
    '{"type":3,"invocationId":{"a":1},"result":null}',
]


@pytest.mark.parametrize("record", HOSTILE_SIGNALR_RECORDS)
def test_hostile_signalr_envelopes_are_rejected_before_signalrcore_dispatches_them(record):
    path = _HubReceivePath()
    messages = path.protocol.parse_messages(record + RS)
    # signalrcore's own dispatch, as its receive thread runs it (close messages aside)
    path.connection.signalr.on_message(messages)
    assert path.hub.stats["malformed"] == 1


class _FakeHubServer:
    """A minimal SignalR hub on a real socket: handshake, subscription completions, then the
    frames the test queues (the simulator cannot send arbitrary records)."""

    def __init__(self):
        from aiohttp import web

        self.web = web
        self.frames: asyncio.Queue[str] | None = None
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        web = self.web

        async def hub(request):
            ws = web.WebSocketResponse(autoping=False, heartbeat=None, compress=False)
            await ws.prepare(request)
            self.connections += 1
            await ws.receive()  # the handshake request
            await ws.send_str("{}" + RS)

            async def reader():
                async for msg in ws:
                    for record in str(msg.data).split(RS):
                        if record and '"invocationId"' in record:
                            inv = json.loads(record)["invocationId"]
                            await ws.send_str(json.dumps({"type": 3, "invocationId": inv}) + RS)

            task = asyncio.ensure_future(reader())
            try:
                while not ws.closed:
                    try:
                        frame = await asyncio.wait_for(self.frames.get(), 0.5)
                    except asyncio.TimeoutError:
                        frame = '{"type":6}' + RS  # keep-alive ping
                    await ws.send_str(frame)
            finally:
                task.cancel()
            return ws

        async def main():
            self.frames = asyncio.Queue()
            app = web.Application()
            app.add_routes([web.get("/hubs/market", hub)])
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.runner = runner
            self.ready.set()

        self.loop.run_until_complete(main())
        self.loop.run_forever()

    def send(self, frame: str) -> None:
        self.loop.call_soon_threadsafe(self.frames.put_nowait, frame)

    def stop(self) -> None:
        async def cleanup():
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _trade_frame(second: int) -> str:
    item = {"symbolId": "F.US.MES", "price": 5000.25, "timestamp": f"2025-03-17T14:00:{second:02d}Z", "type": 0, "volume": 1}
    return _record(json.dumps([MES, item])) + RS


@pytest.mark.timeout(60)
def test_a_hostile_record_does_not_cost_the_connection():
    server = _FakeHubServer()
    out: queue.Queue = queue.Queue()
    hub = MarketHub(f"http://127.0.0.1:{server.port}", lambda: "token", [MES], out, stale_after=30.0, connect_timeout=5.0, stop_timeout=2.0)
    hub.start()
    try:
        deadline = time.monotonic() + 10
        while hub.stats["state"] != "connected" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.stats["state"] == "connected"
        server.send(_trade_frame(1))
        server.send(HOSTILE_SIGNALR_RECORDS[0] + RS)
        server.send(_trade_frame(2))
        received: list[Trade] = []
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            try:
                item = out.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, Trade):
                received.append(item)
        stats = hub.stats
        assert [t.timestamp.second for t in received] == [1, 2], (received, stats)
        assert stats["connects"] == 1 and stats["malformed"] == 1, stats
    finally:
        hub.stop()
        server.stop()


# =========================================================================== hostile input: the aggregator

_BAD_ROWS = {
    "nan price": (None, float("nan"), 1, "price nan"),
    "inf price": (None, float("inf"), 1, "price inf"),
    "-inf price": (None, float("-inf"), 1, "price -inf"),
    "zero price": (None, 0.0, 1, "price 0.0"),
    "negative price": (None, -5000.25, 1, "price -5000.25"),
    "zero size": (None, 5000.0, 0, "size 0"),
    "negative size": (None, 5000.0, -7, "size -7"),
    "huge negative size": (None, 5000.0, -(2**62), "trade size"),
    "NaT": (np.iinfo(np.int64).min, 5000.0, 1, "timestamp NaT"),
    "seconds, not ns": (1_742_220_000, 5000.0, 1, "out of range"),
    "ms, not ns": (1_742_220_000_000, 5000.0, 1, "out of range"),
    "year 2262": (2**63 - 1, 5000.0, 1, "out of range"),
    "before 1990": (0, 5000.0, 1, "out of range"),
}


@pytest.mark.timeout(60)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.one_of(st.tuples(st.just("good"), _good_spec), st.sampled_from(sorted(_BAD_ROWS))), min_size=5, max_size=40),
    cuts=st.lists(st.integers(1, 10), min_size=1, max_size=8),
)
def test_fuzz_aggregator_rejects_bad_rows_with_reasons_and_good_rows_build_exact_bars(rows, cuts):
    clock = 0
    ts, px, sz, bad = [], [], [], []
    for row in rows:
        if row[0] == "good":
            clock += row[1][0]
            ts.append(T0_NS + clock * 1_000_000)
            px.append(5000.0 + 0.25 * row[1][1])
            sz.append(row[1][2])
            bad.append(None)
        else:
            t, p, s, words = _BAD_ROWS[row]
            ts.append(T0_NS + clock * 1_000_000 if t is None else t)
            px.append(p)
            sz.append(s)
            bad.append(words)
    ts, px, sz = np.array(ts, dtype=np.int64), np.array(px, dtype=np.float64), np.array(sz, dtype=np.int64)
    valid, reasons = split_valid(ts, px, sz)
    for i, words in enumerate(bad):
        assert valid[i] == (words is None)
        if words is not None:
            assert reasons[i] and words in reasons[i], (words, reasons[i])
    agg = BarAggregator(MES, FUZZ_TIMEFRAMES, grace_ns=0)
    closed, start = [], 0
    for size in cuts * (len(rows) // sum(cuts) + 1):
        if start >= len(rows):
            break
        sl = slice(start, start + size)
        start += size
        if not valid[sl].all():
            before = agg.counters
            with pytest.raises(DomainError) as raised:
                agg.add_trades(ts[sl], px[sl], sz[sl])  # the daemon screens first; unscreened input is refused whole
            assert agg.counters == before  # ...before any state changes
            first_bad = int(np.flatnonzero(~valid[sl])[0])
            assert bad[sl.start + first_bad] in str(raised.value)
        keep = valid[sl]
        out = agg.add_trades(ts[sl][keep], px[sl][keep], sz[sl][keep])
        if out.n_closed:
            closed.append(out.closed)
    final = agg.flush_open()
    if final.n_closed:
        closed.append(final.closed)
    assert bar_rows(closed) == aggregate_batch(ts[valid], px[valid], sz[valid])


@pytest.mark.parametrize(
    "ts, px, sz, words",
    [
        (np.zeros(2, np.int64), np.ones(3), np.ones(2, np.int64), "different lengths"),
        (np.zeros((2, 2), np.int64), np.ones(2), np.ones(2, np.int64), "1-D"),
        (np.array(["2025-03-17"], dtype=object), np.ones(1), np.ones(1, np.int64), "dtype"),
        (np.zeros(1, np.float64), np.ones(1), np.ones(1, np.int64), "dtype"),
        (np.zeros(1, np.int64), np.array(["5000"]), np.ones(1, np.int64), "dtype"),
        (np.zeros(1, np.int64), np.ones(1), np.array([1.5]), "dtype"),
    ],
)
def test_aggregator_refuses_malformed_arrays_with_a_clear_error(ts, px, sz, words):
    agg = BarAggregator(MES, FUZZ_TIMEFRAMES)
    for call in (lambda: split_valid(ts, px, sz), lambda: agg.add_trades(ts, px, sz)):
        with pytest.raises(DomainError, match=words):
            call()
    for bad_clock in (True, 1.5, "now", -1, 2**63 - 1):
        with pytest.raises(DomainError, match="clock"):
            agg.advance_clock(bad_clock)
    for bad_id in ("CON.F.US.MES.M25'; DROP TABLE x;--", "", None):
        with pytest.raises(DomainError, match="contract id"):
            BarAggregator(bad_id, FUZZ_TIMEFRAMES)


# =========================================================================== malformed bars: detector and checks


def _bars(n: int = 6) -> pd.DataFrame:
    ts = pd.date_range("2025-03-17 14:00", periods=n, freq="5min", tz="UTC")
    o = 5000.0 + np.arange(n) * 0.25
    return normalize_bars(
        pd.DataFrame(
            {
                "contract_id": MES,
                "timestamp": ts,
                "open": o,
                "high": o + 1.0,
                "low": o - 1.0,
                "close": o + 0.5,
                "volume": 10,
                "timeframe_unit": 2,
                "timeframe_value": 5,
            }
        )
    )


MALFORMED_BARS = [
    ("NaN open", lambda b: b.__setitem__("open", b["open"].where(b.index != 3, np.nan)), "invalid bar 4", "open is nan", "open must be finite"),
    ("inf high", lambda b: b.__setitem__("high", b["high"].where(b.index != 2, np.inf)), "invalid bar 3", "high is inf", "high must be finite"),
    ("NaN close", lambda b: b.__setitem__("close", b["close"].where(b.index != 5, np.nan)), "invalid bar 6", "close is nan", "close must be finite"),
    ("high < low", lambda b: b.__setitem__("high", b["high"].where(b.index != 1, b["low"] - 0.25)), "invalid bar 2", "< low", "high must be >= low"),
    (
        "repeated timestamp",
        lambda b: b.__setitem__("timestamp", b["timestamp"].where(b.index != 4, b["timestamp"].iloc[3])),
        "invalid bar 5",
        "not after the previous bar",
        "unique",
    ),
]


@pytest.mark.parametrize("name, mutate, where, detector_words, check_words", MALFORMED_BARS, ids=[m[0] for m in MALFORMED_BARS])
def test_detector_and_checks_reject_malformed_bars_with_a_clear_error(name, mutate, where, detector_words, check_words):
    bars = _bars()
    validate_bars_for_detection(bars)  # the good ones pass
    assert validate_bars(bars, 0.25).empty
    mutate(bars)
    for detect in (validate_bars_for_detection, detect_trend_starts_frame):
        with pytest.raises(ValueError) as raised:
            detect(bars)
        assert where in str(raised.value) and detector_words in str(raised.value), str(raised.value)
    # the streaming detector refuses the bar and keeps its state
    detector = TrendStartDetector()
    k = int(where.split()[-1]) - 1
    for row in bars.iloc[:k].itertuples():
        detector.update(row.timestamp, row.open, row.high, row.low, row.close)
    snapshot = detector.snapshot()
    row = bars.iloc[k]
    with pytest.raises(ValueError, match=re.escape(where)):
        detector.update(row.timestamp, row.open, row.high, row.low, row.close)
    assert detector.snapshot() == snapshot
    # the pandera checks name the rule and the bar
    problems = validate_bars(bars, 0.25)
    assert not problems.empty
    assert problems["rule"].str.contains(check_words, regex=False).any() or problems["column"].astype(str).str.contains("timestamp").any(), problems
    assert problems["timestamp"].notna().any()


def test_the_database_refuses_malformed_bars_whole(conn):
    for name, mutate, *_ in MALFORMED_BARS[:4]:
        bars = _bars()
        mutate(bars)
        with pytest.raises(psycopg2.errors.CheckViolation, match="ohlc_bars_"):
            upsert_bars(conn, bars, mode="replace", source="history")
        conn.rollback()  # the caller ends the failed transaction
        assert read_bars(conn, MES, parse_timeframe("5m")).empty, name  # nothing of the batch
    upsert_bars(conn, _bars(), mode="replace", source="history")
    assert len(read_bars(conn, MES, parse_timeframe("5m"))) == 6


# =========================================================================== secrets

SECRET = "ZZ-recognisable-API-KEY-7f3a9c01-do-not-log"
WRONG_SECRET = "ZZ-wrong-API-KEY-b52e77d4-do-not-log"
USER = "svc-projectx"
# Loggers that can see credentials or requests: the platform's, the HTTP and SignalR clients'.
DEBUG_LOGGERS = ("projectx", "SignalRCoreClient", "urllib3", "requests", "aiohttp", "asyncio", "dagster", "fuzz.hub")


class _AllRecords(logging.Handler):
    """Every log record of the process, unformatted and unfiltered (what any handler could print)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        with self._lock2:
            records = list(self.records)
        for r in records:
            try:
                out.append(r.getMessage())
            except Exception:  # noqa: BLE001 — a record that cannot format still has its parts
                out.append(f"{r.msg!r} % {r.args!r}")
            if r.exc_info and r.exc_info[1] is not None:
                out.append("".join(traceback.format_exception(*r.exc_info)))
            if r.exc_text:
                out.append(r.exc_text)
            if r.stack_info:
                out.append(r.stack_info)
        return out


class capture_all_logs:
    """Every record, raw: the platform loggers' own RedactingFilter (logs.get_logger) is lifted
    meanwhile, so a key that reaches a log call is caught here rather than hidden by redaction."""

    def __enter__(self) -> _AllRecords:
        platform_logs._LOGGER_FILTER.filter = lambda record: True
        self.handler = _AllRecords()
        root = logging.getLogger()
        self.saved = {name: logging.getLogger(name).level for name in DEBUG_LOGGERS}
        self.root_level = root.level
        root.addHandler(self.handler)
        root.setLevel(logging.DEBUG)
        for name in DEBUG_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        return self.handler

    def __exit__(self, *exc) -> None:
        del platform_logs._LOGGER_FILTER.filter
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.root_level)
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)


def assert_no_secret(texts, *secrets: str, where: str) -> int:
    texts = list(texts)
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{where}: a secret appears in {text[:500]!r}"
    return len(texts)


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except Exception:  # noqa: BLE001 — retried until the deadline
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _count_bars(url: str) -> int:
    c = connect(url)
    try:
        with c.cursor() as cur:
            cur.execute("SELECT count(*) FROM ohlc_bars")
            return cur.fetchone()[0]
    finally:
        c.close()


def _own_listening_ports() -> set[int]:
    """TCP ports this process listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].split(":")[1], 16))
    return ports


def _daemon(url: str, client: GatewayClient) -> tuple:
    from projectx_pipeline.ingest.daemon import IngestConfig, IngestDaemon

    daemon = IngestDaemon(
        IngestConfig([MES], TIMEFRAMES, url, repair_delay_seconds=0.5, heartbeat_seconds=0.5, trade_flush_seconds=0.5),
        client,
        lambda out, contracts: client.market_hub(contracts, out, stale_after=5.0, backoff_cap=1.0, connect_timeout=4.0),
    )
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    return daemon, thread, result


def _recording_session(urls: list[str]) -> requests.Session:
    session = requests.Session()
    session.hooks["response"].append(lambda response, *a, **k: urls.append(f"{response.request.method} {response.request.url}"))
    return session


@pytest.mark.timeout(120)
def test_daemon_never_logs_or_raises_the_api_key_and_calls_no_control_endpoint(db_url, replay_slice, monkeypatch):
    """The daemon in-process with every logger at DEBUG: a good key (two logins: the second after a
    GatewayLogout), then a wrong one (refused logins, failing repairs). The key is in no record."""
    from projectx_pipeline.ingest import repair

    monkeypatch.setattr(repair, "FEED_TIME_WAIT_SECONDS", 0.2)  # the wrong-key repair fails at once
    sim = SimulatorServer(replay=replay_slice, speed=1000, wait_for_subscriber=True, rate_limits=False, username=USER, api_key=SECRET).start()
    ctl = SimulatorControl(sim.control_url)
    urls: list[str] = []
    exceptions: list[BaseException] = []
    try:
        with capture_all_logs() as logs:
            listening_before = _own_listening_ports()
            client = GatewayClient(GatewayConfig(sim.api_url, sim.rtc_url, USER, SECRET, False), session=_recording_session(urls), rate_limits=False)
            daemon, thread, result = _daemon(db_url, client)
            daemon.start()
            thread.start()
            try:
                wait_for(lambda: _count_bars(db_url) >= 10, 60, "live bars")
                # the daemon opened no listening socket: it serves nothing, /control included
                assert _own_listening_ports() - listening_before == set()
                ctl.logout()
                wait_for(lambda: daemon.counters[MES].reconnects >= 1, 30, "a reconnect after GatewayLogout")
            finally:
                daemon.request_stop()
                thread.join(15)
            assert result == [0]
            client.close()

            wrong = GatewayClient(
                GatewayConfig(sim.api_url, sim.rtc_url, USER, WRONG_SECRET, False),
                session=_recording_session(urls),
                rate_limits=False,
                max_retries=1,
                backoff_base=0.01,
            )
            daemon, thread, result = _daemon(db_url, wrong)
            daemon.start()
            thread.start()
            try:
                wait_for(lambda: daemon.counters[MES].gateway_errors >= 1, 30, "a repair refused for the wrong key")
                wait_for(lambda: any("hub_token_unavailable" in t for t in logs.texts()), 30, "the hub's refused login")
            finally:
                daemon.request_stop()
                thread.join(15)
            try:
                wrong.retrieve_bars(MES, TIMEFRAMES[1], datetime(2025, 3, 17, tzinfo=UTC), datetime(2025, 3, 18, tzinfo=UTC))
            except GatewayClientError as exc:
                exceptions.append(exc)
            wrong.close()
    finally:
        sim.stop()
    texts = logs.texts()
    assert sum("event=token_obtained" in t for t in texts) >= 2  # it did log in with the key, twice
    assert any("invalid credentials" in t for t in texts)  # the refusals were logged...
    assert any(r.levelno == logging.DEBUG and r.name.startswith("urllib3") for r in logs.records)  # ...at DEBUG, HTTP included
    assert any(r.name == "SignalRCoreClient" for r in logs.records)
    n = assert_no_secret(texts, SECRET, WRONG_SECRET, where="log records")
    assert n > 50
    (exc,) = exceptions
    assert isinstance(exc, GatewayError) and "invalid credentials" in str(exc)
    assert_no_secret(
        [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(exc.__dict__)], SECRET, WRONG_SECRET, where="exception text"
    )
    assert_no_secret([repr(client), repr(client.config), str(client.config), repr(wrong)], SECRET, WRONG_SECRET, where="reprs")
    # the real client spoke to the gateway's REST API only: never to /control
    assert urls and all(u.split(" ", 1)[1].startswith(sim.api_url + "/api/") for u in urls), urls[:5]
    assert not any("/control" in u for u in urls)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("form", ["env_var", "plain_value"])
def test_dagster_backfill_never_shows_the_api_key(db_url, monkeypatch, capfd, form):
    """historical_bars materialized with the key from the environment (EnvVar, as definitions.py
    wires it) or given as a plain value, then with a wrong key: no event of either run, no run
    record, no log record and no console output holds the key (nor the database password)."""
    from dagster import EnvVar, materialize
    from dagster._serdes import serialize_value

    from projectx_pipeline.orchestration.bar_assets import build_bar_assets
    from projectx_pipeline.orchestration.checks import build_bar_checks
    from projectx_pipeline.orchestration.partitions import build_partitions, partition_key
    from projectx_pipeline.orchestration.resources import ProjectXGatewayResource, StorageResource
    from projectx_pipeline.settings import load_settings

    platform_settings = load_settings()
    partitions = build_partitions(platform_settings)
    historical_bars = build_bar_assets(platform_settings, partitions).historical_bars
    bar_checks = build_bar_checks(platform_settings, historical_bars, partitions)

    sim = SimulatorServer(start_time="end", rate_limits=False, username=USER, api_key=SECRET).start()
    db_password = re.search(r"://[^:/@]+:([^@]+)@", db_url)
    secrets = [SECRET, WRONG_SECRET] + ([db_password.group(1)] if db_password else [])
    try:
        for name, value in (
            ("PROJECTX_API_URL", sim.api_url),
            ("PROJECTX_RTC_URL", sim.rtc_url),
            ("PROJECTX_USERNAME", USER),
            ("PROJECTX_API_KEY", SECRET),
            ("DATABASE_URL", db_url),
        ):
            monkeypatch.setenv(name, value)

        def resources(api_key: str) -> dict:
            if form == "env_var":
                monkeypatch.setenv("PROJECTX_API_KEY", api_key)
                return {
                    "gateway": ProjectXGatewayResource(
                        api_url=EnvVar("PROJECTX_API_URL"),
                        rtc_url=EnvVar("PROJECTX_RTC_URL"),
                        username=EnvVar("PROJECTX_USERNAME"),
                        api_key=EnvVar("PROJECTX_API_KEY"),
                        rate_limits=False,
                        max_retries=1,
                    ),
                    "storage": StorageResource(database_url=EnvVar("DATABASE_URL")),
                }
            return {
                "gateway": ProjectXGatewayResource(
                    api_url=sim.api_url, rtc_url=sim.rtc_url, username=USER, api_key=api_key, rate_limits=False, max_retries=1
                ),
                "storage": StorageResource(database_url=db_url),
            }

        instance = instance_with_contracts()
        key = partition_key(date(2025, 3, 18), MES)
        with capture_all_logs() as logs:
            good = materialize(
                [historical_bars, *bar_checks], partition_key=key, resources=resources(SECRET), instance=instance, raise_on_error=False
            )
            bad = materialize([historical_bars], partition_key=key, resources=resources(WRONG_SECRET), instance=instance, raise_on_error=False)
    finally:
        sim.stop()
    assert good.success
    assert good.asset_materializations_for_node("historical_bars")[0].metadata["rows"].value > 0
    assert not bad.success
    failures = [e for e in bad.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and "invalid credentials" in str(failures[0].event_specific_data.error)
    scanned = 0
    for run in (good, bad):
        entries = instance.all_logs(run.run_id)
        assert len(entries) > 5
        scanned += assert_no_secret([serialize_value(e) for e in entries], *secrets, where=f"event log of run {run.run_id}")
        record = instance.get_run_by_id(run.run_id)
        assert_no_secret([serialize_value(record), repr(record.run_config)], *secrets, where="run record")
    assert scanned > 20
    assert_no_secret(logs.texts(), *secrets, where="log records")
    out, err = capfd.readouterr()
    assert_no_secret([out, err], *secrets, where="console output")


def test_a_handler_on_the_projectx_logger_sees_only_redacted_records():
    """Dagster (dagster.yaml `managed_python_loggers: [projectx]`) attaches its own handler to the
    "projectx" logger, without the RedactingFilter configure_logging puts on the root handler: the
    platform loggers redact their records themselves, before any handler sees them."""
    bearer = "Bearer opaque-token-9d1c5e"
    seen: list[str] = []

    class Plain(logging.Handler):  # what Dagster's handler does: format the record, keep the text
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    handler = Plain(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(message)s"))
    projectx = logging.getLogger("projectx")
    level = projectx.level
    log = platform_logs.get_logger("projectx.ingest")
    assert platform_logs.get_logger("projectx.ingest").filters.count(platform_logs._LOGGER_FILTER) == 1  # attached once
    platform_logs.register_secret(SECRET)
    projectx.addHandler(handler)
    projectx.setLevel(logging.DEBUG)
    try:
        log.warning("login with %s failed, header %s", SECRET, bearer)
        log.info(platform_logs.kv("login_failed", key=SECRET))
        try:
            raise RuntimeError(f"refused: {SECRET} / Authorization: {bearer}")
        except RuntimeError:
            log.exception(platform_logs.kv("writer_failed", error="refused"))
    finally:
        projectx.removeHandler(handler)
        projectx.setLevel(level)
        with platform_logs._lock:
            platform_logs._secrets.discard(SECRET)
    assert len(seen) == 3
    assert_no_secret(seen, SECRET, "opaque-token-9d1c5e", where="a handler on the projectx logger")
    assert seen[0] == "login with *** failed, header Bearer ***"
    assert seen[1] == "event=login_failed key=***"
    assert seen[2].startswith("event=writer_failed error=refused\nTraceback") and "RuntimeError: refused: *** / Authorization: Bearer ***" in seen[2]


# =========================================================================== SQL: parameterized statements

_SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|COPY|NOTIFY|LISTEN|TRUNCATE|GRANT|REVOKE|SET|"
    r"WITH|FROM|WHERE|VALUES|DATABASE|TABLE|SCHEMA|EXTENSION|ROLE|PREPARE|EXECUTE|DEALLOCATE|CALL|DO)\b"
)

# What may flow into SQL text, per (file, function, name), and why it is safe. Besides these, SQL
# text may hold literals, module constants (UPPER_CASE names), constant tables indexed by anything
# (`_UPSERT_SQL[mode]`: a KeyError, never text, for an unknown key), `len(...)` (a placeholder
# count), the branches of a conditional (its test is never text) and calls to the audited builders
# below, whose own f-strings are scanned like the rest. Any other name fails the scan: values must
# travel as %s parameters.
ALLOWED_SQL_NAMES = {
    ("storage/bars.py", "_statement", "stage"): "'stage' or '_bars_stage': a constant staging relation",
    ("storage/bars.py", "_statement", "audit"): "_AUDIT_SQL formatted with `stage`, or ''",
    ("storage/bars.py", "_statement", "notify_sql"): "an f-string of constants (BARS_PER_NOTIFY, _TF_LABEL_SQL, OHLC_CHANNEL)",
    ("storage/bars.py", "_execute_upsert", "name"): "prepared-statement name: 'projectx_upsert_' + the checked mode + constant suffixes",
    ("storage/bars.py", "_execute_upsert", "params"): "'(' + _ARRAYS_PARAMS + ')' or ''",
    ("storage/bars.py", "_session_statements", "name"): "this session's own prepared statements, read from "
    "pg_prepared_statements WHERE name LIKE 'projectx\\_upsert\\_%'",
    ("storage/bars.py", "read_bars", "sql"): "literals and _READ_COLUMNS; every value is a %s parameter",
    ("storage/bars.py", "read_live_versions", "sql"): "literals and _READ_COLUMNS; every value is a %(name)s parameter",
    ("storage/trend_signals.py", "read_signals", "sql"): "literals, _SELECT_SIGNALS and '(%s, %s)' placeholders",
    ("storage/trend_signals.py", "latest_signals", "sql"): "literals and _SELECT_SIGNALS",
    ("storage/coordinated_signals.py", "read_coordinated", "sql"): "literals, a_label and t_label",
    ("storage/coordinated_signals.py", "read_coordinated", "a_label"): "TF_LABEL_SQL with a literal alias replaced",
    ("storage/coordinated_signals.py", "read_coordinated", "t_label"): "TF_LABEL_SQL with a literal alias replaced",
    ("storage/local_db.py", "_create_databases", "db"): "a loop over the constants MARKET_DB and DAGSTER_DB (an identifier)",
    ("storage/migrate.py", "migrate", "mig"): "mig.sql: the migration files shipped in the package (storage/migrations/*.sql)",
    ("storage/testing.py", "create_database", "name"): "test infrastructure: prefix from test code + uuid4 hex (an identifier)",
    ("storage/testing.py", "create_database", "template"): "test infrastructure: '' or ' TEMPLATE \"<constant>\"'",
    ("storage/testing.py", "drop_database", "name"): "test infrastructure: a database name this class created",
    ("storage/testing.py", "_admin_execute", "statement"): "test infrastructure: the CREATE/DROP DATABASE of create_database "
    "and drop_database, built from the names allowed above",
}
SQL_BUILDERS = {"_statement", "_bars_sql", "_copy_sql"}  # module functions returning SQL text built from constants
_EXECUTORS = {"execute", "executemany", "copy_expert", "copy_from", "copy_to", "mogrify", "execute_values", "callproc"}
_CONSTANT_NAME = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


def _literal_text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    return ""


def _text_names(node: ast.AST) -> set[str]:
    """The names whose values can become part of the text `node` evaluates to (see ALLOWED_SQL_NAMES)."""
    if isinstance(node, ast.Constant):
        return set()
    if isinstance(node, ast.Name):
        return set() if _CONSTANT_NAME.match(node.id) else {node.id}
    if isinstance(node, ast.IfExp):
        return _text_names(node.body) | _text_names(node.orelse)
    if isinstance(node, ast.JoinedStr):
        return set().union(*(_text_names(v.value) for v in node.values if isinstance(v, ast.FormattedValue)))
    if isinstance(node, ast.BinOp):
        return _text_names(node.left) | _text_names(node.right)
    if isinstance(node, (ast.List, ast.Tuple)):
        return set().union(*(_text_names(e) for e in node.elts))
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and _CONSTANT_NAME.match(node.value.id):
        return set()  # a constant table: the key selects, never becomes text
    if isinstance(node, ast.Attribute):
        return _text_names(node.value)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and (func.id == "len" or func.id in SQL_BUILDERS):
            return set()
        if isinstance(func, ast.Attribute) and func.attr in ("format", "join", "replace", "strip"):
            return _text_names(func.value) | set().union(*(_text_names(a) for a in node.args), *(_text_names(k.value) for k in node.keywords))
    return {ast.unparse(node)}  # anything else is not understood: it must be allow-listed as written


def _scopes():
    """(file, function, node) for every node of the package, `function` the innermost enclosing def."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(), str(path))

        def visit(node, function):
            for child in ast.iter_child_nodes(node):
                inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
                yield rel, inner, child
                yield from visit(child, inner)

        yield from visit(tree, "<module>")


def _sql_pieces(node: ast.AST) -> list[ast.AST]:
    """The interpolated parts of `node` when it builds SQL text (f-string, %, +, .format)."""
    if isinstance(node, ast.JoinedStr) and _SQL_WORDS.search(_literal_text(node)):
        return [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _SQL_WORDS.search(_literal_text(node.left)):
        return [node.right]  # "... %s" % value: Python formatting, not a query parameter
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Add)
        and (_SQL_WORDS.search(_literal_text(node.left)) or _SQL_WORDS.search(_literal_text(node.right)))
    ):
        return [node.left, node.right]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and _SQL_WORDS.search(_literal_text(node.func.value))
    ):
        return [*node.args, *(k.value for k in node.keywords)]
    return []


def _unexpected(names: set[str], rel: str, function: str) -> set[str]:
    return {n for n in names if (rel, function, n) not in ALLOWED_SQL_NAMES}


def test_sql_text_is_never_built_from_runtime_values():
    """Every f-string, %-format, .format() or + that builds SQL text interpolates only constants and
    audited names; values always travel as query parameters."""
    found, bad = 0, []
    for rel, function, node in _scopes():
        for piece in _sql_pieces(node):
            names = _text_names(piece)
            found += 1
            for name in _unexpected(names, rel, function):
                bad.append(f"{rel}:{node.lineno} in {function}(): {{{name}}}")
    assert not bad, (
        "SQL text built from values that are not audited constants (use %s parameters, or allow-list "
        "(file, function, name) with a reason): " + ", ".join(sorted(set(bad)))
    )
    assert found >= 10  # the scan sees the known interpolations


def test_every_statement_executed_is_a_literal_or_an_audited_builder():
    found, bad = 0, []
    for rel, function, node in _scopes():
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in _EXECUTORS:
            continue
        args = node.args[1:] if name == "execute_values" else node.args
        if not args:
            continue
        found += 1
        for unexpected in _unexpected(_text_names(args[0]), rel, function):
            bad.append(f"{rel}:{node.lineno} in {function}(): {name}(... {unexpected} ...)")
    assert not bad, "statements built from values that are not audited: " + ", ".join(sorted(set(bad)))
    assert found >= 50


def test_the_sql_scan_catches_formatted_values():
    """The scan itself: each forbidden form is found, each safe one passes (so an empty result means something)."""
    sample = """
def f(cur, contract, n, tf, mode):
    cur.execute(f"SELECT * FROM ohlc_bars WHERE contract_id = '{contract}'")
    cur.execute("DELETE FROM trades WHERE size > %d" % n)
    cur.execute("SELECT * FROM t WHERE c = '{}'".format(contract))
    cur.execute("SELECT * FROM t WHERE c = '" + contract + "'")
    cur.execute(f"SELECT * FROM t WHERE unit = {tf.unit}")
    cur.execute(f"SELECT {COLUMNS} FROM t WHERE c = %s" + (" AND x = %s" if n else ""), (contract,))
    cur.execute(_UPSERT_SQL[mode].format(stage=STAGE) + ", ".join(["%s"] * len(n)))
"""
    tree = ast.parse(sample)
    flagged = {}
    for node in ast.walk(tree):
        for piece in _sql_pieces(node):
            for name in _text_names(piece):
                flagged.setdefault(node.lineno, set()).add(name)
    assert flagged == {3: {"contract"}, 4: {"n"}, 5: {"contract"}, 6: {"contract"}, 7: {"tf"}}, flagged


# =========================================================================== injection-shaped ids at every entry point

INJECTION_IDS = [
    "CON.F.US.MES.M25'; DROP TABLE ohlc_bars; --",
    "CON.F.US.MES.M25' OR '1'='1",
    "CON.F.US.MES.M25\n\tDROP",
    "CON.F.US.MES.M25%",
    "CON.F.US.MES.M2_",
    "CON.F.US.MES.M25\x00",
    "CON.F.US.MES.M25 UNION SELECT * FROM pg_shadow",
    "../../etc/passwd",
    "CON.F.US.MES.M25;DROP",
    "",
]
INJECTION_TIMEFRAMES = ["5m'; DROP TABLE ohlc_bars; --", "5m OR 1=1", "1m,5m; DROP", "5 m", "5mm", "0m", "-5m", "99999m", "1e3m", "5M"]


def test_injection_shaped_ids_and_timeframes_are_refused_at_every_entry_point(conn, db_url):
    from projectx_pipeline.analysis.coordination_runner import run_coordination
    from projectx_pipeline.analysis.trend_analysis import run_trend_analysis
    from projectx_pipeline.backfill import backfill_trade_date
    from projectx_pipeline.storage import coordinated_signals as coordinated
    from projectx_pipeline.storage import locks
    from projectx_pipeline.storage import trend_signals as store

    good = _bars()
    upsert_bars(conn, good, mode="keep", source="history")
    conn.commit()  # storage never commits: the caller does
    tables_before = table_names(conn)
    requests_made: list[str] = []
    # an unreachable gateway: anything that got past validation would fail differently (no retries)
    client = GatewayClient(
        GatewayConfig("http://127.0.0.1:9", "http://127.0.0.1:9", "u", "k", True),
        session=_recording_session(requests_made),
        rate_limits=False,
        max_retries=0,
    )
    tf5 = parse_timeframe("5m")
    day = (datetime(2025, 3, 17, tzinfo=UTC), datetime(2025, 3, 18, tzinfo=UTC))
    refused = 0
    for bad in INJECTION_IDS:
        batch = good.copy()
        batch["contract_id"] = bad
        calls = [
            lambda: upsert_bars(conn, batch, mode="replace", source="history"),
            lambda: read_bars(conn, bad, tf5),
            lambda: last_bar_times(conn, bad, [tf5]),
            lambda: read_live_versions(conn, bad, *day),
            lambda: store.read_signals(conn, bad),
            lambda: store.read_detected_signals(conn, "trend_starts_v1", bad, tf5),
            lambda: store.count_signals(conn, "trend_starts_v1", bad, tf5),
            lambda: coordinated.read_coordinated(conn, bad),
            lambda: locks.lock_coordination(conn, bad),
            lambda: run_trend_analysis(conn, bad, tf5),
            lambda: run_coordination(conn, bad, []),
            lambda: client.retrieve_bars(bad, tf5, *day),
            lambda: client.contract_by_id(bad),
            lambda: client.market_hub([bad], queue.Queue()),
            lambda: backfill_trade_date(client, conn, bad, date(2025, 3, 17), [tf5]),
            lambda: BarAggregator(bad, [tf5]),
        ]
        for call in calls:
            # the analysis tables take a series (a contract id or a symbol): refused as a series
            with pytest.raises(DomainError, match="invalid (contract id|series)"):
                call()
            conn.rollback()
            refused += 1
    for bad in ["trend_starts_v1'; DROP TABLE detected_signals; --", "x" * 200, ""]:
        with pytest.raises(DomainError):
            store.read_detected_signals(conn, bad, MES, tf5)
        conn.rollback()
        refused += 1
    for bad in INJECTION_TIMEFRAMES:
        with pytest.raises(DomainError, match="timeframe"):
            parse_timeframe(bad)
        with pytest.raises(DomainError):
            parse_timeframes(bad)
        refused += 2
    for unit, value in ((2, "5; DROP TABLE ohlc_bars"), ("2 OR 1=1", 5), (2, 5.0), (2, True), (9, 1), (2, 7)):
        with pytest.raises(DomainError):
            Timeframe(unit, value)
        refused += 1
    for bad_tf in ("5m", "5m'; DROP TABLE ohlc_bars; --", (2, 5)):
        with pytest.raises(DomainError, match="expected a Timeframe"):
            client.retrieve_bars(MES, bad_tf, *day)
        with pytest.raises(TypeError):
            run_trend_analysis(conn, MES, bad_tf)
        conn.rollback()
        refused += 2

    # a look-alike timeframe object reaches storage reads only as bound parameters: refused as data
    class Fake:
        unit, value, label = "2 OR 1=1", "5", "5m"

    for call in (lambda: read_bars(conn, MES, Fake()), lambda: last_bar_times(conn, MES, [Fake()])):
        with pytest.raises((DomainError, TypeError, psycopg2.DataError)):
            call()
        conn.rollback()
        refused += 1
    assert requests_made == []  # nothing reached the network
    assert table_names(conn) == tables_before
    assert len(read_bars(conn, MES, tf5)) == len(good)
    assert refused > 150


def test_ids_with_a_trailing_newline_are_refused(conn):
    from projectx_pipeline.domain.contracts import ContractId
    from projectx_pipeline.domain.coordination import CoordinationRule
    from projectx_pipeline.storage.trend_signals import validate_analyzer_id

    problems = []
    for check, value in ((ContractId, MES + "\n"), (validate_analyzer_id, "trend_starts_v1\n")):
        try:
            check(value)
            problems.append(f"{check.__name__} accepted {value!r}")
        except DomainError:
            pass
    rule = {
        "name": "long_1h_15m\n",
        "label": "long",
        "anchor": {"timeframe": "1h", "type": "uptrend"},
        "trigger": {"timeframe": "15m", "type": "uptrend"},
        "within_minutes": 60,
    }
    try:
        CoordinationRule.from_dict(rule)
        problems.append("CoordinationRule accepted a name ending in a newline")
    except DomainError:
        pass
    batch = _bars()
    batch["contract_id"] = MES + "\n"
    try:
        upsert_bars(conn, batch, mode="keep", source="live")
        problems.append("upsert_bars stored a contract id ending in a newline")
    except DomainError:
        pass
    except psycopg2.Error as exc:
        conn.rollback()
        problems.append(f"upsert_bars let the id through to the database: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    trades, rejected = parse_trade_event([MES + "\n", {"price": 1.0, "volume": 1, "timestamp": "2025-03-17T14:00:00Z"}], now=NOW)
    if trades:
        problems.append("the event parser accepted a contract id ending in a newline")
    assert not problems, problems


def test_injection_shaped_settings_are_refused(tmp_path):
    from projectx_pipeline.settings import SettingsError, load_file_settings, load_settings

    for bad in INJECTION_IDS[:3] + ['CON.F.US.MES.M25"; rm -rf /']:
        path = tmp_path / "settings.yaml"
        path.write_text(yaml_dump({"contracts": [{"id": bad}], "timeframes": ["5m"]}))
        with pytest.raises(SettingsError, match="contracts"):
            load_file_settings(path)
        path.write_text(yaml_dump({"contracts": [{"id": MES}], "timeframes": ["5m"], "ingest": {"shards": {"a": [MES, bad]}}}))
        with pytest.raises(SettingsError):
            load_file_settings(path)
    for bad in INJECTION_TIMEFRAMES[:3]:
        path.write_text(yaml_dump({"contracts": [{"id": MES}], "timeframes": [bad]}))
        with pytest.raises(SettingsError, match="timeframes"):
            load_file_settings(path)
    env = {"PROJECTX_SHARD": "a'; DROP TABLE ohlc_bars; --"}
    with pytest.raises(SettingsError, match="PROJECTX_SHARD"):
        load_settings(env)
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings({"DATABASE_URL": "host=x dbname=y'; DROP TABLE ohlc_bars"})


def yaml_dump(obj) -> str:
    import yaml

    return yaml.safe_dump(obj)


@pytest.mark.timeout(120)
def test_injection_shaped_cli_input_is_one_line_exit_2_and_touches_nothing(db_url, conn, tmp_path):
    upsert_bars(conn, _bars(), mode="keep", source="history")
    conn.commit()  # storage never commits: the caller does
    tables_before = table_names(conn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTX_") and k not in ("DAGSTER_PG_URL",)}
    env.update(DATABASE_URL=db_url, PROJECTX_HOME=str(tmp_path), PROJECTX_API_URL="http://127.0.0.1:9", PROJECTX_RTC_URL="http://127.0.0.1:9")
    cases = [
        (["ingest", "--contracts", INJECTION_IDS[0]], "invalid contract id"),
        (["ingest", "--contracts", MES, INJECTION_IDS[1]], "invalid contract id"),
        (["ingest", "--timeframes", INJECTION_TIMEFRAMES[0]], "invalid timeframe"),
        (["ingest", "--timeframes", "1m,5m; DROP TABLE ohlc_bars"], "invalid timeframe"),
        (["simulate", "--synthetic", INJECTION_IDS[0], "--port", "0"], "invalid contract id"),
        (["simulate", "--speed", "1; DROP TABLE ohlc_bars"], "invalid speed"),
    ]
    procs = [
        (
            subprocess.Popen(
                [sys.executable, "-m", "projectx_pipeline", *args], env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            ),
            args,
            needle,
        )
        for args, needle in cases
    ]
    for proc, args, needle in procs:
        out, err = proc.communicate(timeout=90)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2, (args, err)
        assert len(lines) == 1 and needle in lines[0], (args, err)
        assert "Traceback" not in err
    assert table_names(conn) == tables_before
    assert _count_bars(db_url) == len(_bars())


# =========================================================================== binding and exposure


def _decode_address(hex_addr: str) -> str:
    if len(hex_addr) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_addr)[::-1])
    words = [bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, b"".join(words))


def listening_addresses(port: int) -> set[str]:
    """Local addresses of every LISTEN socket on `port`, IPv4 and IPv6, whoever owns it."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                out.add(_decode_address(address))
    return out


def test_simulator_binds_to_localhost_by_default():
    from projectx_pipeline.cli import build_parser

    sim = SimulatorServer(port=0, speed=1).start()
    try:
        assert sim.host == "127.0.0.1"
        assert listening_addresses(sim.port) == {"127.0.0.1"}
    finally:
        sim.stop()
    args = build_parser("simulate").parse_args(["simulate"])
    assert args.host == "127.0.0.1"


@pytest.fixture
def local_cluster(db_server):
    """The test server's LocalCluster, or (with PROJECTX_TEST_DATABASE_URL) a fresh one."""
    import tempfile

    from projectx_pipeline.storage.local_db import LocalCluster, LocalDatabaseError

    if db_server.cluster is not None:
        yield db_server.cluster
        return
    with tempfile.TemporaryDirectory(prefix="projectx-security-") as base:  # /tmp: reachable by the postgres user
        os.chmod(base, 0o755)
        cluster = LocalCluster(Path(base) / "db")
        try:
            cluster.start()
        except LocalDatabaseError as exc:
            pytest.skip(f"no local PostgreSQL: {exc}")
        try:
            yield cluster
        finally:
            cluster.destroy()


def test_local_database_listens_on_localhost_only_and_asks_for_a_password(local_cluster):
    state = local_cluster.state()
    assert listening_addresses(state.port) == {"127.0.0.1"}
    good = connect(state.url("postgres"))
    try:
        with good.cursor() as cur:
            cur.execute("SHOW listen_addresses")
            assert cur.fetchone()[0] == "127.0.0.1"
            cur.execute("SELECT line_number FROM pg_hba_file_rules WHERE auth_method = 'trust'")
            assert cur.fetchall() == []
    finally:
        good.close()
    # pg_hba.conf: password (SCRAM) for every connection, TCP and socket; never trust
    rules = [ln.split() for ln in (local_cluster.data / "pg_hba.conf").read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert rules
    assert {r[0] for r in rules} <= {"local", "host", "hostssl", "hostnossl"}
    assert all(r[-1] == "scram-sha-256" for r in rules), rules
    assert any(r[0] == "host" for r in rules)
    wrong = state.url("postgres").replace(f":{state.password}@", ":not-the-password@")
    with pytest.raises(Exception, match="password authentication failed"):
        connect(wrong, connect_timeout=5)
    bare = f"postgresql://projectx@127.0.0.1:{state.port}/postgres"
    env_password = os.environ.pop("PGPASSWORD", None)
    try:
        with pytest.raises(Exception, match="password"):
            connect(bare, connect_timeout=5, passfile="/dev/null")
    finally:
        if env_password is not None:
            os.environ["PGPASSWORD"] = env_password


def test_dev_binds_everything_it_starts_to_localhost_by_default(db_url, tmp_path, monkeypatch):
    """`projectx dev` without starting anything: the commands it builds (simulator, webserver)."""
    from projectx_pipeline.cli import build_parser

    from .support.dev_run import DevWiring

    wiring = DevWiring(db_url, tmp_path, monkeypatch)
    for argv, host in ((["dev"], "127.0.0.1"), (["dev", "--host", "0.0.0.0"], "0.0.0.0")):
        args = build_parser("dev").parse_args(argv)
        assert args.host == host
        wiring.run(args)
        started = wiring.started
        sim = started["simulator"]
        assert sim[sim.index("--host") + 1] == host
        web = started["dagster-webserver"]
        assert web[web.index("-h") + 1] == host
        assert set(started) == {"simulator", "ingest", "dagster-webserver", "dagster-daemon"}
        # the daemon and dagster-daemon take no address: they listen on nothing
        assert not any(a in started["ingest"] + started["dagster-daemon"] for a in ("-h", "--host", "0.0.0.0"))


def test_the_control_endpoint_exists_only_in_the_simulator():
    route_makers = re.compile(
        r"\b(add_routes?|web\.(get|post|put|delete|route)|TCPSite|create_server|HTTPServer|"
        r"serve_forever|uvicorn|Starlette|FastAPI|Flask)\b"
    )
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        if rel.startswith("gateway/simulator/"):
            continue
        # nothing outside the simulator serves HTTP at all, so nothing else can have /control
        assert not route_makers.search(text), f"{rel} registers a route or starts a server"
        for line in text.splitlines():
            if "/control" in line:
                # the one allowed mention: dev prints the simulator's own control URL for the user
                assert rel == "dev.py" and "sim_url" in line, f"{rel}: {line.strip()}"
    client_text = (PACKAGE / "gateway" / "client.py").read_text() + (PACKAGE / "gateway" / "hub.py").read_text()
    assert "control" not in client_text.lower()
    server_text = (PACKAGE / "gateway" / "simulator" / "server.py").read_text()
    assert '"/control/{action}"' in server_text  # the route exists where it belongs
