"""Per-survey instrument definitions of the mock surveys.

Each :class:`Instrument` gives the pixel grid of the real data product (copied
from real files: LAMOST DR1 ``COEFF0/COEFF1``, GALAH iraf-6.0 per-CCD
``CRVAL1/CDELT1``, APOGEE apStar ``CRVAL1/CDELT1``), the resolving power of
its line-spread function (LSF), whether wavelengths are in air or vacuum, and
the smooth throughput that turns a stellar continuum into detected counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Instrument", "INSTRUMENTS", "get_instrument", "GALAH_CCDS", "APOGEE_CHIPS"]

# GALAH HERMES CCD grids (CRVAL1, CDELT1) of the real iraf-6.0 files (2101150001010011-4.fits)
GALAH_CCDS = [
    (4714.06147168741, 0.0459477822647381),
    (5648.72979285381, 0.054694006247085),
    (6476.2554264676, 0.0631602709388041),
    (7584.11378585031, 0.0735770697255711),
]
# APOGEE detector chips (vacuum Å) on the apStar grid; pixels outside them are gaps
APOGEE_CHIPS = [(15145.0, 15808.0), (15858.0, 16432.0), (16473.0, 16950.0)]


_LAMOST_ANCHORS = (
    np.array([3700.0, 3850.0, 4200.0, 4750.0, 5500.0, 6250.0, 7000.0, 7750.0, 8500.0, 8800.0, 9100.0]),
    np.array([0.05, 0.086, 0.45, 1.0, 1.6, 2.5, 3.8, 5.5, 7.0, 7.7, 7.0]),
)


@dataclass(frozen=True)
class Instrument:
    """A survey spectrograph's data product.

    Attributes
    ----------
    name : str
    resolution : float
        Resolving power R = λ / FWHM of the (Gaussian) LSF.
    vacuum : bool
        Wavelengths of the product are in vacuum (else air).
    segments : tuple of (kind, start, step, n_pixels)
        ``kind`` 'log' (λ = 10**(start + step*i)) or 'linear' (λ = start + step*i).
    """

    name: str
    resolution: float
    vacuum: bool
    segments: tuple = field(default_factory=tuple)

    def segment_wavelengths(self):
        """list of (n_pixels_k,) float: the wavelength grid of each segment (CCD/arm)."""
        out = []
        for kind, start, step, n in self.segments:
            i = np.arange(n, dtype=float)
            out.append(10.0 ** (start + step * i) if kind == "log" else start + step * i)
        return out

    @property
    def wavelength(self):
        """(n_pixels,) float: all segments concatenated (Å)."""
        return np.concatenate(self.segment_wavelengths())

    @property
    def n_pixels(self):
        return int(sum(s[3] for s in self.segments))

    def throughput(self, wavelength):
        """Smooth relative throughput (counts per unit flux), (n_pixels,) float in (0, 1]."""
        wl = np.asarray(wavelength, float)
        if self.name == "lamost":
            # LAMOST LRS: blue arm 3700-5900 Å, red arm 5700-9000 Å joined by a dichroic near 5800 Å
            blue = np.exp(-0.5 * ((wl - 4900.0) / 700.0) ** 2) / (1.0 + np.exp((wl - 5850.0) / 40.0))
            red = 0.95 * np.exp(-0.5 * ((wl - 7000.0) / 1300.0) ** 2) / (1.0 + np.exp(-(wl - 5780.0) / 40.0))
            # photon-count shaping calibrated so the band S/N ratios (u, r, i, z relative to g) match
            # the real DR1 sample (median snru/snrg 0.15, snrr/snrg 1.5, snri/snrg 1.9, snrz/snrg 1.4)
            corr = np.exp(np.interp(wl, _LAMOST_ANCHORS[0], np.log(_LAMOST_ANCHORS[1])))
            return np.clip((blue + red) * corr / 4.0, 0.005, None)
        if self.name == "galah":
            t = np.empty_like(wl)
            for k, (w, (lo, hi)) in enumerate(zip(self.segment_wavelengths(), _edges(self))):
                sel = (wl >= lo - 1e-6) & (wl <= hi + 1e-6)
                x = (wl[sel] - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
                t[sel] = (0.55 + 0.15 * k) * (1.0 - 0.35 * x**2 - 0.05 * x)  # blaze-like
            return t
        # APOGEE: gently curved across each chip
        x = (wl - 16050.0) / 950.0
        return 0.9 - 0.2 * x**2

    def lsf_sigma(self, wavelength):
        """Gaussian LSF sigma (Å) at ``wavelength``: λ / (2.3548 R)."""
        return np.asarray(wavelength, float) / (2.3548 * self.resolution)


def _edges(inst):
    return [(w[0], w[-1]) for w in inst.segment_wavelengths()]


INSTRUMENTS = {
    # LAMOST DR1 LRS: COEFF0 = 3.5682, COEFF1 = 1e-4, 3909 pixels (3700-9096 Å, vacuum)
    "lamost": Instrument("lamost", 1800.0, True, (("log", 3.5682, 1e-4, 3909),)),
    # GALAH HERMES: 4 CCDs x 4096 pixels, linear in air, R ~ 28000
    "galah": Instrument("galah", 28000.0, False, tuple(("linear", c, d, 4096) for c, d in GALAH_CCDS)),
    # APOGEE apStar: CRVAL1 = 4.179, CDELT1 = 6e-6, 8575 pixels (15101-16999 Å, vacuum), R ~ 22500
    "apogee": Instrument("apogee", 22500.0, True, (("log", 4.179, 6e-6, 8575),)),
}


def get_instrument(name):
    """Look up an :class:`Instrument` by name ('lamost', 'galah', 'apogee')."""
    from cannonade.exceptions import ConfigError

    try:
        return INSTRUMENTS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown instrument {name!r}; known: {sorted(INSTRUMENTS)}") from None
