"""Bar upsert: 100,000 1m bars from a DataFrame into ohlc_bars, keep-existing and replace modes.

* ours: `BarStore(conn).upsert(df, mode=..., source=...)` + commit, as the platform calls it (validation,
  COPY into a staging table, one INSERT … ON CONFLICT, NOTIFY of the written bars, commit;
  replace mode also records every overwritten bar in bar_revisions);
* baseline 1: psycopg2 `execute_values` (page_size 1000) with the same ON CONFLICT clause
  (DO NOTHING / DO UPDATE … WHERE IS DISTINCT FROM, revisions + 1), rows built from the frame;
* baseline 2 (the limit): plain COPY of the same rows into ohlc_bars, binary format built with
  numpy (the fastest way there is from a frame to the table), possible only into an empty
  table. A plain text COPY (`to_csv`) is timed too, as context: most of its time is pandas
  formatting text.

Two starting states: an empty table (every bar inserted), and a table already holding the
bars with 10% of them different (keep: nothing written; replace: 10% revised). Every method
starts from the same state (reset untimed, then CHECKPOINT), methods are interleaved, and the
final table of each method is compared with the expected one before any timing.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pandas as pd
import psycopg2.extras

from projectx_pipeline.storage.bars import BarStore
from projectx_pipeline.storage.db import connect

from . import Context, compare, cprofile_top, explain_call, synthetic_bars, trace_call, tracing_connection, write_text
from .report import Row

COLUMNS = ["contract_id", "timeframe_unit", "timeframe_value", "timestamp", "open", "high", "low", "close", "volume"]
COLS_SQL = 'contract_id, timeframe_unit, timeframe_value, "timestamp", open, high, low, close, volume, source'
KEY_SQL = 'contract_id, timeframe_unit, timeframe_value, "timestamp"'
EV_SQL = {
    "keep": f"INSERT INTO ohlc_bars ({COLS_SQL}) VALUES %s ON CONFLICT ({KEY_SQL}) DO NOTHING",
    "replace": f"""INSERT INTO ohlc_bars AS b ({COLS_SQL}) VALUES %s ON CONFLICT ({KEY_SQL}) DO UPDATE
        SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
            volume = EXCLUDED.volume, source = EXCLUDED.source, ingested_at = now(), revisions = b.revisions + 1
        WHERE (b.open, b.high, b.low, b.close, b.volume)
              IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)""",
}
PAGE_SIZE = 1000
SOURCE = {"keep": "live", "replace": "history"}


def execute_values_upsert(conn, df: pd.DataFrame, mode: str) -> None:
    source = SOURCE[mode]
    rows = list(
        zip(
            df["contract_id"].tolist(),
            df["timeframe_unit"].tolist(),
            df["timeframe_value"].tolist(),
            df["timestamp"].dt.to_pydatetime().tolist(),
            df["open"].tolist(),
            df["high"].tolist(),
            df["low"].tolist(),
            df["close"].tolist(),
            df["volume"].tolist(),
            [source] * len(df),
        )
    )
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(cur, EV_SQL[mode], rows, page_size=PAGE_SIZE)
    conn.commit()


def copy_rows(conn, df: pd.DataFrame, source: str) -> None:
    buf = io.StringIO()
    df.loc[:, COLUMNS].assign(source=source).to_csv(buf, sep="\t", header=False, index=False)
    buf.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY ohlc_bars ({COLS_SQL}) FROM STDIN", buf)
    conn.commit()


_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since 1970


def binary_copy_buffer(df: pd.DataFrame, source: str) -> io.BytesIO:
    """The frame in PostgreSQL's binary COPY format, built with numpy (one record array per contract)."""
    parts = [b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)]
    src = source.encode()
    for cid, part in df.groupby("contract_id", sort=False):
        c = cid.encode()
        fields = [
            ("n", ">i2"),
            ("lc", ">i4"),
            ("c", f"S{len(c)}"),
            ("lu", ">i4"),
            ("u", ">i2"),
            ("lv", ">i4"),
            ("v", ">i4"),
            ("lt", ">i4"),
            ("t", ">i8"),
        ]
        for f in ("o", "h", "l", "cl"):
            fields += [(f"l{f}", ">i4"), (f, ">f8")]
        fields += [("lvol", ">i4"), ("vol", ">i8"), ("ls", ">i4"), ("s", f"S{len(src)}")]
        rec = np.empty(len(part), dtype=np.dtype(fields))
        rec["n"], rec["lc"], rec["c"], rec["lu"], rec["lv"], rec["lt"] = 10, len(c), c, 2, 4, 8
        rec["u"], rec["v"] = part["timeframe_unit"].to_numpy(), part["timeframe_value"].to_numpy()
        rec["t"] = part["timestamp"].to_numpy(dtype="datetime64[us]").view(np.int64) - _PG_EPOCH_US
        for f, col in (("o", "open"), ("h", "high"), ("l", "low"), ("cl", "close")):
            rec[f"l{f}"], rec[f] = 8, part[col].to_numpy()
        rec["lvol"], rec["vol"], rec["ls"], rec["s"] = 8, part["volume"].to_numpy(), len(src), src
        parts.append(rec.tobytes())
    parts.append(struct.pack(">h", -1))
    return io.BytesIO(b"".join(parts))


