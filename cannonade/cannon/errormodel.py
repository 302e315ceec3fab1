"""The per-star error model: pure functions, one label at a time (docs/calibration.md).

* :func:`fit_noise_and_floor` — σ_cal² = (a σ_formal)² + (b (S/N/S/N₀)^(−γ))², by maximum
  likelihood on cross-validation residuals with iterative clipping; the reference labels' own
  errors are part of the residual variance, ``var(pred − ref) = a²σ² + b²(…) + e_ref²``, so
  they are subtracted, not absorbed into b. γ = 0 is a constant floor; :func:`mismatch`.
* :func:`visit_pairs`, :func:`best_visit_pairs` — pairs of repeat visits of one star.
* :func:`repeat_scale_factor` — Nandakumar+2022 Eq. 6: the f that makes the robust variance
  of Δl / sqrt(σ₁² + σ₂²) / f unity.
* :func:`precision_curve`, :func:`exp_precision` — Nandakumar+2022 §3.7.2: precision versus
  S/N from the highest-S/N visit against each other visit, A exp(−S/N/τ) + C.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit, minimize
from scipy.special import ndtr

from cannonade.cannon.crossval import half_percentile_width

__all__ = [
    "half_width",
    "fit_noise_and_floor",
    "mismatch",
    "visit_pairs",
    "best_visit_pairs",
    "repeat_scale_factor",
    "precision_points",
    "precision_curve",
    "exp_precision",
]


def half_width(x):
    """Half of the 84th − 16th percentile range of the finite values (a robust σ); NaN if none."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(half_percentile_width(x)) if x.size else np.nan


def _variance_nll(params, r2, s2, e2, t2, lnx, fixed):
    """−2 ln L (up to a constant) of residuals r ~ N(0, v) and its gradient in the free parameters.

    v = A s² + B x^(−2γ) + e² with x = S/N / S/N₀ (``lnx`` = ln x); ``fixed`` maps the fixed
    ones of "A", "gamma" to their values, ``params`` holds the others in the order A, B, γ.
    Each residual was kept because r² ≤ t2 (its clipping bound, fixed; inf = not clipped):
    the density is the Gaussian's divided by P(|r| ≤ √t2) = 2Φ(√(t2/v)) − 1, so clipping does
    not bias v low.
    """
    it = iter(params)
    A = fixed["A"] if "A" in fixed else next(it)
    B = next(it)
    gamma = fixed["gamma"] if "gamma" in fixed else next(it)
    mis = np.exp(-2.0 * gamma * lnx)  # (S/N / S/N₀)^(−2γ)
    v = A * s2 + B * mis + e2
    t = np.sqrt(t2 / v)
    finite = np.isfinite(t)
    tt = np.where(finite, t, 0.0)
    mass = np.where(finite, 2.0 * ndtr(tt) - 1.0, 1.0)
    nll = np.sum(np.log(v) + r2 / v + 2.0 * np.log(mass))
    # ∂/∂v of each term; d ln(2Φ(t) − 1)/dv = −t φ(t) / (v (2Φ(t) − 1))
    phi = np.where(finite, tt * np.exp(-0.5 * tt * tt) / np.sqrt(2.0 * np.pi), 0.0)  # t φ(t)
    d = 1.0 / v - r2 / (v * v) - 2.0 * phi / (v * mass)
    grad = ([] if "A" in fixed else [np.sum(d * s2)]) + [np.sum(d * mis)]
    if "gamma" not in fixed:
        grad.append(np.sum(d * B * mis * (-2.0 * lnx)))
    return nll, np.array(grad)


