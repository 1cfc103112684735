"""The Docker deployment, checked without a Docker engine: fast, no network.

Parses docker/docker-compose.yml, docker/Dockerfile, docker/workspace.yaml, docker/.env.example,
the repository's dagster.yaml and the README's "Run on a server" section, and checks
them against the code:

- every command a service runs (command, health check, the image's CMD) is real: `projectx X` has X in
  `cli.COMMANDS` and, when the command module imports, its arguments parse; dagster executables exist
  next to this interpreter and accept the flags (the options `<cmd> --help` lists, read from
  its click command); `python -c` code compiles;
- every file the deployment references exists (build context, Dockerfile, COPY sources, bind mounts,
  init script, workspace, dagster.yaml, the `-m` module), and the non-editable install ships every
  sub-package and data file;
- every environment variable the code reads reaches the services that need it; secrets are only
  interpolated from .env and reach only the services that need them;
- only 127.0.0.1 is published; long-running services have a health check and a restart policy;
  dependencies and profiles (`sim` default, `live`) are consistent;
- the Dockerfile runs as a non-root user and bakes in no secret;
- the README's server section shows the services and commands the compose file really runs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from .support.paths import REPO

DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
WORKSPACE_FILE = DOCKER_DIR / "workspace.yaml"
README = REPO / "README.md"
ROOT_DAGSTER_YAML = REPO / "dagster.yaml"
PACKAGE_DIR = REPO / "projectx_pipeline"
BIN_DIR = Path(sys.executable).parent  # the venv's bin: where `dagster`, `projectx`... live

# ---------------------------------------------------------------------------------------------
# What the deployment must provide (edit these when the platform grows)
# ---------------------------------------------------------------------------------------------

# Services the stack must have, and which of them run forever.
REQUIRED_SERVICES = {"timescaledb", "migrate", "simulator", "ingest", "dagster-code", "dagster-webserver", "dagster-daemon"}
LONG_RUNNING = {"timescaledb", "simulator", "ingest", "dagster-code", "dagster-webserver", "dagster-daemon"}

# Environment variables the code reads (found by scanning string literals, see _code_env_vars) and
# the services that must receive them. A variable the scan finds that is in neither NEEDS nor
# DEV_ONLY_ENV fails the test: decide where it goes, then add it here.
NEEDS: dict[str, set[str]] = {
    "DATABASE_URL": {"migrate", "ingest", "dagster-code"},
    "DAGSTER_PG_URL": {"dagster-code", "dagster-webserver", "dagster-daemon"},
    "DAGSTER_HOME": {"dagster-code", "dagster-webserver", "dagster-daemon"},
    "PROJECTX_SETTINGS": {"migrate", "ingest", "dagster-code"},
    "PROJECTX_SHARD": {"ingest"},
    # Dagster runs, schedules and sensors execute in dagster-code (DefaultRunLauncher via the code
    # server), so backfills need the gateway there as well as in ingest.
    "PROJECTX_GATEWAY": {"ingest", "dagster-code"},
    "PROJECTX_API_URL": {"ingest", "dagster-code"},
    "PROJECTX_RTC_URL": {"ingest", "dagster-code"},
    "PROJECTX_USERNAME": {"ingest", "dagster-code"},
    "PROJECTX_API_KEY": {"ingest", "dagster-code"},
    "PROJECTX_LOG_LEVEL": {"migrate", "simulator", "ingest", "dagster-code"},
    "PROJECTX_LOG_FORMAT": {"migrate", "simulator", "ingest", "dagster-code"},
    # the run_failure_alert sensor is evaluated in the code server
    "PROJECTX_ALERT_WEBHOOK_URL": {"dagster-code"},
}
# May be empty in a service (optional for the code, or empty in profile `sim`).
OPTIONAL_ENV = {"PROJECTX_SHARD", "PROJECTX_GATEWAY", "PROJECTX_USERNAME", "PROJECTX_API_KEY", "PROJECTX_ALERT_WEBHOOK_URL"}
# Read by the code for tests / local development only; no container needs them.
DEV_ONLY_ENV = {
    "PROJECTX_TEST_DATABASE_URL": "the test suite's throw-away database",
    "PROJECTX_SAMPLE_DIR": "relocates the packaged replay sample for local experiments; Docker runs the simulator with --symbols",
    "PROJECTX_PG_BINDIR": "the server binaries of the local/ephemeral PostgreSQL (e.g. a TimescaleDB build); the image uses the compose database",
    "PROJECTX_EXPECT_TIMESCALEDB": "CI's TimescaleDB pass: the suite fails unless its server really runs TimescaleDB",
    "PROJECTX_HOME": "where `projectx db start` keeps its local PostgreSQL; unused when DATABASE_URL is set",
    "PROJECTX_DB_PORT": "port of the local PostgreSQL of `projectx db start`; unused when DATABASE_URL is set",
    "PROJECTX_DEV_SPEED": "replay speed of `projectx dev` (local development only)",
}
# Credentials: interpolated from .env only, and given only to these services.
CREDENTIALS = {"PROJECTX_USERNAME", "PROJECTX_API_KEY", "PROJECTX_ALERT_WEBHOOK_URL"}
CREDENTIAL_SERVICES = {
    "PROJECTX_USERNAME": NEEDS["PROJECTX_USERNAME"] | {"gateway-check"},
    "PROJECTX_API_KEY": NEEDS["PROJECTX_API_KEY"] | {"gateway-check"},
    "PROJECTX_ALERT_WEBHOOK_URL": NEEDS["PROJECTX_ALERT_WEBHOOK_URL"],
}
SECRET_NAME = re.compile(r"PASSWORD|API_KEY|SECRET|TOKEN|WEBHOOK", re.I)

# Executables that exist only in third-party images (cannot be checked here).
TESTED_TIMESCALEDB_IMAGE = "timescale/timescaledb:2.28.3-pg15"
EXTERNAL_IMAGE_TOOLS = {"timescale/timescaledb": {"pg_isready", "psql"}}
DAGSTER_EXECUTABLES = {"dagster", "dagster-webserver", "dagster-daemon"}

SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "expose",
    "depends_on",
    "healthcheck",
    "restart",
    "profiles",
    "init",
    "logging",
    "shm_size",
    "stop_grace_period",
    "stop_signal",
    "user",
    "working_dir",
    "networks",
    "deploy",
    "labels",
    "container_name",
    "secrets",
    "configs",
    "ulimits",
    "mem_limit",
    "cpus",
    "tmpfs",
    "read_only",
    "cap_drop",
    "cap_add",
    "security_opt",
    "extra_hosts",
    "hostname",
    "pull_policy",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTARTS = {"no", "always", "unless-stopped", "on-failure"}


# ---------------------------------------------------------------------------------------------
# Loading and helpers
# ---------------------------------------------------------------------------------------------


@functools.cache
def _compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "docker-compose.yml: expected a `services` mapping"
    return data


def _services() -> dict[str, dict]:
    return _compose()["services"]


_INTERP = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose interpolation with an empty .env: defaults are used, unset values become <NAME>."""
    env = env or {}

    def sub(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"] or "", m["arg"] or ""
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        return f"<{name}>"

    return _INTERP.sub(sub, str(value).replace("$$", "\0")).replace("\0", "$")


def _interpolated_names(text: str) -> set[str]:
    return {m["name"] for m in _INTERP.finditer(text.replace("$$", ""))}


def _argv(command) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(_interpolate(command))
    return [_interpolate(str(x)) for x in command]


def _environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _healthcheck_argv(svc: dict) -> list[str] | None:
    hc = svc.get("healthcheck")
    if not hc or hc.get("disable"):
        return None
    test = hc.get("test")
    if isinstance(test, str):
        return shlex.split(_interpolate(test))
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return shlex.split(_interpolate(test[1]))
    assert test[0] == "CMD", f"healthcheck.test must start with CMD, CMD-SHELL or NONE, got {test[0]!r}"
    return [_interpolate(str(x)) for x in test[1:]]


def _builds_our_image(svc: dict) -> bool:
    return "build" in svc


def _depends_on(svc: dict) -> dict[str, dict]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: {"condition": "service_started", "required": True} for d in deps}
    return {name: {"condition": "service_started", "required": True, **(spec or {})} for name, spec in deps.items()}


