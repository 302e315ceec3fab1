"""Stage 6, ``labels``: the training labels of each model, derived labels included (Wheeler+2020 §2.2)."""

from __future__ import annotations

import numpy as np

from cannonade.pipeline.inputs import all_model_labels, column, has_column
from cannonade.pipeline.stages.split import read_classes

NAME = "labels"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md)
CONFIG = ("models", "labels", "reference.catalogue", "reference.columns", "reference.error_prefix")
INPUTS = ("reference.catalogue",)


def weighted_mean_label(values, errors=None):
    """Error-weighted mean over components (Wheeler+2020 §2.2 mean α, mean s-process).

    Parameters
    ----------
    values, errors : (n, c) float
        NaN components are skipped; errors None -> equal weights.

    Returns
    -------
    mean, error : (n,) float
        NaN where no component is finite (error NaN too with equal weights).
    """
    values = np.asarray(values, dtype=float)
    if errors is None:
        w = np.where(np.isfinite(values), 1.0, 0.0)
    else:
        errors = np.asarray(errors, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(values) & np.isfinite(errors) & (errors > 0), 1.0 / errors**2, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sw > 0, (w * np.nan_to_num(values)).sum(axis=1) / sw, np.nan)
        err = np.where(sw > 0, 1.0 / np.sqrt(sw), np.nan) if errors is not None else np.full(len(values), np.nan)
    return mean, err


def execute(run):
    from astropy.table import Table

    cfg = run.cfg
    cand = run.read_run_table("training_clean.fits")
    ref = run.table("reference")
    al, ep = cfg.reference.columns, cfg.reference.error_prefix
    keep = np.asarray(cand["pass_cuts"]) & np.asarray(cand["windowed_chi2_ok"])
    ref_rows = np.asarray(cand["ref_row"])[keep]
    target_rows = np.asarray(cand["target_row"])[keep]
    out = Table(dict(ref_row=ref_rows, target_row=target_rows))
    out["model_class"] = read_classes(run)[target_rows]
    for n in all_model_labels(cfg):
        spec = cfg.labels.derived.get(n)
        if spec is None:
            out[n] = column(ref, n, al)[ref_rows]
            if has_column(ref, ep + n, al):  # the reference label's own error: the calibration subtracts it
                out[ep + n] = column(ref, ep + n, al)[ref_rows]
            continue
        vals = np.column_stack([column(ref, c, al)[ref_rows] for c in spec.mean_of])
        errs = np.column_stack([column(ref, ep + c, al)[ref_rows] for c in spec.mean_of]) if spec.weights == "error" else None
        out[n], out[ep + n] = weighted_mean_label(vals, errs)
    run.write_table(out, "training_set.fits")
    counts = {}
    classes = np.asarray(out["model_class"]).astype(str)
    for model, labs in cfg.model_labels.items():
        in_class = classes == model
        finite = np.all(np.column_stack([np.isfinite(np.asarray(out[n], float)) for n in labs]), axis=1)
        counts[model] = {"in_class": int(in_class.sum()), "complete_labels": int((in_class & finite).sum())}
    run.log.info("[labels] training stars per model: %s", counts)
    return {"n_training": len(out), "per_model": counts}
