"""Schedules: after each session close, backfill the finished trade date for every contract
followed that day (the job includes the bar checks, reconciliation among them)."""

from zoneinfo import ZoneInfo

from dagster import (
    AssetsDefinition,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from ..logs import kv
from ..settings import Settings
from .front_months import FrontMonths
from .partitions import CONTRACTS, ensure_contract_partitions, partition_key


def build_backfill_job(historical_bars: AssetsDefinition):
    """Backfill `historical_bars` (and its checks); tagged so dagster.yaml runs one at a time."""
    return define_asset_job(
        "backfill_job",
        selection=AssetSelection.assets(historical_bars),  # its checks come with it; partitions inferred
        tags={"projectx/gateway": "history"},
        description="Gateway history for trade dates × contracts, validated, gap-checked and reconciled.",
    )


def build_after_session_close(settings: Settings, backfill_job) -> ScheduleDefinition:
    """The schedule that runs `backfill_job` after each close for every explicit contract and the
    months each symbol follows that day (front and next, `front_months.py`)."""
    front_months = FrontMonths.from_settings(settings)

    @schedule(
        name="after_session_close",
        cron_schedule="30 17 * * 1-5",
        execution_timezone="America/New_York",
        job=backfill_job,
        default_status=DefaultScheduleStatus.RUNNING,
        description="17:30 New York, Monday to Friday: backfill and reconcile the trade date that just closed, for the "
        "explicit contracts and each symbol's front month and next month that day.",
    )
    def after_session_close(context: ScheduleEvaluationContext):
        # the session of trade date D closes at 17:00 New York on D: at 17:30 that is today's date
        trade_date = context.scheduled_execution_time.astimezone(ZoneInfo("America/New_York")).date()
        ensure_contract_partitions(context.instance, front_months.contracts)
        followed = front_months.followed_on(trade_date, context.instance.get_dynamic_partitions(CONTRACTS))
        for symbol, why in followed.unresolved.items():
            # the other contracts are still backfilled; the symbol's months come once they are listed
            context.log.warning(kv("after_session_close_symbol_skipped", symbol=symbol, trade_date=trade_date, reason=why))
        if not followed.contracts:
            return SkipReason(f"nothing to backfill for {trade_date.isoformat()}: " + "; ".join(followed.unresolved.values()))
        return [RunRequest(run_key=f"{trade_date}:{cid}", partition_key=partition_key(trade_date, cid)) for cid in followed.contracts]

    return after_session_close
