"""Shared fixtures: a real PostgreSQL server for the whole session, a fresh migrated database per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from projectx_pipeline.sample_data import SAMPLE_DIR as PACKAGED_SAMPLE_DIR
from projectx_pipeline.storage.db import connect
from projectx_pipeline.storage.testing import TestDatabaseServer

REPO = Path(__file__).resolve().parents[1]
# The package's own copy of the gateway's MES bars: the tests need nothing outside the repository.
SAMPLE_DIR = PACKAGED_SAMPLE_DIR
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
    return SAMPLE_DIR
