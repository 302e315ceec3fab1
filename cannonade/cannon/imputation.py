"""Training with incomplete reference labels: missing labels as unknowns fitted from the spectra.

A reference catalogue often lacks single labels of some stars (GALAH flags individual
abundances). ``CannonModel.fit(..., missing="impute")`` keeps such stars: their NaN labels
are unknowns, estimated from their own spectra with the model, alternately with θ and s²
(a "hard" EM, i.e. an alternating conditional maximisation of the joint likelihood):

1. initialise every missing entry by a linear regression of that label on the star's known
   labels, fitted over the stars with complete labels (:func:`initial_guess`);
2. fit θ, s² (Wheeler+2020 Eqs. 3 and 5, ``training.train_pixels``) on the stars with
   complete labels when they are at least a quarter of the set (and twice the number of
   terms), else on all stars at the labels of step 1;
3. re-estimate only the missing labels of each star from its spectrum, the known labels
   held at their reference values: the conditional maximum-likelihood labels
   ``argmin_{ℓ_miss} χ²(ℓ_miss, ℓ_known)`` of Nandakumar+2022 Eq. 4 (:func:`conditional_fit`,
   a batched Levenberg–Marquardt over the free subset on the reduced χ² polynomial of
   ``inference.reduce_chi2``), clipped to the label's reference range widened by ``MARGIN``
   standard deviations;
4. refit θ, s² on all stars; repeat 3–4 until no imputed label moves by more than ``tol``
   (in units of that label's standard deviation over its reference values) or ``max_iter``
   times (:func:`impute_and_train`).

Everything is vectorised over stars; the loops are over iterations and labels. The maths and
the measured behaviour are in docs/model.md ("Incomplete reference labels").
"""

from __future__ import annotations

import numpy as np

from cannonade.cannon.inference import auto_star_chunk, reduce_chi2, theta_products
from cannonade.cannon.vectorizer import LabelScaler, design_jacobian, design_matrix, hessian_contract
from cannonade.exceptions import LabelError

MAX_MISSING_FRACTION = 0.5
"""A label missing for more than this fraction of the (kept) training stars is refused."""
MAX_ITER = 5
"""Impute-and-refit iterations at most (steps 3–4)."""
TOL = 0.01
"""Stop when no imputed label moved by more than this many standard deviations of its label."""
MIN_COMPLETE_FRACTION = 0.25
"""The first θ comes from the stars with complete labels when they are at least this fraction."""
MARGIN = 1.0
"""Imputed labels are clipped to the reference range widened by this many standard deviations."""


def fit_scaler(method, labels, known, label_names):
    """A :class:`LabelScaler` fitted on each label's reference (known) values only.

    The scaling is then independent of the imputed values (and of the iteration).

    Parameters
    ----------
    method : str or dict
        As ``CannonModel(scale=...)``.
    labels : (N, L) float
        NaN where ``known`` is False.
    known : (N, L) bool
    label_names : list of str

    Returns
    -------
    LabelScaler
        Fitted (``offset_``, ``scale_`` (L,)).

    Raises
    ------
    LabelError
        A label whose known values have no spread (names it).
    """
    L = labels.shape[1]
    scaler = LabelScaler(method)
    if isinstance(method, dict) or method == "none":
        return scaler.fit(np.where(known, labels, 0.0))  # data-independent scalings
    offset, scale = np.empty(L), np.empty(L)
    for l in range(L):  # per label (not per star): each over the stars that have it
        try:
            one = LabelScaler(method).fit(labels[known[:, l], l][:, None])
        except LabelError:
            raise LabelError(f"label {label_names[l]!r} has no spread among the {int(known[:, l].sum())} stars "
                             "that have it; cannot scale it") from None
        offset[l], scale[l] = one.offset_[0], one.scale_[0]
    scaler.offset_, scaler.scale_ = offset, scale
    return scaler


