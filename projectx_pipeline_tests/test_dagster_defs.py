"""The whole Definitions: loadable, lineage, automation defaults; the new-bar sensor and the
after-close schedule evaluated against a real instance and database."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    EnvVar,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from projectx_pipeline.definitions import build_definitions, defs
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.domain.rolls import ContractMonth, RollPoint
from projectx_pipeline.gateway.simulator.server import SimulatorServer
from projectx_pipeline.orchestration.analysis_assets import build_analysis_assets
from projectx_pipeline.orchestration.resources import (
    ProjectXGatewayResource,
    SimulatorGatewayResource,
    StorageResource,
)
from projectx_pipeline.orchestration.sensors import send_alert
from projectx_pipeline.settings import load_settings
from projectx_pipeline.storage.bars import upsert_bars
from projectx_pipeline.storage.continuous import record_roll_points

from .support.market import MES
from .support.paths import REPO


@pytest.fixture(scope="module")
def loaded() -> Definitions:
    """The Definitions as Dagster loads them (the `@definitions` function, default settings)."""
    return defs()


def test_definitions_load(loaded):
    Definitions.validate_loadable(loaded)


def test_lineage_from_bars_to_coordinated_signals(loaded):
    graph = loaded.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "ohlc_bars",
        "historical_bars",
        "trend_starts_5m",
        "trend_starts_15m",
        "trend_starts_1h",
        "trend_starts_4h",
        "coordinated_signals",
    } <= keys
    for tf in ("5m", "15m", "1h", "4h"):
        parents = {p.to_user_string() for p in graph.get(AssetKey(f"trend_starts_{tf}")).parent_keys}
        assert parents == {"ohlc_bars", "historical_bars"}
    parents = {p.to_user_string() for p in graph.get(AssetKey("coordinated_signals")).parent_keys}
    assert parents == {"trend_starts_5m", "trend_starts_15m", "trend_starts_1h", "trend_starts_4h"}
    checks = {c.name for c in graph.asset_check_keys}
    assert checks == {"bars_valid", "bars_gaps", "bars_reconciled", "ohlc_bars_fresh"}
    assert {c.name for c in graph.asset_check_keys if c.asset_key == AssetKey("ohlc_bars")} == {"ohlc_bars_fresh"}
    assert graph.get(AssetKey("ohlc_bars")).is_external


MNQ = "CON.F.US.MNQ.M25"
CUSTOM_SETTINGS = f"""
contracts: [{{id: {MES}}}, {{id: {MNQ}, tick_size: 0.25}}]
timeframes: [1m, 5m, 30m]
dagster: {{partitions_start: 2025-06-02, sensor_interval_seconds: 7}}
analysis: {{analyzers: [{{id: cus_cds_trend_finder, timeframes: [30m, 5m]}}]}}
coordination:
  rules:
    - {{name: long_30m_5m, label: long, anchor: {{timeframe: 30m, type: uptrend}}, trigger: {{timeframe: 5m, type: uptrend}}, within_minutes: 30}}
