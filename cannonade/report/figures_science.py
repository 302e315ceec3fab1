"""Figures of the science analyses: wide-binary chemical distances, mean-label maps, abundance planes.

The numbers come from :mod:`cannonade.science` (the report's builder calls it); these
functions only draw them. As in :mod:`cannonade.report.figures_model`, each writes one PNG to
``path`` and returns the Path, and an empty or wrong-shaped input raises a named
:class:`~cannonade.exceptions.CannonadeError` before anything is written.

Papers: Wheeler et al. 2020 Figs 12–17.
"""

from __future__ import annotations

import numpy as np

from cannonade.report.inputs import ReportInputError, as_float, same_length
from cannonade.report.style import FONT_SIZE, axis_label, grid_shape, new_figure, quantity_name, save_figure

__all__ = ["chemical_distance_histogram", "mean_label_maps", "abundance_planes_grid", "SUN_R_KPC"]

#: where the figures mark the Sun (the galaxy layer's frame: R = 8 kpc, φ = 0)
SUN_R_KPC = 8.0


# --------------------------------------------------------------------------- Wheeler Fig 12
def chemical_distance_histogram(distance_binaries, distance_field, path, p_value=None, labels=None, edges=None,
                                title=None):
    """Normalised histograms of the Eq. 6 chemical distance of wide binaries and of matched field pairs (Fig. 12).

    Parameters
    ----------
    distance_binaries : (n_pairs,) float
    distance_field : (n_field,) float
    path : str or Path
    p_value : float, optional
        Of the test "binaries are closer", printed in the legend.
    labels : sequence of str, optional
        The abundances of the distance, printed in the title.
    edges : (n_bins + 1,) float, optional
        Histogram edges (default: 30 bins from 0 to the 99th percentile of both samples).
    title : str, optional

    Raises
    ------
    ReportInputError
        An empty sample or one without finite distances (named).
    """
    b = as_float(distance_binaries, "distance_binaries")
    f = as_float(distance_field, "distance_field")
    b, f = b[np.isfinite(b)], f[np.isfinite(f)]
    if edges is None:
        hi = float(np.percentile(np.concatenate([b, f]), 99.0))
        edges = np.linspace(0.0, hi if hi > 0 else 1.0, 31)
    edges = as_float(edges, "edges", min_rows=2)
    fig = new_figure(4.8, 3.4)
    ax = fig.add_subplot()
    ax.hist(f, edges, density=True, histtype="stepfilled", color="0.75", label=f"field pairs (n = {f.size})")
    ax.hist(b, edges, density=True, histtype="step", lw=1.8, color="tab:blue", label=f"wide binaries (n = {b.size})")
    ax.axvline(np.median(b), color="tab:blue", ls="--", lw=0.8)
    ax.axvline(np.median(f), color="0.35", ls="--", lw=0.8)
    if p_value is not None and np.isfinite(p_value):
        ax.plot([], [], " ", label=f"p (binaries closer) = {p_value:.2g}")
    ax.set_xlabel("chemical distance d (Wheeler+2020 Eq. 6) [dimensionless]", fontsize=FONT_SIZE)
    ax.set_ylabel("probability density [per unit d]", fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 1)
    ax.legend(fontsize=FONT_SIZE - 1)
    text = title or "wide binaries versus Δ[Fe/H]-matched field pairs"
    if labels:
        text += "\n(" + ", ".join(quantity_name(lab) for lab in labels) + ")"
    ax.set_title(text, fontsize=FONT_SIZE)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Wheeler Figs 13-15
def _check_map(m, i):
    """(x_edges, y_edges, mean as masked array, label) of maps[i]; ReportInputError naming it."""
    try:
        xe = as_float(m.x_edges, f"maps[{i}].x_edges", min_rows=2)
        ye = as_float(m.y_edges, f"maps[{i}].y_edges", min_rows=2)
        mean = np.ma.masked_invalid(np.ma.asarray(m.mean, dtype=float))
    except AttributeError as exc:
        raise ReportInputError(f"maps[{i}]: not a label map (x_edges, y_edges, mean, label): {exc}") from None
    if mean.shape != (ye.size - 1, xe.size - 1):
        raise ReportInputError(f"maps[{i}].mean: shape {mean.shape}, expected (len(y_edges) - 1, len(x_edges) - 1) = "
                               f"{(ye.size - 1, xe.size - 1)}")
    if mean.count() == 0:
        raise ReportInputError(f"maps[{i}] ({getattr(m, 'label', '')}): every bin is empty or masked")
    return xe, ye, mean, str(getattr(m, "label", ""))


