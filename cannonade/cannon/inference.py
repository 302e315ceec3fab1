"""Inference: labels of many stars at once, by Levenberg–Marquardt on the reduced χ² polynomial.

For a model linear in θ with polynomial terms, a star's χ² (Nandakumar+2022 Eq. 4, with the
model scatter s² in the variance as in Wheeler+2020 Eq. 3)

    χ²(ℓ) = Σ_λ w_λ (f_λ − θ_λ·η(ℓ))²,    w_λ = 1 / (σ²_λ + s²_λ)

expands to ``c − 2 η(ℓ)·b + η(ℓ)ᵀ M η(ℓ)`` with ``b = Θᵀ(w f)`` (K,), ``M = Θᵀ diag(w) Θ``
(K, K) and ``c = Σ w f²``. For a chunk of stars, M for every star is one matrix product
``w @ T`` with ``T_λ = upper-triangle(θ_λ θ_λᵀ)``; after that each Gauss–Newton step costs
O(K² L) per star, independent of the number of pixels. The Gauss–Newton matrix ``JᵀWJ`` is
exactly ``Dᵀ M D`` with ``D = ∂η/∂ℓ``; its inverse is the label covariance (``singular``
where it has none).

Here: the reduction (:func:`reduce_chi2`), the starts, the covariance, the drivers per chunk
(:func:`infer_chunk`) and over many chunks (:func:`infer_spectra`, with its own
:class:`WorkerThreads`), and per-pixel χ² (:func:`pixel_chi2`). The minimiser itself is
``levenberg.levenberg_marquardt``.

The reduction — the O(B·P·K²) part, every pixel of every star — and :func:`pixel_chi2` are
written against the array namespace of their inputs
(:func:`cannonade.execution.device.array_namespace`): with ``device="gpu"`` a chunk's spectra
go to the GPU, are reduced there, and only the small reduced problem (B·K² numbers) comes
back; the starts, the Levenberg–Marquardt and the covariance work on it on the host.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cannonade.cannon.levenberg import levenberg_marquardt
from cannonade.cannon.quality import median_snr
from cannonade.cannon.training import scatter_weights
from cannonade.cannon.vectorizer import design_jacobian, design_matrix, symmetric_gather_index
from cannonade.execution import device as devices
from cannonade.util import progress

N_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Default number of worker threads for the batched solves: the cores, at most 4."""


class WorkerThreads:
    """Worker threads for the batched LAPACK calls of one inference call (see :func:`_batched`).

    Owned by the call that makes it (``CannonModel.infer``, :func:`infer_spectra`,
    :func:`infer_chunk`), never by a module: the threads start on first use and are joined
    by :meth:`close` (use it as a context manager), so none outlives the call, and a forked
    child never inherits a pool whose threads do not exist there.

    Parameters
    ----------
    n_threads : int, optional
        Default ``N_THREADS``; 1 runs everything inline.
    """

    def __init__(self, n_threads=None):
        self.n_threads = N_THREADS if n_threads is None else max(1, int(n_threads))
        self._executor = None

    def map(self, fn, items):
        """``fn`` over ``items`` on the threads (started now if not yet running); an iterator."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.n_threads, thread_name_prefix="cannonade-infer")
        return self._executor.map(fn, items)

    def close(self):
        """Join the threads (if any were started)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class ReducedProblem:
    """Sufficient statistics of a chunk of stars' χ² (see module docstring).

    M : (B, K, K) float64 (from a float32 product on the host, a float64 one on a GPU),
    M32 : the same in float32, b : (B, K), c : (B,), n_pixels : (B,) valid pixels per star,
    snr : (B,) median flux·sqrt(ivar) over them (:func:`quality.median_snr`). NumPy arrays,
    or CuPy arrays straight out of a GPU reduction (:func:`to_host` brings them back).
    """

    M: np.ndarray
    b: np.ndarray
    c: np.ndarray
    n_pixels: np.ndarray
    M32: np.ndarray | None = None
    snr: np.ndarray | None = None


def to_host(problem):
    """``problem`` with NumPy arrays (a GPU reduction's arrays copied back; the host's as they are)."""
    return ReducedProblem(**{k: devices.to_host(v) for k, v in vars(problem).items()})


