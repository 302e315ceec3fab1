"""The ``cannonade`` command line: every sub-command's arguments and handler live here.

Handlers call the library (imported lazily, so ``cannonade --help`` is fast) and print; the
library itself never prints. A user-facing error (:class:`~cannonade.exceptions.CannonadeError`)
ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from cannonade.exceptions import CannonadeError


# --------------------------------------------------------------------------- handlers
def cmd_demo(args):
    from cannonade import demo

    _check_demo_counts(args)
    if args.recipe == "nandakumar2022":
        t0 = time.perf_counter()
        out = args.out if args.out != "cannonade_demo" else "cannonade_demo_nandakumar"
        n_stars = args.n_target if args.n_target is not None else demo.SCALING_N_STARS
        run, systematics, clusters = demo.run_scaling_demo(out, n_stars=n_stars,
                                                           seed=args.seed, keep_mock=args.keep_mock)
        for c in systematics.colnames[1:]:
            systematics[c].format = ".3f"
        print()
        print("APOGEE - GALAH for the common stars: before scaling (Table 1) and on each survey's scale (Table 3):")
        systematics.pprint(max_lines=-1, max_width=-1)
        if len(clusters):
            print()
            print("Clusters (tables/clusters.csv):")
            clusters["median"].format = clusters["sigma"].format = ".3f"
            clusters.pprint(max_lines=-1, max_width=-1)
        print()
        print(f"demo finished in {time.perf_counter() - t0:.0f} s")
        print(f"catalogues: {run.path('catalogue')}  (combined_*_scale, FITS + Parquet)")
        print(f"tables:     {run.path('tables')}  (systematics.csv, clusters.csv, residuals_*.csv)")
        print(f"run log:    {run.path('run.log')}")
        print(f"report:     {_demo_report(run)}")
        return 0
    if args.quick:
        table, summary, converged = demo.quick_demo(seed=args.seed)
        print(summary)
        table.pprint(max_lines=-1, max_width=-1)
        print(f"converged: {converged:.1%} of test stars")
        return 0
    t0 = time.perf_counter()
    # --n-target: stars in the mock (all get LAMOST spectra); --n-reference: how many are GALAH stars
    n_stars = int(args.n_target) if args.n_target is not None else demo.DEFAULT_N_STARS
    frac = min(0.9, float(args.n_reference) / n_stars) if args.n_reference is not None else demo.DEFAULT_REFERENCE_FRACTION
    run, table = demo.run_demo(args.out, n_stars=n_stars, reference_fraction=frac, seed=args.seed, keep_mock=args.keep_mock)
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
    print(f"report:     {_demo_report(run)}")
    return 0


def _check_demo_counts(args):
    """--n-target >= 1 and 1 <= --n-reference <= --n-target (0 is not "the default")."""
    from cannonade.demo import DEFAULT_N_STARS
    from cannonade.exceptions import ParameterError

    if args.n_target is not None and args.n_target < 1:
        raise ParameterError(f"--n-target must be >= 1 (stars in the mock), got {args.n_target}")
    if args.n_reference is not None:
        if args.recipe == "nandakumar2022":
            raise ParameterError("--n-reference is for the wheeler2020 demo; the nandakumar2022 mock sets its own survey overlap")
        n_target = args.n_target if args.n_target is not None else DEFAULT_N_STARS
        if not 1 <= args.n_reference <= n_target:
            raise ParameterError(f"--n-reference must be between 1 and --n-target ({n_target}) GALAH reference stars, "
                                 f"got {args.n_reference}")


def _demo_report(run):
    """The demo's last step: the run's HTML report (``cannonade report``); returns index.html's path."""
    from cannonade.report import write_report

    print("writing the report ...", flush=True)
    return write_report(run.path())