def mean_label_maps(maps, path, title=None, max_columns=3, mark_sun=True):
    """Mean-label maps side by side, each with its labelled colour bar (Wheeler+2020 Figs 13–15).

    Parameters
    ----------
    maps : sequence of LabelMap
        :class:`cannonade.science.chemical_maps.LabelMap` (or anything with ``x_edges``,
        ``y_edges``, ``mean`` of shape (n_y, n_x), ``label``, ``x_name``, ``y_name``).
    path : str or Path
    title : str, optional
    max_columns : int
    mark_sun : bool
        Mark the Sun (R = 8 kpc; (X, Y) = (8, 0) kpc) where an axis is R or X.

    Raises
    ------
    ReportInputError
        No maps, or a map whose mean has the wrong shape or no unmasked bin (named by index).
    """
    maps = list(maps or [])
    if not maps:
        raise ReportInputError("maps: no maps given")
    checked = [_check_map(m, i) for i, m in enumerate(maps)]
    rows, cols = grid_shape(len(maps), max_columns)
    fig = new_figure(2.45 * cols + 0.3, 2.15 * rows + (0.35 if title else 0.1))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(maps):]:
        ax.set_visible(False)
    for ax, m, (xe, ye, mean, label) in zip(axes.flat, maps, checked):
        vals = mean.compressed()
        vmin, vmax = np.percentile(vals, [2, 98]) if vals.size > 1 else (vals[0] - 0.5, vals[0] + 0.5)
        if vmax <= vmin:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        mesh = ax.pcolormesh(xe, ye, mean, cmap="viridis", vmin=vmin, vmax=vmax, shading="flat", rasterized=True)
        x_name, y_name = str(getattr(m, "x_name", "x")), str(getattr(m, "y_name", "y"))
        ax.set_xlabel(axis_label(x_name), fontsize=FONT_SIZE - 1)
        ax.set_ylabel(axis_label(y_name), fontsize=FONT_SIZE - 1)
        ax.tick_params(labelsize=FONT_SIZE - 2)
        if x_name.upper() == "X" and y_name.upper() == "Y":
            ax.set_aspect("equal", adjustable="box")
        if mark_sun and x_name.upper() in ("R", "X"):
            if y_name.upper() == "Y":
                ax.plot([SUN_R_KPC], [0.0], marker="*", color="red", ms=7, mec="k", mew=0.4)
            else:
                ax.axvline(SUN_R_KPC, color="red", lw=0.6, ls=":")
        cb = fig.colorbar(mesh, ax=ax, pad=0.01)
        cb.set_label("mean " + axis_label(label), fontsize=FONT_SIZE - 1)
        cb.ax.tick_params(labelsize=FONT_SIZE - 2)
    if title:
        fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Wheeler Figs 16-17
def _check_planes(planes):
    """(element, R edges, |z| edges, panels) of an AbundancePlanes-like object; ReportInputError naming what is wrong."""
    try:
        element = str(planes.element)
        r_edges = as_float(planes.r_edges, "planes.r_edges", min_rows=2)
        z_edges = as_float(planes.z_edges, "planes.z_edges", min_rows=2)
        panels = planes.panels
    except AttributeError as exc:
        raise ReportInputError(f"planes: not abundance planes (element, r_edges, z_edges, panels): {exc}") from None
    nz, nr = z_edges.size - 1, r_edges.size - 1
    if len(panels) != nz or any(len(row) != nr for row in panels):
        raise ReportInputError(f"planes.panels: expected {nz} rows (|z| bins) of {nr} panels (R bins), got "
                               f"{[len(row) for row in panels]}")
    n = 0
    for iz, row in enumerate(panels):
        for ir, p in enumerate(row):
            fe, xf, vp = (np.asarray(a, float).ravel() for a in (p.fe_h, p.x_fe, p.vphi))
            same_length(**{f"panels[{iz}][{ir}].fe_h": fe, f"panels[{iz}][{ir}].x_fe": xf, f"panels[{iz}][{ir}].vphi": vp})
            n += int((np.isfinite(fe) & np.isfinite(xf) & np.isfinite(vp)).sum())
    if n == 0:
        raise ReportInputError(f"planes: no star with finite [Fe/H], {element} and v_phi in any panel")
    return element, r_edges, z_edges, panels


