"""The one Dagster entry point: `workspace.yaml` (and the code server's `-m`) loads `defs`.

Nothing is built at import: `defs()` reads the settings once and hands them to the factories, so
a bad setting fails the code location's load with its one-line message, and tests can build the
same Definitions from any settings with `build_definitions`.
"""

from dagster import Definitions, EnvVar, definitions

from .orchestration.analysis_assets import build_analysis_assets
from .orchestration.bar_assets import build_bar_assets
from .orchestration.checks import build_bar_checks
from .orchestration.health import build_freshness
from .orchestration.partitions import build_partitions
from .orchestration.resources import StorageResource, gateway_resource
from .orchestration.schedules import build_after_session_close, build_backfill_job
from .orchestration.sensors import build_contract_listings_sensor, build_new_bars_sensor, run_failure_alert
from .settings import Settings, load_settings


def build_definitions(settings: Settings) -> Definitions:
    """Every asset, check, job, schedule, sensor and resource of the platform for `settings`."""
    partitions = build_partitions(settings)
    bars = build_bar_assets(settings, partitions)
    analysis = build_analysis_assets(settings)
    backfill_job = build_backfill_job(bars.historical_bars)
    freshness = build_freshness(settings, bars.ohlc_bars)
    return Definitions(
        assets=[bars.ohlc_bars, bars.historical_bars, *analysis.assets],
        asset_checks=[*build_bar_checks(settings, bars.historical_bars, partitions), freshness.check],
        jobs=[backfill_job, analysis.job, freshness.job],
        schedules=[build_after_session_close(settings, backfill_job), freshness.schedule],
        sensors=[build_contract_listings_sensor(settings), build_new_bars_sensor(settings, analysis), run_failure_alert],
        resources={
            "gateway": gateway_resource(settings),  # the simulator or ProjectX, as settings.gateway says
            "storage": StorageResource(database_url=EnvVar("DATABASE_URL")),
        },
    )


@definitions
def defs() -> Definitions:
    """What Dagster loads (webserver, daemon, code server, every run): the settings, read once."""
    return build_definitions(load_settings())
