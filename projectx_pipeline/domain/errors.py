"""The domain's one error type, in a module of its own so that every domain module, leaf
modules such as `timestamps` included, can raise it without importing another."""

from __future__ import annotations


class DomainError(ValueError):
    """A value that the domain cannot accept; the message names the value and what was expected."""
