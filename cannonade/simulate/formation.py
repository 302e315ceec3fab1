"""Line formation of the mock spectra: labels -> physical arrays -> equivalent widths.

Every line's strength follows the Saha-Boltzmann scaling of a line-to-continuum (H⁻)
opacity ratio in Teff and logg, scales linearly with the element's abundance, and
passes through a saturating curve of growth whose Doppler width contains the
microturbulence (vmic) and whose damping part grows with gravity.
"""

from __future__ import annotations

import functools

import numpy as np

from cannonade.exceptions import ColumnError, ShapeError
from cannonade.simulate.lines import ABUNDANCE_ELEMENTS, ATOMIC_MASS, ELEMENT_INDEX, ELEMENT_NAMES, ION_POTENTIAL, line_list
from cannonade.spectra.surveys import C_KMS
from cannonade.tables import colnames

__all__ = ["THETA_SUN", "LOGG_SUN", "default_vmic", "stellar_arrays", "equivalent_widths"]

THETA_SUN = 5040.0 / 5777.0
LOGG_SUN = 4.44


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


# ----------------------------------------------------------------------------- labels -> physics
def _col(labels, name, n, default=None):
    for key in (name, name.upper(), name.lower()):
        if key in colnames(labels):
            return np.asarray(labels[key], float).reshape(-1)
    if default is None:
        raise ColumnError(f"labels have no column {name!r} (columns: {sorted(colnames(labels))})")
    return np.broadcast_to(np.asarray(default, float), (n,)).astype(float)


def _n_rows(labels):
    for key in colnames(labels):
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
        xh[:, ELEMENT_INDEX[x]] += xfe[x]
    xh[:, ELEMENT_INDEX["La"]] += 0.8 * xfe["Ba"]
    xh[:, ELEMENT_INDEX["K"]] += 0.5 * alpha
    xh[:, ELEMENT_INDEX["C"]] += -0.25 * giant + 0.3 * alpha
    xh[:, ELEMENT_INDEX["N"]] += 0.35 * giant
    # lithium: preserved in warm dwarfs, depleted in cool dwarfs and giants (A(Li)_sun = 1.05)
    a_li = 1.0 + 1.3 * np.tanh((teff - 5700.0) / 300.0) - 1.2 * giant
    xh[:, ELEMENT_INDEX["Li"]] = np.clip(a_li, -0.5, 2.6) - 1.05
    return {"teff": teff, "logg": logg, "vmic": vmic, "vbroad": vbroad, "xh": xh, "fe_h": feh}


def _strength_terms(lines):
    """Per-line temperature and gravity sensitivities of the line/H⁻ opacity ratio.

    Minority neutral species (first ionisation below ~11 eV): κ_l/κ(H⁻) ∝ 10^{θ(χ_ion - 0.75 - χ)},
    independent of electron pressure. Dominant stages (ions; neutral O, C, N):
    κ_l/κ(H⁻) ∝ T^{2.5} 10^{-θ(χ + 0.75)} / P_e, with P_e ∝ g^{1/3}.
    Returns (t_coef, g_coef, logt_coef), each (n_lines,).
    """
    chi_ion = ION_POTENTIAL[lines.element]
    dominant = ((lines.ion == 1) & (chi_ion < 11.0)) | ((lines.ion == 0) & (chi_ion >= 11.0))
    t_coef = np.where(dominant, -(lines.chi + 0.75), chi_ion - 0.75 - lines.chi)
    g_coef = np.where(dominant, -1.0 / 3.0, 0.0)
    logt = np.where(dominant, 2.5, 0.0)
    # molecules: dissociation equilibrium makes them far stronger in cool, low-gravity atmospheres
    t_coef = np.where(lines.molecular, 4.0, t_coef)
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
    mass = ATOMIC_MASS[lines.element]
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
    mass = ATOMIC_MASS[lines.element]
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

