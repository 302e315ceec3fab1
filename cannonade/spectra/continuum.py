"""Continuum normalisation: the Gaussian-smoothing continuum and the clipped Chebyshev fit.

Wheeler+2020 §3: "We then continuum-normalized the spectra by dividing out the continuum,
approximated by smoothing the spectra with a Gaussian kernel with a 50 A standard deviation,
truncated at 150 A from the center" (as Ho+2017).

* :func:`continuum_gaussian` -- ivar-weighted Gaussian smoothing,
  ``C = sum_j w_j K_ij f_j / sum_j w_j K_ij`` (Ho+2017; Wheeler+2020 §3); the kernel
  (:func:`gaussian_kernel_matrix`) as dense row blocks (:func:`gaussian_kernel_blocks`) whose
  smooth cores are applied in low-rank form (:func:`block_pieces`).
* :func:`continuum_chebyshev` -- a Chebyshev series per detector region fitted by weighted least
  squares with iterative asymmetric sigma-clipping of lines (:func:`continuum_chebyshev_batch`:
  many spectra at once).
* :func:`normalise`, :func:`normalise_batch` -- ``f / C`` and ``ivar C^2``.

No medians or quantiles anywhere: they make the normalisation depend on S/N and the Cannon model
would learn that dependence. Methods: ``docs/spectra.md``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cannonade.exceptions import ConfigError, ShapeError
from cannonade.spectra.surveys import grid_key

__all__ = [
    "gaussian_kernel_matrix",
    "gaussian_kernel_blocks",
    "block_pieces",
    "continuum_gaussian",
    "continuum_gaussian_batch",
    "continuum_chebyshev",
    "continuum_chebyshev_batch",
    "normalise",
    "normalise_batch",
]


_KERNELS: dict = {}  # (grid hash, sigma, truncate) -> sparse kernel; a few grids at most
_KERNEL_BLOCK = 1 << 22  # kernel entries built at once (bounds the temporaries to ~100 MB)


def gaussian_kernel_matrix(wavelength, sigma=50.0, truncate=150.0):
    """Sparse Gaussian kernel ``K_ij = exp(-(l_i - l_j)^2 / 2 sigma^2)`` for ``|l_i - l_j| <= truncate``.

    Built in wavelength units (Angstrom), so it is exact on any grid, log-linear
    or with gaps. Cached per (grid, sigma, truncate) -- a common grid is built once.

    Parameters
    ----------
    wavelength : (n_pixels,) float, increasing
    sigma, truncate : float
        Kernel standard deviation and half-width, Angstrom (Wheeler+2020: 50 and 150).

    Returns
    -------
    K : scipy.sparse.csr_matrix, (n_pixels, n_pixels), symmetric
    """
    key, w = grid_key(wavelength)
    ckey = (key, float(sigma), float(truncate))
    K = _KERNELS.get(ckey)
    if K is not None:
        return K
    _check_kernel(sigma, truncate)
    start = np.searchsorted(w, w - truncate, side="left")
    stop = np.searchsorted(w, w + truncate, side="right")
    counts = stop - start
    # CSR built directly (each row's columns are the sorted run start..stop-1): no COO sort, and the
    # temporaries are bounded by building the entries _KERNEL_BLOCK at a time (the galah grid has ~56 M)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    nnz = int(indptr[-1])
    index_dtype = np.int32 if max(nnz, w.size) < np.iinfo(np.int32).max else np.int64
    indices = np.empty(nnz, dtype=index_dtype)
    data = np.empty(nnz, dtype=np.float64)
    r0 = 0
    while r0 < w.size:
        r1 = max(r0 + 1, int(np.searchsorted(indptr, indptr[r0] + _KERNEL_BLOCK, side="right")) - 1)
        r1 = min(r1, w.size)
        a, b = int(indptr[r0]), int(indptr[r1])
        cols = np.repeat(start[r0:r1] - (indptr[r0:r1] - a), counts[r0:r1])
        cols += np.arange(b - a)
        indices[a:b] = cols
        x = np.repeat(w[r0:r1], counts[r0:r1])  # l_i of each entry
        x -= w[cols]
        x /= sigma
        np.square(x, out=x)
        x *= -0.5
        np.exp(x, out=data[a:b])
        r0 = r1
    K = sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(w.size, w.size))
    K.has_sorted_indices = True
    if len(_KERNELS) >= 8:
        _KERNELS.pop(next(iter(_KERNELS)))
    _KERNELS[ckey] = K
    return K


_BAND_BLOCK = 64  # kernel rows per dense block (64: 1.3x the kernel's non-zeros on the LAMOST grid, 256: 2.1x)
_BAND_MAX_SPAN = 1536  # widest block (columns) kept dense; a wider one (fine grids: GALAH) only factored
_BLOCKS: dict = {}


def gaussian_kernel_blocks(wavelength, sigma=50.0, truncate=150.0):
    """The Gaussian kernel of :func:`gaussian_kernel_matrix` as dense row blocks, or None.

    The kernel is banded: rows ``r0:r1`` touch only columns ``c0:c1``. Applying it as one dense
    matrix product per block runs in BLAS, several times faster than a sparse product on a
    LAMOST-like grid (a few hundred pixels per half-width); the zeros inside a block are the
    truncation's own, so the result is the sparse product's up to rounding. None when a block
    would be wider than ``_BAND_MAX_SPAN`` columns (fine grids: the GALAH grid's dense blocks hold
    as many numbers as its sparse kernel, 56 M; the continuum applies them factored instead).

    Returns
    -------
    list of (r0, r1, c0, c1, K_block) with K_block (r1 - r0, c1 - c0) float64, or None
    """
    key, w = grid_key(wavelength)
    ckey = (key, float(sigma), float(truncate))
    if ckey not in _BLOCKS:
        if len(_BLOCKS) >= 8:
            _BLOCKS.pop(next(iter(_BLOCKS)))
        _BLOCKS[ckey] = _dense_blocks(w, sigma, truncate)
    return _BLOCKS[ckey]


def _dense_blocks(w, sigma, truncate):
    """:func:`gaussian_kernel_blocks`, built anew (not cached)."""
    _check_kernel(sigma, truncate)
    bounds = list(_block_bounds(w, truncate))
    if any(c1 - c0 > _BAND_MAX_SPAN for _, _, c0, c1, _, _ in bounds):
        return None
    return [(r0, r1, c0, c1, _kernel_block(w, sigma, r0, c0, c1, start, stop))
            for r0, r1, c0, c1, start, stop in bounds]


def _block_bounds(w, truncate):
    """``(r0, r1, c0, c1, start, stop)`` of each ``_BAND_BLOCK`` rows of the kernel: the columns
    ``c0:c1`` any of them touches, and each row's own ``start:stop`` (``|l_i - l_j| <= truncate``)."""
    start = np.searchsorted(w, w - truncate, side="left")
    stop = np.searchsorted(w, w + truncate, side="right")
    # a block never straddles a gap wider than 2 truncate (GALAH's between CCDs): rows either side
    # share no column, so such a block would have no core to factor
    gaps = np.flatnonzero(start[1:] >= stop[:-1]) + 1
    r0 = 0
    while r0 < w.size:
        r1 = min(r0 + _BAND_BLOCK, w.size)
        k = np.searchsorted(gaps, r0, side="right")
        if k < gaps.size:
            r1 = min(r1, int(gaps[k]))
        yield r0, r1, int(start[r0]), int(stop[r1 - 1]), start[r0:r1], stop[r0:r1]
        r0 = r1


