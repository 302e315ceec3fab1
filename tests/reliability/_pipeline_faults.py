"""Fault injection for the pipeline tests of tests/reliability (not a test module).

A small lamost-galah mock and its run configuration, a driver that runs the pipeline with one
deterministic interruption (SIGKILL at a given atomic write of a stage — before the rename, with
the temporary file cut in half, or just after it —, at the store assembly's removal of a consumed
ingest part, after the n-th finished chunk; or the runner's stop hook), and the checks of a run
directory after an interruption. A stage's files change only at those points (besides folders
created and the markers of stages to redo removed), so together they reach every state of its
files that a kill at an arbitrary time can leave.

The driver logs what it did as JSON lines (stages entered, every atomic write and part removal,
every chunked map with its pending chunks, every finished chunk, the kill). It runs in a child
forked by a multiprocessing fork server that has imported the package (cheap: nothing to import)
or, as a script, in a fresh interpreter: ``python _pipeline_faults.py SPEC.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

CONFIG = """
[run]
out = "run"
seed = 0
chunk_size = 100
workers = 1

[target]
spectra = "{mock}/lamost/spectra"
catalogue = "{mock}/lamost/catalogue.fits"

[reference]
catalogue = "{mock}/galah/catalogue.fits"
spectra = "{mock}/galah/spectra"

[reference.columns]
snr_c1 = "snr_c1_iraf"
chi2_cannon = "chi2_sp"
flag_cannon = "flag_sp"

[clean]
percentile = 85

[models.dwarf]
labels = ["teff", "logg", "mean_alpha_fe"]

[models.giant]
labels = ["teff", "logg", "fe_h"]

[training]
cv_folds = 2
min_stars = 15
scatter = "ml"

[dynamics]
gaia = "{mock}/gaia/catalogue.fits"
n_samples = 2
"""

#: exit status of a driver stopped by the runner's stop hook (StopRequested)
STOPPED = 3
# atomic_path's temporaries (cannonade.util)
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\..*)?")
CATALOGUE_FILES = ("per_star.fits", "per_observation.fits", "per_star.parquet", "per_observation.parquet")


def make_mock(directory, n_stars=400, seed=3):
    """The mock survey in ``directory/mock``: 447 LAMOST spectra (3 ingest chunks of 200, 5 inference
    chunks of 100), 200 GALAH reference stars, Gaia."""
    from cannonade.simulate import simulate_survey

    simulate_survey("lamost-galah", n_stars=n_stars, seed=seed, out=Path(directory) / "mock", reference_fraction=0.5,
                    corrupt_fraction=0.06, show_progress=False)
    return Path(directory) / "mock"


def write_config(directory, mock):
    """``directory/run.toml`` (its run directory ``directory/run``) over the mock at ``mock``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.toml"
    path.write_text(CONFIG.format(mock=Path(mock).resolve().as_posix()))
    return path


# ---------------------------------------------------------------------------------------------
# the driver (runs in the child)


