"""Connections to the market-data database (psycopg2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from ..logs import get_logger
from .urls import redact_url

log = get_logger("projectx.storage")

APPLICATION_NAME = "projectx_pipeline"


def connect(url: str, *, application_name: str = APPLICATION_NAME, connect_timeout: int = 10, **kwargs) -> psycopg2.extensions.connection:
    """A new connection; every session works in UTC so timestamps never depend on the server's zone."""
    try:
        conn = psycopg2.connect(url, application_name=application_name, connect_timeout=connect_timeout, options="-c TimeZone=UTC", **kwargs)
    except psycopg2.OperationalError as exc:
        # psycopg2 messages can echo the DSN; keep only the first line and redact it.
        raise StorageUnavailable(f"cannot connect to {redact_url(url)}: {redact_url(str(exc).strip().splitlines()[0])}") from None
    return conn


def close_quietly(conn: psycopg2.extensions.connection | None) -> None:
    """Close a connection that may be broken already: closing is cleanup, never a new error."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


@contextlib.contextmanager
def transaction(conn: psycopg2.extensions.connection) -> Iterator[psycopg2.extensions.connection]:
    """For a caller that owns the transaction of a non-autocommit connection (storage functions
    never commit): commit when the block succeeds, roll back when it raises. A failed rollback
    (the connection is gone) never hides the error that caused it."""
    try:
        yield conn
        conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise


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


def begin_read_committed(conn: psycopg2.extensions.connection) -> None:
    """Open a READ COMMITTED transaction on an idle, non-autocommit connection, for a run that
    owns it (commits or rolls back itself): each statement then sees what overlapping runs
    committed before the run got its lock."""
    if conn.autocommit:
        raise ValueError("the connection is in autocommit mode: analysis runs need one transaction (set autocommit = False)")
    if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise ValueError("the connection has an open transaction: commit or roll back before an analysis run")
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


def commit_asynchronously(conn: psycopg2.extensions.connection) -> None:
    """From now on this session's commits do not wait for the WAL flush (a server crash may lose
    the last few hundred milliseconds of them; see the ingest writer, which writes them again)."""
    with conn.cursor() as cur:
        cur.execute("SET synchronous_commit TO off")


def commit_durably(conn: psycopg2.extensions.connection) -> None:
    """The current transaction's commit waits for the WAL flush, whatever the session's setting."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit TO on")


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
