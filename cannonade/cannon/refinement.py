"""Training labels refined by the training spectra (errors in the training labels).

The Cannon treats its training labels as exact. A survey's labels are not: their random errors,
in *every* label, blur θ and raise the per-pixel scatter at every line pixel, and a label that
may act only at a few pixels (a censored [α/Fe]) pays most. On the APOGEE × GALAH mock, a GALAH
model trained on the true labels recovers [α/Fe] to 0.033 dex (4-fold CV); trained on labels
with GALAH's errors, to 0.061 (docs/pipeline.md, "What the mock shows").

A spectrum measures its star's labels too. Each training star's label is replaced by the
inverse-variance weighted mean of its catalogue value and of the *cross-validated* predictions of
one or more models (each star predicted by a model that did not see it), each first put back on
the labels' scale (:func:`deattenuate`: such predictions come out slightly compressed about the
training set's centre):

    ℓ' = (ℓ / σ_ℓ² + Σ_m p_m / σ_m²) / (1 / σ_ℓ² + Σ_m 1 / σ_m²),   σ'⁻² = σ_ℓ⁻² + Σ_m σ_m⁻²

with σ_ℓ the label's quoted error and σ_m the error of model m's predictions: their scatter about
the catalogue labels less, in quadrature, the labels' median quoted error. The predictions are on
the catalogue's own scale (the models learnt it), so the mean keeps the scale while the noise
shrinks. Not in Nandakumar+2022 (off by default there; ``scaling.refine_labels``).
"""

from __future__ import annotations

import warnings

import numpy as np

from cannonade.cannon.crossval import half_percentile_width
from cannonade.exceptions import ShapeError

__all__ = ["SPECTRAL_ERROR_FLOOR", "deattenuate", "spectral_errors", "combine_labels"]

#: a model's prediction error is at least this fraction of its CV scatter about the catalogue
#: labels (where the quoted errors would explain all of that scatter, the spectra are not exact)
SPECTRAL_ERROR_FLOOR = 0.3


def _median_error(errors):
    """(L,) median of each label's finite, positive quoted errors (NaN where there is none)."""
    e = np.where(np.isfinite(errors) & (errors > 0), errors, np.nan)
    out = np.full(e.shape[1], np.nan)
    has = np.any(np.isfinite(e), axis=0)
    out[has] = np.nanmedian(e[:, has], axis=0)
    return out


def _check(predictions, labels, errors):
    predictions, labels, errors = (np.asarray(a, dtype=float) for a in (predictions, labels, errors))
    if not (predictions.shape == labels.shape == errors.shape) or predictions.ndim != 2:
        raise ShapeError(f"predictions {predictions.shape}, labels {labels.shape} and errors {errors.shape} "
                         "must be equal (N, L) shapes")
    return predictions, labels, errors


def deattenuate(predictions, labels, errors, limits=(0.5, 2.0)):
    """Cross-validated predictions put back on the labels' scale, label by label.

    A model's predictions of stars it did not see come out slightly compressed (or stretched)
    about the training set's centre: P ≈ μ + k (ℓ_true − μ) + noise. Combined as they are, they
    would pull the refined labels of the training set's extreme stars towards its centre. The
    slope of P on the catalogue labels ℓ is k·var(ℓ_true)/var(ℓ), and var(ℓ_true) = var(ℓ) − ẽ²
    (ẽ²: the mean squared quoted error), so k = slope · var(ℓ) / (var(ℓ) − ẽ²); the returned
    predictions are mean(ℓ) + (P − mean(P)) / k.

    Parameters
    ----------
    predictions, labels, errors : (N, L) float
        As for :func:`spectral_errors`.
    limits : (float, float)
        k is clipped to this range (a label with almost no spread, or quoted errors larger than
        its spread, cannot fix it).

    Returns
    -------
    (N, L) float
        A new array; a label with fewer than 10 usable stars is returned as it is.
    """
    predictions, labels, errors = _check(predictions, labels, errors)
    out = predictions.copy()
    for j in range(labels.shape[1]):
        p, lab, e = predictions[:, j], labels[:, j], errors[:, j]
        ok = np.isfinite(p) & np.isfinite(lab)
        if ok.sum() < 10:
            continue
        var_l = np.var(lab[ok])
        good_e = ok & np.isfinite(e) & (e > 0)
        e2 = float(np.mean(e[good_e] ** 2)) if good_e.any() else 0.0
        if not var_l > e2:
            continue
        slope = np.cov(p[ok], lab[ok], bias=True)[0, 1] / var_l
        k = float(np.clip(slope * var_l / (var_l - e2), *limits))
        out[:, j] = np.mean(lab[ok]) + (p - np.mean(p[ok])) / k
    return out


