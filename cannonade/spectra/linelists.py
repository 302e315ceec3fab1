"""Element line windows (Wheeler+2020 Table 2) and well-known strong lines.

The GALAH line windows are the wavelength regions in which the GALAH pipeline
measures each element; Wheeler et al. (2020, Sec. 2.1 and Appendix C) compute
a per-element chi^2 of the GALAH model inside them to clean the training set.
The table ships as ``cannonade/data/galah_windows.csv`` (air wavelengths, Å);
a user can pass their own CSV with the same three columns.

The strong-line and molecular-band lists below are standard laboratory
wavelengths (air, Å) used by the mock-survey line-formation model
(:mod:`cannonade.simulate.lines`, :mod:`cannonade.simulate.render`) and by plots.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cannonade.exceptions import ColumnError, LineListError
from cannonade.spectra.surveys import C_KMS

__all__ = [
    "LineListError",
    "load_line_windows",
    "window_mask",
    "air_to_vacuum",
    "vacuum_to_air",
    "STRONG_LINES",
    "BALMER_LINES",
    "BRACKETT_LINES",
    "MOLECULAR_BANDS",
    "DEFAULT_WINDOWS_PATH",
]

DEFAULT_WINDOWS_PATH = Path(__file__).resolve().parents[1] / "data" / "galah_windows.csv"
#: the shipped line windows of each survey's spectra (GALAH: Wheeler+2020 Table 2; APOGEE: the
#: alpha elements' H-band lines, for Nandakumar+2022's censoring)
SURVEY_WINDOWS = {"galah": DEFAULT_WINDOWS_PATH, "lamost": DEFAULT_WINDOWS_PATH,
                  "apogee": Path(__file__).resolve().parents[1] / "data" / "apogee_alpha_windows.csv"}


def survey_windows(survey):
    """Path of the shipped line windows of ``survey``'s spectra (LineListError if none ship)."""
    key = str(survey).lower()
    if key not in SURVEY_WINDOWS:
        raise LineListError(f"no line windows ship for survey {survey!r} (known: {sorted(SURVEY_WINDOWS)}); give a windows file")
    return SURVEY_WINDOWS[key]