def _kernel_block(w, sigma, r0, c0, c1, start, stop):
    """Rows ``r0:r0 + len(start)``, columns ``c0:c1`` of :func:`gaussian_kernel_matrix`, dense: the
    same arithmetic entry by entry (so the same bits), zero outside each row's ``start:stop``."""
    x = w[r0 : r0 + start.size, None] - w[None, c0:c1]  # l_i - l_j
    x /= sigma
    np.square(x, out=x)
    x *= -0.5
    np.exp(x, out=x)
    cols = np.arange(c0, c1)
    x[(cols < start[:, None]) | (cols >= stop[:, None])] = 0.0
    return x


def _check_kernel(sigma, truncate):
    if not (sigma > 0 and truncate > 0):
        raise ConfigError(f"continuum kernel needs sigma > 0 and truncate > 0, got {sigma}, {truncate}")


_RANK_TOL = 1e-15  # singular values kept, relative to the largest (they fall geometrically to a ~1e-16 floor)
_RANK_CHECK = 1e-13  # each row's |error| summed, relative to the row's weight sum; else the core stays dense
_PIECES: dict = {}


def block_pieces(Kb):
    """A dense kernel block as pieces whose products sum to ``X @ Kb.T``: the Gaussian is smooth,
    so the columns inside the truncation for every row of the block (the core) have a low rank.

    The core ``Kb[:, a:b] = U S V^T`` is applied as ``(X V) (U S)^T`` with the singular values
    above ``_RANK_TOL`` of the largest (11-15 of them on the LAMOST grid, against 64 rows and
    ~200 columns: ~0.6x the multiplications); the ragged columns on either side, where the
    truncation (Wheeler+2020 §3: 150 A) cuts some rows and not others, stay dense. A core that
    the factors would not rebuild to ``_RANK_CHECK`` of each row's weight sum, or would not make
    cheaper, stays dense.

    Parameters
    ----------
    Kb : (n_rows, n_cols) float64

    Returns
    -------
    list of (c_lo, c_hi, factors)
        ``sum(X[:, c_lo:c_hi] @ f1 [@ f2])`` over the pieces equals ``X @ Kb.T``: each row to
        ``_RANK_CHECK`` of ``sum_j Kb_ij max|X|`` (~1e-15 measured on the LAMOST and APOGEE grids).
    """
    n_rows, n_cols = Kb.shape
    inside = np.flatnonzero((Kb != 0).all(axis=0))
    dense = [(0, n_cols, (np.ascontiguousarray(Kb.T),))]
    if inside.size == 0:
        return dense
    a, b = int(inside[0]), int(inside[-1]) + 1
    U, s, Vt = np.linalg.svd(Kb[:, a:b], full_matrices=False)
    r = int(np.count_nonzero(s > _RANK_TOL * s[0]))
    if r * (b - a + n_rows) > 0.8 * n_rows * (b - a):
        return dense
    US = U[:, :r] * s[:r]
    # a row's smoothed value moves by at most sum_j |error_ij| |x_j|: bounded against its weights
    if np.max(np.abs(US @ Vt[:r] - Kb[:, a:b]).sum(axis=1) / Kb.sum(axis=1)) > _RANK_CHECK:
        return dense
    pieces = [(a, b, (np.ascontiguousarray(Vt[:r].T), np.ascontiguousarray(US.T)))]
    if a > 0:
        pieces.append((0, a, (np.ascontiguousarray(Kb[:, :a].T),)))
    if b < n_cols:
        pieces.append((b, n_cols, (np.ascontiguousarray(Kb[:, b:].T),)))
    return pieces


