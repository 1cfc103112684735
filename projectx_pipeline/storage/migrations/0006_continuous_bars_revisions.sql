-- The continuous series carries each bar's `revisions` and `ingested_at`, as ohlc_bars does: the
-- trend analysis of a continuous series resumes from a watermark only while the bars behind it
-- are unchanged, and tells so by the same fingerprint (count, sum of revisions, newest ingested_at).
-- CREATE OR REPLACE VIEW may only append columns: they come last.
CREATE OR REPLACE VIEW continuous_bars AS
SELECT f.symbol, b.contract_id, b.timeframe_unit, b.timeframe_value, b."timestamp",
       b.open, b.high, b.low, b.close, b.volume, b.revisions, b.ingested_at
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