def cmd_simulate(args):
    from cannonade.simulate import simulate_survey

    t0 = time.perf_counter()
    extra = {} if args.reference_fraction is None else {"reference_fraction": args.reference_fraction}
    manifest = simulate_survey(preset=args.preset, n_stars=args.n_stars, seed=args.seed, out=args.out, realism=not args.no_realism,
                               **extra)
    c = manifest["counts"]
    print(
        f"cannonade simulate: {c['stars']} stars ({c['reference_stars']} GALAH reference, "
        f"{c['corrupted']} with corrupted labels), {c['lamost_spectra']} LAMOST, {c['galah_spectra']} GALAH, "
        f"{c['apogee_spectra']} APOGEE spectra -> {args.out} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_ingest(args):
    from cannonade.spectra.ingest import ingest

    with _execution_messages(args.scheduler):
        report = ingest(args.inputs, args.out, grid=args.grid, normalise=args.normalise, redshifts=args.redshift_catalogue,
                        workers=args.workers, chunk_size=args.chunk_size, join=args.join, scheduler=args.scheduler or "")
    print(report.summary())
    if report.n_ok == 0:
        from cannonade.exceptions import SpectrumFormatError

        first = f" (first: {report.failures[0][0]}: {report.failures[0][1]})" if report.failures else ""
        raise SpectrumFormatError(f"no spectrum could be read: all {report.n_failed} input(s) failed{first}; "
                                  f"the error report lists them: {report.error_report}")
    return 0


def _run_config(args):
    """The config file, or its validated configuration with ``--scheduler`` / ``--workers`` / ``--device`` applied."""
    if args.scheduler is None and args.workers is None and args.device is None:
        return args.config
    import dataclasses

    from cannonade.config import load_config
    from cannonade.execution.backends import validate_workers

    cfg = load_config(args.config)
    changes = {}
    if args.scheduler is not None:
        changes["scheduler"] = args.scheduler.strip()
    if args.workers is not None:
        changes["workers"] = validate_workers(args.workers)
    if args.device is not None:
        changes["device"] = args.device  # one of argparse's choices: the config's own values
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **changes))


