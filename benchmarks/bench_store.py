"""Spectra-store compression: size and read speed of each HDF5 filter option.

Rewrites one store (by default the ingest of a small mock LAMOST survey) with every
option of :data:`cannonade.spectra.store.COMPRESSION_OPTIONS` and measures, for each,
the file size, the time to write it, a full sequential read (``SpectraStore.iter_chunks``,
as the ``infer`` stage reads) and ``SpectraStore.read_rows`` on random rows (as ``train``
reads its training set). Reads come from the page cache (the files were just written), so
the numbers are the decoding cost; from a cold disk the smaller files read faster still.
Options are measured round-robin, ``--repeat`` times, and the best time of each is kept.
Prints a markdown table (not run by the tests).

Usage::

    python benchmarks/bench_store.py                        # simulate 3000 stars + ingest (~1 min)
    python benchmarks/bench_store.py --store /tmp/fp.h5     # an existing store
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cannonade.spectra import store as st


def make_store(workdir, n_stars, seed):
    """Simulate a LAMOST x GALAH mock and ingest its LAMOST spectra (the CLI, as a user would)."""
    mock, out = Path(workdir) / "mock", Path(workdir) / "store.h5"
    run = [sys.executable, "-m", "cannonade"]
    subprocess.run(run + ["simulate", "--n-stars", str(n_stars), "--seed", str(seed), "--out", str(mock)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(run + ["ingest", str(mock / "lamost" / "spectra"), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def rewrite(src, dst, option, block=2048, chunk_rows=64):
    """Copy store ``src`` into ``dst`` with ``flux``/``ivar`` written with ``option``; returns seconds."""
    import h5py

    t0 = time.perf_counter()
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        n, p = a["flux"].shape
        a.copy("wavelength", b)
        a.copy("meta", b)
        for k, v in a.attrs.items():
            b.attrs[k] = v
        st.create_arrays(b, n, p, compression=option, chunk_rows=chunk_rows)
        for i in range(0, n, block):
            for name in ("flux", "ivar"):
                b[name][i : i + block] = a[name][i : i + block]
    return time.perf_counter() - t0


def time_reads(path, chunk, rows):
    """(sequential seconds, read_rows seconds) of one pass over the store at ``path``."""
    with st.SpectraStore(path) as s:
        t0 = time.perf_counter()
        for _ in s.iter_chunks(chunk):
            pass
        t1 = time.perf_counter()
        s.read_rows(rows)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="an existing store (default: simulate and ingest a mock)")
    ap.add_argument("--n-stars", type=int, default=3000, help="stars of the mock (default 3000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", nargs="+", default=list(st.COMPRESSION_OPTIONS), choices=list(st.COMPRESSION_OPTIONS))
    ap.add_argument("--repeat", type=int, default=5, help="passes per option; the best is kept (default 5)")
    ap.add_argument("--chunk", type=int, default=2000, help="rows per sequential read (default 2000, infer's chunk)")
    ap.add_argument("--row-fraction", type=float, default=0.1, help="fraction of rows read by read_rows (default 0.1)")
    ap.add_argument("--chunk-rows", type=int, default=64, help="rows per HDF5 chunk (default 64; ingest uses 16 for "
                    "the pipeline's 2000-file chunks)")
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        src = Path(args.store) if args.store else make_store(work, args.n_stars, args.seed)
        with st.SpectraStore(src) as s:
            n, p = s.n_spectra, s.n_pixels
        rows = np.random.default_rng(args.seed).choice(n, max(1, int(args.row_fraction * n)), replace=False)
        paths, write_s = {}, {}
        for opt in args.options:
            paths[opt] = Path(work) / f"bench_{opt.replace('+', '_')}.h5"
            write_s[opt] = rewrite(src, paths[opt], opt, chunk_rows=args.chunk_rows)
        best = {opt: [np.inf, np.inf] for opt in args.options}
        for _ in range(args.repeat):
            for opt in args.options:
                seq, rr = time_reads(paths[opt], args.chunk, rows)
                best[opt] = [min(best[opt][0], seq), min(best[opt][1], rr)]
        ref = best.get("none", next(iter(best.values())))
        size0 = os.path.getsize(paths["none"]) if "none" in paths else None
        print(f"store: {n} spectra x {p} pixels ({src if args.store else f'ingest of a {args.n_stars}-star mock'}), "
              f"chunks of {args.chunk_rows} rows; sequential reads of {args.chunk} rows, read_rows of {len(rows)} random "
              f"rows; best of {args.repeat}\n")
        print("| option | size (MB) | vs none | write (s) | sequential read (spectra/s) | vs none | read_rows (s) | vs none |")
        print("|---|---|---|---|---|---|---|---|")
        for opt in args.options:
            size = os.path.getsize(paths[opt])
            seq, rr = best[opt]
            rel_size = f"{size / size0:.2f}" if size0 else "-"
            print(f"| {opt} | {size / 1e6:.1f} | {rel_size} | {write_s[opt]:.2f} | {n / seq:.0f} | {ref[0] / seq:.2f} | "
                  f"{rr:.3f} | {ref[1] / rr:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
