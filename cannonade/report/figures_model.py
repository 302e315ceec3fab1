"""Figures of the models: cross-validation, precision, coefficients, fits, residuals, calibration, Kiel diagram.

Each function takes plain arrays or tables (what :mod:`cannonade.report.rundir` reads from a
run directory), draws one figure and writes it as PNG to ``path``, returning the Path. An
empty, wrong-shaped or column-less input raises a named error
(:class:`~cannonade.report.inputs.ReportInputError`, :class:`~cannonade.exceptions.ColumnError`,
:class:`~cannonade.exceptions.ShapeError`, all :class:`~cannonade.exceptions.CannonadeError`)
that names the argument or column, before anything is written.

Papers: Wheeler et al. 2020 Figs 3, 7–10, 18–19; Nandakumar et al. 2022 Figs 3–6.
"""

from __future__ import annotations

import numpy as np

from cannonade.flags import FLAG_TABLE
from cannonade.report.inputs import ReportInputError, as_float, column, require_columns, same_length
from cannonade.report.style import FONT_SIZE, axis_label, grid_shape, new_figure, quantity_name, save_figure

__all__ = [
    "cv_one_to_one",
    "cv_scatter_by_model",
    "precision_ranges",
    "linear_coefficients",
    "model_versus_data",
    "residual_percentiles",
    "calibration_pulls",
    "flag_rates",
    "kiel_diagram",
    "half_width",
    "default_window",
]


def half_width(x):
    """Half of the 84th − 16th percentile spread of the finite values (NaN when none)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.nan
    p16, p84 = np.percentile(x, [16.0, 84.0])
    return 0.5 * (p84 - p16)


def _gap_breaks(x, *ys):
    """``x`` and ``ys`` with a NaN inserted at each gap of the grid (a step over 5 × the median step), so
    lines and bands stop at the edges of detector chips instead of bridging them."""
    x = np.asarray(x, float)
    if x.size < 3:
        return (x, *ys)
    step = np.diff(x)
    cut = np.flatnonzero(step > 5.0 * np.median(np.abs(step)))
    if cut.size == 0:
        return (x, *ys)
    xs = np.insert(x, cut + 1, np.nan)
    return (xs, *(np.insert(np.asarray(y, float), cut + 1, np.nan, axis=-1) for y in ys))


def default_window(wavelength, fraction=1 / 8):
    """A wavelength range of ``fraction`` of the grid's pixels in the middle of its longest gap-free segment.

    Parameters
    ----------
    wavelength : (P,) float
        The grid (Å), sorted.
    fraction : float

    Returns
    -------
    (float, float)
    """
    wl = np.sort(as_float(wavelength, "wavelength"))
    wl = wl[np.isfinite(wl)]
    step = np.diff(wl)
    cuts = np.flatnonzero(step > 5.0 * np.median(np.abs(step))) if wl.size > 2 else np.array([], int)
    bounds = np.concatenate([[0], cuts + 1, [wl.size]])
    k = int(np.argmax(np.diff(bounds)))
    lo, hi = bounds[k], bounds[k + 1]
    n = max(2, min(hi - lo, int(round(fraction * wl.size))))
    start = lo + (hi - lo - n) // 2
    return float(wl[start]), float(wl[start + n - 1])


def _subsample(n, max_points, seed=0):
    """Indices of at most ``max_points`` of ``n`` rows (all when fewer), sorted."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _summary_row(summary, label):
    """(bias, scatter, corr) of ``label`` from a CV summary table, or None."""
    if summary is None:
        return None
    require_columns(summary, ["label", "bias", "scatter", "corr"], "CV summary")
    names = [str(x) for x in summary["label"]]
    if label not in names:
        return None
    r = summary[names.index(label)]
    return float(r["bias"]), float(r["scatter"]), float(r["corr"])