def abundance_planes_grid(planes, path, title=None, vphi_range=(-200.0, 300.0), max_points=700, seed=0):
    """[X/Fe] versus [Fe/H] coloured by v_φ in a grid of (R, |z|) bins (Wheeler+2020 Figs 16–17).

    Parameters
    ----------
    planes : AbundancePlanes
        :func:`cannonade.science.abundance_planes.abundance_planes` (or anything with
        ``element``, ``r_edges``, ``z_edges`` and ``panels[i_z][i_r]`` holding ``fe_h``,
        ``x_fe``, ``vphi`` and optionally ``median_x_fe`` on ``fe_h_edges``). Rows of the
        figure are |z| bins (the plane at the bottom), columns R bins; the running median
        [X/Fe] of each panel is drawn in black.
    path : str or Path
    title : str, optional
    vphi_range : (float, float)
        Colour range of v_φ [km/s].
    max_points : int
        At most this many random stars per panel are drawn (the paper's 700).
    seed : int

    Raises
    ------
    ReportInputError, ShapeError
        Not abundance planes, a panel grid that does not match the edges, panel arrays of
        different lengths, or no star in any panel.
    """
    element, re_, ze, panels = _check_planes(planes)
    nz, nr = ze.size - 1, re_.size - 1
    rng = np.random.default_rng(seed)
    all_fe = np.concatenate([np.asarray(p.fe_h, float) for row in panels for p in row])
    all_x = np.concatenate([np.asarray(p.x_fe, float) for row in panels for p in row])
    xlim = np.nanpercentile(all_fe, [0.5, 99.5])
    ylim = np.nanpercentile(all_x, [0.5, 99.5])
    f_edges = getattr(planes, "fe_h_edges", None)
    fig = new_figure(1.75 * nr + 0.9, 1.55 * nz + 0.6)
    axes = fig.subplots(nz, nr, squeeze=False, sharex=True, sharey=True)
    sc = None
    for iz in range(nz):
        for ir in range(nr):
            p = panels[iz][ir]
            ax = axes[nz - 1 - iz, ir]  # the plane at the bottom
            fe, xf, vp = (np.asarray(a, float).ravel() for a in (p.fe_h, p.x_fe, p.vphi))
            ok = np.isfinite(fe) & np.isfinite(xf) & np.isfinite(vp)
            if ok.any():
                k = np.flatnonzero(ok)[rng.permutation(int(ok.sum()))[:max_points]]
                sc = ax.scatter(fe[k], xf[k], c=vp[k], s=4, cmap="plasma", vmin=vphi_range[0], vmax=vphi_range[1],
                                lw=0, rasterized=True)
                med = getattr(p, "median_x_fe", None)
                if med is not None and f_edges is not None and np.size(med) == np.size(f_edges) - 1:
                    centres = 0.5 * (np.asarray(f_edges, float)[1:] + np.asarray(f_edges, float)[:-1])
                    ax.plot(centres, np.ma.filled(np.ma.asarray(med, dtype=float), np.nan), color="k", lw=1.2)
                ax.text(0.03, 0.95, f"n={int(ok.sum())}", transform=ax.transAxes, fontsize=FONT_SIZE - 3, va="top")
            else:
                ax.text(0.5, 0.5, "no stars", transform=ax.transAxes, ha="center", fontsize=FONT_SIZE - 2, color="0.5")
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            ax.tick_params(labelsize=FONT_SIZE - 3)
            if iz == nz - 1:
                ax.set_title(f"{re_[ir]:g} < R < {re_[ir + 1]:g} kpc", fontsize=FONT_SIZE - 2)
            if ir == 0:
                ax.set_ylabel(axis_label(element), fontsize=FONT_SIZE - 2)
            if ir == nr - 1:
                twin = ax.twinx()
                twin.set_yticks([])
                twin.set_ylabel(f"{ze[iz]:g} < |z| < {ze[iz + 1]:g} kpc", fontsize=FONT_SIZE - 2)
            if iz == 0:
                ax.set_xlabel(axis_label("fe_h"), fontsize=FONT_SIZE - 2)
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes, shrink=0.8, pad=0.01)
        cb.set_label(axis_label("vphi"), fontsize=FONT_SIZE - 1)
        cb.ax.tick_params(labelsize=FONT_SIZE - 2)
    if title:
        fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)