def spectral_errors(predictions, labels, errors):
    """The error of cross-validated predictions of each label.

    Parameters
    ----------
    predictions : (N, L) float
        Cross-validated predictions of the training stars (NaN where none).
    labels, errors : (N, L) float
        The catalogue labels (NaN where missing) and their quoted 1σ errors.

    Returns
    -------
    (L,) float
        ``sqrt(w² − ẽ²)``, at least ``SPECTRAL_ERROR_FLOOR · w``, where ``w`` is the 68 % half
        width of ``predictions − labels`` and ``ẽ`` the label's median quoted error (0 where the
        label has none).
    """
    predictions, labels, errors = _check(predictions, labels, errors)
    with warnings.catch_warnings():  # a label no star was predicted for: NaN, so no weight
        warnings.simplefilter("ignore", RuntimeWarning)
        w = half_percentile_width(predictions - labels)
    e = np.nan_to_num(_median_error(errors), nan=0.0)
    return np.sqrt(np.maximum(w * w - e * e, (SPECTRAL_ERROR_FLOOR * w) ** 2))


def combine_labels(labels, errors, predictions, prediction_errors):
    """Inverse-variance weighted mean of catalogue labels and model predictions (module docstring).

    Parameters
    ----------
    labels, errors : (N, L) float
        Catalogue labels and 1σ errors. A missing label (NaN) stays missing; a missing or
        non-positive error is the label's median error. A label with no usable error at all is
        kept as it is.
    predictions : sequence of (N, L) float
        Each model's cross-validated predictions (NaN where none: no weight).
    prediction_errors : sequence of (L,) float
        Each model's :func:`spectral_errors`.

    Returns
    -------
    refined, refined_errors : (N, L) float
        The combined labels and their 1σ errors (the catalogue's where a label was kept). The
        inputs are not modified.
    """
    labels, errors = np.asarray(labels, dtype=float), np.asarray(errors, dtype=float)
    if labels.shape != errors.shape or labels.ndim != 2:
        raise ShapeError(f"labels {labels.shape} and errors {errors.shape} must be equal (N, L) shapes")
    if len(predictions) != len(prediction_errors):
        raise ShapeError(f"{len(predictions)} prediction arrays but {len(prediction_errors)} error vectors")
    med = _median_error(errors)
    usable = np.isfinite(med)  # labels without any quoted error are kept as they are
    e = np.where(np.isfinite(errors) & (errors > 0), errors, med[None, :])
    w_sum = np.where(usable[None, :], 1.0 / np.where(usable[None, :], e, 1.0) ** 2, 0.0)
    num = np.where(usable[None, :], labels * w_sum, 0.0)
    for p, s in zip(predictions, prediction_errors):
        p, s = np.asarray(p, dtype=float), np.asarray(s, dtype=float)
        if p.shape != labels.shape or s.shape != (labels.shape[1],):
            raise ShapeError(f"predictions {p.shape} and errors {s.shape} do not match labels {labels.shape}")
        ok = np.isfinite(p) & (np.isfinite(s) & (s > 0))[None, :] & usable[None, :]
        w = np.where(ok, 1.0 / np.where(ok, s[None, :], 1.0) ** 2, 0.0)
        num += np.where(ok, p, 0.0) * w
        w_sum = w_sum + w
    with np.errstate(invalid="ignore", divide="ignore"):
        refined = np.where(usable[None, :], num / w_sum, labels)
        refined_errors = np.where(usable[None, :], 1.0 / np.sqrt(w_sum), errors)
    missing = ~np.isfinite(labels)
    refined[missing] = np.nan
    refined_errors[missing] = np.nan
    return refined, refined_errors
