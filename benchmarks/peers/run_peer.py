"""Train and test one public Cannon implementation on a benchmark data file.

Runs INSIDE a peer's own virtual environment (made by ``setup_peers.sh``), so it
imports nothing from ``cannonade``; ``benchmarks/bench_core.py`` starts it as a
separate process, one at a time, so that its peak memory is its own.

    .peers/thecannon/bin/python   benchmarks/peers/run_peer.py --peer thecannon   --data d.npz --out r.json
    .peers/annieslasso/bin/python benchmarks/peers/run_peer.py --peer annieslasso --data d.npz --out r.json

Data file (npz, read with ``allow_pickle=False``)
--------------------------------------------------
train_labels : (N, L) float     train_flux, train_ivar : (N, P) float
test_flux, test_ivar : (M, P) float
label_names : (L,) str

Both peers need finite flux everywhere, so flux where ``ivar == 0`` is set to 1
(the peers' own convention for bad pixels) before anything is timed.

What each peer runs (read from its installed source, see benchmarks/README.md)
------------------------------------------------------------------------------
thecannon 0.7.3 (A. Ho, import ``TheCannon``):
    ``model.CannonModel(order=2, useErrors=False).train(ds)`` -- per pixel, θ by
    weighted least squares on a grid of 19 ln s values, s from a parabola through
    the lowest three ``χ² - log det C⁻¹`` values (maximum likelihood);
    ``infer_labels(ds)`` -- ``scipy.optimize.curve_fit`` per star from the
    package's default start (scaled labels all 1).
annieslasso 0.2.96 (A. Casey, import ``thecannon``):
    ``CannonModel(..., PolynomialVectorizer(names, 2)).train(threads=1)`` -- per
    pixel L-BFGS-B for θ, then s from the median-χ² = 1 rule; ``test(threads=T)``
    -- ``scipy.optimize.leastsq`` per star with analytic derivatives from the
    training-set median labels. Its ``train(threads>1)`` maps one pixel at a time
    onto the pool (no speed-up), so training always runs with ``threads=1``.

Output JSON: timings (s), peak RSS (MB), inferred test labels ``(M, L)`` (NaN for
stars the peer reports as failed), the peer's s² and version information.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("MPLBACKEND", "Agg")  # TheCannon imports pyplot on import

import numpy as np


def peak_rss_mb(who=resource.RUSAGE_SELF):
    """Peak resident set size in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024.0


