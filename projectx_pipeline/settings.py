"""One typed settings object: the YAML file (defaults shipped in the package, another via
PROJECTX_SETTINGS=path) plus secrets and endpoints from the environment.

A bad value fails at start with one line naming the key, the value and what was expected.
Secrets are held as `Secret` so that printing the settings never shows them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .domain.contracts import SYMBOL_RE, ContractId
from .domain.errors import DomainError
from .domain.market_hours import SessionCalendar
from .domain.rolls import DEFAULT_DAYS_BEFORE_EXPIRY, CalendarRoll
from .domain.timeframes import Timeframe, parse_timeframes
from .logs import get_logger, kv

ENV_SETTINGS = "PROJECTX_SETTINGS"
ENV_GATEWAY = "PROJECTX_GATEWAY"
GATEWAY_SIMULATOR = "simulator"  # the local simulator (`projectx simulate`)
GATEWAY_PROJECTX = "projectx"  # the real ProjectX gateway, with PROJECTX_USERNAME and PROJECTX_API_KEY
GATEWAYS = (GATEWAY_SIMULATOR, GATEWAY_PROJECTX)
_CREDENTIALS = ("PROJECTX_USERNAME", "PROJECTX_API_KEY")

log = get_logger("projectx.gateway")


class SettingsError(ValueError):
    """A setting with a bad value; the message names the key, the value and what was expected."""


class Secret:
    """A string that never shows itself in repr/str/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class _Traded(_Model):
    tick_size: float = Field(0.25, gt=0)  # the price increment; MES, MNQ, ES: 0.25


class ContractSettings(_Traded):
    id: str

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        return ContractId(v)


class InstrumentSettings(_Traded):
    """A symbol whose front month (and the month after it) is collected, whatever month that is."""

    symbol: str

    @field_validator("symbol")
    @classmethod
    def _valid_symbol(cls, v: str) -> str:
        if not SYMBOL_RE.fullmatch(v):
            raise ValueError(f"invalid symbol {v!r}: expected a futures root such as MES, MNQ or ES (1-8 capitals or digits)")
        return v


class RollSettings(_Model):
    """Which listed month of a symbol is its front month (domain/rolls.py)."""

    rule: Literal["calendar"] = "calendar"
    days_before_expiry: int = Field(DEFAULT_DAYS_BEFORE_EXPIRY, ge=0, le=60)

    @field_validator("rule", mode="before")
    @classmethod
    def _live_rule(cls, v: object) -> object:
        if v == "volume":  # domain/rolls.VolumeRoll exists; why it cannot drive the platform, in one line
            raise ValueError(
                "expected 'calendar': the volume rule decides a roll from a finished session's volumes, and the daemon,"
                " the backfills and the health checks need each roll instant ahead of it (docs/market-conventions.md)"
            )
        return v


