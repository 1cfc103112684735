"""Bar assets: the daemon's live output (external) and the gateway-history backfill."""

from collections.abc import Iterator
from typing import NamedTuple

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    MultiPartitionsDefinition,
    asset,
)

from ..backfill import backfill_trade_date
from ..domain.quality import sessions_from_calendar
from ..logs import kv
from ..settings import Settings
from .front_months import FrontMonths
from .partitions import CONTRACTS, split_partition_key
from .resources import GatewayResource, StorageResource

GATEWAY_POOL = "projectx_gateway"  # dagster.yaml limits this pool so gateway calls stay in budget


class BarAssets(NamedTuple):
    ohlc_bars: AssetSpec
    historical_bars: AssetsDefinition


def build_bar_assets(settings: Settings, partitions: MultiPartitionsDefinition) -> BarAssets:
    """`ohlc_bars` and `historical_bars` for the timeframes and calendar of `settings`, partitioned by `partitions`."""
    # Written by `projectx ingest`, not by Dagster: declared so lineage, partitions and checks show
    # it (its freshness is the session-aware check of `health.py`, not a wall-clock policy). The
    # new-bar sensor reports its materializations per trade date × contract.
    ohlc_bars = AssetSpec(
        "ohlc_bars",
        description="Live bars built by the ingestion daemon from the market hub (every configured timeframe).",
        partitions_def=partitions,
        group_name="bars",
        kinds={"postgres"},
        metadata={"table": "ohlc_bars", "source": "live"},
    )

    front_months = FrontMonths.from_settings(settings)

    # output_required=False: a month of a followed symbol that is neither its front month nor the
    # next one that day (a partition a backfill of "every contract × every date" picks up) yields
    # nothing. No fetch, no empty materialization that would look like a day without trades; its
    # checks are skipped with it.
    @asset(
        partitions_def=partitions,
        group_name="bars",
        kinds={"postgres"},
        pool=GATEWAY_POOL,
        op_tags={"projectx/gateway": "history"},
        output_required=False,
        description="Gateway history for one CME trade date × contract, every configured timeframe, "
        "upserted replace-when-different (revisions kept in bar_revisions). Idempotent. A month of a configured "
        "symbol is backfilled on the dates it is the front month or the next month; on other dates it is skipped.",
    )
    def historical_bars(context: AssetExecutionContext, gateway: GatewayResource, storage: StorageResource) -> Iterator[MaterializeResult]:
        trade_date, contract_id = split_partition_key(partitions, context.partition_key)
        why_not = front_months.why_not_followed(contract_id, trade_date, context.instance.get_dynamic_partitions(CONTRACTS))
        if why_not is not None:
            context.log.info(kv("historical_bars_skipped", contract=contract_id, trade_date=trade_date, reason=why_not))
            return
        sessions = sessions_from_calendar(settings.file.dagster.gap_calendar, trade_date, trade_date, settings.file.dagster.closed_dates)
        with storage.connection() as conn:
            r = backfill_trade_date(gateway.client, conn, contract_id, trade_date, settings.timeframes, sessions)
        context.log.info(
            kv(
                "historical_bars_done",
                contract=contract_id,
                trade_date=trade_date,
                rows=r.rows,
                inserted=r.inserted,
                revised=r.revised,
                holes=r.holes,
            )
        )
        yield MaterializeResult(
            metadata={
                "rows_per_timeframe": MetadataValue.json(r.rows),
                "rows": sum(r.rows.values()),
                "first_bar": MetadataValue.text(r.first_bar.isoformat() if r.first_bar is not None else "-"),
                "last_bar": MetadataValue.text(r.last_bar.isoformat() if r.last_bar is not None else "-"),
                "inserted": r.inserted,
                "revisions": r.revised,
                "holes_found": r.holes,
                "holes_timeframe": MetadataValue.text(r.holes_timeframe or "-"),
            }
        )

    return BarAssets(ohlc_bars, historical_bars)