def initial_guess(x, known):
    """Step 1: each missing entry from a linear regression on the star's known labels.

    For label l, ``x_l ≈ β_0 + Σ_{j≠l} β_j x_j`` is fitted by least squares over the stars
    with complete labels; a star missing l gets the prediction from its other labels, any
    of them that are also missing at their mean over the stars that have them. With no more
    than twice as many complete stars as coefficients (or no other label) the median of
    the known x_l.

    Parameters
    ----------
    x : (N, L) float
        Scaled labels; values where ``known`` is False are ignored.
    known : (N, L) bool

    Returns
    -------
    (N, L) float
        ``x`` with every missing entry filled (a new array).
    """
    N, L = x.shape
    out = np.where(known, x, np.nan)
    mean = np.array([np.mean(x[known[:, j], j]) for j in range(L)])
    filled = np.where(known, x, mean)  # predictors: missing ones at their mean
    complete = known.all(axis=1)
    for l in np.flatnonzero(~known.all(axis=0)):  # a loop over labels, not stars
        miss = ~known[:, l]
        others = np.delete(np.arange(L), l)
        A = np.column_stack([np.ones(N), filled[:, others]])
        if others.size and complete.sum() > 2 * A.shape[1]:
            beta = np.linalg.lstsq(A[complete], x[complete, l], rcond=None)[0]
            guess = A[miss] @ beta
        else:
            guess = np.full(miss.sum(), np.median(x[known[:, l], l]))
        out[miss, l] = guess
    return out


def _chi2(M, b, c, eta):
    """χ² = c − 2 b·η + ηᵀMη (Nandakumar+2022 Eq. 4 reduced) for S candidates per star.

    M (B, K, K), b (B, K), c (B,), eta (B, S, K)  ->  chi2 (B, S), Mη (B, S, K).
    """
    Meta = np.einsum("bkj,bsj->bsk", M, eta)
    return c[:, None] - 2.0 * np.einsum("bk,bsk->bs", b, eta) + np.einsum("bsk,bsk->bs", eta, Meta), Meta


