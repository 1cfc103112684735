-- Runs once, when the timescaledb volume is initialised (mounted into /docker-entrypoint-initdb.d/
-- after the image's own 00x TimescaleDB scripts). The entrypoint runs it as POSTGRES_USER, connected
-- to POSTGRES_DB (the market-data database, which already exists and has the timescaledb extension).
--
-- Dagster keeps its runs, event logs and schedules in a separate database, so the two can be backed
-- up, sized and moved independently. Its name must match DAGSTER_PG_URL in docker-compose.yml.
CREATE DATABASE dagster;
