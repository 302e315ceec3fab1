"""Mock realism that calibrating per-star uncertainties needs (:class:`Realism`, on by default).

Three effects, each seeded, each recorded in the truth, each switchable:

1. **Per-visit spectra** (LAMOST and APOGEE visits): every spectrum gets its own smooth
   multiplicative flux-calibration error ``D = exp(sum_k c_k P_k(x))`` (Legendre degrees
   1..``calibration_degree`` over the instrument's wavelength span) and sky-subtraction
   residuals: emission/absorption residuals at known sky-line wavelengths (unresolved, at the
   LSF) and a small smooth additive residual continuum. The residuals are fixed in *counts*
   (they come from the sky, not the star), so relative to the star they scale as
   ``(sky_reference_snr / snr)**2`` and, relative to the noise, as ``1 / snr``: they matter at
   low S/N. Observed counts = ``(star + noise + sky residual) * D``; the pixel uncertainties
   do not include any of it (as in the real products).
2. **Reference-label systematics**: GALAH [Fe/H] and [X/Fe] of dwarfs (true logg >= 3.5) drift
   linearly with the true Teff, ``slope * (Teff - pivot) / 1000 K`` (Wheeler+2020 Fig. 11).
3. **Imperfect reported errors**: the GALAH label noise is drawn from the true error; the
   reported error is the true error times a per-label factor (log-uniform in
   ``error_factor_range``, drawn once per survey) times a per-star, per-label lognormal jitter.

``Realism(enabled=False)`` (or ``realism=False`` in ``simulate_survey``) switches everything
off; each amplitude can also be set to 0 on its own. The random draws of these effects come
from their own streams, so switching them off leaves every other draw of the mock unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cannonade.exceptions import ConfigError
from cannonade.simulate.instruments import get_instrument
from cannonade.simulate.lines import ABUNDANCE_ELEMENTS

__all__ = [
    "Realism",
    "VisitEffects",
    "SKY_LINES",
    "DWARF_TEFF_SLOPES",
    "SYSTEMATIC_LABELS",
    "REFERENCE_ERROR_LABELS",
    "as_realism",
    "draw_visit_effects",
    "visit_calibration",
    "sky_line_profiles",
    "sky_residual",
    "dwarf_teff_systematics",
    "draw_error_factors",
    "reported_errors",
]

#: reference labels that may carry a dwarf Teff systematic ([Fe/H] and every [X/Fe])
SYSTEMATIC_LABELS = ("fe_h",) + tuple(f"{x.lower()}_fe" for x in ABUNDANCE_ELEMENTS)
#: reference labels whose reported error is imperfect
REFERENCE_ERROR_LABELS = ("teff", "logg") + SYSTEMATIC_LABELS

#: default dwarf Teff trends of the reference labels (dex per 1000 K, around ``dwarf_teff_pivot``);
#: a few 0.01 dex per 1000 K as in GALAH DR2/DR3 dwarfs (Wheeler+2020 Fig. 11 and §5.2)
DWARF_TEFF_SLOPES = {"fe_h": 0.02, "o_fe": -0.05, "na_fe": 0.03, "mg_fe": 0.03, "si_fe": -0.02, "ca_fe": 0.04,
                     "ti_fe": -0.03, "mn_fe": -0.03, "y_fe": 0.05, "ba_fe": 0.06}

#: sky lines that leave subtraction residuals: (wavelength in the product's frame, relative strength).
#: LAMOST (vacuum): [O I] 5577, Na D, [O I] 6300/6364 and the strongest OH lines of the red arm
#: (air 6863.96, 7316.28, 7340.89, 7794.11, 7913.71, 8344.60, 8399.17, 8430.17, 8465.36, 8827.10,
#: 8885.85, 8943.40 Å). APOGEE: the OH lines flagged by apStar bit 12 (SIG_SKYLINE).
SKY_LINES = {
    "lamost": ((5578.89, 1.0), (5891.58, 0.4), (5897.55, 0.4), (6302.04, 0.6), (6365.54, 0.2), (6865.85, 0.3),
               (7318.30, 0.3), (7342.91, 0.4), (7796.25, 0.5), (7915.89, 0.4), (8346.89, 0.8), (8401.48, 0.7),
               (8432.49, 0.7), (8467.69, 0.7), (8829.52, 0.9), (8888.29, 0.9), (8945.86, 0.8)),
    "apogee": tuple((w, 1.0) for w in (15240.5, 15332.4, 15395.5, 15432.2, 15597.6, 15862.9, 16079.6, 16128.6,
                                       16235.4, 16477.8, 16530.0, 16840.6)),
}
_SKY_CONT_DEGREE = 2  # additive residual continuum: Legendre degrees 0..2


@dataclass(frozen=True)
class Realism:
    """Amplitudes of the mock's calibration-relevant imperfections (see the module docstring).

    Attributes
    ----------
    enabled : bool
        False switches every effect off (the mock of earlier versions).
    visit_calibration : float
        Expected RMS of ln D, the per-visit multiplicative flux-calibration error (0.03 = 3 %).
    calibration_degree : int
        Highest Legendre degree of D (degrees 1..n; no constant term).
    sky_line_residual : float
        RMS peak of a strength-1 residual sky line, in units of the reference-band continuum of a
        star observed at S/N = ``sky_reference_snr`` (signed: over- or under-subtracted).
    sky_continuum_residual : float
        RMS of each Legendre coefficient (degrees 0..2) of the additive residual continuum, same units.
    sky_reference_snr : float
    dwarf_teff_slopes : dict label -> dex per 1000 K
        Labels from :data:`SYSTEMATIC_LABELS`; missing labels have no trend.
    dwarf_teff_pivot : float
        Teff (K) where the dwarf systematic is zero.
    dwarf_logg_min : float
        Dwarfs are stars with true logg >= this.
    error_factor_range : (float, float)
        Range of the per-label factor reported error / true error (log-uniform).
    error_jitter : float
        Lognormal sigma of the per-star, per-label jitter of the reported error.
    """

    enabled: bool = True
    visit_calibration: float = 0.03
    calibration_degree: int = 5
    sky_line_residual: float = 0.02
    sky_continuum_residual: float = 0.002
    sky_reference_snr: float = 50.0
    dwarf_teff_slopes: dict = field(default_factory=lambda: dict(DWARF_TEFF_SLOPES))
    dwarf_teff_pivot: float = 5750.0
    dwarf_logg_min: float = 3.5
    error_factor_range: tuple = (0.7, 1.4)
    error_jitter: float = 0.15

    def __post_init__(self):
        for name in ("visit_calibration", "sky_line_residual", "sky_continuum_residual", "error_jitter"):
            if not float(getattr(self, name)) >= 0.0:
                raise ConfigError(f"Realism.{name} must be >= 0, got {getattr(self, name)!r}")
        if int(self.calibration_degree) < 1:
            raise ConfigError(f"Realism.calibration_degree must be >= 1, got {self.calibration_degree!r}")
        if not float(self.sky_reference_snr) > 0.0:
            raise ConfigError(f"Realism.sky_reference_snr must be > 0, got {self.sky_reference_snr!r}")
        unknown = sorted(set(self.dwarf_teff_slopes) - set(SYSTEMATIC_LABELS))
        if unknown:
            raise ConfigError(f"Realism.dwarf_teff_slopes: unknown labels {unknown}; known: {list(SYSTEMATIC_LABELS)}")
        lo, hi = (float(v) for v in self.error_factor_range)
        if not 0.0 < lo <= hi:
            raise ConfigError(f"Realism.error_factor_range must be 0 < lo <= hi, got {self.error_factor_range!r}")

    @classmethod
    def off(cls):
        """No realism effects: visits differ only by noise and RV, reference errors exact."""
        return cls(enabled=False)

    @property
    def visit_effects(self):
        """True when spectra get per-visit calibration or sky residuals."""
        return self.enabled and (self.visit_calibration > 0 or self.sky_line_residual > 0
                                 or self.sky_continuum_residual > 0)

    def as_dict(self):
        """JSON-ready parameters (for the manifest)."""
        return dict(enabled=bool(self.enabled), visit_calibration=float(self.visit_calibration),
                    calibration_degree=int(self.calibration_degree), sky_line_residual=float(self.sky_line_residual),
                    sky_continuum_residual=float(self.sky_continuum_residual),
                    sky_reference_snr=float(self.sky_reference_snr),
                    dwarf_teff_slopes={k: float(v) for k, v in sorted(self.dwarf_teff_slopes.items())},
                    dwarf_teff_pivot=float(self.dwarf_teff_pivot), dwarf_logg_min=float(self.dwarf_logg_min),
                    error_factor_range=[float(v) for v in self.error_factor_range], error_jitter=float(self.error_jitter))


def as_realism(realism):
    """A :class:`Realism` from None/True (defaults), False (off), a dict of fields or a Realism."""
    if realism is None or realism is True:
        return Realism()
    if realism is False:
        return Realism.off()
    if isinstance(realism, Realism):
        return realism
    if isinstance(realism, dict):
        try:
            return Realism(**realism)
        except TypeError as e:
            raise ConfigError(f"realism: {e}") from None
    raise ConfigError(f"realism must be a Realism, a dict, True/False or None, got {type(realism).__name__}")


# ----------------------------------------------------------------------------- per-visit spectra
@dataclass
class VisitEffects:
    """Per-spectrum draws of :func:`draw_visit_effects` (rows = spectra).

    Attributes
    ----------
    calib : (n, degree) float
        Legendre coefficients (degrees 1..degree) of ln D.
    sky_lines : (n, n_lines) float
        Signed peak of each residual sky line (reference units, see :class:`Realism`).
    sky_cont : (n, 3) float
        Legendre coefficients (degrees 0..2) of the additive residual continuum (reference units).
    snr_ref : float
        ``Realism.sky_reference_snr``.
    """

    calib: np.ndarray
    sky_lines: np.ndarray
    sky_cont: np.ndarray
    snr_ref: float

    def __getitem__(self, rows):
        return VisitEffects(self.calib[rows], self.sky_lines[rows], self.sky_cont[rows], self.snr_ref)


def draw_visit_effects(realism, instrument, n, rng):
    """Per-visit calibration and sky-residual draws for ``n`` spectra, or None when switched off.

    The draws are standard normals scaled by the amplitudes (always the same number of draws),
    so a change of amplitude rescales the same realisations.
    """
    realism = as_realism(realism)
    if not realism.visit_effects:
        return None
    deg = int(realism.calibration_degree)
    k = np.arange(1, deg + 1)
    sig_c = realism.visit_calibration / np.sqrt(np.sum(1.0 / (2 * k + 1)))  # E[mean P_k^2] = 1/(2k+1)
    weights = np.array([w for _, w in SKY_LINES.get(get_instrument(instrument).name, ())])
    calib = rng.standard_normal((n, deg)) * sig_c
    lines = rng.standard_normal((n, len(weights))) * weights[None, :] * realism.sky_line_residual
    cont = rng.standard_normal((n, _SKY_CONT_DEGREE + 1)) * realism.sky_continuum_residual
    return VisitEffects(calib, lines, cont, float(realism.sky_reference_snr))


def _legendre_x(wavelength):
    wl = np.asarray(wavelength, float)
    return 2.0 * (wl - wl[0]) / (wl[-1] - wl[0]) - 1.0


def visit_calibration(wavelength, coeffs):
    """Multiplicative per-visit flux-calibration error D = exp(sum_k c_k P_k(x)), k = 1..degree, (n, n_pixels)."""
    coeffs = np.atleast_2d(np.asarray(coeffs, float))
    leg = np.polynomial.legendre.legvander(_legendre_x(wavelength), coeffs.shape[1])[:, 1:]
    return np.exp(coeffs @ leg.T)


def sky_line_profiles(wavelength, instrument):
    """(n_lines, n_pixels) unit-peak Gaussian profiles (the LSF) of the instrument's :data:`SKY_LINES`."""
    inst = get_instrument(instrument)
    wl = np.asarray(wavelength, float)
    lines = SKY_LINES.get(inst.name, ())
    if not lines:
        return np.zeros((0, len(wl)))
    lam = np.array([w for w, _ in lines])
    sig = inst.lsf_sigma(lam)
    return np.exp(-0.5 * ((wl[None, :] - lam[:, None]) / sig[:, None]) ** 2)


