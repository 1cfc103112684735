"""Shared fixtures: a real PostgreSQL server for the whole session, a fresh migrated database per
test, the sample. Plain helpers live in `support/`: tests import them from there, never from here."""

from __future__ import annotations

from pathlib import Path

import pytest

from projectx_pipeline.domain.market import read_bars_csv
from projectx_pipeline.gateway.simulator.control import SimulatorControl
from projectx_pipeline.storage.db import connect
from projectx_pipeline.storage.testing import TestDatabaseServer

from .support.market import MES, SLICE, SLICE_BARS, write_replay_slice
from .support.paths import SAMPLE_DIR


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


@pytest.fixture(scope="session")
def replay_slice(tmp_path_factory, sample_dir) -> Path:
    """The SLICE rows of the MES 5m sample (132 bars), verbatim, as a replay file."""
    return write_replay_slice(sample_dir, tmp_path_factory.mktemp("replay"), SLICE, SLICE_BARS)


@pytest.fixture(scope="module")
def sample_5m(sample_dir):
    return read_bars_csv(sample_dir / f"{MES}_5m.csv")


@pytest.fixture
def control(sim):
    """The control endpoint of the module's own `sim` fixture (each module starts its simulator
    its own way)."""
    return SimulatorControl(sim.control_url)
