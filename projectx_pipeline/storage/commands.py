"""`projectx db start|stop|status|url|migrate`."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status", "url", "migrate"])
    parser.add_argument("--port", type=int, help="port for the local database (default: a free one, or PROJECTX_DB_PORT)")
    parser.add_argument("--dagster", action="store_true", help="with `url`: print the Dagster database URL")
    parser.add_argument("--export", action="store_true", help="with `url`: print both URLs as shell exports")


def _database_url() -> str | None:
    from ..settings import load_settings

    s = load_settings()
    return s.database_url.get() if s.database_url else None


def run(args: argparse.Namespace) -> int:
    from .db import connect
    from .local_db import LocalDatabaseError, default_cluster
    from .migrate import migrate, timescaledb_active
    from .urls import redact_url

    external = _database_url()
    cluster = default_cluster()
    if args.port:
        cluster._requested_port = args.port
    try:
        if args.action == "start":
            if external:
                print(f"DATABASE_URL is set ({redact_url(external)}): nothing local to start")
                return 0
            cluster.start()
            urls = cluster.urls()
            conn = connect(urls["DATABASE_URL"])
            try:
                applied = migrate(conn)
            finally:
                conn.close()
            state = cluster.state()
            assert state is not None, "a started cluster has a state file"
            print(f"local PostgreSQL running in {cluster.base} on 127.0.0.1:{state.port}")
            print(f"migrations applied now: {applied or 'none (up to date)'}")
            for k, v in urls.items():
                print(f"{k}={redact_url(v)}")
            print("full URLs (with the generated password): projectx db url --export")
            return 0
        if args.action == "stop":
            if external:
                print("DATABASE_URL is set: the local database is not used, nothing to stop")
                return 0
            print("local PostgreSQL stopped" if cluster.stop() else "local PostgreSQL was not running")
            return 0
        if args.action == "url":
            urls = cluster.urls() if not external else {"DATABASE_URL": external, "DAGSTER_PG_URL": os.environ.get("DAGSTER_PG_URL", "")}
            if args.export:
                for k, v in urls.items():
                    print(f"export {k}='{v}'")
            else:
                print(urls["DAGSTER_PG_URL" if args.dagster else "DATABASE_URL"])
            return 0
        url = external or cluster.urls()["DATABASE_URL"]
        if args.action == "migrate":
            conn = connect(url)
            try:
                applied = migrate(conn)
            finally:
                conn.close()
            print(f"migrations applied: {applied or 'none (up to date)'}")
            return 0
        # status
        where = "DATABASE_URL" if external else f"local cluster in {cluster.base}"
        if not external and not cluster.is_running():
            print(f"server: not running ({where})")
            return 1
        conn = connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                version = cur.fetchone()[0]
                cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
                has_mig = cur.fetchone()[0]
                versions = []
                if has_mig:
                    cur.execute("SELECT version FROM schema_migrations ORDER BY version")
                    versions = [r[0] for r in cur.fetchall()]
            ts = timescaledb_active(conn)
        finally:
            conn.close()
        print(f"server: running ({where}) at {redact_url(url)}")
        print(f"postgresql: {version}")
        print(f"timescaledb: {'active, version ' + ts if ts else 'not installed (plain PostgreSQL: BRIN indexes, retention by the platform)'}")
        print(f"migrations: {versions or 'none applied'}")
        return 0
    except LocalDatabaseError as exc:
        raise UsageError(str(exc)) from None
