"""The GPU backend against the CPU: training, a first inference call, and inference throughput.

At the LAMOST shape of ``bench_core.py`` (its ``wheeler`` size: 1190 training stars, 3909
pixels, 9 labels, a quadratic model of 55 terms; the same simulated data, made and cached by
``bench_core.make_data`` if missing), in one process:

1. **fit** -- ``CannonModel(device=...).fit`` on the training set, CPU then GPU, and their ratio;
2. **first infer** -- a model just loaded from its file (so the θθᵀ products and, on the GPU,
   θ's copy there are part of the call) infers the 1000 held-out spectra in one call, CPU then
   GPU, and their ratio;
3. **throughput** -- ``--n-spectra`` (default 200 000) float32 spectra, as a store holds them,
   generated in chunks of ``--chunk`` from the model (its flux at resampled training labels
   plus noise of S/N 20-100; generation not timed), inferred chunk by chunk on the GPU, and
   ``--cpu-spectra`` (default 20 000) of them on the CPU; spectra per second of each, and the
   projection to LAMOST DR10's 11.1 million spectra in minutes.

Before timing, a small fit and inference on the GPU compile CuPy's kernels (the first run on
a machine compiles them; CuPy caches them on disk): that warm-up is printed separately. The
GPU labels are compared with the CPU's (largest difference in units of each label's scale).

    python benchmarks/bench_gpu.py                       # needs a CUDA GPU and pip install 'cannonade[gpu]'
    python benchmarks/bench_gpu.py --n-spectra 50000 --gpu-star-chunk 4096

Without a usable GPU it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CANNONADE_QUIET", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DR10_SPECTRA = 11.1e6  # LAMOST DR10 low-resolution spectra


def timed(fn):
    """(result, wall seconds) of fn(), the GPU's queued work included (synchronised)."""
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def sync():
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.runtime.deviceSynchronize()


