"""Connections to the market-data database (psycopg2)."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

import psycopg2
import psycopg2.extensions
import psycopg2.pool

log = logging.getLogger("projectx.storage")

APPLICATION_NAME = "projectx_pipeline"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def connect(url: str, *, application_name: str = APPLICATION_NAME, connect_timeout: int = 10, **kwargs):
    """A new connection; every session works in UTC so timestamps never depend on the server's zone."""
    try:
        conn = psycopg2.connect(
            url, application_name=application_name, connect_timeout=connect_timeout, options="-c TimeZone=UTC", **kwargs
        )
    except psycopg2.OperationalError as exc:
        # psycopg2 messages can echo the DSN; keep only the first line and redact it.
        raise StorageUnavailable(f"cannot connect to {redact_url(url)}: {redact_url(str(exc).strip().splitlines()[0])}") from None
    return conn


class StorageUnavailable(RuntimeError):
    """The database cannot be reached (down, restarting, refusing connections)."""


# SQLSTATEs meaning the session is gone: connection exceptions, and the server shutting down.
_CONNECTION_LOST_STATES = ("57P01", "57P02", "57P03")
# Server-side conditions that pass: out of disk/memory (class 53), statement timeout or cancel
# (57014), serialization failure and deadlock (40001, 40P01). The data was fine: retry it later.
_TRANSIENT_STATES = ("57014", "40001", "40P01")


def is_connection_error(exc: BaseException) -> bool:
    """True when the connection is gone (reconnect, then retry), not when a statement failed."""
    if isinstance(exc, StorageUnavailable):
        return True
    code = getattr(exc, "pgcode", None)
    if code:
        return code.startswith("08") or code in _CONNECTION_LOST_STATES
    # no SQLSTATE: the client lost the socket (server crash, network) or the connection is closed
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))


def is_transient_error(exc: BaseException) -> bool:
    """True for a server-side failure worth retrying on the same connection (disk full, timeout)."""
    code = getattr(exc, "pgcode", None) or ""
    return code.startswith("53") or code in _TRANSIENT_STATES


class ConnectionPool:
    """A small thread-safe pool; `connection()` hands out a connection and rolls back on error."""

    def __init__(self, url: str, *, minconn: int = 1, maxconn: int = 4):
        self._url = url
        self._pool = psycopg2.pool.ThreadedConnectionPool(
            minconn, maxconn, url, application_name=APPLICATION_NAME, options="-c TimeZone=UTC", connect_timeout=10
        )

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        conn = self._pool.getconn()
        broken = False
        try:
            yield conn
            conn.commit()
        except BaseException as exc:
            broken = is_connection_error(exc)
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            self._pool.putconn(conn, close=broken or conn.closed != 0)

    def close(self) -> None:
        self._pool.closeall()
