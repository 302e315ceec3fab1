"""Shared fixtures: the real-data folder (skips cleanly when absent); how pytest-xdist shares the
tests between its two processes (pyproject.toml's addopts)."""

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


# --------------------------------------------------------------------------- test processes
# pyproject.toml runs the suite on two pytest-xdist processes, a module (its module fixtures) at a
# time. Folders whose conftest builds a session fixture (a pipeline run) go to one process whole, so
# the run is built once. The slowest units start first: started last, the 5-minute Nandakumar
# recipe would run alone at the end. Seconds measured on the 2-core machine (2026-12-01).
SHARED_FIXTURE_DIRS = ("tests/reliability", "tests/report")
SLOW_FIRST = (
    "tests/pipeline/test_nandakumar.py",  # ~300 s (the recipe at the demo's size)
    "tests/reliability",  # ~170 s (kill and resume runs)
    "tests/tasks/test_tutorial.py",  # ~95 s (docs/tutorial.md, run as written)
    "tests/pipeline/test_pipeline.py",  # ~75 s
    "tests/report",  # ~45 s
    "tests/galaxy/test_dynamics.py",  # ~45 s
    "tests/pipeline/test_fingerprints.py",  # ~30 s
)


def xdist_unit(nodeid):
    """The unit of tests that one process runs together: a shared-fixture folder or a module."""
    path = nodeid.split("::", 1)[0]
    return next((d for d in SHARED_FIXTURE_DIRS if path.startswith(d + "/")), path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadscope by :func:`xdist_unit`, the :data:`SLOW_FIRST` units first (other modes unchanged)."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    # the two methods overridden below are xdist's (3.x); another xdist keeps its own loadscope
    if not all(hasattr(LoadScopeScheduling, name) for name in ("_split_scope", "_assign_work_unit")):
        return None

    class SlowFirst(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid):
            return xdist_unit(nodeid)

        def _assign_work_unit(self, node):
            queue = getattr(self, "workqueue", None)
            if not self.ordered and hasattr(queue, "move_to_end"):  # complete when the first unit is handed out
                for unit in reversed(SLOW_FIRST):
                    if unit in queue:
                        queue.move_to_end(unit, last=False)
                self.ordered = True
            super()._assign_work_unit(node)

    return SlowFirst(config, log)