def _solve_steps(H, g):
    """Steps H⁻¹g for stacked (…, L, L) systems; a batched pseudo-inverse where one is singular."""
    try:
        return np.linalg.solve(H, g[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(H) @ g[..., None])[..., 0]


def conditional_fit(problem, exponents, x0, free, max_iter=50, tol_chi2=1e-3):
    """Step 3: the free labels of each star minimising its χ², the others held fixed.

    Levenberg–Marquardt on the reduced χ² polynomial ``c − 2 b·η(ℓ) + η(ℓ)ᵀ M η(ℓ)``
    (``inference.reduce_chi2``), for all stars at once. With D = ∂η/∂ℓ restricted to the free
    labels (the fixed labels' columns zeroed), r = b − Mη: the gradient is −2 Dᵀr, the
    Gauss–Newton matrix DᵀMD, the full Hessian DᵀMD − Σ_k r_k ∂²η_k (both ½∂²χ²). Each
    iteration proposes a damped Gauss–Newton and a damped Newton step, keeps the one with the
    lower χ², and accepts it if χ² did not rise (the damping λ shrinks after a success, grows
    after a failure). A fixed label has a unit row and column in the step's system and a zero
    gradient, so it never moves. Converged: an accepted step lowering χ² by < ``tol_chi2``
    (then the distance to the minimum is < 0.05 of the label's statistical error).

    Parameters
    ----------
    problem : inference.ReducedProblem of B stars
    exponents : (K, L) int
    x0 : (B, L) float
        Start, scaled labels; the fixed entries are kept exactly.
    free : (B, L) bool
        The labels to fit (a star with none is returned unchanged, converged; one with no
        more valid pixels than free labels unchanged, not converged).
    max_iter : int
    tol_chi2 : float

    Returns
    -------
    x : (B, L) float
        Scaled labels at the minimum (the last accepted point where not converged).
    converged : (B,) bool
    """
    B, L = x0.shape
    x = np.array(x0, dtype=float, copy=True)
    fm = free.astype(float)
    eye = np.eye(L)
    # χ² − c, the label-dependent part (as levenberg_marquardt: a huge c would round the steps away)
    M, b, c = problem.M, problem.b, np.zeros_like(problem.c)
    chi2, Meta = _chi2(M, b, c, design_matrix(x, exponents)[:, None, :])
    chi2, Meta = chi2[:, 0], Meta[:, 0]
    lam = np.full(B, 1e-3)
    converged = ~free.any(axis=1)  # nothing to fit
    # no more valid pixels than free labels: nothing to fit them with (kept, not converged)
    stalled = ~np.isfinite(chi2) | (~converged & (problem.n_pixels <= free.sum(axis=1)))
    for _ in range(max_iter):
        live = np.flatnonzero(~(converged | stalled))
        if live.size == 0:
            break
        xl, f, Ml = x[live], fm[live], M[live]
        D = design_jacobian(xl, exponents) * f[:, None, :]  # (B', K, L): fixed columns 0
        r = b[live] - Meta[live]
        grad = np.einsum("bkl,bk->bl", D, r)  # −½ ∂χ²/∂ℓ over the free labels
        H_gn = np.swapaxes(D, 1, 2) @ (Ml @ D)  # JᵀWJ
        H_full = H_gn - hessian_contract(xl, exponents, r) * f[:, :, None] * f[:, None, :]
        diag = np.maximum(np.diagonal(H_gn, axis1=1, axis2=2), 1e-12)
        shift = lam[live, None, None] * eye * diag[:, None, :] + eye * (1.0 - f)[:, None, :]
        H = np.stack([H_gn + shift, H_full + shift], axis=1)  # (B', 2, L, L)
        steps = _solve_steps(H, np.broadcast_to(grad[:, None, :], (live.size, 2, L)))
        step_ok = np.all(np.isfinite(steps), axis=-1)  # a non-finite step is no candidate (never "converged")
        steps = np.where(np.isfinite(steps), steps, 0.0) * f[:, None, :]
        xc = xl[:, None, :] + steps
        chic, Metac = _chi2(Ml, b[live], c[live], design_matrix(xc, exponents))
        chic = np.where(np.isfinite(chic) & step_ok, chic, np.inf)
        pick = np.argmin(chic, axis=1)
        rows = np.arange(live.size)
        chi_new = chic[rows, pick]
        better = chi_new <= chi2[live]
        small = (np.max(np.abs(steps[rows, pick]), axis=1) < 1e-9) & np.isfinite(chi_new)
        with np.errstate(invalid="ignore", over="ignore"):
            scale = np.minimum(np.abs(chi_new), np.abs(chi_new + problem.c[live]))  # rounding scale of χ² − c
        done = (better & (chi2[live] - chi_new < tol_chi2 * np.maximum(1.0, 1e-9 * scale))) | small
        acc = live[better]
        x[acc], chi2[acc], Meta[acc] = xc[rows, pick][better], chi_new[better], Metac[rows, pick][better]
        lam[live] = np.where(better, np.maximum(lam[live] / 3.0, 1e-12), lam[live] * 4.0)
        converged[live] |= done
        stalled[live] |= lam[live] > 1e12
    return x, converged


def impute_labels(theta, s2, pixel_ok, exponents, flux, ivar, rows, x, free, lo, hi, star_chunk=None):
    """Step 3 for every star with a missing label, in batches of stars: the conditional fit.

    Parameters
    ----------
    theta : (P, K) float ; s2 : (P,) float ; pixel_ok : (P,) bool
        The current model (only its ``pixel_ok`` pixels are used, as at inference).
    exponents : (K, L) int
    flux, ivar : (N, P) float
        Spectra, of which ``rows`` are imputed (gathered batch by batch, never copied whole).
    rows : (B,) int
        The stars to impute.
    x : (B, L) float
        Their current scaled labels (known entries at the reference values).
    free : (B, L) bool
        Their missing entries.
    lo, hi : (L,) float
        Each label's reference range (scaled): the imputed values are clipped to it.
    star_chunk : int, optional
        Stars per batch (default ``inference.auto_star_chunk``).

    Returns
    -------
    x : (B, L) float
        New labels: the free entries re-estimated where the fit converged to finite values,
        the previous ones elsewhere.
    converged : (B,) bool
    """
    th, s = theta[pixel_ok], s2[pixel_ok]
    pairs = theta_products(th)
    B = x.shape[0]
    star_chunk = star_chunk or auto_star_chunk(exponents.shape[0])
    out, conv = np.array(x, dtype=float, copy=True), np.zeros(B, dtype=bool)
    for s0 in range(0, B, star_chunk):  # batches of stars (memory), not single stars
        sl = slice(s0, min(B, s0 + star_chunk))
        sel = np.ix_(rows[sl], pixel_ok)
        problem = reduce_chi2(th, s, flux[sel], ivar[sel], pairs)
        xs, cs = conditional_fit(problem, exponents, x[sl], free[sl])
        good = np.all(np.isfinite(xs), axis=1)
        out[sl] = np.where(good[:, None] & free[sl], np.clip(xs, lo, hi), x[sl])
        conv[sl] = cs & good
    return out, conv


def impute_and_train(train, x, known, exponents, flux, ivar, init_s2=None, max_iter=MAX_ITER, tol=TOL,
                     star_chunk=None):
    """Steps 1–4: θ, s² and the missing labels, alternately (see the module docstring).

    Parameters
    ----------
    train : callable (X (n, K), init_s2 (P,) or None, rows (N,) bool or None) -> (theta, s2, pixel_ok)
        Fits θ and s² (``training.train_pixels`` with the model's options) on the stars
        ``rows`` (None: all N), X their design matrix.
    x : (N, L) float
        Scaled labels; entries where ``known`` is False are ignored.
    known : (N, L) bool
        Every star has at least one known label.
    exponents : (K, L) int
    flux, ivar : (N, P) float
    init_s2 : (P,) float, optional
        Starting point of the first s² fit (later fits start from the previous s²).
    max_iter : int
        Impute-and-refit iterations at most.
    tol : float
        Stop once no imputed entry moved by more than ``tol`` standard deviations of its
        label (over the label's known values).
    star_chunk : int, optional

    Returns
    -------
    dict
        theta (P, K), s2 (P,), pixel_ok (P,), labels (N, L) scaled (imputed where missing),
        n_iter (int, impute-and-refit iterations run), shifts (list of float: the largest
        move of an imputed entry per iteration, in label standard deviations), converged
        (N,) bool (the last conditional fit converged; True for complete stars).
    """
    N, L = x.shape
    unit = np.array([np.std(x[known[:, l], l]) for l in range(L)])
    unit = np.where(unit > 0, unit, 1.0)
    # imputed values stay within the reference range widened by MARGIN standard deviations
    lo = np.array([np.min(x[known[:, l], l]) for l in range(L)]) - MARGIN * unit
    hi = np.array([np.max(x[known[:, l], l]) for l in range(L)]) + MARGIN * unit
    cur = initial_guess(x, known)
    rows = np.flatnonzero(~known.all(axis=1))
    free = ~known[rows]
    complete = known.all(axis=1)
    if complete.sum() >= max(2 * exponents.shape[0], N * MIN_COMPLETE_FRACTION):
        # step 2 from the complete stars alone: a θ close to the final one, so the first
        # imputation is already close to the fixed point (3 iterations instead of 4–5)
        theta, s2, ok = train(design_matrix(cur[complete], exponents), init_s2, complete)
    else:
        theta, s2, ok = train(design_matrix(cur, exponents), init_s2, None)
    shifts, converged = [], np.ones(N, dtype=bool)
    for _ in range(max_iter):
        new, conv = impute_labels(theta, s2, ok, exponents, flux, ivar, rows, cur[rows], free, lo, hi,
                                  star_chunk=star_chunk)
        moved = np.abs(new - cur[rows]) / unit
        shifts.append(float(np.max(np.where(free, moved, 0.0), initial=0.0)))
        cur[rows], converged[rows] = new, conv
        theta, s2, ok = train(design_matrix(cur, exponents), s2, None)
        if shifts[-1] < tol:
            break
    return dict(theta=theta, s2=s2, pixel_ok=ok, labels=cur, n_iter=len(shifts), shifts=shifts, converged=converged)