def copy_binary(conn, df: pd.DataFrame, source: str) -> None:
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY ohlc_bars ({COLS_SQL}) FROM STDIN WITH (FORMAT binary)", binary_copy_buffer(df, source))
    conn.commit()


def read_table(conn) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {COLS_SQL}, revisions FROM ohlc_bars ORDER BY {KEY_SQL}")
        rows = cur.fetchall()
    conn.rollback()
    return pd.DataFrame(rows, columns=COLUMNS + ["source", "revisions"])


def expected_table(df: pd.DataFrame, source: str, revisions=0) -> pd.DataFrame:
    out = df.loc[:, COLUMNS].assign(source=source, revisions=revisions)
    return out.sort_values(["contract_id", "timeframe_unit", "timeframe_value", "timestamp"], ignore_index=True)


def assert_table(conn, expected: pd.DataFrame, what: str) -> None:
    got = read_table(conn)
    got["timestamp"] = pd.to_datetime(got["timestamp"], utc=True).dt.as_unit("ns")
    exp = expected.copy()
    exp["timestamp"] = exp["timestamp"].dt.as_unit("ns")
    got = got.astype({"timeframe_unit": np.int64, "timeframe_value": np.int64, "volume": np.int64, "revisions": np.int64})
    exp = exp.astype({"timeframe_unit": np.int64, "timeframe_value": np.int64, "volume": np.int64, "revisions": np.int64})
    pd.testing.assert_frame_equal(got.reset_index(drop=True), exp.reset_index(drop=True), check_exact=True, check_dtype=False, obj=what)


