"""The ``cannonade`` command line: every sub-command's arguments and handler live here.

Handlers call the library (imported lazily, so ``cannonade --help`` is fast) and print; the
library itself never prints. A user-facing error (:class:`~cannonade.exceptions.CannonadeError`)
ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from cannonade.exceptions import CannonadeError


# --------------------------------------------------------------------------- handlers
def cmd_demo(args):
    from cannonade import demo

    if args.quick:
        table, summary, converged = demo.quick_demo(seed=args.seed)
        print(summary)
        table.pprint(max_lines=-1, max_width=-1)
        print(f"converged: {converged:.1%} of test stars")
        return 0
    t0 = time.perf_counter()
    # --n-target: stars in the mock (all get LAMOST spectra); --n-reference: how many are GALAH stars
    n_stars = int(args.n_target) if args.n_target else demo.DEFAULT_N_STARS
    frac = min(0.9, float(args.n_reference) / n_stars) if args.n_reference else demo.DEFAULT_REFERENCE_FRACTION
    run, table = demo.run_demo(args.out, n_stars=n_stars, reference_fraction=frac, seed=args.seed)
    for c in ("cv_scatter", "rms_true", "ratio"):
        table[c].format = ".4g"
    print()
    print("Labels of the target stars against the mock's truth (S/N >= 30, inside the training range):")
    table.pprint(max_lines=-1, max_width=-1)
    print()
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"catalogue:  {run.path('catalogue')}  (per_star / per_observation, FITS + Parquet)")
    print(f"CV summary: {run.path('cv', 'cv_summary.csv')}")
    print(f"run log:    {run.path('run.log')}")
    return 0


def cmd_simulate(args):
    from cannonade.simulate import simulate_survey

    t0 = time.perf_counter()
    manifest = simulate_survey(preset=args.preset, n_stars=args.n_stars, seed=args.seed, out=args.out, realism=not args.no_realism)
    c = manifest["counts"]
    print(
        f"cannonade simulate: {c['stars']} stars ({c['reference_stars']} GALAH reference, "
        f"{c['corrupted']} with corrupted labels), {c['lamost_spectra']} LAMOST, {c['galah_spectra']} GALAH, "
        f"{c['apogee_spectra']} APOGEE spectra -> {args.out} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_ingest(args):
    from cannonade.spectra.ingest import ingest

    report = ingest(args.inputs, args.out, grid=args.grid, normalise=args.normalise, redshifts=args.redshift_catalogue,
                    workers=args.workers, chunk_size=args.chunk_size)
    print(report.summary())
    return 0 if report.n_ok > 0 else 1


def cmd_run(args):
    from cannonade.pipeline import run_pipeline

    run = run_pipeline(args.config, from_stage=args.from_stage)
    print(f"catalogue:  {run.path('catalogue')}")
    print(f"CV summary: {run.path('cv', 'cv_summary.csv')}")
    print(f"run log:    {run.path('run.log')}")
    return 0


# --------------------------------------------------------------------------- arguments
def build_parser():
    from cannonade._version import __version__
    from cannonade.pipeline.recipes import WHEELER2020

    parser = argparse.ArgumentParser(
        prog="cannonade",
        description="The Cannon at survey scale: stellar labels from spectra (Wheeler+2020, Nandakumar+2022).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cannonade {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("demo", help="simulate a mock survey, run the whole pipeline, print where results are", formatter_class=fmt)
    p.add_argument("--out", default="cannonade_demo", help="demo directory (mock, config, run)")
    p.add_argument("--n-target", type=int, default=None, help="stars in the mock survey, all observed by LAMOST (default 30000)")
    p.add_argument("--n-reference", type=int, default=None, help="how many of them are GALAH reference stars (default 10%%)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mock and the run")
    p.add_argument("--quick", action="store_true", help="a small, fast demo of the Cannon core only")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("simulate", help="write a mock survey (spectra FITS + catalogues + truth)", formatter_class=fmt)
    p.add_argument("--preset", choices=["lamost-galah", "apogee-galah"], default="lamost-galah", help="which surveys")
    p.add_argument("--n-stars", type=int, default=500, help="stars in the mock")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-realism", action="store_true",
                   help="switch off per-visit calibration/sky residuals and reference-label systematics (docs/simulate.md)")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("ingest", help="read survey spectra into a chunked HDF5 store on a common grid", formatter_class=fmt)
    p.add_argument("inputs", nargs="+", help="FITS files, directories, or @list.txt files")
    p.add_argument("--out", required=True, help="store path (.h5)")
    p.add_argument("--grid", default="lamost", help="common grid: lamost | apogee | galah | WMIN:WMAX:NPIX")
    p.add_argument("--normalise", default="gaussian", choices=["gaussian", "chebyshev", "none"], help="continuum normalisation")
    p.add_argument("--redshift-catalogue", default=None, help="optional catalogue (id, z) for the rest-frame shift")
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument("--chunk-size", type=int, default=1000, help="files per chunk (resume granularity)")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("run", help="run the label-transfer pipeline described by a TOML config", formatter_class=fmt)
    p.add_argument("config", help="path to the run's TOML file")
    p.add_argument("--from", dest="from_stage", default=None, choices=WHEELER2020.stage_names, metavar="STAGE",
                   help=f"force this stage and all after it; stages: {', '.join(WHEELER2020.stage_names)}")
    p.set_defaults(handler=cmd_run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CannonadeError as exc:
        print(f"cannonade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cannonade {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