def cpu_s():
    """CPU seconds of this process (all threads) and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_data(path, n_train=None, n_test=None):
    """Read the benchmark npz (first ``n_train`` / ``n_test`` stars if given); returns a
    dict of arrays, flux made finite where ivar == 0."""
    with np.load(path, allow_pickle=False) as f:
        d = {k: f[k] for k in ("train_labels", "train_flux", "train_ivar",
                               "test_flux", "test_ivar", "label_names")}
    for k in ("train_labels", "train_flux", "train_ivar"):
        d[k] = np.ascontiguousarray(d[k][:n_train])
    for k in ("test_flux", "test_ivar"):
        d[k] = np.ascontiguousarray(d[k][:n_test])
    for part in ("train", "test"):
        flux, ivar = d[f"{part}_flux"], d[f"{part}_ivar"]
        bad = ~(ivar > 0) | ~np.isfinite(flux) | ~np.isfinite(ivar)
        flux[bad] = 1.0
        ivar[bad] = 0.0
    d["label_names"] = [str(s) for s in d["label_names"]]
    return d


THECANNON_MODEL = ("coeffs", "scatters", "pivots", "scales")  # what its inference reads


def run_thecannon(d, threads, model_in=None, model_out=None):
    """Train and test TheCannon 0.7.3; returns (result dict).

    ``model_out``: save the trained model's arrays (npz) there; ``model_in``: load them from
    there instead of training (``train_s`` is then 0), to time its inference again.
    """
    import TheCannon
    from TheCannon import dataset, model

    N, P = d["train_flux"].shape
    M = d["test_flux"].shape[0]
    ds = dataset.Dataset(np.arange(P, dtype=float), np.arange(N), d["train_flux"],
                         d["train_ivar"], d["train_labels"], np.arange(M),
                         d["test_flux"], d["test_ivar"])
    ds.set_label_names(d["label_names"])
    md = model.CannonModel(2, useErrors=False)

    t0, c0 = time.perf_counter(), cpu_s()
    if model_in is None:
        md.train(ds)
    else:
        with np.load(model_in, allow_pickle=False) as f:
            for k in THECANNON_MODEL:
                setattr(md, k, f[k])
    t_train, c_train = time.perf_counter() - t0, cpu_s() - c0
    rss_train = peak_rss_mb()
    if model_out is not None:
        np.savez(model_out, **{k: np.asarray(getattr(md, k)) for k in THECANNON_MODEL})

    t0, c0 = time.perf_counter(), cpu_s()
    errs, chisq = md.infer_labels(ds)
    t_infer, c_infer = time.perf_counter() - t0, cpu_s() - c0

    labels = np.array(ds.test_label_vals, dtype=float)
    failed = np.any(labels < -9000, axis=1) | ~np.all(np.isfinite(labels), axis=1)
    labels[failed] = np.nan
    return dict(version=getattr(TheCannon, "__version__", "0.7.3"),
                train_s=t_train, infer_s=t_infer, train_cpu_s=c_train, infer_cpu_s=c_infer,
                peak_rss_after_train_mb=rss_train, labels=labels, n_failed=int(failed.sum()),
                s2=np.asarray(md.scatters, dtype=float) ** 2,
                notes="train: per-pixel grid ML scatter; infer: curve_fit per star")


def _patch_annieslasso_vectorizer():
    """Fix ``BaseVectorizer.__setstate__`` (0.2.96 unpacks an undefined name).

    Unpickling the vectorizer in a pool worker raises inside the worker and the
    parent's ``pool.map`` waits for ever. Patched on the class at run time, before
    the pool forks; site-packages is not modified.
    """
    from thecannon.vectorizer.base import BaseVectorizer

    def __setstate__(self, state):
        _, kwds = state
        self._label_names = tuple(kwds["label_names"])
        self._terms = kwds["terms"]
        self.metadata = kwds["metadata"]

    BaseVectorizer.__setstate__ = __setstate__


def run_annieslasso(d, threads):
    """Train and test annieslasso 0.2.96; returns (result dict)."""
    import logging

    import thecannon as tc
    from thecannon.vectorizer import PolynomialVectorizer

    logging.getLogger("thecannon").setLevel(logging.WARNING)
    _patch_annieslasso_vectorizer()
    names = d["label_names"]

    t0, c0 = time.perf_counter(), cpu_s()
    vec = PolynomialVectorizer(names, 2)
    md = tc.CannonModel(d["train_labels"], d["train_flux"], d["train_ivar"], vec)
    md.train(threads=1)
    t_train, c_train = time.perf_counter() - t0, cpu_s() - c0
    rss_train = peak_rss_mb()

    t0, c0 = time.perf_counter(), cpu_s()
    labels, cov, meta = md.test(d["test_flux"], d["test_ivar"], threads=threads)
    t_infer, c_infer = time.perf_counter() - t0, cpu_s() - c0

    labels = np.array(labels, dtype=float).reshape(len(d["test_flux"]), len(names))
    failed = ~np.all(np.isfinite(labels), axis=1)
    labels[failed] = np.nan
    return dict(version=tc.__version__, train_s=t_train, infer_s=t_infer,
                train_cpu_s=c_train, infer_cpu_s=c_infer,
                peak_rss_after_train_mb=rss_train, labels=labels,
                n_failed=int(failed.sum()), s2=np.asarray(md.s2, dtype=float),
                notes=f"train: L-BFGS-B per pixel + median-chi2 scatter (threads=1); "
                      f"infer: leastsq per star (threads={threads})")


PEERS = {"thecannon": run_thecannon, "annieslasso": run_annieslasso}


def write_json_atomic(obj, path):
    """Write JSON via a temporary file + rename (no cannonade in the peer venv)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".peer.", suffix=".json.tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, choices=sorted(PEERS))
    ap.add_argument("--data", required=True, help="benchmark npz (see module docstring)")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--n-train", type=int, default=None,
                    help="use only the first N training stars (memory cap)")
    ap.add_argument("--n-test", type=int, default=None, help="use only the first M test stars")
    ap.add_argument("--threads", type=int, default=2,
                    help="worker processes for annieslasso's test step (default 2)")
    ap.add_argument("--save-model", default=None,
                    help="thecannon: save the trained model's arrays (npz) to this path")
    ap.add_argument("--model", default=None,
                    help="thecannon: load the model saved by --save-model instead of training")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    d = load_data(args.data, args.n_train, args.n_test)
    t_load = time.perf_counter() - t0
    rss_data = peak_rss_mb()
    N, P = d["train_flux"].shape
    M, L = d["test_flux"].shape[0], len(d["label_names"])

    # The peers print per-pixel / per-star progress bars on stdout; keep them out of the log.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        if args.peer == "thecannon":
            res = run_thecannon(d, args.threads, model_in=args.model, model_out=args.save_model)
        else:
            res = PEERS[args.peer](d, args.threads)

    labels = res.pop("labels")
    s2 = res.pop("s2")
    out = dict(
        code=args.peer, n_train=N, n_pixels=P, n_labels=L, n_test=M,
        label_names=d["label_names"], load_s=t_load,
        infer_ms_per_star=1e3 * res["infer_s"] / M,
        infer_cpu_ms_per_star=1e3 * res["infer_cpu_s"] / M,
        peak_rss_mb=peak_rss_mb(),
        peak_rss_children_mb=peak_rss_mb(resource.RUSAGE_CHILDREN),
        peak_rss_data_loaded_mb=rss_data,
        labels=[[None if not np.isfinite(v) else float(v) for v in row] for row in labels],
        s_median=float(np.sqrt(np.nanmedian(s2))),
        frac_s_zero=float(np.mean(~(s2 > 1e-12))),
        python=platform.python_version(), numpy=np.__version__, **res)
    write_json_atomic(out, args.out)
    print(f"[run_peer] {args.peer}: train {out['train_s']:.1f} s, infer "
          f"{out['infer_ms_per_star']:.2f} ms/star, peak {out['peak_rss_mb']:.0f} MB, "
          f"failed {out['n_failed']}/{M}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
