-- TimescaleDB when it is available (the production images ship it), nothing otherwise:
-- the same tables then work on plain PostgreSQL and the platform deletes old trades itself.
-- Columnstore (compression) settings use the API current on the server: `enable_columnstore`
-- from TimescaleDB 2.18 on (which deprecated `timescaledb.compress`), the old one before.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('ohlc_bars', 'timestamp', chunk_time_interval => INTERVAL '7 days', migrate_data => true);
        PERFORM create_hypertable('trades', 'timestamp', chunk_time_interval => INTERVAL '1 day', migrate_data => true);
        IF string_to_array(split_part((SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'), '-', 1), '.')::int[]
           >= ARRAY[2, 18] THEN
            ALTER TABLE ohlc_bars SET (timescaledb.enable_columnstore = true,
                timescaledb.segmentby = 'contract_id, timeframe_unit, timeframe_value',
                timescaledb.orderby = '"timestamp"');
            ALTER TABLE trades SET (timescaledb.enable_columnstore = true,
                timescaledb.segmentby = 'contract_id',
                timescaledb.orderby = '"timestamp"');
        ELSE
            ALTER TABLE ohlc_bars SET (timescaledb.compress,
                timescaledb.compress_segmentby = 'contract_id, timeframe_unit, timeframe_value',
                timescaledb.compress_orderby = '"timestamp"');
            ALTER TABLE trades SET (timescaledb.compress,
                timescaledb.compress_segmentby = 'contract_id',
                timescaledb.compress_orderby = '"timestamp"');
        END IF;
        -- Policies are (re)applied from the settings at service start (storage.policies.apply_policies).
    END IF;
END
$$;
