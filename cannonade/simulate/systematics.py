"""APOGEE − GALAH label systematics of the apogee-galah mock (Nandakumar et al. 2022, Table 1 / Fig. 2).

The spectra of both surveys stay true to the truth; only the *reported catalogue labels* carry the
systematics. For each label of :data:`CROSS_LABELS` the mean difference APOGEE − GALAH of the same
star is a piecewise-linear function of the true Teff, one for giants and one for dwarfs (split at
true log g = ``logg_split``, 3.5 as in the paper), with a per-star Gaussian scatter. A fraction
``apogee_share`` of it goes into the APOGEE labels, the rest (with the opposite sign) into the GALAH
labels::

    apogee_sys = share * mean + sqrt(share) * sigma * z1
    galah_sys  = -(1 - share) * mean - sqrt(1 - share) * sigma * z2      (z1, z2 ~ N(0, 1))

so that ``apogee_sys - galah_sys ~ N(mean, sigma**2)`` for every star. Both are recorded in the truth
(``apogee_sys_<label>``, ``galah_sys_<label>``; the GALAH one also holds the GALAH-only effects: the
dwarf Teff trends of :class:`~cannonade.simulate.realism.Realism` and the offset of the GALAH vmic
relation from the true vmic).

The [Fe/H] and [α/Fe] mean offsets are deliberately larger than Table 1's whole-sample means (+0.02,
−0.03 dex): the mock's common stars hold more cool giants (where Fig. 2c/d put the largest offsets)
than the paper's high-S/N training set, and the recipe's acceptance test needs an offset that is
measurable above the noise before the cross-survey scaling removes it (docs/simulate.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cannonade.exceptions import ConfigError

__all__ = ["CROSS_LABELS", "NANDAKUMAR_TABLE1", "SurveySystematics", "as_systematics", "cross_survey_systematics",
           "mean_offset"]

#: labels with an APOGEE − GALAH systematic (truth / GALAH names; APOGEE: TEFF, LOGG, FE_H, ALPHA_FE, VMICRO, VBROAD)
CROSS_LABELS = ("teff", "logg", "fe_h", "alpha_fe", "vmic", "vbroad")

#: Nandakumar+2022 Table 1: APOGEE − GALAH (mean, sigma) for all / giant / dwarf training-set stars
#: (sigma = half the 84th − 16th percentile range).
NANDAKUMAR_TABLE1 = {
    "teff": {"all": (14.0, 84.0), "giant": (35.0, 68.0), "dwarf": (0.0, 94.0)},
    "logg": {"all": (0.06, 0.12), "giant": (0.03, 0.13), "dwarf": (0.08, 0.10)},
    "fe_h": {"all": (0.02, 0.08), "giant": (0.05, 0.10), "dwarf": (0.00, 0.06)},
    "alpha_fe": {"all": (-0.03, 0.05), "giant": (-0.04, 0.06), "dwarf": (-0.02, 0.05)},
    "vmic": {"all": (-0.05, 0.37), "giant": (0.07, 0.30), "dwarf": (-0.14, 0.40)},
    "vbroad": {"all": (-2.80, 1.50), "giant": (-3.08, 1.21), "dwarf": (-2.59, 1.62)},
}

# Mean APOGEE − GALAH as a function of the true Teff: (Teff knots [K], values), flat outside the knots.
_TRENDS = {
    # Fig. 2a: giants ~ +35 K; dwarfs 0 on average, APOGEE hotter for hot dwarfs
    "teff": {"giant": ((4000.0, 5200.0), (35.0, 35.0)), "dwarf": ((5300.0, 5900.0, 6500.0), (-60.0, 0.0, 100.0))},
    # Fig. 2b: giants +0.03; APOGEE log g higher for hot dwarfs
    "logg": {"giant": ((4000.0, 5200.0), (0.03, 0.03)), "dwarf": ((5200.0, 5800.0, 6400.0), (0.02, 0.08, 0.18))},
    # Fig. 2c: steeply rising for cool giants (~+0.4 dex below 4500 K, the GALAH DR3 metal-rich giant caveat);
    # dwarfs 0, rising to +0.18 above 6000 K
    "fe_h": {"giant": ((4250.0, 4550.0, 4850.0), (0.40, 0.12, 0.02)), "dwarf": ((5700.0, 6100.0), (0.0, 0.18))},
    # Fig. 2d: APOGEE [α/Fe] lower, most for cool giants
    "alpha_fe": {"giant": ((4300.0, 4900.0), (-0.10, -0.04)), "dwarf": ((5000.0, 6500.0), (-0.03, -0.03))},
    # Fig. 2e / 2f and Table 1
    "vmic": {"giant": ((4000.0, 5200.0), (0.07, 0.07)), "dwarf": ((5200.0, 6400.0), (-0.14, -0.14))},
    "vbroad": {"giant": ((4000.0, 5200.0), (-3.08, -3.08)), "dwarf": ((5200.0, 6400.0), (-2.59, -2.59))},
}
# per-star scatter (giant, dwarf) of APOGEE − GALAH beyond the label noise
_SCATTER = {"teff": (30.0, 40.0), "logg": (0.05, 0.05), "fe_h": (0.04, 0.03), "alpha_fe": (0.02, 0.02),
            "vmic": (0.28, 0.36), "vbroad": (0.4, 0.6)}
# fraction of the difference carried by APOGEE: GALAH's [Fe/H] and [α/Fe] are the suspect ones for giants
# (Buder+2021 §6.5; Nandakumar+2022 §5), APOGEE's vmicro (free parameter) and vbroad (vmacro relation /
# coarse vsini grid)
_SHARE = {"teff": 0.5, "logg": 0.5, "fe_h": 0.3, "alpha_fe": 0.3, "vmic": 1.0, "vbroad": 1.0}


def _copy_trends():
    return {k: {c: (tuple(v[0]), tuple(v[1])) for c, v in d.items()} for k, d in _TRENDS.items()}


@dataclass(frozen=True)
class SurveySystematics:
    """APOGEE − GALAH label systematics (see the module docstring).

    Attributes
    ----------
    enabled : bool
        False: both catalogues unbiased (only noise).
    logg_split : float
        Giants have true log g below this.
    trends : dict label -> {'giant': (knots, values), 'dwarf': (knots, values)}
        Mean APOGEE − GALAH, piecewise linear in the true Teff (K), flat beyond the end knots.
    scatter : dict label -> (giant, dwarf)
        Per-star Gaussian scatter of APOGEE − GALAH (label units), on top of both surveys' label noise.
    apogee_share : dict label -> float in [0, 1]
        Fraction of the difference carried by the APOGEE labels; GALAH carries the rest.
    """

    enabled: bool = True
    logg_split: float = 3.5
    trends: dict = field(default_factory=_copy_trends)
    scatter: dict = field(default_factory=lambda: dict(_SCATTER))
    apogee_share: dict = field(default_factory=lambda: dict(_SHARE))

    def __post_init__(self):
        for name in ("trends", "scatter", "apogee_share"):
            d = getattr(self, name)
            if set(d) != set(CROSS_LABELS):
                raise ConfigError(f"SurveySystematics.{name} needs exactly the labels {list(CROSS_LABELS)}, got {sorted(d)}")
        for lab in CROSS_LABELS:
            for cls in ("giant", "dwarf"):
                try:
                    knots, values = self.trends[lab][cls]
                except (KeyError, TypeError, ValueError):
                    raise ConfigError(f"SurveySystematics.trends[{lab!r}] needs 'giant' and 'dwarf' (knots, values)") from None
                knots = np.asarray(knots, float)
                if knots.ndim != 1 or knots.size < 1 or knots.size != np.asarray(values, float).size or np.any(np.diff(knots) <= 0):
                    raise ConfigError(f"SurveySystematics.trends[{lab!r}][{cls!r}]: knots must increase and match the values")
            if len(self.scatter[lab]) != 2 or min(float(v) for v in self.scatter[lab]) < 0:
                raise ConfigError(f"SurveySystematics.scatter[{lab!r}] must be (giant, dwarf) >= 0")
            if not 0.0 <= float(self.apogee_share[lab]) <= 1.0:
                raise ConfigError(f"SurveySystematics.apogee_share[{lab!r}] must be in [0, 1]")

    @classmethod
    def off(cls):
        """No cross-survey systematics."""
        return cls(enabled=False)

    def as_dict(self):
        """JSON-ready parameters (for the manifest)."""
        return dict(enabled=bool(self.enabled), logg_split=float(self.logg_split),
                    trends={k: {c: [[float(x) for x in v[0]], [float(x) for x in v[1]]] for c, v in sorted(d.items())}
                            for k, d in sorted(self.trends.items())},
                    scatter={k: [float(x) for x in v] for k, v in sorted(self.scatter.items())},
                    apogee_share={k: float(v) for k, v in sorted(self.apogee_share.items())})


def as_systematics(systematics, realism_enabled=True):
    """A :class:`SurveySystematics` from None/True (defaults), False (off), a dict of fields or an instance.

    ``realism_enabled=False`` (``simulate_survey(realism=False)``) switches them off whatever is asked.
    """
    if systematics is None or systematics is True:
        out = SurveySystematics()
    elif systematics is False:
        out = SurveySystematics.off()
    elif isinstance(systematics, SurveySystematics):
        out = systematics
    elif isinstance(systematics, dict):
        try:
            out = SurveySystematics(**systematics)
        except TypeError as e:
            raise ConfigError(f"systematics: {e}") from None
    else:
        raise ConfigError(f"systematics must be a SurveySystematics, a dict, True/False or None, got {type(systematics).__name__}")
    return out if realism_enabled else SurveySystematics.off()


def mean_offset(label, teff, logg, systematics):
    """Mean APOGEE − GALAH of ``label`` at true (teff, logg), (n,) float (0 when switched off)."""
    sysm = as_systematics(systematics)
    teff = np.asarray(teff, float)
    if not sysm.enabled:
        return np.zeros(teff.shape)
    giant = np.asarray(logg, float) < sysm.logg_split
    kg, vg = sysm.trends[label]["giant"]
    kd, vd = sysm.trends[label]["dwarf"]
    return np.where(giant, np.interp(teff, kg, vg), np.interp(teff, kd, vd))


def cross_survey_systematics(teff, logg, systematics, rng):
    """Per-star APOGEE and GALAH offsets (reported − true) of every label of :data:`CROSS_LABELS`.

    Parameters
    ----------
    teff, logg : (n,) float
        True labels.
    systematics : SurveySystematics
    rng : numpy Generator
        Always draws (len(CROSS_LABELS), 2, n) standard normals, switched on or off.

    Returns
    -------
    apogee, galah : dict label -> (n,) float
        ``apogee[l] - galah[l]`` ~ N(:func:`mean_offset`, scatter²); zeros when switched off.
    """
    sysm = as_systematics(systematics)
    teff = np.asarray(teff, float)
    n = teff.shape[0]
    z = rng.standard_normal((len(CROSS_LABELS), 2, n))
    giant = np.asarray(logg, float) < sysm.logg_split
    apogee, galah = {}, {}
    for j, lab in enumerate(CROSS_LABELS):
        if not sysm.enabled:
            apogee[lab], galah[lab] = np.zeros(n), np.zeros(n)
            continue
        mean = mean_offset(lab, teff, logg, sysm)
        sig = np.where(giant, float(sysm.scatter[lab][0]), float(sysm.scatter[lab][1]))
        s = float(sysm.apogee_share[lab])
        apogee[lab] = s * mean + np.sqrt(s) * sig * z[j, 0]
        galah[lab] = -(1.0 - s) * mean - np.sqrt(1.0 - s) * sig * z[j, 1]
    return apogee, galah
