"""Stage ``systematics`` (Nandakumar+2022 Tables 1 and 3): survey A − survey B for the common stars.

For the training set's common stars, per label and sample (all, giants, dwarfs: reference
log g below / above ``scaling.giant_logg``), the mean and σ (half of 84th − 16th
percentile) of: the two surveys' own catalogue values (``before``, Table 1); the labels on the
target survey's scale from its spectra minus those from the reference survey's spectra
(``after_<target>_scale``: ACAA − GCAA); and on the reference survey's scale
(``after_<reference>_scale``: ACGS − GCGS), Table 3. Writes ``tables/systematics.csv``
(columns ``label, sample, stage, mean, sigma, n``).
"""

from __future__ import annotations

import numpy as np

from cannonade.pipeline.stages.common import read_common
from cannonade.pipeline.stages.scaled_infer import read_model_result
from cannonade.pipeline.stages.scaled_train import model_name

NAME = "systematics"
CONFIG = ("scaling.giant_logg", "scaling.labels")
INPUTS = ()


def robust_stats(diff):
    """(mean, σ = half of 84th − 16th percentile, n) of the finite values."""
    d = np.asarray(diff, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return np.nan, np.nan, 0
    p16, p84 = np.percentile(d, [16, 84])
    return float(np.mean(d)), float(0.5 * (p84 - p16)), int(d.size)


def scaled_labels(run, cs, rows, spectra_side, label_side):
    """(n, L) labels of the common stars from ``spectra_side``'s spectra on ``label_side``'s scale."""
    res = read_model_result(run, model_name(run.cfg, spectra_side, label_side))
    idx = np.asarray(cs[f"{spectra_side}_store_row"])[rows]
    return res["labels"][idx]


def execute(run):
    from astropy.table import Table

    cfg = run.cfg
    cs = read_common(run)
    rows = np.flatnonzero(np.asarray(cs["in_training"], bool))
    labs = list(cfg.scaling.labels)
    before = np.column_stack([np.asarray(cs[f"target_{lab}"], float)[rows] - np.asarray(cs[f"reference_{lab}"], float)[rows]
                              for lab in labs])
    stages = {"before": before}
    for side in ("target", "reference"):
        survey = getattr(cfg, side).survey
        stages[f"after_{survey}_scale"] = (scaled_labels(run, cs, rows, "target", side)
                                           - scaled_labels(run, cs, rows, "reference", side))
    logg_ref = np.asarray(cs["reference_logg"], float)[rows] if "reference_logg" in cs.colnames else np.full(len(rows), np.nan)
    samples = {"all": np.ones(len(rows), bool), "giants": logg_ref < cfg.scaling.giant_logg,
               "dwarfs": logg_ref >= cfg.scaling.giant_logg}
    out = []
    for stage, diff in stages.items():
        for sample, sel in samples.items():
            for k, lab in enumerate(labs):
                mean, sigma, n = robust_stats(diff[sel, k])
                out.append((lab, sample, stage, mean, sigma, n))
    t = Table(rows=out, names=("label", "sample", "stage", "mean", "sigma", "n"))
    run.path("tables").mkdir(exist_ok=True)
    run.write_table(t, "tables/systematics.csv")
    info = {}
    for lab in labs:
        sel = (t["label"] == lab) & (t["sample"] == "all")
        info[lab] = {str(r["stage"]): [round(float(r["mean"]), 4), round(float(r["sigma"]), 4)] for r in t[sel]}
        run.log.info("[systematics] %-9s %s", lab, "  ".join(f"{s}: {m:+.3f} ± {sg:.3f}" for s, (m, sg) in info[lab].items()))
    return info