"""


def test_definitions_follow_the_settings_they_are_built_from(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(CUSTOM_SETTINGS)
    built = build_definitions(load_settings({"PROJECTX_SETTINGS": str(path)}))
    Definitions.validate_loadable(built)
    graph = built.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"ohlc_bars", "historical_bars", "trend_starts_5m", "trend_starts_30m", "coordinated_signals"}
    parents = {p.to_user_string() for p in graph.get(AssetKey("coordinated_signals")).parent_keys}
    assert parents == {"trend_starts_5m", "trend_starts_30m"}
    assert built.resolve_assets_def("coordinated_signals").metadata_by_key[AssetKey("coordinated_signals")]["rules"].value == ["long_30m_5m"]
    # both bar assets and the checks share the partitions of these settings
    for key in ("ohlc_bars", "historical_bars"):
        partitions = graph.get(AssetKey(key)).partitions_def
        contract_dim, trade_date_dim = partitions.partitions_defs  # dimensions sorted by name
        assert contract_dim.partitions_def.name == "contracts"  # dynamic: filled by contract_listings
        assert trade_date_dim.partitions_def.start.date().isoformat() == "2025-06-02"
    assert {c.name for c in graph.asset_check_keys} == {"bars_valid", "bars_gaps", "bars_reconciled", "ohlc_bars_fresh"}
    job = built.resolve_job_def("analysis_job")
    assert set(job.graph.node_names()) == {"trend_starts_5m", "trend_starts_30m", "coordinated_signals"}
    assert built.resolve_sensor_def("new_bars_sensor").minimum_interval_seconds == 7
    ny = ZoneInfo("America/New_York")
    # the context is closed with `with`: it opens its own instance, set as Dagster's current one
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:
        with build_schedule_context(instance=instance, scheduled_execution_time=datetime(2025, 6, 3, 17, 30, tzinfo=ny)) as context:
            requests = list(built.resolve_schedule_def("after_session_close")(context))
    assert [r.run_key for r in requests] == [f"2025-06-03:{MES}", f"2025-06-03:{MNQ}"]


@pytest.mark.parametrize(
    ("environ", "resource_type"),
    [
        ({}, SimulatorGatewayResource),
        ({"PROJECTX_USERNAME": "trader", "PROJECTX_API_KEY": "k3y-value"}, ProjectXGatewayResource),
        ({"PROJECTX_GATEWAY": "simulator", "PROJECTX_USERNAME": "trader", "PROJECTX_API_KEY": "k3y-value"}, SimulatorGatewayResource),
        (
            {
                "PROJECTX_GATEWAY": "projectx",
                "PROJECTX_USERNAME": "trader",
                "PROJECTX_API_KEY": "k3y-value",
                "PROJECTX_API_URL": "https://api.example.test",
            },
            ProjectXGatewayResource,
        ),
    ],
)
def test_gateway_resource_is_the_one_the_settings_chose(environ, resource_type):
    gateway = build_definitions(load_settings(environ)).resources["gateway"]
    assert type(gateway) is resource_type
    if resource_type is ProjectXGatewayResource:
        # secrets (and endpoints) stay environment variables, resolved at run time, never values in the UI
        assert isinstance(gateway.username, EnvVar) and isinstance(gateway.api_key, EnvVar)
        assert gateway.api_key.env_var_name == "PROJECTX_API_KEY"
        if "PROJECTX_API_URL" in environ:
            assert isinstance(gateway.api_url, EnvVar)
        else:
            assert gateway.api_url is None  # the implementation's default host
        assert "k3y-value" not in repr(gateway)
    else:
        assert gateway.gateway_config().use_simulator


def test_each_gateway_resource_defaults_to_its_own_hosts():
    real = ProjectXGatewayResource(username="trader", api_key="k3y-value").gateway_config()
    assert (real.api_url, real.rtc_url, real.username, real.use_simulator) == (
        "https://api.topstepx.com",
        "https://rtc.topstepx.com",
        "trader",
        False,
    )
    sim = SimulatorGatewayResource(api_url="http://127.0.0.1:9000").gateway_config()
    assert (sim.api_url, sim.rtc_url, sim.username, sim.api_key, sim.use_simulator) == (
        "http://127.0.0.1:9000",
        "http://127.0.0.1:5080",
        "simulator",
        "simulator",
        True,
    )


# Run in a fresh interpreter: load_settings and Dagster's asset and partition builders are made to
# raise, then every orchestration module and the entry point are imported.
IMPORT_PROBE = """
import importlib, pkgutil
import dagster
import projectx_pipeline.settings as settings
import projectx_pipeline.orchestration as orchestration

def refuse(name):
    def refused(*args, **kwargs):
        raise AssertionError(name + " called at import")
    return refused

settings.load_settings = refuse("load_settings")
for name in ("asset", "multi_asset", "asset_check", "AssetSpec", "DailyPartitionsDefinition", "TimeWindowPartitionsDefinition",
             "StaticPartitionsDefinition", "MultiPartitionsDefinition", "define_asset_job"):
    setattr(dagster, name, refuse(name))