def _ml_variance(r2, s2, e2, t2, lnx, fixed, min_A=0.0):
    """(A, B, γ) maximising the likelihood of r ~ N(0, A s² + B x^(−2γ) + e²) cut at r² ≤ t2.

    Inputs in units where r ~ 1; A ≥ ``min_A``, B ≥ 0, 0 ≤ γ ≤ 1. Started from γ = 0, 0.3 and
    0.7 when γ is free (the likelihood need not be convex in γ); the best optimum wins.
    """
    tiny = 1e-10
    A0 = fixed.get("A", max(1.0, min_A))
    B0 = max(np.median(r2) - A0 * np.median(s2) - np.median(e2), 0.1 * np.median(r2))
    best = None
    for g0 in ([fixed["gamma"]] if "gamma" in fixed else [0.0, 0.3, 0.7]):
        x0 = ([] if "A" in fixed else [A0]) + [B0] + ([] if "gamma" in fixed else [g0])
        bounds = [(max(tiny, min_A), None)] * ("A" not in fixed) + [(tiny, None)] + [(0.0, 1.0)] * ("gamma" not in fixed)
        res = minimize(_variance_nll, x0, args=(r2, s2, e2, t2, lnx, fixed), jac=True, method="L-BFGS-B", bounds=bounds)
        if best is None or res.fun < best.fun:
            best = res
    it = iter(best.x)
    A = fixed["A"] if "A" in fixed else next(it)
    B = next(it)
    gamma = fixed["gamma"] if "gamma" in fixed else next(it)
    return float(A), float(B), float(gamma)


def mismatch(b, gamma, snr, snr_ref):
    """The model-mismatch part b (S/N / S/N₀)^(−γ) (S/N below 1 counts as 1; γ = 0: b at any S/N)."""
    return b * (np.maximum(np.asarray(snr, float), 1.0) / snr_ref) ** (-gamma)


def fit_noise_and_floor(residual, sigma, ref_error=None, snr=None, snr_ref=None, noise_scale=None, slope=None,
                        min_noise_scale=1.0, clip=4.0, robust=True, max_iter=20):
    """Fit σ_cal² = (a σ)² + (b (S/N / S/N₀)^(−γ))² to residuals by maximum likelihood, clipping outliers.

    The residual variance model is ``a²σ² + b²(S/N/S/N₀)^(−2γ) + e²`` (e: the reference label's
    own error). γ = 0 is a floor b that does not fall with S/N; γ > 0 lets the model-mismatch
    part fall slowly with S/N, as it does when the pixels' scatter s² comes to dominate the
    weights at high S/N (docs/calibration.md). Residuals beyond ``clip`` standard deviations
    of the current model are dropped and the fit repeated, with the likelihood of a Gaussian
    cut at each kept residual's bound (so the clipping does not shrink the variance), until
    the kept set does not change (at most ``max_iter`` times).

    Parameters
    ----------
    residual : (N,) float
        Predicted − reference label of cross-validated stars.
    sigma : (N,) float
        Formal 1σ errors of the predictions.
    ref_error : (N,) float, optional
        1σ errors of the reference labels (0 where unknown).
    snr : (N,) float, optional
        S/N of each star (needed unless ``slope`` is 0); ``snr_ref`` S/N₀ (default their median).
    noise_scale : float, optional
        Fix ``a`` (e.g. from repeat visits, :func:`repeat_scale_factor`).
    slope : float, optional
        Fix γ (0: a constant floor); fitted in [0, 1] by default.
    min_noise_scale : float
        Lower bound of a when it is fitted (1: the formal error is the noise error where noise
        dominates the weights, i.e. at low S/N; the CV alone cannot tell a smaller a from a
        larger mismatch, and a → 0 would underestimate errors below the CV's S/N range).
    clip : float
        Clipping threshold in units of the modelled standard deviation (inf: no clipping).
    robust : bool
        Finally rescale the mismatch part b so that the pulls r / sqrt(v) have unit robust
        width (half the 84th − 16th range), the scatter convention of both papers (and of
        Nandakumar+2022 Eq. 6); False keeps the maximum-likelihood variance.

    Returns
    -------
    a, b, gamma : float
        Noise scale, mismatch at S/N₀ (label units) and its slope.
    n_used, n_clipped : int
    """
    r = np.asarray(residual, float)
    s = np.asarray(sigma, float)
    e = np.zeros_like(r) if ref_error is None else np.asarray(ref_error, float)
    x = np.ones_like(r) if snr is None else np.maximum(np.asarray(snr, float), 1.0)
    ok = np.isfinite(r) & np.isfinite(s) & (s > 0) & np.isfinite(e) & np.isfinite(x)
    r, s, e, x = r[ok], s[ok], e[ok], x[ok]
    if r.size < 3:
        return np.nan, np.nan, np.nan, int(r.size), 0
    if snr is None and slope is None:
        slope = 0.0
    lnx = np.log(x / (np.median(x) if snr_ref is None else snr_ref))
    u = half_width(r) or np.sqrt(np.mean(r * r)) or 1.0  # work in units where r ~ 1
    r2, s2, e2 = (r / u) ** 2, (s / u) ** 2, (e / u) ** 2
    fixed = {}
    if noise_scale is not None:
        fixed["A"] = float(noise_scale) ** 2
    if slope is not None:
        fixed["gamma"] = float(slope)
    keep, t2 = np.ones(r.size, dtype=bool), np.full(r.size, np.inf)
    for _ in range(max_iter):
        A, B, gamma = _ml_variance(r2[keep], s2[keep], e2[keep], t2[keep], lnx[keep], fixed, min_noise_scale**2)
        t2 = clip * clip * (A * s2 + B * np.exp(-2.0 * gamma * lnx) + e2)
        new = r2 <= t2
        if np.array_equal(new, keep) or new.sum() < 3:
            break
        keep = new
    if robust:
        # the scale of the model part that gives the pulls r / sqrt(v) unit robust width, as
        # Nandakumar+2022 Eq. 6 does for repeats (the ML variance exceeds the robust one when the
        # mismatch varies over label space: a scale mixture, heavy-tailed)
        B = B * robust_scale(r2, B * np.exp(-2.0 * gamma * lnx), A * s2 + e2)
    return float(np.sqrt(A)), float(np.sqrt(B) * u), gamma, int(keep.sum()), int((~keep).sum())