def _restart(svc: dict) -> str | None:
    restart = svc.get("restart")
    return "no" if restart is False else restart  # YAML 1.1 reads an unquoted `no` as false


def _one_shots() -> set[str]:
    completed = {
        dep for svc in _services().values() for dep, spec in _depends_on(svc).items() if spec["condition"] == "service_completed_successfully"
    }
    return completed | {name for name, svc in _services().items() if _restart(svc) == "no"}


def _enabled(svc: dict, profiles: set[str]) -> bool:
    return not svc.get("profiles") or bool(set(svc["profiles"]) & profiles)


def _env_example() -> dict[str, str]:
    assert ENV_EXAMPLE.is_file(), f"{ENV_EXAMPLE} is missing"
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^\s*([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            values[m[1]] = m[2].strip()
    return values


def _dockerfile_instructions() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        out.append((instr.upper(), rest.strip()))
    return out


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, rest in _dockerfile_instructions():
        if instr == "ENV":
            for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S+)", rest):
                env[m[1]] = m[2].strip('"')
    return env


def _exec_form(rest: str) -> list[str]:
    rest = rest.strip()
    if rest.startswith("["):
        return [str(x) for x in yaml.safe_load(rest)]
    return shlex.split(rest)


def _dockerfile_cmd() -> list[str]:
    cmds = [_exec_form(rest) for instr, rest in _dockerfile_instructions() if instr == "CMD"]
    assert cmds, "Dockerfile: expected a default CMD"
    return cmds[-1]


def _service_command(name: str) -> list[str]:
    """What the service's container runs: its entrypoint + command, else the image's CMD."""
    svc = _services()[name]
    if svc.get("entrypoint") or svc.get("command"):
        return _argv(svc.get("entrypoint")) + _argv(svc.get("command"))
    return _dockerfile_cmd() if _builds_our_image(svc) else []


def _flag_value(argv: list[str], *flags: str) -> str | None:
    for i, tok in enumerate(argv[:-1]):
        if tok in flags:
            return argv[i + 1]
    return None


def _compose_path(source: str) -> Path:
    return (DOCKER_DIR / _interpolate(source)).resolve()


def _bind_mounts(svc: dict) -> list[tuple[str, str]]:
    """(host source, container target) for the bind mounts of a service."""
    named = set((_compose().get("volumes") or {}).keys())
    mounts = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type", "volume") == "bind":
                mounts.append((vol["source"], vol["target"]))
            continue
        parts = _interpolate(vol).split(":")
        if len(parts) >= 2 and parts[0] not in named:
            mounts.append((parts[0], parts[1]))
    return mounts


def _mount_targets(svc: dict) -> set[str]:
    targets = set()
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            targets.add(vol["target"])
        else:
            parts = _interpolate(vol).split(":")
            targets.add(parts[1] if len(parts) >= 2 else parts[0])
    return targets


# ---------------------------------------------------------------------------------------------
# Command checks
# ---------------------------------------------------------------------------------------------


def _split_subcommands(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    i = 1
    while i < len(argv) and not argv[i].startswith("-"):
        i += 1
    return tuple(argv[1:i]), argv[i:]


@functools.cache
def _dagster_options(executable: str, subcommands: tuple[str, ...]) -> frozenset[str] | str:
    """The options `<executable> <subcommands>` accepts, or why that command does not exist.

    Read from the click command behind the console script (what `--help` prints); falls back to
    running `<executable> ... --help` when the entry point has no module-level click `cli`.
    """
    from importlib.metadata import entry_points

    import click

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == executable]
    cmd = getattr(importlib.import_module(eps[0].module), "cli", None) if eps else None
    if isinstance(cmd, click.Command):
        for i, sub in enumerate(subcommands):
            nxt = cmd.get_command(click.Context(cmd), sub) if isinstance(cmd, click.Group) else None
            if nxt is None:
                return f"`{executable} {' '.join(subcommands[: i + 1])}` is not a command"
            cmd = nxt
        return frozenset(o for prm in cmd.params if isinstance(prm, click.Option) for o in (*prm.opts, *prm.secondary_opts))
    proc = subprocess.run([str(BIN_DIR / executable), *subcommands, "--help"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return f"`{executable} {' '.join(subcommands)} --help` failed ({proc.returncode}): {proc.stdout[-300:]}{proc.stderr[-300:]}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", proc.stdout))


@functools.cache
def _projectx_parser(sub: str):
    """An argparse parser able to parse `projectx <sub> ...`, or the reason there is none yet."""
    from projectx_pipeline import cli

    try:
        return cli.build_parser(), None
    except Exception:  # some command modules are still being written: fall back to this one
        pass
    try:
        module = importlib.import_module(cli.COMMANDS[sub][0])
    except Exception as exc:
        return None, f"{cli.COMMANDS[sub][0]} does not import yet ({type(exc).__name__}: {exc})"
    parser = cli._Parser(prog="projectx")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=cli._Parser)
    module.add_arguments(subparsers.add_parser(sub))
    return parser, None