def load_line_windows(path=None):
    """Read element line windows.

    Parameters
    ----------
    path : str or Path, optional
        CSV with columns ``element, start, end`` (Å; lines starting with ``#``
        are comments). Default: the GALAH windows of Wheeler+2020 Table 2.

    Returns
    -------
    dict[str, (n_windows, 2) float ndarray]
        Element symbol (as written in the file, e.g. ``"Mg"``) -> rows of
        ``(start, end)`` sorted by ``start``; insertion order follows the file.

    Raises
    ------
    LineListError
        Missing file, non-numeric value, or ``end <= start`` (names file and line).
    ColumnError
        A required column is absent.
    """
    path = DEFAULT_WINDOWS_PATH if path is None else Path(path)
    if not path.is_file():
        raise LineListError(f"line-window file not found: {path}")
    with open(path, newline="") as fh:
        rows = [r for r in fh if r.strip() and not r.lstrip().startswith("#")]
    reader = csv.DictReader(rows)
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    for col in ("element", "start", "end"):
        if col not in fields:
            raise ColumnError(f"{path}: column {col!r} missing (columns: {fields})")
    out: dict[str, list] = {}
    for i, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        try:
            lo, hi = float(row["start"]), float(row["end"])
        except ValueError:
            raise LineListError(f"{path}, data line {i}: non-numeric window {row}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise LineListError(f"{path}, data line {i}: window end must exceed start, got {lo}..{hi}")
        out.setdefault(row["element"], []).append((lo, hi))
    if not out:
        raise LineListError(f"{path}: no windows")
    return {el: np.array(sorted(w), dtype=float) for el, w in out.items()}


def window_mask(wavelength, windows, rv=0.0, vacuum=False):
    """Boolean mask of pixels inside any window.

    Parameters
    ----------
    wavelength : (n_pixels,) float
        Pixel wavelengths (Å).
    windows : (n_windows, 2) float
        Window edges in air (Wheeler Table 2 convention).
    rv : float
        Shift the windows by this radial velocity (km/s) before masking.
    vacuum : bool
        The pixel wavelengths are in vacuum (LAMOST, APOGEE): convert windows.

    Returns
    -------
    (n_pixels,) bool
    """
    w = np.asarray(windows, float)
    if vacuum:
        w = air_to_vacuum(w)
    w = w * (1.0 + rv / C_KMS)
    wl = np.asarray(wavelength, float)
    m = np.zeros(wl.shape, bool)
    for lo, hi in w:  # n_windows is small (tens)
        m |= (wl >= lo) & (wl <= hi)
    return m


def air_to_vacuum(wavelength):
    """Air -> vacuum wavelength (Å): the IAU standard (Morton 2000, after Ciddor 1996).

    The vacuum wavelength is ``lambda_air * n`` with the refractive index of
    Piskunov's exact inverse of Morton's formula, as VALD and SDSS use::

        s = 1e4 / lambda_air     (inverse micron)
        n = 1 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s^2)
              + 1.599740894897e-4 / (38.92568793293 - s^2)

    It inverts :func:`vacuum_to_air` to ~1e-8 Å (evaluating Morton's vacuum
    formula at the *air* wavenumber instead would be off by 1e-5-1e-4 Å).
    Examples: 5000 Å air -> 5001.395 Å, 8000 Å -> 8002.200 Å vacuum.

    Parameters
    ----------
    wavelength : float or (n,) float
        Air wavelengths in Å (valid above 2000 Å).

    Returns
    -------
    float64 ndarray of the input's shape
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    s2 = (1e4 / wl) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (38.92568793293 - s2)
    return wl * n


def vacuum_to_air(wavelength):
    """Vacuum -> air wavelength (Å): the IAU standard (Morton 2000, eq. 8), inverse of :func:`air_to_vacuum`.

    ``lambda_air = lambda_vac / n`` with ``s = 1e4 / lambda_vac`` and
    ``n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s^2) + 1.5998e-4 / (38.9 - s^2)``.

    Parameters
    ----------
    wavelength : float or (n,) float
        Vacuum wavelengths in Å (valid above 2000 Å).

    Returns
    -------
    float64 ndarray of the input's shape
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    s2 = (1e4 / wl) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - s2) + 0.00015998 / (38.9 - s2)
    return wl / n


# Strong lines (air Å): (label, element, wavelength, ionisation stage 0/1, excitation eV,
# approximate solar equivalent width in mÅ, log10 damping parameter a at solar gravity).
# Equivalent widths are rounded literature values for the Sun (Moore et al. 1966 atlas
# scale); the mock line-formation model inverts its curve of growth to match them.
STRONG_LINES = [
    ("Ca II K", "Ca", 3933.66, 1, 0.00, 12000.0, -1.0),
    ("Ca II H", "Ca", 3968.47, 1, 0.00, 9000.0, -1.0),
    ("Al I 3944", "Al", 3944.01, 0, 0.00, 400.0, -1.6),
    ("Al I 3961", "Al", 3961.52, 0, 0.01, 600.0, -1.6),
    ("Ca I 4227", "Ca", 4226.73, 0, 0.00, 1500.0, -1.2),
    ("Fe I 4045", "Fe", 4045.81, 0, 1.49, 1200.0, -1.5),
    ("Fe I 4384", "Fe", 4383.55, 0, 1.48, 1000.0, -1.5),
    ("Fe I 5270", "Fe", 5269.54, 0, 0.86, 480.0, -1.6),
    ("Fe I 5328", "Fe", 5328.04, 0, 0.92, 380.0, -1.6),
    ("Mg I b1", "Mg", 5183.60, 0, 2.72, 1580.0, -1.2),
    ("Mg I b2", "Mg", 5172.68, 0, 2.71, 1250.0, -1.2),
    ("Mg I b4", "Mg", 5167.32, 0, 2.71, 930.0, -1.2),
    ("Mg I 8807", "Mg", 8806.76, 0, 4.35, 500.0, -1.4),
    ("Na I D2", "Na", 5889.95, 0, 0.00, 750.0, -1.4),
    ("Na I D1", "Na", 5895.92, 0, 0.00, 560.0, -1.4),
    ("Na I 8183", "Na", 8183.26, 0, 2.10, 230.0, -1.8),
    ("Na I 8195", "Na", 8194.82, 0, 2.10, 300.0, -1.8),
    ("K I 7665", "K", 7664.90, 0, 0.00, 250.0, -1.8),
    ("K I 7699", "K", 7698.96, 0, 0.00, 180.0, -1.8),
    ("Ca II 8498", "Ca", 8498.02, 1, 1.69, 1300.0, -1.3),
    ("Ca II 8542", "Ca", 8542.09, 1, 1.70, 3700.0, -1.3),
    ("Ca II 8662", "Ca", 8662.14, 1, 1.69, 2600.0, -1.3),
    ("Ba II 4554", "Ba", 4554.03, 1, 0.00, 160.0, -2.0),
    ("Ba II 6142", "Ba", 6141.71, 1, 0.70, 120.0, -2.0),
    ("Sr II 4078", "Y", 4077.71, 1, 0.00, 180.0, -2.0),  # Sr tracks the light s-process (Y) here
    ("Mn I 4031", "Mn", 4030.75, 0, 0.00, 350.0, -2.0),
    ("Mn I 4033", "Mn", 4033.06, 0, 0.00, 250.0, -2.0),
    ("Eu II 4130", "Eu", 4129.72, 1, 0.00, 50.0, -2.5),
    ("O I 7772", "O", 7771.94, 0, 9.15, 70.0, -2.5),
    ("O I 7774", "O", 7774.17, 0, 9.15, 60.0, -2.5),
    ("O I 7775", "O", 7775.39, 0, 9.15, 45.0, -2.5),
    ("[O I] 6300", "O", 6300.30, 0, 0.00, 5.0, -3.0),
    ("Li I 6708", "Li", 6707.80, 0, 0.00, 2.0, -2.5),
]

