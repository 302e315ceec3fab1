"""A process-pool worker that dies mid-run (issue 16; docs/reliability.md, "A worker process dies").

``ingest(workers=2)`` runs its chunks in a process pool (cannonade.execution.ProcessBackend). The
chunk function here kills its own worker process -- ``os._exit`` or ``SIGKILL`` -- when it is given
one chunk, deterministically: on its first attempt only (a marker file, created atomically, says
the attempt was made) or on every attempt. Never a timing.

* killed once: the run finishes, the chunk redone, and the store equals a clean serial run's;
* killed every time: :class:`~cannonade.exceptions.WorkerDiedError` naming the chunk (never a
  bare ``BrokenProcessPool``), the finished chunks' parts kept; the rerun does only the others
  and its store equals the clean run's.

A 30-star mock (36 LAMOST files, 6 chunks of 6): a few seconds.
"""

from __future__ import annotations

import functools
import os
import signal

import numpy as np
import pytest

from cannonade.exceptions import CannonadeError, WorkerDiedError
from cannonade.spectra.ingest import ingest, process_chunk
from cannonade.spectra.store import SpectraStore

CHUNK = 6


def dying_chunk(k, part_path, files, log, die_on=None, marker=None, how="exit"):
    """Log the call (one line per chunk, any process); for chunk ``die_on`` kill this worker process
    (``how``: 'exit' = os._exit, 'kill' = SIGKILL to itself) -- only on the first attempt if
    ``marker`` is given (the attempt that creates it), else every time; otherwise do the work."""
    with open(log, "a") as fh:
        fh.write(f"{k}\n")
    if k == die_on:
        first = True
        if marker is not None:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                first = False
        if first:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(1)
    return process_chunk(k, part_path, files)