modules = [m.name for m in pkgutil.iter_modules(orchestration.__path__, orchestration.__name__ + ".")]
for name in modules + ["projectx_pipeline.definitions"]:
    importlib.import_module(name)
print(len(modules))
"""


def test_importing_the_orchestration_modules_reads_no_settings_and_builds_nothing():
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) >= 7  # every module was imported


def test_trade_dates_offered_are_weekdays_from_the_start_through_today(loaded):
    from datetime import date, timedelta

    partitions = loaded.resolve_asset_graph().get(AssetKey("historical_bars")).partitions_def
    (trade_dates,) = [d.partitions_def for d in partitions.partitions_defs if d.name == "trade_date"]
    keys = [date.fromisoformat(k) for k in trade_dates.get_partition_keys()]
    assert keys[0] == date(2025, 3, 17) and all(k.weekday() < 5 for k in keys)
    expected, day = [], date(2025, 3, 17)
    today = datetime.now(ZoneInfo("America/New_York")).date()
    while day <= today:  # every weekday up to the trade date in progress (end_offset=1)
        if day.weekday() < 5:
            expected.append(day)
        day += timedelta(days=1)
    assert keys == expected
    # Good Friday 2025-04-18 (no session) is offered: its backfill and gap check report it closed
    assert date(2025, 4, 18) in keys and date(2025, 4, 19) not in keys


def test_automation_starts_running(loaded):
    assert loaded.resolve_schedule_def("after_session_close").default_status == DefaultScheduleStatus.RUNNING
    assert loaded.resolve_schedule_def("ohlc_bars_freshness").default_status == DefaultScheduleStatus.RUNNING
    for name in ("contract_listings", "new_bars_sensor", "run_failure_alert"):
        assert loaded.resolve_sensor_def(name).default_status == DefaultSensorStatus.RUNNING


def test_instance_config_queues_runs_and_keeps_gateway_history_one_at_a_time(loaded, db_server, tmp_path, monkeypatch):
    """The repository's dagster.yaml on a real instance: the default (queued) run coordinator, the
    gateway-history tag and pool limited to one, and the platform's loggers in the run logs."""
    from dagster._core.run_coordinator import QueuedRunCoordinator

    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", db_server.create_database("dagster", migrated=False))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        tag_limits = concurrency.run_queue_config.tag_concurrency_limits
        assert {"key": "projectx/gateway", "limit": 1} in tag_limits
        assert loaded.resolve_job_def("backfill_job").tags["projectx/gateway"] == "history"
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity.value == "op"
        assert loaded.resolve_assets_def("historical_bars").op.pool == "projectx_gateway"
        assert instance.managed_python_loggers == ["projectx"] and instance.python_log_level == "INFO"


def _listings(defs: Definitions, instance: DagsterInstance, gateway):
    with build_sensor_context(instance=instance, resources={"gateway": gateway}) as context:
        return defs.resolve_sensor_def("contract_listings")(context)


def test_listed_contracts_of_the_configured_symbols_become_partitions_without_a_reload(tmp_path):
    """The gateway lists two MES months (a synthetic simulator); the settings name one. The sensor
    adds both, and the same Definitions then offer them as partitions; a second tick adds none."""
    listed = ["CON.F.US.MES.Z26", "CON.F.US.MES.H27", "CON.F.US.MNQ.Z26"]
    sim = SimulatorServer(synthetic=listed, rate_limits=False).start()
    try:
        path = tmp_path / "settings.yaml"
        path.write_text("contracts: [{id: CON.F.US.MES.Z26}]\ntimeframes: [5m]\n")
        built = build_definitions(load_settings({"PROJECTX_SETTINGS": str(path)}))
        gateway = SimulatorGatewayResource(api_url=sim.api_url, rtc_url=sim.rtc_url, rate_limits=False)
        instance = DagsterInstance.ephemeral()
        partitions = built.resolve_asset_graph().get(AssetKey("historical_bars")).partitions_def
        assert partitions.get_partition_keys(dynamic_partitions_store=instance) == []
        result = _listings(built, instance, gateway)
        (request,) = result.dynamic_partitions_requests
        assert request.partitions_def_name == "contracts"
        assert sorted(request.partition_keys) == ["CON.F.US.MES.H27", "CON.F.US.MES.Z26"]  # MNQ is not a configured symbol
        instance.add_dynamic_partitions("contracts", list(request.partition_keys))  # what the daemon does with the request
        keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
        assert "CON.F.US.MES.H27|2025-03-17" in keys and "CON.F.US.MES.Z26|2025-03-17" in keys
        again = _listings(built, instance, gateway)
        assert isinstance(again, SkipReason) and again.skip_message == "no new contract (2 known)"
    finally:
        sim.stop()


