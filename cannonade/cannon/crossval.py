"""k-fold cross-validation of a Cannon model (Wheeler+2020 §4, Nandakumar+2022 §4)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from cannonade.cannon.checks import (
    as_label_array,
    check_missing_option,
    check_positive_int,
    check_spectra,
    check_training_labels,
    check_training_set,
)
from cannonade.exceptions import CannonadeError, TrainingSetError
from cannonade.util import progress


def half_percentile_width(x, axis=0):
    """Half of the 84th − 16th percentile spread (a robust σ), ignoring NaN."""
    p16, p84 = np.nanpercentile(x, [16.0, 84.0], axis=axis)
    return 0.5 * (p84 - p16)


@dataclass
class CVResult:
    """Cross-validated predictions of every training star (each predicted by a model that never saw it).

    Attributes
    ----------
    predicted : (N, L) float
    truth : (N, L) float
        The reference labels; NaN where a star has none for that label (a training set
        fitted with ``missing="impute"``): the statistics of a label use only the stars
        that have it (``n``).
    fold : (N,) int
    converged : (N,) bool
    errors : (N, L) float
        Formal 1σ errors of the predictions (also ``raw_errors``).
    label_names : list of str
    chi2 : (N,) float, optional
        χ² of each held-out star at its prediction; ``dof`` (N,) int its valid pixels − L.
    snr : (N,) float, optional
        Median S/N per pixel of each held-out spectrum (``quality.spectrum_snr``).
    singular : (N,) bool, optional
        The prediction's covariance was singular.
    missing_fraction : (N,) float, optional
        Fraction of the model's pixels without data.

    The optional arrays are what ``CannonModel.calibrate`` needs (χ²/dof and error models
    versus S/N); ``cross_validate`` always fills them.
    """

    predicted: np.ndarray
    truth: np.ndarray
    fold: np.ndarray
    converged: np.ndarray
    errors: np.ndarray
    label_names: list
    chi2: np.ndarray | None = None
    dof: np.ndarray | None = None
    snr: np.ndarray | None = None
    singular: np.ndarray | None = None
    missing_fraction: np.ndarray | None = None

    @property
    def raw_errors(self):
        """(N, L) formal 1σ errors of the predictions (the same array as ``errors``)."""
        return self.errors

    @property
    def reduced_chi2(self):
        """(N,) χ²/dof of each prediction (NaN without ``chi2``)."""
        if self.chi2 is None:
            return np.full(self.truth.shape[0], np.nan)
        return self.chi2 / np.maximum(self.dof, 1)

    @property
    def residuals(self):
        return self.predicted - self.truth

    @property
    def n(self):
        """(L,) int: stars with both a reference value and a finite prediction of each label."""
        return np.sum(np.isfinite(self.residuals), axis=0)

    @property
    def bias(self):
        """(L,) mean of predicted − truth."""
        return np.nanmean(self.residuals, axis=0)

    @property
    def scatter(self):
        """(L,) half of the 84th − 16th percentile of predicted − truth (Nandakumar+2022)."""
        return half_percentile_width(self.residuals)

    @property
    def rms(self):
        """(L,) root-mean-square of predicted − truth."""
        return np.sqrt(np.nanmean(self.residuals**2, axis=0))

    @property
    def corr(self):
        """(L,) Pearson correlation of predicted with truth."""
        out = np.empty(self.truth.shape[1])
        for i in range(out.size):
            ok = np.isfinite(self.predicted[:, i]) & np.isfinite(self.truth[:, i])
            out[i] = np.corrcoef(self.predicted[ok, i], self.truth[ok, i])[0, 1] if ok.sum() > 2 else np.nan
        return out

    def table(self):
        """Per-label summary: label, bias, scatter, rms, corr, n (astropy Table).

        Each label's statistics are over its ``n`` stars with a reference value and a
        finite prediction (NaN for a label with none).
        """
        from astropy.table import Table

        with warnings.catch_warnings():  # a label without any reference value: NaN, quietly
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
            warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
            return Table(
                dict(label=self.label_names, bias=self.bias, scatter=self.scatter, rms=self.rms, corr=self.corr, n=self.n),
            )

    def predictions_table(self):
        """Per-star table: fold, truth and cross-validated prediction of every label."""
        from astropy.table import Table

        t = Table(dict(fold=self.fold, converged=self.converged))
        for i, n in enumerate(self.label_names):
            t[n] = self.truth[:, i]
            t[f"cv_{n}"] = self.predicted[:, i]
            t[f"e_cv_{n}"] = self.errors[:, i]
        for key in ("chi2", "dof", "snr", "singular", "missing_fraction"):
            if getattr(self, key) is not None:
                t[key] = getattr(self, key)
        return t


def kfold_indices(n, k=12, seed=0):
    """Random partition of range(n) into k folds: (n,) fold number of each star."""
    k = check_positive_int(k, "k (the number of cross-validation folds)", minimum=2)
    if n < k:
        raise TrainingSetError(f"cannot split {n} stars into {k} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(n, dtype=int)
    fold[rng.permutation(n)] = np.arange(n) % k
    return fold


def full_set_imputation(model, labels):
    """``labels`` with the missing entries at ``model``'s imputed values, or None.

    None unless ``model`` was fitted with ``missing="impute"`` on exactly these labels
    (same shape, missing where it imputed, equal elsewhere).

    Parameters
    ----------
    model : CannonModel
    labels : (N, L) float

    Returns
    -------
    (N, L) float or None
        A new array (NaN stays where the model dropped a star without any label).
    """
    imputed = getattr(model, "imputed_", None)
    if imputed is None or imputed.shape != labels.shape or not imputed.any():
        return None
    missing = ~np.isfinite(labels)
    dropped = getattr(model, "dropped_", np.zeros(labels.shape[0], bool))
    if not np.array_equal(imputed | (missing & dropped[:, None]), missing):
        return None
    return np.where(imputed, model.imputed_values_, labels)


def cross_validate(model, labels, flux, ivar, k=12, seed=0, missing="refuse"):
    """k-fold cross-validation: each fold predicted by a clone of ``model`` trained on the others.

    Parameters
    ----------
    model : CannonModel
        Its parameters are used; if it is fitted on these spectra, its s² only warm-starts
        each fold's own maximum-likelihood s² (every fold is refitted from scratch).
    labels : (N, L) float or table
    flux, ivar : (N, P) float
    k : int
        Number of folds (12 in both papers).
    seed : int
        Seed of the random partition.
    missing : {"refuse", "impute"}
        With "impute", NaN labels are unknowns (estimated from the spectra, see
        ``CannonModel.fit``). When ``model`` was fitted with ``missing="impute"`` on these
        labels, each fold trains on the full set's imputed values, held fixed (one θ, s² fit
        per fold, as with complete labels, instead of an impute-and-refit loop per fold: a
        held-out star's spectrum moved the other stars' imputed values only through θ, by
        ~1/N); otherwise every fold imputes afresh. A held-out star's missing label has no
        truth: its prediction is kept, its ``truth`` is NaN, and that label's statistics use
        only the stars that have it.

    Returns
    -------
    CVResult

    Raises
    ------
    The errors of ``CannonModel.fit``, checked on the whole training set first, so that a
    message naming a star gives its row in the arrays passed here (never its row inside a
    fold); an error only one fold's training set has is prefixed with the fold.
    """
    lab = as_label_array(labels, model.label_names)
    check_missing_option(missing)
    flux, ivar = check_spectra(flux, ivar)  # fit and infer clean bad pixels themselves, chunk by chunk
    check_training_set(lab, flux, model.label_names, model.n_terms, missing=missing)  # star = the caller's row
    check_training_labels(lab, model.label_names)
    fold = kfold_indices(lab.shape[0], k, seed)
    N = lab.shape[0]
    pred = np.full_like(lab, np.nan)
    err = np.full_like(lab, np.nan)
    conv = np.zeros(N, dtype=bool)
    per_star = dict(chi2=np.full(N, np.nan), dof=np.zeros(N, dtype=int), snr=np.full(N, np.nan),
                    singular=np.ones(N, dtype=bool), missing_fraction=np.full(N, np.nan))
    # a fitted model's s² (same pixels) warm-starts each fold's own s² search
    init = model.s2_ if getattr(model, "is_fitted", False) and model.s2_.shape == (flux.shape[1],) else None
    train_lab, fold_missing = lab, missing
    filled = full_set_imputation(model, lab) if missing == "impute" else None
    if filled is not None:
        train_lab = filled
        fold_missing = "refuse" if np.isfinite(filled).all() else "impute"  # a dropped star: impute its folds
    quiet = model.clone()
    quiet.show_progress = False  # one bar for the folds, not one per fold
    for f in progress(range(k), desc=f"{k}-fold CV", total=k):
        test = fold == f
        try:
            m = quiet.clone().fit(train_lab[~test], flux[~test], ivar[~test], init_s2=init, missing=fold_missing)
        except CannonadeError as exc:  # a problem of this fold's training set only (the whole set passed)
            raise type(exc)(f"cross-validation fold {f} of {k} (trained on the {int((~test).sum())} stars outside "
                            f"it): {exc}") from exc
        r = m.infer(flux[test], ivar[test])
        pred[test], err[test], conv[test] = r.labels, r.raw_errors, r.converged
        for key, values in per_star.items():
            values[test] = getattr(r, key)
    return CVResult(predicted=pred, truth=lab, fold=fold, converged=conv, errors=err, label_names=list(model.label_names),
                    **per_star)
