"""Training: θ by weighted least squares for all pixels at once, s² by (restricted) maximum likelihood.

Wheeler+2020 Eqs. 3 and 5. At fixed s²_λ the model is linear in θ_λ, so θ̂_λ|s² is a
weighted least-squares solution with weights w_nλ = 1 / (σ²_nλ + s²_λ). We form the normal
equations of every pixel with two matrix products across the whole training set (no loop
over pixels) and solve them as one batch of K×K systems.

s²_λ maximises the profile likelihood of Eq. 5 — which is biased low by roughly the fraction
K/N of degrees of freedom that θ absorbs — or, by default, the restricted (REML) likelihood,
which adds ½ ln det(Xᵀ W X) and removes that bias. The 1-D maximisation is a golden-section
search in ln s, run for all pixels of a chunk in lock-step.

Weights are written ``w = ivar / (1 + ivar s²)`` so that ivar = 0 (σ = ∞) gives w = 0 and never
an infinite log-likelihood; stars with ivar = 0 at a pixel simply drop out of that pixel.
"""

from __future__ import annotations

import numpy as np

from .vectorizer import pair_indices

GOLDEN = 0.5 * (np.sqrt(5.0) - 1.0)


def scatter_weights(ivar, s2):
    """w = 1 / (σ² + s²) written as ivar / (1 + ivar s²).

    ivar : (N, P) ; s2 : (P,)  ->  (N, P), zero wherever ivar is zero.
    """
    return ivar / (1.0 + ivar * s2)


def normal_equations(X, y, w, pairs=None):
    """Per-pixel weighted normal equations Aθ = r for all pixels in two matrix products.

    Parameters
    ----------
    X : (N, K) float
        Design matrix η(ℓ_n).
    y : (N, P) float
        Flux, zero where w is zero.
    w : (N, P) float
        Weights.

    Returns
    -------
    A : (P, K, K) float
        Xᵀ W_λ X for every pixel λ.
    rhs : (P, K) float
        Xᵀ W_λ y_λ.
    """
    K = X.shape[1]
    i, j = pairs if pairs is not None else pair_indices(K)
    Z = X[:, i] * X[:, j]  # (N, K(K+1)/2): each column one entry of the symmetric product
    flat = w.T @ Z  # (P, K(K+1)/2)
    A = np.empty((w.shape[1], K, K))
    A[:, i, j] = flat
    A[:, j, i] = flat
    rhs = (w * y).T @ X  # (P, K)
    return A, rhs


def _apply_term_mask(A, rhs, active, penalty=None):
    """Drop inactive terms (censoring): their rows/columns become identity and θ is exactly 0."""
    if penalty is not None:
        K = A.shape[1]
        A = A.copy()
        A[:, np.arange(K), np.arange(K)] += penalty
    if active is None:
        return A, rhs
    outer = active[:, :, None] & active[:, None, :]
    A = np.where(outer, A, 0.0)
    diag = np.arange(A.shape[1])
    A[:, diag, diag] = np.where(active, A[:, diag, diag], 1.0)
    rhs = np.where(active, rhs, 0.0)
    return A, rhs