class IngestSettings(_Model):
    grace_seconds: float = Field(2.0, ge=0, le=300)
    heartbeat_seconds: float = Field(5.0, gt=0, le=300)
    trade_flush_seconds: float = Field(1.0, gt=0, le=60)
    trade_batch_size: int = Field(5000, ge=1, le=1_000_000)
    outage_buffer_bars: int = Field(100_000, ge=1)
    initial_lookback_days: int = Field(3, ge=0, le=3650)
    repair_delay_seconds: float = Field(5.0, ge=0, le=3600)
    stale_after_seconds: float = Field(45.0, gt=0, le=3600)
    # a contract without a trade for this much open-market time is stalled: logged, counted, reconnected
    stall_after_seconds: float = Field(300.0, gt=0, le=86_400)
    # how often the daemon asks the gateway which months of its symbols are listed (a new month
    # is followed from then on; the front month itself switches at the roll instant regardless)
    listing_refresh_seconds: float = Field(3600.0, ge=10, le=86_400)
    shards: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("shards")
    @classmethod
    def _valid_shards(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for names in v.values():
            for name in names:
                if not SYMBOL_RE.fullmatch(name):  # a symbol of `instruments`, or a contract id
                    ContractId(name)
        return v


class StorageSettings(_Model):
    trades_retention_days: int = Field(30, ge=1, le=36500)
    bars_compress_after_days: int = Field(7, ge=1, le=36500)


class GatewaySettings(_Model):
    rate_limits: bool = True
    max_retries: int = Field(6, ge=0, le=20)


class DagsterSettings(_Model):
    partitions_start: date = date(2025, 3, 17)  # first trade date offered for backfills
    reconciliation_tolerance: int = Field(0, ge=0)  # live/history differences allowed per partition
    gap_calendar: str = "CME Globex Equity"  # pandas_market_calendars name
    # Trade dates the calendar gets wrong: it lists Good Friday 2025-04-18 as an early close,
    # but CME equity Globex was shut and the gateway has no bar that day.
    closed_dates: list[date] = Field(default_factory=lambda: [date(2025, 4, 18)])
    freshness_fail_minutes: int = Field(30, ge=1)  # ohlc_bars fails freshness after this many open-market minutes without bars
    sensor_interval_seconds: int = Field(5, ge=1, le=300)


class AnalyzerSettings(_Model):
    id: str
    timeframes: list[Timeframe]

    _tf = field_validator("timeframes", mode="before")(classmethod(lambda cls, v: parse_timeframes(v)))


class AnalysisSettings(_Model):
    analyzers: list[AnalyzerSettings] = Field(default_factory=list)
    # What a symbol of `instruments` is analysed on: `contract`, each followed month's own bars
    # (signal prices are that month's); `continuous`, the symbol's front-month series across its
    # rolls, forward-adjusted (analysis/series_bars.py). Explicit contracts are always their own.
    series: Literal["contract", "continuous"] = "contract"


class CoordinationSettings(_Model):
    rules: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _valid_rules(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from .domain.coordination import CoordinationRule

        for rule in v:
            CoordinationRule.from_dict(rule)
        return v


class FileSettings(_Model):
    instruments: list[InstrumentSettings] = Field(default_factory=list)
    contracts: list[ContractSettings] = Field(default_factory=list)
    timeframes: list[Timeframe]
    rolls: RollSettings = RollSettings()
    ingest: IngestSettings = IngestSettings()
    storage: StorageSettings = StorageSettings()
    gateway: GatewaySettings = GatewaySettings()
    dagster: DagsterSettings = DagsterSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    coordination: CoordinationSettings = CoordinationSettings()

    _tf = field_validator("timeframes", mode="before")(classmethod(lambda cls, v: parse_timeframes(v)))

    @model_validator(mode="after")
    def _cross_checks(self) -> FileSettings:
        ids = [c.id for c in self.contracts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"contracts: each contract once, got {ids}")
        symbols = [i.symbol for i in self.instruments]
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"instruments: each symbol once, got {symbols}")
        if not ids and not symbols:
            raise ValueError("nothing to collect: expected at least one symbol in instruments (or a contract id in contracts)")
        followed = [c for c in ids if ContractId(c).symbol in symbols]
        if followed:
            raise ValueError(
                f"contracts {followed} are months of symbols in instruments: expected either the symbol (its front month is followed) or explicit ids"
            )
        if self.ingest.shards:
            check_shards(self.ingest.shards, ids + symbols)
        return self


def check_shards(shards: Mapping[str, list[str]], configured: list[str]) -> None:
    """Every configured contract and symbol is covered by exactly one shard, and shards name only
    configured ones."""
    seen: dict[str, str] = {}
    for name, entries in shards.items():
        for entry in entries:
            if entry in seen:
                raise SettingsError(f"ingest.shards: {entry} is in both {seen[entry]!r} and {name!r}: expected exactly one shard")
            if entry not in configured:
                raise SettingsError(f"ingest.shards.{name}: {entry} is in neither contracts nor instruments: expected one of {configured}")
            seen[entry] = name
    missing = [c for c in configured if c not in seen]
    if missing:
        raise SettingsError(f"ingest.shards: {missing} are in no shard: expected every contract and symbol in exactly one shard")


@dataclass(frozen=True)
class Settings:
    """Everything a service needs: the file's settings plus the environment's endpoints and secrets."""

    file: FileSettings
    source: str
    database_url: Secret | None
    dagster_pg_url: Secret | None
    projectx_api_url: str | None
    projectx_rtc_url: str | None
    projectx_username: str | None
    projectx_api_key: Secret | None
    shard: str | None
    gateway: str  # GATEWAY_SIMULATOR or GATEWAY_PROJECTX, decided by choose_gateway

    # convenient views -------------------------------------------------------
    @property
    def contract_ids(self) -> list[ContractId]:
        ids = [ContractId(c.id) for c in self.file.contracts]  # parsed at load already: no check again
        if self.shard:
            return [c for c in ids if c in self.file.ingest.shards[self.shard]]
        return ids

    @property
    def timeframes(self) -> list[Timeframe]:
        return list(self.file.timeframes)

    def session_calendar(self) -> SessionCalendar:
        """The market's sessions as the gap check, freshness and the stall watch see them."""
        return SessionCalendar(self.file.dagster.gap_calendar, self.file.dagster.closed_dates)

    @property
    def symbols(self) -> list[str]:
        """The symbols whose front month is followed (`instruments`; the shard's, with a shard)."""
        symbols = [i.symbol for i in self.file.instruments]
        if self.shard:
            return [s for s in symbols if s in self.file.ingest.shards[self.shard]]
        return symbols

    def roll_rule(self) -> CalendarRoll:
        return CalendarRoll(self.file.rolls.days_before_expiry)

    def tick_size(self, contract_id: str) -> float:
        """The tick size of a configured contract, or of any month of a configured symbol."""
        for c in self.file.contracts:
            if c.id == contract_id:
                return c.tick_size
        symbol = ContractId(contract_id).symbol
        for i in self.file.instruments:
            if i.symbol == symbol:
                return i.tick_size
        raise SettingsError(
            f"contract {contract_id!r} is not configured: expected one of {self.contract_ids} or a month of the symbols {self.symbols}"
        )

    @property
    def has_credentials(self) -> bool:
        return bool(self.projectx_username) and bool(self.projectx_api_key)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        parts.append(f"{key} = {value!r}: {msg}" if not isinstance(value, dict) else f"{key}: {msg}")
    return f"invalid settings in {source}: " + "; ".join(parts)


def load_file_settings(path: str | os.PathLike | None = None) -> tuple[FileSettings, str]:
    if path is None:
        text = resources.files("projectx_pipeline").joinpath("default_settings.yaml").read_text()
        source = "default settings"
    else:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(f"{ENV_SETTINGS} = {str(path)!r}: expected the path of a readable YAML settings file")
        text, source = p.read_text(), str(p)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"invalid settings in {source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"invalid settings in {source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return FileSettings.model_validate(raw), source
    except ValidationError as exc:
        raise SettingsError(_format_validation_error(exc, source)) from None
    except (DomainError, SettingsError) as exc:
        raise SettingsError(f"invalid settings in {source}: {exc}") from None


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _url(environ: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = _env(environ, name)
    if value is not None and not value.startswith(tuple(s + "://" for s in schemes)):
        from .storage.urls import redact_url

        shown = redact_url(value)  # never echo a password
        raise SettingsError(f"{name} = {shown!r}: expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
    return value


def choose_gateway(environ: Mapping[str, str]) -> str:
    """Which gateway the platform talks to: the one place this is decided.

    PROJECTX_GATEWAY when set (`projectx` then needs both credentials). Unset: `projectx` when
    PROJECTX_USERNAME and PROJECTX_API_KEY are both set, else `simulator`."""
    present = [name for name in _CREDENTIALS if _env(environ, name)]
    missing = [name for name in _CREDENTIALS if name not in present]
    choice = _env(environ, ENV_GATEWAY)
    if choice is not None:
        if choice not in GATEWAYS:
            raise SettingsError(f"{ENV_GATEWAY} = {choice!r}: expected one of {list(GATEWAYS)}")
        if choice == GATEWAY_PROJECTX and missing:
            raise SettingsError(f"{ENV_GATEWAY} = {choice!r}: {' and '.join(missing)} not set: expected the gateway credentials in the environment")
        return choice
    if not missing:
        return GATEWAY_PROJECTX
    if present:
        # Half a set of credentials is almost certainly a mistake: say so rather than
        # silently talking to the simulator.
        log.warning(kv("config_incomplete_credentials", missing=missing[0], using=GATEWAY_SIMULATOR))
    return GATEWAY_SIMULATOR


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    file_settings, source = load_file_settings(_env(environ, ENV_SETTINGS))
    shard = _env(environ, "PROJECTX_SHARD")
    if shard is not None and shard not in file_settings.ingest.shards:
        raise SettingsError(f"PROJECTX_SHARD = {shard!r}: expected one of the shards in ingest.shards {sorted(file_settings.ingest.shards)}")
    db = _url(environ, "DATABASE_URL", ("postgresql", "postgres"))
    dpg = _url(environ, "DAGSTER_PG_URL", ("postgresql", "postgres"))
    api_key = _env(environ, "PROJECTX_API_KEY")
    return Settings(
        file=file_settings,
        source=source,
        database_url=Secret(db) if db else None,
        dagster_pg_url=Secret(dpg) if dpg else None,
        projectx_api_url=_url(environ, "PROJECTX_API_URL", ("http", "https")),
        projectx_rtc_url=_url(environ, "PROJECTX_RTC_URL", ("http", "https", "ws", "wss")),
        projectx_username=_env(environ, "PROJECTX_USERNAME"),
        projectx_api_key=Secret(api_key) if api_key else None,
        shard=shard,
        gateway=choose_gateway(environ),
    )
