"""Flux-conserving resampling with variance: a spectrum's pixels onto a common grid.

Wheeler+2020 §3: "[we] interpolated each star to a common wavelength grid". :func:`resample` is
pixel-overlap (flux-conserving) rebinning written as a sparse linear map ``R``: ``f' = R f`` and
``var' = (R o R) var`` (element-wise square), exact for independent input pixels. Output pixels
that touch a bad input pixel or are not fully covered by the input get ``ivar = 0``.

* :func:`pixel_edges` -- each pixel's edges, half way to its neighbours (symmetric at a gap).
* :func:`resampling_matrix` -- ``R`` as a sparse matrix, with each output pixel's coverage.
* :func:`resample`, :func:`resample_batch` -- one spectrum; many (one grid, or one per spectrum).
* :func:`searchsorted_rows`, :func:`shifted_rows` -- the overlap search of many rows at once.
* :func:`log_step`, :func:`geometric_rows` -- rows on a log-linear grid's step, summed with
  constant weights instead of searched.

Methods and measurements: ``docs/spectra.md``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cannonade.exceptions import ShapeError
from cannonade.spectra.surveys import grid_key

__all__ = [
    "pixel_edges",
    "searchsorted_rows",
    "shifted_rows",
    "log_step",
    "geometric_rows",
    "resampling_matrix",
    "resample",
    "resample_batch",
]

#: entries of the resampling map below this fraction of an output pixel are round-off
_OVERLAP_TOL = 1e-6


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

    Each row's index is first estimated as a quadratic in log wavelength through the row's
    first, middle and last values (exact for pixels evenly spaced in log wavelength, LAMOST's
    and APOGEE's, after a Doppler shift still so; within a pixel for pixels evenly spaced in
    wavelength, GALAH's, which a straight line in log wavelength misses by ~20 over a CCD),
    then corrected a pixel at a time against the definition of the search; a row the estimate
    misses by more than a few pixels is searched by numpy, so any sorted rows give numpy's
    answer.

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
    mid = (m - 1) // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        la0 = np.log(a[:, :1])
        x1 = np.log(a[:, mid : mid + 1]) - la0  # log(a / a[0]) at the middle and last values
        x2 = np.log(a[:, -1:]) - la0
        lv = np.log(v)
        # index(x) = x (d1 + d2 (x - x1)) through (0, 0), (x1, mid), (x2, m - 1) (divided differences)
        d1 = mid / x1
        d2 = ((m - 1 - mid) / (x2 - x1) - d1) / x2
    # only the estimate depends on these, the corrections below (or numpy's search) give the exact
    # index: a row without a usable quadratic (values <= 0 or NaN, fewer than 3 distinct values) and
    # a value of v without a log (<= 0 or NaN) start from 0, by the same clip that bounds the others
    lv[np.isnan(lv)] = -np.inf
    unusable = ~(np.isfinite(la0) & np.isfinite(d1) & np.isfinite(d2) & (x1 > 0) & (x2 > x1))
    any_unusable = bool(unusable.any())
    if any_unusable:
        la0, x1, x2 = np.where(unusable, 0.0, la0), np.where(unusable, 1.0, x1), np.where(unusable, 2.0, x2)
        d1, d2 = np.where(unusable, 0.0, d1), np.where(unusable, 0.0, d2)
    x = lv[None, :] - la0
    below, above = x < 0, x > x2  # outside the row: the quadratic is used only inside it
    np.clip(x, 0.0, x2, out=x)
    est = x - x1
    est *= d2
    est += d1
    est *= x  # v between a[i-1] and a[i]: i
    np.floor(est, out=est)
    est += 1.0
    est[below] = 0.0
    est[above] = m
    np.clip(est, 0, m, out=est)
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
    zero, no = np.zeros((len(lo), 2)), np.zeros((len(lo), 2), dtype=bool)
    f0_p, var0_p = (np.concatenate([zero, x, zero], axis=1) for x in (f0, var0))
    bad_p = np.concatenate([no, bad, no], axis=1)
    shifted = _shifted_overlap_sums(lo_p, hi_p, nlo, nhi, f0_p, var0_p, bad_p, rows, s[rows], n)
    if rest.size == 0:
        return shifted
    others = _overlap_sums(lo[rest], hi[rest], nlo, nhi, f0[rest], var0[rest], bad[rest])
    if others is None:
        return None
    return _merge_rows(rows, shifted, rest, others)


def _merge_rows(rows, a, rest, b):
    """The sums of all rows from those of ``rows`` (``a``) and of the ``rest`` (``b``): each a
    tuple of (len, n_out) arrays."""
    out = []
    for x, y in zip(a, b):
        o = np.empty((len(rows) + len(rest), x.shape[1]), dtype=x.dtype)
        o[rows] = x
        o[rest] = y
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
    key, w = grid_key(wavelength)
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
    operations (per row only where an output pixel spans more than ``_MAX_OVERLAPS`` inputs).
    Rows on the output grid's log step take :func:`_geometric_sums`, the others the search."""
    good_in = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    f0 = np.where(good_in, flux, 0.0)
    with np.errstate(divide="ignore"):
        var0 = np.where(good_in, 1.0 / np.where(good_in, ivar, 1.0), 0.0)
    bad = ~good_in
    nlo, nhi = _edges_cached(new_wavelength)
    geo, summed = _geometric_part(wavelength, new_wavelength, nlo, nhi, f0, var0, bad)
    if geo.size < len(flux) or summed is None:  # (no rows at all: the search's empty sums)
        rest = np.setdiff1d(np.arange(len(flux)), geo) if geo.size else slice(None)
        searched = _searched_sums(wavelength[rest], new_wavelength, nlo, nhi, f0[rest], var0[rest], bad[rest])
        summed = searched if geo.size == 0 else _merge_rows(geo, summed, rest, searched)
    new_f, new_var, touched_bad, coverage = summed
    good = (coverage > 1.0 - 1e-6) & ~touched_bad & (new_var > 0)
    with np.errstate(divide="ignore"):
        new_ivar = np.where(good, 1.0 / np.where(good, new_var, 1.0), 0.0)
    return np.where(good, new_f, np.nan), new_ivar


