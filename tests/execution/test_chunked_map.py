"""ChunkedMap: resumable, atomic, fingerprinted chunked map; serial and process backends.

Call counting goes through a log file (one line per chunk call), so it works across
worker processes. No test depends on timing.
"""

import functools
import json

import numpy as np
import pytest

from cannonade.exceptions import CannonadeError, ConfigError
from cannonade.execution import BACKENDS, ChunkedMap, ProcessBackend, SerialBackend, StopRequested, get_backend
from cannonade.util import atomic_path

N_CHUNKS = 6
ROWS = 5


def square_chunk(k, part, rows, log=None, fail=()):
    """A chunk function: writes (rows,) float64 ``arange(rows)**2 + k`` as .npy; returns 10 k."""
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"{k}\n")
    if k in fail:
        raise RuntimeError(f"chunk {k} failed on purpose")
    with atomic_path(part) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.arange(rows, dtype=np.float64) ** 2 + k)
    return 10 * k


def lazy_chunk(k, part):
    """Forgets to write its part."""
    return k


def _calls(log):
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _make(tmp_path, name="parts", fingerprint=None, n=N_CHUNKS):
    return ChunkedMap(tmp_path / name, fingerprint or {"rows": ROWS, "inputs": ["a", "b"]}, n, suffix=".npy")


def _run(cm, log=None, fail=(), **kw):
    return cm.run(functools.partial(square_chunk, log=None if log is None else str(log), fail=fail), args=lambda k: (ROWS,), **kw)


