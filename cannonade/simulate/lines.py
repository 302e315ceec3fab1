"""The mock spectra's line list: elements, atomic lines and molecular forests.

Each line has a laboratory (air) wavelength, an element, an ionisation stage, an
excitation potential, a solar equivalent width and a damping parameter. The list is
built deterministically (fixed seed): it is part of the model, not of a simulation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cannonade.simulate.instruments import get_instrument
from cannonade.spectra.linelists import SURVEY_WINDOWS, STRONG_LINES, air_to_vacuum, load_line_windows

APOGEE_ALPHA_WINDOWS = SURVEY_WINDOWS["apogee"]

__all__ = [
    "ABUNDANCE_ELEMENTS",
    "ELEMENTS",
    "ELEMENT_NAMES",
    "ELEMENT_INDEX",
    "ION_POTENTIAL",
    "ATOMIC_MASS",
    "LineList",
    "line_list",
]

# elements whose [X/Fe] are labels of the mock (GALAH DR3 / Wheeler+2020 set)
ABUNDANCE_ELEMENTS = ["O", "Na", "Mg", "Al", "Si", "Ca", "Ti", "Sc", "Mn", "Y", "Ba", "Eu"]
# every element that has lines: symbol -> (first ionisation potential eV, mass amu)
ELEMENTS = {
    "Fe": (7.90, 55.85), "O": (13.62, 16.00), "Na": (5.14, 22.99), "Mg": (7.65, 24.31),
    "Al": (5.99, 26.98), "Si": (8.15, 28.09), "Ca": (6.11, 40.08), "Ti": (6.83, 47.87),
    "Sc": (6.56, 44.96), "Mn": (7.43, 54.94), "Y": (6.22, 88.91), "Ba": (5.21, 137.33),
    "Eu": (5.67, 151.96), "Cr": (6.77, 52.00), "Ni": (7.64, 58.69), "Co": (7.88, 58.93),
    "V": (6.75, 50.94), "Zn": (9.39, 65.38), "Cu": (7.73, 63.55), "La": (5.58, 138.91),
    "K": (4.34, 39.10), "Li": (5.39, 6.94), "C": (11.26, 12.01), "N": (14.53, 14.01),
}
ELEMENT_NAMES = list(ELEMENTS)
ELEMENT_INDEX = {e: i for i, e in enumerate(ELEMENT_NAMES)}
ION_POTENTIAL = np.array([ELEMENTS[e][0] for e in ELEMENT_NAMES])
ATOMIC_MASS = np.array([ELEMENTS[e][1] for e in ELEMENT_NAMES])
# once-ionised lines in the GALAH windows of these elements (Sc II, Y II, Ba II, Eu II, La II)
_IONISED_WINDOW_ELEMENTS = {"Sc", "Y", "Ba", "Eu", "La"}
_LINELIST_SEED = 20200416  # fixed: the line list is part of the model, not of a simulation


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
    # H-band atomic lines (APOGEE): ~300 over the three detectors, as many as a real H-band line
    # list has lines deeper than ~1 % (an earlier 25 per 1000 A left hot dwarfs nearly featureless)
    ir_el = ["Fe", "Si", "Mg", "Al", "Ca", "Ti", "Mn", "Na", "K", "Ni", "Cr", "Co", "V"]
    ir_w = [20, 6, 4, 1, 2, 3, 1, 0.5, 0.5, 3, 1, 1, 1]
    w_, e_, i_, c_, l_ = _pseudo_lines(rng, 15050.0, 17050.0, 150.0, ir_el, ir_w, (np.log10(0.01), np.log10(0.25)), chi_max=7.0, blue_boost=False)
    add(w_, e_, np.zeros_like(i_), np.clip(c_, 3.0, None), l_, -2.0, False, False)
    # the strong alpha-element lines at the shipped APOGEE windows (data/apogee_alpha_windows.csv)
    arng = np.random.default_rng(_LINELIST_SEED + 2)
    for e, wins in load_line_windows(APOGEE_ALPHA_WINDOWS).items():
        centres = wins.mean(axis=1)
        add(centres, e, 0, arng.uniform(4.0, 6.5, len(centres)), arng.uniform(np.log10(0.08), np.log10(0.3), len(centres)),
            -2.0, False, False)
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
        element=np.array([ELEMENT_INDEX[str(x)] for x in cat(el)], dtype=int),
        ion=cat(ion, int),
        chi=cat(chi, float),
        log_ew_sun=cat(lew, float),
        log_a_sun=cat(la, float),
        strong=cat(strong, bool),
        molecular=cat(mol, bool),
    )

