"""Settings and CLI input: a bad value is one clear line naming key, value and expectation; exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from projectx_pipeline.domain.timeframes import parse_timeframe
from projectx_pipeline.settings import SettingsError, check_shards, choose_gateway, load_settings

PROJECTX = [sys.executable, "-m", "projectx_pipeline"]


def _settings_file(tmp_path: Path, text: str) -> dict:
    p = tmp_path / "settings.yaml"
    p.write_text(text)
    return {"PROJECTX_SETTINGS": str(p)}


def test_default_settings_load():
    s = load_settings({})
    assert s.symbols == ["MES"] and s.contract_ids == []  # the front month of MES, whatever month that is
    assert s.roll_rule().days_before_expiry == 8 and s.tick_size("CON.F.US.MES.Z26") == 0.25
    assert [t.label for t in s.timeframes] == ["1m", "5m", "15m", "1h", "4h", "1d"]
    assert s.file.ingest.grace_seconds == 2.0
    assert s.database_url is None and not s.has_credentials
    assert len(s.file.coordination.rules) == 2


def test_secrets_never_show_in_repr():
    s = load_settings(
        {"PROJECTX_API_KEY": "super-secret-key-123", "PROJECTX_USERNAME": "trader", "DATABASE_URL": "postgresql://u:db-password-9@127.0.0.1/x"}
    )
    text = repr(s) + str(s)
    assert "super-secret-key-123" not in text and "db-password-9" not in text
    assert s.projectx_api_key.get() == "super-secret-key-123"
    assert s.has_credentials


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("contracts: [{id: 'CON.F.US.MES.M25'}]\ntimeframes: [1m, 7x]\n", "timeframes"),
        ("contracts: [{id: 'CON.F.US.MES.M25'}]\ntimeframes: [1m, 5m, 1m]\n", "1m given more than once"),
        ("contracts: [{id: 'MES; DROP TABLE'}]\ntimeframes: [1m]\n", "contracts.0.id"),
        ("contracts: [{id: 'CON.F.US.MES.M25'}]\ntimeframes: [1m]\ningest: {grace_seconds: -1}\n", "ingest.grace_seconds = -1"),
        ("contracts: [{id: 'CON.F.US.MES.M25'}]\ntimeframes: [1m]\ningest: {grace_secs: 1}\n", "ingest.grace_secs"),
        ("contracts: [{id: 'CON.F.US.MES.M25', tick_size: 0}]\ntimeframes: [1m]\n", "tick_size = 0"),
        (
            "contracts: [{id: 'CON.F.US.MES.M25'}]\ntimeframes: [1m]\n"
            "coordination: {rules: [{name: x, label: long, anchor: {timeframe: 1h, type: up},"
            " trigger: {timeframe: 15m, type: uptrend}, within_minutes: 60}]}\n",
            "up",
        ),
        ("instruments: [{symbol: 'mes'}]\ntimeframes: [1m]\n", "invalid symbol 'mes': expected a futures root such as MES"),
        ("instruments: [{symbol: MES}, {symbol: MES}]\ntimeframes: [1m]\n", "instruments: each symbol once"),
        ("instruments: [{symbol: MES, tick_size: -1}]\ntimeframes: [1m]\n", "instruments.0.tick_size = -1"),
        ("timeframes: [1m]\n", "nothing to collect: expected at least one symbol in instruments"),
        (
            "instruments: [{symbol: MES}]\ncontracts: [{id: CON.F.US.MES.Z26}]\ntimeframes: [1m]\n",
            "contracts ['CON.F.US.MES.Z26'] are months of symbols in instruments",
        ),
        (
            "instruments: [{symbol: MES}]\ntimeframes: [1m]\nrolls: {rule: volume}\n",
            "rolls.rule = 'volume': expected 'calendar': the volume rule decides a roll from a finished session's volumes",
        ),
        ("instruments: [{symbol: MES}]\ntimeframes: [1m]\nrolls: {days_before_expiry: 99}\n", "rolls.days_before_expiry = 99"),
        ("instruments: [{symbol: MES}]\ntimeframes: [1m]\nanalysis: {series: weekly}\n", "analysis.series = 'weekly'"),
        ("- just a list\n", "expected a mapping"),
        ("contracts: [\n", "not valid YAML"),
    ],
)
def test_bad_settings_name_key_and_value(tmp_path, yaml_text, expected):
    with pytest.raises(SettingsError) as exc:
        load_settings(_settings_file(tmp_path, yaml_text))
    message = str(exc.value)
    assert expected in message
    assert "\n" not in message  # one line


def test_bad_environment_values():
    with pytest.raises(SettingsError, match=r"DATABASE_URL = 'mysql://h/db': expected a URL starting with postgresql://"):
        load_settings({"DATABASE_URL": "mysql://h/db"})
    with pytest.raises(SettingsError, match="PROJECTX_SETTINGS = '/nonexistent.yaml'"):
        load_settings({"PROJECTX_SETTINGS": "/nonexistent.yaml"})
    # a password in a bad URL is not echoed
    with pytest.raises(SettingsError) as exc:
        load_settings({"DATABASE_URL": "mysql://user:hunter2@h/db"})
    assert "hunter2" not in str(exc.value)


CREDENTIALS = {"PROJECTX_USERNAME": "trader", "PROJECTX_API_KEY": "k3y-value"}


@pytest.mark.parametrize(
    ("environ", "gateway"),
    [
        ({"PROJECTX_GATEWAY": "simulator"}, "simulator"),
        ({"PROJECTX_GATEWAY": "simulator", **CREDENTIALS}, "simulator"),  # explicit beats credentials
        ({"PROJECTX_GATEWAY": "projectx", **CREDENTIALS}, "projectx"),
        ({"PROJECTX_GATEWAY": " projectx ", **CREDENTIALS}, "projectx"),
        ({}, "simulator"),  # unset: today's rule, credentials decide
        ({"PROJECTX_GATEWAY": "", **CREDENTIALS}, "projectx"),
        (CREDENTIALS, "projectx"),
    ],
)
def test_gateway_choice(environ, gateway, caplog):
    with caplog.at_level("WARNING", logger="projectx.gateway"):
        assert load_settings(environ).gateway == gateway
        assert choose_gateway(environ) == gateway
    assert not caplog.records


@pytest.mark.parametrize("present", ["PROJECTX_USERNAME", "PROJECTX_API_KEY"])
def test_half_a_set_of_credentials_warns_and_uses_the_simulator(present, caplog):
    missing = ({"PROJECTX_USERNAME", "PROJECTX_API_KEY"} - {present}).pop()
    with caplog.at_level("WARNING", logger="projectx.gateway"):
        assert load_settings({present: CREDENTIALS[present]}).gateway == "simulator"
    [record] = caplog.records
    assert record.getMessage() == f"event=config_incomplete_credentials missing={missing} using=simulator"


def test_bad_gateway_choice_names_the_value_and_the_allowed_ones():
    with pytest.raises(SettingsError) as exc:
        load_settings({"PROJECTX_GATEWAY": "real", **CREDENTIALS})
    assert str(exc.value) == "PROJECTX_GATEWAY = 'real': expected one of ['simulator', 'projectx']"


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({}, "PROJECTX_USERNAME and PROJECTX_API_KEY"),
        ({"PROJECTX_USERNAME": "trader"}, "PROJECTX_API_KEY"),
        ({"PROJECTX_API_KEY": "k3y-value", "PROJECTX_USERNAME": "  "}, "PROJECTX_USERNAME"),
    ],
)
def test_projectx_gateway_without_credentials_is_one_line_naming_what_is_missing(environ, missing):
    with pytest.raises(SettingsError) as exc:
        load_settings({"PROJECTX_GATEWAY": "projectx", **environ})
    message = str(exc.value)
    assert message.startswith(f"PROJECTX_GATEWAY = 'projectx': {missing} not set") and "\n" not in message
    assert "k3y-value" not in message


def test_daemon_stops_at_start_when_the_gateway_choice_is_bad(tmp_path):
    proc = _cli(["ingest"], {"PROJECTX_GATEWAY": "projectx", "PROJECTX_USERNAME": "trader", "PROJECTX_HOME": str(tmp_path)}, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "PROJECTX_GATEWAY = 'projectx': PROJECTX_API_KEY not set" in lines[0], proc.stderr
    assert not (tmp_path / ".projectx").exists()  # no partial work


def test_symbols_give_the_tick_size_of_every_month_and_the_roll_rule(tmp_path):
    s = load_settings(
        _settings_file(
            tmp_path,
            "instruments: [{symbol: MES, tick_size: 0.25}, {symbol: M2K, tick_size: 0.1}]\n"
            "contracts: [{id: CON.F.US.MNQ.Z26, tick_size: 0.5}]\ntimeframes: [1m]\nrolls: {days_before_expiry: 5}\n",
        )
    )
    assert s.symbols == ["MES", "M2K"] and s.contract_ids == ["CON.F.US.MNQ.Z26"]
    assert s.tick_size("CON.F.US.M2K.H27") == 0.1 and s.tick_size("CON.F.US.MES.Z26") == 0.25 and s.tick_size("CON.F.US.MNQ.Z26") == 0.5
    assert s.roll_rule().days_before_expiry == 5
    with pytest.raises(SettingsError, match=r"'CON.F.US.ES.Z26' is not configured: .* a month of the symbols \['MES', 'M2K'\]"):
        s.tick_size("CON.F.US.ES.Z26")


def test_a_shard_names_contracts_and_symbols(tmp_path):
    env = _settings_file(
        tmp_path,
        "instruments: [{symbol: MES}, {symbol: MNQ}]\ncontracts: [{id: CON.F.US.ES.Z26}]\ntimeframes: [1m]\n"
        "ingest: {shards: {a: [MES, CON.F.US.ES.Z26], b: [MNQ]}}\n",
    )
    a = load_settings({**env, "PROJECTX_SHARD": "a"})
    assert a.symbols == ["MES"] and a.contract_ids == ["CON.F.US.ES.Z26"]
    assert load_settings({**env, "PROJECTX_SHARD": "b"}).symbols == ["MNQ"]


def test_shards_cover_every_contract_exactly_once():
    ids = ["CON.F.US.MES.M25", "CON.F.US.MNQ.M25"]
    check_shards({"a": [ids[0]], "b": [ids[1]]}, ids)
    with pytest.raises(SettingsError, match="is in both 'a' and 'b'"):
        check_shards({"a": ids, "b": [ids[1]]}, ids)
    with pytest.raises(SettingsError, match=r"are in no shard"):
        check_shards({"a": [ids[0]]}, ids)
    with pytest.raises(SettingsError, match="is in neither contracts nor instruments"):
        check_shards({"a": ids + ["CON.F.US.ES.M25"]}, ids)


def test_shard_selects_its_contracts(tmp_path):
    env = _settings_file(
        tmp_path,
        "contracts: [{id: CON.F.US.MES.M25}, {id: CON.F.US.MNQ.M25}]\ntimeframes: [1m]\n"
        "ingest: {shards: {east: [CON.F.US.MES.M25], west: [CON.F.US.MNQ.M25]}}\n",
    )
    assert load_settings({**env, "PROJECTX_SHARD": "west"}).contract_ids == ["CON.F.US.MNQ.M25"]
    with pytest.raises(SettingsError, match="PROJECTX_SHARD = 'north'"):
        load_settings({**env, "PROJECTX_SHARD": "north"})


def _cli(args: list[str], env_extra: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTX_") and k not in ("DATABASE_URL", "DAGSTER_PG_URL")}
    env.update(env_extra or {})
    return subprocess.run(PROJECTX + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "--timeframes", "1m,9q"], "invalid timeframe '9q'"),
        (["ingest", "--timeframes", "5m,1h,5m"], "5m given more than once"),
        (["ingest", "--contracts", "CON.F.US.MES.M25;DROP"], "invalid contract id"),
        (["db", "explode"], "invalid choice: 'explode'"),
        (["no-such-command"], "invalid choice"),
        (["trend-starts", "/nonexistent/bars.csv"], "/nonexistent/bars.csv"),
    ],
)
def test_bad_cli_input_is_one_line_exit_2(tmp_path, args, needle):
    proc = _cli(args, {"PROJECTX_HOME": str(tmp_path)}, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert not (tmp_path / ".projectx").exists()  # no partial work


def test_bad_settings_file_stops_cli_with_one_line(tmp_path):
    env = _settings_file(tmp_path, "contracts: [{id: CON.F.US.MES.M25}]\ntimeframes: [1m, 5q]\n")
    proc = _cli(["db", "status"], {**env, "PROJECTX_HOME": str(tmp_path)}, cwd=str(tmp_path))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "timeframes" in lines[0] and "5q" in lines[0]


def test_parse_timeframe_labels_round_trip():
    for label in ["30s", "1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w", "1mo"]:
        assert parse_timeframe(label).label == label
