"""Dagster resources: the gateway client and the market-data storage.

Secrets reach them as `EnvVar`s (resolved by Dagster at run time, never shown in the UI).
Both set up their client/pool when a run starts and close it when the run ends.
"""


import contextlib
from typing import Iterator

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from ..gateway.client import GatewayClient
from ..gateway.config import SIMULATOR_CREDENTIAL, SIMULATOR_URL, GatewayConfig
from ..storage.db import ConnectionPool


class GatewayResource(ConfigurableResource):
    """The ProjectX gateway (or the local simulator when no credentials are configured)."""

    api_url: str | None = None
    rtc_url: str | None = None
    username: str | None = None
    api_key: str | None = None
    rate_limits: bool = True
    max_retries: int = 6

    _client: GatewayClient | None = PrivateAttr(default=None)

    def gateway_config(self) -> GatewayConfig:
        use_simulator = not (self.username and self.api_key)
        if use_simulator:
            return GatewayConfig(self.api_url or SIMULATOR_URL, self.rtc_url or SIMULATOR_URL, SIMULATOR_CREDENTIAL, SIMULATOR_CREDENTIAL, True)
        return GatewayConfig.from_env({
            "PROJECTX_USERNAME": self.username, "PROJECTX_API_KEY": self.api_key,
            **({"PROJECTX_API_URL": self.api_url} if self.api_url else {}),
            **({"PROJECTX_RTC_URL": self.rtc_url} if self.rtc_url else {}),
        })

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._client = GatewayClient(self.gateway_config(), rate_limits=self.rate_limits, max_retries=self.max_retries)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> GatewayClient:
        if self._client is None:  # used outside a run (e.g. a sensor): build one on demand
            self._client = GatewayClient(self.gateway_config(), rate_limits=self.rate_limits, max_retries=self.max_retries)
        return self._client


class StorageResource(ConfigurableResource):
    """The market-data database (DATABASE_URL), through a small pool for the run's lifetime."""

    database_url: str
    max_connections: int = 4

    _pool: ConnectionPool | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._pool = ConnectionPool(self.database_url, maxconn=self.max_connections)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextlib.contextmanager
    def connection(self) -> Iterator:
        """A pooled connection; committed on success, rolled back on error."""
        if self._pool is None:
            self._pool = ConnectionPool(self.database_url, maxconn=self.max_connections)
        with self._pool.connection() as conn:
            yield conn
