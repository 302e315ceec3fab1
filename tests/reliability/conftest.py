"""Shared by the fault tests: a small lamost-galah mock and its uninterrupted pipeline run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FAULTS_PATH = Path(__file__).with_name("_pipeline_faults.py")


def _load_faults():
    spec = importlib.util.spec_from_file_location("cannonade_tests_pipeline_faults", FAULTS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def faults():
    """tests/reliability/_pipeline_faults.py (the mock's config, the driver, the run-directory checks)."""
    return _load_faults()


@pytest.fixture(scope="session")
def pipeline_mock(faults, tmp_path_factory):
    """The mock survey (447 LAMOST spectra, 200 GALAH reference stars, Gaia)."""
    return faults.make_mock(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="session")
def reference_run(faults, pipeline_mock):
    """The uninterrupted run, by the driver in a fresh interpreter (another hash seed than the test
    process): (run directory, its driver events)."""
    d = pipeline_mock.parent / "reference"
    cfg = faults.write_config(d, pipeline_mock)
    spec = d / "spec.json"
    spec.write_text(json.dumps({"config": str(cfg), "log": str(d / "events.jsonl")}))
    env = {**os.environ, "CANNONADE_QUIET": "1", "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, str(FAULTS_PATH), str(spec)], capture_output=True, text=True, env=env)
    events = faults.read_log(d / "events.jsonl")
    assert proc.returncode == 0, (proc.stderr[-3000:], [e for e in events if e["ev"] == "error"])
    assert events[-1]["ev"] == "finished"
    return d / "run", events
