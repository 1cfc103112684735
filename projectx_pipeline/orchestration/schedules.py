"""Schedules: after each session close, backfill the finished trade date for every contract
(the job includes the bar checks, reconciliation among them)."""

from zoneinfo import ZoneInfo

from dagster import (
    AssetsDefinition,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from ..settings import Settings
from .partitions import ensure_contract_partitions, partition_key


def build_backfill_job(historical_bars: AssetsDefinition):
    """Backfill `historical_bars` (and its checks); tagged so dagster.yaml runs one at a time."""
    return define_asset_job(
        "backfill_job",
        selection=AssetSelection.assets(historical_bars),  # its checks come with it; partitions inferred
        tags={"projectx/gateway": "history"},
        description="Gateway history for trade dates × contracts, validated, gap-checked and reconciled.",
    )


def build_after_session_close(settings: Settings, backfill_job) -> ScheduleDefinition:
    """The schedule that runs `backfill_job` for every contract of `settings` after each close."""

    @schedule(
        name="after_session_close",
        cron_schedule="30 17 * * 1-5",
        execution_timezone="America/New_York",
        job=backfill_job,
        default_status=DefaultScheduleStatus.RUNNING,
        description="17:30 New York, Monday to Friday: backfill and reconcile the trade date that just closed.",
    )
    def after_session_close(context: ScheduleEvaluationContext):
        # the session of trade date D closes at 17:00 New York on D: at 17:30 that is today's date
        trade_date = context.scheduled_execution_time.astimezone(ZoneInfo("America/New_York")).date()
        ensure_contract_partitions(context.instance, [c.id for c in settings.file.contracts])
        for c in settings.file.contracts:
            yield RunRequest(run_key=f"{trade_date}:{c.id}", partition_key=partition_key(trade_date, c.id))

    return after_session_close