def _settings(tmp_path, text: str):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return load_settings({"PROJECTX_SETTINGS": str(path)})


EXPLICIT_MES = f"contracts: [{{id: {MES}}}]\ntimeframes: [5m]\n"


def test_listings_add_the_explicit_contracts_when_the_gateway_is_down(tmp_path, caplog):
    built = build_definitions(_settings(tmp_path, EXPLICIT_MES))
    gateway = SimulatorGatewayResource(api_url="http://127.0.0.1:9", rtc_url="http://127.0.0.1:9", rate_limits=False, max_retries=0)
    with caplog.at_level("WARNING", logger="projectx.dagster"):
        result = _listings(built, DagsterInstance.ephemeral(), gateway)
    (request,) = result.dynamic_partitions_requests
    assert list(request.partition_keys) == [MES]
    assert any("event=contract_listing_failed symbol=MES" in r.getMessage() for r in caplog.records), caplog.text


def test_after_close_schedule_backfills_an_explicit_contract_on_the_trade_date_that_closed(tmp_path):
    built = build_definitions(_settings(tmp_path, EXPLICIT_MES))
    ny = ZoneInfo("America/New_York")
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:  # no contract partition yet: the schedule adds its own
        with build_schedule_context(instance=instance, scheduled_execution_time=datetime(2025, 3, 18, 17, 30, tzinfo=ny)) as context:
            requests = list(built.resolve_schedule_def("after_session_close")(context))
        assert [(r.partition_key, r.run_key) for r in requests] == [(f"{MES}|2025-03-18", f"2025-03-18:{MES}")]
        assert instance.get_dynamic_partitions("contracts") == [MES]


def test_every_listed_month_of_the_symbols_and_of_the_explicit_contracts_becomes_a_partition(tmp_path):
    """A simulator listing the quarterly months of MES and MNQ around 2026-06-01 (H26 has expired:
    the gateway no longer lists it). The settings follow the symbol MES and an explicit MNQ
    contract: every listed month of both symbols is added; H26, added before, stays."""
    sim = SimulatorServer(symbols=["MES", "MNQ"], start_time=datetime(2026, 6, 1, tzinfo=ZoneInfo("UTC")), rate_limits=False).start()
    try:
        built = build_definitions(_settings(tmp_path, "instruments: [{symbol: MES}]\ncontracts: [{id: CON.F.US.MNQ.U26}]\ntimeframes: [5m]\n"))
        gateway = SimulatorGatewayResource(api_url=sim.api_url, rtc_url=sim.rtc_url, rate_limits=False)
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("contracts", ["CON.F.US.MES.H26"])
        (request,) = _listings(built, instance, gateway).dynamic_partitions_requests
        months = ["M26", "U26", "Z26", "H27"]
        assert sorted(request.partition_keys) == sorted([f"CON.F.US.MES.{m}" for m in months] + [f"CON.F.US.MNQ.{m}" for m in months])
        instance.add_dynamic_partitions("contracts", list(request.partition_keys))
        assert "CON.F.US.MES.H26" in instance.get_dynamic_partitions("contracts")  # expired, and kept
        again = _listings(built, instance, gateway)
        assert isinstance(again, SkipReason) and again.skip_message == "no new contract (9 known)"
    finally:
        sim.stop()


