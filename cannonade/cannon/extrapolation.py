"""Where the model can be trusted: pure functions behind the calibration's flags.

* :func:`conditional_cdf`, :func:`kde_bounds` — Wheeler+2020 §4: a 2-D Gaussian KDE of
  (l_true, l_inferred) from cross-validation (Silverman's bandwidth); the model is biased
  where it "under- or over-predicts the label 90 % of the time", i.e. where
  F = P(l_true ≤ l_inf | l_inf) ≤ 0.1 or ≥ 0.9; the bounds enclose the unbiased bulk.
* :func:`default_distance_labels`, :func:`training_distance` — Nandakumar+2022 §3.6 Eq. 5:
  the mean, over the 10 nearest training stars, of Σ_l ((l − l_j) / K_l)², K_l the CV RMS.
* :func:`chi2_threshold_curve`, :func:`chi2_threshold_at` — the χ²/dof above which a star's
  fit is unusual for its S/N (a percentile of the CV's χ²/dof in S/N bins).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = [
    "conditional_cdf",
    "kde_bounds",
    "default_distance_labels",
    "training_distance",
    "chi2_threshold_curve",
    "chi2_threshold_at",
]

# Eq. 5 label space of Nandakumar+2022 (Teff, log g, [Fe/H], [α/Fe]): the first name of each
# group found among the model's labels
DISTANCE_LABEL_GROUPS = (
    ("teff",),
    ("logg", "log_g"),
    ("fe_h", "feh", "m_h"),
    ("alpha_fe", "mean_alpha_fe", "alpha_m", "a_fe", "mg_fe"),
)
KIEL_LABELS = ("teff", "logg", "log_g")


def is_abundance(label):
    """True for an [X/Fe] abundance label (``x_fe`` or a derived ``mean_x_fe``; not ``fe_h``)."""
    name = label.lower()
    return name.endswith("_fe") and name not in ("fe_h",)


def parameter_mask(label_names):
    """(L,) bool: the labels whose extrapolation or range sets the star-level flag bits.

    Wheeler+2020 §4 (and their Table 1) flag the stellar parameters for the whole star and each
    abundance on its own (``<x>_fe_extrap``): a star whose [Ba/Fe] alone extrapolates is fine for
    [Fe/H]. So the EXTRAPOLATED and OUTSIDE_TRAINING bits look at the non-abundance labels
    (Teff, log g, vmic, [Fe/H], ...); a model of abundances alone uses them all.
    """
    mask = np.array([not is_abundance(n) for n in label_names], dtype=bool)
    return mask if mask.any() else np.ones(len(label_names), dtype=bool)


def conditional_cdf(truth, predicted, grid, block=64):
    """F(g) = P(l_true ≤ g | l_inferred = g) of a 2-D Gaussian KDE of (truth, predicted).

    The kernel covariance is Silverman's rule, ``n^(−1/6) ² × cov`` for two dimensions (as
    ``scipy.stats.gaussian_kde(bw_method="silverman")``). Conditioned on l_inferred = g each
    kernel is a Gaussian in l_true, so F is a weighted sum of normal CDFs, evaluated exactly.

    Parameters
    ----------
    truth, predicted : (n,) float
        Reference and cross-validated labels (finite).
    grid : (G,) float
        Values of l_inferred.
    block : int
        Grid points per vectorised block (memory ~ block × n).

    Returns
    -------
    (G,) float
    """
    t, p = np.asarray(truth, float), np.asarray(predicted, float)
    grid = np.asarray(grid, float)
    n = t.size
    H = np.cov(np.vstack([t, p])) * n ** (-1.0 / 3.0)  # Silverman, d = 2: factor n^(−1/6), squared
    htt, hpp, htp = H[0, 0], H[1, 1], H[0, 1]
    if not hpp > 0:
        return np.where(grid < np.median(t), 0.0, 1.0)
    slope = htp / hpp
    sd = np.sqrt(max(htt - htp * slope, 1e-12 * max(htt, 1e-300)))
    out = np.empty(grid.size)
    for g0 in range(0, grid.size, block):
        g = grid[g0 : g0 + block, None]
        dp = g - p[None, :]
        logw = -0.5 * dp * dp / hpp
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        cdf = ndtr((g - t[None, :] - slope * dp) / sd)  # kernel i given l_inf = g: N(t_i + slope dp, sd²)
        out[g0 : g0 + block] = np.sum(w * cdf, axis=1) / np.sum(w, axis=1)
    return out


def _crossing(x0, x1, f0, f1, level):
    """Where F crosses ``level`` or ``1 − level`` between two grid points (linear in F)."""
    target = level if min(f0, f1) <= level else 1.0 - level
    if f1 == f0:
        return x0
    return float(np.clip(x0 + (target - f0) * (x1 - x0) / (f1 - f0), min(x0, x1), max(x0, x1)))


def kde_bounds(truth, predicted, level=0.1, n_grid=256, min_stars=10):
    """Wheeler+2020 §4 bounds [lo, hi] of l_inferred inside which the model is unbiased.

    On a grid spanning the cross-validated predictions, the model is biased where
    F = P(l_true ≤ l_inf | l_inf) ≤ ``level`` (it under-predicts: the truth is above) or
    ≥ 1 − ``level`` (it over-predicts). From the grid point nearest the predictions' median
    (or the nearest unbiased one) the interval grows both ways to the first biased point; its
    ends are the linear crossings of F. Beyond the predictions' range counts as biased.

    Parameters
    ----------
    truth, predicted : (n,) float
        NaN entries are ignored.
    level : float
        0.1 in Wheeler+2020 ("90 % of the time").
    n_grid : int
    min_stars : int
        With fewer finite pairs, the bounds are the predictions' range.

    Returns
    -------
    lo, hi : float
        NaN without finite pairs.
    """
    t, p = np.asarray(truth, float), np.asarray(predicted, float)
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    if p.size == 0:
        return np.nan, np.nan
    if p.size < min_stars or np.ptp(p) == 0:
        return float(p.min()), float(p.max())
    grid = np.linspace(p.min(), p.max(), n_grid)
    F = conditional_cdf(t, p, grid)
    unbiased = (F > level) & (F < 1.0 - level)
    start = int(np.argmin(np.abs(grid - np.median(p))))
    if not unbiased[start]:
        cand = np.flatnonzero(unbiased)
        if cand.size == 0:
            med = float(np.median(p))
            return med, med
        start = int(cand[np.argmin(np.abs(cand - start))])
    below = np.flatnonzero(~unbiased[:start])
    above = np.flatnonzero(~unbiased[start + 1 :]) + start + 1
    lo = float(grid[0])
    if below.size:
        j = below[-1]  # the last biased point below the bulk
        lo = _crossing(grid[j], grid[j + 1], F[j], F[j + 1], level)
    hi = float(grid[-1])
    if above.size:
        j = above[0]  # the first biased point above the bulk
        hi = _crossing(grid[j - 1], grid[j], F[j - 1], F[j], level)
    return lo, hi


def default_distance_labels(label_names):
    """Nandakumar+2022's Eq. 5 labels among ``label_names``: Teff, log g, [Fe/H], one α label.

    The first name of each group in ``DISTANCE_LABEL_GROUPS`` (case-insensitive) that the
    model has; all labels when it has none of them.
    """
    lower = [n.lower() for n in label_names]
    chosen = []
    for group in DISTANCE_LABEL_GROUPS:
        for name in group:
            if name in lower:
                chosen.append(label_names[lower.index(name)])
                break
    return chosen or list(label_names)


def training_distance(tree, scaled, k=10):
    """Nandakumar+2022 Eq. 5: D = mean over the k nearest training stars of Σ_l ((l − l_j)/K_l)².

    Parameters
    ----------
    tree : scipy.spatial.cKDTree
        Over the training labels divided by K_l (n_train, D).
    scaled : (M, D) float
        Labels divided by K_l.
    k : int
        Neighbours (10 in the paper; at most the training set's size).

    Returns
    -------
    (M,) float
        NaN where a label is not finite.
    """
    scaled = np.asarray(scaled, float)
    out = np.full(scaled.shape[0], np.nan)
    ok = np.all(np.isfinite(scaled), axis=1)
    k = int(min(k, tree.n))
    if ok.any() and k > 0:
        d, _ = tree.query(scaled[ok], k=k, workers=-1)
        d = d.reshape(int(ok.sum()), k)
        out[ok] = np.mean(d * d, axis=1)
    return out


def chi2_threshold_curve(reduced_chi2, snr, percentile=99.0, stars_per_bin=200, max_bins=8):
    """χ²/dof threshold versus S/N: a percentile of the CV's χ²/dof in quantile bins of log S/N.

    Parameters
    ----------
    reduced_chi2, snr : (n,) float
        Of the cross-validated stars.
    percentile : float
    stars_per_bin : int
        Bins hold about this many stars (at least one bin, at most ``max_bins``).

    Returns
    -------
    log_snr, threshold : (n_bins,) float
        Median ln S/N and the threshold of each bin; empty without valid stars.
    """
    x, y = np.asarray(snr, float), np.asarray(reduced_chi2, float)
    ok = np.isfinite(x) & (x > 0) & np.isfinite(y)
    x, y = np.log(x[ok]), y[ok]
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    n_bins = int(np.clip(x.size // stars_per_bin, 1, max_bins))
    edges = np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    centre = np.array([np.median(x[which == b]) for b in range(n_bins)])
    thresh = np.array([np.percentile(y[which == b], percentile) for b in range(n_bins)])
    return centre, thresh


def chi2_threshold_at(log_snr, threshold, snr):
    """The threshold at each S/N: linear in ln S/N between bins, constant beyond the ends.

    Returns (M,) float; +inf where S/N is not finite and positive or there is no curve.
    """
    snr = np.asarray(snr, float)
    out = np.full(snr.shape, np.inf)
    ok = np.isfinite(snr) & (snr > 0)
    if len(threshold) and ok.any():
        out[ok] = np.interp(np.log(snr[ok]), log_snr, threshold)
    return out
