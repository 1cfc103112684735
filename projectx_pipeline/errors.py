"""Errors every command shares, in a leaf module so that any subsystem can raise them without
importing the command line (`cli.py` imports the subsystems, not the other way round)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: `projectx` prints it as one line and exits with code 2."""
