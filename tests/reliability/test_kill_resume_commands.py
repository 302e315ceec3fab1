"""Kill and resume the one-shot commands `cannonade ingest` and `cannonade infer` (issue 16).

Each command is interrupted deterministically -- by its stop hook after k finished chunks, and by a
simulated SIGKILL in the middle of writing a part (the temporary file left half written beside it,
nothing cleaned up, as a kill leaves it) or the final store / table -- plus stray temporaries a kill
would leave. The rerun then runs only the chunks without a finished part (counted), leaves the
finished parts untouched (mtimes), removes the temporaries of its own outputs (and only those), and
gives the store (flux, ivar, wavelength and every meta column, bit for bit; the error report) or the
labels table (every column's values) of an uninterrupted run.
"""

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from cannonade.execution import StopRequested
from cannonade.spectra import assembly
from cannonade.spectra import ingest as ingest_module
from cannonade.spectra.ingest import ingest, process_chunk
from cannonade.tasks import infer as infer_module
from cannonade.tasks.infer import infer_store
from cannonade.util import stale_temporaries

pytestmark = pytest.mark.slow

N_FILES, INGEST_CHUNK = 150, 30  # 5 ingest chunks
INFER_CHUNK = 100  # 5 inference chunks of the mock's ~447 stored spectra


class SimulatedKill(BaseException):
    """What a SIGKILL does to the Python code: nothing after it runs (no `except Exception`, no cleanup)."""