def sky_residual(wavelength, instrument, effects):
    """Additive sky residuals of a batch, in reference units: (lines, continuum), each (n, n_pixels)."""
    prof = sky_line_profiles(wavelength, instrument)
    lines = effects.sky_lines @ prof if prof.shape[0] else np.zeros((effects.sky_lines.shape[0], len(wavelength)))
    leg = np.polynomial.legendre.legvander(_legendre_x(wavelength), effects.sky_cont.shape[1] - 1)
    return lines, effects.sky_cont @ leg.T


# ----------------------------------------------------------------------------- reference labels
def dwarf_teff_systematics(teff, logg, realism):
    """Reference-label offsets (dex) per label of :data:`SYSTEMATIC_LABELS`: dwarfs' linear Teff trends.

    Returns dict label -> (n,) float (zeros for giants, for labels without a slope, and when off).
    """
    realism = as_realism(realism)
    teff = np.asarray(teff, float)
    dwarf = np.asarray(logg, float) >= realism.dwarf_logg_min
    x = (teff - realism.dwarf_teff_pivot) / 1000.0
    out = {}
    for lab in SYSTEMATIC_LABELS:
        slope = float(realism.dwarf_teff_slopes.get(lab, 0.0)) if realism.enabled else 0.0
        out[lab] = np.where(dwarf, slope * x, 0.0)
    return out


