"""Stage 7, ``train``: a Cannon model per class and its k-fold cross-validation (Wheeler+2020 §3–4)."""

from __future__ import annotations

import numpy as np

from cannonade.cannon.crossval import cross_validate
from cannonade.cannon.model import CannonModel
from cannonade.exceptions import TrainingSetError
from cannonade.pipeline.stages.ingest import target_rows
from cannonade.spectra.store import SpectraStore

NAME = "train"


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
    m = CannonModel(list(labs), order=tcfg.order, scale=tcfg.scale, scatter=tcfg.scatter, regularization=tcfg.regularization)
    run.log.info("[train] %s model: %d stars x %d pixels, %d labels, %d terms", name, n, flux.shape[1], len(labs), m.n_terms)
    m.fit(labels, flux, ivar, wavelength=st.wavelength)
    m.save(run.path("models", f"{name}.npz"))
    cv = cross_validate(m, labels, flux, ivar, k=tcfg.cv_folds, seed=run.cfg.run.seed)
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