def killing_atomic_path(real, victim, killed):
    """atomic_path, except for a file named ``victim``: its temporary is written by the block, then
    cut in half (killed while writing it) and left there, and SimulatedKill is raised."""

    @contextlib.contextmanager
    def atomic_path(path, suffix=None):
        path = Path(path)
        if path.name != victim:
            with real(path, suffix) as tmp:
                yield tmp
            return
        tmp = path.with_name(f".{path.stem}.killed00.tmp{''.join(path.suffixes) if suffix is None else suffix}")
        yield tmp
        os.truncate(tmp, tmp.stat().st_size // 2)
        killed.append(tmp)
        raise SimulatedKill(str(path))

    return atomic_path


def plant_temporaries(*where):
    """Stray temporaries as a SIGKILL leaves them: ``(folder, name)`` pairs, hidden, partial content."""
    out = []
    for folder, name in where:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
        out.append(folder / name)
    return out


def part_complete(path):
    """An ingest part that reads completely and is marked complete."""
    import h5py

    with h5py.File(path, "r") as h5:
        _ = h5["flux"][()], h5["ivar"][()], h5["failures/file"][()]
        return int(h5.attrs["complete"]) == 1


def store_datasets(path):
    import h5py

    with h5py.File(path, "r") as h5:
        out = {"flux": h5["flux"][()], "ivar": h5["ivar"][()], "wavelength": h5["wavelength"][()]}
        out.update({f"meta/{k}": ds[()] for k, ds in h5["meta"].items()})
    return out


def assert_same_store(a, b):
    da, db = store_datasets(a), store_datasets(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert da[k].dtype == db[k].dtype and da[k].shape == db[k].shape, k
        if da[k].dtype.kind == "f":  # bit for bit (NaN payloads included)
            assert da[k].tobytes() == db[k].tobytes(), k
        else:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)


@pytest.fixture(scope="module")
def ingest_case(pipeline_mock, tmp_path_factory):
    """N_FILES LAMOST files of the mock (one of them truncated) and their uninterrupted ingest."""
    files = sorted(str(p) for p in (pipeline_mock / "lamost" / "spectra").iterdir() if p.is_file())[:N_FILES]
    bad = tmp_path_factory.mktemp("ingest_inputs") / "truncated.fits"  # one unreadable file, in chunk 2
    raw = Path(files[70]).read_bytes()
    bad.write_bytes(raw[: len(raw) // 2] if raw[:2] != b"\x1f\x8b" else raw[:200])
    files[70] = str(bad)
    ref = tmp_path_factory.mktemp("ingest_reference") / "store.h5"
    rep = ingest(files, ref, grid="lamost", workers=1, chunk_size=INGEST_CHUNK)
    assert rep.n_chunks == 5 and rep.n_failed == 1 and rep.n_ok == N_FILES - 1
    return files, ref


def counting(calls, unchanged=None):
    """An ingest chunk function that records its chunks (and checks that the parts of ``unchanged``,
    {path: mtime}, are untouched whenever a chunk starts)."""
    def chunk_func(k, part, files):
        calls.append(int(k))
        for p, mtime in (unchanged or {}).items():
            assert p.stat().st_mtime_ns == mtime, p
        return process_chunk(k, part, files)

    return chunk_func


def test_ingest_stopped_killed_mid_part_and_rerun_gives_the_uninterrupted_store(ingest_case, tmp_path, monkeypatch):
    files, ref = ingest_case
    out = tmp_path / "store.h5"
    parts = tmp_path / "store.h5.parts"
    calls = []

    # 1. the stop hook after 2 finished chunks
    with pytest.raises(StopRequested):
        ingest(files, out, grid="lamost", workers=1, chunk_size=INGEST_CHUNK, stop_after=2, chunk_func=counting(calls))
    assert calls == [0, 1] and not out.exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts.glob("part_*.h5")}
    assert sorted(mtimes) == ["part_000000.h5", "part_000001.h5"]

    # 2. killed while writing chunk 3's part (chunk 2 finished before)
    killed = []
    monkeypatch.setattr(ingest_module, "atomic_path", killing_atomic_path(ingest_module.atomic_path, "part_000003.h5", killed))
    with pytest.raises(SimulatedKill):
        ingest(files, out, grid="lamost", workers=1, chunk_size=INGEST_CHUNK, chunk_func=counting(calls))
    monkeypatch.undo()
    assert calls == [0, 1, 2, 3] and len(killed) == 1 and killed[0].is_file()  # the half-written part's temporary
    assert sorted(p.name for p in parts.glob("part_*")) == ["part_000000.h5", "part_000001.h5", "part_000002.h5"]
    for p in parts.glob("part_*.h5"):  # no partial file where a finished one is expected
        assert part_complete(p), p
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("part_*.h5") if p.name in mtimes} == mtimes
    mtimes = {p: p.stat().st_mtime_ns for p in parts.glob("part_*.h5")}

    # stray temporaries of a kill elsewhere: the store, its error report, another part; and one of another file
    stray = plant_temporaries((tmp_path, ".store.abcdefgh.tmp.h5"), (tmp_path, ".store.errors.x1y2z3w4.tmp.errors.csv"),
                              (parts, ".part_000004.qwertyui.tmp.h5"))
    other = plant_temporaries((tmp_path, ".other.abcdefgh.tmp.h5"))[0]
    assert len(stale_temporaries(tmp_path)) == 5

    # 3. the rerun: chunks 3 and 4 only; the finished parts untouched (until the store consumes them)
    rep = ingest(files, out, grid="lamost", workers=1, chunk_size=INGEST_CHUNK, chunk_func=counting(calls, mtimes))
    assert calls == [0, 1, 2, 3, 3, 4]  # chunk 3 again (its part was never finished), 4 for the first time
    assert rep.n_chunks_done_before == 3
    assert rep.temporaries_removed == 4 and "removed 4 temporary file(s)" in rep.summary()
    assert not any(p.exists() for p in stray + killed) and other.is_file()  # only its own outputs' temporaries
    assert not parts.exists()
    assert_same_store(ref, out)
    assert out.with_name("store.errors.csv").read_text() == ref.with_name("store.errors.csv").read_text()


def test_ingest_killed_while_writing_the_store(ingest_case, tmp_path, monkeypatch):
    """The store's temporary half written, the copied parts gone: no store, and the rerun redoes them."""
    files, ref = ingest_case
    out = tmp_path / "store.h5"
    killed = []
    monkeypatch.setattr(assembly, "atomic_path", killing_atomic_path(assembly.atomic_path, "store.h5", killed))
    with pytest.raises(SimulatedKill):
        ingest(files, out, grid="lamost", workers=1, chunk_size=INGEST_CHUNK)
    monkeypatch.undo()
    assert not out.exists() and killed[0].is_file() and not list((tmp_path / "store.h5.parts").glob("part_*"))
    assert (tmp_path / "store.errors.csv").is_file()  # written before the store: a finished store has its report
    calls = []
    rep = ingest(files, out, grid="lamost", workers=1, chunk_size=INGEST_CHUNK, chunk_func=counting(calls))
    assert calls == [0, 1, 2, 3, 4] and rep.temporaries_removed >= 1 and not stale_temporaries(tmp_path)
    assert_same_store(ref, out)


# ---------------------------------------------------------------------------------------------
# cannonade infer


@pytest.fixture(scope="module")
def infer_case(reference_run, tmp_path_factory):
    """The mock's store and models from the uninterrupted pipeline run, and an uninterrupted infer."""
    run_dir = reference_run[0]
    models = [run_dir / "models" / "dwarf.npz", run_dir / "models" / "giant.npz"]
    store = run_dir / "target.h5"
    ref = tmp_path_factory.mktemp("infer_reference") / "labels.parquet"
    rep = infer_store(models, store, ref, chunk_size=INFER_CHUNK)
    assert rep.n_chunks == 5
    return models, store, ref


def assert_same_labels(a, b):
    from cannonade.catalogue import read_catalogue

    ta, tb = read_catalogue(a), read_catalogue(b)
    assert ta.colnames == tb.colnames and len(ta) == len(tb)
    for c in ta.colnames:
        x, y = np.asarray(ta[c]), np.asarray(tb[c])
        assert x.dtype == y.dtype, c
        np.testing.assert_array_equal(x, y, err_msg=c)


def test_infer_stopped_killed_mid_part_and_rerun_gives_the_uninterrupted_labels(infer_case, tmp_path, monkeypatch):
    models, store, ref = infer_case
    out = tmp_path / "labels.parquet"
    parts = tmp_path / ".labels.parquet.parts"
    calls = []
    real_chunk = infer_module.infer_chunk

    def infer_chunk(k, *args):
        calls.append(int(k))
        return real_chunk(k, *args)

    monkeypatch.setattr(infer_module, "infer_chunk", infer_chunk)

    # 1. the stop hook after 2 finished chunks
    with pytest.raises(StopRequested):
        infer_store(models, store, out, chunk_size=INFER_CHUNK, stop_after=2)
    assert calls == [0, 1] and not out.exists()

    # 2. killed while writing chunk 3's part
    killed = []
    monkeypatch.setattr(infer_module, "atomic_path", killing_atomic_path(infer_module.atomic_path, "part_000003.npz", killed))
    with pytest.raises(SimulatedKill):
        infer_store(models, store, out, chunk_size=INFER_CHUNK)
    monkeypatch.undo()
    monkeypatch.setattr(infer_module, "infer_chunk", infer_chunk)
    assert calls == [0, 1, 2, 3] and killed[0].is_file() and not out.exists()
    assert sorted(p.name for p in parts.glob("part_*")) == ["part_000000.npz", "part_000001.npz", "part_000002.npz"]
    for p in parts.glob("part_*"):  # each reads completely
        with np.load(p, allow_pickle=False) as d:
            assert all(d[k] is not None for k in d.files)
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts.glob("part_*")}
    stray = plant_temporaries((tmp_path, ".labels.abcdefgh.tmp.parquet"), (parts, ".part_000004.qwertyui.tmp.npz"))
    other = plant_temporaries((tmp_path, ".labels.abcdefgh.tmp.fits"))[0]  # of another file (labels.fits)

    # 3. the rerun: chunks 3 and 4 only, the finished parts untouched
    def on_done(k, result):
        assert {p.name: p.stat().st_mtime_ns for p in parts.glob("part_*") if p.name in mtimes} == mtimes

    rep = infer_store(models, store, out, chunk_size=INFER_CHUNK, on_done=on_done)
    assert calls == [0, 1, 2, 3, 3, 4] and rep.resumed_chunks == 3
    assert rep.temporaries_removed == 3 and "removed 3 temporary file(s)" in rep.summary()
    assert not any(p.exists() for p in stray + killed) and other.is_file() and not parts.exists()
    assert_same_labels(ref, out)