def theta_products(theta, dtype=None):
    """Upper-triangle products θ_k θ_j of the non-constant terms: (P, (K−1)K/2).

    Used by :func:`reduce_chi2`; compute once per model and reuse across chunks. ``dtype``
    (the precision of the reduction's big product): by default float32 for host arrays (see
    :func:`reduce_chi2`) and float64 for GPU arrays (computed there; the GPU's reduction is
    float64 throughout).

    Column (i, j) of the packing (``vectorizer.pair_indices`` order) is θ_i θ_j multiplied in
    float64 and rounded once to float32. Built one row i of the triangle at a time, θ_i times
    the columns j ≥ i, written straight into the float32 result: no (P, (K−1)K/2) float64
    gathers (10× faster than ``(t[:, i] * t[:, j]).astype(np.float32)`` at 7 200 pixels, bit
    for bit the same values), which matters on the first ``infer`` call of a freshly loaded
    model (the model caches the result for its later calls).
    """
    xp = devices.array_namespace(theta)
    dtype = (np.float32 if xp is np else np.float64) if dtype is None else dtype
    t = xp.asarray(theta, dtype=np.float64)[:, 1:]
    P, K1 = t.shape
    out = xp.empty((P, K1 * (K1 + 1) // 2), dtype=dtype)
    a = 0
    for i in range(K1):  # the packing of pair_indices (np.triu_indices): row i, then j = i..K1−1
        xp.multiply(t[:, i, None], t[:, i:], out=out[:, a : a + K1 - i], casting="same_kind")
        a += K1 - i
    return out


def _median_snr(flux, ivar, invalid, n_invalid):
    """:func:`quality.median_snr` where the arrays are.

    On the host it is that function (a fixed-kth partition of a padded float32 copy, written
    for NumPy). On a GPU the same numbers from one sort per row: the same float32 values of
    f|f|·ivar, invalid ones +inf (sorted last), the valid middle one or two read at
    (n−1)//2 and n//2, then the same float64 square roots.
    """
    xp = devices.array_namespace(flux, ivar, invalid)
    if xp is np:
        return median_snr(flux, ivar, invalid, n_invalid)
    M, P = flux.shape
    if M == 0 or P == 0:
        return xp.full(M, np.nan)
    g = xp.abs(flux).astype(np.float64)
    g *= flux
    g *= ivar  # f|f|·ivar in float64, then one cast to float32, as on the host
    g = g.astype(np.float32)
    g[invalid] = np.inf
    g.sort(axis=1)
    n = P - n_invalid
    v1, v2 = (xp.take_along_axis(g, xp.clip(k, 0, P - 1)[:, None], axis=1)[:, 0].astype(np.float64)
              for k in ((n - 1) // 2, n // 2))
    med = 0.5 * (xp.sign(v1) * xp.sqrt(xp.abs(v1)) + xp.sign(v2) * xp.sqrt(xp.abs(v2)))
    return xp.where(n > 0, med, np.nan)


def _prepare_block(flux, ivar, s2, theta0, w, f, snr=None):
    """Weights and constant-subtracted flux of a block of stars, written into w, f (b, P).

    Non-finite or non-positive ivar and non-finite flux give w = 0 and f = 0. With ``snr``
    (b,), each star's :func:`quality.median_snr` is written there while the block is in cache.
    Returns the number of valid pixels per star (b,). Host or GPU arrays, all on one.
    """
    xp = devices.array_namespace(flux, ivar, w)
    P = flux.shape[1]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if xp.isfinite(ivar.sum()) and ivar.min() >= 0:
            # the usual case: ivar finite and ≥ 0, so w = 0 exactly where ivar = 0
            scatter_weights(ivar, s2, out=w)  # Wheeler+2020 Eq. 3 weights
            xp.subtract(flux, theta0, out=f)
            bad = ~xp.isfinite(f)
            if bad.any():  # NaN/inf flux counts as ivar = 0 (copyto: no index arrays, unlike w[bad] = 0)
                xp.copyto(w, 0.0, where=bad)
                xp.copyto(f, 0.0, where=bad)
            invalid = w == 0.0
            n_invalid = xp.count_nonzero(invalid, axis=1)
            if snr is not None:
                snr[:] = _median_snr(flux, ivar, invalid, n_invalid)
            return P - n_invalid
        good = (ivar > 0) & (ivar < np.inf) & xp.isfinite(flux)
        xp.copyto(w, xp.where(good, scatter_weights(ivar, s2), 0.0))
        xp.copyto(f, xp.where(good, flux - theta0, 0.0))
        n_valid = good.sum(axis=1)
        if snr is not None:
            snr[:] = _median_snr(flux, ivar, ~good, P - n_valid)
        return n_valid


def reduce_chi2(theta, s2, flux, ivar, theta_pairs=None, block_elements=1 << 17, gemm_rows=512):
    """Reduce a chunk of spectra to the χ² polynomial's coefficients.

    The constant term (column 0 of θ, η_0 = 1) is moved to the data, f' = f − θ_0, so that
    M, b and c describe only the label-dependent part: χ² = c − 2 b·η + ηᵀMη with row and
    column 0 of M and b_0 zero. What is left is small and of one magnitude, so the large
    product M = Θ'ᵀ W Θ' is done in float32 (twice the speed) without losing the precision
    the labels need (labels move by < 1e-4 σ against a float64 product); b and c stay float64.
    The product is done in the precision of ``theta_pairs``: float32 on the host, float64 on
    a GPU (which has the float64 throughput; M32 is then M rounded, for the host's steps).

    No (B, P) array is kept: stars are prepared in cache-sized blocks and reduced by a
    matrix product per group of ``gemm_rows`` stars. float32 spectra (as a store holds them)
    are read as they are: each value is converted to float64 where it is used, exactly as a
    float64 copy would give, without the copy. The preparation stays on this thread: shared
    with a worker thread it was slower (7–30 % in CPU and wall time at 7 200 and 3 900 pixels
    on 2 cores), the worker contending for the second core with the BLAS threads that spin
    after each product.

    On a GPU (CuPy ``flux``, ``ivar``, ``theta``, ``s2``: :func:`infer_chunk` puts them there)
    the same code runs as one block and one product (no cache to fit, and each kernel launch
    costs); the result is then on the GPU too (:func:`to_host`).

    Parameters
    ----------
    theta : (P, K) float
        Row 0 of the model's exponents is the constant term.
    s2 : (P,) float
    flux, ivar : (B, P) float32 or float64
        Non-finite flux is treated as ivar = 0.
    theta_pairs : (P, (K−1)K/2) float32 (float64 on a GPU), optional
        :func:`theta_products` of θ (reused across chunks).
    block_elements : int
        Stars are prepared in blocks of about this many (star, pixel) elements.
    gemm_rows : int
        Stars per matrix product (it sets how the float32 product is cut, so it changes M in
        the last bits; keep it fixed).
    """
    xp = devices.array_namespace(flux, ivar, theta)
    K = theta.shape[1]
    B, P = flux.shape
    if theta_pairs is None:
        theta_pairs = theta_products(theta)
    # contiguous copies: θ_0 as a strided column (θ[:, 0]) makes f − θ_0, the subtraction of
    # every (star, pixel), 5× slower (numpy cannot vectorise a strided operand)
    theta0, theta1 = xp.ascontiguousarray(theta[:, 0]), xp.ascontiguousarray(theta[:, 1:])
    if xp is not np:  # a GPU: one block, one product (the sizes below are a CPU cache's)
        block_elements, gemm_rows = max(B, 1) * max(P, 1), max(B, 1)
    sub = max(1, min(B, block_elements // max(P, 1)))
    rows = max(sub, gemm_rows // sub * sub)
    gemm = theta_pairs.dtype  # the big product's precision: float32 on the host, float64 on a GPU
    w32 = xp.empty((min(rows, B), P), dtype=gemm)
    wf = xp.empty((min(rows, B), P))
    Mflat = xp.empty((B, theta_pairs.shape[1]), dtype=gemm)
    b, c = xp.zeros((B, K)), xp.empty(B)
    n_pixels = xp.empty(B, dtype=np.int64)
    snr = xp.empty(B)

    w, f = xp.empty((sub, P)), xp.empty((sub, P))
    for g0 in range(0, B, rows):
        g1 = min(B, g0 + rows)
        for i in range(g0, g1, sub):
            j = min(g1, i + sub)
            ww, ff = w[: j - i], f[: j - i]
            n_pixels[i:j] = _prepare_block(flux[i:j], ivar[i:j], s2, theta0, ww, ff, snr[i:j])
            w32[i - g0 : j - g0] = ww
            xp.multiply(ww, ff, out=wf[i - g0 : j - g0])
            c[i:j] = xp.einsum("bp,bp->b", wf[i - g0 : j - g0], ff)
        xp.matmul(w32[: g1 - g0], theta_pairs, out=Mflat[g0:g1])
        b[g0:g1, 1:] = wf[: g1 - g0] @ theta1
    Mg = xp.zeros((B, K, K), dtype=gemm)
    # unpack the upper-triangle packing: one contiguous gather (vectorizer.unpack_symmetric's)
    Mg[:, 1:, 1:] = xp.take(Mflat, xp.asarray(symmetric_gather_index(K - 1).ravel()), axis=-1).reshape(B, K - 1, K - 1)
    M32 = Mg if Mg.dtype == np.float32 else Mg.astype(np.float32)
    return ReducedProblem(M=Mg.astype(np.float64, copy=False), b=b, c=c, n_pixels=n_pixels, M32=M32, snr=snr)


def chi2_at(problem, eta):
    """χ² = c − 2 b·η + ηᵀMη of each star at its design vector eta (B, K) -> (B,).

    Evaluated in float64; M comes from a float32 product, so the value differs from the sum
    over pixels by a relative ~1e-6 (median 4e-7, at most 6e-6 on the benchmark's spectra),
    far below what χ² is used for (goodness of fit, choosing between models).
    """
    Meta = np.einsum("bkj,bj->bk", problem.M, eta)
    return problem.c - 2.0 * np.einsum("bk,bk->b", problem.b, eta) + np.einsum("bk,bk->b", eta, Meta)


def _batched(fn, *arrays, threads=None, min_batch=128):
    """fn(*arrays) for arrays batched along axis 0, split over ``threads`` (a WorkerThreads).

    For NumPy's stacked matrix products and solves, which release the GIL: with 2 cores a
    batch of 1000 stars runs ~1.9× faster. Batches of fewer than 2 × ``min_batch`` stars, and
    ``threads=None``, run inline (128: the 256-star chunks of a 9-label model are split too,
    3 % off the whole inference at the LAMOST size; every matrix is solved alone, so the split
    changes no value).
    """
    n = 1 if threads is None else min(threads.n_threads, arrays[0].shape[0] // min_batch)
    if n <= 1:
        return fn(*arrays)
    edges = np.linspace(0, arrays[0].shape[0], n + 1).astype(int)
    parts = threads.map(lambda ij: fn(*(a[ij[0] : ij[1]] for a in arrays)), zip(edges[:-1], edges[1:]))
    return np.concatenate(list(parts))


def linear_start(problem, exponents, ridge=1e-8, clip=5.0, threads=None):
    """The ivar-weighted linear-algebra estimate: solve M η = b for every non-constant term
    (the constant is fixed at 1, see :func:`reduce_chi2`), keep the linear terms.

    Returns (B, L) scaled labels (clipped to ±clip; 0 where the solve fails). The batched
    solve is split over ``threads`` (a :class:`WorkerThreads`) when given.
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
        eta = _batched(np.linalg.solve, Mr, b[..., None], threads=threads)[..., 0]
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


def starting_points(problem, exponents, threads=None):
    """Starts per star: linear-algebra estimate, training mean (0), and the ±1σ corners.

    Returns (B, S, L) scaled labels, S = 4; names in ``START_NAMES``.
    """
    B, L = problem.b.shape[0], exponents.shape[1]
    lin = linear_start(problem, exponents, threads=threads)
    zeros = np.zeros((B, L))
    return np.stack([lin, zeros, zeros + 1.0, zeros - 1.0], axis=1)


START_NAMES = ("linear", "mean", "+1sigma", "-1sigma")


def covariance(problem, exponents, labels):
    """(JᵀWJ)⁻¹ at the solution, in scaled units, and where it does not exist.

    Parameters
    ----------
    problem : ReducedProblem of B stars
    exponents : (K, L) int
    labels : (B, L) float, scaled

    Returns
    -------
    cov : (B, L, L) float
        NaN where ``singular``.
    singular : (B,) bool
        JᵀWJ singular to working precision: not finite, not invertible, a non-positive
        variance, or a variance-inflation factor ``H_jj (H⁻¹)_jj`` above 0.1/eps of the
        precision H was formed in (8e5 for the float32 products: beyond it the rounding of H
        alone moves a variance by > 10 %). The spectrum does not constrain some direction in
        label space (e.g. its valid pixels are all ones where a label is censored, or no pixel
        depends on a label). Measured: the largest VIF is 1.1 on the Wheeler-size benchmark,
        44 on the real APOGEE sample (100 pixels).
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
    # variance-inflation factors H_jj (H⁻¹)_jj: rounding H (relative eps) moves a variance by
    # ~VIF·eps, so beyond 0.1/eps the inverse is rounding noise, not a measurement
    max_vif = 0.1 / np.finfo(np.float32 if problem.M32 is not None else np.float64).eps
    with np.errstate(invalid="ignore"):
        var = np.diagonal(cov, axis1=1, axis2=2)
        vif = var * np.diagonal(H, axis1=1, axis2=2)
        singular = ~(np.all(np.isfinite(cov), axis=(1, 2)) & np.all(var > 0, axis=1) & np.all(vif < max_vif, axis=1))
    cov[singular] = np.nan
    return cov, singular


def infer_chunk(theta, s2, exponents, flux, ivar, theta_pairs=None, max_iter=100, threads=None, device="cpu"):
    """Best-of-starts labels for one chunk of stars, in scaled units.

    The χ² reduction is one multi-threaded matrix product; the linear-start solve is split
    over ``threads`` (a :class:`WorkerThreads`; by default this call makes its own, with
    ``N_THREADS`` threads: the cores, at most 4).

    With ``device="gpu"`` the chunk's spectra are moved to the GPU (θ, s² and ``theta_pairs``
    too, unless already there: move them once per model), reduced there, and the reduced
    problem is brought back; the rest runs on the host as for ``"cpu"``.

    Returns dict with labels (B, L), cov (B, L, L), chi2 (B,) from the pixels,
    dof (B,), converged (B,), singular (B,), start (B,) index into START_NAMES, n_iter (B,),
    snr (B,) (:func:`quality.spectrum_snr` over these pixels).
    """
    if threads is None:
        with WorkerThreads() as own:
            return infer_chunk(theta, s2, exponents, flux, ivar, theta_pairs, max_iter, threads=own, device=device)
    if device == "cpu":
        problem = reduce_chi2(theta, s2, flux, ivar, theta_pairs)
    else:  # a float32 chunk (a store's) travels as float32: half the bytes, the same values
        on = [devices.to_device(a, device) for a in (theta, s2, flux, ivar, theta_pairs)]
        problem = to_host(reduce_chi2(*on))
    out = solve_reduced(problem, exponents, max_iter, threads=threads)
    out["snr"] = problem.snr  # the calibration's S/N, computed block by block by the reduction
    return out


def solve_reduced(problem, exponents, max_iter=100, threads=None):
    """Labels, covariance and χ² of the stars of a :class:`ReducedProblem` (scaled units).

    A star with no more valid pixels than labels gets NaN labels, ``converged`` False and
    ``singular`` True; ``singular`` is True exactly where ``cov`` is NaN.
    """
    starts = starting_points(problem, exponents, threads=threads)
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
    cov, singular = covariance(problem, exponents, np.where(empty[:, None], 0.0, labels))
    cov[empty] = np.nan
    singular |= empty
    chi2 = chi2_at(problem, design_matrix(np.where(empty[:, None], 0.0, labels), exponents))
    chi2[empty] = np.nan
    return dict(
        labels=labels,
        cov=cov,
        chi2=chi2,
        dof=problem.n_pixels - L,
        converged=converged,
        singular=singular,
        start=best,
        n_iter=n_iter,
    )


def auto_star_chunk(n_terms, nbytes=6e6):
    """Stars per inference batch so that their (K, K) float64 matrices take ~``nbytes``."""
    n = nbytes / (8.0 * n_terms * n_terms)
    return int(np.clip(2 ** round(np.log2(max(n, 1.0))), 64, 4096))


#: stars per batch on a GPU: each batch is one transfer and one product there, so fewer, larger
#: batches launch fewer kernels; the host's per-star solve costs the same at any batch size
#: (~0.12-0.15 ms a star at the LAMOST shape, measured on the CPU and on an H200's host)
GPU_STAR_CHUNK = 4096

RESULT_KEYS = ("labels", "cov", "chi2", "dof", "converged", "singular", "start", "n_iter", "snr")


def infer_spectra(theta, s2, exponents, flux, ivar, pixels=None, theta_pairs=None, star_chunk=None, max_iter=100,
                  show_progress=True, n_threads=None, device="cpu"):
    """Labels of many spectra, batch by batch of stars (:func:`infer_chunk` per batch), scaled units.

    Parameters
    ----------
    theta : (P', K) float
        θ of the pixels used (``pixels`` of the spectra's P).
    s2 : (P',) float
    exponents : (K, L) int
    flux, ivar : (M, P) float
    pixels : (P,) bool, optional
        The spectra's pixels that ``theta`` describes (default all, P' = P); selected batch
        by batch, so the spectra are never copied whole.
    theta_pairs : (P', (K−1)K/2) float32, optional
        :func:`theta_products` of ``theta`` (reuse it across calls).
    star_chunk : int, optional
        Stars per batch (default :func:`auto_star_chunk` on the CPU, :data:`GPU_STAR_CHUNK` on a
        GPU; no effect on the results).
    max_iter : int
    show_progress : bool
    n_threads : int, optional
        Worker threads for the batched solves (default ``N_THREADS``); they are this call's
        and joined before it returns.
    device : {"cpu", "gpu"}
        Where each batch's χ² reduction runs (:func:`infer_chunk`). For ``"gpu"``, pass θ, s²
        and ``theta_pairs`` already on the GPU (``cannonade.execution.to_device``,
        ``theta_products`` of the GPU θ) to move them once, not per batch.

    Returns
    -------
    dict
        labels (M, L), cov (M, L, L) (scaled units), chi2 (M,), dof (M,) int, converged (M,)
        bool, singular (M,) bool, start (M,) int, n_iter (M,) int, snr (M,) float (median
        ``flux·sqrt(ivar)`` over the valid pixels among ``pixels``).
    """
    M, L = flux.shape[0], exponents.shape[1]
    if device != "cpu":  # DeviceError now (no CuPy, no GPU), not in the first batch
        theta, s2 = (devices.to_device(a, device) for a in (theta, s2))
    if theta_pairs is None:
        theta_pairs = theta_products(theta)
    out = {k: [] for k in RESULT_KEYS}
    star_chunk = star_chunk or (GPU_STAR_CHUNK if device != "cpu" else auto_star_chunk(exponents.shape[0]))
    chunks = range(0, M, star_chunk)
    if show_progress and len(chunks) > 1:  # no bar (nor tqdm's import, 0.1 s on a first call) for one chunk
        chunks = progress(chunks, desc="infer (star chunks)", total=len(chunks))
    with WorkerThreads(n_threads) as threads:
        for s0 in chunks:
            sl = slice(s0, min(M, s0 + star_chunk))
            f_c, i_c = (flux[sl], ivar[sl]) if pixels is None else (flux[sl][:, pixels], ivar[sl][:, pixels])
            r = infer_chunk(theta, s2, exponents, f_c, i_c, theta_pairs, max_iter=max_iter, threads=threads,
                            device=device)
            for k in out:
                out[k].append(r[k])
    res = {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in out.items()}
    if M == 0:
        res["labels"], res["cov"] = np.zeros((0, L)), np.zeros((0, L, L))
    for k, dtype in (("dof", int), ("converged", bool), ("singular", bool), ("start", int), ("n_iter", int)):
        res[k] = res[k].astype(dtype)
    return res


def pixel_chi2(theta, s2, exponents, labels, flux, ivar, pixel_ok=None):
    """Each pixel's χ² contribution w (f − θ·η(ℓ))², w = ivar / (1 + ivar s²) (Wheeler+2020 Eq. 3).

    Parameters
    ----------
    theta : (P, K) float
    s2 : (P,) float
    exponents : (K, L) int
    labels : (M, L) float, host
        Scaled labels, one row per spectrum.
    flux, ivar : (M, P) float
        On the host, or with θ and s² on a GPU (the result is then there too).
    pixel_ok : (P,) bool, optional
        Pixels the model can predict; 0 elsewhere.

    Returns
    -------
    (M, P) float
        0 where there is no information (ivar 0, negative or not finite, flux not finite, a
        pixel the model cannot predict); a row of NaN for a star whose labels are not all
        finite (the model is never evaluated at a made-up label).
    """
    xp = devices.array_namespace(theta, flux, ivar)
    out = xp.full(flux.shape, np.nan)
    ok = np.all(np.isfinite(labels), axis=1)
    D = design_matrix(labels[ok], exponents)  # (M', K): small, made on the host
    ok, D = xp.asarray(ok), xp.asarray(D)  # with the spectra (no copy on the host)
    f, i = flux[ok], ivar[ok]
    with np.errstate(invalid="ignore", over="ignore"):
        good = (i > 0) & xp.isfinite(i) & xp.isfinite(f)
        if pixel_ok is not None:
            good &= xp.asarray(pixel_ok)[None, :]
        r = xp.where(good, f - D @ theta.T, 0.0)
        out[ok] = scatter_weights(xp.where(good, i, 0.0), s2) * r * r
    return out