def _kernel_pieces(wavelength, sigma, truncate):
    """The kernel's row blocks (:func:`gaussian_kernel_blocks`) each as :func:`block_pieces`
    (cached), or None to apply the sparse kernel.

    Each block is built and factored in turn; only the pieces are kept (the APOGEE grid's dense
    blocks are 93 MB, its pieces 21 MB). A block wider than ``_BAND_MAX_SPAN`` columns (fine
    grids: up to a whole ~4 000-pixel CCD on GALAH's 0.05 A pixels) is kept only if its core
    factors (GALAH: ranks 5-9; the grid's pieces hold 7.5 M numbers, 60 MB, where its sparse
    kernel holds 56 M entries, 670 MB). If one does not, the grid uses the sparse kernel.

    Returns
    -------
    (blocks, rows) or None
        ``blocks``: ``(r0, r1, c0, pieces)`` per block; ``rows``: how many rows of ``X`` to
        smooth at once (None: all; ``_FINE_ROWS`` on a grid with wide blocks).
    """
    key, w = grid_key(wavelength)
    ckey = (key, float(sigma), float(truncate))
    if ckey not in _PIECES:
        _check_kernel(sigma, truncate)
        blocks, rows = [], None
        for r0, r1, c0, c1, start, stop in _block_bounds(w, truncate):
            p = block_pieces(_kernel_block(w, sigma, r0, c0, c1, start, stop))
            if c1 - c0 > _BAND_MAX_SPAN:
                if sum(f.size for _, _, fs in p for f in fs) > _BAND_MAX_SPAN * (r1 - r0):
                    blocks = None  # a wide block left dense: more numbers than the sparse kernel
                    break
                rows = _FINE_ROWS
            blocks.append((r0, r1, c0, p))
        if len(_PIECES) >= 8:
            _PIECES.pop(next(iter(_PIECES)))
        _PIECES[ckey] = None if blocks is None else (blocks, rows)
    return _PIECES[ckey]


