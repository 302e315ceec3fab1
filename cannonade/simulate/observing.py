"""Observing a normalised model: continuum, throughput, calibration, photon noise, bad pixels.

The normalised model is multiplied by a blackbody continuum, an instrument
throughput and a smooth flux-calibration error, and observed with photon (and read)
noise at a requested S/N and with realistic bad pixels. Optionally (``visit=``, from
:func:`cannonade.simulate.realism.draw_visit_effects`) each spectrum also gets its own
multiplicative flux-calibration error and additive sky-subtraction residuals, which the
reported inverse variance does not include.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cannonade.simulate.instruments import APOGEE_CHIPS, get_instrument
from cannonade.simulate.realism import sky_residual, visit_calibration

__all__ = ["Synthetic", "SNR_BAND", "observe", "planck", "calibration_distortion"]


def planck(wavelength, teff):
    """Blackbody B_λ(T) up to a constant, (n, n_pixels)."""
    wl = np.asarray(wavelength, float)[None, :]
    x = 1.4387769e8 / (wl * np.asarray(teff, float)[:, None])
    return (5000.0 / wl) ** 5 / np.expm1(np.minimum(x, 700.0))


def calibration_distortion(wavelength, coeffs):
    """Smooth multiplicative flux-calibration error exp(Σ c_k P_k(x)), (n, n_pixels).

    coeffs : (n, k) Legendre coefficients over the instrument's wavelength span.
    """
    wl = np.asarray(wavelength, float)
    x = 2.0 * (wl - wl[0]) / (wl[-1] - wl[0]) - 1.0
    leg = np.polynomial.legendre.legvander(x, coeffs.shape[1] - 1)  # (n_pix, k)
    return np.exp(coeffs @ leg.T)


@dataclass
class Synthetic:
    """Synthetic observed spectra.

    Attributes
    ----------
    wavelength : (n_pixels,) float
        Observed-frame wavelengths (Å; vacuum for LAMOST/APOGEE, air for GALAH).
    flux, ivar : (n, n_pixels) float
        Observed flux (LAMOST/APOGEE: flux-calibrated units; GALAH: counts) and inverse
        variance (0 at bad pixels).
    continuum : (n, n_pixels) float
        The true continuum of ``flux`` (blackbody × calibration × scale).
    model : (n, n_pixels) float
        Noise-free normalised model (1 = continuum).
    bad : (n, n_pixels) bool
        Bad pixels (ivar = 0 there).
    snr : (n,) float
        Achieved median S/N per pixel in the instrument's reference band.
    counts, sigma_counts : (n, n_pixels) float, optional
        Observed counts (per-visit effects included) and their photon + read noise.
    calib_rms, sky_line_amp, sky_continuum : (n,) float, optional
        Per-visit effects (``observe(visit=...)``; zeros without): RMS over pixels of ln D, the
        per-visit calibration error; RMS of the residual sky-line peaks and RMS over pixels of the
        residual sky continuum, both relative to the star's median continuum in the reference band.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray
    model: np.ndarray
    bad: np.ndarray
    snr: np.ndarray
    counts: np.ndarray | None = None
    sigma_counts: np.ndarray | None = None
    calib_rms: np.ndarray | None = None
    sky_line_amp: np.ndarray | None = None
    sky_continuum: np.ndarray | None = None

    @property
    def normalised_flux(self):
        """(n, n_pixels): flux / true continuum."""
        return self.flux / self.continuum

    @property
    def normalised_ivar(self):
        """(n, n_pixels): ivar × continuum²."""
        return self.ivar * self.continuum**2


# reference band for the S/N definition (observed-frame Å)
SNR_BAND = {"lamost": (4000.0, 5500.0), "galah": (4715.0, 4900.0), "apogee": (15150.0, 16950.0)}


