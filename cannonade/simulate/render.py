"""Rendering normalised model spectra at an instrument's resolution.

The normalised spectrum ``exp(-sum of line opacities)`` is rendered directly on the
instrument's pixel grid: each line a Gaussian of the LSF ⊗ Doppler ⊗ broadening width
in a window of pixels around it; strong lines keep explicit pressure-broadened wings
and hydrogen lines Stark wings (formed at intrinsic resolution, saturated, then
convolved with the LSF); cool stars get molecular bands (TiO, CaH, MgH, CN, CH, CO).

All work is vectorised over a batch of stars × (line, pixel) pairs: no Python loop
runs per star or per line.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cannonade.simulate.formation import LOGG_SUN, THETA_SUN, equivalent_widths, stellar_arrays
from cannonade.simulate.instruments import get_instrument
from cannonade.simulate.lines import ELEMENT_INDEX
from cannonade.spectra.linelists import BALMER_LINES, BRACKETT_LINES, MOLECULAR_BANDS, air_to_vacuum
from cannonade.spectra.surveys import C_KMS

__all__ = ["normalised_model", "R_MAX_METAL", "R_MAX_HYDROGEN"]

# Milne-Eddington-like depth limits of saturated lines (the line source function is not zero)
R_MAX_METAL = 0.88
R_MAX_HYDROGEN = 0.7
# largest optical-depth scale of a molecular band (TiO may black out an M dwarf's optical bands;
# CO bandheads in the H band stay partial even in the coolest giants)
MAX_BAND_STRENGTH = {"CO": 0.6}


# ----------------------------------------------------------------------------- rendering
def _pairs(centres, half_width, grid):
    """Flattened (line, pixel) index pairs for windows ``centres ± half_width``.

    Returns line_idx (P,), pix_idx (P,).
    """
    lo = np.searchsorted(grid, centres - half_width)
    hi = np.searchsorted(grid, centres + half_width)
    counts = np.maximum(hi - lo, 0)
    line_idx = np.repeat(np.arange(len(centres)), counts)
    start = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    pix_idx = start + np.arange(counts.sum())
    return line_idx, pix_idx


def _accumulate(vals, pix_idx, n_pix):
    """Sum (n, P) pair values into (n, n_pix) with a sparse aggregation matrix."""
    if vals.shape[1] == 0:
        return np.zeros((vals.shape[0], n_pix))
    agg = sp.csr_matrix((np.ones(len(pix_idx), dtype=vals.dtype), (np.arange(len(pix_idx)), pix_idx)), shape=(len(pix_idx), n_pix))
    return np.asarray(vals @ agg)


def _band_shape(u, length, direction, sigma):
    """Band-head absorption profile convolved with a Gaussian LSF.

    ``direction=+1``: 0 blueward of the head, exp(-u/L) redward (degraded to the red);
    ``-1`` mirrored; ``0`` a Gaussian of width L. Exact step-exponential ⊗ Gaussian.
    """
    from scipy.special import erfc

    if direction == 0:
        s = np.sqrt(length**2 + sigma**2)
        return np.exp(-0.5 * (u / s) ** 2)
    x = direction * u
    r = sigma / length
    arg = np.clip(0.5 * r**2 - x / length, None, 50.0)
    return 0.5 * np.exp(arg) * erfc((r - x / sigma) / np.sqrt(2.0))


def _molecular_strength(species, s):
    """Band optical-depth scale per star for a molecular species, (n,) float."""
    theta = 5040.0 / s["teff"]
    xh = s["xh"]
    g = s["logg"]
    if species == "TiO":
        return 10.0 ** (xh[:, ELEMENT_INDEX["Ti"]] + 8.0 * (theta - 5040.0 / 3700.0))
    if species == "CaH":
        return 10.0 ** (xh[:, ELEMENT_INDEX["Ca"]] + 6.0 * (theta - 5040.0 / 3900.0) + 0.7 * (g - 4.6))
    if species == "MgH":
        return 10.0 ** (xh[:, ELEMENT_INDEX["Mg"]] + 6.0 * (theta - 5040.0 / 4000.0) + 0.7 * (g - 4.6))
    if species == "CN":
        return 10.0 ** (xh[:, ELEMENT_INDEX["C"]] + xh[:, ELEMENT_INDEX["N"]] + 5.0 * (theta - 5040.0 / 4500.0) - 0.15 * (g - 2.5))
    if species == "CH":
        return 0.3 * 10.0 ** (xh[:, ELEMENT_INDEX["C"]] + 2.0 * (theta - THETA_SUN))
    if species == "CO":
        # second-overtone bandheads in the H band: ~20 % deep at 4000 K, ~40 % in the coolest giants
        # (an earlier 0.35 made the H band of a 3750 K giant a 97 %-deep trough no continuum fit survives)
        return 0.06 * 10.0 ** (xh[:, ELEMENT_INDEX["C"]] + 5.0 * (theta - 5040.0 / 4500.0) - 0.2 * (g - 2.5))
    raise KeyError(species)


def normalised_model(labels, instrument="lamost", rv=0.0, sub_batch=48):
    """Noise-free continuum-normalised model spectra.

    Parameters
    ----------
    labels : Table or dict
        Stellar labels (see :func:`stellar_arrays`), n rows.
    instrument : str
    rv : float or (n,) float
        Radial velocities (km/s); lines are shifted by (1 + rv/c).
    sub_batch : int
        Stars rendered together. Stars are grouped by RV so that the pixel windows
        shared by a group stay narrow.

    Returns
    -------
    wavelength : (n_pixels,) float
    norm : (n, n_pixels) float in (0, 1]
    """
    inst = get_instrument(instrument)
    s = labels if isinstance(labels, dict) and "xh" in labels else stellar_arrays(labels)
    n = len(s["teff"])
    rv = np.broadcast_to(np.asarray(rv, float), (n,))
    grid = inst.wavelength
    out = np.empty((n, len(grid)))
    order = np.argsort(rv, kind="stable")
    for i0 in range(0, n, sub_batch):
        idx = order[i0:i0 + sub_batch]
        out[idx] = _render({k: v[idx] for k, v in s.items()}, inst, rv[idx])
    return grid, out


def _render(s, inst, rv):
    """normalised_model for one group of stars with similar RVs, (n, n_pixels)."""
    instrument = inst.name
    n = len(s["teff"])
    grid = inst.wavelength
    n_pix = len(grid)
    doppler = 1.0 + rv / C_KMS  # (n,)
    d_mid = 0.5 * (doppler.max() + doppler.min())
    lines, ew, ew_core, log_tau0, log_a, dl = equivalent_widths(s, instrument)
    wl0 = air_to_vacuum(lines.wl_air) if inst.vacuum else lines.wl_air
    sig_lsf = inst.lsf_sigma(wl0)  # (L,)
    sig_broad = wl0[None, :] * s["vbroad"][:, None] / (2.0 * C_KMS)
    sigma = np.sqrt(sig_lsf[None, :] ** 2 + 0.5 * dl**2 + sig_broad**2)  # (n, L)
    shift_max = float(np.max(wl0) * (doppler.max() - doppler.min()) / 2.0)

    # weak and intermediate lines: Gaussian with the full EW; strong lines: core Gaussian + wings.
    # Lines weaker than 0.2 mÅ in every star of the group are skipped (invisible at any S/N used).
    w_gauss = np.where(lines.strong[None, :], ew_core, ew)
    active = np.flatnonzero(w_gauss.max(axis=0) > 2e-4)
    hw = 5.0 * sigma[:, active].max(axis=0) + shift_max + 1e-9
    li, pi = _pairs(wl0[active] * d_mid, hw, grid)
    li = active[li]
    # float32 for the (stars x pairs) work: it is memory-bound, and 1e-7 precision is ample
    centre = (wl0[li][None, :] * doppler[:, None]).astype(np.float32)
    sg = sigma[:, li].astype(np.float32)
    x = (grid[pi].astype(np.float32)[None, :] - centre) / sg
    vals = (w_gauss[:, li].astype(np.float32) / (np.float32(np.sqrt(2.0 * np.pi)) * sg)) * np.exp(-0.5 * x * x)
    tau = _accumulate(vals, pi, n_pix).astype(np.float64)

    # Saturated strong lines and hydrogen lines: their intrinsic absorption 1 - exp(-tau) is
    # formed first and then convolved with the LSF (exp then convolve, so that black cores
    # are smoothed as in real low-resolution spectra).
    pix = np.gradient(grid)
    tau_s = np.zeros((n, n_pix))
    # damping wings of strong lines: tau_w = C / (Δλ² + w²), C = tau0 a ΔλD² / sqrt(pi)
    st = np.flatnonzero(lines.strong)
    if len(st):
        cw = 10.0 ** (log_tau0[:, st] + log_a[:, st]) * dl[:, st] ** 2 / np.sqrt(np.pi)
        pix_st = np.interp(wl0[st], grid, pix)
        ww = np.maximum(np.sqrt(0.5 * dl[:, st] ** 2 + sig_broad[:, st] ** 2), pix_st[None, :])
        hw_w = np.minimum(np.sqrt(cw.max(axis=0) / 1e-3) + 5 * sigma[:, st].max(axis=0), 120.0) + shift_max
        li, pi = _pairs(wl0[st] * d_mid, hw_w, grid)
        d = grid[pi][None, :] - wl0[st][li][None, :] * doppler[:, None]
        vals = cw[:, li] / (d * d + ww[:, li] ** 2)
        tau_s += _accumulate(vals, pi, n_pix)

    # hydrogen (Balmer; Brackett in the H band): Stark-broadened, ∝ |Δλ|^-2.5 far wings,
    # strength rising steeply with Teff (n = 2 / n = 4 level populations)
    hyd = [(b[1], b[2]) for b in BALMER_LINES] + [(b[1], b[2]) for b in BRACKETT_LINES]
    bw = np.array([h[0] for h in hyd])
    bw = air_to_vacuum(bw) if inst.vacuum else bw
    rel = np.array([h[1] for h in hyd])
    in_range = (bw > grid[0] - 150) & (bw < grid[-1] + 150)
    if in_range.any():
        bw, rel = bw[in_range], rel[in_range]
        strength = 1.2 * 10.0 ** (0.45 * (s["teff"] - 5777.0) / 1000.0)  # (n,)
        width = (
            1.5 * np.sqrt(rel)[None, :] * (bw / 5000.0)[None, :] ** 0.5
            * 10.0 ** (0.2 * (s["teff"] - 5777.0) / 1000.0 + 0.08 * (s["logg"] - LOGG_SUN))[:, None]
        )
        amp = strength[:, None] * rel[None, :]
        hw_b = np.minimum(width.max(axis=0) * (amp.max(axis=0) / 3e-3) ** 0.4, 150.0) + shift_max
        li, pi = _pairs(bw * d_mid, hw_b, grid)
        d = grid[pi][None, :] - bw[li][None, :] * doppler[:, None]
        vals = amp[:, li] * (1.0 + (d / width[:, li]) ** 2) ** -1.25
        tau_h = _accumulate(vals, pi, n_pix)
    else:
        tau_h = 0.0
    # Milne-Eddington-like saturation: line depth -> r_max, not 1 (the line source function
    # is not zero); weak lines keep depth = tau.
    absorb = _lsf_convolve(_saturate(tau_s, R_MAX_METAL) + _saturate(tau_h, R_MAX_HYDROGEN), inst)

    # molecular bands
    tau_band = np.zeros((n, n_pix))
    for species, head_air, direction, length, rel_b in MOLECULAR_BANDS:
        head = float(air_to_vacuum(head_air)) if inst.vacuum else head_air
        lo_b = head - (length * 6 if direction <= 0 else 0) - 20.0
        hi_b = head + (length * 6 if direction >= 0 else 0) + 20.0
        if hi_b < grid[0] or lo_b > grid[-1]:
            continue
        i0, i1 = np.searchsorted(grid, [lo_b * d_mid - shift_max, hi_b * d_mid + shift_max])
        amp = rel_b * np.minimum(_molecular_strength(species, s), MAX_BAND_STRENGTH.get(species, 4.0))
        u = grid[None, i0:i1] - head * doppler[:, None]
        tau_band[:, i0:i1] += amp[:, None] * _band_shape(u, length, direction, float(inst.lsf_sigma(head)))

    return (1.0 - _saturate(tau, R_MAX_METAL)) * np.exp(-tau_band) * np.clip(1.0 - absorb, 0.02, None)


def _saturate(tau, r_max):
    """Absorption depth r_max (1 - exp(-tau / r_max)): = tau when weak, -> r_max when saturated."""
    return r_max * -np.expm1(-np.asarray(tau) / r_max)


def _lsf_convolve(a, inst):
    """Convolve (n, n_pixels) rows with the instrument's Gaussian LSF, segment by segment.

    The LSF width in pixels is constant on log-linear grids (LAMOST, APOGEE) and
    nearly so within one GALAH CCD, so one ``gaussian_filter1d`` per segment suffices.
    """
    from scipy.ndimage import gaussian_filter1d

    if not np.any(a):
        return a
    out = np.empty_like(a)
    i0 = 0
    for w in inst.segment_wavelengths():
        i1 = i0 + len(w)
        sig_pix = float(np.median(inst.lsf_sigma(w) / np.gradient(w)))
        out[:, i0:i1] = gaussian_filter1d(a[:, i0:i1], sig_pix, axis=1, mode="nearest", truncate=4.0)
        i0 = i1
    return out