def changed_copy(df: pd.DataFrame, fraction: float = 0.10, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """The same bars with `fraction` of them different (close one tick up, volume + 1)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(len(df)) < fraction
    out = df.copy()
    out.loc[mask, "close"] = out.loc[mask, "close"] + 0.25
    out.loc[mask, "high"] = np.maximum(out.loc[mask, "high"], out.loc[mask, "close"])
    out.loc[mask, "volume"] = out.loc[mask, "volume"] + 1
    return out, mask


def _ours(store: BarStore, df: pd.DataFrame, *, mode: str, source: str):
    """The platform's write as its callers make it: the upsert, then the caller's commit."""
    result = store.upsert(df, mode=mode, source=source)
    store.conn.commit()
    return result


def run(ctx: Context) -> list[Row]:
    n = 10_000 if ctx.quick else 100_000
    repeats = 2 if ctx.quick else 3
    url = ctx.create_database("bench_upsert")
    conn = connect(url)
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = [cur.fetchone()[0]]
    conn.rollback()
    store = BarStore(conn)

    base = synthetic_bars(n)
    changed, mask = changed_copy(base)
    n_changed = int(mask.sum())
    # The equality checks use the first 10,000 bars (the same code path as 100,000: upsert_bars
    # switches from one array statement to COPY above 2,000 bars), to keep the full run short.
    n_check = min(n, 10_000)
    check_base, check_changed, check_mask = base.iloc[:n_check], changed.iloc[:n_check], mask[:n_check]

    def truncate() -> None:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE ohlc_bars, bar_revisions")
        conn.commit()

    def maintenance(sql: str) -> None:
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        except Exception:  # noqa: BLE001 — e.g. CHECKPOINT needs a superuser: run without it
            pass
        finally:
            conn.autocommit = False

    def reset(state: str, stored: pd.DataFrame | None = None) -> None:
        truncate()
        if state == "existing":
            copy_rows(conn, base if stored is None else stored, "live")
            maintenance("VACUUM (ANALYZE) ohlc_bars")
        maintenance("CHECKPOINT")

    # ------------------------------------------------------------ equality before timing
    ctx.log(f"upsert: {n:,} bars; checking every method's final table on the first {n_check:,}")
    for mode in ("keep", "replace"):
        src = SOURCE[mode]
        reset("empty")
        _ours(store, check_base, mode=mode, source=src)
        assert_table(conn, expected_table(check_base, src), f"ours {mode} (empty table)")
        reset("empty")
        execute_values_upsert(conn, check_base, mode)
        assert_table(conn, expected_table(check_base, src), f"execute_values {mode} (empty table)")
        reset("empty")
        copy_rows(conn, check_base, src)
        assert_table(conn, expected_table(check_base, src), f"COPY text ({src})")
        reset("empty")
        copy_binary(conn, check_base, src)
        assert_table(conn, expected_table(check_base, src), f"COPY binary ({src})")
    reset("existing", check_base)
    r = _ours(store, check_changed, mode="keep", source="live")
    assert (r.inserted, r.revised) == (0, 0), r
    assert_table(conn, expected_table(check_base, "live"), "ours keep (existing)")
    reset("existing", check_base)
    execute_values_upsert(conn, check_changed, "keep")
    assert_table(conn, expected_table(check_base, "live"), "execute_values keep (existing)")
    exp_replaced = expected_table(check_changed, "history", check_mask.astype(np.int64))
    exp_replaced["source"] = np.where(check_mask, "history", "live")
    reset("existing", check_base)
    r = _ours(store, check_changed, mode="replace", source="history")
    assert (r.inserted, r.revised) == (0, int(check_mask.sum())), r
    assert_table(conn, exp_replaced, "ours replace (existing)")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bar_revisions")
        assert cur.fetchone()[0] == int(check_mask.sum())
    conn.rollback()
    reset("existing", check_base)
    execute_values_upsert(conn, check_changed, "replace")
    assert_table(conn, exp_replaced, "execute_values replace (existing)")

    # ------------------------------------------------------------ timing
    ctx.log(f"upsert: timing, empty table, {repeats} interleaved repeats")
    empty = compare(
        {
            "ours_keep": lambda: _ours(store, base, mode="keep", source="live"),
            "ev_keep": lambda: execute_values_upsert(conn, base, "keep"),
            "ours_replace": lambda: _ours(store, base, mode="replace", source="history"),
            "ev_replace": lambda: execute_values_upsert(conn, base, "replace"),
            "copy": lambda: copy_binary(conn, base, "history"),
            "copy_text": lambda: copy_rows(conn, base, "history"),
        },
        repeats,
        setup=lambda _: reset("empty"),
        backend_pids={k: backend for k in ("ours_keep", "ev_keep", "ours_replace", "ev_replace", "copy", "copy_text")},
        log=ctx.log,
    )
    ctx.log(f"upsert: timing, table holding the bars ({n_changed:,} differ), {repeats} interleaved repeats")
    existing = compare(
        {
            "ours_keep": lambda: _ours(store, changed, mode="keep", source="live"),
            "ev_keep": lambda: execute_values_upsert(conn, changed, "keep"),
            "ours_replace": lambda: _ours(store, changed, mode="replace", source="history"),
            "ev_replace": lambda: execute_values_upsert(conn, changed, "replace"),
        },
        repeats,
        setup=lambda _: reset("existing"),
        backend_pids={k: backend for k in ("ours_keep", "ev_keep", "ours_replace", "ev_replace")},
        log=ctx.log,
    )

    # ------------------------------------------------------------ where the time goes
    # One traced run per mode and state: each database call of upsert_bars timed from the client
    # (round trip + server work), the rest is Python; and the statement's EXPLAIN ANALYZE.
    tconn = tracing_connection(url)
    tstore = BarStore(tconn)
    phases, plans = {}, []
    for mode in ("keep", "replace"):
        for state, frame in (("empty table", base), ("existing", changed)):
            reset("empty" if state == "empty table" else "existing")
            phases[f"{mode}, {state}"] = trace_call(tconn, lambda: _ours(tstore, frame, mode=mode, source=SOURCE[mode]))
            reset("empty" if state == "empty table" else "existing")
            plans.append(
                f"== EXPLAIN (ANALYZE, BUFFERS) of upsert_bars' statement: {mode}, {state}, {len(frame):,} bars ==\n"
                + explain_call(tconn, lambda: _ours(tstore, frame, mode=mode, source=SOURCE[mode]))
            )
    for what, fn in (
        ("execute_values keep, empty table", lambda: execute_values_upsert(tconn, base, "keep")),
        ("COPY binary, empty table", lambda: copy_binary(tconn, base, "history")),
        ("COPY text (to_csv), empty table", lambda: copy_rows(tconn, base, "history")),
    ):
        reset("empty")
        phases[what] = trace_call(tconn, fn)
    tconn.close()
    write_text(ctx, "upsert_plans.txt", "\n\n".join(plans))
    details = {
        "bars": n,
        "changed_in_existing": n_changed,
        "execute_values_page_size": PAGE_SIZE,
        "empty": {k: v.as_dict() for k, v in empty.items()},
        "existing": {k: v.as_dict() for k, v in existing.items()},
        "traced_calls_s": phases,
        "plans_file": "bench/results/upsert_plans.txt",
        "equality": f"on the first {n_check:,} bars, before timing: final ohlc_bars (key, OHLCV, source, revisions) "
        "identical for ours, execute_values and COPY; ours replace also wrote the expected bar_revisions rows",
    }
    if ctx.profile:
        reset("empty")
        _, top, text = cprofile_top(lambda: _ours(store, base, mode="replace", source="history"))
        details["profile_top_replace_empty"] = top
        write_text(ctx, "profile_upsert.txt", "== cProfile: upsert_bars(replace), empty table ==\n" + text)
    conn.close()
    ctx.drop_database(url)

    k = f"{n // 1000}k"
    copy_t = empty["copy"].wall
    rows = []
    for mode in ("keep", "replace"):
        o, ev = empty[f"ours_{mode}"].wall, empty[f"ev_{mode}"].wall
        rows.append(
            Row(
                "upsert",
                f"upsert {mode}: {k} new bars vs execute_values (wall)",
                o,
                "s",
                baseline=ev,
                baseline_name="execute_values",
                ratio=ev / o,
                target="≥ 3× execute_values",
                met=ev / o >= 3.0,
                details=details if mode == "keep" else {},
            )
        )
        rows.append(
            Row(
                "upsert",
                f"upsert {mode}: {k} new bars vs plain COPY, binary (wall)",
                o,
                "s",
                baseline=copy_t,
                baseline_name="COPY binary",
                ratio=copy_t / o,
                ratio_kind="share",
                target="≥ 0.8× COPY",
                met=copy_t / o >= 0.8,
            )
        )
    text_t, o = empty["copy_text"].wall, empty["ours_keep"].wall
    rows.append(
        Row(
            "upsert",
            f"  (context) upsert keep: {k} new bars vs plain COPY, text via to_csv",
            o,
            "s",
            baseline=text_t,
            baseline_name="COPY text",
            ratio=text_t / o,
            ratio_kind="share",
        )
    )
    for mode in ("keep", "replace"):
        o, ev = existing[f"ours_{mode}"].wall, existing[f"ev_{mode}"].wall
        what = "none written" if mode == "keep" else f"{n_changed // 1000}k revised"
        rows.append(
            Row(
                "upsert",
                f"upsert {mode}: {k} bars over stored ones ({what}) vs execute_values",
                o,
                "s",
                baseline=ev,
                baseline_name="execute_values",
                ratio=ev / o,
                target="≥ 3× execute_values",
                met=ev / o >= 3.0,
            )
        )
    return rows