def drive(spec):
    """Run the pipeline of ``spec['config']`` with at most one interruption; returns normally when
    the run finished (or raises StopRequested).

    spec keys: ``config``, ``log`` (JSON-lines file, appended), and optionally one of
    ``kill = {"stage": NAME, "op": "write"|"unlink", "path": P, "how": "before"|"partial"|"after"}``
    (SIGKILL at stage NAME's atomic write of run-directory path P — before its rename, with its
    temporary cut in half, or after the rename — or at its removal of the consumed part P; if the
    stage does not do that in this run, at its marker's write; if it is finished, at the first write
    of a later stage), ``kill_after_chunks = N`` (SIGKILL after the N-th chunk finished in this
    process) or ``stop_after_chunks = N`` (the runner's hook).
    """
    from cannonade.execution import ChunkedMap
    from cannonade.pipeline import Run

    log = open(spec["log"], "a", buffering=1, encoding="utf-8")

    def emit(**event):
        log.write(json.dumps(event) + "\n")
        log.flush()

    def die(**event):
        emit(ev="killed", **event)
        log.close()
        os.kill(os.getpid(), signal.SIGKILL)

    run = Run(spec["config"], stop_after_chunks=spec.get("stop_after_chunks"))
    out = run.out.resolve()
    stage_index = {name: i for i, name in enumerate(run.stages)}
    kill = spec.get("kill")
    state = {"stage": None, "index": -1, "chunks": 0}

    def rel(p):
        p = Path(p).resolve()
        return p.relative_to(out).as_posix() if p.is_relative_to(out) else str(p)

    def firing(op, path):
        if not kill:
            return False
        target = stage_index[kill["stage"]]
        if state["index"] != target:
            return state["index"] > target
        return (op, path) == (kill.get("op", "write"), kill["path"]) or (op, path) == ("write", f"stages/{kill['stage']}.json")

    real_replace, real_unlink = os.replace, os.unlink

    def replace(src, dst, *args, **kwargs):
        tracked = bool(_TEMPORARY.fullmatch(Path(src).name)) and not _TEMPORARY.fullmatch(Path(dst).name)
        if not tracked:
            return real_replace(src, dst, *args, **kwargs)
        event = dict(op="write", stage=state["stage"], path=rel(dst), inside=Path(dst).resolve().is_relative_to(out))
        fire = firing("write", event["path"])
        if fire and kill["how"] in ("before", "partial"):
            if kill["how"] == "partial" and os.path.isfile(src):  # as if killed while writing it
                os.truncate(src, os.path.getsize(src) // 2)
            die(how=kill["how"], **event)
        result = real_replace(src, dst, *args, **kwargs)
        emit(ev="write", **event)
        if fire:
            die(how="after", **event)
        return result

    def unlink(path, *args, **kwargs):
        tracked = Path(path).name.startswith("part_") and Path(path).resolve().is_relative_to(out)
        if not tracked:
            return real_unlink(path, *args, **kwargs)
        event = dict(op="unlink", stage=state["stage"], path=rel(path))
        fire = firing("unlink", event["path"])
        if fire and kill["how"] != "after":
            die(how="before", **event)
        result = real_unlink(path, *args, **kwargs)
        emit(ev="unlink", **event)
        if fire:
            die(how="after", **event)
        return result

    def entering(module):
        original = module.execute

        def execute(r):
            state.update(stage=module.NAME, index=stage_index[module.NAME])
            emit(ev="stage", stage=module.NAME)
            return original(r)

        return original, execute

    real_map = ChunkedMap.run

    def map_run(self, func, *args, on_done=None, **kwargs):
        where = rel(self.parts_dir)
        emit(ev="map", dir=where, n=self.n_chunks, pending=self.pending(), stage=state["stage"])

        def done(k, result):
            emit(ev="chunk", dir=where, k=int(k), stage=state["stage"])
            if on_done is not None:
                on_done(k, result)
            state["chunks"] += 1
            if spec.get("kill_after_chunks") and state["chunks"] >= spec["kill_after_chunks"]:
                die(how="chunk", stage=state["stage"], dir=where, k=int(k))

        return real_map(self, func, *args, on_done=done, **kwargs)

    originals = {}
    os.replace, os.unlink = replace, unlink
    ChunkedMap.run = map_run
    for module in run.recipe.stages:
        originals[module], module.execute = entering(module)
    try:
        run.run()
        emit(ev="finished")
    finally:  # restore (a forked child exits anyway; the script too)
        os.replace, os.unlink = real_replace, real_unlink
        ChunkedMap.run = real_map
        for module, original in originals.items():
            module.execute = original
        log.close()


def _child(spec):
    from cannonade.execution import StopRequested

    try:
        drive(spec)
        return 0
    except StopRequested:
        return STOPPED
    except BaseException:
        with open(spec["log"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"ev": "error", "traceback": traceback.format_exc()}) + "\n")
        return 1


#: what the fork server imports once, so that each driver child starts at once
PRELOAD = ["numpy", "h5py", "astropy.table", "astropy.io.fits", "pyarrow.parquet", "cannonade.pipeline", "cannonade.execution"]


def fork_drive(spec):
    """Run :func:`drive` in a child forked by a multiprocessing fork server; its exit status (-9 when
    killed).

    Not forked from the test process: once a pipeline has run there (OpenMP threads of galpy's
    actions, blosc, pyarrow's allocator), a forked child can deadlock on a lock a thread held. The
    fork server is a fresh interpreter that only imported :data:`PRELOAD`.
    """
    import multiprocessing
    import runpy

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    proc = ctx.Process(target=runpy.run_path, args=(str(Path(__file__)),),
                       kwargs={"init_globals": {"FAULTS_SPEC": json.dumps(spec)}, "run_name": "__faults_child__"})
    proc.start()
    proc.join()
    return proc.exitcode


