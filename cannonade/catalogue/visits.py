"""Repeat visits of one star combined into one catalogue row (Wheeler+2020 §5.1).

Visits are S/N-weighted. A star's visits may have been inferred with different models (e.g.
visits on both sides of the dwarf/giant split, Eq. 1): labels of two models are not on one
scale, so only the visits inferred with the model of the star's best-S/N visit are combined.
"""

from __future__ import annotations

import numpy as np


def argmax_per_group(inv, values, n_groups):
    """Index of the largest value within each group.

    inv : (n,) int group of each item; values : (n,) float; returns (n_groups,) int.
    """
    order = np.lexsort((-values, inv))
    first = np.ones(len(order), dtype=bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    best = np.empty(n_groups, dtype=int)
    best[inv[order][first]] = order[first]
    return best


def snr_weights(snr):
    """Visit weights: the S/N where finite and positive, else 0."""
    snr = np.asarray(snr, dtype=float)
    return np.where(np.isfinite(snr) & (snr > 0), snr, 0.0)


def combine_visits(star_ids, snr, values, model=None):
    """S/N-weighted mean of per-observation values for each star.

    Parameters
    ----------
    star_ids : (n_obs,) array
    snr : (n_obs,) float
        Weights; non-finite or non-positive S/N gets weight 0 unless no used visit of its star
        has a positive weight (then the visits are equally weighted).
    values : (n_obs, k) or (n_obs,) float
        NaN values are skipped.
    model : (n_obs,) str, optional
        Model that produced each observation. Only visits with the model of the star's best-S/N
        visit are combined.

    Returns
    -------
    unique_ids : (n_star,)
    inverse : (n_obs,) int
        Star of each observation.
    mean : (n_star, k) float
    n_used : (n_star,) int
        Visits combined per star.
    used : (n_obs,) bool
        Whether each observation entered its star's mean.
    """
    uniq, inv = np.unique(np.asarray(star_ids), return_inverse=True)
    n_star = len(uniq)
    w = snr_weights(snr)
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    used = np.ones(len(inv), dtype=bool)
    if model is not None:
        model = np.asarray(model).astype(str)
        best = argmax_per_group(inv, np.nan_to_num(np.asarray(snr, float), nan=-1.0), n_star)
        used = model == model[best][inv]
    ok = np.isfinite(values) & used[:, None]
    wv = np.where(ok, w[:, None], 0.0)
    sum_w = np.zeros((n_star, values.shape[1]))
    sum_wv = np.zeros_like(sum_w)
    np.add.at(sum_w, inv, wv)
    np.add.at(sum_wv, inv, wv * np.where(ok, values, 0.0))
    # a star whose used, finite values all have zero weight: equal weights
    eq = np.zeros_like(sum_w)
    eqv = np.zeros_like(sum_w)
    np.add.at(eq, inv, ok.astype(float))
    np.add.at(eqv, inv, np.where(ok, values, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sum_w > 0, sum_wv / sum_w, np.where(eq > 0, eqv / eq, np.nan))
    return uniq, inv, mean, np.bincount(inv, weights=used, minlength=n_star).astype(int), used


def combine_errors(inv, snr, errors, used, n_star):
    """1σ error of the S/N-weighted mean of independent visits: sqrt(Σ (w e)²) / Σ w.

    errors : (n_obs, k) float; used : (n_obs,) bool. Returns (n_star, k). Where no used visit
    with a finite error has a positive weight, the visits are equally weighted (as in
    :func:`combine_visits`); NaN where no used visit has a finite error.
    """
    errors = np.asarray(errors, dtype=float)
    if errors.ndim == 1:
        errors = errors[:, None]
    ok = np.isfinite(errors) & used[:, None]

    def propagate(w):
        num = np.zeros((n_star, errors.shape[1]))
        den = np.zeros_like(num)
        np.add.at(num, inv, np.where(ok, (w * errors) ** 2, 0.0))
        np.add.at(den, inv, np.where(ok, w, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, np.sqrt(num) / den, np.nan)

    weighted = propagate(snr_weights(snr)[:, None] * np.ones_like(errors))
    return np.where(np.isfinite(weighted), weighted, propagate(np.ones_like(errors)))