def test_listings_say_which_symbol_failed_when_only_symbols_are_configured_and_the_gateway_is_down(tmp_path):
    built = build_definitions(_settings(tmp_path, "instruments: [{symbol: MES}]\ntimeframes: [5m]\n"))
    gateway = SimulatorGatewayResource(api_url="http://127.0.0.1:9", rtc_url="http://127.0.0.1:9", rate_limits=False, max_retries=0)
    result = _listings(built, DagsterInstance.ephemeral(), gateway)
    assert isinstance(result, SkipReason)
    assert result.skip_message.startswith("no new contract (0 known); listing failed for MES: ")


def _schedule_tick(defs: Definitions, instance: DagsterInstance, at: datetime):
    """The schedule's tick as the daemon evaluates it: its run requests' partitions are checked
    against the job's (so a contract that is no partition would fail here)."""
    with build_schedule_context(instance=instance, scheduled_execution_time=at, repository_def=defs.get_repository_def()) as context:
        return defs.resolve_schedule_def("after_session_close").evaluate_tick(context)


def test_after_close_schedule_backfills_each_symbols_front_and_next_month_across_a_roll(tmp_path):
    """MES rolls from M26 to U26 on 2026-06-10 (Juneteenth moved the expiry to 2026-06-18). MYM
    has no month known yet: the others are backfilled all the same."""
    ny = ZoneInfo("America/New_York")
    mnq = "CON.F.US.MNQ.Z26"
    built = build_definitions(_settings(tmp_path, f"instruments: [{{symbol: MES}}, {{symbol: MYM}}]\ncontracts: [{{id: {mnq}}}]\ntimeframes: [5m]\n"))
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("contracts", ["CON.F.US.MES.H26", "CON.F.US.MES.M26", "CON.F.US.MES.U26", "CON.F.US.MES.Z26"])
        eve = _schedule_tick(built, instance, datetime(2026, 6, 9, 17, 30, tzinfo=ny))
        assert [r.partition_key for r in eve.run_requests] == [f"{mnq}|2026-06-09", "CON.F.US.MES.M26|2026-06-09", "CON.F.US.MES.U26|2026-06-09"]
        assert [r.run_key for r in eve.run_requests] == [f"2026-06-09:{mnq}", "2026-06-09:CON.F.US.MES.M26", "2026-06-09:CON.F.US.MES.U26"]
        roll_day = _schedule_tick(built, instance, datetime(2026, 6, 10, 17, 30, tzinfo=ny))
        assert [r.partition_key for r in roll_day.run_requests] == [
            f"{mnq}|2026-06-10",
            "CON.F.US.MES.U26|2026-06-10",
            "CON.F.US.MES.Z26|2026-06-10",
        ]


def test_after_close_schedule_skips_naming_the_symbol_when_no_month_is_known(tmp_path):
    built = build_definitions(_settings(tmp_path, "instruments: [{symbol: MES}]\ntimeframes: [5m]\n"))
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:
        tick = _schedule_tick(built, instance, datetime(2026, 6, 9, 17, 30, tzinfo=ZoneInfo("America/New_York")))
    assert not tick.run_requests
    assert tick.skip_message.startswith("nothing to backfill for 2026-06-09: no month of MES is known")


ANALYSIS_SETTINGS = """
instruments: [{symbol: MES}]
timeframes: [5m, 1h]
analysis: {analyzers: [{id: cus_cds_trend_finder, timeframes: [1h]}]}
"""


def _analyse(tmp_path, db_url, contracts: list[str], partitions: list[str], settings: str = ANALYSIS_SETTINGS):
    """The analysis job of `settings` for `contracts` (empty: what is followed now) on an
    instance whose contract partitions are `partitions`: the result and its log messages."""
    analysis = build_analysis_assets(_settings(tmp_path, settings))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("contracts", partitions)
        result = materialize(
            analysis.assets,
            resources={"storage": StorageResource(database_url=db_url)},
            instance=instance,
            run_config=analysis.run_config(contracts),
            raise_on_error=False,
        )
        return result, [e.user_message for e in instance.all_logs(result.run_id)]


def test_analysis_defaults_to_the_front_month_of_each_symbol_now(tmp_path, db_url):
    # M25 has rolled long ago; Z29 is the front month until its roll in December 2029
    result, _ = _analyse(tmp_path, db_url, [], ["CON.F.US.MES.M25", "CON.F.US.MES.Z29"])
    assert result.success
    (mat,) = result.asset_materializations_for_node("trend_starts_1h")
    assert mat.metadata["contracts"].value == ["CON.F.US.MES.Z29"]


