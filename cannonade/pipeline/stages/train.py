"""Stage 7, ``train``: a Cannon model per class and its k-fold cross-validation (Wheeler+2020 §3–4)."""

from __future__ import annotations

import numpy as np

from cannonade.cannon.crossval import cross_validate
from cannonade.cannon.model import CannonModel
from cannonade.cannon.spectral_setup import SpectralSetup
from cannonade.exceptions import TrainingSetError
from cannonade.pipeline.inputs import column
from cannonade.pipeline.stages.ingest import target_rows
from cannonade.pipeline.stages.split import read_classes
from cannonade.spectra.store import SpectraStore

NAME = "train"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md); calibration.window_chi2_factor
# is combine's
CONFIG = ("training", "models", "run.seed", "calibration.enabled", "calibration.error_model", "calibration.repeat_stars",
          "calibration.distance_threshold", "calibration.low_snr", "calibration.max_missing_fraction",
          "reference.error_prefix", "target.catalogue", "target.file_column", "target.star_column")
INPUTS = ("target.catalogue",)


def train_one(run, st, name, labs, ts):
    """Fit, save and cross-validate the model ``name``; returns its CV summary table."""
    tcfg = run.cfg.training
    classes = np.asarray(ts["model_class"]).astype(str)
    sel = (classes == name) & np.all(np.column_stack([np.isfinite(np.asarray(ts[n], float)) for n in labs]), axis=1)
    n = int(sel.sum())
    if n < tcfg.min_stars:
        raise TrainingSetError(f"model {name!r}: only {n} training stars pass the cuts (training.min_stars = {tcfg.min_stars})")
    flux, ivar = st.read_rows(target_rows(run)[np.asarray(ts["target_row"])[sel]])
    labels = np.column_stack([np.asarray(ts[lab], dtype=float)[sel] for lab in labs])
    m = CannonModel(list(labs), order=tcfg.order, scale=tcfg.scale, scatter=tcfg.scatter, regularization=tcfg.regularization,
                    name=name, device=run.cfg.run.device)
    run.log.info("[train] %s model: %d stars x %d pixels, %d labels, %d terms", name, n, flux.shape[1], len(labs), m.n_terms)
    m.fit(labels, flux, ivar, setup=SpectralSetup.from_store(st),
          provenance=run.provenance(input_store=run.path("target.h5"), command=f"cannonade run: model {name!r}"))
    cv = cross_validate(m, labels, flux, ivar, k=tcfg.cv_folds, seed=run.cfg.run.seed)
    if run.cfg.calibration.enabled:
        calibrate(run, st, m, name, cv, label_errors(run, ts, labs, sel))
    m.save(run.path("models", f"{name}.npz"))
    summary = cv.table()
    summary["model"] = name
    summary["n_train"] = n
    run.write_table(summary, f"cv/{name}_summary.csv")
    pt = cv.predictions_table()
    pt["ref_row"] = np.asarray(ts["ref_row"])[sel]
    run.write_table(pt, f"cv/{name}_predictions.fits")
    for row in summary:
        run.log.info("[train]   CV %-14s bias %+9.4f  scatter %8.4f  corr %.3f", row["label"], row["bias"], row["scatter"], row["corr"])
    return summary


def label_errors(run, ts, labs, sel):
    """(N, L) reference-label errors of the training stars (0 where the catalogue has none)."""
    ep = run.cfg.reference.error_prefix
    cols = [np.asarray(ts[ep + lab], float)[sel] if ep + lab in ts.colnames else np.zeros(int(sel.sum())) for lab in labs]
    return np.nan_to_num(np.column_stack(cols), nan=0.0)


def repeat_rows(run, name):
    """Store rows and star ids of target stars observed more than once with model ``name`` (seeded subset).

    Returns rows (R,) int and star_id (R,) str; at most ``calibration.repeat_stars`` stars.
    """
    t = run.cfg.target
    rows_t = target_rows(run)
    stars = column(run.table("target"), t.star_column, kind="text")
    ok = (rows_t >= 0) & (read_classes(run) == name)
    uniq, inv, counts = np.unique(stars[ok], return_inverse=True, return_counts=True)
    multi = np.flatnonzero(counts > 1)
    n_max = run.cfg.calibration.repeat_stars
    if len(multi) > n_max:
        multi = np.sort(np.random.default_rng(run.cfg.run.seed).choice(multi, n_max, replace=False))
    take = np.isin(inv, multi)
    return rows_t[ok][take], stars[ok][take]


def calibrate(run, st, m, name, cv, errors):
    """Calibrate ``m``'s errors and flags from its CV and the target survey's repeat visits."""
    c = run.cfg.calibration
    rows, ids = repeat_rows(run, name)
    repeats = None
    if len(rows):
        flux, ivar = st.read_rows(rows)
        repeats = (flux, ivar, ids)
    if repeats is None and c.error_model == "nandakumar":
        raise TrainingSetError(f"model {name!r}: calibration.error_model = 'nandakumar' needs repeat visits; the target survey has none for this model")
    run.log.info("[train] %s model: calibrating from %d CV stars and %d repeat visits of %d stars",
                 name, len(cv.truth), len(rows), len(np.unique(ids)) if len(rows) else 0)
    m.calibrate(cv, label_errors=errors, repeats=repeats, error_model=c.error_model,
                distance_threshold=c.distance_threshold or None, low_snr=c.low_snr,
                max_missing_fraction=c.max_missing_fraction)
    table = m.calibration_.table()
    table["model"] = name
    run.write_table(table, f"cv/{name}_calibration.csv")


def execute(run):
    from astropy.table import vstack

    ts = run.read_run_table("training_set.fits")
    run.path("models").mkdir(exist_ok=True)
    run.path("cv").mkdir(exist_ok=True)
    info, summaries = {}, []
    with SpectraStore(run.path("target.h5")) as st:
        for name, labs in run.cfg.model_labels.items():
            s = train_one(run, st, name, labs, ts)
            summaries.append(s)
            info[name] = {"n_train": int(s["n_train"][0]), "scatter": dict(zip(s["label"], np.round(s["scatter"], 5))),
                          "bias": dict(zip(s["label"], np.round(s["bias"], 5)))}
    run.write_table(vstack(summaries), "cv/cv_summary.csv")
    return info