def robust_scale(r2, scaled, fixed, lo=1e-2, hi=1e2, n_iter=40):
    """k² such that half_width(r / sqrt(k² scaled + fixed)) = 1 (bisection in log k², clipped to [lo, hi]).

    Parameters
    ----------
    r2 : (n,) float
        Squared residuals.
    scaled, fixed : (n,) float
        The parts of the variance that are and are not rescaled.
    """
    r = np.sqrt(r2) * np.sign(np.arange(r2.size) % 2 - 0.5)  # the sign does not change the width
    width = lambda k2: half_width(r / np.sqrt(k2 * scaled + fixed))
    if width(hi) > 1.0:
        return hi
    if width(lo) < 1.0:
        return lo
    a, b = np.log(lo), np.log(hi)
    for _ in range(n_iter):
        m = 0.5 * (a + b)
        a, b = (m, b) if width(np.exp(m)) > 1.0 else (a, m)
    return float(np.exp(0.5 * (a + b)))


def _groups(star_id):
    """Integer group codes (R,) of the star ids."""
    return np.unique(np.asarray(star_id), return_inverse=True)[1].ravel()


def visit_pairs(star_id, ok=None):
    """Every pair (i < j in sorted order) of visits of one star: indices (n_pairs,), (n_pairs,).

    Parameters
    ----------
    star_id : (R,) any
        Star of each visit; a star counts when it has at least two (``ok``) visits.
    ok : (R,) bool, optional
        Visits to use (e.g. finite labels).
    """
    idx = np.arange(len(star_id)) if ok is None else np.flatnonzero(ok)
    g = _groups(star_id)[idx]
    order = np.argsort(g, kind="stable")
    g, idx = g[order], idx[order]
    first, second = [], []
    d = 1
    while d < g.size:
        same = g[d:] == g[:-d]
        if not same.any():
            break  # groups are contiguous: no pair at distance d means none further apart
        first.append(idx[:-d][same])
        second.append(idx[d:][same])
        d += 1
    if not first:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(first), np.concatenate(second)