def draw_error_factors(realism, rng):
    """Per-label factor reported / true error (log-uniform in ``error_factor_range``; 1 when off).

    Drawn once per survey: one draw per label of :data:`REFERENCE_ERROR_LABELS`, in that order.
    """
    realism = as_realism(realism)
    lo, hi = (float(v) for v in realism.error_factor_range)
    u = rng.random(len(REFERENCE_ERROR_LABELS))
    f = np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
    return {lab: (float(v) if realism.enabled else 1.0) for lab, v in zip(REFERENCE_ERROR_LABELS, f)}


def reported_errors(true_errors, factors, realism, rng):
    """Reported errors: true error x per-label factor x per-star lognormal jitter.

    Parameters
    ----------
    true_errors : dict label -> (n,) float
        The errors the label noise was drawn with (labels of :data:`REFERENCE_ERROR_LABELS`).
    factors : dict label -> float
        :func:`draw_error_factors`.
    realism : Realism
    rng : Generator
        The jitter stream: one (n,) draw per label of :data:`REFERENCE_ERROR_LABELS`, in that order.

    Returns
    -------
    dict label -> (n,) float (the true errors when realism is off).
    """
    realism = as_realism(realism)
    out = {}
    for lab in REFERENCE_ERROR_LABELS:
        e = np.asarray(true_errors[lab], float)
        jit = np.exp(rng.normal(0.0, realism.error_jitter, e.shape))
        out[lab] = e * factors[lab] * jit if realism.enabled else e.copy()
    return out