def test_analysis_fails_naming_a_symbol_without_a_front_month(tmp_path, db_url):
    result, messages = _analyse(tmp_path, db_url, [], [])
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]  # trend starts; coordination after it does not run
    assert failure.step_key == "trend_starts_1h"
    assert failure.step_failure_data.user_failure_data.description.startswith("MES: no month of MES is known")
    assert any(m.startswith("event=analysis_symbol_unresolved symbol=MES") for m in messages), messages


def test_analysis_takes_any_month_of_a_configured_symbol_when_asked(tmp_path, db_url):
    result, messages = _analyse(tmp_path, db_url, ["CON.F.US.MES.M25", "CON.F.US.MNQ.M25"], [])
    assert result.success
    (mat,) = result.asset_materializations_for_node("trend_starts_1h")
    assert mat.metadata["contracts"].value == ["CON.F.US.MES.M25", "CON.F.US.MNQ.M25"]
    # a month of MES is the settings'; MNQ is analysed all the same, with a warning
    unconfigured = [m for m in messages if m.startswith("event=contracts_not_in_settings")]
    assert unconfigured and all("contracts=CON.F.US.MNQ.M25 " in m for m in unconfigured), unconfigured


CONTINUOUS_SETTINGS = ANALYSIS_SETTINGS.replace("analysis: {", "analysis: {series: continuous, ")


def test_continuous_analysis_runs_on_each_symbols_series_and_says_why_one_has_none(tmp_path, db_url, conn, sample_dir):
    # no roll recorded: the series has no bars, and the run fails saying why (not green on nothing)
    result, _ = _analyse(tmp_path, db_url, [], [], CONTINUOUS_SETTINGS)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description.startswith("MES: DomainError: no roll of MES is recorded")

    upsert_bars(conn, read_bars_csv(sample_dir / "CON.F.US.MES.M25_1h.csv"), mode="keep", source="history", notify=False)
    record_roll_points(
        conn,
        [RollPoint(datetime(2025, 6, 11, 22, tzinfo=ZoneInfo("UTC")), ContractMonth.of(MES), ContractMonth.of("CON.F.US.MES.U25"))],
        "calendar:8",
    )
    conn.commit()
    result, _ = _analyse(tmp_path, db_url, [], [], CONTINUOUS_SETTINGS)  # no list: each symbol's series
    assert result.success
    (mat,) = result.asset_materializations_for_node("trend_starts_1h")
    assert mat.metadata["contracts"].value == ["MES"]
    assert mat.metadata["bars_processed"].value == 943 and mat.metadata["total_signals"].value > 0
    (coordination,) = result.asset_materializations_for_node("coordinated_signals")
    assert coordination.metadata["contracts"].value == ["MES"]


def test_continuous_analysis_is_launched_once_per_symbol_for_new_bars_of_its_months(tmp_path, db_url, conn, sample_dir):
    built = build_definitions(_settings(tmp_path, CONTINUOUS_SETTINGS))
    sensor = built.resolve_sensor_def("new_bars_sensor")
    m25 = read_bars_csv(sample_dir / "CON.F.US.MES.M25_1h.csv").iloc[:3]  # 22:00, 23:00 of 2025-03-16, 00:00 of 03-17
    u25 = m25.assign(contract_id="CON.F.US.MES.U25")
    upsert_bars(conn, pd.concat([m25.iloc[:2], u25]).reset_index(drop=True), mode="keep", source="live")
    conn.commit()

    def evaluate(cursor=None):
        with build_sensor_context(
            instance=DagsterInstance.ephemeral(), cursor=cursor, resources={"storage": StorageResource(database_url=db_url)}
        ) as context:
            return sensor(context), context.cursor

    result, cursor = evaluate()
    [run] = result.run_requests
    assert run.tags["projectx/series"] == "MES"
    assert all(op["config"]["contracts"] == ["MES"] for op in run.run_config["ops"].values())
    assert run.run_key == f"MES|{MES}:1h@2025-03-16T23:00:00+00:00;CON.F.US.MES.U25:1h@2025-03-17T00:00:00+00:00"
    assert {str(e.partition) for e in result.asset_events} == {f"{MES}|2025-03-17", "CON.F.US.MES.U25|2025-03-17"}
    # the front month's 00:00 bar lands a tick later than the next month's: a run of its own
    upsert_bars(conn, m25.iloc[2:].reset_index(drop=True), mode="keep", source="live")
    conn.commit()
    result, _ = evaluate(cursor)
    assert [r.run_key for r in result.run_requests] == [f"MES|{MES}:1h@2025-03-17T00:00:00+00:00"]


