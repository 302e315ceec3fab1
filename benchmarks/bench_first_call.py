"""A user's first inference call against thecannon 0.7.3, side by side (issue 15).

What a user sees who loads a saved model and infers a batch of held-out spectra: a fresh
process loads the model file and the spectra, then ONE ``CannonModel.infer`` call over all of
them is timed (wall and CPU, all threads) -- the θθᵀ products, the first touch of the work
arrays and every lazy import included (``bench_core.py --worker first-call``). thecannon
0.7.3 (A. Ho), in its own venv, loads its trained model (saved by ``bench_core.py``'s peer
run, ``results/<size>_thecannon_model.npz``) and runs its own inference (``curve_fit`` per
star) over the same spectra (``peers/run_peer.py --model``). The codes run one after another,
each in a fresh process, ``--rounds`` times interleaved (ours, thecannon, ours, ...), so a
slow spell of a shared machine hits both alike; the table gives the medians and the median
of the per-round ratios, and the best (fastest) round of each code with their ratio: on a
shared machine another job's burst can slow any one round several-fold.

Shapes: ``apogee`` (P = 7214, L = 5, 2000 test stars; the issue's APOGEE size) and ``wheeler``
(LAMOST: P = 3909, L = 9, 1000 test stars), the data of ``bench_core.py``.

    python benchmarks/bench_core.py --sizes wheeler apogee --peers thecannon   # once: data, thecannon models
    python benchmarks/bench_first_call.py                   # both shapes, 3 rounds
    python benchmarks/bench_first_call.py --baseline /path/to/other/checkout  # + that code's first call

``--blas-threads 1`` runs every code with BLAS on one thread (``OPENBLAS_NUM_THREADS=1``):
the per-core comparison, far less disturbed by other jobs on a shared machine than two
threads that each wait for the slower one.

``--baseline DIR`` adds a third code: ours run from another checkout of the package (its
``cannonade/`` in DIR, put first on ``PYTHONPATH``), e.g. the code before a change. Our model
file is trained once per shape and kept as ``results/<size>_ours_model.npz``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_core  # noqa: E402

SHAPES = {"apogee": 2000, "wheeler": 1000}  # size -> test stars (bench_core's data files)


def ours_model(size, data):
    """Our model of ``size`` (trained on bench_core's training set once, then read from its file)."""
    path = bench_core.RESULTS / f"{size}_ours_model.npz"
    if not path.exists():
        from cannonade import CannonModel

        with np.load(data, allow_pickle=False) as f:
            names = [str(x) for x in f["label_names"]]
            m = CannonModel(names, order=2, scale="standard", show_progress=False)
            m.fit(f["train_labels"], f["train_flux"], f["train_ivar"])
        m.save(path)
    return path


def run(cmd, env=None):
    """Run a child (stdout/stderr kept); returns its JSON result written to the ``--out`` path."""
    with tempfile.TemporaryDirectory(dir=bench_core.RESULTS) as tmp:
        out = Path(tmp) / "r.json"
        env = dict(os.environ, MPLBACKEND="Agg", CANNONADE_QUIET="1", **(env or {}))
        p = subprocess.run(cmd + ["--out", str(out)], env=env, cwd=bench_core.REPO, capture_output=True, text=True)
        if p.returncode != 0 or not out.exists():
            raise RuntimeError(f"{cmd[:3]} failed (rc={p.returncode}): {p.stderr.strip()[-500:]}")
        return json.loads(out.read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="BLAS threads of every code (OPENBLAS/OMP/MKL_NUM_THREADS; default: the library's own)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also time ours from the checkout in DIR (its cannonade/ first on PYTHONPATH)")
    args = ap.parse_args(argv)

    report, lines = {}, []
    for size in args.sizes:
        n_test = SHAPES[size]
        data = bench_core.data_path(size, n_test)
        if not data.exists():
            bench_core.make_data(size, n_test, data)
        spec = bench_core.SIZES[size]
        tc_model = bench_core.RESULTS / f"{size}_thecannon_model.npz"
        if not tc_model.exists():
            sys.exit(f"{tc_model} missing: run  python benchmarks/bench_core.py --sizes {size} --peers thecannon  once")
        model = ours_model(size, data)
        ours = [sys.executable, str(HERE / "bench_core.py"), "--worker", "first-call", "--model", str(model),
                "--data", str(data), "--n-test", str(n_test)]
        codes = {"ours": (ours, None)}
        if args.baseline:
            codes["ours, baseline"] = (ours, {"PYTHONPATH": str(Path(args.baseline).resolve())})
        codes["thecannon"] = ([str(bench_core.peer_python("thecannon")), str(bench_core.RUN_PEER), "--peer", "thecannon",
                               "--data", str(data), "--n-test", str(n_test), "--model", str(tc_model)], None)
        blas = {} if args.blas_threads is None else {
            v: str(args.blas_threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        per = {c: [] for c in codes}
        for r in range(args.rounds):
            for code, (cmd, env) in codes.items():
                res = run(cmd, {**(env or {}), **blas})
                if code == "thecannon":
                    wall, cpu = res["infer_ms_per_star"], res["infer_cpu_ms_per_star"]
                else:
                    wall, cpu = 1e3 * res["first_call_s"] / n_test, 1e3 * res["first_call_cpu_s"] / n_test
                per[code].append((wall, cpu))
                print(f"[first-call] {size} round {r + 1}: {code} {wall:.3f} ms/star (CPU {cpu:.3f})", file=sys.stderr)
        tc = np.array(per["thecannon"])
        rows = {}
        for code, v in per.items():
            v = np.array(v)
            rows[code] = dict(ms_per_star=float(np.median(v[:, 0])), cpu_ms_per_star=float(np.median(v[:, 1])),
                              thecannon_over_this=float(np.median(tc[:, 0] / v[:, 0])),
                              thecannon_over_this_cpu=float(np.median(tc[:, 1] / v[:, 1])),
                              best_ms_per_star=float(v[:, 0].min()), best_cpu_ms_per_star=float(v[:, 1].min()),
                              best_thecannon_over_this=float(tc[:, 0].min() / v[:, 0].min()),
                              runs=v.tolist())
        report[size] = dict(n_pixels=spec["n_pixels"], n_labels=len(spec["labels"]), n_test=n_test, codes=rows)
        for code, q in rows.items():
            lines.append(f"| {size} (P={spec['n_pixels']}, L={len(spec['labels'])}, {n_test} stars) | {code} | "
                         f"{q['ms_per_star']:.3f} | {q['cpu_ms_per_star']:.3f} | "
                         + ("1 | 1 |" if code == "thecannon" else
                            f"{q['thecannon_over_this']:.1f}× | {q['thecannon_over_this_cpu']:.1f}× |")
                         + f" {q['best_ms_per_star']:.3f} | "
                         + ("1 |" if code == "thecannon" else f"{q['best_thecannon_over_this']:.1f}× |"))
    head = (f"First inference call of a freshly loaded model vs thecannon 0.7.3 -- {time.strftime('%Y-%m-%d %H:%M')}, "
            f"{os.cpu_count()} cores, BLAS threads {args.blas_threads or 'default'}, {args.rounds} rounds interleaved, "
            f"medians; load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    table = "\n".join([head, "", "| shape | code | ms/star | CPU ms/star | thecannon / this | CPU: thecannon / this "
                             "| best ms/star | best: thecannon / this |", "|---|---|---|---|---|---|---|---|"] + lines)
    print("\n" + table)
    from cannonade.util import atomic_path

    tag = "" if args.blas_threads is None else f"_blas{args.blas_threads}"
    with atomic_path(bench_core.RESULTS / f"bench_first_call{tag}.md") as tmp:
        tmp.write_text(table + "\n")
    with atomic_path(bench_core.RESULTS / f"bench_first_call{tag}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