def _check_command(argv: list[str], svc: dict, where: str) -> tuple[list[str], list[str]]:
    """(problems, notes) for one command line."""
    problems, notes = [], []
    if not argv:
        return [f"{where}: empty command"], notes
    exe = argv[0]
    if not _builds_our_image(svc):
        image = str(svc.get("image", "")).split(":")[0]
        tools = EXTERNAL_IMAGE_TOOLS.get(image, set())
        if exe not in tools:
            problems.append(f"{where}: {exe!r} is not a known executable of image {image!r} ({sorted(tools)})")
        return problems, notes

    if exe == "projectx":
        from projectx_pipeline.cli import COMMANDS

        if len(argv) < 2 or argv[1] not in COMMANDS:
            return [f"{where}: `projectx {' '.join(argv[1:2])}` is not a subcommand (COMMANDS: {sorted(COMMANDS)})"], notes
        parser, why = _projectx_parser(argv[1])
        if parser is None:
            notes.append(f"{where}: arguments of `projectx {argv[1]}` not checked: {why}")
            return problems, notes
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(argv[1:])
            except SystemExit as exc:
                if exc.code not in (0, None):
                    problems.append(f"{where}: `{' '.join(argv)}` is rejected by the CLI: {err.getvalue().strip()}")
        return problems, notes

    if exe in DAGSTER_EXECUTABLES:
        if not (BIN_DIR / exe).exists():
            return [f"{where}: {exe} is not installed in {BIN_DIR}"], notes
        subcommands, rest = _split_subcommands(argv)
        options = _dagster_options(exe, subcommands)
        if isinstance(options, str):
            return [f"{where}: {options}"], notes
        for tok in rest:
            if tok.startswith("-") and tok.split("=", 1)[0] not in options:
                problems.append(f"{where}: `{exe} {' '.join(subcommands)}` has no option {tok.split('=', 1)[0]}")
        module = _flag_value(argv, "-m", "--module-name")
        if module and module.startswith("projectx_pipeline") and not _module_exists(module):
            problems.append(f"{where}: module {module} (-m) does not exist in the repository")
        return problems, notes

    if exe in ("python", "python3"):
        if len(argv) >= 3 and argv[1] == "-c":
            try:
                compile(argv[2], f"<{where}>", "exec")
            except SyntaxError as exc:
                problems.append(f"{where}: python -c code does not compile: {exc}")
        else:
            problems.append(f"{where}: only `python -c <code>` is supported, got {argv[:3]}")
        return problems, notes

    return [f"{where}: unknown executable {exe!r} (expected projectx, dagster*, python -c)"], notes


