"""Spectrum preprocessing: rest frame, flux-conserving resampling with variance, continuum.

Wheeler+2020 §3: "we first redshift-corrected the spectra using the z value
provided in the LAMOST data table and interpolated each star to a common
wavelength grid. We then continuum-normalized the spectra by dividing out the
continuum, approximated by smoothing the spectra with a Gaussian kernel with a
50 A standard deviation, truncated at 150 A from the center" (as Ho+2017).

* :func:`doppler_shift` -- observed -> rest wavelengths, ``lambda / (1 + z)``.
* :func:`resample` -- pixel-overlap (flux-conserving) rebinning written as a
  sparse linear map ``R``: ``f' = R f`` and ``var' = (R o R) var`` (element-wise
  square), exact for independent input pixels. Output pixels that touch a bad
  input pixel or are not fully covered by the input get ``ivar = 0``.
* :func:`continuum_gaussian` -- ivar-weighted Gaussian smoothing,
  ``C = sum_j w_j K_ij f_j / sum_j w_j K_ij`` (Ho+2017; Wheeler+2020 §3).
* :func:`continuum_chebyshev` -- a Chebyshev series per detector region fitted
  by weighted least squares with iterative asymmetric sigma-clipping of lines
  (:func:`continuum_chebyshev_batch`: many spectra at once).
* :func:`normalise` -- ``f / C`` and ``ivar C^2``.

No medians or quantiles anywhere: they make the normalisation depend on S/N and
the Cannon model would learn that dependence. Methods are documented in
``docs/spectra.md``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import scipy.sparse as sp

from cannonade.exceptions import ConfigError, ShapeError
from cannonade.spectra.surveys import log_lambda_grid  # re-exported: one definition, in surveys

__all__ = [
    "doppler_shift",
    "log_lambda_grid",
    "pixel_edges",
    "resampling_matrix",
    "resample",
    "resample_batch",
    "gaussian_kernel_matrix",
    "block_pieces",
    "continuum_gaussian",
    "continuum_gaussian_batch",
    "continuum_chebyshev",
    "continuum_chebyshev_batch",
    "normalise",
    "normalise_batch",
    "prepare_spectrum",
]

#: entries of the resampling map below this fraction of an output pixel are round-off
_OVERLAP_TOL = 1e-6


def doppler_shift(wavelength, z):
    """Shift observed wavelengths to the rest frame: ``lambda_rest = lambda_obs / (1 + z)``.

    Parameters
    ----------
    wavelength : (n_pixels,) float
    z : float or None
        Redshift; None or NaN means "unknown": the wavelengths are returned unshifted.

    Returns
    -------
    (n_pixels,) float64
    """
    w = np.asarray(wavelength, dtype=np.float64)
    if z is None:
        return w.copy()
    z = float(z)
    if not math.isfinite(z):
        return w.copy()
    if z <= -1.0:
        raise ConfigError(f"redshift z={z} <= -1 is unphysical")
    return w / (1.0 + z)


def pixel_edges(wavelength, gap_factor=2.0):
    """Lower and upper edges of each pixel, from its centre and its neighbours.

    Edges lie half way to the neighbouring centres. Where the spacing on one side
    is more than ``gap_factor`` times the other (a detector gap, e.g. between
    GALAH CCDs or APOGEE chips) the pixel is made symmetric about its centre using
    the smaller spacing, so pixels never stretch across gaps.

    Parameters
    ----------
    wavelength : (n,) or (n_spectra, n) float, strictly increasing (along each row), n >= 2

    Returns
    -------
    lo, hi : float64, the shape of ``wavelength`` (each row's edges are those of that row alone)
    """
    w = np.asarray(wavelength, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] < 2:
        raise ShapeError(f"wavelength must be 1-D (or one row per spectrum) with >= 2 pixels, got shape {w.shape}")
    d = np.diff(w, axis=-1)
    if not np.all(d > 0):
        raise ShapeError("wavelength must be strictly increasing")
    if not (np.any(d[..., 1:] > gap_factor * d[..., :-1]) or np.any(d[..., :-1] > gap_factor * d[..., 1:])):
        # no gap (a survey's grid): each edge half way to both neighbours, the same numbers as below
        half = 0.5 * d
        lo, hi = np.empty_like(w), np.empty_like(w)
        np.subtract(w[..., 1:], half, out=lo[..., 1:])
        np.subtract(w[..., :1], half[..., :1], out=lo[..., :1])
        np.add(w[..., :-1], half, out=hi[..., :-1])
        np.add(w[..., -1:], half[..., -1:], out=hi[..., -1:])
        return lo, hi
    left = np.concatenate([d[..., :1], d], axis=-1)  # spacing to the previous centre (mirrored at the start)
    right = np.concatenate([d, d[..., -1:]], axis=-1)
    left = np.where(left > gap_factor * right, right, left)
    right = np.where(right > gap_factor * left, left, right)
    return w - 0.5 * left, w + 0.5 * right


def _overlap_entries(lo, hi, nlo, nhi):
    """(rows, cols, overlap) of all (output j, input i) pixel pairs that overlap.

    Vectorised: for each output pixel, the overlapping inputs are the contiguous
    range [start_j, stop_j) found by binary search (edges are sorted).
    """
    start = np.searchsorted(hi, nlo, side="right")  # first input with hi > nlo_j
    stop = np.searchsorted(lo, nhi, side="left")  # first input with lo >= nhi_j
    counts = np.clip(stop - start, 0, None)
    total = int(counts.sum())
    rows = np.repeat(np.arange(nlo.size), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = np.repeat(start, counts) + offsets
    overlap = np.minimum(hi[cols], nhi[rows]) - np.maximum(lo[cols], nlo[rows])
    return rows, cols, overlap


_MAX_OVERLAPS = 16  # input pixels per output pixel handled by _overlap_sums; more: the sparse entries
_SEARCH_STEPS = 4  # corrections of a row's estimated search index before np.searchsorted takes that row


def searchsorted_rows(a, v, side="left"):
    """``np.searchsorted(a[k], v, side)`` for every row ``k`` at once, exactly.

    Each row's index is first estimated as if the row were evenly spaced in log
    wavelength (a survey's pixels; after a Doppler shift still so), then corrected
    a pixel at a time against the definition of the search; a row the estimate
    misses by more than a few pixels is searched by numpy, so any sorted rows give
    numpy's answer.

    Parameters
    ----------
    a : (n_rows, m) float, each row sorted
    v : (n_out,) float, sorted
    side : {'left', 'right'}

    Returns
    -------
    (n_rows, n_out) intp
    """
    a = np.asarray(a, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    n, m = a.shape
    if n == 0 or v.size == 0:
        return np.zeros((n, v.size), dtype=np.intp)
    with np.errstate(divide="ignore", invalid="ignore"):
        la0 = np.log(a[:, :1])
        step = (np.log(a[:, -1:]) - la0) / max(m - 1, 1)
        lv = np.log(v)
    # only the estimate depends on these, the corrections below (or numpy's search) give the exact
    # index: a row without a usable log step (values <= 0 or NaN, a constant row) and a value of v
    # without a log (<= 0 or NaN) start from 0, by the same clip that bounds the others
    lv[np.isnan(lv)] = -np.inf
    unusable = ~(np.isfinite(la0) & np.isfinite(step) & (step > 0))
    any_unusable = bool(unusable.any())
    if any_unusable:
        la0, step = np.where(unusable, 0.0, la0), np.where(unusable, 1.0, step)
    est = lv[None, :] - la0  # v between a[i-1] and a[i]: i
    est /= step
    np.floor(est, out=est)
    est += 1.0
    np.clip(est, 0, m, out=est)  # no NaN left: +-inf clip to m or 0
    est = est.astype(np.intp)
    if any_unusable:
        est[unusable[:, 0]] = 0
    # the index is right when a[i-1] precedes v and a[i] does not ('left': a < v; 'right': a <= v)
    before = np.less if side == "left" else np.less_equal
    flat = np.concatenate([np.full((n, 1), -np.inf), a, np.full((n, 1), np.inf)], axis=1).ravel()  # a[-1] = -inf, a[m] = inf
    base = (np.arange(n) * (m + 2) + 1)[:, None]
    moved = np.ones(n, dtype=bool)
    for _ in range(_SEARCH_STEPS):
        up = before(np.take(flat, est + base), v)  # a[i] precedes v: go right (take: faster than a[...])
        down = ~before(np.take(flat, est + (base - 1)), v)  # a[i-1] does not: go left
        moved = (up | down).any(axis=1)
        if not moved.any():
            return est
        est += up
        est -= down
    for k in np.flatnonzero(moved):
        est[k] = np.searchsorted(a[k], v, side=side)
    return est


def _overlap_sums(lo, hi, nlo, nhi, f0, var0, bad):
    """R f, (R o R) var, whether a bad input is touched, and coverage, one output pixel's m-th
    overlap at a time.

    The same entries, in the same order, as :func:`_resampling_entries` + ``bincount`` (so the same
    bits), without building the entry lists: output pixel j overlaps the contiguous inputs
    ``start_j .. stop_j - 1``, at most a few of them when the grids have similar steps. Every
    argument but ``nlo``, ``nhi`` (n_out,) is (n_rows, n_in): one row per spectrum, each with its
    own input grid. None when some output pixel overlaps more than ``_MAX_OVERLAPS`` inputs.
    """
    start = searchsorted_rows(hi, nlo, side="right")
    stop = searchsorted_rows(lo, nhi, side="left")
    n_max = int(np.max(stop - start, initial=0))
    if n_max > _MAX_OVERLAPS:
        return None
    width = nhi - nlo
    shape = start.shape
    new_f = np.zeros(shape)
    new_var = np.zeros(shape)
    touched_bad = np.zeros(shape, dtype=bool)  # any bad input overlapped (only == 0 matters)
    coverage = np.zeros(shape)
    n_in = lo.shape[-1]
    # gathers from the flattened rows with np.take (several times faster than take_along_axis, ~1.6x
    # faster than fancy indexing)
    lo_f, hi_f, f0_f, var0_f, bad_f = (np.ravel(x) for x in (lo, hi, f0, var0, bad))
    base = (np.arange(shape[0]) * n_in)[:, None]
    for m in range(n_max):
        c = start + m
        inside = c < stop
        np.minimum(c, n_in - 1, out=c)
        c += base
        frac = (np.minimum(np.take(hi_f, c), nhi) - np.maximum(np.take(lo_f, c), nlo)) / width
        keep = inside & (frac > _OVERLAP_TOL)
        frac = np.where(keep, frac, 0.0)
        new_f += frac * np.take(f0_f, c)
        term = frac * frac  # (frac frac) var, in this order: the same bits as the sparse map
        term *= np.take(var0_f, c)
        new_var += term
        touched_bad |= keep & np.take(bad_f, c)
        coverage += frac
    return new_f, new_var, touched_bad, coverage


def _pad_edges(lo, hi):
    """Each row's input edges between two pairs of empty pixels: ``-inf`` and a zero-width pixel at
    its first edge before, a zero-width pixel at its last edge and ``+inf`` after. An empty pixel
    overlaps nothing (its ``frac`` is never above ``_OVERLAP_TOL``), so adding it to an output
    pixel's inputs adds only zeros; with them, the output pixels at either end of a spectrum follow
    the same overlap pattern as the others."""
    n = len(lo)
    first, last = lo[:, :1], hi[:, -1:]
    inf = np.full((n, 1), np.inf)
    return (np.concatenate([-inf, first, lo, last, inf], axis=1),
            np.concatenate([-inf, first, hi, last, inf], axis=1))


def shifted_rows(lo, hi, nlo, nhi):
    """Rows whose output pixel ``j`` overlaps exactly the padded inputs ``s + j .. s + j + n - 1``.

    Two grids with the same log step (a LAMOST spectrum, Doppler-shifted or not, on the LAMOST
    grid) overlap with the same pattern at every pixel, shifted by ``s``. The rows are those of
    :func:`_pad_edges` (two empty pixels at each end, so the end pixels follow the pattern too).
    ``s`` and ``n`` come from the first output pixel; the pattern is then verified at every output
    pixel against the definition of :func:`_overlap_sums`' search (``start_j``: the first input
    with ``hi > nlo_j``; ``stop_j``: the first with ``lo >= nhi_j``), so a row is accepted only
    when the pattern is exact.

    Parameters
    ----------
    lo, hi : (n_rows, n_in + 4) float, each row's padded input pixel edges
    nlo, nhi : (n_out,) float, the output pixel edges

    Returns
    -------
    ok : (n_rows,) bool
    s : (n_rows,) intp
    n : int
        Inputs per output pixel in the accepted rows (the commonest count; 0 when none).
    """
    n_rows, n_pad = lo.shape
    n_out = nlo.size
    s = np.count_nonzero(hi <= nlo[0], axis=1)  # searchsorted(hi[k], nlo[0], 'right'): rows are sorted
    counts = np.count_nonzero(lo < nhi[0], axis=1) - s
    ok = (counts >= 1) & (counts <= _MAX_OVERLAPS) & (s + counts + n_out <= n_pad)  # s >= 1: hi[0] = -inf
    if not ok.any():
        return ok, s, 0
    n = int(np.bincount(counts[ok]).argmax())
    ok &= counts == n
    rows = np.flatnonzero(ok)
    # the last output pixel first (a different log step fails there, without reading the rows)
    j, r, last = n_out - 1, rows, s[rows] + n_out - 1  # `last`: the padded input starting pixel j
    ok[r] = (hi[r, last - 1] <= nlo[j]) & (nlo[j] < hi[r, last])
    ok[r] &= (lo[r, last + n - 1] < nhi[j]) & (nhi[j] <= lo[r, last + n])
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return ok, s, 0
    # start_j = s + j iff hi[s+j-1] <= nlo_j < hi[s+j]; stop_j = s + n + j iff lo[s+n+j-1] < nhi_j <= lo[s+n+j]
    h = _windows(hi, rows, s[rows] - 1, n_out + 1)
    exact = (h[:, :n_out] <= nlo).all(axis=1)
    exact &= (h[:, 1:] > nlo).all(axis=1)
    low = _windows(lo, rows, s[rows] + n - 1, n_out + 1)
    exact &= (low[:, :n_out] < nhi).all(axis=1)
    exact &= (low[:, 1:] >= nhi).all(axis=1)
    ok[rows[~exact]] = False
    return ok, s, n


def _windows(x, rows, first, length):
    """``x[rows[i], first[i] : first[i] + length]`` for every i, as one (len(rows), length) array."""
    view = np.lib.stride_tricks.sliding_window_view(x, length, axis=1)
    return view[rows, first]


def _shifted_overlap_sums(lo, hi, nlo, nhi, f0, var0, bad, rows, first, n):
    """:func:`_overlap_sums` of ``rows`` whose output pixel ``j`` overlaps inputs ``first + j ..
    first + j + n - 1`` (every argument but ``nlo``, ``nhi``, ``rows``, ``first`` (len(rows),)
    and ``n`` is (n_rows, n_in)): each term read from one window of each array instead of a gather
    per term; the same terms, in the same order, so the same bits (an empty pixel's terms are 0;
    a flux sum of exactly zero may be -0.0 where the search's is +0.0)."""
    n_out = nlo.size
    w_lo, w_hi, w_f, w_var, w_bad = (_windows(x, rows, first, n_out + n - 1) for x in (lo, hi, f0, var0, bad))
    width = nhi - nlo
    for m in range(n):
        sl = slice(m, m + n_out)
        frac = (np.minimum(w_hi[:, sl], nhi) - np.maximum(w_lo[:, sl], nlo)) / width
        keep = frac > _OVERLAP_TOL
        frac = np.where(keep, frac, 0.0)
        term = frac * frac  # (frac frac) var, as _overlap_sums
        term *= w_var[:, sl]
        if m == 0:  # the first terms start the sums (0 + x is x: no zeroed arrays to fill)
            new_f, new_var, touched_bad, coverage = frac * w_f[:, sl], term, keep & w_bad[:, sl], frac
            continue
        new_f += frac * w_f[:, sl]
        new_var += term
        touched_bad |= keep & w_bad[:, sl]
        coverage += frac
    return new_f, new_var, touched_bad, coverage


def _all_overlap_sums(lo, hi, nlo, nhi, f0, var0, bad):
    """:func:`_overlap_sums` of every row: rows that overlap the output grid with one shifted
    pattern (:func:`shifted_rows`) from windows of padded rows, the others by search and gathers.
    None when one of those has an output pixel over ``_MAX_OVERLAPS`` inputs."""
    lo_p, hi_p = _pad_edges(lo, hi)
    ok, s, n = shifted_rows(lo_p, hi_p, nlo, nhi)
    rows, rest = np.flatnonzero(ok), np.flatnonzero(~ok)
    if rows.size == 0:
        return _overlap_sums(lo, hi, nlo, nhi, f0, var0, bad)
    zero = np.zeros((len(lo), 2))
    f0_p, var0_p = (np.concatenate([zero, x, zero], axis=1) for x in (f0, var0))
    bad_p = np.concatenate([zero.astype(bool), bad, zero.astype(bool)], axis=1)
    shifted = _shifted_overlap_sums(lo_p, hi_p, nlo, nhi, f0_p, var0_p, bad_p, rows, s[rows], n)
    if rest.size == 0:
        return shifted
    others = _overlap_sums(lo[rest], hi[rest], nlo, nhi, f0[rest], var0[rest], bad[rest])
    if others is None:
        return None
    out = []
    for a, b in zip(shifted, others):
        o = np.empty((len(lo), nlo.size), dtype=a.dtype)
        o[rows] = a
        o[rest] = b
        out.append(o)
    return tuple(out)


def _resampling_entries(wavelength, new_wavelength, edges=None):
    """Non-zero entries (rows, cols, R_ji) of the rebinning map and the output coverage
    (``edges``: the input and output pixel edges ``(lo, hi, nlo, nhi)`` when already known)."""
    lo, hi, nlo, nhi = edges if edges is not None else (*pixel_edges(wavelength), *_edges_cached(new_wavelength))
    rows, cols, overlap = _overlap_entries(lo, hi, nlo, nhi)
    frac = overlap / (nhi - nlo)[rows]
    keep = frac > _OVERLAP_TOL
    rows, cols, frac = rows[keep], cols[keep], frac[keep]
    coverage = np.bincount(rows, weights=frac, minlength=nlo.size)
    return rows, cols, frac, coverage


_EDGES: dict = {}


def _edges_cached(wavelength):
    """pixel_edges of a (common) grid, cached: the output grid is the same for every spectrum."""
    w = np.asarray(wavelength, dtype=np.float64)
    key = (w.size, float(w[0]), float(w[-1]), hashlib.sha1(w.tobytes()).hexdigest())
    if key not in _EDGES:
        if len(_EDGES) >= 8:
            _EDGES.pop(next(iter(_EDGES)))
        _EDGES[key] = pixel_edges(w)
    return _EDGES[key]


def resampling_matrix(wavelength, new_wavelength):
    """The flux-conserving rebinning map from one pixel grid onto another.

    ``R[j, i]`` = (length of input pixel i inside output pixel j) / (length of
    output pixel j), so ``R @ f`` is the average flux density over each output
    pixel (flux is conserved: ``sum_j R_ji dl_j = dl_i`` where fully covered).

    Parameters
    ----------
    wavelength : (n_in,) float, increasing
    new_wavelength : (n_out,) float, increasing

    Returns
    -------
    R : scipy.sparse.csr_matrix, shape (n_out, n_in)
    coverage : (n_out,) float64
        Fraction of each output pixel covered by input pixels (1 inside the input range).
    """
    rows, cols, frac, coverage = _resampling_entries(wavelength, new_wavelength)
    R = sp.csr_matrix((frac, (rows, cols)), shape=(coverage.size, np.size(wavelength)))
    return R, coverage


def _apply_resampling(R, coverage, flux, ivar):
    """Apply R to flux rows and R o R to variance rows; mark bad outputs.

    flux, ivar : (n_spec, n_in). Returns (n_spec, n_out) flux, ivar.
    """
    good_in = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    f0 = np.where(good_in, flux, 0.0)
    with np.errstate(divide="ignore"):
        var0 = np.where(good_in, 1.0 / np.where(good_in, ivar, 1.0), 0.0)
    R2 = R.multiply(R)
    B = R.copy()
    B.data = np.ones_like(B.data)  # "touches": any overlap above round-off
    new_f = (R @ f0.T).T
    new_var = (R2 @ var0.T).T
    n_bad = (B @ (~good_in).astype(np.float64).T).T
    covered = coverage > 1.0 - 1e-6
    good = covered[None, :] & (n_bad == 0) & (new_var > 0)
    with np.errstate(divide="ignore"):
        new_ivar = np.where(good, 1.0 / np.where(good, new_var, 1.0), 0.0)
    new_f = np.where(good, new_f, np.nan)
    return new_f, new_ivar


def resample(wavelength, flux, ivar, new_wavelength):
    """Rebin a spectrum onto a new wavelength grid, propagating the variance exactly.

    Flux-conserving pixel-overlap rebinning as a linear map R (see
    :func:`resampling_matrix`): ``new_flux = R f``, ``new_var = (R o R) var``
    (independent input pixels). Output pixels that touch a bad input pixel
    (``ivar == 0``) or are not fully inside the input range get ``ivar = 0`` and
    ``flux = NaN``.

    Parameters
    ----------
    wavelength : (n_in,) float, increasing
    flux, ivar : (n_in,) float
    new_wavelength : (n_out,) float, increasing

    Returns
    -------
    flux, ivar : (n_out,) float64
    """
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if not (flux.shape == ivar.shape == wavelength.shape) or flux.ndim != 1:
        raise ShapeError(f"wavelength, flux, ivar must be equal 1-D shapes, got {wavelength.shape}, {flux.shape}, {ivar.shape}")
    new_f, new_ivar = _resample_rows(wavelength[None], flux[None], ivar[None], new_wavelength)
    return new_f[0], new_ivar[0]


def _resample_rows(wavelength, flux, ivar, new_wavelength):
    """:func:`resample` of (n_rows, n_in) rows, each with its own grid, in one pass of array
    operations (per row only where an output pixel spans more than ``_MAX_OVERLAPS`` inputs)."""
    good_in = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    f0 = np.where(good_in, flux, 0.0)
    with np.errstate(divide="ignore"):
        var0 = np.where(good_in, 1.0 / np.where(good_in, ivar, 1.0), 0.0)
    lo, hi = pixel_edges(wavelength)
    nlo, nhi = _edges_cached(new_wavelength)
    summed = _all_overlap_sums(lo, hi, nlo, nhi, f0, var0, ~good_in)
    if summed is None:  # an output pixel spans many input pixels: the explicit sparse entries
        n_out = nlo.size
        new_f, new_var, n_bad, coverage = (np.empty((len(flux), n_out)) for _ in range(4))
        for k in range(len(flux)):
            rows, cols, frac, coverage[k] = _resampling_entries(wavelength[k], new_wavelength, (lo[k], hi[k], nlo, nhi))
            new_f[k] = np.bincount(rows, weights=frac * f0[k, cols], minlength=n_out)  # R f
            new_var[k] = np.bincount(rows, weights=frac * frac * var0[k, cols], minlength=n_out)  # (R o R) var
            n_bad[k] = np.bincount(rows, weights=(~good_in[k, cols]).astype(np.float64), minlength=n_out)
    else:
        new_f, new_var, n_bad, coverage = summed
    good = (coverage > 1.0 - 1e-6) & (n_bad == 0) & (new_var > 0)
    with np.errstate(divide="ignore"):
        new_ivar = np.where(good, 1.0 / np.where(good, new_var, 1.0), 0.0)
    return np.where(good, new_f, np.nan), new_ivar


def resample_batch(wavelength, flux, ivar, new_wavelength):
    """:func:`resample` for many spectra.

    Parameters
    ----------
    wavelength : (n_in,) or (n_spectra, n_in) float
        One grid shared by all spectra (one matrix, applied at once) or one per spectrum
        (different rest frames: every spectrum's map built and applied in one pass of array
        operations, the same numbers as :func:`resample` of each).
    flux, ivar : (n_spectra, n_in) float
    new_wavelength : (n_out,) float

    Returns
    -------
    flux, ivar : (n_spectra, n_out) float64
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if flux.shape != ivar.shape:
        raise ShapeError(f"flux {flux.shape} and ivar {ivar.shape} differ")
    if wavelength.ndim == 1:
        if flux.shape[-1] != wavelength.size:
            raise ShapeError(f"flux {flux.shape} has {flux.shape[-1]} pixels per spectrum but wavelength has {wavelength.size}")
        R, coverage = resampling_matrix(wavelength, new_wavelength)
        return _apply_resampling(R, coverage, flux, ivar)
    if wavelength.shape != flux.shape:
        raise ShapeError(f"wavelength {wavelength.shape} and flux {flux.shape} differ")
    return _resample_rows(wavelength, flux, ivar, new_wavelength)  # one map per spectrum, all at once


# ---------------------------------------------------------------------------
# continuum


def _grid_key(wavelength):
    w = np.ascontiguousarray(wavelength, dtype=np.float64)
    return hashlib.sha1(w.tobytes()).hexdigest(), w


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
    key, w = _grid_key(wavelength)
    ckey = (key, float(sigma), float(truncate))
    K = _KERNELS.get(ckey)
    if K is not None:
        return K
    if not (sigma > 0 and truncate > 0):
        raise ConfigError(f"continuum kernel needs sigma > 0 and truncate > 0, got {sigma}, {truncate}")
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
_BAND_MAX_SPAN = 1536  # widest block (columns) kept dense; wider kernels (fine grids: GALAH) stay sparse
_BLOCKS: dict = {}


def gaussian_kernel_blocks(wavelength, sigma=50.0, truncate=150.0):
    """The Gaussian kernel of :func:`gaussian_kernel_matrix` as dense row blocks, or None.

    The kernel is banded: rows ``r0:r1`` touch only columns ``c0:c1``. Applying it as one dense
    matrix product per block runs in BLAS, several times faster than a sparse product on a
    LAMOST-like grid (a few hundred pixels per half-width); the zeros inside a block are the
    truncation's own, so the result is the sparse product's up to rounding. None when a block
    would be wider than ``_BAND_MAX_SPAN`` columns (fine grids, where the sparse form is smaller).

    Returns
    -------
    list of (r0, r1, c0, c1, K_block) with K_block (r1 - r0, c1 - c0) float64, or None
    """
    key, w = _grid_key(wavelength)
    ckey = (key, float(sigma), float(truncate))
    if ckey in _BLOCKS:
        return _BLOCKS[ckey]
    K = gaussian_kernel_matrix(w, sigma, truncate)
    blocks = []
    for r0 in range(0, w.size, _BAND_BLOCK):
        r1 = min(r0 + _BAND_BLOCK, w.size)
        c0, c1 = int(K.indices[K.indptr[r0]]), int(K.indices[K.indptr[r1] - 1]) + 1
        if c1 - c0 > _BAND_MAX_SPAN:
            blocks = None
            break
        blocks.append((r0, r1, c0, c1, K[r0:r1, c0:c1].toarray()))
    if len(_BLOCKS) >= 8:
        _BLOCKS.pop(next(iter(_BLOCKS)))
    _BLOCKS[ckey] = blocks
    return blocks


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
    """:func:`gaussian_kernel_blocks` with each block as :func:`block_pieces` (cached), or None."""
    key, w = _grid_key(wavelength)
    ckey = (key, float(sigma), float(truncate))
    if ckey not in _PIECES:
        blocks = gaussian_kernel_blocks(w, sigma, truncate)
        if len(_PIECES) >= 8:
            _PIECES.pop(next(iter(_PIECES)))
        _PIECES[ckey] = None if blocks is None else [(r0, r1, c0, block_pieces(Kb)) for r0, r1, c0, _, Kb in blocks]
    return _PIECES[ckey]


def _smooth(wavelength, X, sigma, truncate):
    """X K (K symmetric) for rows X (n, P): dense blocks, their cores factored, where the band is
    narrow; else sparse."""
    blocks = _kernel_pieces(wavelength, sigma, truncate)
    if blocks is None:
        return (gaussian_kernel_matrix(wavelength, sigma, truncate) @ X.T).T
    out = np.empty_like(X)
    for r0, r1, c0, pieces in blocks:
        o = None
        for lo, hi, factors in pieces:
            t = X[:, c0 + lo : c0 + hi] @ factors[0]
            for f in factors[1:]:
                t = t @ f
            if o is None:
                o = t
            else:
                o += t
        out[:, r0:r1] = o
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


_normalise = normalise  # prepare_spectrum's ``normalise`` argument shadows the function


def prepare_spectrum(spectrum, grid, z=None, normalise="gaussian", **kwargs):
    """Rest frame -> common grid -> continuum-normalised, as Wheeler+2020 §3.

    Parameters
    ----------
    spectrum : cannonade.spectra.readers.Spectrum
    grid : str or (n_pixels,) float
        A named grid (``cannonade.spectra.surveys.common_grid``) or the wavelengths.
    z : float, optional
        Redshift to remove; default ``spectrum.meta['redshift']``. NaN -> no shift.
    normalise : {'gaussian', 'chebyshev', 'none'}
    **kwargs
        Passed to the continuum method.

    Returns
    -------
    flux, ivar : (n_pixels,) float64 on the grid
    """
    from cannonade.spectra.surveys import common_grid

    grid = common_grid(grid) if not isinstance(grid, np.ndarray) else np.asarray(grid, dtype=np.float64)
    if z is None:
        z = spectrum.meta.get("redshift", math.nan)
    rest = doppler_shift(spectrum.wavelength, z)
    f, iv = resample(rest, spectrum.flux, spectrum.ivar, grid)
    return _normalise(grid, f, iv, method=normalise, **kwargs)
