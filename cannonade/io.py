"""Pinned public path for the spectrum readers: ``from cannonade.io import read_spectrum``.

The readers live in :mod:`cannonade.spectra.readers` (one module per survey).
"""

from cannonade.spectra.readers import Spectrum, read_galah_star, read_spectrum

__all__ = ["Spectrum", "read_spectrum", "read_galah_star"]