def test_a_bad_series_in_the_run_config_is_refused_by_name(tmp_path):
    analysis = build_analysis_assets(_settings(tmp_path, CONTINUOUS_SETTINGS))
    with pytest.raises(DomainError, match="invalid series 'mes': expected a contract id such as CON.F.US.MES.M25"):
        analysis.run_config(["mes"])


@pytest.fixture
def bars_5m(sample_dir):
    return read_bars_csv(sample_dir / "CON.F.US.MES.M25_5m.csv")


@pytest.fixture
def evaluate(loaded, db_url):
    sensor = loaded.resolve_sensor_def("new_bars_sensor")

    def evaluate(cursor=None):
        # the storage resource sets up a pool (a generator resource): use the context manager form
        with build_sensor_context(
            instance=DagsterInstance.ephemeral(), cursor=cursor, resources={"storage": StorageResource(database_url=db_url)}
        ) as context:
            return sensor(context), context

    return evaluate


def test_new_bars_sensor_reports_materializations_and_launches_analysis_once(evaluate, conn, bars_5m):
    result, ctx = evaluate()
    assert isinstance(result, SkipReason)  # nothing stored yet

    upsert_bars(conn, bars_5m.iloc[:30], mode="keep", source="live")  # 2025-03-16 22:00 .. 2025-03-17 00:25
    conn.commit()  # storage never commits: the caller does
    result, ctx = evaluate(ctx.cursor)
    assert isinstance(result, SensorResult)
    [run] = result.run_requests
    assert run.run_key == f"{MES}:5m@2025-03-17T00:25:00+00:00"
    assert run.tags["projectx/series"] == MES
    assert all(op["config"]["contracts"] == [MES] for op in run.run_config["ops"].values())
    [event] = result.asset_events
    assert event.asset_key == AssetKey("ohlc_bars")
    assert str(event.partition) == f"{MES}|2025-03-17"
    assert event.metadata["last_bar_time"].value == "2025-03-17T00:25:00+00:00"

    # the same bars seen again (the sensor re-reads a little behind its cursor): nothing runs twice
    result2, ctx2 = evaluate(ctx.cursor)
    assert isinstance(result2, SkipReason)

    # a newer bar: a new run with a new key
    upsert_bars(conn, bars_5m.iloc[30:31], mode="keep", source="live")
    conn.commit()  # storage never commits: the caller does
    result3, _ = evaluate(ctx2.cursor)
    assert [r.run_key for r in result3.run_requests] == [f"{MES}:5m@2025-03-17T00:30:00+00:00"]


def test_bars_of_timeframes_not_analysed_report_but_launch_nothing(evaluate, conn, bars_5m):
    one_minute = bars_5m.iloc[:5].assign(timeframe_value=1, timestamp=lambda d: d.timestamp - (d.timestamp - d.timestamp.iloc[0]) / 5)
    upsert_bars(conn, one_minute, mode="keep", source="live")
    conn.commit()  # storage never commits: the caller does
    result, _ = evaluate()
    assert result.run_requests == []
    assert len(result.asset_events) == 1


def test_failure_alert_hook_posts_to_the_configured_webhook(monkeypatch):
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("PROJECTX_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
        send_alert("run 123 of job backfill_job failed: boom")
        assert received == [{"text": "run 123 of job backfill_job failed: boom"}]
    finally:
        server.shutdown()
