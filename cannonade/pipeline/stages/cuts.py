"""Stage 3, ``cuts``: quality cuts, expressions over the target and reference catalogues (Wheeler+2020 §2.1).

Bit cuts are bitwise expressions, e.g. ``(ASPCAPFLAG & 10420224) == 0`` (see
:mod:`cannonade.config.expressions`).
"""

from __future__ import annotations

import numpy as np

from cannonade.config import evaluate_cut
from cannonade.pipeline.stages.ingest import target_rows

NAME = "cuts"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md)
CONFIG = ("cuts", "reference.columns", "target.catalogue", "target.file_column", "reference.catalogue")
INPUTS = ("target.catalogue", "reference.catalogue")


def execute(run):
    xm = run.read_run_table("crossmatch.fits")
    tgt, ref = run.table("target"), run.table("reference")
    rows_t = target_rows(run)
    keep = np.asarray(xm["target_row"]) >= 0
    counts = {"matched": int(keep.sum())}
    trow = np.maximum(np.asarray(xm["target_row"]), 0)
    keep &= rows_t[trow] >= 0
    counts["with_spectrum"] = int(keep.sum())
    for expr in run.cfg.cuts.target:
        ok = evaluate_cut(expr, tgt, None, "target catalogue")[trow]
        run.log.info("[cuts] target %-28s removes %d", expr, int((keep & ~ok).sum()))
        keep &= ok
        counts[f"target: {expr}"] = int(keep.sum())
    for expr in run.cfg.cuts.reference:
        ok = evaluate_cut(expr, ref, run.cfg.reference.columns, "reference catalogue")
        run.log.info("[cuts] reference %-25s removes %d", expr, int((keep & ~ok).sum()))
        keep &= ok
        counts[f"reference: {expr}"] = int(keep.sum())
    xm["pass_cuts"] = keep
    run.write_table(xm, "training_candidates.fits")
    return {"n_in": counts["matched"], "n_kept": int(keep.sum()), "counts": counts}
