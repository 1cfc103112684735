"""The ingestion daemon in-process: `IngestDaemon` on a thread, as `projectx ingest` runs it."""

from __future__ import annotations

import threading

from projectx_pipeline.gateway.client import GatewayClient
from projectx_pipeline.gateway.config import GatewayConfig
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.ingest.daemon import IngestConfig, IngestDaemon

from .market import MES, TIMEFRAMES


class InProcessDaemon:
    """`IngestDaemon` on a thread, wired like `projectx ingest` with test-sized timings."""

    def __init__(self, url: str, sim: SimulatorServer, *, client: GatewayClient | None = None, stale_after: float = 5.0, **config):
        self.sim = sim
        self.client = client or GatewayClient(GatewayConfig(sim.api_url, sim.rtc_url, "tester", "key", True), rate_limits=False)
        options = dict(repair_delay_seconds=0.5, heartbeat_seconds=0.5, trade_flush_seconds=0.5)
        options.update(config)
        self.daemon = IngestDaemon(
            IngestConfig([MES], TIMEFRAMES, url, **options),
            self.client,
            lambda out, contracts: self.client.market_hub(contracts, out, stale_after=stale_after, backoff_cap=2.0, connect_timeout=4.0),
        )
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.daemon.run()), name="test-ingest", daemon=True)

    @property
    def counters(self):
        return self.daemon.counters[MES]

    def __enter__(self) -> InProcessDaemon:
        self.daemon.start()
        self.thread.start()
        return self

    def stop(self) -> int:
        if self.thread.is_alive():
            self.daemon.request_stop()
            self.thread.join(15)
            assert not self.thread.is_alive(), "the daemon did not stop within 15 s"
        self.client.close()
        return self.result[0] if self.result else -1

    def __exit__(self, *exc) -> None:
        self.stop()