def _calls(log):
    return [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.fixture(scope="module")
def spectra(tmp_path_factory):
    from cannonade.simulate import simulate_survey

    root = tmp_path_factory.mktemp("worker_death")
    simulate_survey("lamost-galah", n_stars=30, seed=5, out=root / "mock", show_progress=False)
    files = sorted((root / "mock" / "lamost" / "spectra").iterdir())
    assert len(files) > 4 * CHUNK
    return root / "mock" / "lamost" / "spectra"


@pytest.fixture(scope="module")
def clean(spectra, tmp_path_factory):
    """An uninterrupted serial ingest."""
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    ingest([str(spectra)], out, workers=1, chunk_size=CHUNK)
    return out


def assert_same_store(a, b):
    with SpectraStore(a) as sa, SpectraStore(b) as sb:
        fa, ia = sa.read()
        fb, ib = sb.read()
        ma, mb = sa.meta(), sb.meta()
        np.testing.assert_array_equal(sa.wavelength, sb.wavelength)
    np.testing.assert_array_equal(np.nan_to_num(fa, nan=-1), np.nan_to_num(fb, nan=-1))
    np.testing.assert_array_equal(ia, ib)
    assert ma.colnames == mb.colnames
    for col in ma.colnames:
        np.testing.assert_array_equal(np.asarray(ma[col]).astype(str), np.asarray(mb[col]).astype(str))


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_worker_that_dies_once_has_its_chunk_redone(tmp_path, spectra, clean, how):
    log = tmp_path / "calls.log"
    out = tmp_path / "store.h5"
    fn = functools.partial(dying_chunk, log=str(log), die_on=2, marker=str(tmp_path / "died"), how=how)
    rep = ingest([str(spectra)], out, workers=2, chunk_size=CHUNK, chunk_func=fn)
    calls = _calls(log)
    assert (tmp_path / "died").exists() and calls.count(2) == 2  # it died once, was redone once
    assert sorted(set(calls)) == list(range(rep.n_chunks))
    assert rep.n_failed == 0 and not (tmp_path / "store.h5.parts").exists()
    assert_same_store(clean, out)


def test_a_chunk_that_always_kills_its_worker_is_a_named_error_and_the_rerun_resumes(tmp_path, spectra, clean):
    log = tmp_path / "calls.log"
    out = tmp_path / "store.h5"
    parts = tmp_path / "store.h5.parts"
    fn = functools.partial(dying_chunk, log=str(log), die_on=3, how="kill")
    with pytest.raises(WorkerDiedError, match=r"chunk 3: the worker process running it died, and again when it was "
                                              r"rerun alone") as info:
        ingest([str(spectra)], out, workers=2, chunk_size=CHUNK, chunk_func=fn)
    assert isinstance(info.value, CannonadeError)
    assert _calls(log).count(3) == 2  # the pool's attempt, then one alone (dead_worker_retries=1)
    done = sorted(int(p.stem.split("_")[1]) for p in parts.glob("part_*.h5"))
    assert 3 not in done and len(done) >= 1 and not out.exists()

    log.write_text("")
    rep = ingest([str(spectra)], out, workers=2, chunk_size=CHUNK, chunk_func=functools.partial(dying_chunk, log=str(log)))
    assert sorted(_calls(log)) == sorted(set(range(rep.n_chunks)) - set(done))  # finished chunks not redone
    assert rep.n_chunks_done_before == len(done) and rep.n_failed == 0
    assert_same_store(clean, out)


def test_the_command_line_says_it_in_one_line(tmp_path, spectra, capsys, monkeypatch):
    """`cannonade ingest --workers 2` whose worker keeps dying: exit status 2, one line naming the chunk."""
    from cannonade.cli import main
    from cannonade.spectra import ingest as ingest_module

    log = tmp_path / "calls.log"
    monkeypatch.setattr(ingest_module, "process_chunk", functools.partial(_killer_then_work, log=str(log)))
    rc = main(["ingest", str(spectra), "--out", str(tmp_path / "s.h5"), "--workers", "2", "--chunk-size", str(CHUNK)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("cannonade ingest: error: chunk 1: the worker process running it died")


def _killer_then_work(k, part_path, files, log):
    return dying_chunk(k, part_path, files, log, die_on=1, how="exit") if k == 1 else process_chunk(k, part_path, files)


def _exit_on_one(k):
    if k == 1:
        os._exit(1)
    return k * 10


def test_without_reruns_the_error_names_every_chunk_that_was_running():
    """ProcessBackend(dead_worker_retries=0): no rerun; the error names the chunks that were in the
    broken pool (which one killed it cannot be told), the calls that finished before are yielded."""
    from cannonade.execution import get_backend

    got = []
    with get_backend("process", workers=2, dead_worker_retries=0) as be:
        with pytest.raises(WorkerDiedError, match=r"a worker process died .* while chunk\(s\) [\d, ]*\b1\b[\d, ]* ran"):
            for k, result in be.imap_unordered(_exit_on_one, ((k, ()) for k in range(6))):
                got.append((k, result))
    assert all(result == 10 * k for k, result in got) and 1 not in dict(got)


def test_a_call_the_broken_pool_refuses_is_rerun_not_lost():
    """A worker can die between the wait for finished calls and the next submit: the pool then
    refuses the submit (BrokenProcessPool). That call never ran; it is rerun with the pool's
    broken calls, and every call's result comes back once (the pool's refusal is simulated,
    deterministically, on the second submit)."""
    from concurrent.futures.process import BrokenProcessPool

    from cannonade.execution import ProcessBackend

    with ProcessBackend(workers=1, max_in_flight=1) as be:
        real, calls = be._pool.submit, []

        def submit(fn, *args):
            calls.append(args[0])
            if len(calls) == 2:
                raise BrokenProcessPool("a child process terminated abruptly (simulated)")
            return real(fn, *args)

        be._pool.submit = submit
        out = list(be.imap_unordered(pow, ((k, (2,)) for k in range(4))))
    assert sorted(out) == [(k, k**2) for k in range(4)]
    assert calls[:2] == [0, 1]  # call 1 was refused, and still came back
