"""Spectrum preprocessing: rest frame, common grid, continuum (Wheeler+2020 §3).

Wheeler+2020 §3: "we first redshift-corrected the spectra using the z value
provided in the LAMOST data table and interpolated each star to a common
wavelength grid. We then continuum-normalized the spectra by dividing out the
continuum, approximated by smoothing the spectra with a Gaussian kernel with a
50 A standard deviation, truncated at 150 A from the center" (as Ho+2017).

* :func:`doppler_shift` -- observed -> rest wavelengths, ``lambda / (1 + z)``.
* resampling onto the common grid -- :mod:`cannonade.spectra.resampling`
  (:func:`resample`, :func:`resample_batch`, ...).
* the continuum and its division -- :mod:`cannonade.spectra.continuum`
  (:func:`continuum_gaussian`, :func:`continuum_chebyshev`, :func:`normalise`, ...).
* :func:`prepare_spectrum` -- the three for one spectrum.

The public functions of both modules are importable from here too. Methods are documented in
``docs/spectra.md``.
"""

# ruff: noqa: F401  (the names imported from resampling and continuum are re-exported: __all__ lists theirs)

from __future__ import annotations

import math

import numpy as np

from cannonade.exceptions import ConfigError
from cannonade.spectra import continuum, resampling
from cannonade.spectra.continuum import (
    block_pieces,
    continuum_chebyshev,
    continuum_chebyshev_batch,
    continuum_gaussian,
    continuum_gaussian_batch,
    gaussian_kernel_blocks,
    gaussian_kernel_matrix,
    normalise,
    normalise_batch,
)
from cannonade.spectra.resampling import (
    pixel_edges,
    resample,
    resample_batch,
    resampling_matrix,
    searchsorted_rows,
    shifted_rows,
)
from cannonade.spectra.surveys import log_lambda_grid  # re-exported: one definition, in surveys

__all__ = ["doppler_shift", "log_lambda_grid", *resampling.__all__, *continuum.__all__, "prepare_spectrum"]


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
