"""`projectx`: the platform's single command-line entry point.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when needed so `projectx --help` stays fast. Every user error
(bad argument, bad setting, bad value) is one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("projectx_pipeline.storage.commands", "manage the market-data database (start|stop|status|url|migrate)"),
    "simulate": ("projectx_pipeline.gateway.simulator.commands", "run the local ProjectX gateway simulator"),
    "ingest": ("projectx_pipeline.ingest.commands", "run the live ingestion daemon"),
    "status": ("projectx_pipeline.ingest.status", "print the ingestion heartbeats and lag"),
    "trend-starts": ("projectx_pipeline.analysis.commands", "detect trend starts in a CSV of bars"),
    "dev": ("projectx_pipeline.dev", "start the whole platform locally (what `make dev` runs)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2 (argparse prints usage + error)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, the arguments of that one subcommand are loaded."""
    parser = _Parser(prog="projectx", description="ProjectX Pipeline: market data for the ProjectX Gateway")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    # imported here, not at the top, so that `projectx --help` stays fast
    from projectx_pipeline.domain.errors import DomainError
    from projectx_pipeline.errors import UsageError
    from projectx_pipeline.settings import SettingsError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (UsageError, DomainError, SettingsError) as exc:
        print(f"projectx {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
