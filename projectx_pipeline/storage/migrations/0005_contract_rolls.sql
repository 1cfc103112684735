-- The roll points of each symbol's front-month series: at `roll_at` the front month changes from
-- `from_contract` to `to_contract` (domain/rolls.py computes them; `rule` names the rule that did).
-- A plain table on PostgreSQL and TimescaleDB alike: a handful of rows per symbol and year.
CREATE TABLE IF NOT EXISTS contract_rolls (
    symbol        text        NOT NULL,
    roll_at       timestamptz NOT NULL,
    from_contract text        NOT NULL,
    to_contract   text        NOT NULL,
    rule          text        NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, roll_at),
    -- CHECKs run in name order: the id forms are checked before the month arithmetic reads them.
    CONSTRAINT contract_rolls_a_symbol_form CHECK (symbol ~ '^[A-Z0-9]{1,8}$'),
    CONSTRAINT contract_rolls_b_contract_forms CHECK (
        from_contract ~ '^CON\.F\.[A-Z]{2}\.[A-Z0-9]{1,8}\.[FGHJKMNQUVXZ][0-9]{2}$' AND
        to_contract   ~ '^CON\.F\.[A-Z]{2}\.[A-Z0-9]{1,8}\.[FGHJKMNQUVXZ][0-9]{2}$'),
    CONSTRAINT contract_rolls_c_of_the_symbol CHECK (
        split_part(from_contract, '.', 4) = symbol AND split_part(to_contract, '.', 4) = symbol),
    CONSTRAINT contract_rolls_d_distinct_months CHECK (from_contract <> to_contract),
    -- a roll goes to a later delivery month (year * 12 + month, from the month code such as M25)
    CONSTRAINT contract_rolls_e_forward CHECK (
        substr(split_part(to_contract, '.', 5), 2)::int * 12 + strpos('FGHJKMNQUVXZ', left(split_part(to_contract, '.', 5), 1))
        > substr(split_part(from_contract, '.', 5), 2)::int * 12 + strpos('FGHJKMNQUVXZ', left(split_part(from_contract, '.', 5), 1))),
    CONSTRAINT contract_rolls_f_rule_named CHECK (rule <> ''),
    -- each month is rolled into once and out of once: a symbol's rolls form one chain
    CONSTRAINT contract_rolls_from_once UNIQUE (symbol, from_contract),
    CONSTRAINT contract_rolls_to_once UNIQUE (symbol, to_contract)
);

-- The front-month bars of each symbol and timeframe, unadjusted: the bars of the contract that is
-- front at the bar's start, the `to_contract` of the latest roll at or before it, or before the
-- first roll that roll's `from_contract`. A symbol without a recorded roll has no rows.
--
-- Written as each contract's front span [front_from, front_until) joined to the bars, rather than
-- as "the latest roll at or before each bar" (a lookup per bar): with a handful of spans the
-- planner runs one range scan of ohlc_bars' primary key per span, the bounds of both the span and
-- the caller's WHERE in its index condition. The open ends are ±infinity, not NULL, so that they
-- stay index bounds.
CREATE OR REPLACE VIEW continuous_bars AS
SELECT f.symbol, b.contract_id, b.timeframe_unit, b.timeframe_value, b."timestamp",
       b.open, b.high, b.low, b.close, b.volume
FROM (
    SELECT symbol, to_contract AS contract_id, roll_at AS front_from,
           coalesce(lead(roll_at) OVER (PARTITION BY symbol ORDER BY roll_at), 'infinity'::timestamptz) AS front_until
    FROM contract_rolls
    UNION ALL
    (SELECT DISTINCT ON (symbol) symbol, from_contract, '-infinity'::timestamptz, roll_at
     FROM contract_rolls
     ORDER BY symbol, roll_at)
) AS f
JOIN ohlc_bars AS b
  ON b.contract_id = f.contract_id AND b."timestamp" >= f.front_from AND b."timestamp" < f.front_until;
