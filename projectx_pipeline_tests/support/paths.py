"""Where things are: the repository and the sample data the tests read."""

from __future__ import annotations

from pathlib import Path

from projectx_pipeline.sample_data import SAMPLE_DIR as PACKAGED_SAMPLE_DIR

REPO = Path(__file__).resolve().parents[2]
# The package's own copy of the gateway's MES bars: the tests need nothing outside the repository.
SAMPLE_DIR = PACKAGED_SAMPLE_DIR