def _searched_sums(wavelength, new_wavelength, nlo, nhi, f0, var0, bad):
    """R f, (R o R) var, whether a bad input is touched, and coverage of rows with any grid: each
    output pixel's inputs found by searching the rows' edges (:func:`_all_overlap_sums`), or the
    explicit sparse entries of each row when an output pixel spans many inputs."""
    lo, hi = pixel_edges(wavelength)
    summed = _all_overlap_sums(lo, hi, nlo, nhi, f0, var0, bad)
    if summed is not None:
        return summed
    n_out = nlo.size
    new_f, new_var, n_bad, coverage = (np.empty((len(f0), n_out)) for _ in range(4))
    for k in range(len(f0)):
        rows, cols, frac, coverage[k] = _resampling_entries(wavelength[k], new_wavelength, (lo[k], hi[k], nlo, nhi))
        new_f[k] = np.bincount(rows, weights=frac * f0[k, cols], minlength=n_out)  # R f
        new_var[k] = np.bincount(rows, weights=frac * frac * var0[k, cols], minlength=n_out)  # (R o R) var
        n_bad[k] = np.bincount(rows, weights=bad[k, cols].astype(np.float64), minlength=n_out)
    return new_f, new_var, n_bad > 0, coverage


# ---------------------------------------------------------------------------
# rows on the output grid's log step


#: A row is resampled as a geometric progression (:func:`geometric_rows`) when its wavelengths lie
#: within this fraction of one exact progression with the output grid's ratio (LAMOST DR1 rows on
#: the ``lamost`` grid: ~2e-15; APOGEE apStar rows on the ``apogee`` grid: exact). Its constant
#: weights then differ from each pixel's own overlap by at most a few times this times
#: lambda / d_lambda (fuzzed: 1e-9 on the LAMOST grid, 2e-8 on APOGEE's; ~1e-12 on real rows),
#: below the store's float32 (6e-8).
_GEOMETRIC_RTOL = 1e-13
_CANDIDATES = np.arange(-1, 3)  # inputs j + o - 1 .. j + o + 2 may overlap output pixel j (o: the row's offset)
_POWERS: dict = {}
_LOG_STEPS: dict = {}


def _powers(step, n):
    """``exp(step * i)``, i < n (cached: a survey has one or two)."""
    key = (step, n)
    p = _POWERS.get(key)
    if p is None:
        if len(_POWERS) >= 16:
            _POWERS.pop(next(iter(_POWERS)))
        p = _POWERS[key] = np.exp(step * np.arange(n))
    return p


def log_step(grid):
    """The natural log of the pixel ratio of a geometric (log-linear) grid, or None.

    Parameters
    ----------
    grid : (n,) float, increasing

    Returns
    -------
    float or None
        ``ln(grid[i + 1] / grid[i])`` when every pixel lies within ``_GEOMETRIC_RTOL`` (relative)
        of one geometric progression from ``grid[0]``; None for any other grid.
    """
    w = np.ascontiguousarray(grid, dtype=np.float64)
    if w.ndim != 1 or w.size < 2:
        return None
    key, w = grid_key(w)
    if key not in _LOG_STEPS:
        step = None
        if w[0] > 0 and w[-1] > w[0]:
            s = float(np.log(w[-1] / w[0]) / (w.size - 1))
            q = w / _powers(s, w.size)
            if np.ptp(q) <= _GEOMETRIC_RTOL * q.min():
                step = s
        if len(_LOG_STEPS) >= 8:
            _LOG_STEPS.pop(next(iter(_LOG_STEPS)))
        _LOG_STEPS[key] = step
    return _LOG_STEPS[key]


