"""Shared fixtures: a real PostgreSQL server for the whole session, a fresh migrated database per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from projectx_pipeline.storage.db import connect
from projectx_pipeline.storage.testing import TestDatabaseServer

REPO = Path(__file__).resolve().parents[1]
# ../shared/data/mes beside the checkout (as CI lays it out), or PROJECTX_SAMPLE_DIR, as the simulator
SAMPLE_DIR = Path(os.environ.get("PROJECTX_SAMPLE_DIR") or REPO.parent / "shared" / "data" / "mes")
MES = "CON.F.US.MES.M25"


@pytest.fixture(scope="session")
def db_server():
    server = TestDatabaseServer().start()
    yield server
    server.stop()


@pytest.fixture
def db_url(db_server):
    url = db_server.create_database()
    yield url
    db_server.drop_database(url)


@pytest.fixture
def conn(db_url):
    c = connect(db_url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert SAMPLE_DIR.is_dir(), f"sample data not found at {SAMPLE_DIR}: check out next to shared/ or set PROJECTX_SAMPLE_DIR"
    return SAMPLE_DIR
