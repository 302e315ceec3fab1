"""The dask backend: chunks on dask.distributed give what the serial backend gives.

One 2-worker LocalCluster (processes, one thread each) is shared by the module; one test starts
the backend's own embedded cluster. A worker is killed deterministically -- the chunk function
calls ``os._exit`` on its first attempt at one chunk, guarded by a marker file -- never by timing.
Skipped when ``distributed`` is not installed.
"""

import functools
import os
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from cannonade.exceptions import ConfigError  # noqa: E402
from cannonade.execution import BACKENDS, ChunkedMap, DaskBackend, choose_backend, get_backend  # noqa: E402
from cannonade.util import atomic_path  # noqa: E402

# this module's chunk functions travel to the workers by value (the workers cannot import a test
# module loaded by pytest's importlib mode)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_CHUNKS = 8
ROWS = 5


def square_chunk(k, part, rows, log=None, die_on=None, marker=None, wait_for=None):
    """Write (rows,) float64 ``arange(rows)**2 + k`` as .npy; return 10 k. Each call appends ``k`` to
    ``log``. With ``die_on == k``, the first call (the one that creates ``marker``) kills its
    worker process instead, once the file ``wait_for`` exists (another worker's part: mid-run)."""
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"{k}\n")
    if die_on == k:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one caller only
        except FileExistsError:
            pass
        else:
            os.close(fd)
            for _ in range(600):  # at most 30 s: a deadline, not a timing the test depends on
                if wait_for is None or os.path.exists(wait_for):
                    break
                time.sleep(0.05)
            os._exit(1)  # the worker process dies here, its nanny starts another
    with atomic_path(part) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.arange(rows, dtype=np.float64) ** 2 + k)
    return 10 * k


def failing_chunk(k, part):
    if k == 2:
        raise ConfigError(f"chunk {k}: a bad setting")
    with atomic_path(part) as tmp:
        tmp.write_bytes(b"ok")
    return k


def set_env(name, value):
    """A worker initializer: visible to the tasks run in that worker afterwards."""
    os.environ[name] = value


def get_env(name):
    return os.environ.get(name)


def _calls(log):
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _make(path, n=N_CHUNKS):
    return ChunkedMap(path, {"rows": ROWS}, n, suffix=".npy")


def _run(cm, **kw):
    fn = functools.partial(square_chunk, **{k: kw.pop(k) for k in ("log", "die_on", "marker", "wait_for") if k in kw})
    results = {}
    n = cm.run(fn, args=lambda k: (ROWS,), on_done=results.__setitem__, **kw)
    return n, results


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker LocalCluster shared by the tests: its scheduler's address."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Bytes of every part of a serial run."""
    cm = _make(tmp_path_factory.mktemp("ref") / "parts")
    assert _run(cm)[0] == N_CHUNKS
    return [p.read_bytes() for p in cm.parts()]


def test_choose_backend_and_registry():
    assert BACKENDS["dask"] is DaskBackend
    assert choose_backend("", default="process") == ("process", {})
    assert choose_backend(None) == ("serial", {})
    assert choose_backend(" local ") == ("dask", {"scheduler": "local"})
    assert choose_backend("tcp://10.0.0.1:8786") == ("dask", {"scheduler": "tcp://10.0.0.1:8786"})
    be = get_backend("dask", workers=3)
    assert be.local and be.max_in_flight == 6 and be.client is None
    with pytest.raises(ConfigError, match="workers"):
        get_backend("dask", workers=0)


def test_embedded_local_cluster_identical_to_serial(tmp_path, reference):
    """scheduler='local': the backend starts its own LocalCluster and closes it on exit."""
    cm = _make(tmp_path / "parts")
    be = get_backend("dask", workers=2, scheduler="local")
    n, results = _run(cm, backend=be)
    assert n == N_CHUNKS and results == {k: 10 * k for k in range(N_CHUNKS)}
    assert [p.read_bytes() for p in cm.parts()] == reference
    assert be.client is None and be._cluster is None  # closed


def worker_pid_chunk(k, part):
    with atomic_path(part) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.zeros(1))
    return os.getpid()