def _module_exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _command_cases() -> list[tuple[str, str]]:
    try:
        services = _services()
    except Exception:  # reported by test_compose_is_well_formed
        return []
    cases = []
    for name, svc in services.items():
        if svc.get("command") or svc.get("entrypoint") or _builds_our_image(svc):
            cases.append((name, "command"))
        if _healthcheck_argv(svc) is not None:
            cases.append((name, "healthcheck"))
    return cases


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_compose_is_well_formed():
    compose = _compose()
    services = _services()
    problems = []
    missing = REQUIRED_SERVICES - services.keys()
    if missing:
        problems.append(f"missing services: {sorted(missing)}")
    for name, svc in services.items():
        unknown = set(svc) - SERVICE_KEYS
        if unknown:
            problems.append(f"{name}: unknown keys {sorted(unknown)}")
        if "image" not in svc and "build" not in svc:
            problems.append(f"{name}: needs `image` or `build`")
        restart = _restart(svc)
        if restart is not None and str(restart).split(":")[0] not in RESTARTS:
            problems.append(f"{name}: restart {restart!r} is not one of {sorted(RESTARTS)}")
        if set(svc.get("healthcheck") or {}) - HEALTHCHECK_KEYS:
            problems.append(f"{name}: unknown healthcheck keys {sorted(set(svc['healthcheck']) - HEALTHCHECK_KEYS)}")
        for dep, spec in _depends_on(svc).items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
            if spec["condition"] not in CONDITIONS:
                problems.append(f"{name}: depends_on {dep} condition {spec['condition']!r} not in {sorted(CONDITIONS)}")
        named = set((compose.get("volumes") or {}).keys())
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str):
                source = _interpolate(vol).split(":")[0]
                if not source.startswith((".", "/", "~")) and source not in named:
                    problems.append(f"{name}: volume {source!r} is not declared under top-level `volumes`")
    raw = COMPOSE_FILE.read_text()
    if "<<:" not in raw or not re.search(r"&[\w-]+", raw):
        problems.append("shared settings should use YAML anchors and merge keys (<<: *anchor) instead of repetition")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("service,where", _command_cases(), ids=lambda v: str(v))
def test_service_commands_are_real(service, where):
    svc = _services()[service]
    argv = _service_command(service) if where == "command" else _healthcheck_argv(svc)
    problems, notes = _check_command(argv, svc, f"{service} {where}")
    assert not problems, "\n".join(problems)
    if notes:
        pytest.skip("; ".join(notes) + " (checked against cli.COMMANDS only)")


def test_image_default_command_is_real():
    problems, notes = _check_command(_dockerfile_cmd(), {"build": "docker/Dockerfile"}, "Dockerfile CMD")
    assert not problems, "\n".join(problems)
    if notes:
        pytest.skip("; ".join(notes))


def test_referenced_files_exist():
    problems = []
    for name, svc in _services().items():
        build = svc.get("build")
        if build:
            build = {"context": build} if isinstance(build, str) else build
            context = _compose_path(build.get("context", "."))
            if not context.is_dir():
                problems.append(f"{name}: build context {context} does not exist")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if dockerfile.resolve() != DOCKERFILE.resolve():
                problems.append(f"{name}: builds {dockerfile}, expected {DOCKERFILE}")
            if context.resolve() != REPO:
                problems.append(f"{name}: build context {context} should be the repository root ({REPO})")
        for source, target in _bind_mounts(svc):
            if not _compose_path(source).exists():
                problems.append(f"{name}: bind mount source {source} -> {target} does not exist ({_compose_path(source)})")
        env_files = svc.get("env_file") or []
        for env_file in [env_files] if isinstance(env_files, (str, dict)) else env_files:
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            p = _compose_path(path)
            if not p.exists() and not (p.name == ".env" and ENV_EXAMPLE.exists()):
                problems.append(f"{name}: env_file {path} does not exist (nor a .env.example for it)")
    if not ENV_EXAMPLE.is_file():
        problems.append(f"{ENV_EXAMPLE} is missing")
    if not WORKSPACE_FILE.is_file():
        problems.append(f"{WORKSPACE_FILE} is missing")
    if not ROOT_DAGSTER_YAML.is_file():
        problems.append(f"{ROOT_DAGSTER_YAML} is missing (the image copies it into DAGSTER_HOME)")
    # Dockerfile COPY sources, relative to the build context (the repository root)
    for instr, rest in _dockerfile_instructions():
        if instr in ("COPY", "ADD"):
            args = [a for a in _exec_form(rest) if not a.startswith("--")]
            if any(a.startswith("--from") for a in rest.split()):
                continue
            for source in args[:-1]:
                if source in (".", "./", "*") or ".env" in Path(source).name and "example" not in source:
                    problems.append(f"Dockerfile: `{instr} {rest}` copies the whole context or a .env file (secrets)")
                elif not (REPO / source).exists():
                    problems.append(f"Dockerfile: `{instr} {rest}`: {source} does not exist in the build context")
    assert not problems, "\n".join(problems)


def test_non_editable_install_ships_every_package_and_data_file():
    """The image installs with `pip install .` (not editable): what setup.py leaves out is missing there."""
    import setuptools

    namespace: dict = {}
    captured = {}
    setup_text = (REPO / "setup.py").read_text()
    original = setuptools.setup
    try:
        setuptools.setup = lambda **kw: captured.update(kw)  # type: ignore[assignment]
        cwd = os.getcwd()
        os.chdir(REPO)  # find_packages() looks in the current directory
        try:
            exec(compile(setup_text, str(REPO / "setup.py"), "exec"), namespace)
        finally:
            os.chdir(cwd)
    finally:
        setuptools.setup = original
    packages = set(captured["packages"])
    package_data = captured.get("package_data", {})
    problems = []
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or path.is_dir():
            continue
        rel_dir = path.parent.relative_to(REPO)
        pkg = ".".join(rel_dir.parts)
        if path.suffix == ".py":
            if pkg not in packages:
                problems.append(f"{path.relative_to(REPO)}: package {pkg} is not installed (missing __init__.py?)")
            continue
        # data file: must match a package_data glob of one of its enclosing packages
        covered = False
        for owner, patterns in package_data.items():
            owner_dir = REPO.joinpath(*owner.split("."))
            if owner_dir in path.parents:
                rel = path.relative_to(owner_dir).as_posix()
                covered |= any(fnmatch.fnmatch(rel, pattern) for pattern in patterns)
        if not covered:
            problems.append(f"{path.relative_to(REPO)}: not in setup.py package_data, so not in the image")
    assert not problems, "\n".join(problems)


