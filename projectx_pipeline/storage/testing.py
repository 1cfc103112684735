"""A real PostgreSQL server for tests and benchmarks: PROJECTX_TEST_DATABASE_URL when given
(e.g. a TimescaleDB server), otherwise an ephemeral local cluster in a temporary directory.
Each user gets fresh, fully migrated databases cloned from a template."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from .db import connect
from .local_db import LocalCluster
from .migrate import migrate

TEMPLATE_DB = "projectx_test_template"


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


class TestDatabaseServer:
    __test__ = False  # not a pytest test class

    def __init__(self):
        self.external_url = os.environ.get("PROJECTX_TEST_DATABASE_URL") or None
        self.cluster: LocalCluster | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.admin_url = ""

    def start(self) -> TestDatabaseServer:
        if self.external_url:
            self.admin_url = self.external_url
        else:
            # /tmp is traversable by the postgres user even when the checkout's parents are not
            self._tmp = tempfile.TemporaryDirectory(prefix="projectx-testdb-")
            os.chmod(self._tmp.name, 0o755)
            self.cluster = LocalCluster(self._tmp.name)
            state = self.cluster.start()
            self.admin_url = state.url("postgres")
        self._build_template()
        return self

    def _admin(self):
        conn = connect(self.admin_url)
        conn.autocommit = True
        return conn

    def _admin_execute(self, statement: str) -> None:
        """One statement on a fresh autocommit admin connection (CREATE/DROP DATABASE need one)."""
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def _build_template(self) -> None:
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            conn.close()
        tconn = connect(_with_database(self.admin_url, TEMPLATE_DB))
        try:
            migrate(tconn)
        finally:
            tconn.close()
        # CREATE DATABASE … TEMPLATE fails while anyone is connected to the template, and
        # TimescaleDB's background-job scheduler connects to every database that allows it:
        # closed to connections (like template0), the template stays usable.
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'ALTER DATABASE "{TEMPLATE_DB}" ALLOW_CONNECTIONS false')
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (TEMPLATE_DB,))
                deadline = time.monotonic() + 10
                while True:  # termination is asynchronous
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (TEMPLATE_DB,))
                    if cur.fetchone()[0] == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        finally:
            conn.close()

    def create_database(self, prefix: str = "t", *, migrated: bool = True) -> str:
        """A new database, with every migration applied unless `migrated=False`; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        template = f' TEMPLATE "{TEMPLATE_DB}"' if migrated else ""
        self._admin_execute(f'CREATE DATABASE "{name}"{template}')
        return _with_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self._admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
        if self._tmp is not None:
            self._tmp.cleanup()
