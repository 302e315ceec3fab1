"""Element line windows as pixel masks per label, and χ² within them (Wheeler+2020 §2.1, Table 1).

Pure functions shared by the ``clean`` and ``infer`` stages.
"""

from __future__ import annotations

import numpy as np

from cannonade.spectra.linelists import window_mask


def label_element(label):
    """Element symbol of a label name: 'mg_fe' -> 'Mg', 'fe_h' -> 'Fe'; None for teff/logg/vmic."""
    if label == "fe_h":
        return "Fe"
    if label.endswith("_fe"):
        el = label[: -len("_fe")]
        return el[:1].upper() + el[1:].lower()
    return None


def window_masks(wavelength, label_names, windows, derived=None, resolution=None):
    """Per-label pixel masks of the element line windows on a grid.

    Parameters
    ----------
    wavelength : (P,) float, vacuum Å
    label_names : list of str
    windows : dict element -> (n, 2) float, window edges (Å, vacuum)
    derived : dict label -> sequence of component labels, optional
        A derived label uses the union of its components' windows.
    resolution : float, optional
        At low resolution each window is widened by half a resolution element λ/R on each side,
        so it covers the pixels the line's light falls on.

    Returns
    -------
    dict label -> (P,) bool, only for labels with at least one window pixel.
    """
    derived = derived or {}
    out = {}
    for name in label_names:
        mask = np.zeros(len(wavelength), dtype=bool)
        for comp in derived.get(name, [name]):
            el = label_element(comp)
            if el is None or el not in windows:
                continue
            w = np.asarray(windows[el], dtype=float)
            if resolution:
                half = 0.5 * w.mean(axis=1, keepdims=True) / resolution
                w = np.hstack([w[:, :1] - half, w[:, 1:] + half])
            mask |= window_mask(wavelength, w, vacuum=True)
        if mask.any():
            out[name] = mask
    return out


def reduced_window_chi2(pixel_chi2, mask):
    """χ² per valid pixel within a window: the mean of the finite per-pixel values under ``mask``.

    Parameters
    ----------
    pixel_chi2 : (M, P) float
        Per-pixel χ² contributions; NaN marks a pixel without data (ivar = 0) and a NaN row a star
        without labels.
    mask : (P,) bool

    Returns
    -------
    (M,) float
        Reduced χ²; NaN for a star with no valid pixel in the window. Comparing reduced values
        (not sums) keeps stars with missing window pixels from escaping a cut.
    """
    sub = pixel_chi2[:, mask]
    ok = np.isfinite(sub)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, sub, 0.0).sum(axis=1) / n, np.nan)