_CODE_ENV = re.compile(r"""(?P<q>["'])(?P<name>DATABASE_URL|DAGSTER_PG_URL|DAGSTER_HOME|PROJECTX_[A-Z0-9_]+)(?P=q)""")
_YAML_ENV = re.compile(r"\benv:\s*['\"]?(?P<name>[A-Z_][A-Z0-9_]*)")


def _code_env_vars() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for m in _CODE_ENV.finditer(path.read_text(errors="replace")):
            found.setdefault(m["name"], set()).add(str(path.relative_to(REPO)))
    return found


def _dagster_yaml_env_vars() -> set[str]:
    if not ROOT_DAGSTER_YAML.is_file():
        return set()
    return {m["name"] for m in _YAML_ENV.finditer(ROOT_DAGSTER_YAML.read_text())}


def test_code_env_vars_reach_the_services_that_need_them():
    found = _code_env_vars()
    assert "DATABASE_URL" in found and "PROJECTX_API_KEY" in found, f"env scan found too little: {sorted(found)}"
    needs = {k: set(v) for k, v in NEEDS.items()}
    for name in _dagster_yaml_env_vars():
        needs.setdefault(name, set()).update({"dagster-code", "dagster-webserver", "dagster-daemon"})
    problems = []
    unknown = set(found) - needs.keys() - DEV_ONLY_ENV.keys()
    for name in sorted(unknown):
        problems.append(
            f"{name} is read by {sorted(found[name])} but the deployment does not know it: pass it to the "
            f"services that need it in docker-compose.yml + .env.example, then add it to NEEDS (or to DEV_ONLY_ENV)"
        )
    image_env = _dockerfile_env()
    services = _services()
    for name, targets in sorted(needs.items()):
        if name not in found and name not in _dagster_yaml_env_vars() and name != "DAGSTER_HOME":
            continue  # no longer read by the code
        for target in sorted(targets):
            svc = services.get(target)
            if svc is None:
                problems.append(f"{name}: service {target} does not exist")
                continue
            env = _environment(svc)
            if name in env:
                value = _interpolate(env[name])
            elif _builds_our_image(svc) and name in image_env:
                value = image_env[name]
            else:
                problems.append(f"{name} is not provided to {target}")
                continue
            if not value and name not in OPTIONAL_ENV:
                problems.append(f"{name} is empty in {target} with an empty .env")
    assert not problems, "\n".join(problems)


def test_env_wiring_is_consistent():
    """URLs point at real services and ports; the settings file is mounted where PROJECTX_SETTINGS says."""
    services = _services()
    problems = []
    sim_port = _flag_value(_service_command("simulator"), "--port")
    db = services["timescaledb"]
    db_env = {k: _interpolate(v) for k, v in _environment(db).items()}
    init_sql = "\n".join(
        _compose_path(src).read_text()
        for src, target in _bind_mounts(db)
        if target.startswith("/docker-entrypoint-initdb.d/") and _compose_path(src).is_file()
    )
    for name, svc in services.items():
        env = {k: _interpolate(v) for k, v in _environment(svc).items()}
        for key in ("PROJECTX_API_URL", "PROJECTX_RTC_URL"):
            if env.get(key):
                url = urlsplit(env[key])
                if url.hostname != "simulator" or str(url.port) != sim_port:
                    problems.append(f"{name}: default {key}={env[key]} should be the simulator service (http://simulator:{sim_port})")
        for key in ("DATABASE_URL", "DAGSTER_PG_URL"):
            if key in env:
                url = urlsplit(env[key])
                dbname = url.path.lstrip("/")
                if url.hostname != "timescaledb" or url.port != 5432:
                    problems.append(f"{name}: {key} should point at timescaledb:5432, got {url.hostname}:{url.port}")
                if url.username != db_env.get("POSTGRES_USER"):
                    problems.append(f"{name}: {key} user {url.username} != timescaledb POSTGRES_USER {db_env.get('POSTGRES_USER')}")
                if key == "DATABASE_URL" and dbname != db_env.get("POSTGRES_DB"):
                    problems.append(f"{name}: DATABASE_URL database {dbname} != POSTGRES_DB {db_env.get('POSTGRES_DB')}")
                if key == "DAGSTER_PG_URL" and not re.search(rf"CREATE\s+DATABASE\s+\"?{re.escape(dbname)}\"?\s*;", init_sql, re.I):
                    problems.append(f"{name}: DAGSTER_PG_URL database {dbname!r} is not created by an init script")
        if env.get("PROJECTX_SETTINGS") and env["PROJECTX_SETTINGS"] not in _mount_targets(svc):
            problems.append(f"{name}: PROJECTX_SETTINGS={env['PROJECTX_SETTINGS']} is not a mounted file")
    assert not problems, "\n".join(problems)


def test_env_example_documents_every_variable():
    example = _env_example()
    text = ENV_EXAMPLE.read_text()
    problems = []
    documented = set(example) | set(re.findall(r"^\s*#\s*([A-Z_][A-Z0-9_]*)=", text, re.M))
    for name in sorted(_interpolated_names(COMPOSE_FILE.read_text())):
        if name not in documented:
            problems.append(f"{name} is used in docker-compose.yml but has no `{name}=` line in .env.example")
    for name in sorted(set(NEEDS) | _dagster_yaml_env_vars()):
        if not re.search(rf"\b{name}\b", text):
            problems.append(f"{name} (read by the code) is not explained in .env.example")
    if "COMPOSE_PROFILES" not in example:
        problems.append("COMPOSE_PROFILES (which profile runs by default) is not set in .env.example")
    assert not problems, "\n".join(problems)