# Balmer series (air Å): (label, wavelength, relative strength)
BALMER_LINES = [
    ("H alpha", 6562.80, 1.00),
    ("H beta", 4861.32, 0.75),
    ("H gamma", 4340.46, 0.60),
    ("H delta", 4101.73, 0.50),
    ("H epsilon", 3970.07, 0.42),
    ("H8", 3889.05, 0.35),
    ("H9", 3835.38, 0.30),
    ("H10", 3797.90, 0.26),
    ("H11", 3770.63, 0.22),
    ("H12", 3750.15, 0.19),
]

# Brackett series in the APOGEE H band (vacuum Å converted to air): (label, wavelength, strength)
BRACKETT_LINES = [
    (f"Br{n}", float(vacuum_to_air(1.0 / (1.0967758e-3 * (1.0 / 16.0 - 1.0 / n**2)))), 0.25 * (11.0 / n) ** 1.5)
    for n in range(11, 21)
]

# Molecular band heads (air Å): (species, head, direction (+1 degraded to the red, -1 to the
# blue, 0 symmetric), e-folding length Å, relative strength)
MOLECULAR_BANDS = [
    ("TiO", 4954.6, +1, 60.0, 0.6),
    ("TiO", 5166.7, +1, 80.0, 0.8),
    ("TiO", 5446.6, +1, 80.0, 0.8),
    ("TiO", 5847.0, +1, 100.0, 0.7),
    ("TiO", 6158.8, +1, 100.0, 1.0),
    ("TiO", 6651.3, +1, 120.0, 0.9),
    ("TiO", 7053.6, +1, 130.0, 1.2),
    ("TiO", 7589.3, +1, 120.0, 0.8),
    ("TiO", 8432.5, +1, 100.0, 0.6),
    ("CaH", 6382.0, +1, 40.0, 0.4),
    ("CaH", 6750.0, +1, 60.0, 0.4),
    ("MgH", 5211.0, -1, 60.0, 0.5),
    ("CN", 3883.0, -1, 40.0, 1.0),
    ("CN", 4216.0, -1, 40.0, 0.6),
    ("CN", 7875.0, +1, 150.0, 0.15),
    ("CH", 4305.0, 0, 12.0, 1.0),
    ("CO", 15582.0, +1, 60.0, 0.8),
    ("CO", 15780.0, +1, 60.0, 0.8),
    ("CO", 15982.0, +1, 60.0, 0.8),
    ("CO", 16189.0, +1, 60.0, 0.9),
    ("CO", 16397.0, +1, 60.0, 0.9),
    ("CO", 16610.0, +1, 60.0, 0.9),
]
