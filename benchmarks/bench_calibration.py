"""What the calibration and the flags cost at inference (issue "Trust in every number").

Trains a quadratic Cannon on simulated spectra (the non-polynomial mock of
``tests/cannon/test_calibration.py``: four labels on a Kiel-like locus, exp/tanh line depths,
heteroscedastic noise), cross-validates and calibrates it, then times ``infer()`` on the same
100 000 test spectra with the model calibrated and uncalibrated (``--repeat`` calls each,
interleaved, after one warm-up call each), and prints the ratios.

Both runs compute the S/N (``quality.median_snr``, inside every block of the χ² reduction) and the
uncalibrated flags; the calibrated one adds the calibrated errors, the KDE bounds, the
training-distance query (cKDTree, 10 neighbours) and the χ² curve. The S/N itself is new with
the calibration, so a third variant runs the inference with it replaced by a constant (the
inference as before the calibration), and the ratio to that is printed too.

    python benchmarks/bench_calibration.py                       # 100 000 stars x 1000 pixels
    python benchmarks/bench_calibration.py --n-stars 20000 --n-pixels 3909

1000 pixels by default keeps the two (100 000, P) float64 arrays at 1.6 GB. The calibration
warns that FAR_FROM_TRAINING flags many of its own CV stars: 2000 training stars are sparse in
units of this mock's CV scatter (it does not change the timing).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("CANNONADE_QUIET", "1")

import numpy as np  # noqa: E402

from cannonade import CannonModel, cross_validate  # noqa: E402
from cannonade.cannon import inference  # noqa: E402
from cannonade.cannon.quality import spectrum_snr  # noqa: E402

NAMES = ["teff", "logg", "fe_h", "alpha_fe"]
CENTRE = np.array([5200.0, 3.4, -0.2, 0.1])
UNIT = np.array([500.0, 0.8, 0.3, 0.1])


def simulate(n, P, rng, pix):
    """Labels (n, 4) and spectra (n, P) of the test mock (S/N 20-150, 0.5 % bad pixels)."""
    teff = rng.uniform(4300.0, 6200.0, n)
    feh = rng.uniform(-0.9, 0.5, n)
    logg = 2.0 + 2.4 * np.sqrt((teff - 4200.0) / 2100.0) + rng.normal(0, 0.08, n)
    lab = np.column_stack([teff, logg, feh, 0.1 - 0.25 * (feh + 0.2) + rng.normal(0, 0.03, n)])
    z = (lab - CENTRE) / UNIT + 0.1 * rng.normal(size=lab.shape)
    flux = np.empty((n, P))
    for s in range(0, n, 5000):  # in blocks, to bound the temporaries
        zz = z[s : s + 5000]
        depth = pix["d0"] * np.exp(zz @ pix["a"].T + pix["c"] * (zz[:, :1] * zz[:, 2:3]))
        flux[s : s + 5000] = 1.0 - 0.6 * np.tanh(depth / 0.6)
    snr = np.exp(rng.uniform(np.log(20.0), np.log(150.0), n))
    sigma = flux * pix["shape"] / snr[:, None]
    flux += sigma * rng.normal(size=flux.shape)
    ivar = 1.0 / sigma**2
    bad = rng.random(flux.shape) < 0.005
    ivar[bad], flux[bad] = 0.0, np.nan
    return lab, flux, ivar


def timed_interleaved(fns, repeat):
    """Wall times of each of ``fns``, interleaved (a, b, c, a, b, c, ...) after one warm-up each,
    so that a slow spell of a shared machine hits them alike. Returns a list of arrays."""
    for fn in fns:  # warm-up: θθᵀ products, first touch of the work arrays, the KD-tree
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [np.array(t) for t in times]


def without_snr(fn):
    """``fn`` run with the S/N of the χ² reduction replaced by a constant: the inference as it
    was before the calibration (the baseline of the cost)."""

    def run():
        real = inference.median_snr
        inference.median_snr = lambda flux, ivar, invalid, n_invalid=None: np.full(flux.shape[0], 50.0)
        try:
            return fn()
        finally:
            inference.median_snr = real

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=100_000)
    ap.add_argument("--n-pixels", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    P = args.n_pixels
    a = np.column_stack([rng.normal(0, 0.17, P), rng.normal(0, 0.12, P), rng.normal(0.17, 0.08, P),
                         np.where(rng.random(P) < 0.3, rng.normal(0.2, 0.05, P), 0.0)])
    pix = dict(d0=rng.uniform(0.05, 0.45, P), a=a, c=rng.normal(0, 0.08, P), shape=rng.uniform(0.75, 1.25, P))

    lab, flux, ivar = simulate(args.n_train, P, rng, pix)
    t0 = time.perf_counter()
    model = CannonModel(NAMES, order=2, show_progress=False).fit(lab, flux, ivar)
    cv = cross_validate(model, lab, flux, ivar, k=12, seed=0)
    t_cv = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibrated = CannonModel(NAMES, order=2, show_progress=False).fit(lab, flux, ivar).calibrate(cv)
    t_calibrate = time.perf_counter() - t0

    _, flux, ivar = simulate(args.n_stars, P, rng, pix)
    t_base, t_raw, t_cal = timed_interleaved(
        [without_snr(lambda: model.infer(flux, ivar)), lambda: model.infer(flux, ivar),
         lambda: calibrated.infer(flux, ivar)], args.repeat)
    rows = max(1, (1 << 17) // P)  # the χ² reduction's blocks, in which the S/N is computed
    t_snr = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for s in range(0, len(flux), rows):
            spectrum_snr(flux[s : s + rows], ivar[s : s + rows])
        t_snr.append(time.perf_counter() - t0)
    t_snr = np.array(t_snr)

    r = calibrated.infer(flux[:20000], ivar[:20000])
    print(f"cannonade calibration benchmark: {args.n_stars} stars x {P} pixels, {len(NAMES)} labels, "
          f"{model.n_terms} terms, trained on {args.n_train} ({os.cpu_count()} cores)")
    print(f"  fit + 12-fold CV {t_cv:.1f} s; calibrate (from the CV) {t_calibrate:.2f} s (incl. its own fit)")
    for name, t in (("infer, before (no S/N)", t_base), ("infer, uncalibrated", t_raw), ("infer, calibrated", t_cal),
                    ("S/N alone, out of cache", t_snr)):
        per_star = 1e3 * np.median(t) / args.n_stars
        print(f"  {name:24s}: median {np.median(t):6.2f} s, min {t.min():6.2f} s ({per_star:.4f} ms/star)"
              f"  runs {np.round(t, 2).tolist()}")
    for name, t in (("calibrated / uncalibrated", t_cal / t_raw), ("calibrated / before", t_cal / t_base),
                    ("uncalibrated / before", t_raw / t_base)):
        print(f"  ratio {name:26s}: median of the interleaved runs {np.median(t):.3f}, range {t.min():.3f}-{t.max():.3f}")
    print(f"  flags == 0: {np.mean(r.flags == 0):.3f} of {len(r.flags)}; far_from_training {np.mean(r.far_from_training):.3f}, "
          f"extrapolated {np.mean(r.extrapolated.any(axis=1)):.3f}, high chi2 {np.mean(r.high_chi2):.3f}")


if __name__ == "__main__":
    main()