def test_maps_share_one_embedded_cluster(tmp_path):
    """shared_cluster: several maps (the nandakumar recipe's four models) run on one LocalCluster,
    started once and closed at the end; the other backends' options pass through unchanged."""
    from cannonade.execution import shared_cluster

    with shared_cluster("serial", {}, workers=2) as opts:
        assert opts == {}
    pids = []
    with shared_cluster("dask", {"scheduler": "local"}, workers=1) as opts:
        client = opts["client"]
        for name in ("a", "b"):
            got = {}
            ChunkedMap(tmp_path / name, {"m": name}, 3, suffix=".npy").run(
                worker_pid_chunk, backend="dask", workers=1, on_done=got.__setitem__, **opts)
            pids.append(set(got.values()))
        assert client.status == "running"
    assert pids[0] == pids[1] and len(pids[0]) == 1  # the same single worker process served both maps
    assert client.status in ("closed", "closing")


def test_connected_cluster_identical_and_left_running(tmp_path, reference, cluster):
    log = tmp_path / "calls.log"
    cm = _make(tmp_path / "parts")
    n, _ = _run(cm, log=str(log), backend="dask", workers=2, scheduler=cluster)
    assert n == N_CHUNKS and sorted(_calls(log)) == list(range(N_CHUNKS))
    assert [p.read_bytes() for p in cm.parts()] == reference
    assert _run(cm, backend="dask", workers=2, scheduler=cluster)[0] == 0  # finished parts are skipped
    with distributed.Client(cluster) as c:  # the cluster we only connected to is still there
        assert len(c.nthreads()) == 2


def test_in_flight_bounded_and_initializer_on_every_worker(tmp_path, cluster):
    pulled = []

    def tasks(n):
        for k in range(n):
            pulled.append(k)
            yield k, (str(tmp_path / f"p{k}.npy"), ROWS)

    with DaskBackend(workers=2, scheduler=cluster, initializer=set_env,
                     initargs=("CANNONADE_TEST_INIT", "yes")) as be:
        assert be.max_in_flight == 4
        it = be.imap_unordered(square_chunk, tasks(20))
        k, result = next(it)
        assert len(pulled) == 4 and result == 10 * k  # nothing submitted beyond 2 x workers
        it.close()
        seen = be.client.run(get_env, "CANNONADE_TEST_INIT")
        assert list(seen.values()) == ["yes", "yes"]
    with distributed.Client(cluster) as c:  # the plugin is unregistered from a cluster we only connected to
        assert not [name for name in c.run(lambda dask_worker: list(dask_worker.plugins)).values()
                    for name in name if name.startswith("cannonade-setup")]


def test_a_chunk_error_reaches_the_caller_unchanged(tmp_path, cluster):
    cm = ChunkedMap(tmp_path / "parts", {"x": 1}, 4, suffix=".txt")
    with pytest.raises(ConfigError, match="chunk 2: a bad setting"):
        cm.run(failing_chunk, backend="dask", workers=2, scheduler=cluster)
    assert 2 in cm.pending()


def test_unreachable_scheduler_is_a_config_error(tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ConfigError, match="cannot reach the dask scheduler"):
            with DaskBackend(scheduler="tcp://127.0.0.1:9"):
                pass


def test_a_killed_worker_loses_only_its_chunk(tmp_path, reference, cluster):
    """Chunk 0 kills its worker on its first attempt, once the other worker has written chunk 1's part
    (mid-run; chunk 0 is the first task its worker runs in this map, so that worker holds no
    finished result that would be lost with it). The scheduler reruns chunk 0 on a live worker,
    the map finishes with the serial parts, and every other chunk ran exactly once."""
    log, marker = tmp_path / "calls.log", tmp_path / "died"
    cm = _make(tmp_path / "parts")
    n, results = _run(cm, log=str(log), die_on=0, marker=str(marker), wait_for=str(cm.part(1)), backend="dask",
                      workers=2, scheduler=cluster)
    assert marker.exists()  # a worker did die
    assert n == N_CHUNKS and results == {k: 10 * k for k in range(N_CHUNKS)}
    calls = _calls(log)
    assert sorted(calls) == [0] + list(range(N_CHUNKS))  # chunk 0 twice (died once), every other chunk once
    assert [p.read_bytes() for p in cm.parts()] == reference
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=120)  # the nanny restarted it: the cluster is whole again