def profiled(fn, title):
    """fn() under cProfile; prints its 25 costliest functions by own time to stderr."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    out = prof.runcall(lambda: (fn(), sync())[0])
    print(f"[bench] profile of {title}:", file=sys.stderr)
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return out


def gpu_name():
    """The current CUDA device's name (CuPy must be importable)."""
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def load_data(n_test):
    import bench_core

    path = bench_core.data_path("wheeler", n_test)
    if not path.exists():
        print(f"[bench] simulating the wheeler data -> {path}", file=sys.stderr)
        bench_core.RESULTS.mkdir(exist_ok=True)
        bench_core.make_data("wheeler", n_test, path)
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def spectra_chunks(model, train_labels, n, chunk, seed=0):
    """``n`` float32 (flux, ivar) spectra of the model in chunks: its flux at resampled training
    labels (jittered by 0.3 of each label's spread) plus Gaussian noise of S/N 20-100."""
    rng = np.random.default_rng(seed)
    sd = train_labels.std(axis=0)
    for s0 in range(0, n, chunk):
        m = min(chunk, n - s0)
        lab = train_labels[rng.integers(0, len(train_labels), m)] + 0.3 * sd * rng.standard_normal((m, len(sd)))
        flux = np.nan_to_num(model.predict(lab), nan=1.0)
        snr = rng.uniform(20.0, 100.0, m)[:, None]
        flux += rng.standard_normal(flux.shape) / snr
        ivar = np.broadcast_to(snr * snr, flux.shape)
        yield flux.astype(np.float32), ivar.astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-test", type=int, default=1000, help="held-out spectra of the first-call test (bench_core's data)")
    ap.add_argument("--n-spectra", type=int, default=200_000, help="spectra of the GPU throughput test")
    ap.add_argument("--cpu-spectra", type=int, default=20_000, help="of them, inferred on the CPU too")
    ap.add_argument("--chunk", type=int, default=20_000, help="spectra generated and inferred per call")
    ap.add_argument("--gpu-star-chunk", type=int, default=None,
                    help="star_chunk of the GPU model (default: the model's own, as on the CPU)")
    ap.add_argument("--profile", action="store_true",
                    help="print the 25 costliest functions (cProfile, own time) of the GPU fit and first infer")
    args = ap.parse_args(argv)

    from cannonade import CannonModel
    from cannonade.execution import gpu_available

    if not gpu_available():
        print("bench_gpu: no usable GPU here (needs CuPy and a CUDA device: pip install 'cannonade[gpu]'); nothing timed")
        return 0
    import cupy

    name = gpu_name()
    data = load_data(args.n_test)
    names = [str(x) for x in data["label_names"]]
    tl, tf, ti = data["train_labels"], data["train_flux"], data["train_ivar"]
    xf, xi = data["test_flux"].astype(np.float32), data["test_ivar"].astype(np.float32)
    N, P = tf.shape
    print(f"[bench] {name}, CuPy {cupy.__version__}; {os.cpu_count()} CPU cores; "
          f"training {N} x {P}, {len(names)} labels", file=sys.stderr)

    def model(device, **kw):
        return CannonModel(names, order=2, show_progress=False, device=device, **kw)

    # warm-up: CuPy compiles (or loads from its disk cache) every kernel on first use
    _, t_warm = timed(lambda: model("gpu").fit(tl[:300], tf[:300, :200], ti[:300, :200]).infer(xf[:50, :200], xi[:50, :200]))
    print(f"[bench] GPU warm-up (kernel compilation, CUDA context): {t_warm:.1f} s", file=sys.stderr)

    if args.profile:
        m = profiled(lambda: model("gpu").fit(tl, tf, ti), "the GPU fit")
        with tempfile.TemporaryDirectory() as tmp:
            m.save(Path(tmp) / "m.npz")
            m = CannonModel.load(Path(tmp) / "m.npz")
        m.device, m.show_progress = "gpu", False
        profiled(lambda: m.infer(xf, xi), "the GPU first infer")

    rows = []
    fitted = {}
    for device in ("cpu", "gpu"):
        m, t = timed(lambda: model(device).fit(tl, tf, ti))
        fitted[device] = m
        rows.append(("fit", device, t))
        print(f"[bench] fit on {device}: {t:.2f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.npz"
        fitted["cpu"].save(path)
        results = {}
        for device in ("cpu", "gpu"):
            m = CannonModel.load(path)
            m.device, m.show_progress = device, False
            if device == "gpu" and args.gpu_star_chunk:
                m.star_chunk = args.gpu_star_chunk
            results[device], t = timed(lambda: m.infer(xf, xi))
            rows.append(("first infer", device, t))
            print(f"[bench] first infer on {device} ({len(xf)} spectra): {t:.2f} s", file=sys.stderr)
        scale = m.scaler_.scale_
        diff = np.nanmax(np.abs(results["gpu"].labels - results["cpu"].labels) / scale)
        dtheta = np.max(np.abs(fitted["gpu"].theta_ - fitted["cpu"].theta_)) / np.abs(fitted["cpu"].theta_).max()

        # throughput: one model per device, loaded from the file, used for every chunk
        per_device = {}
        for device, n in (("gpu", args.n_spectra), ("cpu", min(args.cpu_spectra, args.n_spectra))):
            m = CannonModel.load(path)
            m.device, m.show_progress = device, False
            if device == "gpu" and args.gpu_star_chunk:
                m.star_chunk = args.gpu_star_chunk
            done, spent = 0, 0.0
            t_all = time.perf_counter()
            for flux, ivar in spectra_chunks(fitted["cpu"], tl, n, args.chunk):
                _, t = timed(lambda: m.infer(flux, ivar))
                done, spent = done + len(flux), spent + t
                print(f"[bench] throughput on {device}: {done}/{n} spectra, {done / spent:,.0f} spectra/s "
                      f"(generation included: {time.perf_counter() - t_all:.0f} s)", file=sys.stderr, flush=True)
            per_device[device] = (done, spent)

    print()
    print(f"GPU backend at the LAMOST shape ({N} training stars x {P} pixels, {len(names)} labels, 55 terms); "
          f"{name} vs {os.cpu_count()} CPU cores")
    print()
    print("| step | CPU s | GPU s | CPU / GPU |")
    print("|---|---:|---:|---:|")
    for step in ("fit", "first infer"):
        c = next(t for s, d, t in rows if s == step and d == "cpu")
        g = next(t for s, d, t in rows if s == step and d == "gpu")
        print(f"| {step} ({N if step == 'fit' else len(xf)} stars) | {c:.2f} | {g:.2f} | {c / g:.2f} |")
    print()
    print("| device | spectra | infer s | spectra/s | DR10 (11.1 M spectra), min |")
    print("|---|---:|---:|---:|---:|")
    for device in ("cpu", "gpu"):
        n, s = per_device[device]
        print(f"| {device} | {n:,} | {s:.1f} | {n / s:,.0f} | {DR10_SPECTRA / (n / s) / 60:.1f} |")
    rate = {d: n / s for d, (n, s) in per_device.items()}
    print()
    print(f"throughput GPU / CPU: {rate['gpu'] / rate['cpu']:.2f}; GPU warm-up {t_warm:.1f} s (once per process); "
          f"largest |GPU - CPU| label difference: {diff:.2e} of the label's scale, theta: {dtheta:.2e} of its largest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
