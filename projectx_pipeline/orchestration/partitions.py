"""Partitions, defined once: CME trade dates × configured contracts."""

from datetime import date

from dagster import DailyPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition

from ..domain.contracts import ContractId
from ..settings import Settings

TRADE_DATE = "trade_date"
CONTRACT = "contract"


def build_partitions(settings: Settings) -> MultiPartitionsDefinition:
    """The bars partitions: trade dates from `dagster.partitions_start` × the configured contracts."""
    # Keys are CME trade dates (YYYY-MM-DD). end_offset=1 offers the trade date in progress too, so
    # the 17:30 New York schedule can backfill the session that just closed.
    trade_date_partitions = DailyPartitionsDefinition(
        start_date=settings.file.dagster.partitions_start.isoformat(), timezone="America/New_York", end_offset=1
    )
    contract_partitions = StaticPartitionsDefinition([c.id for c in settings.file.contracts])
    return MultiPartitionsDefinition({TRADE_DATE: trade_date_partitions, CONTRACT: contract_partitions})


def partition_key(trade_date: date | str, contract_id: str) -> MultiPartitionKey:
    return MultiPartitionKey({TRADE_DATE: str(trade_date), CONTRACT: contract_id})


def split_partition_key(partitions: MultiPartitionsDefinition, key) -> tuple[date, ContractId]:
    """(trade date, contract id) of a key of the bars `partitions`."""
    if not isinstance(key, MultiPartitionKey):
        key = partitions.get_partition_key_from_str(key)
    keys = key.keys_by_dimension
    return date.fromisoformat(keys[TRADE_DATE]), ContractId(keys[CONTRACT])
