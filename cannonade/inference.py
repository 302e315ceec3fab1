"""Inference: labels of many stars at once, by Levenberg–Marquardt on the reduced χ² polynomial.

For a model linear in θ with polynomial terms, a star's χ² (Nandakumar+2022 Eq. 4, with the
model scatter s² in the variance as in Wheeler+2020 Eq. 3)

    χ²(ℓ) = Σ_λ w_λ (f_λ − θ_λ·η(ℓ))²,    w_λ = 1 / (σ²_λ + s²_λ)

expands to ``c − 2 η(ℓ)·b + η(ℓ)ᵀ M η(ℓ)`` with ``b = Θᵀ(w f)`` (K,), ``M = Θᵀ diag(w) Θ``
(K, K) and ``c = Σ w f²``. For a chunk of stars, M for every star is one matrix product
``w @ T`` with ``T_λ = upper-triangle(θ_λ θ_λᵀ)``; after that each Gauss–Newton step costs
O(K² L) per star, independent of the number of pixels. The Gauss–Newton matrix ``JᵀWJ`` is
exactly ``Dᵀ M D`` with ``D = ∂η/∂ℓ``; its inverse is the label covariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .training import scatter_weights
from .vectorizer import design_jacobian, design_matrix, hessian_contract, pair_indices, unpack_symmetric


@dataclass
class ReducedProblem:
    """Sufficient statistics of a chunk of stars' χ² (see module docstring).

    M : (B, K, K), b : (B, K), c : (B,), n_pixels : (B,) valid pixels per star.
    """

    M: np.ndarray
    b: np.ndarray
    c: np.ndarray
    n_pixels: np.ndarray
    w: np.ndarray | None = None
    f: np.ndarray | None = None


def reduce_chi2(theta, s2, flux, ivar, theta_pairs=None):
    """Reduce a chunk of spectra to the χ² polynomial's coefficients.

    Parameters
    ----------
    theta : (P, K) float
    s2 : (P,) float
    flux, ivar : (B, P) float
        Non-finite flux is treated as ivar = 0.
    theta_pairs : (P, K(K+1)/2) float, optional
        Precomputed upper-triangle products of θ (reused across chunks).
    """
    K = theta.shape[1]
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar <= 0)
    ivar = np.where(bad, 0.0, ivar)
    w = scatter_weights(ivar, s2)
    f = np.where(bad, 0.0, flux)
    if theta_pairs is None:
        i, j = pair_indices(K)
        theta_pairs = theta[:, i] * theta[:, j]
    M = unpack_symmetric(w @ theta_pairs, K)
    wf = w * f
    b = wf @ theta
    c = np.einsum("bp,bp->b", wf, f)
    return ReducedProblem(M=M, b=b, c=c, n_pixels=(~bad).sum(axis=1), w=w, f=f)


def _chi2_terms(eta, M, b, c):
    """χ²(η) = c − 2 b·η + ηᵀMη for stacked problems (broadcasting): eta (..., K), M (..., K, K)."""
    Meta = (M @ eta[..., None])[..., 0]
    chi2 = c - 2.0 * np.sum(b * eta, axis=-1) + np.sum(eta * Meta, axis=-1)
    return chi2, Meta


def linear_start(problem, exponents, ridge=1e-8, clip=5.0):
    """The ivar-weighted linear-algebra estimate: solve M η = b for all K terms, keep the linear ones.

    Returns (B, L) scaled labels (clipped to ±clip; 0 where the solve fails).
    """
    M, b = problem.M, problem.b
    K = M.shape[1]
    scale = np.sqrt(np.clip(np.diagonal(M, axis1=1, axis2=2), 1e-300, None))
    Ms = M / scale[:, :, None] / scale[:, None, :] + ridge * np.eye(K)
    try:
        eta = np.linalg.solve(Ms, (b / scale)[..., None])[..., 0] / scale
    except np.linalg.LinAlgError:
        eta = np.zeros_like(b)
    linear = [np.flatnonzero((exponents.sum(axis=1) == 1) & (exponents[:, l] == 1))[0] for l in range(exponents.shape[1])]
    start = eta[:, linear]
    start = np.where(np.isfinite(start), np.clip(start, -clip, clip), 0.0)
    return start


def starting_points(problem, exponents):
    """Starts per star: linear-algebra estimate, training mean (0), and the ±1σ corners.

    Returns (B, S, L) scaled labels, S = 4; names in ``START_NAMES``.
    """
    B, L = problem.b.shape[0], exponents.shape[1]
    lin = linear_start(problem, exponents)
    zeros = np.zeros((B, L))
    return np.stack([lin, zeros, zeros + 1.0, zeros - 1.0], axis=1)


START_NAMES = ("linear", "mean", "+1sigma", "-1sigma")


def levenberg_marquardt(problem, exponents, starts, max_iter=100, tol_chi2=1e-5, tol_step=1e-9):
    """Minimise every star's reduced χ² from every start, all at once.

    Parameters
    ----------
    problem : ReducedProblem of B stars
    exponents : (K, L) int
    starts : (B, S, L) float, scaled labels

    Returns
    -------
    labels : (B, S, L) float
    chi2 : (B, S) float   (from the reduced polynomial)
    converged : (B, S) bool
    n_iter : (B, S) int
    """
    B, S, L = starts.shape
    x = starts.copy()
    lam = np.full((B, S), 1e-3)
    converged = np.zeros((B, S), dtype=bool)
    stalled = np.zeros((B, S), dtype=bool)
    n_iter = np.zeros((B, S), dtype=int)
    eye = np.eye(L)
    # working set of stars with an unfinished start; its M (B', 1, K, K) broadcasts over the starts
    # and is re-gathered only when the set has halved, so (K, K) matrices are rarely copied
    work = np.arange(B)
    Mw, bw, cw = problem.M[:, None], problem.b[:, None, :], problem.c[:, None]
    eta = design_matrix(x, exponents)
    chi2, Meta = _chi2_terms(eta, Mw, bw, cw)
    stalled |= ~np.isfinite(chi2)
    for _ in range(max_iter):
        busy = ~(converged[work] | stalled[work])
        star_busy = busy.any(axis=1)
        if not star_busy.any():
            break
        if star_busy.sum() < 0.5 * star_busy.size:
            work, Mw, bw, cw = work[star_busy], Mw[star_busy], bw[star_busy], cw[star_busy]
            busy = busy[star_busy]
        xw = x[work]
        D = design_jacobian(xw, exponents)  # (B', S, K, L)
        Dt = np.swapaxes(D, -1, -2)
        r = bw - Meta[work]
        grad = (Dt @ r[..., None])[..., 0]  # Jᵀ W r
        H_gn = Dt @ (Mw @ D)  # Jᵀ W J
        diag = np.maximum(np.diagonal(H_gn, axis1=-2, axis2=-1), 1e-12)
        damp = lam[work][..., None, None] * eye * diag[..., None, :]
        # two candidate steps, the better one taken: Gauss–Newton (a descent direction, robust far
        # from the minimum) and full Newton, ½∂²χ²/∂ℓ² = JᵀWJ − Σ_k r_k ∂²η_k (quadratic convergence
        # near it, where Gauss–Newton alone crawls on spectra the polynomial does not fit exactly)
        H_full = H_gn - hessian_contract(xw, exponents, r)
        best_chi2 = np.full(chi2[work].shape, np.inf)
        step = np.zeros_like(grad)
        x_new = xw.copy()
        eta_new = np.zeros_like(Meta[work])
        Meta_new = np.zeros_like(Meta[work])
        for H in (H_gn, H_full):
            try:
                st = np.linalg.solve(H + damp, grad[..., None])[..., 0]
            except np.linalg.LinAlgError:
                st = np.zeros_like(grad)
                for i, j in np.ndindex(grad.shape[:2]):
                    st[i, j] = np.linalg.lstsq(H[i, j] + damp[i, j], grad[i, j], rcond=None)[0]
            st = np.where(np.isfinite(st), st, 0.0)
            xc = xw + st
            ec = design_matrix(xc, exponents)
            cc, mc = _chi2_terms(ec, Mw, bw, cw)
            cc = np.where(np.isfinite(cc), cc, np.inf)
            take = cc < best_chi2
            best_chi2 = np.where(take, cc, best_chi2)
            step[take], x_new[take], eta_new[take], Meta_new[take] = st[take], xc[take], ec[take], mc[take]
        chi2_new = best_chi2
        better = busy & np.isfinite(chi2_new) & (chi2_new <= chi2[work])
        dchi2 = chi2[work] - chi2_new
        small_step = np.max(np.abs(step), axis=-1) < tol_step
        done = busy & ((better & (dchi2 < tol_chi2 * np.maximum(1.0, 1e-9 * chi2_new))) | small_step)
        # write back (fancy-index assignment into the full arrays)
        xb, chib, Metab, lamb = x[work], chi2[work], Meta[work], lam[work]
        xb[better], chib[better], Metab[better] = x_new[better], chi2_new[better], Meta_new[better]
        lamb = np.where(better, np.maximum(lamb / 3.0, 1e-12), np.where(busy, lamb * 4.0, lamb))
        x[work], chi2[work], Meta[work], lam[work] = xb, chib, Metab, lamb
        n_iter[work] += busy
        converged[work] |= done
        # a start whose damping exploded cannot move any more: it stops, unconverged
        stalled[work] |= busy & (lamb > 1e12)
    return x, chi2, converged, n_iter


def covariance(problem, exponents, labels):
    """(JᵀWJ)⁻¹ at the solution, in scaled units; NaN where singular.

    labels : (B, L) scaled  ->  (B, L, L)
    """
    D = design_jacobian(labels, exponents)
    H = np.swapaxes(D, 1, 2) @ (problem.M @ D)
    cov = np.full_like(H, np.nan)
    for_ok = np.all(np.isfinite(H), axis=(1, 2))
    if for_ok.any():
        try:
            cov[for_ok] = np.linalg.inv(H[for_ok])
        except np.linalg.LinAlgError:
            for k in np.flatnonzero(for_ok):
                try:
                    cov[k] = np.linalg.inv(H[k])
                except np.linalg.LinAlgError:
                    pass
    return cov


def infer_chunk(theta, s2, exponents, flux, ivar, theta_pairs=None, max_iter=100):
    """Best-of-starts labels for one chunk of stars, in scaled units.

    Returns dict with labels (B, L), cov (B, L, L), chi2 (B,) from the pixels,
    dof (B,), converged (B,), start (B,) index into START_NAMES, n_iter (B,).
    """
    problem = reduce_chi2(theta, s2, flux, ivar, theta_pairs)
    starts = starting_points(problem, exponents)
    x, chi2_s, conv_s, nit_s = levenberg_marquardt(problem, exponents, starts, max_iter=max_iter)
    # lowest χ² wins among converged starts; among all starts if none converged
    score = np.where(conv_s, chi2_s, np.inf)
    none_conv = ~conv_s.any(axis=1)
    score[none_conv] = np.where(np.isfinite(chi2_s[none_conv]), chi2_s[none_conv], np.inf)
    best = np.argmin(score, axis=1)
    rows = np.arange(x.shape[0])
    labels = x[rows, best]
    converged = conv_s[rows, best]
    n_iter = nit_s[rows, best]
    L = exponents.shape[1]
    empty = problem.n_pixels <= L
    labels[empty] = np.nan
    converged[empty] = False
    cov = covariance(problem, exponents, np.where(empty[:, None], 0.0, labels))
    cov[empty] = np.nan
    # exact χ² from the pixels (the polynomial form loses digits to cancellation)
    r = problem.f - design_matrix(np.where(empty[:, None], 0.0, labels), exponents) @ theta.T
    r *= r
    chi2 = np.einsum("bp,bp->b", problem.w, r)
    chi2[empty] = np.nan
    return dict(
        labels=labels,
        cov=cov,
        chi2=chi2,
        dof=problem.n_pixels - L,
        converged=converged,
        start=best,
        n_iter=n_iter,
    )
