"""The batched multi-start Levenberg–Marquardt minimiser of the reduced χ² (see ``inference``).

Every star's χ² is the polynomial ``c − 2 b·η(ℓ) + η(ℓ)ᵀ M η(ℓ)`` of a
:class:`~cannonade.cannon.inference.ReducedProblem`; this module minimises it from several
starts per star, for all stars at once, without touching a pixel.
"""

from __future__ import annotations

import numpy as np

from cannonade.cannon.vectorizer import design_jacobian, design_matrix, hessian_contract


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
    by less than ``tol_chi2`` (or moves less than ``tol_step`` in scaled labels). Steps are
    judged on the label-dependent part of χ², q = −2 b·η + ηᵀMη (χ² = c + q), and the
    tolerance grows only with min(|q|, χ²) (``tol_chi2 · max(1, 1e-9 min(|q|, χ²))``, a rounding
    floor), never with c alone: an absurd spectrum (flux 1e30, c ~ 1e60) cannot round its steps away and "converge" at
    its start; it is minimised like any other, to absurd labels (flagged OUTSIDE_TRAINING) or
    to ``max_iter`` (NOT_CONVERGED).

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
    # the minimiser works on q = χ² − c, the label-dependent part: c (Σ w f², independent of the
    # labels) can exceed it by any factor (flux 1e30: c ~ 1e60), and c + q would round every
    # step's change away and "converge" at the start
    zero = np.zeros_like(problem.c)
    chi2, Meta = _eval_chi2(_flat(design_matrix, x, exponents), problem.M, problem.b, zero)
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
    return state["x"], state["chi2"] + problem.c[:, None], state["converged"] | state["merged"], state["n_iter"]


def _lm_phase(M, b, c, st, exponents, max_iter, tol_chi2, tol_step, merge_tol, switch_below=None, newton=True, M32=None):
    """Iterate the batched LM on state ``st`` (arrays (B, S, ...), updated in place) until every
    start is done, ``max_iter`` iterations, or (if given) fewer than ``switch_below`` live starts.
    ``st["chi2"]`` is q = χ² − c (see :func:`levenberg_marquardt`); ``c`` only sets the
    convergence tolerance, tol_chi2 · max(1, 1e-9 min(|q|, |χ²|)): the old χ²-relative rounding
    floor for every usual star (χ² ≪ c), q's own for a star whose c would round the steps away.
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
        with np.errstate(over="ignore", invalid="ignore"):  # an absurd spectrum overflows float32: no step
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
        # a step that is not finite (e.g. JᵀWr overflowed float32 on an absurd spectrum) is no
        # candidate: never a zero step that would count as converged at the start
        step_ok = np.all(np.isfinite(steps), axis=-1)  # (B', S, N_CAND)
        steps = np.where(np.isfinite(steps), steps, 0.0)
        xc = (xw[:, :, None, :] + steps).reshape(len(work), N_CAND * S, L)
        chic, Metac = _eval_chi2(_flat(design_matrix, xc, exponents), Mw, bw, np.zeros_like(cw))
        chic = np.where(np.isfinite(chic), chic, np.inf).reshape(len(work), S, N_CAND)
        chic = np.where(step_ok, chic, np.inf)
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
        small_step = (np.max(np.abs(step), axis=-1) < tol_step) & np.isfinite(chi2_new)
        with np.errstate(invalid="ignore", over="ignore"):
            scale = np.minimum(np.abs(chi2_new), np.abs(chi2_new + cw[:, None]))  # rounding scale of q
        done = busy & ((better & (dchi2 < tol_chi2 * np.maximum(1.0, 1e-9 * scale))) | small_step)
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
