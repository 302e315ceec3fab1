"""The report's figure conventions: Agg figures without pyplot, PNG at one resolution, axis labels with units.

Every figure is a :class:`matplotlib.figure.Figure` drawn on its own Agg canvas (no pyplot,
no global state, no display needed) and written atomically as PNG at :data:`DPI`. Axis
labels name the quantity and its unit (``"$T_\\mathrm{eff}$ [K]"``, ``"[Fe/H] [dex]"``):
:func:`axis_label` knows the stellar labels (through the catalogue schemas' units), the
Galactocentric coordinates and the Nandakumar catalogue's ``<label>Cann`` columns.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cannonade.catalogue.schemas import label_info
from cannonade.util import atomic_path

__all__ = ["DPI", "new_figure", "save_figure", "axis_label", "quantity_name", "unit_text", "grid_shape", "FONT_SIZE"]

#: resolution of every PNG (a 7-inch-wide figure is ~900 pixels: readable at paper size)
DPI = 130
#: base font size in points
FONT_SIZE = 9

_NAMES = {
    "teff": r"$T_\mathrm{eff}$", "logg": r"$\log g$", "vmic": r"$v_\mathrm{mic}$", "vmicro": r"$v_\mathrm{mic}$",
    "vbroad": r"$v_\mathrm{broad}$", "fe_h": "[Fe/H]", "feh": "[Fe/H]", "m_h": "[M/H]", "alpha_fe": r"[$\alpha$/Fe]",
    "alphafe": r"[$\alpha$/Fe]", "mean_alpha_fe": r"[$\alpha$/Fe]", "mean_s_fe": "[s/Fe]",
    "r": "$R$", "z": "$z$", "abs_z": "$|z|$", "x": "$X$", "y": "$Y$", "phi": r"$\phi$", "vt": r"$v_\phi$",
    "vphi": r"$v_\phi$", "vr": "$v_R$", "vz": "$v_z$", "jr": "$J_R$", "jz": "$J_z$", "jphi": r"$J_\phi$",
    "snr": "S/N", "wavelength": r"wavelength $\lambda$",
}
_UNITS = {"r": "kpc", "z": "kpc", "abs_z": "kpc", "x": "kpc", "y": "kpc", "phi": "rad", "vt": "km/s", "vphi": "km/s",
          "vr": "km/s", "vz": "km/s", "jr": "kpc km/s", "jz": "kpc km/s", "jphi": "kpc km/s", "wavelength": "Å",
          "vmicro": "km/s", "vbroad": "km/s", "feh": "dex", "alphafe": "dex", "m_h": "dex"}
_UNIT_TEXT = {"km / s": "km/s", "km kpc / s": "kpc km/s", "Angstrom": "Å", "deg": "deg"}


def new_figure(width, height):
    """A constrained-layout :class:`~matplotlib.figure.Figure` of ``width`` × ``height`` inches on an Agg canvas.

    Parameters
    ----------
    width, height : float
        Inches (7 inches is a full page width).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path):
    """Write ``fig`` to ``path`` as PNG at :data:`DPI`, atomically; returns the Path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _key(name):
    return str(name).removesuffix("Cann").lower()  # the Nandakumar catalogue's Cannon estimates: <label>Cann


def quantity_name(name):
    """Display name of a label or column (``fe_h`` → ``[Fe/H]``, ``teff`` → ``$T_\\mathrm{eff}$``)."""
    key = _key(name)
    if key in _NAMES:
        return _NAMES[key]
    what = label_info(key)[1]
    if what != key:
        return what.split(":")[0].strip()
    return str(name)


def unit_text(unit):
    """A unit as the axes write it (``"km / s"`` → ``"km/s"``); ``""`` for none."""
    text = "" if unit is None else str(unit)
    return _UNIT_TEXT.get(text, text)


def axis_label(name, unit=None):
    """``"<quantity> [<unit>]"`` for a label or column name; the unit looked up when not given.

    Parameters
    ----------
    name : str
        A label (``teff``, ``mg_fe``, ``mean_alpha_fe``), a Nandakumar ``<label>Cann`` column,
        a Galactocentric coordinate (``R``, ``z``, ``vT``, ``Jz``) or any other name.
    unit : str, optional
        Overrides the looked-up unit; ``""`` for a dimensionless quantity (no brackets).
    """
    key = _key(name)
    if unit is None:
        unit = _UNITS.get(key)
        if unit is None:
            unit = label_info(key)[0]
    unit = unit_text(unit)
    base = quantity_name(name)
    if re.fullmatch(r"\s*", unit):
        return base
    return f"{base} [{unit}]"


def grid_shape(n, max_columns=4):
    """(rows, columns) of a panel grid for ``n`` panels, at most ``max_columns`` wide."""
    n = max(int(n), 1)
    cols = min(n, max_columns)
    return int(np.ceil(n / cols)), cols