def _solve(A, rhs):
    """Batched SPD solve: θ (P, K) and ln det A (P,) from one Cholesky and one LU; NaN where singular."""
    ok = np.ones(A.shape[0], dtype=bool)
    try:
        Lc = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        Lc = np.zeros_like(A)
        for p in range(A.shape[0]):  # rare: isolate the singular pixels
            try:
                Lc[p] = np.linalg.cholesky(A[p])
            except np.linalg.LinAlgError:
                ok[p] = False
                Lc[p] = np.eye(A.shape[1])
    A = np.where(ok[:, None, None], A, np.eye(A.shape[1]))
    try:
        theta = np.linalg.solve(A, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        # numerically singular systems that slipped through the Cholesky (a pixel with fewer
        # usable stars than terms): solve pixel by pixel, the singular ones become NaN
        theta = np.full(rhs.shape, np.nan)
        for p in range(A.shape[0]):
            try:
                theta[p] = np.linalg.solve(A[p], rhs[p])
            except np.linalg.LinAlgError:
                ok[p] = False
    with np.errstate(divide="ignore", invalid="ignore"):
        logdet = 2.0 * np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum(axis=1)
    ok &= np.isfinite(logdet) & np.all(np.isfinite(theta), axis=1)
    theta[~ok] = np.nan
    logdet[~ok] = np.nan
    return theta, logdet


def solve_theta(X, y, ivar, s2, active=None, penalty=None, pairs=None):
    """θ̂|s² for every pixel (closed form), with the pieces of the likelihood.

    Parameters
    ----------
    X : (N, K) float
        Design matrix (columns may be pre-scaled for conditioning).
    y : (N, P) float
        Flux, zero wherever ivar is zero.
    ivar : (N, P) float
        Inverse variance, 0 for bad pixels.
    s2 : (P,) float
        Model scatter squared.
    active : (P, K) bool, optional
        Terms allowed at each pixel (censoring); inactive θ are exactly 0.
    penalty : (P, K) float, optional
        Diagonal ridge added to the normal equations (used by the L1 iteration).

    Returns
    -------
    theta : (P, K) float
    chi2 : (P,) float
        Σ_n w (y − Xθ)².
    log_var : (P,) float
        Σ_n ln(σ² + s²) over stars with ivar > 0.
    logdet : (P,) float
        ln det(Xᵀ W X) over active terms (the REML correction).
    """
    w = scatter_weights(ivar, s2)
    A, rhs = normal_equations(X, y, w, pairs)
    A, rhs = _apply_term_mask(A, rhs, active, penalty)
    theta, logdet = _solve(A, rhs)
    resid = y - X @ theta.T
    chi2 = np.einsum("np,np->p", w, resid * resid)
    valid = ivar > 0
    log_var = -np.log(np.where(valid, w, 1.0)).sum(axis=0)
    return theta, chi2, log_var, logdet


def neg_log_likelihood(chi2, log_var, logdet, method="reml"):
    """−ln L of Wheeler+2020 Eq. 5 (``"ml"``) or its restricted form (``"reml"``), per pixel."""
    nll = 0.5 * (chi2 + log_var)
    if method == "reml":
        nll = nll + 0.5 * logdet
    return nll


def _golden_ln_s(nll_at, lo, hi, n_iter):
    """Golden-section minimisation of nll_at(ln s) over [lo, hi], vectorised over pixels."""
    a, b = lo, hi
    c = b - GOLDEN * (b - a)
    d = a + GOLDEN * (b - a)
    fc, fd = nll_at(c), nll_at(d)
    for _ in range(n_iter):
        left = fc < fd  # minimum lies in [a, d]
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        new = np.where(left, b - GOLDEN * (b - a), a + GOLDEN * (b - a))
        fnew = nll_at(new)
        c, d, fc, fd = (
            np.where(left, new, d),
            np.where(left, c, new),
            np.where(left, fnew, fd),
            np.where(left, fc, fnew),
        )
    return np.where(fc < fd, c, d), np.minimum(fc, fd)


def fit_scatter(X, y, ivar, active=None, method="reml", s_min=1e-6, n_iter=16, pairs=None, init_s2=None, init_width=0.7):
    """Maximum-likelihood s² per pixel by golden-section search in ln s, all pixels in lock-step.

    Parameters
    ----------
    X : (N, K) ; y, ivar : (N, P) ; active : (P, K) bool or None
    method : {"reml", "ml"}
        ``"ml"`` is Wheeler+2020 Eq. 5 as written; ``"reml"`` adds ½ ln det(XᵀWX), the
        restricted-likelihood correction for the degrees of freedom used by θ.
    s_min : float
        Below this, s is reported as 0 when s² = 0 is at least as likely.
    n_iter : int
        Golden-section iterations over the wide bracket [ln s_min, ln 2·spread]
        (16 locate ln s to ~0.006, i.e. s to ~0.6 %, far below its statistical error).
    init_s2 : (P,) float, optional
        A previous estimate (e.g. from the full training set, for cross-validation folds):
        the search then starts in ln s0 ± ``init_width`` with fewer iterations; pixels whose
        optimum lands on that narrow bracket's edge are searched again over the wide one.

    Returns
    -------
    s2 : (P,) float
    theta : (P, K) float
        θ̂ at the returned s².
    """
    if method not in ("reml", "ml"):
        raise ValueError(f"scatter method must be 'reml' or 'ml', got {method!r}")
    P = y.shape[1]

    def nll_at(ln_s, cols=slice(None)):
        s2 = np.exp(2.0 * ln_s)
        act = None if active is None else active[cols]
        _, chi2, log_var, logdet = solve_theta(X, y[:, cols], ivar[:, cols], s2, act, pairs=pairs)
        f = neg_log_likelihood(chi2, log_var, logdet, method)
        return np.where(np.isfinite(f), f, np.inf)

    def wide(cols):
        yy, vv = y[:, cols], ivar[:, cols]
        valid = vv > 0
        n_valid = np.maximum(valid.sum(axis=0), 1)
        mean = (yy * valid).sum(axis=0) / n_valid
        spread = np.sqrt(((yy - mean) ** 2 * valid).sum(axis=0) / n_valid)
        lo = np.full(yy.shape[1], np.log(s_min))
        hi = np.log(np.maximum(2.0 * spread, 10 * s_min))
        return _golden_ln_s(lambda u: nll_at(u, cols), lo, hi, n_iter)

    if init_s2 is None:
        ln_s, f_best = wide(slice(None))
    else:
        centre = np.log(np.maximum(np.sqrt(np.asarray(init_s2, dtype=float)), 10 * s_min))
        n_narrow = int(np.ceil(np.log(0.01 / (2 * init_width)) / np.log(GOLDEN)))
        ln_s, f_best = _golden_ln_s(nll_at, centre - init_width, centre + init_width, n_narrow)
        edge = np.abs(np.abs(ln_s - centre) - init_width) < 0.05
        if edge.any():
            cols = np.flatnonzero(edge)
            ln_s[cols], f_best[cols] = wide(cols)
    s2 = np.exp(2.0 * ln_s)
    # the likelihood may peak at s = 0 (pure measurement noise): compare with that boundary
    f_zero = nll_at(np.full(P, -np.inf))
    s2 = np.where(f_zero <= f_best, 0.0, s2)
    theta = solve_theta(X, y, ivar, s2, active, pairs=pairs)[0]
    return s2, theta


def l1_theta(X, y, ivar, s2, regularization, active=None, term_weights=None, n_iter=30, eps=1e-10, pairs=None):
    """θ minimising Σ w r² + Λ Σ_{k>0} |θ_k| at fixed s² (Casey+2016, "The Cannon 2").

    Solved by iteratively reweighted least squares: |θ| ≈ θ² / |θ_old|, one batched
    solve per iteration. The constant term is not penalised. Coefficients that the
    penalty drives below ``eps`` relative to the largest are set to exactly 0.

    regularization : (P,) float, Λ per pixel.
    term_weights : (K,) float, optional
        Multiplies Λ per term (e.g. 1/column scale when X's columns were equilibrated,
        so that the penalty acts on θ in scaled-label units).
    """
    K = X.shape[1]
    theta = solve_theta(X, y, ivar, s2, active, pairs=pairs)[0]
    lam = np.broadcast_to(np.asarray(regularization, float), (y.shape[1],))[:, None]
    if term_weights is not None:
        lam = lam * np.asarray(term_weights, float)[None, :]
    mask = np.ones(K, dtype=bool)
    mask[0] = False
    for _ in range(n_iter):
        scale = np.abs(theta) + eps
        # ∂/∂θ [Σ w r² + Λ|θ|] = 2(Aθ − b) + Λ θ/|θ_old|  =>  (A + Λ / (2|θ_old|)) θ = b
        penalty = np.where(mask, lam / (2.0 * scale), 0.0)
        theta = solve_theta(X, y, ivar, s2, active, penalty=penalty, pairs=pairs)[0]
    tiny = np.abs(theta) < 1e-8 * np.max(np.abs(theta), axis=1, keepdims=True)
    theta[tiny & mask] = 0.0
    return theta
