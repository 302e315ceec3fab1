"""``cannonade cv``: k-fold cross-validation of a model on a labels table and a spectra store.

Writes, into the output directory, ``cv_summary.csv`` (per label: bias, scatter, rms,
correlation, n) and ``cv_predictions.fits`` (per training star: its id, fold, the reference
label and the cross-validated prediction with its formal error, χ², dof, S/N).
"""

from __future__ import annotations

import numpy as np

from cannonade.cannon.crossval import cross_validate
from cannonade.cannon.model import CannonModel
from cannonade.execution import get_namespace
from cannonade.exceptions import ConfigError
from cannonade.provenance import provenance, provenance_cards
from cannonade.tasks.train import fit_missing_mode
from cannonade.tasks.training import training_data
from cannonade.util import atomic_path, check_output_dir, make_dirs

__all__ = ["run_cv"]


def run_cv(labels, store, label_names, out_dir, id_column=None, order=2, scale="standard", k=12, seed=0,
           error_prefix="e_", regularization=0.0, missing="drop", device="cpu"):
    """Cross-validate a model k-fold and write its tables into ``out_dir``.

    Parameters are those of :func:`cannonade.tasks.train.train_model` (``out_dir`` a directory;
    ``device`` where each fold trains, docs/scale.md).

    Returns
    -------
    cv : CVResult
    training : TrainingSet
    paths : dict {"summary", "predictions"} -> Path
    """
    if int(k) < 2:
        raise ConfigError(f"--k must be >= 2, got {k}")
    get_namespace(device)  # an unusable device fails now, not after the data are read
    out_dir = check_output_dir(out_dir, "--out")
    ts, flux, ivar, _ = training_data(labels, store, label_names, id_column=id_column, error_prefix=error_prefix, missing=missing)
    make_dirs(out_dir, "--out")
    m = CannonModel(list(label_names), order=int(order), scale=scale, regularization=regularization, device=device)
    cv = cross_validate(m, ts.labels, flux, ivar, k=int(k), seed=seed, missing=fit_missing_mode(missing))
    prov = provenance(recipe="cannonade cv", input_store=store, labels_file=str(labels), id_column=ts.id_column, k=int(k))
    summary = cv.table()
    summary.meta.update({key: value for key, value, _ in provenance_cards(prov)})
    pred = cv.predictions_table()
    pred.add_column(ts.ids, name=ts.id_column if ts.id_column not in pred.colnames else "id", index=0)
    pred.add_column(ts.table_rows, name="table_row", index=1)
    pred.add_column(ts.rows, name="store_row", index=2)
    pred.meta.update({key: value for key, value, _ in provenance_cards(prov)})
    paths = {"summary": out_dir / "cv_summary.csv", "predictions": out_dir / "cv_predictions.fits"}
    with atomic_path(paths["summary"]) as tmp:
        summary.write(tmp, format="ascii.csv", overwrite=True)
    with atomic_path(paths["predictions"]) as tmp:
        pred.write(tmp, format="fits", overwrite=True)
    return cv, ts, paths


def describe(cv):
    """One line per label: bias, scatter, correlation."""
    return "\n".join(f"  {r['label']:<12s} bias {r['bias']:+.4g}  scatter {r['scatter']:.4g}  corr {r['corr']:.3f}  (n={np.sum(np.isfinite(cv.truth[:, i]))})"
                     for i, r in enumerate(cv.table()))