def read_log(path):
    """The events of a driver log."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# checks of a run directory


def load_file(path):
    """Read ``path`` completely by its suffix; raises if it is partial or unreadable."""
    path = Path(path)
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".fits":
        from astropy.io import fits

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    _ = hdu.data
        truncated = [w for w in caught if "truncated" in str(w.message).lower()]
        if truncated:
            raise OSError(f"{path}: {truncated[0].message}")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.read_table(path)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as d:
            for k in d.files:
                _ = d[k]
    elif suffix == ".h5":
        import h5py

        from cannonade.spectra.store import register_filters

        register_filters()
        with h5py.File(path, "r") as h5:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    _ = obj[()]
            h5.visititems(visit)
    elif suffix == ".csv":
        from astropy.table import Table

        Table.read(path, format="ascii.csv")
    elif suffix == ".toml":
        import tomllib

        tomllib.loads(path.read_text(encoding="utf-8"))
    else:
        path.read_bytes()


def finished_files(run_dir):
    """Every file of the run directory but the log and atomic_path temporaries."""
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name != "run.log" and not _TEMPORARY.fullmatch(p.name))


def temporaries(run_dir):
    return sorted(p for p in Path(run_dir).rglob(".*") if p.is_file() and _TEMPORARY.fullmatch(p.name))


def check_run_dir(run_dir, outputs):
    """No partial file where a finished one is expected.

    Every file that is not a hidden temporary of atomic_path reads completely, and every stage
    with a marker has all its outputs (``outputs``: stage -> run-directory paths, from an
    uninterrupted run). Returns the markers present.
    """
    run_dir = Path(run_dir)
    for p in finished_files(run_dir):
        try:
            load_file(p)
        except Exception as exc:
            raise AssertionError(f"{p.relative_to(run_dir)} is partial or unreadable: {exc!r}") from exc
    marked = sorted(p.stem for p in (run_dir / "stages").glob("*.json"))
    for stage in marked:
        missing = [f for f in outputs.get(stage, ()) if not (run_dir / f).is_file()]
        assert not missing, f"stage {stage} has its marker but not its outputs {missing}"
    return marked


def complete_parts(run_dir):
    """{parts dir (relative): {chunk: mtime_ns}} of the part files present (each reads completely)."""
    run_dir = Path(run_dir)
    out = {}
    for state in run_dir.rglob("state.json"):
        parts = {}
        for p in state.parent.glob("part_*"):
            if p.is_file() and not p.name.startswith("."):
                load_file(p)
                parts[int(p.stem.split("_")[1])] = p.stat().st_mtime_ns
        out[state.parent.relative_to(run_dir).as_posix()] = parts
    return out


def check_not_redone(before, events):
    """The chunked maps of a rerun treat every part present before it as done (run only the others)."""
    for e in events:
        if e["ev"] == "map" and e["dir"] in before:
            done = set(before[e["dir"]])
            assert not done & set(e["pending"]), f"{e['dir']}: finished chunks {sorted(done & set(e['pending']))} pending again"
            assert set(e["pending"]) == set(range(e["n"])) - done, (e, sorted(done))
        if e["ev"] == "chunk" and e["dir"] in before:
            assert e["k"] not in before[e["dir"]], f"{e['dir']}: chunk {e['k']} redone"


def assert_same_catalogue(a_dir, b_dir):
    """The four catalogue files of two runs hold the same tables (data, units; not provenance times)."""
    from cannonade.catalogue import read_catalogue

    for name in CATALOGUE_FILES:
        a, b = read_catalogue(Path(a_dir) / name), read_catalogue(Path(b_dir) / name)
        assert a.colnames == b.colnames and len(a) == len(b), name
        for c in a.colnames:
            x, y = np.asarray(a[c]), np.asarray(b[c])
            assert x.dtype == y.dtype, (name, c)
            assert a[c].unit == b[c].unit, (name, c)
            if hasattr(a[c], "mask") or hasattr(b[c], "mask"):
                np.testing.assert_array_equal(np.ma.getmaskarray(a[c]), np.ma.getmaskarray(b[c]), err_msg=f"{name}:{c} mask")
            np.testing.assert_array_equal(x, y, err_msg=f"{name}:{c}")


def assert_same_models(a_dir, b_dir):
    """The arrays of the model files of two runs are identical (the JSON metadata holds times)."""
    for p in sorted(Path(a_dir).glob("*.npz")):
        with np.load(p, allow_pickle=False) as a, np.load(Path(b_dir) / p.name, allow_pickle=False) as b:
            assert sorted(a.files) == sorted(b.files), p.name
            for k in a.files:
                if k != "metadata":
                    np.testing.assert_array_equal(a[k], b[k], err_msg=f"{p.name}:{k}")


if __name__ == "__main__":  # python _pipeline_faults.py SPEC.json: the driver in a fresh interpreter
    sys.exit(_child(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
elif __name__ == "__faults_child__":  # run by fork_drive in a child of the fork server
    sys.exit(_child(json.loads(globals()["FAULTS_SPEC"])))