def test_no_hard_coded_secrets():
    problems = []
    pure = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}$")
    for name, svc in _services().items():
        for key, value in _environment(svc).items():
            if SECRET_NAME.search(key) or key in CREDENTIALS:
                m = pure.match(value.strip())
                if not m or m["name"] != key:
                    problems.append(f"{name}: {key} must be `${{{key}}}` from .env, got {value!r}")
                elif m["op"] in (":-", "-") and m["arg"]:
                    problems.append(f"{name}: {key} has a hard-coded default {m['arg']!r}")
            masked = _INTERP.sub(lambda m: f"\x01{m['name']}\x02", value)  # ${...} -> one token
            for url in re.findall(r"\w+://[^\s\"']+", masked):
                if "@" in url:
                    userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
                    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
                    if password and not re.fullmatch(r"\x01\w+\x02", password):
                        problems.append(f"{name}: {key} embeds a literal password")
            if key in CREDENTIALS and name not in CREDENTIAL_SERVICES[key]:
                problems.append(f"{name}: receives {key} but does not need it")
        if svc.get("env_file"):
            problems.append(f"{name}: env_file hands every .env secret to the container: pass the variables it needs in `environment`")
    for line in COMPOSE_FILE.read_text().splitlines():
        if re.search(r"PROJECTX_API_KEY\s*[:=]", line) and not line.strip().startswith("#"):
            if not re.search(r"PROJECTX_API_KEY\s*[:=]\s*\"?\$\{PROJECTX_API_KEY(:-)?\}\"?\s*(#.*)?$", line):
                problems.append(f"docker-compose.yml: {line.strip()!r}: PROJECTX_API_KEY only as ${{PROJECTX_API_KEY}}")
    for key, value in _env_example().items():
        if (SECRET_NAME.search(key) or key in CREDENTIALS) and value:
            problems.append(f".env.example: {key} must be empty (a value here ends up in git)")
    for instr, rest in _dockerfile_instructions():
        if instr in ("ENV", "ARG"):
            for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)(?:=|\s|$)", rest):
                if SECRET_NAME.search(m[1]) or m[1] in CREDENTIALS | {"DATABASE_URL", "DAGSTER_PG_URL"}:
                    problems.append(f"Dockerfile: `{instr} {rest}` bakes {m[1]} into the image")
        if re.search(r"\w+://[^/\s:@]+:[^@\s]+@", rest):
            problems.append(f"Dockerfile: `{instr} {rest}` contains a URL with a password")
    assert not problems, "\n".join(problems)


def _published(svc: dict) -> list[tuple[str, str, str]]:
    """(host_ip, host_port, container_port) per published port."""
    out = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])))
            continue
        spec = _interpolate(str(port)).split("/")[0]
        m = re.match(r"^(?:(?P<ip>\[[^\]]+\]|(?:\d{1,3}\.){3}\d{1,3}):)?(?:(?P<host>[\d-]*):)?(?P<target>[\d-]+)$", spec)
        assert m, f"cannot parse port {port!r}"
        out.append((m["ip"] or "", m["host"] or "", m["target"]))
    return out


def test_only_the_webserver_is_published_and_only_on_localhost():
    problems = []
    for name, svc in _services().items():
        for ip, host, target in _published(svc):
            if ip != "127.0.0.1":
                problems.append(f"{name}: port {host or '(random)'}:{target} is published on {ip or 'all interfaces'}, expected 127.0.0.1")
            if name != "dagster-webserver":
                problems.append(f"{name}: publishes {target}; only dagster-webserver is published")
    web = _services()["dagster-webserver"]
    web_port = _flag_value(_service_command("dagster-webserver"), "-p", "--port")
    if ("127.0.0.1", "3000", web_port) not in _published(web):
        problems.append(f"dagster-webserver: expected 127.0.0.1:3000:{web_port}, got {_published(web)}")
    if _flag_value(_service_command("dagster-webserver"), "-h", "--host") != "0.0.0.0":
        problems.append("dagster-webserver must listen on 0.0.0.0 inside the container (the port mapping restricts it)")
    assert not problems, "\n".join(problems)


def test_long_running_services_have_healthcheck_and_restart_policy():
    services = _services()
    one_shots = _one_shots()
    problems = []
    for name in sorted(LONG_RUNNING & one_shots):
        problems.append(f"{name}: must run forever, but is a one-shot (restart: no / completed dependency)")
    for name, svc in services.items():
        if name in one_shots:
            if _restart(svc) not in (None, "no") and not str(_restart(svc)).startswith("on-failure"):
                problems.append(f"{name}: one-shot with restart {_restart(svc)!r} would run again and again")
            continue
        if _restart(svc) not in ("unless-stopped", "always"):
            problems.append(f"{name}: long-running without `restart: unless-stopped` (got {_restart(svc)!r})")
        if _healthcheck_argv(svc) is None:
            problems.append(f"{name}: long-running without a healthcheck")
    assert not problems, "\n".join(problems)


