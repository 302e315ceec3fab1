"""A fast, physically motivated (not polynomial) line-formation model for mock spectra.

Every absorption line has a laboratory wavelength, an element, an ionisation
stage and an excitation potential. Its strength follows the Saha-Boltzmann
scaling of a line-to-continuum (H⁻) opacity ratio in Teff and logg, scales
linearly with the element's abundance, and passes through a saturating curve
of growth whose Doppler width contains the microturbulence (vmic) and whose
damping part grows with gravity. Strong lines (Balmer, Ca II H&K and triplet,
Mg b, Na D, ...) keep explicit pressure-broadened wings; cool stars get
molecular bands (TiO, CaH, MgH, CN, CH, CO). The normalised spectrum
``exp(-sum of line opacities)`` is rendered directly at the instrument's
resolution (each line a Gaussian of the LSF ⊗ Doppler ⊗ broadening width, in a
window of pixels around it), multiplied by a blackbody continuum, an
instrument throughput and a smooth flux-calibration error, and observed with
photon noise at a requested S/N and with bad pixels.

All work is vectorised over a batch of stars × (line, pixel) pairs: no Python
loop runs per star or per line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cannonade.exceptions import ColumnError, ShapeError
from cannonade.spectra.linelists import BALMER_LINES, BRACKETT_LINES, MOLECULAR_BANDS, STRONG_LINES, air_to_vacuum, load_line_windows
from cannonade.simulate.instruments import APOGEE_CHIPS, get_instrument

__all__ = [
    "ABUNDANCE_ELEMENTS",
    "Synthetic",
    "synthesize",
    "synthesize_normalised",
    "line_list",
    "equivalent_widths",
]

C_KMS = 299792.458
THETA_SUN = 5040.0 / 5777.0
LOGG_SUN = 4.44
# elements whose [X/Fe] are labels of the mock (GALAH DR3 / Wheeler+2020 set)
ABUNDANCE_ELEMENTS = ["O", "Na", "Mg", "Al", "Si", "Ca", "Ti", "Sc", "Mn", "Y", "Ba", "Eu"]
# every element that has lines: symbol -> (first ionisation potential eV, mass amu)
_ELEMENTS = {
    "Fe": (7.90, 55.85), "O": (13.62, 16.00), "Na": (5.14, 22.99), "Mg": (7.65, 24.31),
    "Al": (5.99, 26.98), "Si": (8.15, 28.09), "Ca": (6.11, 40.08), "Ti": (6.83, 47.87),
    "Sc": (6.56, 44.96), "Mn": (7.43, 54.94), "Y": (6.22, 88.91), "Ba": (5.21, 137.33),
    "Eu": (5.67, 151.96), "Cr": (6.77, 52.00), "Ni": (7.64, 58.69), "Co": (7.88, 58.93),
    "V": (6.75, 50.94), "Zn": (9.39, 65.38), "Cu": (7.73, 63.55), "La": (5.58, 138.91),
    "K": (4.34, 39.10), "Li": (5.39, 6.94), "C": (11.26, 12.01), "N": (14.53, 14.01),
}
ELEMENT_NAMES = list(_ELEMENTS)
_EL_INDEX = {e: i for i, e in enumerate(ELEMENT_NAMES)}
_ION_POT = np.array([_ELEMENTS[e][0] for e in ELEMENT_NAMES])
_MASS = np.array([_ELEMENTS[e][1] for e in ELEMENT_NAMES])
# once-ionised lines in the GALAH windows of these elements (Sc II, Y II, Ba II, Eu II, La II)
_IONISED_WINDOW_ELEMENTS = {"Sc", "Y", "Ba", "Eu", "La"}
_LINELIST_SEED = 20200416  # fixed: the line list is part of the model, not of a simulation


# ----------------------------------------------------------------------------- curve of growth
@functools.lru_cache(maxsize=1)
def _doppler_cog_table():
    """Pure-Doppler curve of growth F_D(log10 tau0) = ∫ (1 - exp(-tau0 e^{-v^2})) dv."""
    logt = np.linspace(-4.0, 14.0, 721)
    v = np.linspace(-9.0, 9.0, 3601)
    prof = np.exp(-(v**2))
    f = np.trapezoid(-np.expm1(-(10.0 ** logt[:, None]) * prof[None, :]), v, axis=1)
    return logt, f


def _cog(log_tau0, log_a):
    """Equivalent width in Doppler widths for central depth tau0 and damping a.

    Weak lines: sqrt(pi) tau0 (linear part); saturated: 2 sqrt(ln tau0) (flat part);
    strong: 2 pi^(1/4) sqrt(tau0 a) (damping part, Lorentzian wings); the Doppler and
    damping parts add in quadrature (an interpolation of the Voigt curve of growth).
    """
    logt, f = _doppler_cog_table()
    fd = np.interp(np.clip(log_tau0, logt[0], logt[-1]), logt, f)
    fd = np.where(log_tau0 < logt[0], np.sqrt(np.pi) * 10.0**log_tau0, fd)
    # the damping part only matters once the Doppler core is saturated (tau0 >> 1); the factor
    # tau0 / (tau0 + 30) keeps weak lines on the linear part whatever their damping
    tau0 = 10.0 ** np.minimum(log_tau0, 30.0)
    fl = 2.0 * np.pi**0.25 * np.sqrt(tau0 * 10.0**log_a) * (tau0 / (tau0 + 30.0))
    return fd, np.sqrt(fd**2 + fl**2)


# ----------------------------------------------------------------------------- line list
@dataclass(frozen=True)
class LineList:
    """Lines of the model: arrays of shape (n_lines,)."""

    wl_air: np.ndarray
    element: np.ndarray  # index into ELEMENT_NAMES
    ion: np.ndarray  # 0 neutral, 1 once ionised
    chi: np.ndarray  # excitation potential (eV)
    log_ew_sun: np.ndarray  # log10 solar equivalent width (Å)
    log_a_sun: np.ndarray  # log10 damping parameter at solar gravity
    strong: np.ndarray  # bool: render explicit damping wings
    molecular: np.ndarray  # bool: molecular line (OH/CN/CO forest)

    def __len__(self):
        return len(self.wl_air)


def _pseudo_lines(rng, lo, hi, density, elements, weights, log_ew_range, chi_max=5.0, blue_boost=True):
    """Deterministic pseudo-lines standing in for the many weak atomic lines of a real line list."""
    span = hi - lo
    n = int(density * span / 1000.0)
    # more lines in the blue, as in real stellar spectra (density ∝ λ^-2 in the optical)
    u = rng.random(n)
    if blue_boost:
        wl = 1.0 / (1.0 / lo - u * (1.0 / lo - 1.0 / hi))
    else:
        wl = lo + u * span
    w = np.asarray(weights, float)
    el = rng.choice(len(elements), size=n, p=w / w.sum())
    lo_ew, hi_ew = log_ew_range
    # steep power law: most lines weak, a few strong (like a real line list)
    log_ew = lo_ew + (hi_ew - lo_ew) * rng.random(n) ** 2.5
    chi = rng.uniform(0.0, chi_max, n)
    ion = (rng.random(n) < 0.12).astype(int)
    return wl, np.array(elements)[el], ion, chi, log_ew


@functools.lru_cache(maxsize=None)
def line_list(instrument="lamost"):
    """The model's line list inside an instrument's range (air wavelengths).

    Built deterministically (fixed seed) from: the GALAH element windows of
    Wheeler+2020 Table 2 (one line per window), the strong lines and Balmer
    series of :mod:`cannonade.spectra.linelists` (Balmer lines are rendered separately),
    and pseudo-random weak atomic lines (Fe I/II dominated) plus, in the H band,
    OH/CN/CO molecular lines.

    Returns
    -------
    LineList
    """
    inst = get_instrument(instrument)
    rng = np.random.default_rng(_LINELIST_SEED)
    wl, el, ion, chi, lew, la, strong, mol = ([] for _ in range(8))

    def add(w, e, i, c, l_ew, l_a, s, m):
        wl.append(np.atleast_1d(np.asarray(w, float)))
        n = len(wl[-1])
        el.append(np.broadcast_to(np.asarray(e), (n,)))
        ion.append(np.broadcast_to(np.asarray(i), (n,)))
        chi.append(np.broadcast_to(np.asarray(c, float), (n,)))
        lew.append(np.broadcast_to(np.asarray(l_ew, float), (n,)))
        la.append(np.broadcast_to(np.asarray(l_a, float), (n,)))
        strong.append(np.full(n, s))
        mol.append(np.full(n, m))

    for _label, e, w, i, c, ew_mA, l_a in STRONG_LINES:
        add(w, e, i, c, np.log10(ew_mA / 1000.0), l_a, True, False)
    strong_wl = np.array([s[2] for s in STRONG_LINES])
    # GALAH windows (Wheeler+2020 Table 2): one line at each window centre
    wrng = np.random.default_rng(_LINELIST_SEED + 1)
    for e, wins in load_line_windows().items():
        for lo, hi in wins:
            centre = 0.5 * (lo + hi)
            ew = wrng.uniform(np.log10(0.025), np.log10(0.11))
            c = 9.15 if e == "O" else wrng.uniform(0.0, 4.5)
            if np.any((strong_wl > lo - 0.3) & (strong_wl < hi + 0.3)):
                continue  # already a strong line (O I triplet, K I 7699, Li I 6708)
            add(centre, e, int(e in _IONISED_WINDOW_ELEMENTS), c, ew, -2.3, False, False)
    # optical weak atomic lines
    opt_el = ["Fe", "Ti", "Cr", "Ni", "Ca", "Si", "Mg", "Mn", "V", "Co", "Sc", "Y", "Ba", "Na", "Al", "La", "Eu", "Zn", "Cu", "K", "O"]
    opt_w = [70, 14, 9, 9, 5, 4, 2.5, 3, 5, 4, 2, 1, 0.3, 0.6, 0.4, 1, 0.2, 0.1, 0.2, 0.05, 0.05]
    w_, e_, i_, c_, l_ = _pseudo_lines(rng, 3650.0, 9150.0, 600.0, opt_el, opt_w, (np.log10(0.003), np.log10(0.3)))
    add(w_, e_, i_, c_, l_, -2.2, False, False)
    # H-band atomic lines (APOGEE)
    ir_el = ["Fe", "Si", "Mg", "Al", "Ca", "Ti", "Mn", "Na", "K", "Ni", "Cr", "Co", "V"]
    ir_w = [20, 6, 4, 1, 2, 3, 1, 0.5, 0.5, 3, 1, 1, 1]
    w_, e_, i_, c_, l_ = _pseudo_lines(rng, 15050.0, 17050.0, 25.0, ir_el, ir_w, (np.log10(0.01), np.log10(0.25)), chi_max=7.0, blue_boost=False)
    add(w_, e_, np.zeros_like(i_), np.clip(c_, 3.0, None), l_, -2.0, False, False)
    # H-band molecular forest: OH (O), CN (N), CO (C) lines, strong only in cool stars
    for e, dens, ew_hi in (("O", 120.0, np.log10(0.03)), ("N", 120.0, np.log10(0.02)), ("C", 60.0, np.log10(0.03))):
        w_, _, _, c_, l_ = _pseudo_lines(rng, 15050.0, 17050.0, dens, [e], [1.0], (np.log10(0.002), ew_hi), blue_boost=False)
        add(w_, e, 0, 0.5 * c_, l_, -2.5, False, True)

    wl_all = np.concatenate(wl)
    obs = air_to_vacuum(wl_all) if inst.vacuum else wl_all
    grid = inst.wavelength
    keep = (obs > grid[0] - 25.0) & (obs < grid[-1] + 25.0)
    order = np.argsort(wl_all[keep], kind="stable")

    def cat(x, dtype=None):
        return np.concatenate(x)[keep][order].astype(dtype) if dtype else np.concatenate(x)[keep][order]

    return LineList(
        wl_air=cat(wl),
        element=np.array([_EL_INDEX[str(x)] for x in cat(el)], dtype=int),
        ion=cat(ion, int),
        chi=cat(chi, float),
        log_ew_sun=cat(lew, float),
        log_a_sun=cat(la, float),
        strong=cat(strong, bool),
        molecular=cat(mol, bool),
    )


# ----------------------------------------------------------------------------- labels -> physics
def _col(labels, name, n, default=None):
    for key in (name, name.upper(), name.lower()):
        if key in _colnames(labels):
            return np.asarray(labels[key], float).reshape(-1)
    if default is None:
        raise ColumnError(f"labels have no column {name!r} (columns: {sorted(_colnames(labels))})")
    return np.broadcast_to(np.asarray(default, float), (n,)).astype(float)


def _colnames(labels):
    return list(labels.colnames) if hasattr(labels, "colnames") else list(labels.keys())


def _n_rows(labels):
    for key in _colnames(labels):
        return len(np.atleast_1d(labels[key]))
    raise ShapeError("labels have no columns")


def default_vmic(teff, logg):
    """Microturbulence (km/s) from Teff and logg, after the GALAH DR3 empirical relations."""
    t = np.asarray(teff, float) - 5500.0
    g = np.asarray(logg, float) - 4.0
    dwarf = 1.198 + 3.16e-4 * t - 0.253 * g - 2.86e-4 * t * g + 0.165 * g**2
    giant = 1.15 + 2e-4 * t + 3.95e-7 * t**2 - 0.13 * g + 0.13 * g**2
    return np.clip(np.where(np.asarray(logg) > 4.2, dwarf, giant), 0.5, 3.0)


def stellar_arrays(labels):
    """Physical arrays from a label table / dict.

    Columns: ``teff, logg, fe_h`` required; ``vmic, vbroad`` and ``<x>_fe`` for x in
    :data:`ABUNDANCE_ELEMENTS` optional (defaults: GALAH-like vmic, 6 km/s, 0 dex).

    Returns
    -------
    dict with ``teff, logg, vmic, vbroad`` (n,) and ``xh`` (n, n_line_elements) [X/H].
    """
    n = _n_rows(labels)
    teff = _col(labels, "teff", n)
    logg = _col(labels, "logg", n)
    feh = _col(labels, "fe_h", n)
    vmic = _col(labels, "vmic", n, default=np.nan)
    vmic = np.where(np.isfinite(vmic), vmic, default_vmic(teff, logg))
    vbroad = _col(labels, "vbroad", n, default=6.0)
    xfe = {x: _col(labels, f"{x.lower()}_fe", n, default=0.0) for x in ABUNDANCE_ELEMENTS}
    alpha = 0.25 * (xfe["Mg"] + xfe["Si"] + xfe["Ca"] + xfe["Ti"])
    giant = 1.0 / (1.0 + np.exp((logg - 3.5) / 0.2))
    xh = np.tile(feh[:, None], (1, len(ELEMENT_NAMES)))
    for x in ABUNDANCE_ELEMENTS:
        xh[:, _EL_INDEX[x]] += xfe[x]
    xh[:, _EL_INDEX["La"]] += 0.8 * xfe["Ba"]
    xh[:, _EL_INDEX["K"]] += 0.5 * alpha
    xh[:, _EL_INDEX["C"]] += -0.25 * giant + 0.3 * alpha
    xh[:, _EL_INDEX["N"]] += 0.35 * giant
    # lithium: preserved in warm dwarfs, depleted in cool dwarfs and giants (A(Li)_sun = 1.05)
    a_li = 1.0 + 1.3 * np.tanh((teff - 5700.0) / 300.0) - 1.2 * giant
    xh[:, _EL_INDEX["Li"]] = np.clip(a_li, -0.5, 2.6) - 1.05
    return {"teff": teff, "logg": logg, "vmic": vmic, "vbroad": vbroad, "xh": xh, "fe_h": feh}


def _strength_terms(lines):
    """Per-line temperature and gravity sensitivities of the line/H⁻ opacity ratio.

    Minority neutral species (first ionisation below ~11 eV): κ_l/κ(H⁻) ∝ 10^{θ(χ_ion - 0.75 - χ)},
    independent of electron pressure. Dominant stages (ions; neutral O, C, N):
    κ_l/κ(H⁻) ∝ T^{2.5} 10^{-θ(χ + 0.75)} / P_e, with P_e ∝ g^{1/3}.
    Returns (t_coef, g_coef, logt_coef), each (n_lines,).
    """
    chi_ion = _ION_POT[lines.element]
    dominant = ((lines.ion == 1) & (chi_ion < 11.0)) | ((lines.ion == 0) & (chi_ion >= 11.0))
    t_coef = np.where(dominant, -(lines.chi + 0.75), chi_ion - 0.75 - lines.chi)
    g_coef = np.where(dominant, -1.0 / 3.0, 0.0)
    logt = np.where(dominant, 2.5, 0.0)
    # molecules: dissociation equilibrium makes them far stronger in cool, low-gravity atmospheres
    t_coef = np.where(lines.molecular, 6.0, t_coef)
    g_coef = np.where(lines.molecular, -0.25, g_coef)
    logt = np.where(lines.molecular, 0.0, logt)
    return t_coef, g_coef, logt


def _doppler_width(wl, teff, vmic, mass):
    """(n, L) Doppler width λ/c sqrt(2kT/m + ξ²) in Å."""
    v2 = 0.016629 * teff[:, None] / mass[None, :] + vmic[:, None] ** 2
    return wl[None, :] / C_KMS * np.sqrt(v2)


@functools.lru_cache(maxsize=None)
def _solar_log_tau0(instrument):
    """log10 tau0 of each line at solar parameters, inverted from its solar equivalent width."""
    lines = line_list(instrument)
    mass = _MASS[lines.element]
    dl = _doppler_width(lines.wl_air, np.array([5777.0]), np.array([1.0]), mass)[0]
    target = 10.0**lines.log_ew_sun / dl  # W / ΔλD
    grid = np.linspace(-4.0, 16.0, 2001)
    out = np.empty(len(lines))
    for la in np.unique(lines.log_a_sun):  # a handful of distinct damping values
        sel = lines.log_a_sun == la
        _, f = _cog(grid, np.full_like(grid, la))
        out[sel] = np.interp(np.log10(target[sel]), np.log10(f), grid)
    return out


def equivalent_widths(labels, instrument="lamost"):
    """Equivalent widths (Å) of every model line for each star.

    Returns
    -------
    lines : LineList
    ew : (n_stars, n_lines) float
        Total equivalent width (Doppler core and damping wings).
    ew_core : (n_stars, n_lines) float
        The Doppler (core) part.
    log_tau0, log_a, doppler : (n_stars, n_lines) float
    """
    s = labels if isinstance(labels, dict) and "xh" in labels else stellar_arrays(labels)
    lines = line_list(instrument)
    t_coef, g_coef, logt_coef = _strength_terms(lines)
    theta = 5040.0 / s["teff"]
    dtheta = (theta - THETA_SUN)[:, None]
    dlogg = (s["logg"] - LOGG_SUN)[:, None]
    mass = _MASS[lines.element]
    dl = _doppler_width(lines.wl_air, s["teff"], s["vmic"], mass)
    dl_sun = _doppler_width(lines.wl_air, np.array([5777.0]), np.array([1.0]), mass)
    # weak-line EW ∝ abundance × opacity ratio; tau0 ∝ EW_weak / ΔλD
    log_tau0 = (
        _solar_log_tau0(instrument)[None, :]
        + s["xh"][:, lines.element]
        + dtheta * t_coef[None, :]
        + dlogg * g_coef[None, :]
        + logt_coef[None, :] * np.log10(s["teff"] / 5777.0)[:, None]
        - np.log10(dl / dl_sun)
    )
    # pressure (van der Waals) damping grows with gravity, P_g ∝ g^{~2/3}; a ∝ γ / ΔλD
    log_a = lines.log_a_sun[None, :] + 0.4 * dlogg - np.log10(dl / dl_sun)
    core, total = _cog(log_tau0, log_a)
    return lines, total * dl, core * dl, log_tau0, log_a, dl


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
        return 10.0 ** (xh[:, _EL_INDEX["Ti"]] + 8.0 * (theta - 5040.0 / 3700.0))
    if species == "CaH":
        return 10.0 ** (xh[:, _EL_INDEX["Ca"]] + 6.0 * (theta - 5040.0 / 3900.0) + 0.7 * (g - 4.6))
    if species == "MgH":
        return 10.0 ** (xh[:, _EL_INDEX["Mg"]] + 6.0 * (theta - 5040.0 / 4000.0) + 0.7 * (g - 4.6))
    if species == "CN":
        return 10.0 ** (xh[:, _EL_INDEX["C"]] + xh[:, _EL_INDEX["N"]] + 5.0 * (theta - 5040.0 / 4500.0) - 0.15 * (g - 2.5))
    if species == "CH":
        return 0.3 * 10.0 ** (xh[:, _EL_INDEX["C"]] + 2.0 * (theta - THETA_SUN))
    if species == "CO":
        return 0.35 * 10.0 ** (xh[:, _EL_INDEX["C"]] + 5.0 * (theta - 5040.0 / 4500.0) - 0.2 * (g - 2.5))
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
        amp = rel_b * np.minimum(_molecular_strength(species, s), 4.0)
        u = grid[None, i0:i1] - head * doppler[:, None]
        tau_band[:, i0:i1] += amp[:, None] * _band_shape(u, length, direction, float(inst.lsf_sigma(head)))

    return (1.0 - _saturate(tau, R_MAX_METAL)) * np.exp(-tau_band) * np.clip(1.0 - absorb, 0.02, None)


R_MAX_METAL = 0.88
R_MAX_HYDROGEN = 0.7


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


def planck(wavelength, teff):
    """Blackbody B_λ(T) up to a constant, (n, n_pixels)."""
    wl = np.asarray(wavelength, float)[None, :]
    x = 1.4387769e8 / (wl * np.asarray(teff, float)[:, None])
    return (5000.0 / wl) ** 5 / np.expm1(np.minimum(x, 700.0))


def calibration_distortion(wavelength, coeffs):
    """Smooth multiplicative flux-calibration error exp(Σ c_k P_k(x)), (n, n_pixels).

    coeffs : (n, k) Legendre coefficients over the instrument's wavelength span.
    """
    wl = np.asarray(wavelength, float)
    x = 2.0 * (wl - wl[0]) / (wl[-1] - wl[0]) - 1.0
    leg = np.polynomial.legendre.legvander(x, coeffs.shape[1] - 1)  # (n_pix, k)
    return np.exp(coeffs @ leg.T)


@dataclass
class Synthetic:
    """Synthetic observed spectra.

    Attributes
    ----------
    wavelength : (n_pixels,) float
        Observed-frame wavelengths (Å; vacuum for LAMOST/APOGEE, air for GALAH).
    flux, ivar : (n, n_pixels) float
        Observed flux (LAMOST/APOGEE: flux-calibrated units; GALAH: counts) and inverse
        variance (0 at bad pixels).
    continuum : (n, n_pixels) float
        The true continuum of ``flux`` (blackbody × calibration × scale).
    model : (n, n_pixels) float
        Noise-free normalised model (1 = continuum).
    bad : (n, n_pixels) bool
        Bad pixels (ivar = 0 there).
    snr : (n,) float
        Achieved median S/N per pixel in the instrument's reference band.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray
    model: np.ndarray
    bad: np.ndarray
    snr: np.ndarray
    counts: np.ndarray | None = None
    sigma_counts: np.ndarray | None = None

    @property
    def normalised_flux(self):
        """(n, n_pixels): flux / true continuum."""
        return self.flux / self.continuum

    @property
    def normalised_ivar(self):
        """(n, n_pixels): ivar × continuum²."""
        return self.ivar * self.continuum**2


