-- TimescaleDB when it is available (the production images ship it), nothing otherwise:
-- the same tables then work on plain PostgreSQL and the platform deletes old trades itself.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('ohlc_bars', 'timestamp', chunk_time_interval => INTERVAL '7 days', migrate_data => true);
        PERFORM create_hypertable('trades', 'timestamp', chunk_time_interval => INTERVAL '1 day', migrate_data => true);
        ALTER TABLE ohlc_bars SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'contract_id, timeframe_unit, timeframe_value',
            timescaledb.compress_orderby = '"timestamp"');
        ALTER TABLE trades SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'contract_id',
            timescaledb.compress_orderby = '"timestamp"');
        -- Policies are (re)applied from the settings at service start (storage.apply_policies).
    END IF;
END
$$;
