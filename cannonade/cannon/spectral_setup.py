"""How a model's training spectra were prepared, and the guard against applying it to others.

A Cannon model is a per-pixel function of the labels: it means something only for spectra on
the same wavelength grid, continuum-normalised the same way, from the same instrument.
Applied to anything else it still "converges" — to wrong labels. :class:`SpectralSetup`
records the preparation (grid, normalisation and its parameters, survey, resolution); a model
keeps the setup of its training spectra (``CannonModel.spectral_setup_``, saved in the model
file), and :func:`check_setup` compares it with the setup of the spectra about to be
inferred, raising :class:`~cannonade.exceptions.SpectraMismatchError` naming every
difference unless the caller overrides it explicitly.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import numpy as np

from cannonade.exceptions import SpectraMismatchError

__all__ = ["SpectralSetup", "SpectraMismatchWarning", "setup_differences", "check_setup", "UNKNOWN"]

UNKNOWN = "unknown"
#: wavelengths agree when within this fraction of a pixel step (float32 round-off is ~1e-7 λ)
GRID_TOLERANCE = 1e-3


class SpectraMismatchWarning(UserWarning):
    """A setup mismatch that the caller chose to override (``allow_mismatch=True``)."""


@dataclass(eq=False)  # holds an array: compare with setup_differences, not ==
class SpectralSetup:
    """The preparation of a set of spectra.

    Attributes
    ----------
    wavelength : (P,) float or None
        The common grid (vacuum Å); None when not known.
    grid : str
        Its name (``"lamost"``, ``"apogee"``, ``"galah"``, ``"WMIN:WMAX:NPIX"`` or ``"custom"``).
    normalise : str
        Continuum normalisation (``"gaussian"``, ``"chebyshev"``, ``"none"``; ``"unknown"``).
    norm_params : dict
        Its parameters (e.g. ``{"sigma": 50, "truncate": 150}``); ``{}`` for the defaults.
    survey : str
        The instrument/survey the spectra come from (``"lamost"``...; ``"unknown"``).
    resolution : float or None
        Resolving power R, where known.
    """

    wavelength: np.ndarray | None = None
    grid: str = UNKNOWN
    normalise: str = UNKNOWN
    norm_params: dict = field(default_factory=dict)
    survey: str = UNKNOWN
    resolution: float | None = None

    @classmethod
    def from_store(cls, store, resolution=None):
        """The setup of a :class:`cannonade.spectra.store.SpectraStore` (from its attributes,
        grid and its spectra's ``survey`` column; several surveys are joined with '+')."""
        attrs = store.attrs
        params = attrs.get("norm_kwargs") or "{}"
        try:
            params = json.loads(params) if isinstance(params, str) else dict(params)
        except (TypeError, ValueError):
            params = {"raw": str(params)}
        # the survey column alone, block by block (a million spectra's metadata at once is ~1 GB)
        surveys = [str(s) for s in store.unique("survey") if str(s)]
        return cls(wavelength=store.wavelength, grid=str(attrs.get("grid", UNKNOWN)),
                   normalise=str(attrs.get("normalise", UNKNOWN)), norm_params=params,
                   survey="+".join(surveys) or UNKNOWN, resolution=resolution)

    def to_metadata(self):
        """JSON-able form, without the wavelength array (a model file stores that itself)."""
        return dict(grid=self.grid, normalise=self.normalise, norm_params=self.norm_params, survey=self.survey,
                    resolution=self.resolution)

    @classmethod
    def from_metadata(cls, block, wavelength=None):
        """Inverse of :meth:`to_metadata`."""
        return cls(wavelength=wavelength, grid=block.get("grid", UNKNOWN), normalise=block.get("normalise", UNKNOWN),
                   norm_params=dict(block.get("norm_params") or {}), survey=block.get("survey", UNKNOWN),
                   resolution=block.get("resolution"))

    def describe_grid(self):
        w = self.wavelength
        if w is None or len(w) == 0:
            return f"grid {self.grid!r} (wavelengths not recorded)"
        return f"{float(w[0]):.2f}-{float(w[-1]):.2f} Å in {len(w)} pixels (grid {self.grid!r})"


def _grid_difference(model, data):
    """A sentence describing how two wavelength grids differ, or None when they agree."""
    a, b = model.wavelength, data.wavelength
    if a is None or b is None:
        return None
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        return f"wavelength grid: model {model.describe_grid()}, spectra {data.describe_grid()}"
    step = np.median(np.abs(np.diff(a))) if a.size > 1 else 1.0
    off = np.abs(a - b)
    if np.nanmax(off, initial=0.0) > GRID_TOLERANCE * step:
        return (f"wavelength grid: model {model.describe_grid()}, spectra {data.describe_grid()} "
                f"(up to {float(np.nanmax(off)):.3g} Å apart)")
    return None


def setup_differences(model, data):
    """Every way in which ``data``'s preparation differs from ``model``'s.

    Parameters
    ----------
    model, data : SpectralSetup

    Returns
    -------
    list of str
        Empty when they agree. A field the model does not record (``"unknown"``) is not
        compared; one the model records but the spectra do not is a difference (it cannot
        be checked).
    """
    out = []
    grid = _grid_difference(model, data)
    if grid:
        out.append(grid)
    if model.normalise != UNKNOWN and (model.normalise != data.normalise or model.norm_params != data.norm_params):
        out.append(f"continuum normalisation: model {model.normalise!r} {model.norm_params or '(defaults)'}, "
                   f"spectra {data.normalise!r} {data.norm_params or '(defaults)'}")
    if model.survey != UNKNOWN and data.survey != model.survey:
        out.append(f"survey: model trained on {model.survey!r} spectra, these are {data.survey!r}")
    if model.resolution and data.resolution and not np.isclose(model.resolution, data.resolution, rtol=0.05):
        out.append(f"resolution: model R = {model.resolution:g}, spectra R = {data.resolution:g}")
    return out


def check_setup(model, data, allow_mismatch=False, what="spectra"):
    """Refuse spectra prepared differently from the model's training spectra.

    Parameters
    ----------
    model, data : SpectralSetup
    allow_mismatch : bool
        Override: warn (:class:`SpectraMismatchWarning`) instead of raising.
    what : str
        What the spectra are (e.g. the store's path), for the message.

    Returns
    -------
    list of str
        The differences found (empty when none, or when overridden after the warning).

    Raises
    ------
    SpectraMismatchError
        The setups differ and ``allow_mismatch`` is False.
    """
    diffs = setup_differences(model, data)
    if diffs:
        text = f"{what} were not prepared like the model's training spectra: " + "; ".join(diffs)
        if not allow_mismatch:
            raise SpectraMismatchError(text + " (re-ingest them with the model's grid and normalisation, or override "
                                       "with allow_mismatch / --allow-mismatch if you know why)")
        warnings.warn(text + " (overridden)", SpectraMismatchWarning, stacklevel=2)
    return diffs