# ---- the commands on dask: the same labels, the same store

LABELS = ["teff", "logg", "fe_h"]
P = 1000  # large enough for a multi-threaded BLAS to sum in another order (then labels differ by ~4e-6 of their scale)


@pytest.fixture(scope="module")
def small_survey(tmp_path_factory):
    """A store of 150 quadratic mock spectra and a model trained on 100 of them (no calibration)."""
    from astropy.table import Table

    from cannonade.spectra.store import write_store
    from cannonade.tasks.train import train_model

    d = tmp_path_factory.mktemp("survey")
    rng = np.random.default_rng(5)
    n = 150
    lab = np.column_stack([rng.uniform(4500, 5500, n), rng.uniform(2, 4, n), rng.uniform(-0.7, 0.3, n)])
    x = (lab - [5000.0, 3.0, -0.2]) / [500.0, 1.0, 0.3]
    pix = np.linspace(0, 1, P)
    a, b, c = np.sin(7 * pix), np.cos(5 * pix), np.sin(3 * pix + 1)
    flux = 1 - 0.05 * (1 + a * x[:, :1] + b * x[:, 1:2] + c * x[:, 2:3] + 0.3 * a * b * x[:, :1] * x[:, 2:3])
    flux = flux + rng.normal(0, 0.01, flux.shape)
    ids = np.array([f"s{i}" for i in range(n)])
    meta = {"obj_id": ids, "survey": np.array(["lamost"] * n), "snr": np.full(n, 100.0), "ra": np.linspace(10, 20, n),
            "dec": np.full(n, 5.0)}
    write_store(d / "survey.h5", np.linspace(4000, 5000, P), flux, np.full(flux.shape, 1e4), meta,
                {"grid": "custom", "normalise": "gaussian", "norm_kwargs": "{}"})
    Table({"star": ids[:100], "teff": lab[:100, 0], "logg": lab[:100, 1], "fe_h": lab[:100, 2]}).write(
        d / "labels.csv", format="ascii.csv")
    train_model(d / "labels.csv", d / "survey.h5", LABELS, d / "giant.npz", calibrate=False)
    return d


@pytest.mark.filterwarnings("ignore::cannonade.cannon.calibration.UncalibratedWarning")
def test_infer_labels_the_same_on_dask(tmp_path, small_survey, cluster):
    """cannonade infer, serial vs a 2-worker cluster: every label equal to 1e-6 of its scale (both run
    their chunks with one BLAS thread; without that, this differs by a few 1e-6 on 2 cores)."""
    from astropy.table import Table

    from cannonade.cli import main
    from cannonade.tasks.infer import infer_store

    d = small_survey
    infer_store([d / "giant.npz"], d / "survey.h5", tmp_path / "serial.parquet", chunk_size=20)
    assert main(["infer", str(d / "giant.npz"), str(d / "survey.h5"), "--out", str(tmp_path / "dask.parquet"),
                 "--chunk-size", "20", "--workers", "2", "--scheduler", cluster]) == 0
    a, b = Table.read(tmp_path / "serial.parquet"), Table.read(tmp_path / "dask.parquet")
    assert list(a["obj_id"]) == list(b["obj_id"]) and len(a) == 150
    for name in LABELS:
        x, y = np.asarray(a[name], float), np.asarray(b[name], float)
        scale = np.nanstd(x)
        assert np.isfinite(x).mean() > 0.9 and scale > 0
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        assert np.nanmax(np.abs(x - y)) <= 1e-6 * scale, name
        np.testing.assert_allclose(np.asarray(b[f"e_{name}"], float), np.asarray(a[f"e_{name}"], float),
                                   rtol=0, atol=1e-6 * scale, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(a["flags"]), np.asarray(b["flags"]))
    assert not (tmp_path / ".dask.parquet.parts").exists()  # parts assembled and removed


