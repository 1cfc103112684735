-- Core tables. Plain PostgreSQL first: 0002 turns the time-series tables into TimescaleDB
-- hypertables when the extension is available.

CREATE TABLE ohlc_bars (
    contract_id     text             NOT NULL,
    timeframe_unit  smallint         NOT NULL CHECK (timeframe_unit BETWEEN 1 AND 6),
    timeframe_value integer          NOT NULL CHECK (timeframe_value > 0),
    "timestamp"     timestamptz      NOT NULL,
    -- float8 round-trips every float exactly; tick-grid prices are checked by the bar checks.
    -- CHECKs run in name order: "finite" first so a NaN is reported as such.
    open            double precision NOT NULL,
    high            double precision NOT NULL,
    low             double precision NOT NULL,
    close           double precision NOT NULL,
    volume          bigint           NOT NULL,
    source          text             NOT NULL CHECK (source IN ('live', 'history')),
    ingested_at     timestamptz      NOT NULL DEFAULT now(),
    revisions       integer          NOT NULL DEFAULT 0,
    PRIMARY KEY (contract_id, timeframe_unit, timeframe_value, "timestamp"),
    CONSTRAINT ohlc_bars_finite_prices CHECK (
        open  NOT IN ('NaN', 'Infinity', '-Infinity') AND high  NOT IN ('NaN', 'Infinity', '-Infinity') AND
        low   NOT IN ('NaN', 'Infinity', '-Infinity') AND close NOT IN ('NaN', 'Infinity', '-Infinity')),
    CONSTRAINT ohlc_bars_range_high_low CHECK (high >= low),
    CONSTRAINT ohlc_bars_range_open CHECK (open BETWEEN low AND high),
    CONSTRAINT ohlc_bars_range_close CHECK (close BETWEEN low AND high),
    CONSTRAINT ohlc_bars_volume_non_negative CHECK (volume >= 0)
);
-- Time-range scans across contracts (retention, status) stay cheap on plain PostgreSQL.
CREATE INDEX ohlc_bars_timestamp_brin ON ohlc_bars USING brin ("timestamp");

CREATE TABLE trades (
    contract_id  text             NOT NULL,
    "timestamp"  timestamptz      NOT NULL,   -- exchange time
    price        double precision NOT NULL CHECK (price NOT IN ('NaN', 'Infinity', '-Infinity')),
    size         bigint           NOT NULL CHECK (size > 0),
    side         smallint         CHECK (side IN (0, 1)),   -- aggressor: 0 buy, 1 sell
    received_at  timestamptz      NOT NULL
);
CREATE INDEX trades_contract_time ON trades (contract_id, "timestamp");
CREATE INDEX trades_timestamp_brin ON trades USING brin ("timestamp");

CREATE TABLE detected_signals (
    id              bigserial PRIMARY KEY,
    analyzer_id     text             NOT NULL,
    contract_id     text             NOT NULL,
    timeframe_unit  smallint         NOT NULL,
    timeframe_value integer          NOT NULL,
    signal_type     text             NOT NULL CHECK (signal_type IN ('uptrend', 'downtrend')),
    start_ts        timestamptz      NOT NULL,   -- label of the bar where the trend began
    confirm_ts      timestamptz      NOT NULL,   -- label of the bar whose close confirmed it
    known_at        timestamptz      NOT NULL,   -- close of the confirming bar: when it became known
    price           double precision NOT NULL,
    rule            text             NOT NULL,
    details         jsonb            NOT NULL DEFAULT '{}'::jsonb,
    detected_at     timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT detected_signals_start_before_confirm CHECK (start_ts < confirm_ts AND confirm_ts < known_at),
    CONSTRAINT detected_signals_unique UNIQUE (analyzer_id, contract_id, timeframe_unit, timeframe_value, signal_type, start_ts)
);
CREATE INDEX detected_signals_known_at ON detected_signals (contract_id, known_at);

CREATE TABLE analyzer_watermarks (
    analyzer_id     text        NOT NULL,
    contract_id     text        NOT NULL,
    timeframe_unit  smallint    NOT NULL,
    timeframe_value integer     NOT NULL,
    last_bar_ts     timestamptz NOT NULL,
    bars_processed  bigint      NOT NULL,
    state           jsonb       NOT NULL,   -- the detector state needed to resume exactly
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (analyzer_id, contract_id, timeframe_unit, timeframe_value)
);

CREATE TABLE coordinated_signals (
    id                bigserial PRIMARY KEY,
    rule              text        NOT NULL,
    label             text        NOT NULL,
    contract_id       text        NOT NULL,
    signal_ts         timestamptz NOT NULL,   -- when the coordinated signal became known
    anchor_signal_id  bigint      NOT NULL REFERENCES detected_signals (id) ON DELETE CASCADE,
    trigger_signal_id bigint      NOT NULL REFERENCES detected_signals (id) ON DELETE CASCADE,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT coordinated_signals_unique UNIQUE (rule, contract_id, anchor_signal_id)
);
CREATE INDEX coordinated_signals_time ON coordinated_signals (contract_id, signal_ts);

CREATE TABLE coordinator_watermarks (
    rule          text        NOT NULL,
    contract_id   text        NOT NULL,
    last_known_at timestamptz NOT NULL,   -- every signal known up to here has been coordinated
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, contract_id)
);

CREATE TABLE ingestion_heartbeats (
    contract_id      text        PRIMARY KEY,
    instance_id      text        NOT NULL,
    connection_state text        NOT NULL,
    last_event_at    timestamptz,
    last_trade_at    timestamptz,
    last_bar_at      timestamptz,
    started_at       timestamptz NOT NULL,
    counters         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Windows the daemon must re-fetch from history (partial bars after a (re)start, late trades,
-- bars dropped during a database outage). Durable, so a SIGKILL loses no repair.
CREATE TABLE bar_repairs (
    contract_id     text        NOT NULL,
    timeframe_unit  smallint    NOT NULL,
    timeframe_value integer     NOT NULL,
    window_start    timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    reason          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contract_id, timeframe_unit, timeframe_value, window_start)
);
