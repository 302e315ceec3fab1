"""The ``cannonade`` command line.

Each sub-command parses its arguments here and hands them to one function of
the module that owns the concept (imported lazily, so ``cannonade --help`` is
fast and a broken optional stage cannot break the others).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cannonade.exceptions import CannonadeError

# sub-command -> (module, function); the function takes the argparse Namespace, returns an exit code
COMMANDS = {
    "demo": ("cannonade.demo", "cli_demo"),
    "simulate": ("cannonade.simulate", "cli_simulate"),
    "ingest": ("cannonade.spectra.store", "cli_ingest"),
    "run": ("cannonade.pipeline", "cli_run"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cannonade",
        description="The Cannon at survey scale: stellar labels from spectra (Wheeler+2020, Nandakumar+2022).",
    )
    from cannonade._version import __version__

    parser.add_argument("--version", action="version", version=f"cannonade {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="simulate a mock survey, run the whole pipeline, print where results are")
    p.add_argument("--out", default="cannonade_demo", help="run directory (default: ./cannonade_demo)")
    p.add_argument("--n-target", type=int, default=None, help="stars in the mock survey (all observed by LAMOST; default 30000)")
    p.add_argument("--n-reference", type=int, default=None, help="how many of them are GALAH reference stars (default 10%%, i.e. 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small, fast demo of the Cannon core only")

    p = sub.add_parser("simulate", help="write a mock survey (spectra FITS + catalogues + truth)")
    p.add_argument("--preset", choices=["lamost-galah", "apogee-galah"], default="lamost-galah")
    p.add_argument("--n-stars", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")

    p = sub.add_parser("ingest", help="read survey spectra into a chunked HDF5 store on a common grid")
    p.add_argument("inputs", nargs="+", help="FITS files, directories, or @list.txt files")
    p.add_argument("--out", required=True, help="store path (.h5)")
    p.add_argument("--grid", default="lamost", help="common grid: lamost | apogee | galah | WMIN:WMAX:NPIX")
    p.add_argument("--normalise", default="gaussian", choices=["gaussian", "chebyshev", "none"])
    p.add_argument("--redshift-catalogue", default=None, help="optional catalogue (id, z) for rest-frame shift")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=1000)

    p = sub.add_parser("run", help="run the label-transfer pipeline described by a TOML config")
    p.add_argument("config", help="path to the run's TOML file")
    p.add_argument("--from", dest="from_stage", default=None, help="force this stage and all after it")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    module, func = COMMANDS[args.command]
    try:
        handler = getattr(importlib.import_module(module), func)
        return int(handler(args) or 0)
    except CannonadeError as exc:
        print(f"cannonade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cannonade {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
