"""Shared fixtures: the real-data folder (skips cleanly when absent)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CANNONADE_QUIET", "1")

SHARED_DATA = Path(os.environ.get("CANNONADE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real survey data not found at {SHARED_DATA}")
    return SHARED_DATA