def test_infer_killed_while_writing_the_table_redoes_no_chunk(infer_case, tmp_path, monkeypatch):
    models, store, ref = infer_case
    out = tmp_path / "labels.parquet"
    from cannonade.catalogue import writers

    killed = []
    monkeypatch.setattr(writers, "atomic_path", killing_atomic_path(writers.atomic_path, "labels.parquet", killed))
    with pytest.raises(SimulatedKill):
        infer_store(models, store, out, chunk_size=INFER_CHUNK)
    monkeypatch.undo()
    assert killed[0].is_file() and not out.exists()
    calls = []
    rep = infer_store(models, store, out, chunk_size=INFER_CHUNK, on_done=lambda k, r: calls.append(k))
    assert calls == [] and rep.resumed_chunks == 5 and rep.temporaries_removed == 1 and not killed[0].exists()
    assert_same_labels(ref, out)


# ---------------------------------------------------------------------------------------------
# the nandakumar2022 recipe


NANDAKUMAR_EDITS = {  # a tiny run of the example configuration: ~60 s on 2 cores with its mock
    "cv_folds = 12": "cv_folds = 2\nmin_stars = 20",
    "chunk_size = 2000": "chunk_size = 100",
    "workers = 2": "workers = 1",
    "repeat_stars = 300": "repeat_stars = 40",
    'labels = ["teff", "logg", "fe_h", "alpha_fe", "vmic", "vbroad"]': 'labels = ["teff", "logg", "fe_h", "alpha_fe"]',
    'censor = { alpha_fe = ["Si", "Mg", "Ti", "Ca"] }': "",
    "order = 2": "order = 1",
    "refine_folds = 4": "refine_folds = 2",
}


