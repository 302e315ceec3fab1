"""Star selections shared by the science analyses: quality cut, dwarfs and giants, thin disc.

Wheeler et al. 2020 §5: "we employ stars in our catalog for which chi2 is less than 7000"
(:func:`quality_mask`); dwarfs for the wide binaries (§5.2), giants for the maps (§5.3–5.4,
:func:`giant_mask`); the kinematic thin disc is J_z < 30 kpc km/s (Figs 14–15,
:func:`thin_disc_mask`).

Every function takes a catalogue table (astropy Table, pandas DataFrame or dict of arrays)
and returns an (n,) bool array; a missing column raises :class:`~cannonade.exceptions.ColumnError`
naming it.
"""

from __future__ import annotations

import numpy as np

from cannonade.exceptions import ColumnError, SelectionError, ShapeError
from cannonade.tables import (
    colnames,
    float_column,
    is_pandas,
    require_columns,
    text_column,
)

__all__ = [
    "QUALITY_MAX_CHI2",
    "THIN_DISC_JZ_MAX",
    "as_row_mask",
    "columns_as_floats",
    "dwarf_mask",
    "giant_mask",
    "n_rows",
    "quality_mask",
    "thin_disc_mask",
]

#: Wheeler+2020 §5: the whole-spectrum χ² cut applied to every science sample.
QUALITY_MAX_CHI2 = 7000.0
#: Wheeler+2020 Figs 14–15: kinematic thin disc, J_z below this [kpc km/s].
THIN_DISC_JZ_MAX = 30.0


def n_rows(table):
    """Number of rows of a table; SelectionError if it has none.

    Parameters
    ----------
    table : astropy Table, pandas DataFrame or dict of (n,) arrays

    Returns
    -------
    int
    """
    names = colnames(table)
    if not names:
        raise SelectionError("the table has no columns (and no rows)")
    n = len(table) if (is_pandas(table) or hasattr(table, "colnames")) else len(np.asarray(table[names[0]]))
    if n == 0:
        raise SelectionError("the table has no rows")
    return int(n)


def as_row_mask(table, mask=None):
    """A user's row selection as an (n,) bool array (all rows when None).

    Parameters
    ----------
    table : table with n rows
    mask : (n,) bool, optional

    Raises
    ------
    ShapeError
        ``mask`` is not a boolean array of length n.
    """
    n = n_rows(table)
    if mask is None:
        return np.ones(n, bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ShapeError(f"mask must be a ({n},) bool array (one entry per table row); got {m.dtype} of shape {m.shape}")
    return m.copy()


def columns_as_floats(table, names):
    """Several columns as one (n, k) float array (masked cells and sentinels -> NaN).

    Parameters
    ----------
    table : table with n rows
    names : sequence of str, length k

    Returns
    -------
    (n, k) float

    Raises
    ------
    ColumnError
        Naming every missing column.
    """
    names = list(names)
    require_columns(table, names)
    return np.column_stack([float_column(table, c) for c in names]) if names else np.empty((n_rows(table), 0))


def quality_mask(table, max_chi2=QUALITY_MAX_CHI2, reject_flags=0):
    """Wheeler+2020 §5 quality cut: whole-spectrum χ² below ``max_chi2``, optional flag bits.

    Parameters
    ----------
    table : table with n rows; column ``chi2`` (and ``flags`` when ``reject_flags``)
    max_chi2 : float or None
        7000 in the paper (LAMOST, ~3800 pixels); None skips the χ² cut.
    reject_flags : int
        Rows with any of these :class:`cannonade.flags.Flag` bits set are dropped; ``-1``
        drops every flagged row (``flags == 0``); 0 (default) ignores the flags.

    Returns
    -------
    (n,) bool
        True where the star passes (a NaN χ² fails).
    """
    keep = np.ones(n_rows(table), bool)
    if max_chi2 is not None:
        with np.errstate(invalid="ignore"):
            keep &= float_column(table, "chi2") < float(max_chi2)
    if reject_flags:
        if "flags" not in colnames(table):
            raise ColumnError(f"reject_flags={reject_flags} needs the column 'flags'; the table has {sorted(colnames(table))}")
        keep &= (np.asarray(table["flags"]).astype(np.int64) & np.int64(reject_flags)) == 0
    return keep


def _giant(table):
    """(n,) bool giant and (n,) bool known, from giantmodel, model_class or Wheeler+2020 Eq. 1."""
    have = colnames(table)
    if "giantmodel" in have:  # Wheeler+2020 Table 1: labels from the giant model
        giant = np.asarray(table["giantmodel"]).astype(bool)
        return giant, np.ones(len(giant), bool)
    if "model_class" in have:
        cls = np.char.lower(text_column(table, "model_class"))
        return cls == "giant", np.isin(cls, ("giant", "dwarf"))
    if "teff" in have and "logg" in have:
        from cannonade.pipeline.stages.split import is_giant  # Eq. 1

        teff, logg = float_column(table, "teff"), float_column(table, "logg")
        return is_giant(teff, logg), np.isfinite(teff) & np.isfinite(logg)
    raise ColumnError(f"cannot tell dwarfs from giants: the table lacks 'giantmodel', 'model_class' and 'teff'/'logg'; "
                      f"it has {sorted(have)}")


def giant_mask(table):
    """Stars whose labels come from the giant model.

    Uses the ``giantmodel`` column (Wheeler+2020 Table 1) when present, else ``model_class ==
    'giant'``, else Wheeler+2020 Eq. 1 on ``teff``, ``logg``.

    Returns
    -------
    (n,) bool
    """
    giant, known = _giant(table)
    return giant & known


def dwarf_mask(table):
    """Stars whose labels come from the dwarf model (see :func:`giant_mask` for the columns).

    Returns
    -------
    (n,) bool
        ``model_class == 'either'`` or a NaN Teff/log g is neither dwarf nor giant.
    """
    giant, known = _giant(table)
    return ~giant & known


def thin_disc_mask(table, jz_max=THIN_DISC_JZ_MAX):
    """Kinematic thin disc of Wheeler+2020 Figs 14–15: vertical action J_z < ``jz_max``.

    Parameters
    ----------
    table : table with column ``Jz`` [kpc km/s]
    jz_max : float

    Returns
    -------
    (n,) bool
        False where J_z is NaN (unbound or no dynamics).
    """
    with np.errstate(invalid="ignore"):
        return float_column(table, "Jz", unit="kpc km / s") < float(jz_max)
