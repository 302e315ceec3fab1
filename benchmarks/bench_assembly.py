"""The ingest's last step, parts -> store, with and without failed files.

A file that fails moves every later part off the store's chunk grid; those parts' rows must be
decoded and encoded again (``cannonade.spectra.assembly``). This ingests the first N files of a
list (``bench_survey.py``'s ``list_<N>.txt`` of gzipped mock LAMOST files) with 2 workers, with
no failure and with a missing file every K files, and times the whole ingest and its assembly,
the assembly once by the parent alone (``workers=1``) and once with the workers' pool::

    python benchmarks/bench_assembly.py --list /tmp/bench_survey/list_30000.txt --n 30000 --fail-every 1000

Each case runs ``--repeat`` times, alternating; the table gives every run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _run(files, work, workers, assembly_workers):
    from cannonade.spectra import assembly, ingest as ingest_module

    out = Path(work) / "store.h5"
    for p in Path(work).iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    timed = {}
    real = assembly.assemble

    def timed_assemble(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **dict(kwargs, workers=assembly_workers))
        finally:
            timed["s"] = time.perf_counter() - t

    ingest_module.assemble = timed_assemble  # instrumentation: the same function, timed
    try:
        t = time.perf_counter()
        rep = ingest_module.ingest(files, out, grid="lamost", normalise="gaussian", workers=workers)
        total = time.perf_counter() - t
    finally:
        ingest_module.assemble = real
    return rep.n_ok, rep.n_failed, total, timed["s"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", required=True, help="a file of spectrum paths, one per line")
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--fail-every", type=int, default=1000, help="a missing file every K files (0: none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    os.environ.setdefault("CANNONADE_QUIET", "1")
    with open(args.list) as fh:
        files = [line.strip() for line in fh if line.strip()][: args.n]
    failing = list(files)
    if args.fail_every > 0:
        for i in range(len(failing) - 1, 0, -args.fail_every):  # from the end: the indices stay valid
            failing.insert(i, f"/nonexistent/missing_{i}.fits.gz")
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_assembly_"))
    work.mkdir(parents=True, exist_ok=True)
    cases = [("no failure", files, args.workers), (f"1 missing in {args.fail_every}", failing, 1),
             (f"1 missing in {args.fail_every}", failing, args.workers)]
    print(f"ingest of {len(files)} spectra with {args.workers} workers; assembly by the parent alone (1) or with the pool")
    print("| files | assembly workers | stored | failed | ingest s | spectra/s | assembly s |")
    print("|---|---|---|---|---|---|---|")
    try:
        for _ in range(args.repeat):
            for name, fl, aw in cases:
                n_ok, n_failed, total, asm = _run(fl, work, args.workers, aw)
                print(f"| {name} | {aw} | {n_ok} | {n_failed} | {total:.2f} | {n_ok / total:.0f} | {asm:.2f} |", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
