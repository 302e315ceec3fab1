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

Every function here runs on NumPy or CuPy arrays alike: it takes its array namespace ``xp``
from its inputs (:func:`cannonade.execution.device.array_namespace`), so the same code trains
on the host or on a GPU, in float64 either way. The two things CuPy does differently are
handled in one place each: a singular matrix (NumPy raises, CuPy returns numbers that are no
solution: :func:`_stacked`) and the monomial collapse (:func:`_collapse`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.linalg import LinAlgError  # raised by NumPy (and CuPy, when asked to) for a singular matrix

from cannonade.cannon.checks import clean_spectra
from cannonade.exceptions import ParameterError
from cannonade.cannon.vectorizer import collapse_to_monomials, monomial_plan, pair_indices, symmetric_gather_index
# the namespace is looked up through the module (devices.array_namespace), not bound here: a
# test can then watch which array functions the maths asks for
from cannonade.execution import device as devices
from cannonade.execution.backends import native_threads
from cannonade.util import progress


def scatter_weights(ivar, s2, out=None):
    """w = 1 / (σ² + s²) written as ivar / (1 + ivar s²).

    ivar : (N, P) ; s2 : (P,)  ->  (N, P), zero wherever ivar is zero.
    out : (N, P) float, optional; written in place (no temporaries: used on hot paths).
    NumPy or CuPy arrays (the result is where the inputs are).
    """
    if out is None:
        return ivar / (1.0 + ivar * s2)
    xp = devices.array_namespace(out, ivar)
    xp.multiply(ivar, s2, out=out)
    out += 1.0
    return xp.divide(ivar, out, out=out)


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
    collapse : (K·K, R) float or None
        Off the host only: the 0/1/2 matrix of :func:`collapse_to_monomials` (see :func:`_collapse`).

    All arrays live where X does (host or GPU).
    """

    Z: np.ndarray
    gather: np.ndarray
    factor: np.ndarray
    collapse: np.ndarray | None = None


def normal_plan(X, exponents=None):
    """Build the :class:`NormalPlan` of design matrix X (N, K) whose columns are monomials
    with ``exponents`` (K, L), each possibly divided by a constant. Without ``exponents``
    every term pair is its own "monomial" (no saving, any X). The plan lives where X does."""
    xp = devices.array_namespace(X)
    K = X.shape[1]
    if exponents is None:
        rep_i, rep_j = pair_indices(K)
        gather = symmetric_gather_index(K)
    else:
        rep_i, rep_j, gather = monomial_plan(exponents)
    # the (host) index arrays go where X is (no copy for NumPy)
    rep_i, rep_j, gather_x = xp.asarray(rep_i), xp.asarray(rep_j), xp.asarray(gather)
    Z = X[:, rep_i] * X[:, rep_j]
    factor = xp.ones((K, K)) if exponents is None else _monomial_factor(X, Z, gather_x)
    collapse = None if xp is np else _collapse_matrix(xp, gather, Z.shape[1])
    return NormalPlan(Z=Z, gather=gather_x, factor=factor, collapse=collapse)


def _monomial_factor(X, Z, gather):
    """factor_kj = x_nk x_nj / Z[n, gather_kj], read at the star where |Z[n, gather_kj]| is largest."""
    xp = devices.array_namespace(X, Z)
    K = X.shape[1]
    n_kj = xp.argmax(xp.abs(Z), axis=0)[gather]  # (K, K)
    kk, jj = xp.meshgrid(xp.arange(K), xp.arange(K), indexing="ij")
    num = X[n_kj, kk] * X[n_kj, jj]
    den = Z[n_kj, gather]
    return xp.where(den != 0, num / xp.where(den != 0, den, 1.0), 1.0)


def _collapse_matrix(xp, gather, R):
    """(K·K, R) C with ``B.reshape(P, K·K) @ C == collapse_to_monomials(B, gather)`` for symmetric B:
    1 at (k·K + k, gather_kk), 2 at (k·K + j, gather_kj) for k < j (the upper triangle, as the
    collapse reads it), 0 elsewhere. ``gather`` (K, K) is a host array."""
    K = gather.shape[0]
    i, j = np.triu_indices(K)
    C = xp.zeros((K * K, R))
    C[xp.asarray(i * K + j), xp.asarray(gather[i, j])] = xp.asarray(2.0 - (i == j))
    return C


def _collapse(B, plan):
    """:func:`collapse_to_monomials` of B (P, K, K) on the plan's device: -> (P, R).

    On the host it is that function (a reduceat over a gathered view). Elsewhere one matrix
    product with the plan's ``collapse`` matrix gives the same sums (in another order: equal to
    rounding), with no reduceat, which CuPy has only in some versions.
    """
    if plan.collapse is None:
        return collapse_to_monomials(B, plan.gather)
    return B.reshape(B.shape[0], -1) @ plan.collapse


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
    xp = devices.array_namespace(A, rhs)
    if penalty is not None:
        K = A.shape[1]
        A = A.copy()
        A[:, xp.arange(K), xp.arange(K)] += penalty
    if active is None:
        return A, rhs
    outer = active[:, :, None] & active[:, None, :]
    A = xp.where(outer, A, 0.0)
    diag = xp.arange(A.shape[1])
    A[:, diag, diag] = xp.where(active, A[:, diag, diag], 1.0)
    rhs = xp.where(active, rhs, 0.0)
    return A, rhs


def _stacked(fn, *args, factor_of=None, isolate=True):
    """``fn(*args)`` over stacks of matrices (axis 0, P of them) and where it worked, (P,) bool.

    The one place where NumPy and CuPy differ for a singular matrix. NumPy raises LinAlgError
    when any matrix of the stack fails: the stack is then redone matrix by matrix (rare) to
    isolate the failures. CuPy (by default) raises nothing: a failed LU leaves non-finite
    numbers, read here; a failed Cholesky may leave a finite partial factor, so with
    ``factor_of=A`` (``fn`` a Cholesky) the factor L must also be one: a positive diagonal and
    L Lᵀ = A to 1e-8 of A's largest diagonal entry (a factor is exact to ~K·eps). Failed
    matrices come back NaN; the output has the shape of the last argument. With
    ``isolate=False`` a raising stack is not redone: all of it counts as failed (for a caller
    that has a careful path of its own).
    """
    xp = devices.array_namespace(*args)
    n = args[0].shape[0]
    try:
        out = fn(*args)
    except LinAlgError:  # NumPy (CuPy too under cupyx.errstate(linalg="raise"))
        out = xp.full(args[-1].shape, np.nan)
        if not isolate:
            return out, xp.zeros(n, dtype=bool)
        ok = xp.ones(n, dtype=bool)
        _isolate_failures(fn, args, out, ok, 0, n)
        return out, ok
    if xp is np:
        return out, np.ones(n, dtype=bool)
    ok = xp.all(xp.isfinite(out.reshape(n, -1)), axis=1)
    if factor_of is not None:
        d = xp.diagonal(out, axis1=1, axis2=2)
        scale = xp.max(xp.abs(xp.diagonal(factor_of, axis1=1, axis2=2)), axis=1)
        err = xp.max(xp.abs(out @ xp.swapaxes(out, 1, 2) - factor_of), axis=(1, 2))
        ok &= xp.all(d > 0, axis=1) & (err <= 1e-8 * scale)
    out[~ok] = np.nan
    return out, ok


def _isolate_failures(fn, args, out, ok, lo, hi):
    """``fn`` on matrices ``lo:hi`` of a stack known to hold a failure: halves that work are kept,
    halves that raise are split again, so f failed matrices among n cost ~2 f log2(n) calls rather
    than n (a pixel with no usable star fails every iteration of a training batch). Each matrix's
    result is the one a call on it alone gives (LAPACK runs matrix by matrix in a stack)."""
    if hi - lo == 1:
        ok[lo] = False
        return
    mid = (lo + hi) // 2
    for a, b in ((lo, mid), (mid, hi)):
        try:
            out[a:b] = fn(*(x[a:b] for x in args))
        except LinAlgError:
            _isolate_failures(fn, args, out, ok, a, b)


def _unsupported(A):
    """(P,) bool: normal equations XᵀWX with a diagonal entry that is not positive (or not finite):
    a term that no usable star supports (a pixel without data), so the matrix is singular for sure.
    They are set aside before the batched LAPACK calls, where one would make the whole stack raise."""
    xp = devices.array_namespace(A)
    d = xp.diagonal(A, axis1=1, axis2=2)
    return ~xp.all(xp.isfinite(d) & (d > 0), axis=1)


def _set_aside(A, bad):
    """A with the matrices ``bad`` replaced by the identity (their results are discarded)."""
    xp = devices.array_namespace(A)
    return xp.where(bad[:, None, None], xp.eye(A.shape[1]), A) if bool(bad.any()) else A


def _solve(A, rhs):
    """Batched SPD solve: θ (P, K) and ln det A (P,) from one Cholesky and one LU; NaN where singular."""
    xp = devices.array_namespace(A, rhs)
    bad = _unsupported(A)
    A = _set_aside(A, bad)
    Lc, ok = _stacked(xp.linalg.cholesky, A, factor_of=A)  # rare failures: the singular pixels
    ok &= ~bad
    A = xp.where(ok[:, None, None], A, xp.eye(A.shape[1]))
    # numerically singular systems can slip through the Cholesky (a pixel with fewer usable
    # stars than terms): they are isolated the same way and become NaN
    theta, solved = _stacked(xp.linalg.solve, A, rhs[..., None])
    theta = theta[..., 0]
    ok &= solved
    with np.errstate(divide="ignore", invalid="ignore"):
        logdet = 2.0 * xp.log(xp.diagonal(Lc, axis1=1, axis2=2)).sum(axis=1)
    ok &= xp.isfinite(logdet) & xp.all(xp.isfinite(theta), axis=1)
    theta[~ok] = np.nan
    logdet[~ok] = np.nan
    return theta, logdet


def _inverse(A, max_vif=1e12):
    """Batched inverse of SPD matrices (P, K, K) and a mask of the usable ones (P,).

    A pixel is unusable when its matrix is singular or so ill-conditioned that some term's
    variance-inflation factor A_kk (A⁻¹)_kk exceeds ``max_vif`` (its θ would be noise).
    """
    xp = devices.array_namespace(A)
    bad = _unsupported(A)
    Ainv = _stacked(xp.linalg.inv, _set_aside(A, bad))[0]  # an exactly singular pixel: NaN
    Ainv[bad] = np.nan
    d = xp.diagonal(Ainv, axis1=1, axis2=2)
    vif = d * xp.diagonal(A, axis1=1, axis2=2)
    ok = xp.all(xp.isfinite(Ainv), axis=(1, 2)) & xp.all(d > 0, axis=1) & xp.all(vif < max_vif, axis=1)
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

    All arrays on one device (host or GPU); the results are there too.
    """
    xp = devices.array_namespace(X, y, ivar)
    w = scatter_weights(ivar, s2)
    A, rhs = normal_equations(X, y, w, plan)
    A, rhs = _apply_term_mask(A, rhs, active, penalty)
    theta, logdet = _solve(A, rhs)
    resid = y - X @ theta.T
    chi2 = xp.einsum("np,np->p", w, resid * resid)
    valid = ivar > 0
    log_var = -xp.log(xp.where(valid, w, 1.0)).sum(axis=0)
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
    xp = devices.array_namespace(ivar, e)
    w = scatter_weights(ivar, s2)
    w2 = w * w
    S1, S2 = w.sum(axis=0), w2.sum(axis=0)
    E2 = xp.einsum("np,np->p", w2, e)
    S3 = xp.einsum("np,np->p", w2, w)
    E3 = xp.einsum("np,np->p", w2 * w, e)
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

    ivar, e : (N, P) ; s2_start : (P,)  ->  s2 : (P,)   (host or GPU arrays, all on one)
    """
    xp = devices.array_namespace(ivar, e)
    P = e.shape[1]
    valid = ivar > 0
    t_lo = xp.full(P, s_min * s_min)
    g_lo = score_s2(ivar, e, t_lo)[0]
    hi = xp.where(valid, e, 0.0).max(axis=0)
    out = xp.zeros(P)
    todo = xp.flatnonzero((g_lo < 0) & (hi > t_lo))
    if todo.size == 0:
        return out
    iv, ee = ivar[:, todo], e[:, todo]
    lo, hi = t_lo[todo], hi[todo]
    t = xp.clip(xp.nan_to_num(s2_start[todo], nan=0.0), lo, hi)
    live = xp.arange(todo.size)
    for _ in range(max_iter):
        tl = t[live]
        if live.size == todo.size:
            g, h, dh = score_s2(iv, ee, tl)
        else:
            g, h, dh = score_s2(iv[:, live], ee[:, live], tl)
        neg = g < 0
        lo[live] = xp.where(neg, tl, lo[live])
        hi[live] = xp.where(neg, hi[live], tl)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = tl - h / dh
        inside = xp.isfinite(new) & (new > lo[live]) & (new < hi[live])
        # outside the bracket: bisect it geometrically (the bracket may span decades)
        new = xp.where(inside, new, xp.sqrt(lo[live] * hi[live]))
        done = xp.abs(new - tl) <= tol * new
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
    xp = devices.array_namespace(X, y, ivar)
    plan = plan if plan is not None else normal_plan(X)
    P = y.shape[1]
    K = X.shape[1]
    # init_s2 may be a host array for GPU data: asarray puts it with the data (no copy on the host)
    t = xp.zeros(P) if init_s2 is None else xp.nan_to_num(xp.asarray(init_s2, dtype=float), nan=0.0).copy()
    s2_out = xp.full(P, np.nan)
    theta_out = xp.full((P, K), np.nan)
    live = xp.arange(P)
    prev_delta = xp.full(P, np.nan)
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
            bad = _unsupported(A)
            theta, solved = _stacked(xp.linalg.solve, _set_aside(A, bad), rhs[..., None], isolate=False)
            # a singular pixel: the careful path isolates it
            theta = theta[..., 0] if bool(solved.all()) and not bool(bad.any()) else _solve(A, rhs)[0]
            r = yy - X @ xp.nan_to_num(theta).T
            e = r * r
            if method == "reml":
                # the leverages average K/N: x_nᵀA⁻¹x_n ≈ (K/N) / w_n stands in for them here
                n_act = K if act is None else act.sum(axis=1)
                n_ok = xp.maximum((vv > 0).sum(axis=0), 1)
                with np.errstate(divide="ignore"):
                    e += xp.where(vv > 0, (n_act / n_ok) / xp.where(vv > 0, vv, 1.0), 0.0)
            t[live] = solve_s2(vv, e, t[live], s_min=s_min)
            continue
        Ainv, ok = _inverse(A)
        theta = xp.einsum("pkj,pj->pk", Ainv, rhs)
        r = yy - X @ xp.where(ok[:, None], theta, 0.0).T
        e = r * r
        if method == "reml":
            B = Ainv * plan.factor
            if act is not None:  # inactive terms carry an identity block, not part of XᵀWX
                B = B * (act[:, :, None] & act[:, None, :])
            B[~ok] = 0.0
            e += plan.Z @ _collapse(B, plan).T  # x_nᵀ A⁻¹ x_n, (N, P_live)
        t_new = solve_s2(vv, e, t[live], s_min=s_min)
        s_old, s_new = xp.sqrt(t[live]), xp.sqrt(t_new)
        delta = xp.abs(s_new - s_old) / xp.maximum(s_new, s_min)
        # the iteration contracts geometrically (rate ρ ~ K/N): the error left in t_new is
        # about δ ρ/(1 − ρ), with ρ read off the last two steps
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = xp.clip(delta / prev_delta[live], 0.0, 0.9)
        err = xp.where(xp.isfinite(rho), delta * rho / (1.0 - rho), np.inf)
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
    xp = devices.array_namespace(X, y, ivar)
    K = X.shape[1]
    theta = solve_theta(X, y, ivar, s2, active, plan=plan)[0]
    lam = xp.broadcast_to(xp.asarray(regularization, float), (y.shape[1],))[:, None]
    if term_weights is not None:
        lam = lam * xp.asarray(term_weights, float)[None, :]
    mask = xp.ones(K, dtype=bool)
    mask[0] = False
    for _ in range(n_iter):
        scale = xp.abs(theta) + eps
        # ∂/∂θ [Σ w r² + Λ|θ|] = 2(Aθ − b) + Λ θ/|θ_old|  =>  (A + Λ / (2|θ_old|)) θ = b
        penalty = xp.where(mask, lam / (2.0 * scale), 0.0)
        theta = solve_theta(X, y, ivar, s2, active, penalty=penalty, plan=plan)[0]
    tiny = xp.abs(theta) < 1e-8 * xp.max(xp.abs(theta), axis=1, keepdims=True)
    theta[tiny & mask] = 0.0
    return theta


def auto_pixel_chunk(n_stars, elements=131072):
    """Pixels per training batch so that an (n_stars, batch) float64 array is ~1 MB (cache-sized)."""
    return int(np.clip(16 * round(elements / max(n_stars, 1) / 16), 16, 1024))


#: elements of one (n_stars, batch) array on a GPU: there no cache is to be fitted, and few,
#: large batches keep the kernels busy (64 MB arrays; a batch holds about ten of them)
GPU_CHUNK_ELEMENTS = 1 << 23


def training_threads():
    """Threads that train pixel batches at once on the host: as many as the BLAS library may use
    in this process (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, or a ``threadpoolctl`` limit
    set by the caller, e.g. a worker's ``threads_per_worker``), so training never takes more cores
    than the matrix products alone would. 1 without ``threadpoolctl``."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 1
    blas = [int(i.get("num_threads") or 1) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(1, min(blas)) if blas else 1


def _fit_batch(Xs, f_c, i_c, act, s2_c, init, reg_c, col, method, plan):
    """θ and s² of one batch of pixels (:func:`train_pixels`' loop body; batches are independent)."""
    if s2_c is None:
        s2_c, th = fit_scatter(Xs, f_c, i_c, act, method=method, plan=plan, init_s2=init)
    else:
        th = solve_theta(Xs, f_c, i_c, s2_c, act, plan=plan)[0]
    if (reg_c > 0).any():
        th = l1_theta(Xs, f_c, i_c, s2_c, reg_c, act, term_weights=1.0 / col, plan=plan)
    return th, s2_c


def train_pixels(X, exponents, flux, ivar, active=None, method="reml", s2=None, init_s2=None, regularization=0.0,
                 pixel_chunk=None, digest=None, show_progress=True, threads=None):
    """θ and s² of every pixel, trained batch by batch of pixels (Wheeler+2020 Eqs. 3 and 5).

    The design's columns are equilibrated first (θ is unchanged, the K×K systems are well
    conditioned); bad pixels are cleaned one batch at a time (no full-size copies).

    Training runs where X is: a CuPy X (``device="gpu"``) trains on the GPU, in float64 like
    the host. The spectra stay on the host: each batch is cleaned and hashed there, as on the
    CPU, then moved to X's device (every value is moved once).

    Parameters
    ----------
    X : (N, K) float
        Design matrix η(ℓ) of the scaled training labels, constant column first.
    exponents : (K, L) int
    flux, ivar : (N, P) float, host arrays
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
        Pixels per batch (default :func:`auto_pixel_chunk`, with :data:`GPU_CHUNK_ELEMENTS`
        on a GPU; no effect on the results).
    digest : hashlib hash, optional
        Updated with every cleaned batch's flux and ivar bytes (the training-set hash).
    show_progress : bool
    threads : int, optional
        Batches trained at once by a pool of threads on the host (default
        :func:`training_threads`: the BLAS library's thread count). Every batch runs with BLAS on
        one thread: the batches are independent and NumPy's LAPACK and array loops release the
        GIL, so the cores that one batch's small matrices leave idle are used, and θ, s² are the
        same bits whatever the thread count or the machine's cores. A GPU trains its batches one
        after another.

    Returns
    -------
    theta : (P, K) float
        0 at pixels that are not ``pixel_ok`` and at censored terms.
    s2 : (P,) float
        0 at pixels that are not ``pixel_ok``.
    pixel_ok : (P,) bool
        False where the training set cannot constrain the pixel (fewer valid stars than
        active terms, or a singular system).

    All three are where X is (CuPy arrays for a CuPy X: ``devices.to_host`` brings them back).
    """
    xp = devices.array_namespace(X)
    N, P = flux.shape
    K = X.shape[1]
    col = xp.sqrt(xp.mean(X * X, axis=0))
    col[col == 0] = 1.0
    Xs = X / col
    plan = normal_plan(Xs, exponents)
    reg = np.broadcast_to(np.asarray(regularization, dtype=float), (P,))  # host: only tested per batch
    active = None if active is None else xp.asarray(active)  # with X (no copy on the host)
    theta, s2_out, n_valid = xp.zeros((P, K)), xp.zeros(P), xp.zeros(P, dtype=int)
    pixel_chunk = pixel_chunk or auto_pixel_chunk(N, **({} if xp is np else {"elements": GPU_CHUNK_ELEMENTS}))
    chunks = range(0, P, pixel_chunk)
    threads = 1 if xp is not np else int(threads or training_threads())

    def batches():
        """Each batch's arguments of :func:`_fit_batch`, cleaned and hashed in pixel order."""
        for p0 in chunks:
            sl = slice(p0, min(P, p0 + pixel_chunk))
            f_c, i_c = clean_spectra(flux[:, sl], ivar[:, sl])
            if digest is not None:
                digest.update(np.ascontiguousarray(f_c).tobytes() + np.ascontiguousarray(i_c).tobytes())
            f_c, i_c = xp.asarray(f_c), xp.asarray(i_c)  # to X's device, once (no copy on the host)
            n_valid[sl] = (i_c > 0).sum(axis=0)
            init = None if (s2 is not None or init_s2 is None) else np.asarray(init_s2, dtype=float)[sl]
            yield sl, (Xs, f_c, i_c, None if active is None else active[sl], None if s2 is None else xp.asarray(s2[sl]),
                       init, reg[sl], col, method, plan)

    # each batch's BLAS on one thread, whatever the pool: the iterations of fit_scatter stop at a
    # tolerance, so a product summed in another order (another BLAS thread count) could move s² by
    # ~1e-6; this way θ and s² are the same bits on any number of cores
    with native_threads(1), progress(total=len(chunks), desc="train (pixel chunks)", disable=not show_progress or None) as bar:
        if threads <= 1 or len(chunks) < 2:
            for sl, args in batches():
                theta[sl], s2_out[sl] = _fit_batch(*args)
                bar.update()
        else:
            _fit_batches_threaded(batches(), threads, theta, s2_out, bar)
    theta = theta / col  # undo the column equilibration
    if active is not None:
        theta[~active] = 0.0
    n_active = K if active is None else active.sum(axis=1)
    pixel_ok = xp.all(xp.isfinite(theta), axis=1) & xp.isfinite(s2_out) & (n_valid >= n_active)
    theta[~pixel_ok] = 0.0
    s2_out[~pixel_ok] = 0.0
    return theta, s2_out, pixel_ok


def _fit_batches_threaded(batches, threads, theta, s2_out, bar):
    """:func:`_fit_batch` of every ``(slice, args)`` of ``batches`` on ``threads`` threads (the caller
    holds BLAS to one thread each, so the cores are not oversubscribed); at most two batches per thread are
    prepared ahead (memory). Results go to their pixels of ``theta``, ``s2_out``; the first
    exception raised by a batch is raised here."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def collect(done):
        for fut in done:
            sl = pending.pop(fut)
            theta[sl], s2_out[sl] = fut.result()
            bar.update()

    pending = {}
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cannonade-train") as pool:
        try:
            for sl, args in batches:
                pending[pool.submit(_fit_batch, *args)] = sl
                if len(pending) >= 2 * threads:
                    collect(wait(pending, return_when=FIRST_COMPLETED)[0])
            while pending:
                collect(wait(pending, return_when=FIRST_COMPLETED)[0])
        finally:
            for fut in pending:
                fut.cancel()