# rows of X smoothed at once where blocks are wide: every block reads X across a whole GALAH CCD
# (~4 000 columns), and 32 rows of it (1 MB) stay in the cache from one block to the next;
# a 512-row batch (16 MB) does not, and took twice as long
_FINE_ROWS = 32


def _smooth(wavelength, X, sigma, truncate):
    """X K (K symmetric) for rows X (n, P): row blocks, their cores factored (dense where the band
    is narrow); sparse where a wide block does not factor."""
    factored = _kernel_pieces(wavelength, sigma, truncate)
    if factored is None:
        return (gaussian_kernel_matrix(wavelength, sigma, truncate) @ X.T).T
    blocks, rows = factored
    out = np.empty_like(X)
    step = rows or max(X.shape[0], 1)
    for i in range(0, X.shape[0], step):
        x = X[i : i + step]
        for r0, r1, c0, pieces in blocks:
            o = None
            for lo, hi, factors in pieces:
                t = x[:, c0 + lo : c0 + hi] @ factors[0]
                for f in factors[1:]:
                    t = t @ f
                if o is None:
                    o = t
                else:
                    o += t
            out[i : i + step, r0:r1] = o
    return out


def continuum_gaussian_batch(wavelength, flux, ivar, sigma=50.0, truncate=150.0):
    """Ivar-weighted Gaussian-smoothing continuum of many spectra on one grid.

    ``C_i = sum_j ivar_j K_ij f_j / sum_j ivar_j K_ij`` (Ho+2017; Wheeler+2020 §3);
    bad pixels (ivar = 0) carry no weight; NaN where no good pixel lies within ``truncate``.

    Parameters
    ----------
    wavelength : (n_pixels,) float
    flux, ivar : (n_spectra, n_pixels) float

    Returns
    -------
    continuum : (n_spectra, n_pixels) float64
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    _check_shapes(wavelength, flux, ivar)
    good = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    n = flux.shape[0]
    X = np.zeros((2 * n, flux.shape[1]))  # numerator and denominator rows in one product
    np.copyto(X[n:], ivar, where=good)  # w = ivar where good, else 0
    np.multiply(X[n:], flux, out=X[:n], where=good)  # w f where good, else 0
    S = _smooth(wavelength, X, sigma, truncate)
    num, den = S[:n], S[n:]
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(num, den, out=num)
    num[~(den > 0)] = np.nan
    return num


def continuum_gaussian(wavelength, flux, ivar, sigma=50.0, truncate=150.0):
    """Ivar-weighted Gaussian-smoothing continuum of one spectrum (Wheeler+2020 §3).

    Parameters
    ----------
    wavelength, flux, ivar : (n_pixels,) float
    sigma, truncate : float
        Angstrom (defaults 50 and 150 as Wheeler+2020 / Ho+2017).

    Returns
    -------
    continuum : (n_pixels,) float64 (NaN where no good pixel within ``truncate``)
    """
    return continuum_gaussian_batch(wavelength, np.asarray(flux)[None, :], np.asarray(ivar)[None, :], sigma, truncate)[0]


def _segments(wavelength, gap=20.0):
    """Contiguous pieces of a grid: split where the log step exceeds ``gap`` x the smallest one."""
    dl = np.diff(np.log(wavelength))
    cuts = np.flatnonzero(dl > gap * dl[dl > 0].min()) + 1
    bounds = np.concatenate([[0], cuts, [wavelength.size]])
    return [(wavelength[a], wavelength[b - 1]) for a, b in zip(bounds[:-1], bounds[1:])]


def continuum_chebyshev(wavelength, flux, ivar, regions=None, degree=4, continuum_mask=None, n_iter=5, low=2.0, high=3.0):
    """Continuum as a Chebyshev series per detector region through continuum pixels.

    In each region a Chebyshev series of ``degree`` in the region's scaled
    wavelength is fitted by ivar-weighted least squares. Absorption lines are
    removed by iterative asymmetric clipping: with ``z = (f - C) sqrt(ivar)`` and
    ``s = sqrt(mean(z^2))`` over the pixels still kept (a mean, not a median),
    pixels with ``z < -low s`` or ``z > high s`` are dropped and the fit repeated.

    Parameters
    ----------
    wavelength, flux, ivar : (n_pixels,) float
    regions : sequence of (wmin, wmax), optional
        Detector regions fitted separately (e.g. ``cannonade.spectra.surveys.detector_regions('apogee')``).
        Default: the contiguous pieces of ``wavelength`` (split at gaps).
    degree : int
        Chebyshev degree per region.
    continuum_mask : (n_pixels,) bool, optional
        Only these pixels may be used (e.g. known continuum pixels).
    n_iter : int
        Clipping iterations (0 = one plain fit).
    low, high : float
        Clipping thresholds below / above the fit in units of ``s``.

    Returns
    -------
    continuum : (n_pixels,) float64, NaN outside every region or where a region
        has fewer than ``degree + 2`` good pixels.
    """
    w = np.asarray(wavelength, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    iv = np.asarray(ivar, dtype=np.float64)
    if not (w.shape == f.shape == iv.shape) or w.ndim != 1:
        raise ShapeError(f"wavelength, flux, ivar must be equal 1-D shapes, got {w.shape}, {f.shape}, {iv.shape}")
    return continuum_chebyshev_batch(w, f[None], iv[None], regions, degree, continuum_mask, n_iter, low, high)[0]


def continuum_chebyshev_batch(wavelength, flux, ivar, regions=None, degree=4, continuum_mask=None, n_iter=5, low=2.0,
                              high=3.0):
    """:func:`continuum_chebyshev` of many spectra on one grid, all fitted at once.

    Every spectrum's clipped fit is the one :func:`continuum_chebyshev` describes; the fits of a
    region run in lock-step (one batch of (degree + 1)² normal equations per clipping iteration,
    a spectrum leaving the batch when its kept pixels stop changing) instead of one least-squares
    call per spectrum, region and iteration.

    Parameters
    ----------
    wavelength : (n_pixels,) float
    flux, ivar : (n_spectra, n_pixels) float
    regions, degree, continuum_mask, n_iter, low, high
        As :func:`continuum_chebyshev`.

    Returns
    -------
    continuum : (n_spectra, n_pixels) float64
        NaN outside every region and in a region where a spectrum has fewer than ``degree + 2``
        good pixels.
    """
    w = np.asarray(wavelength, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    _check_shapes(w, flux, ivar)
    usable = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    if continuum_mask is not None:
        usable &= np.asarray(continuum_mask, dtype=bool)[None, :]
    regions = _segments(w) if regions is None else regions
    cont = np.full(flux.shape, np.nan)
    for lo, hi in regions:
        sel = (w >= lo) & (w <= hi)  # a pixel on a shared boundary goes to the later region
        if not sel.any() or not len(flux):
            continue
        a, b = w[sel].min(), w[sel].max()
        x = (2.0 * (w[sel] - a) / (b - a) - 1.0) if b > a else np.zeros(sel.sum())
        V = np.polynomial.chebyshev.chebvander(x, degree)
        cols = np.flatnonzero(sel)
        coef = np.empty((len(flux), V.shape[1]))
        for r0 in range(0, len(flux), _CHEBYSHEV_ROWS):  # blocks of rows whose work arrays stay in cache
            r = slice(r0, r0 + _CHEBYSHEV_ROWS)
            coef[r] = _clipped_chebyshev_fits(V, flux[r, cols], ivar[r, cols], usable[r, cols], n_iter, low, high)
        with np.errstate(invalid="ignore"):
            cont[:, sel] = coef @ V.T  # NaN rows (too few pixels) stay NaN
    return cont


_CHEBYSHEV_ROWS = 32  # spectra fitted in lock-step at once


def _clipped_chebyshev_fits(V, flux, ivar, usable, n_iter, low, high):
    """Coefficients (n, k) of each row's iteratively clipped ivar-weighted fit of the basis V (m, k);
    NaN for a row left with fewer than k + 1 kept pixels. ``flux``, ``ivar``, ``usable`` are (n, m).

    The rows still iterating are kept together in working arrays, compacted only when some leave
    (no gather of every array at every iteration)."""
    n, k = flux.shape[0], V.shape[1]
    coef = np.full((n, k), np.nan)
    rows = np.arange(n)  # the working arrays' rows in the caller's arrays
    f0 = np.where(usable, flux, 0.0)
    iv0 = np.where(usable, ivar, 0.0)
    sqrt_iv = np.sqrt(iv0)
    ok = usable
    keep = usable.copy()
    VV = (V[:, :, None] * V[:, None, :]).reshape(V.shape[0], k * k)  # A_s = sum_p w_sp V_p V_p^T as one product
    for _ in range(n_iter + 1):
        n_kept = keep.sum(axis=1)
        enough = n_kept >= k + 1  # the others get NaN, even after a fit (continuum_chebyshev: < degree + 2)
        if not enough.all():
            coef[rows[~enough]] = np.nan
            rows, f0, iv0, sqrt_iv, ok, keep, n_kept = (a[enough] for a in (rows, f0, iv0, sqrt_iv, ok, keep, n_kept))
        if not rows.size:
            break
        w = iv0 * keep  # ivar of the kept pixels, 0 elsewhere
        fit = _weighted_fits(V, VV, w, f0)
        coef[rows] = fit
        z = f0 - fit @ V.T
        z *= sqrt_iv
        w = np.square(z, out=w)
        w *= keep
        s = np.sqrt(w.sum(axis=1) / n_kept)[:, None]
        new_keep = z > -low * s
        new_keep &= z < high * s
        new_keep &= ok
        changed = (new_keep != keep).any(axis=1)
        keep = new_keep
        if not changed.all():  # a row whose kept pixels did not change is done
            if not changed.any():
                break
            rows, f0, iv0, sqrt_iv, ok, keep = (a[changed] for a in (rows, f0, iv0, sqrt_iv, ok, keep))
    return coef


def _weighted_fits(V, VV, w, f):
    """argmin_c sum_p w_sp (V_p c - f_sp)^2 for each row s: the normal equations, solved as one
    batch; a row whose system is singular gets the least-squares (minimum-norm) solution."""
    k = V.shape[1]
    A = (w @ VV).reshape(-1, k, k)
    rhs = (w * f) @ V
    try:
        return np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        out = np.empty(rhs.shape)
        for r in range(len(rhs)):
            sw = np.sqrt(w[r])
            out[r] = np.linalg.lstsq(V * sw[:, None], f[r] * sw, rcond=None)[0]
        return out


def _continuum(wavelength, flux, ivar, method, **kwargs):
    if method == "gaussian":
        return continuum_gaussian(wavelength, flux, ivar, **kwargs)
    if method == "chebyshev":
        return continuum_chebyshev(wavelength, flux, ivar, **kwargs)
    raise ConfigError(f"unknown continuum method {method!r}: use 'gaussian', 'chebyshev' or 'none'")


def _divide(flux, ivar, cont):
    """``f / C`` (NaN where C is not finite and > 0) and ``ivar C^2`` (0 at every bad pixel)."""
    good = (cont > 0) & (cont < np.inf)  # finite and positive (NaN fails both)
    nf = np.full(np.broadcast_shapes(np.shape(flux), np.shape(cont)), np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.divide(flux, cont, out=nf, where=good)
        niv = ivar * cont
        niv *= cont  # (ivar C) C, as before
        # a bad input pixel (ivar <= 0, inf or NaN) stays bad: ivar 0, never inf. A finite f / C
        # implies a good C, and with a good C a finite ivar C^2 implies a finite ivar
        ok = np.isfinite(nf)
        ok &= ivar > 0
        ok &= np.isfinite(niv)
    niv[~ok] = 0.0
    return nf, niv


def _no_continuum(flux, ivar):
    """``method='none'``: the flux as it is, ivar 0 at every bad pixel (ivar <= 0 or not finite, flux not finite)."""
    good = np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux)
    return flux.copy(), np.where(good, ivar, 0.0)


def _check_shapes(wavelength, flux, ivar):
    """ShapeError unless flux and ivar are alike, with one value per pixel of ``wavelength``."""
    if flux.shape != ivar.shape or flux.shape[-1] != np.size(wavelength):
        raise ShapeError(f"flux {flux.shape}, ivar {ivar.shape} and wavelength ({np.size(wavelength)},) disagree; "
                         "flux and ivar must be alike, one value per wavelength")


def normalise(wavelength, flux, ivar, method="gaussian", **kwargs):
    """Continuum-normalise: ``f / C`` with ``ivar C^2`` (the same operation for training and test).

    Parameters
    ----------
    wavelength, flux, ivar : (n_pixels,) float
    method : {'gaussian', 'chebyshev', 'none'}
    **kwargs
        Passed to :func:`continuum_gaussian` (sigma, truncate) or
        :func:`continuum_chebyshev` (regions, degree, ...).

    Returns
    -------
    norm_flux, norm_ivar : (n_pixels,) float64
        ``norm_ivar = 0`` where the continuum is undefined or <= 0.
    """
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.ndim != 1:
        raise ShapeError(f"normalise takes one spectrum: flux of shape (n_pixels,), got {flux.shape} (normalise_batch "
                         "takes several)")
    _check_shapes(wavelength, flux, ivar)
    if method in (None, "none"):
        return _no_continuum(flux, ivar)
    return _divide(flux, ivar, _continuum(wavelength, flux, ivar, method, **kwargs))


def normalise_batch(wavelength, flux, ivar, method="gaussian", **kwargs):
    """:func:`normalise` for (n_spectra, n_pixels) arrays on one grid (Gaussian: one sparse product)."""
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    _check_shapes(wavelength, flux, ivar)
    if method in (None, "none"):
        return _no_continuum(flux, ivar)
    if method == "gaussian":
        cont = continuum_gaussian_batch(wavelength, flux, ivar, **kwargs)
    elif method == "chebyshev":
        cont = continuum_chebyshev_batch(wavelength, flux, ivar, **kwargs)
    else:
        raise ConfigError(f"unknown continuum method {method!r}: use 'gaussian', 'chebyshev' or 'none'")
    return _divide(flux, ivar, cont)
