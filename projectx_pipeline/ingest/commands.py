"""`projectx ingest [--contracts ID ...] [--timeframes 1m,5m,...]`: the live ingestion daemon, for the
settings' contracts and the front months of their symbols (or exactly the contracts named)."""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import timedelta

from ..errors import UsageError
from ..logs import configure_logging, get_logger, kv

log = get_logger("projectx.ingest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contracts", nargs="+", metavar="ID", help="contract ids (default: the settings' contracts, or the shard's)")
    parser.add_argument("--timeframes", metavar="LIST", help="comma-separated timeframes, e.g. 1m,5m,1h (default: the settings')")


def build_daemon(args: argparse.Namespace):
    from ..domain.contracts import ContractId
    from ..domain.market_hours import CalendarDays
    from ..domain.timeframes import parse_timeframes
    from ..gateway.client import GatewayClient
    from ..gateway.config import GatewayConfig
    from ..gateway.errors import GatewayClientError
    from ..gateway.listings import ListingError, listing_of
    from ..settings import load_settings
    from ..storage.local_db import LocalDatabaseError, default_cluster
    from .daemon import IngestConfig, IngestDaemon

    settings = load_settings()
    contracts: list[ContractId] = [ContractId(c) for c in args.contracts] if args.contracts else settings.contract_ids
    if len(set(contracts)) != len(contracts):
        raise UsageError(f"--contracts {' '.join(contracts)}: expected each contract once")
    symbols = [] if args.contracts else settings.symbols  # --contracts names exactly what to ingest
    timeframes = parse_timeframes(args.timeframes) if args.timeframes else settings.timeframes
    if settings.database_url:
        url = settings.database_url.get()
    else:
        try:
            url = default_cluster().urls()["DATABASE_URL"]
        except LocalDatabaseError as exc:
            raise UsageError(f"DATABASE_URL is not set and {exc}") from None
    ing = settings.file.ingest
    gateway_config = GatewayConfig.from_env(gateway=settings.gateway)  # the choice load_settings made
    client = GatewayClient(gateway_config, rate_limits=settings.file.gateway.rate_limits, max_retries=settings.file.gateway.max_retries)
    listing = None
    if symbols:
        try:  # a symbol the gateway does not list fails here, naming what it lists
            listing = listing_of(client, symbols)
        except (ListingError, GatewayClientError) as exc:
            raise UsageError(f"instruments: {exc}") from None
    config = IngestConfig(
        contracts=contracts,
        timeframes=timeframes,
        database_url=url,
        grace_seconds=ing.grace_seconds,
        heartbeat_seconds=ing.heartbeat_seconds,
        trade_flush_seconds=ing.trade_flush_seconds,
        trade_batch_size=ing.trade_batch_size,
        outage_buffer_bars=ing.outage_buffer_bars,
        initial_lookback=timedelta(days=ing.initial_lookback_days),
        repair_delay_seconds=ing.repair_delay_seconds,
        stale_after_seconds=ing.stale_after_seconds,
        stall_after_seconds=ing.stall_after_seconds,
        calendar=settings.session_calendar(),
        trades_retention_days=settings.file.storage.trades_retention_days,
        bars_compress_after_days=settings.file.storage.bars_compress_after_days,
        symbols=symbols,
        roll_rule=settings.roll_rule(),
        stock_market_open=CalendarDays(),
        listing=lambda: listing_of(client, symbols),
        listing_refresh_seconds=ing.listing_refresh_seconds,
    )
    daemon = IngestDaemon(
        config,
        client,
        lambda out, followed: client.market_hub(followed, out, stale_after=ing.stale_after_seconds),
        listing=listing,
    )
    log.info(
        kv(
            "ingest_config",
            gateway="simulator" if gateway_config.use_simulator else "projectx",
            api_url=gateway_config.api_url,
            rtc_url=gateway_config.rtc_url,
        )
    )
    return daemon


def run(args: argparse.Namespace) -> int:
    from .writer import AnotherDaemonRunning

    configure_logging()
    daemon = build_daemon(args)

    def on_signal(signum, _frame):
        log.info(kv("signal_received", signal=signal.Signals(signum).name))
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
    except AnotherDaemonRunning as exc:
        raise UsageError(str(exc)) from None
    code = daemon.run()
    sys.stdout.flush()
    return code