def test_ingest_the_same_store_on_dask(tmp_path, shared_data, cluster):
    """cannonade ingest's chunks on dask (its per-worker settings set by the initializer on every
    worker) give the store the serial ingest gives."""
    from cannonade.spectra.ingest import ingest
    from cannonade.spectra.store import SpectraStore

    files = [str(f) for f in sorted((shared_data / "lamost_dr1" / "spectra").glob("*.fits"))[:6]]
    ingest(files, tmp_path / "serial.h5", workers=1, chunk_size=2)
    rep = ingest(files, tmp_path / "dask.h5", workers=2, chunk_size=2, scheduler=cluster)
    assert rep.n_ok == 6 and rep.n_chunks == 3
    with SpectraStore(tmp_path / "serial.h5") as s1, SpectraStore(tmp_path / "dask.h5") as s2:
        f1, i1 = s1.read()
        f2, i2 = s2.read()
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(i1, i2)
        assert list(s1.meta()["obj_id"]) == list(s2.meta()["obj_id"])


def test_run_scheduler_and_workers_override_the_config(tmp_path):
    from cannonade.cli import _run_config, build_parser
    from cannonade.pipeline.fingerprints import UNTRACKED

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text('[run]\nscheduler = "tcp://10.0.0.1:8786"\n'
                        '[target]\nspectra = "s"\ncatalogue = "c.fits"\n[reference]\ncatalogue = "r.fits"\n')
    parser = build_parser()
    args = parser.parse_args(["run", str(cfg_path)])
    assert _run_config(args) == str(cfg_path)  # no override: the file as it is
    args = parser.parse_args(["run", str(cfg_path), "--scheduler", "local", "--workers", "3"])
    cfg = _run_config(args)
    assert (cfg.run.scheduler, cfg.run.workers, cfg.source) == ("local", 3, cfg_path.resolve())
    assert "run.scheduler" in UNTRACKED  # where the chunks ran changes no result


def _set_allowed_failures(n, dask_scheduler=None):
    old, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
    return old


def test_a_chunk_that_always_kills_its_worker_stops_the_run(tmp_path, cluster):
    """A chunk whose workers keep dying (allowed-failures lowered to 0 here: one death) stops the map
    with a CannonadeError naming a chunk (chunk 1, or a chunk queued on the same worker); the chunks
    that finished keep their parts. The last test of the module: its worker may still be restarting."""
    from cannonade.exceptions import CannonadeError

    cm = _make(tmp_path / "parts", n=3)
    with distributed.Client(cluster) as c:
        old = c.run_on_scheduler(_set_allowed_failures, 0)
        try:
            with pytest.raises(CannonadeError, match=r"chunk \d: every dask worker that ran it died"):
                _run(cm, die_on=1, marker=str(tmp_path / "died"), wait_for=str(cm.part(0)), backend="dask", workers=2,
                     scheduler=cluster)
        finally:
            c.run_on_scheduler(_set_allowed_failures, old)
    assert 1 in cm.pending() and not cm.is_done(1)


def test_ingest_on_dask_with_a_failed_file_gives_the_serial_store(tmp_path, shared_data, cluster, monkeypatch):
    """A missing file moves every part off the store's chunk grid: after the chunks ran on dask,
    the assembly re-encodes the rows in its own pool of processes (forked beside the dask client's
    threads); the store is the serial one, bit for bit."""
    from cannonade.spectra import assembly
    from cannonade.spectra.ingest import ingest
    from cannonade.spectra.store import SpectraStore

    files = [str(tmp_path / "missing.fits")] + [str(f) for f in sorted((shared_data / "lamost_dr1" / "spectra").glob("*.fits"))[:30]]
    monkeypatch.setattr(assembly, "SEGMENT_ROWS", 8)  # several segments: the pool is used
    plans = []
    real = assembly.copy_plan
    monkeypatch.setattr(assembly, "copy_plan", lambda *a: plans.append(real(*a)) or plans[-1])
    ingest(files, tmp_path / "serial.h5", workers=1, chunk_size=24)
    rep = ingest(files, tmp_path / "dask.h5", workers=2, chunk_size=24, scheduler=cluster)
    assert rep.n_ok == 30 and rep.n_failed == 1
    assert sum(isinstance(run, assembly.Segment) for run in plans[-1]) >= 2  # rows 0-29 off the grid of 8
    with SpectraStore(tmp_path / "serial.h5") as s1, SpectraStore(tmp_path / "dask.h5") as s2:
        f1, i1 = s1.read()
        f2, i2 = s2.read()
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(i1, i2)
        assert s1.column("obj_id").tolist() == s2.column("obj_id").tolist()