# reference band for the S/N definition (observed-frame Å)
SNR_BAND = {"lamost": (4000.0, 5500.0), "galah": (4715.0, 4900.0), "apogee": (15150.0, 16950.0)}


def observe(wavelength, norm, teff, instrument, snr, rng, flux_scale=None, calib=None, bad_pixels=True):
    """Add continuum, throughput, photon noise and bad pixels to normalised model spectra.

    Parameters
    ----------
    wavelength : (n_pixels,) float
    norm : (n, n_pixels) float
        Noise-free normalised spectra.
    teff : (n,) float
    instrument : str
    snr : (n,) float or None
        Target median S/N per pixel in :data:`SNR_BAND` (None: noise-free, ivar = 1e8).
    rng : numpy Generator
    flux_scale : (n,) float, optional
        Multiplies the flux (brightness); default 1000.
    calib : (n, k) float, optional
        Legendre coefficients of a smooth flux-calibration error (LAMOST, APOGEE).
    bad_pixels : bool

    Returns
    -------
    Synthetic
    """
    inst = get_instrument(instrument)
    wl = np.asarray(wavelength, float)
    n = norm.shape[0]
    teff = np.asarray(teff, float)
    cont = planck(wl, teff)
    cont /= np.median(cont, axis=1, keepdims=True)
    if calib is not None:
        cont = cont * calibration_distortion(wl, calib)
    thr = inst.throughput(wl)[None, :]
    lo, hi = SNR_BAND[inst.name]
    band = (wl >= lo) & (wl <= hi)
    expected = cont * norm * thr  # counts per unit exposure
    if snr is None:
        counts = expected * 1e6
        sig = np.full_like(counts, 1e-1)  # ivar of the normalised flux ~ 1e8
        snr_ach = np.full(n, np.inf)
        bad = np.zeros(counts.shape, bool)
    else:
        snr = np.broadcast_to(np.asarray(snr, float), (n,))
        # photon noise: S/N = sqrt(counts) in the reference band (plus read noise of 3 e-)
        k = snr**2 / np.median(expected[:, band], axis=1)
        counts_true = expected * k[:, None]
        sig = np.sqrt(np.maximum(counts_true, 0.0) + 9.0)
        counts = counts_true + sig * rng.standard_normal(counts_true.shape)
        snr_ach = np.median(counts_true[:, band] / sig[:, band], axis=1)
        bad = _bad_pixels(wl, inst.name, counts_true / sig, rng) if bad_pixels else np.zeros(counts.shape, bool)
    scale = np.full(n, 1000.0) if flux_scale is None else np.asarray(flux_scale, float)
    # counts -> flux units: the flux calibration divides out throughput and exposure (k)
    k_eff = k if snr is not None else np.full(n, 1e6)
    conv = scale[:, None] / (thr * k_eff[:, None])
    flux = counts * conv
    ivar = np.where(bad, 0.0, 1.0 / (sig * conv) ** 2)
    continuum = cont * scale[:, None]
    return Synthetic(wl, flux, ivar, continuum, norm, bad, snr_ach, counts, sig)


