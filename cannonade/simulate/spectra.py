"""A fast, physically motivated (not polynomial) line-formation model for mock spectra.

Every absorption line has a laboratory wavelength, an element, an ionisation
stage and an excitation potential. Its strength follows the Saha-Boltzmann
scaling of a line-to-continuum (H⁻) opacity ratio in Teff and logg, scales
linearly with the element's abundance, and passes through a saturating curve
of growth whose Doppler width contains the microturbulence (vmic) and whose
damping part grows with gravity. Strong lines (Balmer, Ca II H&K and triplet,
Mg b, Na D, ...) keep explicit pressure-broadened wings; cool stars get
molecular bands (TiO, CaH, MgH, CN, CH, CO). The normalised spectrum
``exp(-sum of line opacities)`` is rendered directly at the instrument's
resolution (each line a Gaussian of the LSF ⊗ Doppler ⊗ broadening width, in a
window of pixels around it), multiplied by a blackbody continuum, an
instrument throughput and a smooth flux-calibration error, and observed with
photon noise at a requested S/N and with bad pixels.

The pieces live in :mod:`cannonade.simulate.lines` (line list),
:mod:`cannonade.simulate.formation` (labels -> equivalent widths),
:mod:`cannonade.simulate.render` (normalised model spectra) and
:mod:`cannonade.simulate.observing` (continuum, noise, bad pixels); this module
ties them together (:func:`synthesize`) and re-exports their public names.
"""

from __future__ import annotations

import numpy as np

from cannonade.simulate.formation import default_vmic, equivalent_widths, stellar_arrays
from cannonade.simulate.instruments import get_instrument
from cannonade.simulate.lines import ABUNDANCE_ELEMENTS, LineList, line_list
from cannonade.simulate.observing import SNR_BAND, Synthetic, observe
from cannonade.simulate.render import normalised_model

__all__ = [
    "ABUNDANCE_ELEMENTS",
    "LineList",
    "SNR_BAND",
    "Synthetic",
    "default_vmic",
    "equivalent_widths",
    "line_list",
    "normalised_model",
    "observe",
    "stellar_arrays",
    "synthesize",
    "synthesize_normalised",
]


def synthesize(labels, instrument="lamost", snr=None, rv=0.0, seed=None, bad_pixels=None, calib_scale=0.0, batch=256):
    """Synthetic spectra of stars with given labels, in memory (no files).

    Parameters
    ----------
    labels : astropy Table or dict of arrays
        ``teff, logg, fe_h`` and optional ``vmic, vbroad, <x>_fe``.
    instrument : {'lamost', 'galah', 'apogee'}
    snr : float or (n,) float, optional
        Median S/N per pixel in the reference band; None: noise-free.
    rv : float or (n,) float
        Radial velocity (km/s).
    seed : int, optional
        Noise seed.
    bad_pixels : bool, optional
        Default: True when noise is added.
    calib_scale : float
        RMS of random Legendre coefficients of a smooth flux-calibration error (0: none).
    batch : int
        Stars per vectorised batch (bounds memory).

    Returns
    -------
    Synthetic
        ``.wavelength, .flux, .ivar, .continuum, .model`` and the normalised
        ``.normalised_flux, .normalised_ivar``.
    """
    s_all = stellar_arrays(labels)
    n = len(s_all["teff"])
    rng = np.random.default_rng(seed)
    snr_a = None if snr is None else np.broadcast_to(np.asarray(snr, float), (n,))
    rv_a = np.broadcast_to(np.asarray(rv, float), (n,))
    calib = rng.normal(0.0, calib_scale, (n, 4)) if calib_scale else None
    if bad_pixels is None:
        bad_pixels = snr is not None
    parts = []
    for i0 in range(0, n, batch):
        sl = slice(i0, min(n, i0 + batch))
        s = {k: v[sl] for k, v in s_all.items()}
        wl, norm = normalised_model(s, instrument, rv_a[sl])
        parts.append(
            observe(wl, norm, s["teff"], instrument, None if snr_a is None else snr_a[sl], rng,
                    calib=None if calib is None else calib[sl], bad_pixels=bad_pixels)
        )
    if not parts:
        wl = get_instrument(instrument).wavelength
        e = np.zeros((0, len(wl)))
        return Synthetic(wl, e, e, e, e, e.astype(bool), np.zeros(0))
    cat = lambda a: np.concatenate([getattr(p, a) for p in parts])  # noqa: E731
    return Synthetic(parts[0].wavelength, cat("flux"), cat("ivar"), cat("continuum"), cat("model"), cat("bad"), cat("snr"))


def synthesize_normalised(labels, instrument="lamost", snr=None, rv=0.0, seed=None):
    """Continuum-normalised synthetic spectra for testing the Cannon core.

    Returns
    -------
    wavelength : (n_pixels,) float
    flux : (n, n_pixels) float
        Normalised flux (1 = continuum) with noise at ``snr``.
    ivar : (n, n_pixels) float
        Its inverse variance (0 at bad pixels; 1e8 when noise-free).
    """
    syn = synthesize(labels, instrument, snr=snr, rv=rv, seed=seed)
    if snr is None:
        return syn.wavelength, syn.model.copy(), np.full_like(syn.model, 1e8)
    return syn.wavelength, syn.normalised_flux, syn.normalised_ivar
