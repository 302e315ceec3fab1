"""End to end at survey scale: ingest -> infer -> dynamics on N mock LAMOST spectra, 1 and 2 workers.

A small mock LAMOST x GALAH survey (``cannonade.simulate``, real DR1 file layout, gzipped) is
simulated once; its spectrum files are replicated to N by symbolic links with distinct names
(the same bytes are read again, so the page cache is warm: this measures CPU, not the disk). A
quadratic model (teff, logg, fe_h, mg_fe) is trained on 1 000 of the mock's spectra with their
true labels. Then, each stage in a fresh process (so its peak memory is its own):

* ``ingest``: the N files -> a spectra store (``cannonade.spectra.ingest``, ``workers`` processes);
* ``infer``: every stored spectrum with the model, calibrated errors and flags, written as the
  per-spectrum table (``cannonade.tasks.infer.infer_store``, ``workers`` processes);
* ``dynamics``: Galactocentric actions with 20 resamples for N stars
  (``cannonade.galaxy.dynamics.orbits``, galpy's OpenMP with ``workers`` threads;
  ``--action-method staeckel_grid``: galpy's interpolated grid, its set-up included).

For each stage: seconds, spectra (stars) per second, the peak RSS of the parent and of the
largest worker (and that worker's PSS and private memory, sampled each second: a forked worker's
RSS also counts the parent's pages it shares), and the projection to LAMOST DR10 v2.0's
11.1 million spectra. Run two sizes to see that memory does not grow with N.

    python benchmarks/bench_survey.py --n 100000 --workers 1 2 [--dir /tmp/bench_survey]

``--layout table`` rewrites the mock's files once in the DR8+ table layout (the layout of every
LAMOST spectrum since DR8: DR10's files) and replicates those instead::

    python benchmarks/bench_survey.py --n 100000 --workers 2 --stages ingest --layout table

On a GPU machine (the issue's "same benchmark"; CuPy installed: ``pip install -e '.[gpu]'``)::

    python benchmarks/bench_survey.py --n 1000000 --workers 16 --stages ingest infer --device gpu --scheduler local

Disk: the store of each (N, workers) run is removed after its inference unless ``--keep``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DR10_SPECTRA = 11.1e6
LABELS = ("teff", "logg", "fe_h", "mg_fe")


def _peaks():
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0)


class WorkerMemory:
    """The largest private memory (USS: pages no other process maps) and PSS of this process's
    child processes, sampled every ``interval`` seconds from ``/proc/<pid>/smaps_rollup`` (Linux;
    zeros elsewhere). A forked worker's RSS also counts the parent's pages it shares (the list of
    a million file names, the imported libraries): its private memory is what the worker itself
    costs, the figure that must not grow with N."""

    def __init__(self, interval=1.0):
        import threading

        self.private_mb = self.pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _children():
        me = os.getpid()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == me:
                    yield pid

    def _sample(self):
        for pid in self._children():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as fh:
                    kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh.read().splitlines()[1:])}
            except (OSError, ValueError):
                continue
            self.private_mb = max(self.private_mb, (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024.0)
            self.pss_mb = max(self.pss_mb, kb.get("Pss", 0) / 1024.0)

    def _run(self, interval):
        if not os.path.exists("/proc/self/smaps_rollup"):
            return
        while not self._stop.wait(interval):
            self._sample()


def prepare(base, n_mock, seed=0):
    """Simulate the mock, ingest it, train the model; return (list of real files, model path)."""
    from astropy.table import Table

    from cannonade.cannon.model import CannonModel
    from cannonade.simulate import simulate_survey
    from cannonade.spectra.ingest import ingest
    from cannonade.spectra.store import SpectraStore

    base = Path(base)
    mock = base / "mock"
    if not (mock / "manifest.json").exists():
        simulate_survey("lamost-galah", n_stars=n_mock, seed=seed, out=mock, repeat_fraction=0.0, show_progress=False)
    files = sorted(str(p) for p in (mock / "lamost").rglob("*.fits.gz"))
    model_path = base / "model.npz"
    if not model_path.exists():
        store = base / "train.h5"
        ingest(files[:1000], store, grid="lamost", normalise="gaussian", workers=2, chunk_size=500)
        truth = Table.read(mock / "truth" / "stars.fits")
        obs = Table.read(mock / "truth" / "observations.fits")
        star_of = {os.path.basename(str(f)): int(s) for f, s in zip(obs["filename"], obs["star_id"])}
        row_of = {int(s): k for k, s in enumerate(truth["star_id"])}
        with SpectraStore(store) as st:
            meta = st.meta()
            flux, ivar = st.read_rows(np.arange(len(meta)))
        names = [os.path.basename(str(f)) for f in meta["source_file"]]
        rows = [row_of[star_of[n]] for n in names]
        labels = np.column_stack([np.asarray(truth[c], float)[rows] for c in LABELS])
        model = CannonModel(list(LABELS), order=2)
        model.fit(labels, flux, ivar)
        model.save(model_path)
    return files, model_path


def to_table_layout(files, out):
    """The mock's DR1 image files rewritten in the DR8+ table layout (LAMOST DR8, DR9, DR10: a
    header-only primary HDU and a one-row ``COADD`` binary table of float32 FLUX, IVAR,
    WAVELENGTH, ANDMASK, ORMASK and NORMALIZATION columns), gzipped; returns their paths."""
    import gzip

    from astropy.io import fits

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        dst = out / os.path.basename(f)
        paths.append(str(dst))
        if dst.exists():
            continue
        with fits.open(f) as hdul:
            h, data = hdul[0].header, np.asarray(hdul[0].data, dtype=np.float32)
        npix = data.shape[1]
        wave = (10.0 ** (h["COEFF0"] + h["COEFF1"] * np.arange(npix))).astype(np.float32)
        cards = [c for c in h.cards if c.keyword not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND",
                                                         "COEFF0", "COEFF1")]
        columns = [fits.Column(name=name, format=f"{npix}E", array=row[None, :]) for name, row in
                   (("FLUX", data[0]), ("IVAR", data[1]), ("WAVELENGTH", wave), ("ANDMASK", data[3]),
                    ("ORMASK", data[4]), ("NORMALIZATION", data[2]))]
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(header=fits.Header(cards)),
                      fits.BinTableHDU.from_columns(columns, name="COADD")]).writeto(buf)
        tmp = dst.with_suffix(".tmp")
        with gzip.open(tmp, "wb", compresslevel=6) as fh:
            fh.write(buf.getvalue())
        tmp.replace(dst)
    return paths


def _list_file(base, n, layout):
    return Path(base) / (f"list_{n}.txt" if layout == "image" else f"list_{n}_{layout}.txt")


def replicate(base, files, n, layout="image"):
    """An @list of n distinct symbolic links cycling over ``files``."""
    links = Path(base) / (f"links_{n}" if layout == "image" else f"links_{n}_{layout}")
    listfile = _list_file(base, n, layout)
    if not listfile.exists():
        links.mkdir(parents=True, exist_ok=True)
        with open(listfile, "w") as fh:
            for k in range(n):
                sub = links / f"{k // 10000:04d}"
                if k % 10000 == 0:
                    sub.mkdir(exist_ok=True)
                p = sub / f"s{k:08d}_{os.path.basename(files[k % len(files)])}"
                if not p.exists():
                    p.symlink_to(files[k % len(files)])
                fh.write(f"{p}\n")
    return listfile


def stage_ingest(base, n, workers, action_method=None, device="cpu", scheduler="", layout="image"):
    from cannonade.spectra.ingest import ingest

    out = Path(base) / f"store_{n}_{workers}.h5"
    t0 = time.perf_counter()
    rep = ingest([f"@{_list_file(base, n, layout)}"], out, grid="lamost", normalise="gaussian", workers=workers,
                 chunk_size=1000, scheduler=scheduler)
    return dict(seconds=time.perf_counter() - t0, n=rep.n_ok, failed=rep.n_failed)


def stage_infer(base, n, workers, action_method=None, device="cpu", scheduler="", layout="image"):
    from cannonade.tasks.infer import infer_store

    store = Path(base) / f"store_{n}_{workers}.h5"
    out = Path(base) / f"labels_{n}_{workers}.parquet"
    t0 = time.perf_counter()
    infer_store([Path(base) / "model.npz"], store, out, chunk_size=2000, workers=workers, scheduler=scheduler, device=device)
    dt = time.perf_counter() - t0
    return dict(seconds=dt, n=n)


def stage_dynamics(base, n, workers, action_method="staeckel", device="cpu", scheduler="", layout="image"):
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_dynamics import mock_catalogue

    from cannonade.galaxy.dynamics import orbits

    t = mock_catalogue(n)
    t0 = time.perf_counter()
    orbits(t, n_samples=20, seed=0, chunk_size=50_000, show_progress=False, action_method=action_method,
           **(dict(workers=workers, scheduler=scheduler) if scheduler else {}))
    return dict(seconds=time.perf_counter() - t0, n=n)


STAGES = {"ingest": stage_ingest, "infer": stage_infer, "dynamics": stage_dynamics}


def run_stage(base, stage, n, workers, action_method="staeckel", device="cpu", scheduler="", layout="image"):
    env = dict(os.environ, CANNONADE_QUIET="1", OMP_NUM_THREADS=str(workers))
    cmd = [sys.executable, __file__, "--dir", str(base), "--action-method", action_method, "--device", device,
           "--scheduler", scheduler, "--layout", layout, "--_stage", stage, str(n), str(workers)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:  # the stage's own error, not the subprocess's
        raise SystemExit(f"stage {stage} (N={n}, workers={workers}) failed:\n{res.stderr.strip()[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[20_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mock-stars", type=int, default=3000, help="stars of the mock whose files are replicated")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--dir", default="bench_survey_work")
    ap.add_argument("--keep", action="store_true", help="keep the stores and tables of each run")
    ap.add_argument("--action-method", default="staeckel", choices=["staeckel", "staeckel_grid"],
                    help="dynamics stage: orbits(action_method=...)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="infer stage: the Cannon's device (gpu: CuPy)")
    ap.add_argument("--scheduler", default="",
                    help="'' (processes, default), 'local' (an embedded dask LocalCluster of --workers) or a scheduler "
                         "address: every stage's chunks run there")
    ap.add_argument("--layout", default="image", choices=["image", "table"],
                    help="the LAMOST files' layout: 'image' (DR1-DR7, the mock's) or 'table' (DR8+: DR10's files; "
                         "the mock's files rewritten once)")
    ap.add_argument("--_stage", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    base = Path(args.dir)
    if args._stage:
        stage, n, workers = args._stage[0], int(args._stage[1]), int(args._stage[2])
        with WorkerMemory() as mem:
            out = STAGES[stage](base, n, workers, action_method=args.action_method, device=args.device,
                                scheduler=args.scheduler, layout=args.layout)
        out["parent_mb"], out["worker_mb"] = _peaks()
        out["worker_private_mb"], out["worker_pss_mb"] = mem.private_mb, mem.pss_mb
        print(json.dumps(out))
        return 0
    base.mkdir(parents=True, exist_ok=True)
    files, _ = prepare(base, args.mock_stars)
    if args.layout == "table":
        files = to_table_layout(files, base / "mock_table")
    print(f"{len(files)} mock LAMOST files (gzipped, {'DR1 image' if args.layout == 'image' else 'DR8+ table'} layout) "
          f"replicated to N; cpu count {os.cpu_count()}; "
          f"device {args.device}; scheduler {args.scheduler or 'processes'}")
    print("| N | workers | stage | seconds | per s | parent MB | largest worker MB (RSS / PSS / private) | DR10 (11.1 M) h |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for n in args.n:
        replicate(base, files, n, args.layout)
        for w in args.workers:
            total_h = 0.0
            for stage in args.stages:
                r = run_stage(base, stage, n, w, args.action_method, args.device, args.scheduler, args.layout)
                rate = r["n"] / r["seconds"]
                total_h += DR10_SPECTRA / rate / 3600.0
                results.append(dict(r, stage=stage, N=n, workers=w, rate=rate, device=args.device, scheduler=args.scheduler))
                print(f"| {n:,} | {w} | {stage} | {r['seconds']:.0f} | {rate:,.0f} | {r['parent_mb']:.0f} | "
                      f"{r['worker_mb']:.0f} / {r['worker_pss_mb']:.0f} / {r['worker_private_mb']:.0f} | "
                      f"{DR10_SPECTRA / rate / 3600.0:.2f} |", flush=True)
            print(f"| {n:,} | {w} | **end to end** | | | | | **{total_h:.2f}** |", flush=True)
            if not args.keep:
                for p in base.glob(f"*_{n}_{w}.*"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    (base / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
