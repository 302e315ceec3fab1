"""Benchmark the mock spectra: in-memory synthesis and the on-disk survey, spectra per second.

Synthesis (``cannonade.simulate.synthesize``: line formation, rendering, noise) on a fixed
mock population per instrument, after one warm-up call that fills the caches (line list,
curve of growth); then, optionally, ``simulate_survey`` end to end (population, spectra, FITS
files, catalogues). Target: ~200+ LAMOST stars/s including files on one core
(``docs/simulate.md``). Timings are wall clock on a possibly shared machine: upper bounds.

    python benchmarks/bench_synthesis.py --n 300 --instruments lamost galah apogee --survey 500
    python benchmarks/bench_synthesis.py --survey 500 --no-realism     # the survey without the Realism effects
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def bench_synthesis(n, instrument, repeats=3):
    """Best-of-``repeats`` spectra per second of ``synthesize`` for ``n`` mock stars."""
    from cannonade.simulate import simulate_population, synthesize

    stars = simulate_population(n, seed=2)
    synthesize(stars[:10], instrument, snr=50, seed=0)  # warm caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        synthesize(stars, instrument, snr=50, rv=stars["rv"], seed=0)
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_survey(n_stars, realism=True):
    """Stars per second of ``simulate_survey('lamost-galah')`` (files included) and the spectra written.

    ``realism``: per-visit calibration and sky residuals, GALAH systematics (the default) or not.
    """
    from cannonade.simulate import simulate_survey

    with tempfile.TemporaryDirectory(prefix="bench_synthesis_") as tmp:
        t0 = time.perf_counter()
        c0 = os.times()
        manifest = simulate_survey("lamost-galah", n_stars=n_stars, seed=0, out=tmp, show_progress=False, realism=realism)
        dt = time.perf_counter() - t0
        c1 = os.times()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return n_stars / dt, n_stars / max(cpu, 1e-9), manifest["counts"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="stars per synthesis run")
    p.add_argument("--instruments", nargs="+", default=["lamost", "galah", "apogee"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--survey", type=int, default=500, help="stars of the end-to-end survey run (0: skip)")
    p.add_argument("--no-realism", action="store_true", help="survey run without the Realism effects")
    args = p.parse_args(argv)
    print(f"cpu count {os.cpu_count()} (wall-clock timings on a shared machine are upper bounds)")
    for inst in args.instruments:
        rate = bench_synthesis(args.n, inst, args.repeats)
        print(f"synthesize {inst:<7s} n={args.n}: {rate:8.0f} spectra/s (best of {args.repeats})")
    if args.survey:
        wall, cpu, counts = bench_survey(args.survey, realism=not args.no_realism)
        tag = " (no realism)" if args.no_realism else ""
        print(f"simulate_survey lamost-galah n={args.survey}{tag}: {wall:6.0f} stars/s wall, {cpu:6.0f} stars/s of CPU time "
              f"({counts['lamost_spectra']} LAMOST + {counts['galah_spectra']} GALAH files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
