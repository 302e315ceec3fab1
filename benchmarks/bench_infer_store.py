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
  files and the Parquet table. By default in this process, one chunk after another, with
  BLAS on one thread (``execution.backends``: the same results whichever backend runs the
  chunks); ``--workers 2`` adds a run with two worker processes (``cannonade infer --workers 2``).

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
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="cannonade infer --workers values to time (default 1: the default, this process)")
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

    def from_store(workers):
        def run():
            k[0] += 1
            out = work / f"labels_{k[0]}.parquet"
            infer_store([model_path], store_path, out, chunk_size=args.chunk_size,
                        workers=None if workers == 1 else workers)
            return out
        return run

    fns = {"in memory": in_memory}
    fns.update({"from the store" + ("" if w == 1 else f", {w} workers"): from_store(w) for w in args.workers})
    runs = {name: [] for name in fns}
    r_mem = in_memory()  # warm-up: θθᵀ products, first touch, the KD-tree of the calibration
    for name, fn in fns.items():
        if name != "in memory":
            out = fn()
    for _ in range(args.repeat):
        for name, fn in fns.items():
            runs[name].append(timed(fn)[:2])

    from astropy.table import Table

    t = Table.read(out)
    # not bit for bit: the store's chunks (--chunk-size) cut the stars into other inference batches,
    # and cannonade infer runs BLAS on one thread (execution.backends), so the minimiser stops a
    # rounding error elsewhere; the difference in units of the formal errors says how far
    diff = np.abs(np.column_stack([np.asarray(t[c]) for c in names]) - r_mem.labels) / r_mem.raw_errors
    flags_same = np.mean(np.asarray(t["flags"]) == r_mem.flags)
    print(f"infer from a store vs in memory: {args.size} shape, {n} spectra x {P} pixels, {len(names)} labels, "
          f"calibrated model (k={args.k}); chunk size {args.chunk_size}; {os.cpu_count()} cores")
    med = {}
    for name, rr in runs.items():
        cpu, wall = np.array(rr).T
        med[name] = (np.median(cpu), np.median(wall))
        print(f"  {name:26s}: CPU {np.median(cpu):6.2f} s ({1e3 * np.median(cpu) / n:.3f} ms/spectrum), "
              f"wall {np.median(wall):6.2f} s ({1e3 * np.median(wall) / n:.3f} ms/spectrum); "
              f"runs CPU {np.round(cpu, 2).tolist()} wall {np.round(wall, 2).tolist()}")
    for name in runs:
        if name == "in memory":
            continue
        cpu_ratio = med["in memory"][0] / med[name][0]  # CPU of worker processes is not counted: wall only
        wall_ratio = med["in memory"][1] / med[name][1]
        cpu_text = f"CPU {cpu_ratio:.2f}, " if name == "from the store" else ""
        print(f"  throughput {name} / in memory: {cpu_text}wall {wall_ratio:.2f} (target >= 0.7)")
    print(f"  labels store vs in memory: max |difference| {np.nanmax(diff):.2g} formal sigma (median "
          f"{np.nanmedian(diff):.2g}); same flags for {flags_same:.1%} of the spectra; flags == 0: "
          f"{np.mean(r_mem.flags == 0):.3f}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