# sky-line and telluric regions that real reductions often leave unusable (vacuum Å)
_LAMOST_BAD_REGIONS = [(5700.0, 5960.0), (7595.0, 7700.0)]


def _bad_pixels(wl, name, snr_pix, rng):
    """(n, n_pixels) bool: realistic bad pixels for a batch of spectra."""
    n, n_pix = snr_pix.shape
    bad = np.zeros((n, n_pix), bool)
    # random dead columns / cosmic-ray hits: a few per spectrum
    n_hits = rng.poisson(3.0 if name == "lamost" else 4.0, n)
    rows = np.repeat(np.arange(n), n_hits)
    cols = rng.integers(0, n_pix, rows.size)
    bad[rows, cols] = True
    if name == "lamost":
        # blue end: unusable where the per-pixel S/N is below ~1.5 (as in real DR1 files)
        blue = wl[None, :] < 4300.0
        bad |= blue & (snr_pix < 1.5)
        # dichroic join and telluric A band are lost in part of the spectra
        for (lo, hi), p in zip(_LAMOST_BAD_REGIONS, (0.08, 0.4)):
            hit = rng.random(n) < p
            a = rng.uniform(lo, hi - 20.0, n)
            b = np.minimum(a + rng.uniform(20.0, hi - lo, n), hi)
            bad |= hit[:, None] & (wl[None, :] >= a[:, None]) & (wl[None, :] <= b[:, None])
        # red end lost in a third of the spectra
        cut = np.where(rng.random(n) < 0.35, rng.uniform(8900.0, 9090.0, n), np.inf)
        bad |= wl[None, :] > cut[:, None]
    elif name == "apogee":
        gap = np.ones(n_pix, bool)
        for lo, hi in APOGEE_CHIPS:
            gap &= ~((wl >= lo) & (wl <= hi))
        bad |= gap[None, :]
    return bad