@pytest.mark.slow
def test_nandakumar_stopped_in_scaled_infer_resumes_to_the_uninterrupted_tables(tmp_path):
    """The runner's stop hook after the first chunk of ``scaled_infer`` (every earlier stage
    finished), then a rerun: only the other chunks run, and the systematics and cluster tables and
    the combined catalogues (both scales, FITS and Parquet) equal an uninterrupted run's."""
    from importlib.resources import files as package_files

    from cannonade.catalogue import read_catalogue
    from cannonade.pipeline import run_pipeline
    from cannonade.simulate import simulate_survey

    simulate_survey("apogee-galah", n_stars=250, seed=4, out=tmp_path / "mock", show_progress=False)
    text = (package_files("cannonade") / "data" / "example_apogee_galah.toml").read_text()
    for old, new in NANDAKUMAR_EDITS.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "ref.toml").write_text(text)
    (tmp_path / "run.toml").write_text(text.replace('out = "run"', 'out = "run2"'))
    ref_run = run_pipeline(tmp_path / "ref.toml")
    ref, run_dir = tmp_path / "run", tmp_path / "run2"
    n_chunks = {p.name: len(list(p.glob("part_*.npz"))) for p in (ref / "scaled_infer").iterdir()}
    assert len(n_chunks) == 4 and min(n_chunks.values()) >= 2, n_chunks

    # every stage before scaled_infer finished (a copy of the run), then stopped after scaled_infer's first chunk
    shutil.copytree(ref, run_dir)
    with pytest.raises(StopRequested):
        run_pipeline(tmp_path / "run.toml", from_stage="scaled_infer", stop_after_chunks=1)
    parts = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "scaled_infer").rglob("part_*"))
    assert len(parts) == 1 and parts[0].endswith("/part_000000.npz"), parts
    first = run_dir / parts[0]
    mtime = first.stat().st_mtime_ns
    assert not (run_dir / "stages" / "scaled_infer.json").exists()
    assert [s for s in ref_run.stages if (run_dir / "stages" / f"{s}.json").exists()] == ref_run.stages[:ref_run.stages.index("scaled_infer")]

    redone = []
    run = run_pipeline(tmp_path / "run.toml", chunk_hook=lambda k, result: redone.append(k))
    assert len(redone) == sum(n_chunks.values()) - 1 and first.stat().st_mtime_ns == mtime  # chunk 0 kept, not rerun
    assert all(run.done(s) for s in run.stages) and not stale_temporaries(run_dir)
    for name in ("systematics.csv", "clusters.csv"):
        a, b = (Table.read(d / "tables" / name, format="ascii.csv") for d in (ref, run_dir))
        assert a.colnames == b.colnames and len(a) == len(b) > 0, name
        for c in a.colnames:
            np.testing.assert_array_equal(np.asarray(a[c]), np.asarray(b[c]), err_msg=f"{name}:{c}")
    for scale in ("apogee", "galah"):
        for fmt in ("fits", "parquet"):
            name = f"combined_{scale}_scale.{fmt}"
            a, b = read_catalogue(ref / "catalogue" / name), read_catalogue(run_dir / "catalogue" / name)
            assert a.colnames == b.colnames and len(a) == len(b) > 0, name
            for c in a.colnames:
                np.testing.assert_array_equal(np.asarray(a[c]), np.asarray(b[c]), err_msg=f"{name}:{c}")