def observe(wavelength, norm, teff, instrument, snr, rng, flux_scale=None, calib=None, bad_pixels=True, visit=None):
    """Add continuum, throughput, photon noise and bad pixels to normalised model spectra.

    Parameters
    ----------
    wavelength : (n_pixels,) float
    norm : (n, n_pixels) float
        Noise-free normalised spectra.
    teff : (n,) float
    instrument : str
    snr : (n,) float or None
        Target median S/N per pixel in :data:`SNR_BAND` (None: noise-free, ivar = 1e8).
    rng : numpy Generator
    flux_scale : (n,) float, optional
        Multiplies the flux (brightness); default 1000.
    calib : (n, k) float, optional
        Legendre coefficients of a smooth flux-calibration error (LAMOST, APOGEE).
    bad_pixels : bool
    visit : VisitEffects, optional
        Per-visit flux-calibration error and sky residuals of each spectrum
        (:func:`cannonade.simulate.realism.draw_visit_effects`); applied to the noisy counts
        ``(counts + sky) * D``, not to ``ivar`` or ``continuum``. Ignored when ``snr`` is None.

    Returns
    -------
    Synthetic
    """
    inst = get_instrument(instrument)
    wl = np.asarray(wavelength, float)
    n = norm.shape[0]
    teff = np.asarray(teff, float)
    cont = planck(wl, teff)
    cont /= np.median(cont, axis=1, keepdims=True)
    if calib is not None:
        cont = cont * calibration_distortion(wl, calib)
    thr = inst.throughput(wl)[None, :]
    lo, hi = SNR_BAND[inst.name]
    band = (wl >= lo) & (wl <= hi)
    expected = cont * norm * thr  # counts per unit exposure
    if snr is None:
        counts = expected * 1e6
        sig = np.full_like(counts, 1e-1)  # ivar of the normalised flux ~ 1e8
        snr_ach = np.full(n, np.inf)
        bad = np.zeros(counts.shape, bool)
    else:
        snr = np.broadcast_to(np.asarray(snr, float), (n,))
        # photon noise: S/N = sqrt(counts) in the reference band (plus read noise of 3 e-)
        k = snr**2 / np.median(expected[:, band], axis=1)
        counts_true = expected * k[:, None]
        sig = np.sqrt(np.maximum(counts_true, 0.0) + 9.0)
        counts = counts_true + sig * rng.standard_normal(counts_true.shape)
        snr_ach = np.median(counts_true[:, band] / sig[:, band], axis=1)
        bad = _bad_pixels(wl, inst.name, counts_true / sig, rng) if bad_pixels else np.zeros(counts.shape, bool)
    effects = {key: np.zeros(n) for key in ("calib_rms", "sky_line_amp", "sky_continuum")}
    if visit is not None and snr is not None:
        counts, effects = _apply_visit_effects(wl, inst.name, counts, thr, band, k, cont, visit)
    scale = np.full(n, 1000.0) if flux_scale is None else np.asarray(flux_scale, float)
    # counts -> flux units: the flux calibration divides out throughput and exposure (k)
    k_eff = k if snr is not None else np.full(n, 1e6)
    conv = scale[:, None] / (thr * k_eff[:, None])
    flux = counts * conv
    ivar = np.where(bad, 0.0, 1.0 / (sig * conv) ** 2)
    continuum = cont * scale[:, None]
    return Synthetic(wl, flux, ivar, continuum, norm, bad, snr_ach, counts, sig, **effects)


def _apply_visit_effects(wl, name, counts, thr, band, k, cont, visit):
    """(counts + sky residual) * per-visit calibration, and the per-spectrum truth of the effects.

    The sky residual is fixed in counts: ``visit.snr_ref**2 * residual * thr / median(thr in band)``,
    i.e. ``residual`` times the reference-band continuum of a star observed at S/N = snr_ref.
    """
    d = visit_calibration(wl, visit.calib)
    lines, skyc = sky_residual(wl, name, visit)
    thr_b = float(np.median(thr[0, band]))
    counts = (counts + (lines + skyc) * (visit.snr_ref**2 / thr_b) * thr) * d
    # flux units relative to the star's median reference-band continuum
    rel = visit.snr_ref**2 / (thr_b * k * np.median(cont[:, band], axis=1))
    ln_d = np.log(d)
    effects = {
        "calib_rms": np.sqrt(np.mean((ln_d - ln_d.mean(axis=1, keepdims=True)) ** 2, axis=1)),
        "sky_line_amp": rel * (np.sqrt(np.mean(visit.sky_lines**2, axis=1)) if visit.sky_lines.shape[1] else 0.0),
        "sky_continuum": rel * np.sqrt(np.mean(skyc**2, axis=1)),
    }
    return counts, effects


# sky-line and telluric regions that real reductions often leave unusable (vacuum Å)
_LAMOST_BAD_REGIONS = [(5700.0, 5960.0), (7595.0, 7700.0)]


def _bad_pixels(wl, name, snr_pix, rng):
    """(n, n_pixels) bool: realistic bad pixels for a batch of spectra."""
    n, n_pix = snr_pix.shape
    bad = np.zeros((n, n_pix), bool)
    # random dead columns / cosmic-ray hits: a few per spectrum
    n_hits = rng.poisson(3.0 if name == "lamost" else 4.0, n)
    rows = np.repeat(np.arange(n), n_hits)
    cols = rng.integers(0, n_pix, rows.size)
    bad[rows, cols] = True
    if name == "lamost":
        # blue end: unusable where the per-pixel S/N is below ~1.5 (as in real DR1 files)
        blue = wl[None, :] < 4300.0
        bad |= blue & (snr_pix < 1.5)
        # dichroic join and telluric A band are lost in part of the spectra
        for (lo, hi), p in zip(_LAMOST_BAD_REGIONS, (0.08, 0.4)):
            hit = rng.random(n) < p
            a = rng.uniform(lo, hi - 20.0, n)
            b = np.minimum(a + rng.uniform(20.0, hi - lo, n), hi)
            bad |= hit[:, None] & (wl[None, :] >= a[:, None]) & (wl[None, :] <= b[:, None])
        # red end lost in a third of the spectra
        cut = np.where(rng.random(n) < 0.35, rng.uniform(8900.0, 9090.0, n), np.inf)
        bad |= wl[None, :] > cut[:, None]
    elif name == "apogee":
        gap = np.ones(n_pix, bool)
        for lo, hi in APOGEE_CHIPS:
            gap &= ~((wl >= lo) & (wl <= hi))
        bad |= gap[None, :]
    return bad