@contextlib.contextmanager
def _execution_messages(scheduler):
    """With a dask scheduler, the execution backend's messages (the dashboard's link) on stderr."""
    if not scheduler:
        yield
        return
    logger = logging.getLogger("cannonade.execution")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("cannonade: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def cmd_run(args):
    from cannonade.pipeline import run_pipeline

    run = run_pipeline(_run_config(args), from_stage=args.from_stage)
    print(f"catalogue:  {run.path('catalogue')}")
    print(f"CV summary: {run.path('cv', 'cv_summary.csv')}")
    print(f"run log:    {run.path('run.log')}")
    print(f"report:     cannonade report {run.path()}")
    return 0


def cmd_match(args):
    from cannonade.tasks.match import match_catalogue

    report = match_catalogue(args.catalogue, args.store, args.out, radius_arcsec=args.radius, ra_column=args.ra_column,
                             dec_column=args.dec_column)
    print(report.summary())
    return 0


def _label_list(text):
    from cannonade.tasks.training import parse_label_names

    return parse_label_names(text)


def cmd_train(args):
    from cannonade.tasks.train import train_model

    report = train_model(args.labels, args.store, _label_list(args.label_names), args.out, id_column=args.id_column,
                         order=args.order, scale=args.scale, k=args.k, calibrate=args.calibrate, seed=args.seed,
                         name=args.name, error_prefix=args.error_prefix, missing=args.missing_labels, device=args.device)
    print(report.summary())
    return 0


def cmd_cv(args):
    from cannonade.tasks.crossval import describe, run_cv

    cv, ts, paths = run_cv(args.labels, args.store, _label_list(args.label_names), args.out, id_column=args.id_column,
                           order=args.order, scale=args.scale, k=args.k, seed=args.seed, error_prefix=args.error_prefix,
                           missing=args.missing_labels, device=args.device)
    print(ts.summary())
    print(f"{args.k}-fold cross-validation:")
    print(describe(cv))
    print(f"CV summary:     {paths['summary']}")
    print(f"CV predictions: {paths['predictions']}")
    return 0


def cmd_infer(args):
    from cannonade.tasks.infer import infer_store

    with _execution_messages(args.scheduler):
        report = infer_store(args.models, args.store, args.out, model_by=args.model_by, catalogue=args.catalogue,
                             allow_mismatch=args.allow_mismatch, chunk_size=args.chunk_size,
                             id_column=args.catalogue_id_column, teff_column=args.teff_column,
                             logg_column=args.logg_column, workers=args.workers, scheduler=args.scheduler or "",
                             device=args.device)
    print(report.summary())
    return 0


def cmd_report(args):
    import json

    from cannonade.report import write_report

    t0 = time.perf_counter()
    index = write_report(args.run_dir, out=args.out, seed=args.seed, max_points=args.max_points)
    summary = json.loads(index.with_name("summary.json").read_text())
    wb, gr = summary["wide_binaries"], summary["gradient"]
    print(f"cannonade report: {len(summary['figures'])} figures, {len(summary['not_drawn'])} not drawn, "
          f"in {time.perf_counter() - t0:.1f} s")
    if wb.get("p_value") is not None:
        print(f"wide binaries: {wb['n_pairs']} pairs, p = {wb['p_value']:.3g} (binaries chemically closer than field pairs)")
    if gr.get("fe_h_per_kpc") is not None:
        print(f"radial gradient: d[Fe/H]/dR = {gr['fe_h_per_kpc']:+.4f} ± {gr['e_fe_h_per_kpc']:.4f} dex/kpc")
    for name, why in summary["not_drawn"].items():
        print(f"not drawn: {name}: {why}")
    print(f"report:  {index}")
    print(f"summary: {index.with_name('summary.json')}")
    return 0


def cmd_config_init(args):
    from cannonade.tasks.configs import write_example_config

    path = write_example_config(args.path, recipe=args.recipe, overwrite=args.force)
    print(f"wrote the documented {args.recipe} example configuration to {path}; edit its paths, then: cannonade run {path}")
    return 0


# --------------------------------------------------------------------------- arguments
DEVICE_HELP = ("where the Cannon's arrays are computed: cpu (NumPy) or gpu (a CUDA GPU through CuPy, float64; "
               "pip install 'cannonade[gpu]'; docs/scale.md)")
SCHEDULER_HELP = ("run the chunks on dask.distributed: 'local' = a LocalCluster of --workers processes, or a running "
                  "cluster's scheduler address tcp://HOST:PORT or scheduler file (docs/scale.md)")

class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are ONE line on stderr (exit status 2), like every other
    error of the command line; the usage is in ``--help``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: "(required)", "(default: none)" for an unset
    optional value, "(default: off)" for a switch, else the value; help that already says its
    default is left as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return text + " (required)"
        if action.default is None:
            return text + " (default: none)"
        if action.default is False and action.nargs == 0:
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def build_parser():
    from cannonade._version import __version__
    from cannonade.pipeline.recipes import WHEELER2020

    parser = ArgumentParser(
        prog="cannonade",
        description="The Cannon at survey scale: stellar labels from spectra (Wheeler+2020, Nandakumar+2022).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cannonade {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = HelpFormatter

    p = sub.add_parser("demo", help="simulate a mock survey, run the whole pipeline, print where results are", formatter_class=fmt)
    p.add_argument("--out", default="cannonade_demo", help="demo directory (mock, config, run)")
    p.add_argument("--n-target", type=int, default=None, help="stars in the mock survey, all observed by LAMOST (default 30000)")
    p.add_argument("--n-reference", type=int, default=None, help="how many of them are GALAH reference stars (default 10%%)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mock and the run")
    p.add_argument("--quick", action="store_true", help="a small, fast demo of the Cannon core only")
    p.add_argument("--recipe", choices=["wheeler2020", "nandakumar2022"], default="wheeler2020",
                   help="wheeler2020: LAMOST x GALAH (30 000 stars); nandakumar2022: APOGEE x GALAH on each other's scale "
                        "(3000 stars, into cannonade_demo_nandakumar unless --out)")
    p.add_argument("--keep-mock", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the mock survey's spectrum files after they are ingested (its catalogues and truth always stay)")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("simulate", help="write a mock survey (spectra FITS + catalogues + truth)", formatter_class=fmt)
    p.add_argument("--preset", choices=["lamost-galah", "apogee-galah"], default="lamost-galah", help="which surveys")
    p.add_argument("--n-stars", type=int, default=500, help="stars in the mock")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--reference-fraction", type=float, default=None,
                   help="fraction of the stars that are reference (GALAH) stars with labels (default: the preset's)")
    p.add_argument("--no-realism", action="store_true",
                   help="switch off per-visit calibration/sky residuals and reference-label systematics (docs/simulate.md)")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("ingest", help="read survey spectra into a chunked HDF5 store on a common grid", formatter_class=fmt)
    p.add_argument("inputs", nargs="+", help="FITS files, directories, or @list.txt files")
    p.add_argument("--out", required=True, help="store path (.h5)")
    p.add_argument("--grid", default="lamost", help="common grid: lamost | apogee | galah | WMIN:WMAX:NPIX")
    p.add_argument("--normalise", default="gaussian", choices=["gaussian", "chebyshev", "none"], help="continuum normalisation")
    p.add_argument("--redshift-catalogue", default=None, help="optional catalogue (id, z) for the rest-frame shift")
    p.add_argument("--workers", type=int, default=2, help="processes (the dask workers with --scheduler local)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS|local", help=SCHEDULER_HELP)
    p.add_argument("--chunk-size", type=int, default=1000, help="files per chunk, stars with --join star (resume granularity)")
    p.add_argument("--join", default="auto", choices=["auto", "file", "star"],
                   help="a row per file, or per GALAH star ('star': its four CCD files <sobject_id><ccd>.fits joined on the "
                        "grid, each CCD in its own region and normalised on its own; a star missing a CCD goes to the error "
                        "report); 'auto' = 'star' with --grid galah when every input is a GALAH CCD file, else 'file'")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("run", help="run the label-transfer pipeline described by a TOML config", formatter_class=fmt)
    p.add_argument("config", help="path to the run's TOML file")
    p.add_argument("--from", dest="from_stage", default=None, choices=WHEELER2020.stage_names, metavar="STAGE",
                   help=f"force this stage and all after it; stages: {', '.join(WHEELER2020.stage_names)}")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS|local",
                   help=SCHEDULER_HELP + "; '' = none. Overrides run.scheduler (default: the config's run.scheduler)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes, or dask workers with --scheduler local; overrides run.workers "
                        "(default: the config's run.workers)")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"],
                   help=DEVICE_HELP + "; overrides run.device (default: the config's run.device)")
    p.set_defaults(handler=cmd_run)

    def training_options(p):
        p.add_argument("labels", help="labels table (FITS, CSV or Parquet): an id column and the label columns")
        p.add_argument("store", help="spectra store (.h5) from cannonade ingest")
        p.add_argument("--labels", dest="label_names", required=True, metavar="NAMES",
                       help="label columns to train on, comma-separated (e.g. teff,logg,fe_h)")
        p.add_argument("--id-column", default=None,
                       help="column of the labels table holding the store's spectrum id (obj_id); default: guessed from the values")
        p.add_argument("--order", type=int, default=2, help="polynomial order of the model (2 = the quadratic Cannon)")
        p.add_argument("--scale", choices=["standard", "percentile"], default="standard",
                       help="label scaling: (x - mean)/std (Wheeler+2020) or (x - p50)/(p97.5 - p2.5) (Nandakumar+2022 Eq. 2)")
        p.add_argument("--k", type=int, default=12, help="cross-validation folds")
        p.add_argument("--seed", type=int, default=0, help="seed of the folds")
        p.add_argument("--error-prefix", default="e_", help="reference-label error columns are PREFIX + label")
        p.add_argument("--missing-labels", choices=["drop", "impute"], default="drop",
                       help="stars with some labels missing: drop them, or impute those labels from their spectra while training")

    p = sub.add_parser("match", help="match a reference catalogue to a store's spectra on the sky (adds obj_id for train)",
                       formatter_class=fmt)
    p.add_argument("catalogue", help="reference catalogue with labels (FITS, CSV or Parquet)")
    p.add_argument("store", help="spectra store (.h5) from cannonade ingest")
    p.add_argument("--out", required=True, help="matched catalogue (.fits, .csv or .parquet)")
    p.add_argument("--radius", type=float, default=1.0, help="match radius in arcsec (Wheeler+2020: 1)")
    p.add_argument("--ra-column", default="ra", help="right ascension column of the catalogue (deg)")
    p.add_argument("--dec-column", default="dec", help="declination column of the catalogue (deg)")
    p.set_defaults(handler=cmd_match)

    p = sub.add_parser("train", help="train a calibrated Cannon model on labelled spectra of a store", formatter_class=fmt)
    training_options(p)
    p.add_argument("--out", required=True, help="model file (.npz)")
    p.add_argument("--name", default=None, help="the model's name (default: the file's stem), e.g. dwarf / giant")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="cross-validate and calibrate the errors and flags (docs/calibration.md)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help=DEVICE_HELP)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("cv", help="k-fold cross-validation of a model on labelled spectra (tables in a directory)",
                       formatter_class=fmt)
    training_options(p)
    p.add_argument("--out", required=True, help="output directory (cv_summary.csv, cv_predictions.fits)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help=DEVICE_HELP)
    p.set_defaults(handler=cmd_cv)

    p = sub.add_parser("infer", help="labels for every spectrum of a store, one row per spectrum", formatter_class=fmt)
    p.add_argument("models", nargs="+", metavar="MODEL", help="model file(s) (.npz); several are chosen per spectrum by --model-by")
    p.add_argument("store", help="spectra store (.h5) from cannonade ingest")
    p.add_argument("--out", required=True, help="labels table (.parquet, .fits or .csv)")
    p.add_argument("--model-by", choices=["chi2", "wheeler2020"], default="chi2",
                   help="with several models: lowest chi2/dof, or Wheeler+2020 Eq. 1 on --catalogue Teff/log g "
                        "(models named dwarf and giant)")
    p.add_argument("--catalogue", default=None, help="catalogue with Teff and log g of the spectra (--model-by wheeler2020)")
    p.add_argument("--catalogue-id-column", default=None, help="its column holding the store's obj_id (default: guessed)")
    p.add_argument("--teff-column", default="teff", help="its Teff column")
    p.add_argument("--logg-column", default="logg", help="its log g column")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="infer even if the store's grid, normalisation or survey differ from the model's (a warning)")
    p.add_argument("--chunk-size", type=int, default=2000, help="spectra per chunk (a killed run resumes per chunk)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel workers: processes, or dask workers with --scheduler local "
                        "(default: 1 process; with --scheduler local, one dask worker per core)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS|local", help=SCHEDULER_HELP)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help=DEVICE_HELP + "; gpu runs the chunks in this process or on dask, not in --workers processes")
    p.set_defaults(handler=cmd_infer)

    p = sub.add_parser("report", help="HTML report of a finished run: figures, tables, summary.json (RUN_DIR/report)",
                       formatter_class=fmt)
    p.add_argument("run_dir", help="the run directory (run.out of its configuration)")
    p.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random stars and field pairs drawn")
    p.add_argument("--max-points", type=int, default=4000, help="at most this many stars per scatter panel")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("config", help="configuration files", formatter_class=fmt)
    csub = p.add_subparsers(dest="config_command", required=True, help="what to do with a configuration")
    q = csub.add_parser("init", help="write a recipe's documented example configuration", formatter_class=fmt)
    q.add_argument("path", help="where to write it (.toml)")
    q.add_argument("--recipe", choices=["wheeler2020", "nandakumar2022"], default="wheeler2020", help="the pipeline recipe")
    q.add_argument("--force", action="store_true", help="overwrite an existing file")
    q.set_defaults(handler=cmd_config_init)
    return parser


def _one_line(exc):
    """The error's message on one line (a library's message may hold line breaks)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CannonadeError as exc:
        print(f"cannonade {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk outside the atomic writes (e.g. the run log): one line too
        from cannonade.util import is_disk_full

        if not is_disk_full(exc):
            raise
        print(f"cannonade {args.command}: error: no space left on device (or disk quota exceeded): {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cannonade {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
