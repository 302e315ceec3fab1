"""Repeat visits kept inside one file (APOGEE apStar), prepared exactly as the store's spectra.

A survey that combines its visits (APOGEE: apStar rows 2.. are the visits of the combined
spectrum in rows 0–1) stores one combined spectrum per star; the visits themselves are what
the error calibration needs (Nandakumar+2022 §3.7, Eq. 6: the scatter of labels between
independent observations of one star). :func:`prepare_visits` reads them and puts them on
the store's grid with the store's continuum normalisation, so a model trained on the store
sees them as it would see any stored spectrum.
"""

from __future__ import annotations

import numpy as np

from cannonade.exceptions import CannonadeError, SpectrumFormatError

__all__ = ["read_visits", "prepare_visits"]


def read_visits(path):
    """The visit spectra inside one file (an empty list for a single-visit file).

    Parameters
    ----------
    path : str
        An APOGEE apStar file (the only layout with visits inside today).

    Returns
    -------
    list of Spectrum

    Raises
    ------
    SpectrumFormatError
        The file is not an apStar file (names it).
    """
    from cannonade.spectra.readers.apogee import identify, read_apstar_visits
    from cannonade.spectra.readers.fits import open_fits

    hdul = open_fits(path)
    try:
        layout = identify(hdul)
    finally:
        hdul.close()
    if layout != "apstar":
        raise SpectrumFormatError(f"{path}: repeat visits are read from APOGEE apStar files; this file is "
                                  f"{layout or 'not an APOGEE file'}")
    return read_apstar_visits(path)


def prepare_visits(paths, grid, normalise="chebyshev", norm_kwargs=None, max_visits=None):
    """Every visit of each file, resampled onto ``grid`` and normalised as the store's spectra.

    Parameters
    ----------
    paths : sequence of str
        Files with visits inside (apStar).
    grid : (P,) float
        The store's wavelength grid (vacuum Å).
    normalise : str
        The store's continuum method (``SpectralSetup.normalise``).
    norm_kwargs : dict, optional
        The store's continuum parameters (``SpectralSetup.norm_params``).
    max_visits : int, optional
        At most this many visits per file (the first ones).

    Returns
    -------
    flux, ivar : (V, P) float
    source : (V,) int
        Index into ``paths`` of each visit's file.
    failures : list of (path, reason)
        Files that could not be read (none is fatal).
    """
    from cannonade.spectra.continuum import normalise_batch
    from cannonade.spectra.preprocessing import doppler_shift
    from cannonade.spectra.resampling import resample

    grid = np.asarray(grid, float)
    fl, iv, src, failures = [], [], [], []
    for k, path in enumerate(paths):  # a loop over files (I/O), not over pixels
        try:
            visits = read_visits(path)
        except (CannonadeError, OSError) as exc:
            failures.append((str(path), str(exc)))
            continue
        for spec in visits[:max_visits]:
            z = spec.meta.get("redshift", 0.0)
            z = 0.0 if z is None or not np.isfinite(z) else float(z)  # apStar visits are in the rest frame
            f, i = resample(doppler_shift(spec.wavelength, z), spec.flux, spec.ivar, grid)
            if np.any(i > 0):
                fl.append(f)
                iv.append(i)
                src.append(k)
    P = grid.size
    if not fl:
        return np.zeros((0, P)), np.zeros((0, P)), np.zeros(0, dtype=int), failures
    flux, ivar = normalise_batch(grid, np.array(fl), np.array(iv), method=normalise, **dict(norm_kwargs or {}))
    return np.asarray(flux, float), np.asarray(ivar, float), np.asarray(src, dtype=int), failures
