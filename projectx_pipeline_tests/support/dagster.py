"""Dagster instances for tests that materialize partitions."""

from __future__ import annotations

from dagster import DagsterInstance

from projectx_pipeline.orchestration.partitions import ensure_contract_partitions

from .market import MES


def instance_with_contracts(*contract_ids: str) -> DagsterInstance:
    """An ephemeral instance whose contract partitions hold `contract_ids` (MES by default), as
    the `contract_listings` sensor leaves a real instance."""
    instance = DagsterInstance.ephemeral()
    ensure_contract_partitions(instance, contract_ids or (MES,))
    return instance