def _contents(cm):
    return [p.read_bytes() for p in cm.parts()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Bytes of every part of an uninterrupted serial run."""
    cm = _make(tmp_path_factory.mktemp("ref"))
    assert _run(cm) == N_CHUNKS
    return _contents(cm)


def test_layout_state_and_parts(tmp_path, reference):
    cm = _make(tmp_path)
    assert cm.pending() == list(range(N_CHUNKS)) and cm.n_done == 0
    assert cm.part(3) == tmp_path / "parts" / "part_000003.npy"
    with pytest.raises(IndexError):
        cm.part(N_CHUNKS)
    with pytest.raises(CannonadeError, match="not finished"):
        cm.parts()
    state = json.loads((tmp_path / "parts" / "state.json").read_text())
    assert state["fingerprint"] == {"rows": ROWS, "inputs": ["a", "b"]} and state["n_chunks"] == N_CHUNKS
    seen = {}
    assert _run(cm, on_done=lambda k, r: seen.__setitem__(k, r), desc="test", unit="row", weight=lambda k: ROWS) == N_CHUNKS
    assert seen == {k: 10 * k for k in range(N_CHUNKS)}
    assert cm.pending() == [] and cm.n_done == N_CHUNKS
    assert _contents(cm) == reference
    np.testing.assert_array_equal(np.load(cm.part(2)), np.arange(ROWS) ** 2 + 2.0)
    assert _run(cm) == 0  # nothing left to do
    cm.cleanup()
    assert not (tmp_path / "parts").exists()


def test_resume_skips_finished_chunks(tmp_path, reference):
    log = tmp_path / "calls.log"
    cm = _make(tmp_path)
    with pytest.raises(StopRequested) as exc:
        _run(cm, log=log, stop_after=2)
    assert exc.value.n_done == 2 and exc.value.n_left == N_CHUNKS - 2
    assert isinstance(exc.value, CannonadeError)
    assert _calls(log) == [0, 1]
    first = cm.part(0).stat()
    log.write_text("")
    again = _make(tmp_path)  # a fresh object on the same directory, as after a kill
    assert again.pending() == [2, 3, 4, 5]
    assert _run(again, log=log) == 4
    assert _calls(log) == [2, 3, 4, 5]  # finished chunks are not redone
    assert cm.part(0).stat().st_ino == first.st_ino  # ... nor rewritten
    assert _contents(again) == reference


def test_stop_after_leaves_exactly_n_parts(tmp_path, reference):
    cm = _make(tmp_path)
    with pytest.raises(StopRequested, match="stopped after 3"):
        _run(cm, stop_after=3)
    assert sorted(p.name for p in (tmp_path / "parts").glob("part_*")) == [f"part_00000{k}.npy" for k in range(3)]
    with pytest.raises(StopRequested):
        _run(cm, stop_after=0)
    assert cm.n_done == 3
    assert _run(cm, stop_after=10) == 3  # enough to finish: no StopRequested
    assert _contents(cm) == reference


def test_fingerprint_change_wipes_parts(tmp_path):
    log = tmp_path / "calls.log"
    cm = _make(tmp_path)
    with pytest.raises(StopRequested):
        _run(cm, stop_after=4)
    assert _make(tmp_path).n_done == 4  # same fingerprint: kept
    (tmp_path / "parts" / ".part_000005.junk.tmp.npy").write_bytes(b"leftover")
    other = _make(tmp_path, fingerprint={"rows": ROWS, "inputs": ["a", "c"]})
    assert other.n_done == 0 and sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["state.json"]
    _run(other, log=log)
    assert _calls(log) == list(range(N_CHUNKS))
    # a different number of chunks is a different map too
    assert _make(tmp_path, fingerprint={"rows": ROWS, "inputs": ["a", "c"]}, n=N_CHUNKS + 1).n_done == 0


def test_parts_dir_without_state(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    (d / "part_000000.npy").write_bytes(b"stale, no state.json")
    cm = _make(tmp_path)
    assert cm.n_done == 0 and not (d / "part_000000.npy").exists()  # only parts: wiped
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(CannonadeError, match="refusing to delete"):
        _make(tmp_path, name="mine")
    assert (other / "thesis.tex").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CannonadeError, match="not a directory"):
        _make(tmp_path, name="afile")
    with pytest.raises(ConfigError, match="JSON"):
        ChunkedMap(tmp_path / "p2", {"x": object()}, 2)
    with pytest.raises(ConfigError, match="JSON"):
        ChunkedMap(tmp_path / "p3", {"x": float("nan")}, 2)
    same = ChunkedMap(tmp_path / "p4", {"t": (1, 2.5), "s": "x"}, 2)  # tuples read back as lists: still the same
    same.part(0).write_bytes(b"done")
    assert ChunkedMap(tmp_path / "p4", {"s": "x", "t": [1, 2.5]}, 2).n_done == 1


def test_is_complete_validator(tmp_path):
    cm = ChunkedMap(tmp_path / "parts", {}, 3, suffix=".npy", is_complete=lambda p: p.stat().st_size > 10)
    cm.part(1).write_bytes(b"short")  # present but incomplete: redone
    assert cm.pending() == [0, 1, 2]
    _run(cm)
    assert cm.pending() == []


def test_failing_chunk_keeps_finished_parts(tmp_path, reference):
    log = tmp_path / "calls.log"
    cm = _make(tmp_path)
    with pytest.raises(RuntimeError, match="chunk 3 failed"):
        _run(cm, log=log, fail=(3,))
    assert cm.pending() == [3, 4, 5]
    log.write_text("")
    assert _run(cm, log=log) == 3
    assert _calls(log) == [3, 4, 5]
    assert _contents(cm) == reference


def test_chunk_that_writes_no_part_is_an_error(tmp_path):
    cm = ChunkedMap(tmp_path / "parts", {}, 2, suffix=".npy")
    with pytest.raises(CannonadeError, match="without writing"):
        cm.run(lazy_chunk)


def test_process_backend_identical_to_serial(tmp_path, reference):
    log = tmp_path / "calls.log"
    cm = _make(tmp_path)
    assert _run(cm, log=log, backend="process", workers=2) == N_CHUNKS
    assert sorted(_calls(log)) == list(range(N_CHUNKS))
    assert _contents(cm) == reference


def test_process_backend_failure_and_resume(tmp_path, reference):
    log = tmp_path / "calls.log"
    cm = _make(tmp_path)
    with pytest.raises(RuntimeError, match="chunk 3 failed"):
        _run(cm, log=log, fail=(3,), backend="process", workers=2)
    done = set(range(N_CHUNKS)) - set(cm.pending())
    assert 3 not in done
    log.write_text("")
    _run(cm, log=log, backend="process", workers=2)
    assert sorted(_calls(log)) == sorted(set(range(N_CHUNKS)) - done)
    assert _contents(cm) == reference


def test_process_backend_stop_after(tmp_path, reference):
    log = tmp_path / "calls.log"
    cm = _make(tmp_path)
    with pytest.raises(StopRequested):
        _run(cm, log=log, backend="process", workers=2, stop_after=2)
    done = set(range(N_CHUNKS)) - set(cm.pending())
    assert len(done) >= 2  # running chunks may finish too, queued ones are cancelled
    assert set(_calls(log)) == done  # every chunk that started finished its part
    log.write_text("")
    _run(cm, log=log, backend="process", workers=2)
    assert sorted(_calls(log)) == sorted(set(range(N_CHUNKS)) - done)
    assert _contents(cm) == reference


def test_backends_bounded_in_flight(tmp_path):
    pulled = []

    def tasks(n):
        for k in range(n):
            pulled.append(k)
            yield k, (str(tmp_path / f"p{k}.npy"), ROWS)

    with get_backend("process", workers=2) as be:
        assert isinstance(be, ProcessBackend) and be.max_in_flight == 4
        it = be.imap_unordered(square_chunk, tasks(20))
        k, result = next(it)
        assert len(pulled) == 4 and result == 10 * k  # nothing submitted beyond 2 x workers
        it.close()
    pulled.clear()
    with get_backend("serial") as be:
        it = be.imap_unordered(square_chunk, tasks(20))
        assert next(it) == (0, 0) and len(pulled) == 1
        it.close()


def _keeps_freed_memory(k):
    from cannonade.execution.memory import keeps_freed_memory

    return keeps_freed_memory()


def test_process_workers_keep_freed_memory_this_process_does_not():
    """The process pool's workers raise glibc's mmap and trim thresholds (a chunk's arrays are
    then reused, not page-faulted anew: cannonade.execution.memory); the caller's process and the
    serial backend, which runs in it, are left alone."""
    import ctypes.util
    import sys

    from cannonade.execution.memory import keeps_freed_memory

    if not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""):
        pytest.skip("glibc's mallopt only")
    with get_backend("process", workers=2) as be:
        assert [r for _, r in be.imap_unordered(_keeps_freed_memory, [(k, ()) for k in range(4)])] == [True] * 4
    with get_backend("serial") as be:
        assert [r for _, r in be.imap_unordered(_keeps_freed_memory, [(0, ())])] == [False]
    assert not keeps_freed_memory()


def test_get_backend_errors_and_serial_initializer():
    assert set(BACKENDS) >= {"serial", "process"}
    with pytest.raises(ConfigError, match="unknown execution backend 'mpi'"):
        get_backend("mpi")
    with pytest.raises(ConfigError, match="workers"):
        get_backend("process", workers=0)
    box = []
    with get_backend("serial", initializer=box.append, initargs=("ready",)) as be:
        assert isinstance(be, SerialBackend) and box == ["ready"]