def best_visit_pairs(star_id, snr, ok=None):
    """(best, other) index pairs: each star's highest-S/N visit against each of its other visits."""
    idx = np.arange(len(star_id)) if ok is None else np.flatnonzero(ok)
    g = _groups(star_id)[idx]
    order = np.lexsort((-np.asarray(snr, float)[idx], g))
    g, idx = g[order], idx[order]
    start = np.r_[True, g[1:] != g[:-1]]
    best = idx[start][np.cumsum(start) - 1]
    other = ~start
    return best[other], idx[other]


def repeat_scale_factor(dl, sigma1, sigma2):
    """Nandakumar+2022 Eq. 6: f such that δl = Δl / sqrt(σ₁² + σ₂²) / f has robust variance 1.

    The robust variance is (half the 84th − 16th percentile range)², so
    f = half_width(Δl / sqrt(σ₁² + σ₂²)).

    Returns
    -------
    f : float
        NaN without a finite pair.
    n : int
        Pairs used.
    """
    z = np.asarray(dl, float) / np.sqrt(np.asarray(sigma1, float) ** 2 + np.asarray(sigma2, float) ** 2)
    z = z[np.isfinite(z)]
    return half_width(z), int(z.size)


def exp_precision(snr, A, tau, C):
    """Nandakumar+2022 §3.7.2 precision model A exp(−S/N / τ) + C."""
    return A * np.exp(-np.asarray(snr, float) / tau) + C


def precision_points(dl, snr_other, min_per_bin=25, max_bins=10):
    """Precision per S/N bin: half the 84th − 16th range of Δl, bins of the lower visit's S/N.

    Parameters
    ----------
    dl : (n,) float
        Label of the best visit − label of the other visit.
    snr_other : (n,) float
        S/N of the other (lower-S/N) visit.

    Returns
    -------
    snr, width : (n_bins,) float
        Median S/N and precision of each bin (quantile bins of ≥ ``min_per_bin`` pairs).
    """
    dl, snr_other = np.asarray(dl, float), np.asarray(snr_other, float)
    ok = np.isfinite(dl) & np.isfinite(snr_other)
    dl, snr_other = dl[ok], snr_other[ok]
    n_bins = int(np.clip(dl.size // min_per_bin, 1 if dl.size else 0, max_bins))
    if n_bins == 0:
        return np.zeros(0), np.zeros(0)
    edges = np.quantile(snr_other, np.linspace(0.0, 1.0, n_bins + 1))
    which = np.clip(np.searchsorted(edges, snr_other, side="right") - 1, 0, n_bins - 1)
    snr = np.array([np.median(snr_other[which == k]) for k in range(n_bins)])
    width = np.array([half_width(dl[which == k]) for k in range(n_bins)])
    good = np.isfinite(width)
    return snr[good], width[good]


def precision_curve(snr, width):
    """Fit A exp(−S/N/τ) + C (A, C ≥ 0) to per-bin precisions; a constant with < 3 bins.

    Returns
    -------
    (3,) float
        A, τ, C (NaN when there is no bin).
    """
    snr, width = np.asarray(snr, float), np.asarray(width, float)
    if snr.size == 0:
        return np.full(3, np.nan)
    if snr.size < 3 or np.ptp(snr) <= 0:
        return np.array([0.0, 1.0, float(np.median(width))])
    p0 = (max(width.max() - width.min(), 1e-12), max(np.median(snr) / 2.0, 1e-3), width.min())
    hi_tau = 100.0 * snr.max()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # the parameters' covariance is not used
            p, _ = curve_fit(exp_precision, snr, width, p0=p0, bounds=([0.0, 1e-3, 0.0], [np.inf, hi_tau, np.inf]),
                             maxfev=5000)
    except (RuntimeError, ValueError):
        return np.array([0.0, 1.0, float(np.median(width))])
    return np.asarray(p, float)
