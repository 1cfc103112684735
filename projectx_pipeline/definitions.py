"""The one Dagster entry point (`workspace.yaml` loads `defs` from this module)."""


import os

from dagster import Definitions, EnvVar

from .orchestration.bar_assets import historical_bars, ohlc_bars, settings
from .orchestration.checks import bar_checks
from .orchestration.resources import GatewayResource, StorageResource
from .orchestration.schedules import after_session_close, backfill_job
from .orchestration.sensors import new_bars_sensor, run_failure_alert
from .orchestration.analysis_assets import analysis_job, coordinated_signals, signal_assets


def _env_or_none(name: str) -> EnvVar | None:
    # EnvVar keeps the value out of the UI and resolves it at run time; an unset optional
    # variable (no credentials: the simulator) stays None instead of failing to resolve.
    return EnvVar(name) if os.environ.get(name) else None


defs = Definitions(
    assets=[ohlc_bars, historical_bars, *signal_assets, coordinated_signals],
    asset_checks=bar_checks,
    jobs=[backfill_job, analysis_job],
    schedules=[after_session_close],
    sensors=[new_bars_sensor, run_failure_alert],
    resources={
        "gateway": GatewayResource(
            api_url=_env_or_none("PROJECTX_API_URL"),
            rtc_url=_env_or_none("PROJECTX_RTC_URL"),
            username=_env_or_none("PROJECTX_USERNAME"),
            api_key=_env_or_none("PROJECTX_API_KEY"),
            rate_limits=settings.file.gateway.rate_limits,
            max_retries=settings.file.gateway.max_retries,
        ),
        "storage": StorageResource(database_url=EnvVar("DATABASE_URL")),
    },
)
