"""Per-spectrum quality numbers that need no model: S/N and missing pixels.

``spectrum_snr`` is the S/N the calibration uses (the error model versus S/N, the χ²/dof
threshold curve, the low-S/N flag): the median of ``flux · sqrt(ivar)`` over valid pixels.
It runs inside every inference block, on the data the χ² reduction has just read (in cache),
so it is written to cost one float32 partition per row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["spectrum_snr", "median_snr", "missing_fraction"]


def spectrum_snr(flux, ivar):
    """Median of ``flux · sqrt(ivar)`` over each spectrum's valid pixels.

    Valid: ``ivar > 0`` and both finite (the inference's rule). Exact up to float32 rounding
    (relative ≲ 3e-8), see :func:`median_snr`.

    Parameters
    ----------
    flux, ivar : (M, P) float

    Returns
    -------
    (M,) float
        NaN for a spectrum without a valid pixel.
    """
    flux = np.asarray(flux, dtype=float)
    ivar = np.asarray(ivar, dtype=float)
    with np.errstate(invalid="ignore", over="ignore"):
        invalid = ~((ivar > 0) & np.isfinite(ivar) & np.isfinite(flux))
    return median_snr(flux, ivar, invalid)


def median_snr(flux, ivar, invalid, n_invalid=None):
    """:func:`spectrum_snr` given the invalid pixels (the inference knows them already).

    One fixed-``kth`` partition per row: the median is taken of ``f |f| ivar`` in float32 (a
    monotone function of ``f sqrt(ivar)``: no square root of the array), invalid pixels become
    +inf and each row is padded with ⌊m/2⌋ −inf (m its invalid pixels), which puts the valid
    median at positions ``P//2 − 1`` or ``P//2`` of every row whatever m is.

    Parameters
    ----------
    flux, ivar : (M, P) float
    invalid : (M, P) bool
    n_invalid : (M,) int, optional
        ``invalid.sum(axis=1)``.

    Returns
    -------
    (M,) float
    """
    M, P = flux.shape
    if M == 0 or P == 0:
        return np.full(M, np.nan)
    m = np.count_nonzero(invalid, axis=1) if n_invalid is None else np.asarray(n_invalid)
    A = m // 2
    Q = int(A.max())
    g = np.empty((M, P + Q), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        f = np.abs(flux, dtype=np.float64)  # float32 spectra too: the same values as from a float64 copy
        f *= flux
        f *= ivar  # f|f|·ivar = (f√ivar)|f√ivar|, in float64 (fast), then one cast to float32
        g[:, :P] = f
    if Q:
        g[:, P:] = np.where(np.arange(Q)[None, :] < A[:, None], -np.inf, np.inf)
    np.copyto(g[:, :P], np.float32(np.inf), where=invalid)
    k = P // 2
    g.partition(k, axis=1)
    hi = g[:, k].astype(float)
    lo = g[:, :k].max(axis=1).astype(float) if k else hi
    n = P - m
    # the valid values' middle positions A + (n−1)//2 and A + n//2 are always k−1 or k
    v1 = np.where(A + (n - 1) // 2 == k, hi, lo)
    v2 = np.where(A + n // 2 == k, hi, lo)
    with np.errstate(invalid="ignore"):
        med = 0.5 * (np.sign(v1) * np.sqrt(np.abs(v1)) + np.sign(v2) * np.sqrt(np.abs(v2)))
    return np.where(n > 0, med, np.nan)


def missing_fraction(n_valid, n_pixels):
    """Fraction of the model's pixels without data: ``1 − n_valid / n_pixels``.

    Parameters
    ----------
    n_valid : (M,) int
        Valid pixels of each spectrum among the model's pixels (``dof + L`` of an inference).
    n_pixels : int
        The model's pixels (``pixel_ok_.sum()``).

    Returns
    -------
    (M,) float
    """
    return 1.0 - np.asarray(n_valid, dtype=float) / max(int(n_pixels), 1)
