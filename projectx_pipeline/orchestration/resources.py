"""Dagster resources: the gateway client and the market-data storage.

Secrets reach them as `EnvVar`s (resolved by Dagster at run time, never shown in the UI).
Both set up their client/pool when a run starts and close it when the run ends.

The gateway is one interface with two implementations, the real ProjectX gateway and the local
simulator; `gateway_resource` picks one from `Settings.gateway`, the platform's single choice.
"""

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import PrivateAttr

from ..gateway.client import GatewayClient
from ..gateway.config import REAL_API_URL, REAL_RTC_URL, SIMULATOR_CREDENTIAL, SIMULATOR_URL, GatewayConfig
from ..settings import GATEWAY_PROJECTX, Settings
from ..storage.db import ConnectionPool


class GatewayResource(ConfigurableResource, ABC):
    """A gateway client for the run: what assets, checks and sensors ask for."""

    rate_limits: bool = True
    max_retries: int = 6

    _client: GatewayClient | None = PrivateAttr(default=None)

    @abstractmethod
    def gateway_config(self) -> GatewayConfig:
        """Where the gateway is and who logs in."""

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


class ProjectXGatewayResource(GatewayResource):
    """The real ProjectX gateway, logged in with a username and API key."""

    username: str
    api_key: str
    api_url: str | None = None  # default: the TopstepX hosts
    rtc_url: str | None = None

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(self.api_url or REAL_API_URL, self.rtc_url or REAL_RTC_URL, self.username, self.api_key, False)


class SimulatorGatewayResource(GatewayResource):
    """The local gateway simulator (`projectx simulate`); it accepts its own fixed credential."""

    api_url: str | None = None  # default: the simulator's local address
    rtc_url: str | None = None

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(self.api_url or SIMULATOR_URL, self.rtc_url or SIMULATOR_URL, SIMULATOR_CREDENTIAL, SIMULATOR_CREDENTIAL, True)


def gateway_resource(settings: Settings) -> GatewayResource:
    """The gateway resource for `settings.gateway`, its endpoints and secrets as `EnvVar`s."""

    def env_or_none(name: str, value: str | None) -> EnvVar | None:
        # an unset optional endpoint stays None (the implementation's default host) instead of
        # an EnvVar that would fail to resolve
        return EnvVar(name) if value else None

    common: dict[str, Any] = dict(
        api_url=env_or_none("PROJECTX_API_URL", settings.projectx_api_url),
        rtc_url=env_or_none("PROJECTX_RTC_URL", settings.projectx_rtc_url),
        rate_limits=settings.file.gateway.rate_limits,
        max_retries=settings.file.gateway.max_retries,
    )
    if settings.gateway == GATEWAY_PROJECTX:
        return ProjectXGatewayResource(username=EnvVar("PROJECTX_USERNAME"), api_key=EnvVar("PROJECTX_API_KEY"), **common)
    return SimulatorGatewayResource(**common)


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