# --------------------------------------------------------------------------- Wheeler Figs 7-8
def cv_one_to_one(predictions, label_names, path, summary=None, bounds=None, title=None, max_points=4000):
    """Cross-validated versus reference label, one panel per label (Wheeler+2020 Figs 7–8).

    Parameters
    ----------
    predictions : table
        ``cv/<model>_predictions.fits``: ``<label>`` (the reference value) and ``cv_<label>``
        (the held-out prediction) for every label.
    label_names : sequence of str
    path : str or Path
        PNG to write.
    summary : table, optional
        ``cv/<model>_summary.csv`` (label, bias, scatter, corr): the numbers printed in each
        panel; computed from ``predictions`` where absent (bias = mean, scatter = half 84−16).
    bounds : dict {label: (lo, hi)}, optional
        The Wheeler+2020 §4 KDE bounds on the inferred label, drawn as horizontal lines.
    title : str, optional
    max_points : int
        At most this many stars are drawn per panel (all enter the statistics).

    Returns
    -------
    Path

    Raises
    ------
    ReportInputError
        No labels, or a table without rows or finite values.
    ColumnError
        A label's ``<label>`` or ``cv_<label>`` column is missing (named).
    """
    labels = [str(x) for x in (label_names or [])]
    if not labels:
        raise ReportInputError("label_names: empty; give the model's labels")
    require_columns(predictions, [c for lab in labels for c in (lab, f"cv_{lab}")], "CV predictions")
    rows, cols = grid_shape(len(labels), 4)
    fig = new_figure(1.9 * cols + 0.4, 1.95 * rows + (0.3 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    for ax, lab in zip(axes.flat, labels):
        x = column(predictions, lab, "CV predictions")
        y = column(predictions, f"cv_{lab}", "CV predictions")
        ok = np.isfinite(x) & np.isfinite(y)
        stats = _summary_row(summary, lab)
        if stats is None:
            d = y[ok] - x[ok]
            corr = np.corrcoef(x[ok], y[ok])[0, 1] if ok.sum() > 2 else np.nan
            stats = (float(np.mean(d)) if d.size else np.nan, half_width(d), corr)
        k = _subsample(int(ok.sum()), max_points)
        xs, ys = x[ok][k], y[ok][k]
        ax.scatter(xs, ys, s=3, c="tab:blue", alpha=0.5, lw=0, rasterized=True)
        if ok.any():
            lo, hi = np.nanpercentile(np.concatenate([x[ok], y[ok]]), [0.5, 99.5])
            pad = 0.05 * (hi - lo if hi > lo else 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
        if bounds and lab in bounds:
            lo_y, hi_y = ax.get_ylim()
            span = hi_y - lo_y
            for v in bounds[lab]:
                if np.isfinite(v):
                    ax.axhline(v, color="tab:red", lw=0.9, ls="--")
                    if ok.any() and lo_y - 0.3 * span <= v <= hi_y + 0.3 * span:  # show a bound just off the data
                        lo_y, hi_y = min(lo_y, v - 0.03 * span), max(hi_y, v + 0.03 * span)
            ax.set_ylim(lo_y, hi_y)
        ax.text(0.04, 0.96, f"bias {stats[0]:+.3g}\nscatter {stats[1]:.3g}\n$\\rho$ = {stats[2]:.2f}\nn = {int(ok.sum())}",
                transform=ax.transAxes, va="top", ha="left", fontsize=FONT_SIZE - 2,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8", alpha=0.85))
        ax.set_xlabel("reference " + axis_label(lab), fontsize=FONT_SIZE)
        ax.set_ylabel("CV " + axis_label(lab), fontsize=FONT_SIZE)
        ax.tick_params(labelsize=FONT_SIZE - 2)
    if title:
        fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


def cv_scatter_by_model(summary, path, title=None):
    """CV bias and scatter of each label, the models side by side (Nandakumar+2022's four models).

    Parameters
    ----------
    summary : table
        ``cv/cv_summary.csv``: ``model``, ``label``, ``bias``, ``scatter``; one panel per label,
        a bar (the scatter) with a marker (the bias) per model.
    path : str or Path
    title : str, optional

    Raises
    ------
    ColumnError, ReportInputError
        A missing column, or no row.
    """
    require_columns(summary, ["model", "label", "bias", "scatter"], "CV summary")
    models = list(dict.fromkeys(str(m) for m in summary["model"]))
    labels = list(dict.fromkeys(str(x) for x in summary["label"]))
    value = {(str(r["model"]), str(r["label"])): (float(r["bias"]), float(r["scatter"])) for r in summary}
    rows, cols = grid_shape(len(labels), 3)
    fig = new_figure(2.3 * cols + 0.4, 1.9 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    x = np.arange(len(models))
    for ax, lab in zip(axes.flat, labels):
        bias = [value.get((m, lab), (np.nan, np.nan))[0] for m in models]
        scat = [value.get((m, lab), (np.nan, np.nan))[1] for m in models]
        ax.bar(x, scat, 0.6, color="tab:blue", label="scatter")
        ax.plot(x, bias, "o", color="tab:red", ms=5, label="bias")
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels(models, fontsize=FONT_SIZE - 1)
        ax.set_title(quantity_name(lab), fontsize=FONT_SIZE)
        ax.set_ylabel("CV " + axis_label(lab), fontsize=FONT_SIZE - 1)
        ax.set_xlabel("model", fontsize=FONT_SIZE - 1)
        ax.tick_params(labelsize=FONT_SIZE - 2)
    axes.flat[0].legend(fontsize=FONT_SIZE - 2)
    if title:
        fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Wheeler Fig 9
def precision_ranges(table, path, title=None):
    """Precision (2 × CV scatter) relative to the range where the model is unbiased (Wheeler+2020 Fig. 9).

    Parameters
    ----------
    table : table
        One row per (model, label): ``model``, ``label``, ``scatter`` (CV), ``kde_lo``,
        ``kde_hi`` (the KDE bounds of the calibration). Rows whose range is not positive are
        left out.
    path : str or Path
    title : str, optional

    Raises
    ------
    ColumnError, ReportInputError
        A missing column; no row with a positive range.
    """
    require_columns(table, ["model", "label", "scatter", "kde_lo", "kde_hi"], "precision table")
    scatter = column(table, "scatter", "precision table")
    rng = column(table, "kde_hi", "precision table") - column(table, "kde_lo", "precision table")
    ok = np.isfinite(scatter) & np.isfinite(rng) & (rng > 0)
    if not ok.any():
        raise ReportInputError("precision table: no row has a positive kde_hi - kde_lo range")
    models = list(dict.fromkeys(str(m) for m in np.asarray(table["model"])[ok]))
    labels = list(dict.fromkeys(str(x) for x in np.asarray(table["label"])[ok]))
    value = {(str(m), str(lab)): 2.0 * s / r for m, lab, s, r in
             zip(np.asarray(table["model"])[ok], np.asarray(table["label"])[ok], scatter[ok], rng[ok])}
    fig = new_figure(max(4.5, 0.45 * len(labels) * max(1, len(models)) ** 0.5 + 2.0), 3.2)
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        v = [value.get((m, lab), np.nan) for lab in labels]
        ax.bar(np.arange(len(labels)) + (i - (len(models) - 1) / 2) * width, v, width, label=f"{m} model")
    ax.set_xticks(np.arange(len(labels)))
    ax.set_xticklabels([quantity_name(lab) for lab in labels], rotation=45, ha="right", fontsize=FONT_SIZE)
    ax.set_ylabel("2 × CV scatter / unbiased range", fontsize=FONT_SIZE)
    ax.set_xlabel("label", fontsize=FONT_SIZE)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=FONT_SIZE - 1)
    if title:
        ax.set_title(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Wheeler Figs 18-19
def linear_coefficients(wavelength, linear, scatter, label_names, path, title=None):
    """The model's linear coefficients θ and its intrinsic scatter s versus wavelength (Wheeler+2020 Figs 18–19).

    Parameters
    ----------
    wavelength : (P,) float
        Ångström.
    linear : (P, L) float
        θ of each label's linear term (in scaled-label units: flux per unit of scaled label);
        NaN where the pixel is not modelled.
    scatter : (P,) float
        s of each pixel (flux units).
    label_names : sequence of str, length L
    path : str or Path
    title : str, optional

    Raises
    ------
    ReportInputError, ShapeError
        Empty arrays, or shapes that disagree (named).
    """
    wl = as_float(wavelength, "wavelength")
    lin = as_float(linear, "linear", ndim=2)
    s = as_float(scatter, "scatter")
    labels = [str(x) for x in (label_names or [])]
    same_length(wavelength=wl, linear=lin, scatter=s)
    if lin.shape[1] != len(labels) or not labels:
        raise ReportInputError(f"label_names: {len(labels)} names for the {lin.shape[1]} columns of linear")
    n = len(labels) + 1
    fig = new_figure(7.0, 0.85 * n + 0.8)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    wl, lin, s = _gap_breaks(wl, lin.T, s)
    lin = lin.T
    for ax, lab, k in zip(axes, labels, range(len(labels))):
        ax.plot(wl, lin[:, k], lw=0.5, color="k")
        ax.axhline(0.0, color="0.6", lw=0.5)
        ax.set_ylabel(r"$\theta$ " + quantity_name(lab), fontsize=FONT_SIZE - 1)
        ax.tick_params(labelsize=FONT_SIZE - 2)
    axes[-1].plot(wl, s, lw=0.5, color="tab:red")
    axes[-1].set_ylabel("s [flux]", fontsize=FONT_SIZE - 1)
    axes[-1].set_xlabel(axis_label("wavelength"), fontsize=FONT_SIZE)
    axes[-1].tick_params(labelsize=FONT_SIZE - 2)
    fig.suptitle((title + ": " if title else "") + "linear coefficients θ (per unit scaled label) and scatter s",
                 fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Wheeler Fig 10
def model_versus_data(wavelength, flux, ivar, model_flux, model_scatter, path, names=None, window=None):
    """Data and best-fit model with their 1σ bands for a few stars (Wheeler+2020 Fig. 10).

    Parameters
    ----------
    wavelength : (P,) float
        Ångström.
    flux, ivar : (N, P) float
        The stars' normalised spectra; 1σ = 1/√ivar (pixels with ivar = 0 are not drawn).
    model_flux : (N, P) float
        The model at each star's inferred labels.
    model_scatter : (N, P) or (P,) float
        The model's 1σ (its intrinsic scatter s).
    path : str or Path
    names : sequence of str, optional
        One title per star.
    window : (float, float), optional
        Wavelength range drawn (default: an eighth of the grid around its middle).

    Raises
    ------
    ReportInputError, ShapeError
        Empty arrays, shapes that disagree, or a window without pixels.
    """
    wl = as_float(wavelength, "wavelength")
    f = as_float(flux, "flux", ndim=2)
    iv = as_float(ivar, "ivar", ndim=2, finite=False)
    m = as_float(model_flux, "model_flux", ndim=2)
    s = as_float(model_scatter, "model_scatter", ndim=2 if np.ndim(model_scatter) == 2 else 1)
    for name, arr in (("flux", f), ("ivar", iv), ("model_flux", m)):
        if arr.shape[1] != wl.size:
            raise ReportInputError(f"{name}: {arr.shape[1]} pixels, wavelength has {wl.size}")
    same_length(flux=f, ivar=iv, model_flux=m)
    s = np.broadcast_to(s, f.shape) if s.ndim == 1 and s.size == wl.size else s
    if s.shape != f.shape:
        raise ReportInputError(f"model_scatter: shape {s.shape}, expected {f.shape} or ({wl.size},)")
    if window is None:
        window = default_window(wl)
    sel = (wl >= window[0]) & (wl <= window[1])
    if not sel.any():
        raise ReportInputError(f"window: no pixel of the grid ({wl.min():.1f}-{wl.max():.1f} Å) lies in {window}")
    n = f.shape[0]
    fig = new_figure(7.0, 1.35 * n + 0.6)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        good = iv[i, sel] > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.where(good, 1.0 / np.sqrt(iv[i, sel]), np.nan)
        x, data, err, model, scat = _gap_breaks(wl[sel], np.where(good, f[i, sel], np.nan), err, m[i, sel], s[i, sel])
        ax.fill_between(x, data - err, data + err, color="tab:orange", alpha=0.35, lw=0, step="mid")
        ax.plot(x, data, color="tab:orange", lw=0.8, drawstyle="steps-mid", label="data ±1σ")
        ax.fill_between(x, model - scat, model + scat, color="0.4", alpha=0.35, lw=0)
        ax.plot(x, model, color="k", lw=0.8, label="model ±1σ (s)")
        ax.set_ylabel("norm. flux", fontsize=FONT_SIZE - 1)
        ax.tick_params(labelsize=FONT_SIZE - 2)
        if names is not None and i < len(names):
            ax.set_title(str(names[i]), fontsize=FONT_SIZE - 1, loc="left")
    axes[0].legend(fontsize=FONT_SIZE - 2, loc="lower right", ncol=2)
    axes[-1].set_xlabel(axis_label("wavelength"), fontsize=FONT_SIZE)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Nandakumar Figs 5-6
def residual_percentiles(tables, path, title=None):
    """Per-pixel median and 16th–84th percentiles of data − model over the training set (Nandakumar+2022 Figs 5–6).

    Parameters
    ----------
    tables : dict {model: table}
        ``tables/residuals_<model>.csv``: ``wavelength``, ``median``, ``p16``, ``p84``.
    path : str or Path
    title : str, optional

    Raises
    ------
    ReportInputError, ColumnError
        No tables, a table without rows or finite medians, a missing column (named).
    """
    if not tables:
        raise ReportInputError("tables: no residual tables given")
    for name, t in tables.items():
        require_columns(t, ["wavelength", "median", "p16", "p84"], f"residuals of {name}")
    n = len(tables)
    fig = new_figure(7.0, 1.5 * n + 0.6)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (name, t) in zip(axes, tables.items()):
        wl = column(t, "wavelength", f"residuals of {name}")
        med = as_float(t["median"], f"residuals of {name} column 'median'")
        p16, p84 = column(t, "p16", f"residuals of {name}"), column(t, "p84", f"residuals of {name}")
        wl, med, p16, p84 = _gap_breaks(wl, med, p16, p84)
        ax.fill_between(wl, p16, p84, color="tab:blue", alpha=0.3, lw=0, label="16th–84th percentile")
        ax.plot(wl, med, color="k", lw=0.5, label="median")
        ax.axhline(0.0, color="tab:red", lw=0.5)
        finite = np.isfinite(p16) & np.isfinite(p84)
        if finite.any():
            lim = np.nanpercentile(np.abs(np.concatenate([p16[finite], p84[finite]])), 99.0)
            ax.set_ylim(-1.2 * lim, 1.2 * lim)
            ax.set_xlim(np.min(wl[finite]), np.max(wl[finite]))
        ax.set_ylabel("data − model\n[norm. flux]", fontsize=FONT_SIZE - 1)
        ax.set_title(f"{name}", fontsize=FONT_SIZE, loc="left")
        ax.set_xlabel(axis_label("wavelength"), fontsize=FONT_SIZE - 1)
        ax.tick_params(labelsize=FONT_SIZE - 2)
    axes[0].legend(fontsize=FONT_SIZE - 2, loc="upper right", ncol=2)
    if title:
        fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- error calibration
def calibration_pulls(snr, residuals, raw_errors, calibrated_errors, label_names, path, reference_errors=None,
                      n_bins=6, title=None):
    """Width of the CV pulls versus S/N, with the formal and with the calibrated errors (docs/calibration.md).

    The pull of a held-out training star is (CV prediction − reference) / √(σ² + σ_ref²);
    its width (half the 84th − 16th percentile) is 1 for right errors. Drawn per label in
    S/N bins of equal counts, for σ = the formal (covariance) error and the calibrated one.

    Parameters
    ----------
    snr : (N,) float
    residuals : (N, L) float
        CV prediction − reference label.
    raw_errors, calibrated_errors : (N, L) float
    label_names : sequence of str, length L
    path : str or Path
    reference_errors : (N, L) float, optional
        1σ of the reference labels (NaN counts as 0).
    n_bins : int
    title : str, optional

    Raises
    ------
    ReportInputError, ShapeError
        Empty arrays or shapes that disagree (named).
    """
    snr = as_float(snr, "snr")
    res = as_float(residuals, "residuals", ndim=2)
    raw = as_float(raw_errors, "raw_errors", ndim=2)
    cal = as_float(calibrated_errors, "calibrated_errors", ndim=2)
    labels = [str(x) for x in (label_names or [])]
    same_length(snr=snr, residuals=res, raw_errors=raw, calibrated_errors=cal)
    for name, arr in (("raw_errors", raw), ("calibrated_errors", cal)):
        if arr.shape != res.shape:
            raise ReportInputError(f"{name}: shape {arr.shape}, residuals have {res.shape}")
    if len(labels) != res.shape[1]:
        raise ReportInputError(f"label_names: {len(labels)} names for the {res.shape[1]} columns of residuals")
    ref = np.zeros_like(res) if reference_errors is None else np.nan_to_num(as_float(reference_errors, "reference_errors", ndim=2, finite=False))
    if ref.shape != res.shape:
        raise ReportInputError(f"reference_errors: shape {ref.shape}, residuals have {res.shape}")
    ok_snr = np.isfinite(snr) & (snr > 0)
    if ok_snr.sum() < 2:
        raise ReportInputError("snr: fewer than 2 positive finite values")
    edges = np.unique(np.nanpercentile(snr[ok_snr], np.linspace(0, 100, max(2, int(n_bins)) + 1)))
    mids = np.sqrt(edges[:-1] * edges[1:])
    rows, cols = grid_shape(len(labels), 4)
    fig = new_figure(1.9 * cols + 0.4, 1.8 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    with np.errstate(invalid="ignore", divide="ignore"):
        pulls = {"formal errors": res / np.sqrt(raw ** 2 + ref ** 2), "calibrated errors": res / np.sqrt(cal ** 2 + ref ** 2)}
    style = {"formal errors": dict(fmt="s--", color="tab:red", mfc="white"), "calibrated errors": dict(fmt="o-", color="tab:blue")}
    for k, (ax, lab) in enumerate(zip(axes.flat, labels)):
        ax.axhspan(0.9, 1.1, color="tab:green", alpha=0.15, lw=0)
        ax.axhline(1.0, color="tab:green", lw=0.8)
        for name, p in pulls.items():
            w = [half_width(p[(snr >= lo) & (snr <= hi), k]) for lo, hi in zip(edges[:-1], edges[1:])]
            ax.plot(mids, w, style[name]["fmt"], color=style[name]["color"], mfc=style[name].get("mfc", style[name]["color"]),
                    ms=4, lw=1, label=name)
        ax.set_xscale("log")
        ax.set_title(quantity_name(lab), fontsize=FONT_SIZE)
        ax.set_ylabel("pull width", fontsize=FONT_SIZE - 1)
        ax.set_xlabel("S/N per pixel", fontsize=FONT_SIZE - 1)
        ax.tick_params(labelsize=FONT_SIZE - 2)
        ax.set_ylim(bottom=0)
    axes.flat[0].legend(fontsize=FONT_SIZE - 2, loc="upper right")
    fig.suptitle((title + ": " if title else "") + "width of (CV − reference) / σ versus S/N (1 = right errors)",
                 fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


def flag_rates(flags, path, groups=None, bits=None, title=None):
    """Fraction of stars with each quality bit set, per group (e.g. per model), and with any bit.

    Parameters
    ----------
    flags : (N,) int
        The catalogue's ``flags`` bitmask (:mod:`cannonade.flags`).
    path : str or Path
    groups : (N,) str, optional
        A group of each star (e.g. ``model_class``); one bar per group and bit.
    bits : sequence of (name, bit), optional
        The bits drawn (default: every bit of :data:`cannonade.flags.FLAG_TABLE`).
    title : str, optional

    Raises
    ------
    ReportInputError, ShapeError
        Empty or non-integer flags; groups of another length.
    """
    arr = np.ma.filled(np.ma.asarray(flags), 0) if flags is not None else None
    if arr is None or np.ndim(arr) != 1 or len(arr) == 0:
        raise ReportInputError(f"flags: expected a non-empty 1-d integer array, got shape {np.shape(arr)}")
    if not np.issubdtype(np.asarray(arr).dtype, np.integer):
        raise ReportInputError(f"flags: expected integers (a bitmask), got dtype {np.asarray(arr).dtype}")
    arr = np.asarray(arr, np.int64)
    g = np.full(arr.size, "all") if groups is None else np.asarray(groups).astype(str)
    same_length(flags=arr, groups=g)
    bits = [(str(n), int(b)) for n, b, *_ in (bits or FLAG_TABLE)]
    names = [n for n, _ in bits] + ["any (flags != 0)"]
    group_names = sorted(set(g.tolist()))
    fig = new_figure(6.0, (0.2 + 0.08 * len(group_names)) * len(names) + 1.0)
    ax = fig.add_subplot()
    height = 0.8 / len(group_names)
    y = np.arange(len(names))
    for i, name in enumerate(group_names):
        sel = g == name
        rate = [np.mean((arr[sel] >> b) & 1) for _, b in bits] + [np.mean(arr[sel] != 0)]
        ax.barh(y + (i - (len(group_names) - 1) / 2) * height, 100 * np.asarray(rate), height,
                label=f"{name} ({int(sel.sum())} stars)")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=FONT_SIZE - 1)
    ax.invert_yaxis()
    ax.set_xlabel("stars with the bit set [%]", fontsize=FONT_SIZE)
    ax.set_ylabel("quality bit", fontsize=FONT_SIZE)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=FONT_SIZE - 2, loc="best")
    if title:
        ax.set_title(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Kiel diagram (Wheeler Figs 3, 10)
def kiel_diagram(teff, logg, fe_h, path, training=None, title=None, gridsize=45, min_count=3):
    """log g versus T_eff coloured by the mean [Fe/H] of the stars in each cell, optionally beside the training set.

    Parameters
    ----------
    teff, logg, fe_h : (N,) float
        The catalogue's labels (K, dex, dex).
    path : str or Path
    training : (teff, logg, fe_h) of arrays, optional
        The training set, drawn star by star in a second panel (Wheeler+2020 Fig. 3).
    title : str, optional
    gridsize : int
        Hexagons across the T_eff axis.
    min_count : int
        Cells with fewer stars are left empty.

    Raises
    ------
    ReportInputError, ShapeError
        Empty arrays, no star with all three labels finite, lengths that disagree (named).
    """
    t, g, f = as_float(teff, "teff"), as_float(logg, "logg"), as_float(fe_h, "fe_h")
    same_length(teff=t, logg=g, fe_h=f)
    ok = np.isfinite(t) & np.isfinite(g) & np.isfinite(f)
    if not ok.any():
        raise ReportInputError("teff, logg, fe_h: no star has all three finite")
    panels = 1 if training is None else 2
    fig = new_figure(3.6 * panels + 0.6, 3.4)
    axes = fig.subplots(1, panels, squeeze=False, sharex=True, sharey=True)[0]
    vmin, vmax = np.nanpercentile(f[ok], [2, 98])
    hb = axes[0].hexbin(t[ok], g[ok], C=f[ok], reduce_C_function=np.mean, gridsize=gridsize, mincnt=min_count,
                        cmap="viridis", vmin=vmin, vmax=vmax, linewidths=0)
    axes[0].set_title(f"catalogue ({int(ok.sum())} stars)", fontsize=FONT_SIZE)
    if training is not None:
        tt, tg, tf = (as_float(a, f"training[{i}]") for i, a in enumerate(training))
        same_length(training_teff=tt, training_logg=tg, training_fe_h=tf)
        axes[1].scatter(tt, tg, c=tf, s=5, cmap="viridis", vmin=vmin, vmax=vmax, lw=0, rasterized=True)
        axes[1].set_title(f"training set ({int(np.isfinite(tt).sum())} stars)", fontsize=FONT_SIZE)
    for ax in axes:
        ax.set_xlabel(axis_label("teff"), fontsize=FONT_SIZE)
        ax.tick_params(labelsize=FONT_SIZE - 2)
    axes[0].set_ylabel(axis_label("logg"), fontsize=FONT_SIZE)
    axes[0].invert_xaxis()
    axes[0].invert_yaxis()
    cb = fig.colorbar(hb, ax=list(axes), shrink=0.9)
    cb.set_label("mean " + axis_label("fe_h"), fontsize=FONT_SIZE)
    cb.ax.tick_params(labelsize=FONT_SIZE - 2)
    if title:
        fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return save_figure(fig, path)