def synthesize(labels, instrument="lamost", snr=None, rv=0.0, seed=None, bad_pixels=None, calib_scale=0.0, batch=256):
    """Synthetic spectra of stars with given labels, in memory (no files).

    Parameters
    ----------
    labels : astropy Table or dict of arrays
        ``teff, logg, fe_h`` and optional ``vmic, vbroad, <x>_fe``.
    instrument : {'lamost', 'galah', 'apogee'}
    snr : float or (n,) float, optional
        Median S/N per pixel in the reference band; None: noise-free.
    rv : float or (n,) float
        Radial velocity (km/s).
    seed : int, optional
        Noise seed.
    bad_pixels : bool, optional
        Default: True when noise is added.
    calib_scale : float
        RMS of random Legendre coefficients of a smooth flux-calibration error (0: none).
    batch : int
        Stars per vectorised batch (bounds memory).

    Returns
    -------
    Synthetic
        ``.wavelength, .flux, .ivar, .continuum, .model`` and the normalised
        ``.normalised_flux, .normalised_ivar``.
    """
    s_all = stellar_arrays(labels)
    n = len(s_all["teff"])
    rng = np.random.default_rng(seed)
    snr_a = None if snr is None else np.broadcast_to(np.asarray(snr, float), (n,))
    rv_a = np.broadcast_to(np.asarray(rv, float), (n,))
    calib = rng.normal(0.0, calib_scale, (n, 4)) if calib_scale else None
    if bad_pixels is None:
        bad_pixels = snr is not None
    parts = []
    for i0 in range(0, n, batch):
        sl = slice(i0, min(n, i0 + batch))
        s = {k: v[sl] for k, v in s_all.items()}
        wl, norm = normalised_model(s, instrument, rv_a[sl])
        parts.append(
            observe(wl, norm, s["teff"], instrument, None if snr_a is None else snr_a[sl], rng,
                    calib=None if calib is None else calib[sl], bad_pixels=bad_pixels)
        )
    if not parts:
        wl = get_instrument(instrument).wavelength
        e = np.zeros((0, len(wl)))
        return Synthetic(wl, e, e, e, e, e.astype(bool), np.zeros(0))
    cat = lambda a: np.concatenate([getattr(p, a) for p in parts])  # noqa: E731
    return Synthetic(parts[0].wavelength, cat("flux"), cat("ivar"), cat("continuum"), cat("model"), cat("bad"), cat("snr"))


def synthesize_normalised(labels, instrument="lamost", snr=None, rv=0.0, seed=None):
    """Continuum-normalised synthetic spectra for testing the Cannon core.

    Returns
    -------
    wavelength : (n_pixels,) float
    flux : (n, n_pixels) float
        Normalised flux (1 = continuum) with noise at ``snr``.
    ivar : (n, n_pixels) float
        Its inverse variance (0 at bad pixels; 1e8 when noise-free).
    """
    syn = synthesize(labels, instrument, snr=snr, rv=rv, seed=seed)
    if snr is None:
        return syn.wavelength, syn.model.copy(), np.full_like(syn.model, 1e8)
    return syn.wavelength, syn.normalised_flux, syn.normalised_ivar
