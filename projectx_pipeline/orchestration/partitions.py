"""Partitions, defined once: CME trade dates × contracts.

Contracts are dynamic partitions (`CONTRACTS`): a quarterly roll adds a contract without a code
change or a reload. The `contract_listings` sensor adds the configured contracts and the listed
contracts of their symbols; the sensor and schedule that address a contract make sure it exists
(`ensure_contract_partitions`). A contract once added stays, expired or not, with its history.
"""

from collections.abc import Iterable
from datetime import date

from dagster import DagsterInstance, DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition, TimeWindowPartitionsDefinition

from ..domain.contracts import ContractId
from ..settings import Settings

TRADE_DATE = "trade_date"
CONTRACT = "contract"
TRADE_DATE_CRON = "0 0 * * 1-5"  # one partition per weekday
CONTRACTS = "contracts"  # the dynamic partitions' name in the Dagster instance


def build_partitions(settings: Settings) -> MultiPartitionsDefinition:
    """The bars partitions: trade dates from `dagster.partitions_start` × the contracts added so far."""
    # Keys are CME trade dates (YYYY-MM-DD), Monday to Friday only: a Saturday or Sunday is never a
    # trade date (Sunday evening's session is Monday's). Exchange holidays are keys; their
    # backfill and gap check say "closed". end_offset=1 offers the trade date in progress too, so
    # the 17:30 New York schedule can backfill the session that just closed.
    trade_date_partitions = TimeWindowPartitionsDefinition(
        cron_schedule=TRADE_DATE_CRON,
        start=settings.file.dagster.partitions_start.isoformat(),
        fmt="%Y-%m-%d",
        timezone="America/New_York",
        end_offset=1,
    )
    contract_partitions = DynamicPartitionsDefinition(name=CONTRACTS)
    return MultiPartitionsDefinition({TRADE_DATE: trade_date_partitions, CONTRACT: contract_partitions})


def partition_key(trade_date: date | str, contract_id: str) -> MultiPartitionKey:
    return MultiPartitionKey({TRADE_DATE: str(trade_date), CONTRACT: contract_id})


def split_partition_key(partitions: MultiPartitionsDefinition, key) -> tuple[date, ContractId]:
    """(trade date, contract id) of a key of the bars `partitions`."""
    if not isinstance(key, MultiPartitionKey):
        key = partitions.get_partition_key_from_str(key)
    keys = key.keys_by_dimension
    return date.fromisoformat(keys[TRADE_DATE]), ContractId(keys[CONTRACT])


def ensure_contract_partitions(instance: DagsterInstance, contract_ids: Iterable[str]) -> list[str]:
    """Add the contracts that are not partitions yet; returns those added (ids checked first)."""
    wanted = sorted({ContractId(c) for c in contract_ids})
    missing: list[str] = [c for c in wanted if not instance.has_dynamic_partition(CONTRACTS, c)]
    if missing:
        instance.add_dynamic_partitions(CONTRACTS, missing)
    return missing