def geometric_rows(wavelength, step):
    """Which rows are geometric progressions of ratio ``exp(step)`` (to ``_GEOMETRIC_RTOL``).

    Parameters
    ----------
    wavelength : (n_rows, n_in) float
    step : float, the output grid's :func:`log_step`

    Returns
    -------
    ok : (n_rows,) bool
    q0 : (n_rows,) float
        Each row's smallest ``wavelength[i] / exp(step i)``: its first pixel, to the tolerance.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.ndim != 2:
        raise ShapeError(f"wavelength must be one row per spectrum (n_rows, n_in), got shape {wavelength.shape}")
    q = wavelength / _powers(step, wavelength.shape[1])
    q0, q1 = q.min(axis=1, initial=np.inf), q.max(axis=1, initial=-np.inf)  # a NaN row fails the test below
    return (q1 - q0 <= _GEOMETRIC_RTOL * q0) & (q0 > 0) & (q0 < np.inf), q0


def _edges_at(w_flat, base, i, n_in):
    """:func:`pixel_edges` (no gap) of input pixels ``i`` of the rows starting at ``base`` of the
    flattened rows ``w_flat``: the same arithmetic, for a few pixels."""
    wi = np.take(w_flat, base + i)
    a = np.where(i >= 1, i - 1, 0)  # lo_i = w_i - (w_i - w_{i-1}) / 2; the first pixel: w_0 - (w_1 - w_0) / 2
    lo = wi - 0.5 * (np.take(w_flat, base + a + 1) - np.take(w_flat, base + a))
    b = np.where(i <= n_in - 2, i, n_in - 2)  # hi_i = w_i + (w_{i+1} - w_i) / 2; the last: w_last + its left half
    hi = wi + 0.5 * (np.take(w_flat, base + b + 1) - np.take(w_flat, base + b))
    return lo, hi


def _candidate_fracs(w_flat, base, o, j, nlo, nhi, n_in):
    """The overlap fractions of output pixels ``j`` with inputs ``j + o + c``, c in ``_CANDIDATES``
    (``base``, ``o``, ``j``: (K,)): (K, 4) fractions (0 where not kept), kept, input indices
    (clipped to the row; an input off the row is never kept)."""
    i = (j + o)[:, None] + _CANDIDATES
    valid = (i >= 0) & (i < n_in)
    ic = np.clip(i, 0, n_in - 1)
    lo, hi = _edges_at(w_flat, base[:, None], ic, n_in)
    frac = (np.minimum(hi, nhi[j][:, None]) - np.maximum(lo, nlo[j][:, None])) / (nhi[j] - nlo[j])[:, None]
    keep = valid & (frac > _OVERLAP_TOL)
    return np.where(keep, frac, 0.0), keep, ic


def _geometric_pattern(wavelength, q0, nlo, nhi, grid0, step):
    """Each geometric row's overlap pattern: output pixel ``j`` takes ``a0 f[start + j]`` (+ ``a1
    f[start + j + 1]`` where ``k1``) at its inner pixels ``j_lo .. j_hi``.

    The weights are the exact overlaps at three inner pixels (first, middle, last), which must
    agree (to 1e-9); ``ok`` is False for a row where they do not or with too few inner pixels."""
    n_rows, n_in = wavelength.shape
    n_out = nlo.size
    rows = np.arange(n_rows)
    o = np.floor(-np.log(q0 / grid0) / step).astype(np.intp)  # input 0 sits at output pixel -o - t, 0 <= t < 1
    # inner pixels: not the grid's first or last, every candidate input in 1 .. n_in - 2 (both
    # edges half way to a neighbour, as the pattern needs)
    j_lo = np.maximum(1, 2 - o)
    j_hi = np.minimum(n_out - 2, n_in - 4 - o)
    ok = j_lo + 2 <= j_hi
    j_lo, j_hi = np.where(ok, j_lo, 0), np.where(ok, j_hi, 2)
    refs = np.stack([j_lo, (j_lo + j_hi) // 2, j_hi], axis=1).ravel()
    frac, keep, _ = _candidate_fracs(np.ravel(wavelength), np.repeat(rows * n_in, 3), np.repeat(o, 3), refs, nlo, nhi, n_in)
    frac, keep = frac.reshape(n_rows, 3, 4), keep.reshape(n_rows, 3, 4)
    first = np.argmax(keep[:, 1], axis=1)
    nxt = np.minimum(first + 1, 3)
    k1 = keep[rows, 1, nxt] & (first < 3)
    ok &= keep[:, 1].sum(axis=1) == 1 + k1  # one or two neighbouring inputs
    ok &= (keep == keep[:, 1:2]).all(axis=(1, 2)) & (np.abs(frac - frac[:, 1:2]) <= 1e-9).all(axis=(1, 2))
    a0, a1 = frac[rows, 1, first], np.where(k1, frac[rows, 1, nxt], 0.0)
    return ok, (o, o + first - 1, a0, a1, k1, j_lo, j_hi)


def _geometric_sums(wavelength, nlo, nhi, f0, var0, bad, pattern):
    """:func:`_overlap_sums` of rows on the output grid's log step, from their
    :func:`_geometric_pattern`.

    On a common log step the pixel edges scale with wavelength, so every output pixel overlaps
    its inputs with the same fractions: the inner pixels are ``a0 f[start + j] + a1 f[start + j
    + 1]`` from two windows of each array; the pixels near either end of a row's inputs (where
    the first and last input's edges are not half way between two centres, and where coverage
    ends) are summed from their own overlaps, as the search would."""
    o, start, a0, a1, k1, j_lo, j_hi = pattern
    n_rows, n_in = f0.shape
    n_out = nlo.size
    rows = np.arange(n_rows)
    pad_lo = max(0, -int(start.min()))
    pad_hi = max(0, int(start.max()) + n_out + 1 - n_in)
    padded = [np.pad(x, ((0, 0), (pad_lo, pad_hi))) if pad_lo or pad_hi else x for x in (f0, var0, bad)]
    w_f, w_var, w_bad = (_windows(x, rows, start + pad_lo, n_out + 1) for x in padded)
    c0, c1 = a0[:, None], a1[:, None]
    new_f = c0 * w_f[:, :-1]
    new_f += c1 * w_f[:, 1:]
    new_var = (c0 * c0) * w_var[:, :-1]  # (a a) var, as the sparse map
    new_var += (c1 * c1) * w_var[:, 1:]
    touched_bad = w_bad[:, :-1].copy()
    touched_bad |= w_bad[:, 1:] & k1[:, None]
    coverage = np.repeat((a0 + a1)[:, None], n_out, axis=1)
    # every pixel outside j_lo .. j_hi from its own overlaps (a few per row)
    n_left, n_right = j_lo, n_out - 1 - j_hi
    r = np.concatenate([np.repeat(rows, n_left), np.repeat(rows, n_right)])
    if r.size:
        j = np.concatenate([_ranges(np.zeros(n_rows, dtype=np.intp), n_left), _ranges(j_hi + 1, n_right)])
        frac, keep, ic = _candidate_fracs(np.ravel(wavelength), r * n_in, o[r], j, nlo, nhi, n_in)
        flat = (r * n_in)[:, None] + ic
        new_f[r, j] = (frac * np.take(np.ravel(f0), flat)).sum(axis=1)
        new_var[r, j] = (frac * frac * np.take(np.ravel(var0), flat)).sum(axis=1)
        touched_bad[r, j] = (keep & np.take(np.ravel(bad), flat)).any(axis=1)
        coverage[r, j] = frac.sum(axis=1)
    return new_f, new_var, touched_bad, coverage


def _ranges(start, count):
    """``start[k] .. start[k] + count[k] - 1`` of every k, concatenated."""
    return np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)


def _geometric_part(wavelength, new_wavelength, nlo, nhi, f0, var0, bad):
    """The rows resampled on the output grid's log step, and their sums (:func:`_geometric_sums`);
    an empty index when the output grid is not log-linear or no row is on its step."""
    none = np.zeros(0, dtype=np.intp)
    step = log_step(new_wavelength)
    if step is None or wavelength.shape[1] < 8 or nlo.size < 8:
        return none, None
    wavelength = np.ascontiguousarray(wavelength)
    geo, q0 = geometric_rows(wavelength, step)
    idx = np.flatnonzero(geo)
    if idx.size == 0:
        return none, None
    if idx.size < len(geo):  # the others are searched
        wavelength, q0, f0, var0, bad = (x[idx] for x in (wavelength, q0, f0, var0, bad))
    ok, pattern = _geometric_pattern(wavelength, q0, nlo, nhi, float(new_wavelength[0]), step)
    if not ok.all():  # too little overlap, or weights that are not the same at three pixels
        idx = idx[ok]
        if idx.size == 0:
            return none, None
        wavelength, f0, var0, bad = (x[ok] for x in (wavelength, f0, var0, bad))
        pattern = tuple(p[ok] for p in pattern)
    return idx, _geometric_sums(wavelength, nlo, nhi, f0, var0, bad, pattern)


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
