"""``cannonade infer`` from a store against the in-memory core (issue 15).

At the LAMOST shape of ``bench_core.py`` (its ``wheeler`` size: 1190 training stars, 3909
pixels, 9 labels, the same simulated truth and training set), trains a quadratic model,
cross-validates and calibrates it (so the flags and calibrated errors are computed), saves it,
and writes ``--n-test`` held-out spectra into an HDF5 spectra store (the default Blosc-LZ4
compression, float32 as every store holds them). Then times, interleaved ``--repeat`` times
after one warm-up each:

* **in memory** -- ``CannonModel.infer(flux, ivar)`` on the same spectra, already in memory
  (the store's float32 values; one call over all of them);
* **from the store** -- :func:`cannonade.tasks.infer.infer_store`, what ``cannonade infer
  MODEL STORE --out labels.parquet`` runs after its imports: load the model file, read the
  store chunk by chunk (``--chunk-size``), infer with calibration and flags, write the part
  files and the Parquet table.

Prints CPU and wall seconds of each, the throughput ratio in-memory time / store time (1 =
the store costs nothing; the issue's target is ≥ 0.7), and checks that both give the same
labels. CPU time (``time.process_time``, all threads of this process) is the steadier measure
on a shared machine.

    python benchmarks/bench_infer_store.py                      # 8000 spectra, 3 repeats
    python benchmarks/bench_infer_store.py --n-test 4000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CANNONADE_QUIET", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_core  # noqa: E402

from cannonade import CannonModel, cross_validate  # noqa: E402
from cannonade.spectra.store import SpectraStore, write_store  # noqa: E402
from cannonade.tasks.infer import infer_store  # noqa: E402


def simulate(size, n_test):
    """bench_core's training set of ``size`` (same seed, same truth) and ``n_test`` new test stars."""
    spec = bench_core.SIZES[size]
    names = list(spec["labels"])
    rng = np.random.default_rng(spec["seed"])
    d0, a, c, s = bench_core.simulate_pixels(rng, spec)
    out = {}
    for part, n in (("train", spec["n_train"]), ("test", n_test)):
        labels, z = bench_core.simulate_labels(rng, spec, n)
        flux = np.empty((n, spec["n_pixels"]))
        ivar = np.empty_like(flux)
        for i in range(0, n, 256):
            f = bench_core.true_flux(z[i:i + 256], names, d0, a, c)
            flux[i:i + 256], ivar[i:i + 256] = bench_core.observe(rng, f, s)
        out[part] = (labels, flux, ivar)
    return names, out


def timed(fn):
    """(CPU s, wall s, result) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    r = fn()
    return time.process_time() - c0, time.perf_counter() - t0, r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="wheeler", choices=list(bench_core.SIZES))
    ap.add_argument("--n-test", type=int, default=8000)
    ap.add_argument("--chunk-size", type=int, default=2000, help="cannonade infer --chunk-size (default 2000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--k", type=int, default=5, help="cross-validation folds of the calibration")
    ap.add_argument("--workdir", default=None, help="keep the model and store here (default: a temporary folder)")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_infer_store."))
    work.mkdir(parents=True, exist_ok=True)
    names, data = simulate(args.size, args.n_test)
    P = data["train"][1].shape[1]
    wavelength = 4000.0 + np.arange(P, dtype=float)
    model_path, store_path = work / "model.npz", work / "store.h5"
    if not model_path.exists():
        lab, flux, ivar = data["train"]
        model = CannonModel(names, order=2, show_progress=False).fit(lab, flux, ivar, wavelength=wavelength)
        cv = cross_validate(model, lab, flux, ivar, k=args.k, seed=0)
        model.calibrate(cv)
        model.save(model_path)
    if not store_path.exists():
        _, flux, ivar = data["test"]
        ids = [f"star{i:07d}" for i in range(len(flux))]
        write_store(store_path, wavelength, flux, ivar, meta_table={"obj_id": ids, "source_file": ids})
    del data

    model = CannonModel.load(model_path)
    model.show_progress = False
    with SpectraStore(store_path) as st:
        n = st.n_spectra
        flux32 = st._h5["flux"][:]  # the store's float32 values, in memory
        ivar32 = st._h5["ivar"][:]

    def in_memory():
        return model.infer(flux32, ivar32)

    k = [0]

    def from_store():
        k[0] += 1
        out = work / f"labels_{k[0]}.parquet"
        infer_store([model_path], store_path, out, chunk_size=args.chunk_size)
        return out

    runs = {"in memory": [], "from the store": []}
    r_mem = in_memory()  # warm-up: θθᵀ products, first touch, the KD-tree of the calibration
    out = from_store()
    for _ in range(args.repeat):
        for name, fn in (("in memory", in_memory), ("from the store", from_store)):
            runs[name].append(timed(fn)[:2])

    from astropy.table import Table

    t = Table.read(out)
    same = np.array_equal(np.column_stack([np.asarray(t[c]) for c in names]), r_mem.labels, equal_nan=True)
    flags_same = np.array_equal(np.asarray(t["flags"]), r_mem.flags)
    print(f"infer from a store vs in memory: {args.size} shape, {n} spectra x {P} pixels, {len(names)} labels, "
          f"calibrated model (k={args.k}); chunk size {args.chunk_size}; {os.cpu_count()} cores")
    med = {}
    for name, rr in runs.items():
        cpu, wall = np.array(rr).T
        med[name] = (np.median(cpu), np.median(wall))
        print(f"  {name:15s}: CPU {np.median(cpu):6.2f} s ({1e3 * np.median(cpu) / n:.3f} ms/spectrum), "
              f"wall {np.median(wall):6.2f} s ({1e3 * np.median(wall) / n:.3f} ms/spectrum); "
              f"runs CPU {np.round(cpu, 2).tolist()} wall {np.round(wall, 2).tolist()}")
    cpu_ratio = med["in memory"][0] / med["from the store"][0]
    wall_ratio = med["in memory"][1] / med["from the store"][1]
    print(f"  throughput from the store / in memory: CPU {cpu_ratio:.2f}, wall {wall_ratio:.2f} (target >= 0.7)")
    print(f"  same labels: {same}; same flags: {flags_same}; flags == 0: {np.mean(r_mem.flags == 0):.3f}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
