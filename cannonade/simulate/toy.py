"""A toy survey for the calibration's tests and figures: four labels on a Kiel-like locus.

Labels (Teff, log g, [Fe/H], [α/Fe]) lie on a curved giant-to-dwarf locus and an α–Fe sequence;
each pixel's line depth is d0·exp(a·z + c z_Teff z_[Fe/H])·(1 + 0.1 sin(k·z + φ)) through a tanh
saturation, so a quadratic Cannon has real model mismatch; a hidden per-star label offset of the
spectrum (``HIDDEN`` label units) is an error floor that does not fall with S/N; σ ∝ flux with
per-pixel factors (median flux·√ivar ≈ S/N) and 0.5 % bad pixels. Used by
``tests/cannon/test_calibration.py`` and ``docs/figures/make_calibration_figures.py``.
"""

from __future__ import annotations

import numpy as np

NAMES = ["teff", "logg", "fe_h", "alpha_fe"]
CENTRE = np.array([5200.0, 3.4, -0.2, 0.1])
UNIT = np.array([500.0, 0.8, 0.3, 0.1])
REF_ERR = np.array([25.0, 0.04, 0.012, 0.006])  # mean reported error of the reference labels
HIDDEN = 0.1  # star-specific label offset of the spectrum, in UNITs


def locus_logg(teff):
    """log g of the locus at Teff (K): 2.0 at 4200 K rising to 4.4 at 6300 K."""
    return 2.0 + 2.4 * np.sqrt(np.clip((teff - 4200.0) / 2100.0, 0.0, None))


def alpha_of(feh):
    """[α/Fe] of the α–Fe sequence at [Fe/H]."""
    return 0.1 - 0.25 * (feh + 0.2)


def log_uniform(n, lo, hi, rng):
    """n values log-uniform in [lo, hi] (e.g. S/N)."""
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


class KielMock:
    """Spectra f = 1 − 0.6 tanh(d0 exp(a·z + c z_teff z_feh)(1 + 0.1 sin(k·z + φ)) / 0.6).

    Parameters
    ----------
    n_pixels : int
    seed : int
        Seed of the pixels' coefficients.
    """

    def __init__(self, n_pixels=200, seed=1):
        rng = np.random.default_rng(seed)
        P = n_pixels
        self.d0 = rng.uniform(0.05, 0.45, P)
        a = np.zeros((P, 4))
        a[:, 0] = rng.normal(0.0, 0.35, P)
        a[:, 1] = rng.normal(0.0, 0.25, P)
        a[:, 2] = rng.normal(0.35, 0.15, P)
        alpha_px = rng.random(P) < 0.3
        a[alpha_px, 3] = rng.normal(0.4, 0.1, alpha_px.sum())
        self.a = 0.5 * a
        self.c = rng.normal(0.0, 0.08, P)
        self.k = rng.normal(0.0, 1.5, (P, 4))
        self.phase = rng.uniform(0.0, 2.0 * np.pi, P)
        self.noise_shape = rng.uniform(0.75, 1.25, P)

    @staticmethod
    def draw(n, rng):
        """Labels like the training set's (n, 4) and each star's hidden offset (n, 4)."""
        teff = rng.uniform(4300.0, 6200.0, n)
        feh = rng.uniform(-0.9, 0.5, n)
        lab = np.column_stack([teff, locus_logg(teff) + rng.normal(0, 0.08, n), feh, alpha_of(feh) + rng.normal(0, 0.03, n)])
        return lab, HIDDEN * rng.normal(size=(n, 4))

    @classmethod
    def draw_outside(cls, n, rng):
        """2n stars beyond the training set: n hotter (6500–7000 K, on the locus continued), then n
        more metal-poor ([Fe/H] −1.8 to −1.2, on the α sequence). Labels (2n, 4), offsets (2n, 4)."""
        lab, off = cls.draw(2 * n, rng)
        lab[:n, 0] = rng.uniform(6500.0, 7000.0, n)
        lab[:n, 1] = locus_logg(lab[:n, 0]) + rng.normal(0, 0.08, n)
        lab[n:, 2] = rng.uniform(-1.8, -1.2, n)
        lab[n:, 3] = alpha_of(lab[n:, 2]) + rng.normal(0, 0.03, n)
        return lab, off

    @classmethod
    def draw_off_locus(cls, n, rng):
        """n stars 1–1.6 dex in log g off the Kiel locus (Teff 4400–6100 K). Labels, offsets (n, 4)."""
        lab, off = cls.draw(n, rng)
        lab[:, 0] = rng.uniform(4400.0, 6100.0, n)
        loc = locus_logg(lab[:, 0])
        lab[:, 1] = np.where(loc > 3.4, loc - rng.uniform(1.0, 1.6, n), loc + rng.uniform(1.0, 1.6, n))
        return lab, off

    def flux(self, labels, offset):
        """Noiseless normalised flux (n, P) of labels (n, 4) with hidden offsets (n, 4)."""
        z = (labels - CENTRE) / UNIT + offset
        depth = self.d0 * np.exp(z @ self.a.T + self.c * (z[:, :1] * z[:, 2:3]))
        depth *= 1.0 + 0.1 * np.sin(z @ self.k.T + self.phase)
        return 1.0 - 0.6 * np.tanh(depth / 0.6)

    def observe(self, labels, offset, snr, rng):
        """Observed flux, ivar (n, P) at S/N (n,): bad pixels have ivar 0 and NaN flux."""
        f = self.flux(labels, offset)
        sigma = f * self.noise_shape / np.asarray(snr, float)[:, None]  # median f·sqrt(ivar) ≈ S/N
        flux = f + sigma * rng.normal(size=f.shape)
        ivar = 1.0 / sigma**2
        bad = rng.random(f.shape) < 0.005
        ivar[bad], flux[bad] = 0.0, np.nan
        return flux, ivar