def test_dependencies_and_profiles_are_consistent():
    services = _services()
    one_shots = _one_shots()
    problems = []
    for name, svc in services.items():
        for dep, spec in _depends_on(svc).items():
            target = services.get(dep, {})
            if spec["condition"] == "service_healthy" and _healthcheck_argv(target) is None:
                problems.append(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            if spec["condition"] == "service_completed_successfully" and dep not in one_shots:
                problems.append(f"{name}: waits for {dep} to complete, but {dep} is long-running")
            if set(target.get("profiles") or []) - set(svc.get("profiles") or []) and spec.get("required", True):
                problems.append(f"{name}: depends on {dep} (profiles {target.get('profiles')}) without `required: false`")
    # what runs in each profile
    for profile, must_run, must_not_run in (
        ("sim", {"simulator"}, {"gateway-check"}),
        ("live", {"gateway-check"} & services.keys(), {"simulator"}),
    ):
        enabled = {n for n, s in services.items() if _enabled(s, {profile})}
        for name in LONG_RUNNING - {"simulator"} | {"migrate"} | must_run:
            if name not in enabled:
                problems.append(f"profile {profile}: {name} does not run")
        for name in must_not_run & enabled:
            problems.append(f"profile {profile}: {name} should not run")
        for name in enabled:
            for dep, spec in _depends_on(services[name]).items():
                if dep not in enabled and spec.get("required", True):
                    problems.append(f"profile {profile}: {name} requires {dep}, which is disabled")
    # ingest and the Dagster code server wait for the schema and for the database
    for name in ("ingest", "dagster-code"):
        deps = _depends_on(services[name])
        if deps.get("migrate", {}).get("condition") != "service_completed_successfully":
            problems.append(f"{name}: should wait for migrate to complete")
        if deps.get("timescaledb", {}).get("condition") != "service_healthy":
            problems.append(f"{name}: should wait for timescaledb to be healthy")
    if _depends_on(services["ingest"]).get("simulator", {}).get("condition") != "service_healthy":
        problems.append("ingest: should wait for the simulator (required: false) to be healthy in profile sim")
    default_profiles = set(_env_example().get("COMPOSE_PROFILES", "").split(","))
    if not _enabled(services["simulator"], default_profiles):
        problems.append(f"the default profile ({default_profiles}) from .env.example does not run the simulator")
    assert not problems, "\n".join(problems)


def test_database_service():
    db = _services()["timescaledb"]
    problems = []
    # an exact tag, the PostgreSQL major and TimescaleDB release that CI's second pass tests
    if db.get("image") != TESTED_TIMESCALEDB_IMAGE:
        problems.append(f"timescaledb: image {db.get('image')!r}, expected {TESTED_TIMESCALEDB_IMAGE}")
    argv = _healthcheck_argv(db) or []
    if not argv or argv[0] != "pg_isready":
        problems.append("timescaledb: healthcheck should be pg_isready")
    named = set((_compose().get("volumes") or {}).keys())
    data_volumes = [
        parts[0]
        for parts in (_interpolate(str(v)).split(":") for v in db.get("volumes") or [])
        if len(parts) >= 2 and parts[1] == "/var/lib/postgresql/data"
    ]
    if not data_volumes or data_volumes[0] not in named:
        problems.append(f"timescaledb: /var/lib/postgresql/data must be a named volume, got {data_volumes}")
    inits = [(s, t) for s, t in _bind_mounts(db) if t.startswith("/docker-entrypoint-initdb.d")]
    if not inits:
        problems.append("timescaledb: no init script mounted into /docker-entrypoint-initdb.d/")
    for _source, target in inits:
        if target.rstrip("/") == "/docker-entrypoint-initdb.d":
            problems.append("timescaledb: mounting a directory over /docker-entrypoint-initdb.d hides the image's TimescaleDB scripts")
        elif Path(target).name < "002":
            problems.append(f"timescaledb: {target} would run before the image's 00x TimescaleDB scripts")
    env = _environment(db)
    if "POSTGRES_PASSWORD" not in env or "POSTGRES_DB" not in env:
        problems.append("timescaledb: POSTGRES_PASSWORD and POSTGRES_DB must be set")
    assert not problems, "\n".join(problems)


def test_dockerfile_rules():
    instructions = _dockerfile_instructions()
    problems = []
    froms = [rest for instr, rest in instructions if instr == "FROM"]
    args = {m[1]: m[2] for instr, rest in instructions if instr == "ARG" for m in [re.match(r"(\w+)=(\S+)", rest)] if m}
    for rest in froms:
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), rest.split()[0])
        if not re.match(r"^python:3\.11(\.\d+)?-slim", image):
            problems.append(f"FROM {image}: expected a python:3.11-slim base")
    final_stage = [i for i, (instr, _) in enumerate(instructions) if instr == "FROM"][-1]
    users = [rest for instr, rest in instructions[final_stage:] if instr == "USER"]
    if not users:
        problems.append("no USER in the final stage: the services would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"USER {users[-1]}: must not be root")
    if not any(instr == "RUN" and re.search(r"pip install (--\S+ )*\.(\s|$)", rest) for instr, rest in instructions):
        problems.append("the package must be installed with `pip install .` (setup.py pins)")
    env = _dockerfile_env()
    home = env.get("DAGSTER_HOME")
    copies = {}
    for instr, rest in instructions[final_stage:]:
        if instr == "COPY" and "--from" not in rest:
            parts = [p for p in _exec_form(rest) if not p.startswith("--")]
            for source in parts[:-1]:
                copies[source] = parts[-1]
    if not home:
        problems.append("DAGSTER_HOME is not set")
    elif copies.get("dagster.yaml") not in (f"{home}/dagster.yaml", f"{home}/"):
        problems.append(f"the repository's dagster.yaml must be copied to {home}/dagster.yaml, got {copies.get('dagster.yaml')}")
    workspace_paths = {_flag_value(_service_command(n), "-w", "--workspace") for n in ("dagster-webserver", "dagster-daemon")}
    for path in workspace_paths:
        if copies.get("docker/workspace.yaml") != path:
            problems.append(f"-w {path}: the image has docker/workspace.yaml at {copies.get('docker/workspace.yaml')}")
    for instr, rest in instructions:
        if instr == "HEALTHCHECK" and not rest.startswith("NONE"):
            cmd = rest.split("CMD", 1)[1]
            problems += _check_command(_exec_form(cmd), {"build": "."}, "Dockerfile HEALTHCHECK")[0]
    assert not problems, "\n".join(problems)


def test_dagster_workspace_points_at_the_code_server():
    workspace = yaml.safe_load(WORKSPACE_FILE.read_text())
    entries = workspace.get("load_from") or []
    assert len(entries) == 1 and "grpc_server" in entries[0], f"workspace.yaml: expected one grpc_server entry, got {entries}"
    grpc = entries[0]["grpc_server"]
    host = grpc.get("host")
    assert host in _services(), f"workspace.yaml: host {host!r} is not a compose service"
    argv = _service_command(host)
    assert argv[:3] == ["dagster", "code-server", "start"], f"{host} does not run `dagster code-server start`: {argv}"
    assert str(grpc.get("port")) == _flag_value(argv, "-p", "--port"), f"workspace port {grpc.get('port')} != {host} -p"
    assert _flag_value(argv, "-h", "--host") == "0.0.0.0", f"{host} must listen on 0.0.0.0 to be reachable"
    assert _flag_value(argv, "-m", "--module-name") == "projectx_pipeline.definitions"
    name = _flag_value(argv, "--location-name")
    assert name is None or name == grpc.get("location_name"), f"location name {name} != workspace {grpc.get('location_name')}"


def test_root_dagster_yaml_works_in_the_containers(tmp_path, monkeypatch):
    assert ROOT_DAGSTER_YAML.is_file(), f"{ROOT_DAGSTER_YAML} is missing (the image copies it into DAGSTER_HOME)"
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text(ROOT_DAGSTER_YAML.read_text())
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://u:p@timescaledb:5432/dagster")
    dagster_instance_config(str(tmp_path))  # raises on a schema error
    config = yaml.safe_load(ROOT_DAGSTER_YAML.read_text()) or {}
    problems = []
    if "DAGSTER_PG_URL" not in _dagster_yaml_env_vars():
        problems.append("dagster.yaml: storage should read its URL with `env: DAGSTER_PG_URL`")
    if re.search(r"postgres(ql)?://[^\s:]+:[^@\s]+@", ROOT_DAGSTER_YAML.read_text()):
        problems.append("dagster.yaml: contains a database URL with a password")
    launcher = (config.get("run_launcher") or {}).get("class", "DefaultRunLauncher")
    if launcher != "DefaultRunLauncher":
        problems.append(f"dagster.yaml: run_launcher {launcher} needs infrastructure docker-compose.yml does not provide")
    if (config.get("run_coordinator") or {}).get("class") not in (None, "QueuedRunCoordinator"):
        problems.append("dagster.yaml: run_coordinator should be the QueuedRunCoordinator (dagster-daemon dequeues)")
    home = _dockerfile_env().get("DAGSTER_HOME", "/opt/dagster/home")
    for section in ("local_artifact_storage", "compute_logs"):
        base_dir = ((config.get(section) or {}).get("config") or {}).get("base_dir")
        if isinstance(base_dir, str) and not base_dir.startswith(f"{home}/storage"):
            problems.append(f"dagster.yaml: {section}.base_dir {base_dir} is outside the shared volume {home}/storage")
    assert not problems, "\n".join(problems)


def test_server_section_matches_the_compose_file():
    readme = README.read_text()
    assert "\n## Run on a server\n" in readme, "README.md has no '## Run on a server' section"
    text = readme.split("\n## Run on a server\n", 1)[1].split("\n## ", 1)[0]
    services = _services()
    problems = []
    rows = re.findall(r"^\|\s*`([\w-]+)`\s*\|\s*`([^`]+)`\s*\|", text, re.M)
    shown = {name for name, _ in rows}
    if shown != set(services):
        problems.append(f"service table shows {sorted(shown)}, compose has {sorted(services)}")
    for name, runs in rows:
        if name not in services:
            continue
        svc = services[name]
        actual = _service_command(name) if (svc.get("command") or _builds_our_image(svc)) else [str(svc.get("image"))]
        placeholder = "\0"
        expected = shlex.split(re.sub(r"<[^>]*>", placeholder, runs))
        if len(expected) != len(actual) or any(e != a and e != placeholder for e, a in zip(expected, actual)):
            problems.append(f"README shows `{name}` running `{runs}`, compose runs `{' '.join(actual)}`")
    from projectx_pipeline.cli import COMMANDS

    for sub in re.findall(r"(?:^|[\s`(])projectx ([a-z][a-z-]*)", text, re.M):
        if sub not in COMMANDS:
            problems.append(f"README mentions `projectx {sub}`, not a subcommand")
    for svc_name in re.findall(r"docker compose (?:exec|logs|run|restart|start|stop)(?:\s+-{1,2}[\w-]+)*\s+([\w-]+)", text):
        if svc_name not in services:
            problems.append(f"README uses service {svc_name!r}, which the compose file does not have")
    default_cmd = " ".join(_dockerfile_cmd())
    if not re.search(r"default command[^\n]*`" + re.escape(default_cmd) + "`", text):
        problems.append(f"README does not say that the image's default command is `{default_cmd}`")
    for needed in ("git clone", "cp .env.example .env", "docker compose up", "127.0.0.1:3000", "http://localhost:3000"):
        if needed not in text:
            problems.append(f"README server section does not show {needed!r}")
    assert not problems, "\n".join(problems)
