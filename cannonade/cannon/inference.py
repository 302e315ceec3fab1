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

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cannonade.cannon.training import scatter_weights
from cannonade.cannon.vectorizer import design_jacobian, design_matrix, hessian_contract, pair_indices, unpack_symmetric


@dataclass
class ReducedProblem:
    """Sufficient statistics of a chunk of stars' χ² (see module docstring).

    M : (B, K, K) float64 (from a float32 product), M32 : the same in float32,
    b : (B, K), c : (B,), n_pixels : (B,) valid pixels per star.
    """

    M: np.ndarray
    b: np.ndarray
    c: np.ndarray
    n_pixels: np.ndarray
    M32: np.ndarray | None = None



def theta_products(theta):
    """Upper-triangle products θ_k θ_j of the non-constant terms, float32: (P, (K−1)K/2).

    Used by :func:`reduce_chi2`; compute once per model and reuse across chunks.
    """
    t = theta[:, 1:]
    i, j = pair_indices(t.shape[1])
    return np.ascontiguousarray((t[:, i] * t[:, j]).astype(np.float32))


def _prepare_block(flux, ivar, s2, theta0, w, f):
    """Weights and constant-subtracted flux of a block of stars, written into w, f (b, P).

    Non-finite or non-positive ivar and non-finite flux give w = 0 and f = 0.
    Returns the number of valid pixels per star (b,).
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if np.isfinite(ivar.sum()) and ivar.min() >= 0:
            # the usual case: ivar finite and ≥ 0, so w = 0 exactly where ivar = 0
            scatter_weights(ivar, s2, out=w)  # Wheeler+2020 Eq. 3 weights
            np.subtract(flux, theta0, out=f)
            bad = ~np.isfinite(f)
            if bad.any():  # NaN/inf flux counts as ivar = 0
                w[bad] = 0.0
                f[bad] = 0.0
            return np.count_nonzero(w, axis=1)
        good = (ivar > 0) & (ivar < np.inf) & np.isfinite(flux)
        np.copyto(w, np.where(good, scatter_weights(ivar, s2), 0.0))
        np.copyto(f, np.where(good, flux - theta0, 0.0))
        return good.sum(axis=1)


def reduce_chi2(theta, s2, flux, ivar, theta_pairs=None, block_elements=1 << 17, gemm_rows=512):
    """Reduce a chunk of spectra to the χ² polynomial's coefficients.

    The constant term (column 0 of θ, η_0 = 1) is moved to the data, f' = f − θ_0, so that
    M, b and c describe only the label-dependent part: χ² = c − 2 b·η + ηᵀMη with row and
    column 0 of M and b_0 zero. What is left is small and of one magnitude, so the large
    product M = Θ'ᵀ W Θ' is done in float32 (twice the speed) without losing the precision
    the labels need (labels move by < 1e-4 σ against a float64 product); b and c stay float64.

    No (B, P) array is kept: stars are prepared in cache-sized blocks and reduced by a
    matrix product per group of ``gemm_rows`` stars.

    Parameters
    ----------
    theta : (P, K) float
        Row 0 of the model's exponents is the constant term.
    s2 : (P,) float
    flux, ivar : (B, P) float
        Non-finite flux is treated as ivar = 0.
    theta_pairs : (P, (K−1)K/2) float32, optional
        :func:`theta_products` of θ (reused across chunks).
    block_elements : int
        Stars are prepared in blocks of about this many (star, pixel) elements.
    gemm_rows : int
        Stars per matrix product.
    """
    K = theta.shape[1]
    B, P = flux.shape
    if theta_pairs is None:
        theta_pairs = theta_products(theta)
    theta0, theta1 = theta[:, 0], np.ascontiguousarray(theta[:, 1:])
    sub = max(1, min(B, block_elements // max(P, 1)))
    rows = max(sub, gemm_rows // sub * sub)
    w32 = np.empty((min(rows, B), P), dtype=np.float32)
    wf = np.empty((min(rows, B), P))
    Mflat = np.empty((B, theta_pairs.shape[1]), dtype=np.float32)
    b, c = np.zeros((B, K)), np.empty(B)
    n_pixels = np.empty(B, dtype=np.int64)

    w, f = np.empty((sub, P)), np.empty((sub, P))
    for g0 in range(0, B, rows):
        g1 = min(B, g0 + rows)
        for i in range(g0, g1, sub):
            j = min(g1, i + sub)
            ww, ff = w[: j - i], f[: j - i]
            n_pixels[i:j] = _prepare_block(flux[i:j], ivar[i:j], s2, theta0, ww, ff)
            w32[i - g0 : j - g0] = ww
            np.multiply(ww, ff, out=wf[i - g0 : j - g0])
            c[i:j] = np.einsum("bp,bp->b", wf[i - g0 : j - g0], ff)
        np.matmul(w32[: g1 - g0], theta_pairs, out=Mflat[g0:g1])
        b[g0:g1, 1:] = wf[: g1 - g0] @ theta1
    M32 = np.zeros((B, K, K), dtype=np.float32)
    M32[:, 1:, 1:] = unpack_symmetric(Mflat, K - 1)
    return ReducedProblem(M=M32.astype(np.float64), b=b, c=c, n_pixels=n_pixels, M32=M32)


def chi2_at(problem, eta):
    """χ² = c − 2 b·η + ηᵀMη of each star at its design vector eta (B, K) -> (B,).

    Evaluated in float64; M comes from a float32 product, so the value differs from the sum
    over pixels by a relative ~1e-6 (median 4e-7, at most 6e-6 on the benchmark's spectra),
    far below what χ² is used for (goodness of fit, choosing between models).
    """
    Meta = np.einsum("bkj,bj->bk", problem.M, eta)
    return problem.c - 2.0 * np.einsum("bk,bk->b", problem.b, eta) + np.einsum("bk,bk->b", eta, Meta)


def _batched(fn, *arrays, min_batch=256):
    """fn(*arrays) for arrays batched along axis 0, split over the worker threads.

    For NumPy's stacked matrix products and solves, which release the GIL: with 2 cores a
    batch of 1000 stars runs ~1.9× faster. Small batches, and calls from inside a worker,
    run inline.
    """
    n = min(N_THREADS, arrays[0].shape[0] // min_batch)
    if n <= 1:
        return fn(*arrays)
    edges = np.linspace(0, arrays[0].shape[0], n + 1).astype(int)
    parts = _worker_pool().map(lambda ij: fn(*(a[ij[0] : ij[1]] for a in arrays)), zip(edges[:-1], edges[1:]))
    return np.concatenate(list(parts))


def linear_start(problem, exponents, ridge=1e-8, clip=5.0):
    """The ivar-weighted linear-algebra estimate: solve M η = b for every non-constant term
    (the constant is fixed at 1, see :func:`reduce_chi2`), keep the linear terms.

    Returns (B, L) scaled labels (clipped to ±clip; 0 where the solve fails).
    """
    M = problem.M[:, 1:, 1:]
    b = problem.b[:, 1:]
    K = M.shape[1]
    # a relative ridge on the diagonal keeps degenerate systems (a label the spectrum does not
    # constrain) solvable; LU with partial pivoting needs no further equilibration in float64
    Mr = M.copy()
    diag = np.diagonal(Mr, axis1=1, axis2=2)
    # a term no pixel constrains (e.g. a star with no valid pixel) gets a unit diagonal: η = 0
    Mr[:, np.arange(K), np.arange(K)] = np.where(diag > 0, diag * (1.0 + ridge), 1.0)
    try:
        eta = _batched(np.linalg.solve, Mr, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        eta = np.zeros_like(b)
    E = exponents[1:]
    start = np.zeros((b.shape[0], E.shape[1]))
    for l in range(E.shape[1]):  # a label without a linear term starts at its training mean
        k = np.flatnonzero((E.sum(axis=1) == 1) & (E[:, l] == 1))
        if k.size:
            start[:, l] = eta[:, k[0]]
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


def _shared_starts(X):
    """Indices s of the starts that are the same point for every star: X (B, S, ...)."""
    if X.shape[0] < 2:
        return []
    return [s for s in range(X.shape[1]) if (X[:, s] == X[0, s]).all()]


def _star_matmul(M, X):
    """Per-star M (B, K, K) times every start's X (B, S, K, C) -> (B, S, K, C).

    A start that is the same point for every star (the training mean and the ±1σ corners,
    at the first iteration) is one large product (B·K, K)·(K, C); the others are one
    (K, K)·(K, S'·C) product per star.
    """
    B, S, K, C = X.shape
    shared = _shared_starts(X)
    if not shared:
        Y = M @ np.ascontiguousarray(X.transpose(0, 2, 1, 3)).reshape(B, K, S * C)
        return Y.reshape(B, K, S, C).transpose(0, 2, 1, 3)
    out = np.empty((B, S, K, C), dtype=np.result_type(M, X))
    for s in shared:
        out[:, s] = (M.reshape(B * K, K) @ X[0, s]).reshape(B, K, C)
    own = [s for s in range(S) if s not in shared]
    if own:
        out[:, own] = _star_matmul(M, X[:, own]) if len(own) > 0 else 0
    return out


def _eval_chi2(eta, M, b, c):
    """χ² = c − 2 b·η + ηᵀMη for every start: eta (B, S, K), M (B, K, K), b (B, K), c (B,).

    Returns chi2 (B, S) and Mη (B, S, K).
    """
    shared = _shared_starts(eta)
    if shared:
        Meta = _star_matmul(M, eta[..., None])[..., 0]
    else:
        Meta = (M @ np.swapaxes(eta, 1, 2)).transpose(0, 2, 1)
    chi2 = c[:, None] - 2.0 * np.einsum("bk,bsk->bs", b, eta) + np.einsum("bsk,bsk->bs", eta, Meta)
    return chi2, Meta


def _flat(f, x, exponents):
    """Apply a (…, L) -> (…, ...) design function to (B, S, L) labels through a 2-D call."""
    B, S, L = x.shape
    out = f(x.reshape(B * S, L), exponents)
    return out.reshape((B, S) + out.shape[1:])


def levenberg_marquardt(problem, exponents, starts, max_iter=100, tol_chi2=1e-3, tol_step=1e-9, merge_tol=0.03):
    """Minimise every star's reduced χ² from every start, all at once.

    Each iteration proposes two steps per start, damped Gauss–Newton (a descent direction,
    robust far from the minimum) and damped full Newton, ½∂²χ²/∂ℓ² = JᵀWJ − Σ_k r_k ∂²η_k
    (quadratic convergence near it, where Gauss–Newton alone crawls on spectra the polynomial
    does not fit exactly), and keeps the better; the damping λ shrinks after a success and grows
    after a failure (Levenberg–Marquardt). A start has converged when an accepted step lowers χ²
    by less than ``tol_chi2`` (or moves less than ``tol_step`` in scaled labels).

    Starts of one star that come within ``merge_tol`` (scaled labels, max norm) of each other
    are in the same basin and would reach the same minimum: the one with the higher χ² stops
    there (it cannot win), so after a few iterations most stars carry one start, not S.

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
    chi2, Meta = _eval_chi2(_flat(design_matrix, x, exponents), problem.M, problem.b, problem.c)
    flags = dict(
        converged=np.zeros((B, S), dtype=bool),
        stalled=~np.isfinite(chi2),
        merged=np.zeros((B, S), dtype=bool),
        n_iter=np.zeros((B, S), dtype=int),
    )
    state = dict(x=x, chi2=chi2, Meta=Meta, lam=lam, **flags)
    opts = dict(tol_chi2=tol_chi2, tol_step=tol_step, merge_tol=merge_tol)
    # phase 1: every start of every star, M shared by the starts of a star (no copies);
    # once merging has left few live starts, phase 2 gathers M for just those (one per row)
    used = _lm_phase(problem.M, problem.b, problem.c, state, exponents, max_iter, switch_below=0.35 * B * S, newton=False, M32=problem.M32, **opts)
    live = ~(state["converged"] | state["stalled"])
    if used < max_iter and live.any():
        rows, cols = np.nonzero(live)
        sub = {k: v[rows, cols][:, None] for k, v in state.items()}
        _lm_phase(problem.M[rows], problem.b[rows], problem.c[rows], sub, exponents, max_iter - used,
                  M32=None if problem.M32 is None else problem.M32[rows], **opts)
        for k, v in sub.items():
            state[k][rows, cols] = v[:, 0]
    return state["x"], state["chi2"], state["converged"] | state["merged"], state["n_iter"]


def _lm_phase(M, b, c, st, exponents, max_iter, tol_chi2, tol_step, merge_tol, switch_below=None, newton=True, M32=None):
    """Iterate the batched LM on state ``st`` (arrays (B, S, ...), updated in place) until every
    start is done, ``max_iter`` iterations, or (if given) fewer than ``switch_below`` live starts.
    Returns the number of iterations run."""
    x, chi2, Meta, lam = st["x"], st["chi2"], st["Meta"], st["lam"]
    converged, stalled, merged, n_iter = st["converged"], st["stalled"], st["merged"], st["n_iter"]
    B, S, L = x.shape
    N_CAND = 2 if newton else 1
    eye = np.eye(L)
    # working set of stars with an unfinished start; re-gathered only when it has halved,
    # so the (K, K) matrices are rarely copied
    work = np.arange(B)
    Mw, bw, cw = M, b, c
    Mw32 = Mw.astype(np.float32) if M32 is None else M32
    it = 0
    for it in range(1, max_iter + 1):
        busy = ~(converged[work] | stalled[work])
        if switch_below is not None and busy.sum() < switch_below:
            return it - 1
        star_busy = busy.any(axis=1)
        if not star_busy.any():
            return it - 1
        if star_busy.sum() < 0.5 * star_busy.size:
            work, Mw, bw, cw = work[star_busy], Mw[star_busy], bw[star_busy], cw[star_busy]
            Mw32 = Mw32[star_busy]
            busy = busy[star_busy]
        xw, chiw, lamw = x[work], chi2[work], lam[work]
        # the Jacobian, JᵀWr and JᵀWJ only steer the step (every candidate is judged by the
        # float64 χ²), so they are float32; r = b − Mη is formed in float64 first
        D32 = _flat(lambda xx, e: design_jacobian(xx, e, np.float32), xw, exponents)  # (B', S, K, L)
        Dt32 = np.swapaxes(D32, -1, -2)
        r = bw[:, None, :] - Meta[work]
        grad = (Dt32 @ r.astype(np.float32)[..., None])[..., 0].astype(np.float64)  # Jᵀ W r
        H_gn = (Dt32 @ _star_matmul(Mw32, D32)).astype(np.float64)  # Jᵀ W J
        diag = np.maximum(np.diagonal(H_gn, axis1=-2, axis2=-1), 1e-12)
        damp = lamw[..., None, None] * eye * diag[..., None, :]
        if newton:
            H_full = H_gn - _flat(lambda xx, e: hessian_contract(xx, e, r.reshape(-1, r.shape[-1])), xw, exponents)
            H2 = np.stack([H_gn, H_full], axis=2) + damp[:, :, None]  # (B', S, 2, L, L)
        else:
            H2 = (H_gn + damp)[:, :, None]
        g2 = np.broadcast_to(grad[:, :, None, :, None], H2.shape[:-1] + (1,))
        try:
            steps = np.linalg.solve(H2, g2)[..., 0]
        except np.linalg.LinAlgError:
            steps = np.zeros(H2.shape[:-1])
            for idx in np.ndindex(H2.shape[:3]):
                steps[idx] = np.linalg.lstsq(H2[idx], g2[idx][:, 0], rcond=None)[0]
        steps = np.where(np.isfinite(steps), steps, 0.0)
        xc = (xw[:, :, None, :] + steps).reshape(len(work), N_CAND * S, L)
        chic, Metac = _eval_chi2(_flat(design_matrix, xc, exponents), Mw, bw, cw)
        chic = np.where(np.isfinite(chic), chic, np.inf).reshape(len(work), S, N_CAND)
        pick = np.argmin(chic, axis=2)  # 0: Gauss–Newton, 1: Newton
        rows = np.arange(len(work))[:, None]
        cols = np.arange(S)[None, :]
        chi2_new = chic[rows, cols, pick]
        flat_idx = cols * N_CAND + pick
        x_new = xc[rows, flat_idx]
        Meta_new = Metac[rows, flat_idx]
        step = steps[rows, cols, pick]
        better = busy & np.isfinite(chi2_new) & (chi2_new <= chiw)
        dchi2 = chiw - chi2_new
        small_step = np.max(np.abs(step), axis=-1) < tol_step
        done = busy & ((better & (dchi2 < tol_chi2 * np.maximum(1.0, 1e-9 * chi2_new))) | small_step)
        xw[better], chiw[better] = x_new[better], chi2_new[better]
        Mw_eta = Meta[work]
        Mw_eta[better] = Meta_new[better]
        lamw = np.where(better, np.maximum(lamw / 3.0, 1e-12), np.where(busy, lamw * 4.0, lamw))
        x[work], chi2[work], Meta[work], lam[work] = xw, chiw, Mw_eta, lamw
        n_iter[work] += busy
        converged[work] |= done
        # a start whose damping exploded cannot move any more: it stops, unconverged
        stalled[work] |= busy & (lamw > 1e12)
        if S > 1:
            # merge starts that share a basin (the worse one stops; it is never the winner)
            live = ~merged[work]
            for t in range(S):
                for u in range(t + 1, S):
                    close = live[:, t] & live[:, u] & (np.max(np.abs(xw[:, t] - xw[:, u]), axis=-1) < merge_tol)
                    if close.any():
                        worse = np.where(chiw[:, u] >= chiw[:, t], u, t)
                        rows_c = np.flatnonzero(close)
                        live[rows_c, worse[rows_c]] = False
            newly = ~live & ~merged[work]
            merged[work] |= newly
            stalled[work] |= newly
    return it


def covariance(problem, exponents, labels):
    """(JᵀWJ)⁻¹ at the solution, in scaled units; NaN where singular.

    labels : (B, L) scaled  ->  (B, L, L)
    """
    if problem.M32 is not None:
        # M is float32-rounded anyway: the products in float32 (σ changes by < 2e-7 relative on
        # the benchmark), the inverse in float64
        D = design_jacobian(labels, exponents, np.float32)
        H = (np.swapaxes(D, 1, 2) @ (problem.M32 @ D)).astype(np.float64)  # JᵀWJ
    else:
        D = design_jacobian(labels, exponents)
        H = np.swapaxes(D, 1, 2) @ (problem.M @ D)  # JᵀWJ
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


def _worker_pool():
    """A small shared thread pool for :func:`_batched` (a forked child makes its own: the
    parent's threads do not exist there)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=N_THREADS, thread_name_prefix="cannonade-infer"))
    return _POOL[1]


_POOL = None
N_THREADS = max(1, min(4, os.cpu_count() or 1))


def infer_chunk(theta, s2, exponents, flux, ivar, theta_pairs=None, max_iter=100):
    """Best-of-starts labels for one chunk of stars, in scaled units.

    The χ² reduction is one multi-threaded matrix product; the linear-start solve is split
    over ``N_THREADS`` threads (the cores, at most 4).

    Returns dict with labels (B, L), cov (B, L, L), chi2 (B,) from the pixels,
    dof (B,), converged (B,), start (B,) index into START_NAMES, n_iter (B,).
    """
    problem = reduce_chi2(theta, s2, flux, ivar, theta_pairs)
    return solve_reduced(problem, exponents, max_iter)


def solve_reduced(problem, exponents, max_iter=100):
    """Labels, covariance and χ² of the stars of a :class:`ReducedProblem` (scaled units)."""
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
    chi2 = chi2_at(problem, design_matrix(np.where(empty[:, None], 0.0, labels), exponents))
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
