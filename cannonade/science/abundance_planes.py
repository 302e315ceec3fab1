"""[X/Fe] against [Fe/H], coloured by v_φ, in bins of (R, |z|): the disc–halo transition
(Wheeler et al. 2020 §5.4, Figs 16–17).

:func:`abundance_planes` cuts a catalogue's giants into a grid of Galactocentric radius R and
height |z| (the paper's panels: 3–5, ..., 11–13 kpc in R; 0–2, 2–4, 4–6 kpc in |z|) and returns,
per panel, the stars' ([Fe/H], [X/Fe], v_φ) for the scatter plot and two summaries: the number
of stars per [Fe/H] bin and the median [X/Fe] per [Fe/H] bin. Fig. 16 ([Ba/Fe]) keeps only
4800 K < T_eff < 5000 K (``teff_range=(4800, 5000)``) because of the T_eff-dependent [Ba/Fe]
systematics; Fig. 17 ([Eu/Fe]) uses every giant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cannonade.exceptions import SelectionError, ShapeError
from cannonade.science.selection import as_row_mask, giant_mask
from cannonade.tables import float_column

__all__ = [
    "FE_H_BINS",
    "PAPER_R_BINS",
    "PAPER_Z_BINS",
    "AbundancePanel",
    "AbundancePlanes",
    "abundance_planes",
    "binned_median",
]

#: R edges of Wheeler+2020 Figs 16–17 [kpc].
PAPER_R_BINS = (3.0, 5.0, 7.0, 9.0, 11.0, 13.0)
#: |z| edges of Wheeler+2020 Figs 16–17 [kpc].
PAPER_Z_BINS = (0.0, 2.0, 4.0, 6.0)
#: Default [Fe/H] bins of the per-panel medians [dex].
FE_H_BINS = tuple(np.round(np.arange(-2.5, 0.751, 0.25), 2))


@dataclass(frozen=True)
class AbundancePanel:
    """The stars of one (R, |z|) bin.

    Attributes
    ----------
    r_range, z_range : (float, float)
        kpc; the panel holds r_lo ≤ R < r_hi and z_lo ≤ |z| < z_hi.
    rows : (n,) int
        Table rows of the stars.
    fe_h, x_fe : (n,) float
        [Fe/H] and the element's [X/Fe] (the scatter plot).
    vphi : (n,) float
        v_φ = vT [km/s] (the colour; > 0 prograde).
    count_per_fe_h : (n_fe_h,) int
        Stars per [Fe/H] bin (:attr:`AbundancePlanes.fe_h_edges`).
    median_x_fe : (n_fe_h,) numpy.ma.MaskedArray of float
        Median [X/Fe] per [Fe/H] bin, masked below ``min_count`` stars.
    median_vphi : float
        Median v_φ of the panel (NaN only when the panel is empty).
    """

    r_range: tuple
    z_range: tuple
    rows: np.ndarray
    fe_h: np.ndarray
    x_fe: np.ndarray
    vphi: np.ndarray
    count_per_fe_h: np.ndarray
    median_x_fe: np.ma.MaskedArray
    median_vphi: float

    @property
    def n(self) -> int:
        """Stars in the panel."""
        return len(self.rows)


@dataclass(frozen=True)
class AbundancePlanes:
    """Figs 16–17 data: a grid of :class:`AbundancePanel`.

    Attributes
    ----------
    element : str
        The [X/Fe] column, e.g. 'ba_fe'.
    r_edges : (n_r + 1,) float
    z_edges : (n_z + 1,) float
        |z| edges.
    fe_h_edges : (n_fe_h + 1,) float
    panels : tuple of n_z tuples of n_r AbundancePanel
        ``panels[i_z][i_r]``: rows of the figure are |z| bins, columns R bins.
    counts : (n_z, n_r) int
        Stars per panel.
    teff_range : (float, float) or None
    min_count : int
    """

    element: str
    r_edges: np.ndarray
    z_edges: np.ndarray
    fe_h_edges: np.ndarray
    panels: tuple
    counts: np.ndarray
    teff_range: tuple | None
    min_count: int

    def panel(self, i_r, i_z) -> AbundancePanel:
        """The panel of R bin ``i_r`` and |z| bin ``i_z``."""
        return self.panels[i_z][i_r]

    @property
    def n(self) -> int:
        """Stars in all panels."""
        return int(self.counts.sum())


def binned_median(x, y, edges, min_count=5):
    """Median of ``y`` in bins of ``x``.

    Parameters
    ----------
    x, y : (n,) float
    edges : (k + 1,) float
    min_count : int

    Returns
    -------
    count : (k,) int
    median : (k,) numpy.ma.MaskedArray
        Masked where fewer than ``min_count`` (and at least one) stars.
    """
    from scipy import stats

    x, y, edges = np.asarray(x, float), np.asarray(y, float), np.asarray(edges, float)
    count = np.histogram(x, edges)[0].astype(np.int64)
    if len(x):
        med = stats.binned_statistic(x, y, "median", bins=edges)[0]
    else:
        med = np.full(len(edges) - 1, np.nan)
    return count, np.ma.masked_array(np.where(count > 0, med, 0.0), mask=count < max(int(min_count), 1))


def _edges(values, name):
    e = np.asarray(values, dtype=float)
    if e.ndim != 1 or len(e) < 2 or not np.all(np.diff(e) > 0) or not np.all(np.isfinite(e)):
        raise ShapeError(f"{name} must be at least two increasing finite edges; got {values!r}")
    return e


def abundance_planes(table, element="ba_fe", *, r_bins=PAPER_R_BINS, z_bins=PAPER_Z_BINS, fe_h_bins=FE_H_BINS,
                     teff_range=None, giants=True, mask=None, min_count=5):
    """Wheeler+2020 Figs 16–17: [X/Fe] vs [Fe/H] coloured by v_φ in (R, |z|) bins.

    A star enters when its R, z, [Fe/H], [X/Fe] and vT are finite, it is a giant (with
    ``giants``), passes ``mask`` and, with ``teff_range``, has t_lo < T_eff < t_hi.

    Parameters
    ----------
    table : table with n rows; columns R, z [kpc], vT [km/s], fe_h, ``element``,
        giantmodel / model_class (and teff with ``teff_range``)
    element : str
        An [X/Fe] column, e.g. 'ba_fe' (Fig. 16) or 'eu_fe' (Fig. 17).
    r_bins : (n_r + 1,) float
        R edges [kpc]; default the paper's 3–13 kpc in steps of 2.
    z_bins : (n_z + 1,) float
        |z| edges [kpc]; default 0, 2, 4, 6.
    fe_h_bins : (n_fe_h + 1,) float
        [Fe/H] edges of the per-panel summaries.
    teff_range : (float, float), optional
        (4800, 5000) K for [Ba/Fe] in the paper.
    giants : bool
    mask : (n,) bool, optional
    min_count : int
        Per-[Fe/H]-bin medians from fewer stars are masked.

    Returns
    -------
    AbundancePlanes

    Raises
    ------
    ColumnError
        A column is missing (named).
    ShapeError
        Bad bin edges, or ``mask`` not (n,) bool.
    SelectionError
        No star passes the cuts and lies in the grid.
    """
    r_edges, z_edges, f_edges = _edges(r_bins, "r_bins"), _edges(z_bins, "z_bins"), _edges(fe_h_bins, "fe_h_bins")
    sel = as_row_mask(table, mask)
    if giants:
        sel &= giant_mask(table)
    R, z, vphi = float_column(table, "R"), float_column(table, "z"), float_column(table, "vT")
    feh, xfe = float_column(table, "fe_h"), float_column(table, element)
    sel &= np.isfinite(R) & np.isfinite(z) & np.isfinite(vphi) & np.isfinite(feh) & np.isfinite(xfe)
    if teff_range is not None:
        teff = float_column(table, "teff")
        with np.errstate(invalid="ignore"):
            sel &= (teff > teff_range[0]) & (teff < teff_range[1])
    ir = np.digitize(R, r_edges) - 1  # bin i holds edges[i] <= x < edges[i+1]
    iz = np.digitize(np.abs(z), z_edges) - 1
    sel &= (ir >= 0) & (ir < len(r_edges) - 1) & (iz >= 0) & (iz < len(z_edges) - 1)
    if not sel.any():
        raise SelectionError(f"no star with finite R, z, vT, fe_h and {element} in R {r_edges[0]}–{r_edges[-1]} kpc, "
                             f"|z| {z_edges[0]}–{z_edges[-1]} kpc (giants={giants}, teff_range={teff_range})")
    counts = np.zeros((len(z_edges) - 1, len(r_edges) - 1), np.int64)
    panels = []
    for jz in range(len(z_edges) - 1):  # loop over panels only
        row = []
        for jr in range(len(r_edges) - 1):
            rows = np.flatnonzero(sel & (ir == jr) & (iz == jz))
            n_f, med = binned_median(feh[rows], xfe[rows], f_edges, min_count)
            row.append(AbundancePanel(
                r_range=(float(r_edges[jr]), float(r_edges[jr + 1])), z_range=(float(z_edges[jz]), float(z_edges[jz + 1])),
                rows=rows, fe_h=feh[rows], x_fe=xfe[rows], vphi=vphi[rows], count_per_fe_h=n_f, median_x_fe=med,
                median_vphi=float(np.median(vphi[rows])) if len(rows) else float("nan"),
            ))
            counts[jz, jr] = len(rows)
        panels.append(tuple(row))
    return AbundancePlanes(element=element, r_edges=r_edges, z_edges=z_edges, fe_h_edges=f_edges, panels=tuple(panels),
                           counts=counts, teff_range=None if teff_range is None else (float(teff_range[0]), float(teff_range[1])),
                           min_count=int(min_count))
