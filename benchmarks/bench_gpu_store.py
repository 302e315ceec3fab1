"""``cannonade infer`` on a GPU machine: a store of N spectra to the labels table, CPU vs GPU,
one process vs a dask cluster (issue 15: "on a GPU machine, DR10's inference < 5 min").

What ``cannonade infer MODEL STORE --out labels.parquet [--device gpu] [--scheduler local
--workers W]`` runs after its imports (:func:`cannonade.tasks.infer.infer_store`: the model file
loaded, the store read chunk by chunk, labels with calibrated errors and flags, the part files
and the Parquet table written), at the LAMOST shape of ``bench_core.py`` (its ``wheeler`` size:
1190 training stars, 3909 pixels, 9 labels, 55 terms, the same simulated truth):

1. the model is trained, cross-validated (``--k`` folds) and calibrated, so every spectrum gets
   calibrated errors and flags, and saved;
2. ``--n-spectra`` spectra of the model (its flux at resampled training labels plus noise of
   S/N 20-100) are written chunk by chunk into a store (float32; ``--compression``, default
   ``none``: the GPU machine of this workplace lacks the ``hdf5plugin`` of the default
   Blosc-LZ4; not timed);
3. where one chunk's time goes: the χ² reduction (``inference.reduce_chi2``) and the per-star
   solve on the reduced problem (``inference.solve_reduced``), on each device;
4. each configuration of ``--configs`` (``DEVICE:SCHEDULER:WORKERS``, e.g. ``gpu::1`` is one
   process on the GPU, ``gpu:local:8`` an 8-worker dask ``LocalCluster`` whose workers share the
   GPU, ``cpu:local:16`` 16 CPU workers) runs ``infer_store`` over the whole store, timed wall
   clock from the call to the written table (a ``LocalCluster``'s start included);

and prints spectra/s over the whole call and in the steady state (the chunks finished after the
first one over the time since it: a dask cluster's start, the imports and the model's loading
left out), the projection to LAMOST DR10's 11.1 million spectra in minutes (this call plus the
rest at the steady rate), and the largest difference of each configuration's labels from the
first one's, in units of each label's scale.

    python benchmarks/bench_gpu_store.py --n-spectra 200000 --configs cpu:local:16 gpu::1 gpu:local:4 gpu:local:8
    python benchmarks/bench_gpu_store.py --n-spectra 4000 --configs cpu::1 cpu:local:2     # no GPU: CPU rows only

Configurations on ``gpu`` are skipped (one line) where no GPU is usable.
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

import bench_gpu  # noqa: E402
import bench_infer_store  # noqa: E402

DR10_SPECTRA = 11.1e6


def parse_config(text):
    """``DEVICE:SCHEDULER:WORKERS`` -> (device, scheduler, workers)."""
    device, scheduler, workers = text.split(":")
    return device, scheduler, int(workers)


def write_generated_store(path, model, train_labels, wavelength, n, chunk, compression):
    """A store of ``n`` generated spectra (bench_gpu.spectra_chunks), written chunk by chunk."""
    import h5py

    from cannonade.spectra.store import create_arrays, meta_columns, set_store_attrs, write_meta

    ids = [f"star{i:08d}" for i in range(n)]
    with h5py.File(path, "w") as h5:
        h5.create_dataset("wavelength", data=np.asarray(wavelength, dtype=np.float64))
        create_arrays(h5, n, len(wavelength), compression=compression)
        s0 = 0
        for flux, ivar in bench_gpu.spectra_chunks(model, train_labels, n, chunk):
            h5["flux"][s0 : s0 + len(flux)] = flux
            h5["ivar"][s0 : s0 + len(flux)] = ivar
            s0 += len(flux)
        write_meta(h5.create_group("meta"), meta_columns({"obj_id": ids, "source_file": ids}, n), n)
        set_store_attrs(h5, {"grid": "custom", "normalise": "unknown"})


def split_times(model, flux, ivar, device):
    """Wall seconds of one chunk's χ² reduction and of its solve on ``device`` (after a warm-up)."""
    from cannonade.cannon import inference
    from cannonade.execution import device as devices

    theta, s2 = model.theta_, model.s2_
    on = [devices.to_device(a, device) for a in (theta, s2)]
    pairs = inference.theta_products(on[0])

    def reduce():
        args = on + [devices.to_device(flux, device), devices.to_device(ivar, device), pairs]
        return inference.to_host(inference.reduce_chi2(*args))

    problem, _ = bench_gpu.timed(reduce)  # warm-up
    problem, t_reduce = bench_gpu.timed(reduce)
    _, t_solve = bench_gpu.timed(lambda: inference.solve_reduced(problem, model.exponents))
    return t_reduce, t_solve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-spectra", type=int, default=200_000)
    ap.add_argument("--chunk-size", type=int, default=5000, help="cannonade infer --chunk-size")
    ap.add_argument("--configs", nargs="+", default=["cpu:local:%d" % (os.cpu_count() or 1), "gpu::1", "gpu:local:4"],
                    help="DEVICE:SCHEDULER:WORKERS (scheduler '' = no dask)")
    ap.add_argument("--k", type=int, default=5, help="cross-validation folds of the calibration")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    from astropy.table import Table

    from cannonade import CannonModel, cross_validate
    from cannonade.execution import gpu_available
    from cannonade.tasks.infer import infer_store

    has_gpu = gpu_available()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_gpu_store."))
    work.mkdir(parents=True, exist_ok=True)
    names, data = bench_infer_store.simulate("wheeler", 0)
    lab, flux, ivar = data["train"]
    P = flux.shape[1]
    wavelength = 4000.0 + np.arange(P, dtype=float)
    model_path, store_path = work / "model.npz", work / "store.h5"
    t0 = time.perf_counter()
    model = CannonModel(names, order=2, show_progress=False).fit(lab, flux, ivar, wavelength=wavelength)
    model.calibrate(cross_validate(model, lab, flux, ivar, k=args.k, seed=0))
    model.save(model_path)
    print(f"[bench] model trained, cross-validated (k={args.k}), calibrated: {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    write_generated_store(store_path, model, lab, wavelength, args.n_spectra, args.chunk_size, args.compression)
    print(f"[bench] store of {args.n_spectra} spectra written: {time.perf_counter() - t0:.1f} s "
          f"({store_path.stat().st_size / 1e9:.2f} GB)", file=sys.stderr, flush=True)

    # where one chunk's time goes
    flux32, ivar32 = next(bench_gpu.spectra_chunks(model, lab, args.chunk_size, args.chunk_size, seed=1))
    split = {}
    for device in ("cpu", "gpu") if has_gpu else ("cpu",):
        split[device] = split_times(model, flux32, ivar32, device)
        print(f"[bench] one chunk of {len(flux32)} on {device}: reduction {split[device][0]:.3f} s, "
              f"solve {split[device][1]:.3f} s", file=sys.stderr, flush=True)

    rows, first = [], None
    for text in args.configs:
        device, scheduler, workers = parse_config(text)
        if device == "gpu" and not has_gpu:
            print(f"[bench] {text}: skipped, no usable GPU here", file=sys.stderr)
            continue
        out = work / f"labels_{device}_{scheduler or 'none'}_{workers}.parquet"
        done_at = []  # when each chunk finished: the steady rate leaves out the start (cluster, imports, model)
        t0 = time.perf_counter()
        infer_store([model_path], store_path, out, chunk_size=args.chunk_size, workers=workers,
                    scheduler=scheduler, device=device, on_done=lambda k, r: done_at.append(time.perf_counter()))
        wall = time.perf_counter() - t0
        # chunks finished after the first, over the time between the first and the last
        steady = (len(done_at) - 1) * args.chunk_size / (done_at[-1] - done_at[0]) if len(done_at) > 2 else np.nan
        t = Table.read(out)
        labels = np.column_stack([np.asarray(t[c], dtype=float) for c in names])
        if first is None:
            first, diff = labels, 0.0
        else:
            diff = float(np.nanmax(np.abs(labels - first) / model.scaler_.scale_))
        rows.append((text, wall, args.n_spectra / wall, steady, diff))
        print(f"[bench] {text}: {wall:.1f} s, {args.n_spectra / wall:,.0f} spectra/s, steady {steady:,.0f} spectra/s",
              file=sys.stderr, flush=True)
        shutil.rmtree(out.parent / f".{out.name}.parts", ignore_errors=True)
        out.unlink()

    print()
    print(f"cannonade infer (store -> labels with calibrated errors and flags) at the LAMOST shape: "
          f"{args.n_spectra:,} spectra x {P} pixels, {len(names)} labels, 55 terms; chunk size {args.chunk_size}; "
          f"{os.cpu_count()} CPU cores" + (f"; {bench_gpu.gpu_name()}" if has_gpu else "; no GPU"))
    print()
    print("| one chunk | reduction s | solve s |")
    print("|---|---:|---:|")
    for device, (r, s) in split.items():
        print(f"| {device} ({args.chunk_size} spectra) | {r:.3f} | {s:.3f} |")
    print()
    print("| device:scheduler:workers | wall s | spectra/s (whole call) | steady spectra/s | DR10 (11.1 M), min | "
          "max label difference vs first row (label scale) |")
    print("|---|---:|---:|---:|---:|---:|")
    for text, wall, rate, steady, diff in rows:
        # one start-up (this run's) plus the rest of DR10 at the steady rate
        dr10 = (wall + (DR10_SPECTRA - args.n_spectra) / steady) / 60
        print(f"| {text} | {wall:.1f} | {rate:,.0f} | {steady:,.0f} | {dr10:.1f} | {diff:.1e} |")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
