"""``cannonade train``: a calibrated Cannon model file from a labels table and a spectra store.

The model is fitted on every labelled star that matches a stored spectrum, then (by default)
cross-validated k-fold and calibrated (docs/calibration.md) from the cross-validation, the
reference labels' own errors and the repeat spectra of training stars in the store. The file
records the store's wavelength grid, normalisation and survey (``cannonade infer`` refuses
other spectra) and its provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cannonade.cannon.crossval import cross_validate
from cannonade.cannon.model import CannonModel
from cannonade.exceptions import ConfigError, TrainingSetError
from cannonade.execution import get_namespace
from cannonade.provenance import provenance
from cannonade.util import check_output_file
from cannonade.tasks.training import training_data

__all__ = ["TrainReport", "train_model", "MAX_REPEAT_STARS"]

#: at most this many stars' repeat spectra are inferred for the calibration (seeded subset)
MAX_REPEAT_STARS = 2000


@dataclass
class TrainReport:
    """What ``train_model`` did: the model, its training set, its cross-validation (or None), the file."""

    model: CannonModel
    training: object
    cv: object
    path: Path

    def summary(self):
        m, ts = self.model, self.training
        lines = [ts.summary(),
                 f"trained {m.name!r}: {m.n_train_} stars x {int(m.pixel_ok_.sum())} pixels, {len(m.label_names)} labels, "
                 f"{m.n_terms} terms (order {m.order}, {m.scale} scaling) -> {self.path}"]
        if self.cv is not None:
            t = self.cv.table()
            lines.append(f"{int(self.cv.fold.max()) + 1}-fold CV scatter: "
                         + ", ".join(f"{r['label']} {r['scatter']:.4g}" for r in t)
                         + ("; errors calibrated" if m.calibration_ is not None else ""))
        return "\n".join(lines)


def model_name(out, name=None):
    """The model's name: given, or the output file's stem (``giant.npz`` -> ``'giant'``)."""
    return str(name) if name else Path(out).stem


def train_model(labels, store, label_names, out, id_column=None, order=2, scale="standard", k=12, calibrate=True,
                seed=0, name=None, error_prefix="e_", regularization=0.0, missing="drop", overwrite=True, device="cpu"):
    """Train (and calibrate) a model on labelled stars of a store; write it to ``out``.

    Parameters
    ----------
    labels : str or Path
        Labels table (FITS, CSV or Parquet): an id column and the label columns.
    store : str or Path
        Spectra store (``cannonade ingest``).
    label_names : list of str
    out : str or Path
        The model file (``.npz``).
    id_column : str, optional
        The labels table's column holding the store's ``obj_id``; guessed when None.
    order : int
        Polynomial order (2 = the quadratic Cannon of both papers).
    scale : {"standard", "percentile"}
    k : int
        Cross-validation folds for the calibration.
    calibrate : bool
        Cross-validate and calibrate the errors and flags (k extra fits); False keeps formal
        errors (flagged UNCALIBRATED at inference).
    seed : int
        Folds and the repeat-star subset.
    name : str, optional
        The model's name (default: the file's stem).
    error_prefix : str
        Reference-label error columns are ``error_prefix + label``.
    regularization : float
        L1 strength.
    missing : {"drop", "impute"}
        Stars with some labels missing: dropped, or kept and the missing labels imputed from
        their spectra while training (docs/model.md, "Incomplete reference labels").
    overwrite : bool
    device : {"cpu", "gpu"}
        Where the fits (and the cross-validation's and calibration's inferences) run
        (``CannonModel(device=...)``; docs/scale.md). The model file is the same either way.

    Returns
    -------
    TrainReport

    Raises
    ------
    ConfigError
        ``out`` is not a ``.npz`` or exists with ``overwrite`` False; bad ``order``/``k``.
    TrainingSetError, ColumnError
        No usable training stars; a missing column (named).
    DeviceError
        ``device="gpu"`` without CuPy or a visible CUDA device (before any data is read).
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"--out {out}: model files are .npz")
    check_output_file(out, "--out")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists")
    if int(order) < 1:
        raise ConfigError(f"--order must be >= 1, got {order}")
    if calibrate and int(k) < 2:
        raise ConfigError(f"--k must be >= 2, got {k}")
    get_namespace(device)  # an unusable device fails now, not after the data are read
    ts, flux, ivar, setup = training_data(labels, store, label_names, id_column=id_column, error_prefix=error_prefix, missing=missing)
    m = CannonModel(list(label_names), order=int(order), scale=scale, regularization=regularization, name=model_name(out, name),
                    device=device)
    if ts.labels.shape[0] <= m.n_terms:
        raise TrainingSetError(f"{labels}: {ts.labels.shape[0]} training stars for {m.n_terms} model terms; "
                               f"{ts.summary()}")
    prov = provenance(recipe="cannonade train", input_store=store, labels_file=str(labels), id_column=ts.id_column,
                      n_matched=ts.counts["n_matched"])
    m.fit(ts.labels, flux, ivar, setup=setup, provenance=prov, missing=fit_missing_mode(missing))
    cv = None
    if calibrate:
        cv = cross_validate(m, ts.labels, flux, ivar, k=int(k), seed=seed, missing=fit_missing_mode(missing))
        m.calibrate(cv, label_errors=ts.label_errors, repeats=repeat_spectra(store, ts, seed))
    m.save(out)
    return TrainReport(model=m, training=ts, cv=cv, path=out)


def fit_missing_mode(missing):
    """``CannonModel.fit``'s ``missing`` for the tasks' ``drop``/``impute``."""
    if missing not in ("drop", "impute"):
        raise ConfigError(f"--missing-labels must be 'drop' or 'impute', got {missing!r}")
    return "impute" if missing == "impute" else "refuse"


def repeat_spectra(store, ts, seed=0, max_stars=MAX_REPEAT_STARS):
    """(flux, ivar, star_id) of the training stars' repeat spectra (a seeded subset of stars), or None."""
    from cannonade.spectra.store import SpectraStore

    if len(ts.repeat_rows) == 0:
        return None
    stars = np.unique(ts.repeat_ids)
    if len(stars) > max_stars:
        stars = np.random.default_rng(seed).choice(stars, max_stars, replace=False)
    take = np.isin(ts.repeat_ids, stars)
    with SpectraStore(store) as st:
        flux, ivar = st.read_rows(ts.repeat_rows[take])
    return flux, ivar, ts.repeat_ids[take]
