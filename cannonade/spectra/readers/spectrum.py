"""The :class:`Spectrum` container every reader returns, and the velocity -> redshift convention."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cannonade.exceptions import SpectrumFormatError
from cannonade.spectra.surveys import C_KMS

__all__ = ["Spectrum", "rv_to_redshift"]


@dataclass
class Spectrum:
    """One 1-D spectrum.

    Attributes
    ----------
    wavelength : (n_pixels,) float64
        Vacuum Angstrom, increasing.
    flux : (n_pixels,) float64
        Flux (NaN allowed where ``ivar == 0``).
    ivar : (n_pixels,) float64
        Inverse variance; 0 marks a bad pixel.
    meta : dict
        ``survey``, ``layout``, ``obj_id``, ``ra``, ``dec``, ``snr``, ``redshift``
        (still present in ``wavelength``: ``wavelength / (1 + redshift)`` is the rest
        frame; NaN if unknown), ``rv`` (km/s), ``source_file``, plus the file
        header's own keys (see :mod:`cannonade.spectra.readers`).
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.wavelength = np.asarray(self.wavelength, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ivar = np.asarray(self.ivar, dtype=np.float64)
        n = self.wavelength.shape
        if self.wavelength.ndim != 1 or self.flux.shape != n or self.ivar.shape != n:
            raise SpectrumFormatError(
                f"{self.meta.get('source_file', '<spectrum>')}: wavelength, flux, ivar shapes differ "
                f"({self.wavelength.shape}, {self.flux.shape}, {self.ivar.shape})"
            )

    @property
    def n_pixels(self):
        """Number of pixels."""
        return self.wavelength.size


def rv_to_redshift(rv_kms):
    """Relativistic Doppler redshift of a radial velocity: ``sqrt((1 + b) / (1 - b)) - 1``, ``b = v / c``.

    Parameters
    ----------
    rv_kms : float or (n,) float
        Radial velocity (km/s); NaN stays NaN.

    Returns
    -------
    float or (n,) float64
    """
    b = np.asarray(rv_kms, dtype=np.float64) / C_KMS
    with np.errstate(invalid="ignore"):
        z = np.sqrt((1.0 + b) / (1.0 - b)) - 1.0
    return float(z) if np.ndim(z) == 0 else z
