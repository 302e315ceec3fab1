"""Training: θ by weighted least squares for all pixels at once, s² by (restricted) maximum likelihood.

Wheeler+2020 Eqs. 3 and 5. At fixed s²_λ the model is linear in θ_λ, so θ̂_λ|s² is a
weighted least-squares solution with weights w_nλ = 1 / (σ²_nλ + s²_λ). We form the normal
equations of every pixel with two matrix products across the whole training set (no loop
over pixels; the K×K normal matrix is gathered from the distinct monomials among the term
products, which halves the work for a quadratic model) and solve them as one batch of K×K
systems.

s²_λ maximises the profile likelihood of Eq. 5 — which is biased low by roughly the fraction
K/N of degrees of freedom that θ absorbs — or, by default, the restricted (REML) likelihood,
which adds ½ ln det(Xᵀ W X) and removes that bias. The maximisation is a fixed-point
iteration on the score equation (see :func:`fit_scatter`), run for all pixels of a chunk in
lock-step: a few matrix products in all, instead of one per trial s² of a line search.

Weights are written ``w = ivar / (1 + ivar s²)`` so that ivar = 0 (σ = ∞) gives w = 0 and never
an infinite log-likelihood; stars with ivar = 0 at a pixel simply drop out of that pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cannonade.cannon.checks import clean_spectra
from cannonade.exceptions import ParameterError
from cannonade.cannon.vectorizer import collapse_to_monomials, monomial_plan, pair_indices, symmetric_gather_index
from cannonade.util import progress


def scatter_weights(ivar, s2, out=None):
    """w = 1 / (σ² + s²) written as ivar / (1 + ivar s²).

    ivar : (N, P) ; s2 : (P,)  ->  (N, P), zero wherever ivar is zero.
    out : (N, P) float, optional; written in place (no temporaries: used on hot paths).
    """
    if out is None:
        return ivar / (1.0 + ivar * s2)
    np.multiply(ivar, s2, out=out)
    out += 1.0
    return np.divide(ivar, out, out=out)


@dataclass(frozen=True)
class NormalPlan:
    """How every pixel's XᵀWX is built from one matrix product over distinct monomials.

    Attributes
    ----------
    Z : (N, R) float
        x_ni x_nj for one representative term pair (i, j) per distinct monomial.
    gather : (K, K) int
        Monomial index of each entry of XᵀWX.
    factor : (K, K) float
        x_nk x_nj = factor_kj · Z[n, gather_kj] (the design's columns may be rescaled, so
        pairs sharing a monomial differ by a constant).
    """

    Z: np.ndarray
    gather: np.ndarray
    factor: np.ndarray


def normal_plan(X, exponents=None):
    """Build the :class:`NormalPlan` of design matrix X (N, K) whose columns are monomials
    with ``exponents`` (K, L), each possibly divided by a constant. Without ``exponents``
    every term pair is its own "monomial" (no saving, any X)."""
    K = X.shape[1]
    if exponents is None:
        rep_i, rep_j = pair_indices(K)
        gather = symmetric_gather_index(K)
    else:
        rep_i, rep_j, gather = monomial_plan(exponents)
    Z = X[:, rep_i] * X[:, rep_j]
    factor = np.ones((K, K)) if exponents is None else _monomial_factor(X, Z, gather)
    return NormalPlan(Z=Z, gather=gather, factor=factor)


def _monomial_factor(X, Z, gather):
    """factor_kj = x_nk x_nj / Z[n, gather_kj], read at the star where |Z[n, gather_kj]| is largest."""
    K = X.shape[1]
    n_kj = np.argmax(np.abs(Z), axis=0)[gather]  # (K, K)
    kk, jj = np.meshgrid(np.arange(K), np.arange(K), indexing="ij")
    num = X[n_kj, kk] * X[n_kj, jj]
    den = Z[n_kj, gather]
    return np.where(den != 0, num / np.where(den != 0, den, 1.0), 1.0)


def normal_equations(X, y, w, plan=None):
    """Per-pixel weighted normal equations Aθ = r for all pixels in two matrix products.

    Parameters
    ----------
    X : (N, K) float
        Design matrix η(ℓ_n).
    y : (N, P) float
        Flux, zero where w is zero.
    w : (N, P) float
        Weights.
    plan : NormalPlan, optional
        From :func:`normal_plan`; with the design's exponents it builds A from the distinct
        monomials only (about half the work of all term pairs for a quadratic model).

    Returns
    -------
    A : (P, K, K) float
        Xᵀ W_λ X for every pixel λ.
    rhs : (P, K) float
        Xᵀ W_λ y_λ.
    """
    plan = plan if plan is not None else normal_plan(X)
    flat = w.T @ plan.Z  # (P, R): every weighted monomial sum at once
    A = flat[:, plan.gather] * plan.factor
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


def _inverse(A, max_vif=1e12):
    """Batched inverse of SPD matrices (P, K, K) and a mask of the usable ones (P,).

    A pixel is unusable when its matrix is singular or so ill-conditioned that some term's
    variance-inflation factor A_kk (A⁻¹)_kk exceeds ``max_vif`` (its θ would be noise).
    """
    try:
        Ainv = np.linalg.inv(A)
    except np.linalg.LinAlgError:  # rare: an exactly singular pixel; isolate it
        Ainv = np.empty_like(A)
        for p in range(A.shape[0]):
            try:
                Ainv[p] = np.linalg.inv(A[p])
            except np.linalg.LinAlgError:
                Ainv[p] = np.nan
    d = np.diagonal(Ainv, axis1=1, axis2=2)
    vif = d * np.diagonal(A, axis1=1, axis2=2)
    ok = np.all(np.isfinite(Ainv), axis=(1, 2)) & np.all(d > 0, axis=1) & np.all(vif < max_vif, axis=1)
    return Ainv, ok


def solve_theta(X, y, ivar, s2, active=None, penalty=None, plan=None):
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
    plan : NormalPlan, optional

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
    A, rhs = normal_equations(X, y, w, plan)
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


def score_s2(ivar, e, s2):
    """d(−2 ln L)/ds² = Σ_n w_n (1 − w_n e_n) per pixel, with a well-scaled form for root finding.

    With e_n = r_n² this is the derivative of Wheeler+2020 Eq. 5 at θ̂(s²) (θ̂ drops out by
    the envelope theorem); with e_n = r_n² + x_nᵀ(XᵀWX)⁻¹x_n it is that of the restricted
    likelihood (d ln det XᵀWX / ds² = −Σ_n w_n² x_nᵀ(XᵀWX)⁻¹x_n).

    Parameters
    ----------
    ivar, e : (N, P) float
    s2 : (P,) float

    Returns
    -------
    g : (P,) float
        The score.
    h, dh : (P,) float
        h = g / Σ w² and dh/ds². h ≈ s² + ⟨σ²⟩ − ⟨e⟩ (weighted means) is nearly linear in s²,
        so Newton's method on h converges in a few steps where Newton on g overshoots.
    """
    w = scatter_weights(ivar, s2)
    w2 = w * w
    S1, S2 = w.sum(axis=0), w2.sum(axis=0)
    E2 = np.einsum("np,np->p", w2, e)
    S3 = np.einsum("np,np->p", w2, w)
    E3 = np.einsum("np,np->p", w2 * w, e)
    g = S1 - E2
    dg = 2.0 * E3 - S2
    with np.errstate(divide="ignore", invalid="ignore"):
        h = g / S2
        dh = dg / S2 + 2.0 * g * S3 / (S2 * S2)
    return g, h, dh


def solve_s2(ivar, e, s2_start, s_min=1e-6, tol=1e-5, max_iter=60):
    """Root s² ≥ 0 of :func:`score_s2` for fixed e, all pixels in lock-step.

    Safeguarded Newton on the near-linear h inside a bracket that always holds a sign
    change: g(s²_min) < 0 (else s² = 0, the likelihood peaks at the boundary) and
    g(max_n e_n) > 0 (there every w_n e_n < 1).

    ivar, e : (N, P) ; s2_start : (P,)  ->  s2 : (P,)
    """
    P = e.shape[1]
    valid = ivar > 0
    t_lo = np.full(P, s_min * s_min)
    g_lo = score_s2(ivar, e, t_lo)[0]
    hi = np.where(valid, e, 0.0).max(axis=0)
    out = np.zeros(P)
    todo = np.flatnonzero((g_lo < 0) & (hi > t_lo))
    if todo.size == 0:
        return out
    iv, ee = ivar[:, todo], e[:, todo]
    lo, hi = t_lo[todo], hi[todo]
    t = np.clip(np.nan_to_num(s2_start[todo], nan=0.0), lo, hi)
    live = np.arange(todo.size)
    for _ in range(max_iter):
        tl = t[live]
        if live.size == todo.size:
            g, h, dh = score_s2(iv, ee, tl)
        else:
            g, h, dh = score_s2(iv[:, live], ee[:, live], tl)
        neg = g < 0
        lo[live] = np.where(neg, tl, lo[live])
        hi[live] = np.where(neg, hi[live], tl)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = tl - h / dh
        inside = np.isfinite(new) & (new > lo[live]) & (new < hi[live])
        # outside the bracket: bisect it geometrically (the bracket may span decades)
        new = np.where(inside, new, np.sqrt(lo[live] * hi[live]))
        done = np.abs(new - tl) <= tol * new
        t[live] = new
        live = live[~done]
        if live.size == 0:
            break
    out[todo] = t
    return out


def fit_scatter(X, y, ivar, active=None, method="reml", s_min=1e-6, plan=None, init_s2=None, tol=1e-3, max_iter=30):
    """Maximum-likelihood s² per pixel and θ̂ there, all pixels in lock-step.

    Fixed-point iteration on the likelihood's score: at the current s², solve θ̂ (one
    matrix product for all pixels), take the squared residuals e_n = r_n² (plus, for
    REML, the leverage term x_nᵀ(XᵀWX)⁻¹x_n — a second product), then solve the 1-D score
    equation Σ_n w_n(1 − w_n e_n) = 0 for s² with e held fixed (cheap, no products). A fixed
    point satisfies the exact score equation of Eq. 5 (or of its restricted form), and
    because θ̂ and the leverages depend only weakly on s² the iteration converges in a few
    steps. Pixels that have converged leave the iteration.

    Parameters
    ----------
    X : (N, K) ; y, ivar : (N, P) ; active : (P, K) bool or None
    method : {"reml", "ml"}
        ``"ml"`` is Wheeler+2020 Eq. 5 as written; ``"reml"`` adds ½ ln det(XᵀWX), the
        restricted-likelihood correction for the degrees of freedom used by θ.
    s_min : float
        Below this s is reported as 0 (the likelihood peaks at, or indistinguishably near,
        s² = 0: pure measurement noise).
    plan : NormalPlan, optional
    init_s2 : (P,) float, optional
        Starting point (e.g. from the full training set, for cross-validation folds).
    tol : float
        Stop when the estimated relative error left in s is below this (0.1 %; the statistical
        error of s is several per cent). θ̂ is that of the last iterate, whose s differs from
        the returned one by the last step (typically < 0.5 %), a negligible change in θ̂.
    max_iter : int

    Returns
    -------
    s2 : (P,) float
        NaN at pixels whose normal equations are singular.
    theta : (P, K) float
        θ̂ at the last iterate, whose s differs from the returned one by the last step.
    """
    if method not in ("reml", "ml"):
        raise ParameterError(f"scatter method must be 'reml' or 'ml', got {method!r}")
    plan = plan if plan is not None else normal_plan(X)
    P = y.shape[1]
    K = X.shape[1]
    t = np.zeros(P) if init_s2 is None else np.nan_to_num(np.asarray(init_s2, dtype=float), nan=0.0).copy()
    s2_out = np.full(P, np.nan)
    theta_out = np.full((P, K), np.nan)
    live = np.arange(P)
    prev_delta = np.full(P, np.nan)
    cold = init_s2 is None
    for it in range(max_iter):
        yy, vv = y[:, live], ivar[:, live]
        act = None if active is None else active[live]
        w = scatter_weights(vv, t[live])
        A, rhs = normal_equations(X, yy, w, plan)
        A, rhs = _apply_term_mask(A, rhs, act)
        if cold and it == 0:
            # from a cold start (s² = 0) the first step only has to land near the optimum:
            # take it without the inverse (θ̂ by one solve, average leverages)
            try:
                theta = np.linalg.solve(A, rhs[..., None])[..., 0]
            except np.linalg.LinAlgError:  # a singular pixel: the careful path isolates it
                theta = _solve(A, rhs)[0]
            r = yy - X @ np.nan_to_num(theta).T
            e = r * r
            if method == "reml":
                # the leverages average K/N: x_nᵀA⁻¹x_n ≈ (K/N) / w_n stands in for them here
                n_act = K if act is None else act.sum(axis=1)
                n_ok = np.maximum((vv > 0).sum(axis=0), 1)
                with np.errstate(divide="ignore"):
                    e += np.where(vv > 0, (n_act / n_ok) / np.where(vv > 0, vv, 1.0), 0.0)
            t[live] = solve_s2(vv, e, t[live], s_min=s_min)
            continue
        Ainv, ok = _inverse(A)
        theta = np.einsum("pkj,pj->pk", Ainv, rhs)
        r = yy - X @ np.where(ok[:, None], theta, 0.0).T
        e = r * r
        if method == "reml":
            B = Ainv * plan.factor
            if act is not None:  # inactive terms carry an identity block, not part of XᵀWX
                B = B * (act[:, :, None] & act[:, None, :])
            B[~ok] = 0.0
            e += plan.Z @ collapse_to_monomials(B, plan.gather).T  # x_nᵀ A⁻¹ x_n, (N, P_live)
        t_new = solve_s2(vv, e, t[live], s_min=s_min)
        s_old, s_new = np.sqrt(t[live]), np.sqrt(t_new)
        delta = np.abs(s_new - s_old) / np.maximum(s_new, s_min)
        # the iteration contracts geometrically (rate ρ ~ K/N): the error left in t_new is
        # about δ ρ/(1 − ρ), with ρ read off the last two steps
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.clip(delta / prev_delta[live], 0.0, 0.9)
        err = np.where(np.isfinite(rho), delta * rho / (1.0 - rho), np.inf)
        done = ~ok | (delta <= 1e-9) | (err <= tol) | (it == max_iter - 1)
        fin = done & ok
        s2_out[live[fin]] = t_new[fin]
        theta_out[live[fin]] = theta[fin]  # θ̂ at the last iterate, within ~δ of s2 (negligible)
        t[live] = t_new
        prev_delta[live] = delta
        live = live[~done]
        if live.size == 0:
            break
    s2_out[s2_out < s_min * s_min] = 0.0
    return s2_out, theta_out


def l1_theta(X, y, ivar, s2, regularization, active=None, term_weights=None, n_iter=30, eps=1e-10, plan=None):
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
    theta = solve_theta(X, y, ivar, s2, active, plan=plan)[0]
    lam = np.broadcast_to(np.asarray(regularization, float), (y.shape[1],))[:, None]
    if term_weights is not None:
        lam = lam * np.asarray(term_weights, float)[None, :]
    mask = np.ones(K, dtype=bool)
    mask[0] = False
    for _ in range(n_iter):
        scale = np.abs(theta) + eps
        # ∂/∂θ [Σ w r² + Λ|θ|] = 2(Aθ − b) + Λ θ/|θ_old|  =>  (A + Λ / (2|θ_old|)) θ = b
        penalty = np.where(mask, lam / (2.0 * scale), 0.0)
        theta = solve_theta(X, y, ivar, s2, active, penalty=penalty, plan=plan)[0]
    tiny = np.abs(theta) < 1e-8 * np.max(np.abs(theta), axis=1, keepdims=True)
    theta[tiny & mask] = 0.0
    return theta


def auto_pixel_chunk(n_stars, elements=131072):
    """Pixels per training batch so that an (n_stars, batch) float64 array is ~1 MB (cache-sized)."""
    return int(np.clip(16 * round(elements / max(n_stars, 1) / 16), 16, 1024))


def train_pixels(X, exponents, flux, ivar, active=None, method="reml", s2=None, init_s2=None, regularization=0.0,
                 pixel_chunk=None, digest=None, show_progress=True):
    """θ and s² of every pixel, trained batch by batch of pixels (Wheeler+2020 Eqs. 3 and 5).

    The design's columns are equilibrated first (θ is unchanged, the K×K systems are well
    conditioned); bad pixels are cleaned one batch at a time (no full-size copies).

    Parameters
    ----------
    X : (N, K) float
        Design matrix η(ℓ) of the scaled training labels, constant column first.
    exponents : (K, L) int
    flux, ivar : (N, P) float
        Non-finite flux or ivar, and ivar ≤ 0, count as ivar = 0.
    active : (P, K) bool, optional
        Terms allowed at each pixel (censoring); the others get θ exactly 0.
    method : {"reml", "ml"}
        How s² is fitted (see :func:`fit_scatter`).
    s2 : (P,) float, optional
        Fixed scatter (θ only is solved).
    init_s2 : (P,) float, optional
        Starting point of the s² iteration.
    regularization : float or (P,) float
        L1 strength Λ (:func:`l1_theta` after s² is fitted without it).
    pixel_chunk : int, optional
        Pixels per batch (default :func:`auto_pixel_chunk`; no effect on the results).
    digest : hashlib hash, optional
        Updated with every cleaned batch's flux and ivar bytes (the training-set hash).
    show_progress : bool

    Returns
    -------
    theta : (P, K) float
        0 at pixels that are not ``pixel_ok`` and at censored terms.
    s2 : (P,) float
        0 at pixels that are not ``pixel_ok``.
    pixel_ok : (P,) bool
        False where the training set cannot constrain the pixel (fewer valid stars than
        active terms, or a singular system).
    """
    N, P = flux.shape
    K = X.shape[1]
    col = np.sqrt(np.mean(X * X, axis=0))
    col[col == 0] = 1.0
    Xs = X / col
    plan = normal_plan(Xs, exponents)
    reg = np.broadcast_to(np.asarray(regularization, dtype=float), (P,))
    theta, s2_out, n_valid = np.zeros((P, K)), np.zeros(P), np.zeros(P, dtype=int)
    pixel_chunk = pixel_chunk or auto_pixel_chunk(N)
    chunks = range(0, P, pixel_chunk)
    for p0 in progress(chunks, desc="train (pixel chunks)", total=len(chunks), disable=not show_progress or None):
        sl = slice(p0, min(P, p0 + pixel_chunk))
        act = None if active is None else active[sl]
        f_c, i_c = clean_spectra(flux[:, sl], ivar[:, sl])
        if digest is not None:
            digest.update(np.ascontiguousarray(f_c).tobytes() + np.ascontiguousarray(i_c).tobytes())
        n_valid[sl] = (i_c > 0).sum(axis=0)
        if s2 is None:
            init = None if init_s2 is None else np.asarray(init_s2, dtype=float)[sl]
            s2_c, th = fit_scatter(Xs, f_c, i_c, act, method=method, plan=plan, init_s2=init)
        else:
            s2_c = s2[sl]
            th = solve_theta(Xs, f_c, i_c, s2_c, act, plan=plan)[0]
        if np.any(reg[sl] > 0):
            th = l1_theta(Xs, f_c, i_c, s2_c, reg[sl], act, term_weights=1.0 / col, plan=plan)
        theta[sl], s2_out[sl] = th, s2_c
    theta = theta / col  # undo the column equilibration
    if active is not None:
        theta[~active] = 0.0
    n_active = K if active is None else active.sum(axis=1)
    pixel_ok = np.all(np.isfinite(theta), axis=1) & np.isfinite(s2_out) & (n_valid >= n_active)
    theta[~pixel_ok] = 0.0
    s2_out[~pixel_ok] = 0.0
    return theta, s2_out, pixel_ok
