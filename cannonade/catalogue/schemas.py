"""Catalogue schemas as data: Wheeler+2020 Table 1 and Nandakumar+2022 Table A1.

Every column has a name, unit, description and dtype. Every column of the built-in schemas
declares its unit: an astropy unit string, or :data:`DIMENSIONLESS` (``""``) for a pure
number, count, flag, boolean, identifier or text (written as ``TUNITn = ''`` in FITS and
``unit: ""`` in Parquet, read back as no unit). Because the label set is
configurable, per-label columns are patterns (``{label}``, ``e_{label}``,
``chi2_{label}``, ``{label}_extrap``, ...) that :func:`schema_for` expands for a label
set; :func:`label_info` gives a label's unit and description, including the derived
labels of Wheeler+2020 §2.2 (``mean_alpha_fe``, ``mean_s_fe``).

The writers (:mod:`cannonade.catalogue.writers`) order, cast and describe a table's
columns with these specs. See ``docs/catalogue.md`` for the schemas and units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cannonade.exceptions import CatalogueError

#: The unit of a dimensionless column (pure numbers, counts, flags, booleans, identifiers, text).
DIMENSIONLESS = ""

__all__ = [
    "COMMON_EXTRAS",
    "DIMENSIONLESS",
    "NANDAKUMAR2022",
    "SCHEMAS",
    "WHEELER2020",
    "ColumnSpec",
    "LabelPattern",
    "Schema",
    "get_schema",
    "infer_label_names",
    "label_info",
    "schema_for",
]


@dataclass(frozen=True)
class ColumnSpec:
    """One catalogue column.

    Attributes
    ----------
    name : str
    unit : str or None
        astropy unit string; :data:`DIMENSIONLESS` (``""``) declares the column dimensionless
        (``TUNITn = ''``, Parquet ``unit: ""``). None means undeclared (no unit written);
        the built-in schemas never use it.
    description : str
    dtype : {'int64', 'float64', 'bool', 'str'}
    """

    name: str
    unit: str | None
    description: str
    dtype: str


@dataclass(frozen=True)
class LabelPattern:
    """A per-label column, expanded once for each label it applies to.

    Attributes
    ----------
    template : str
        Column name with ``{label}``, e.g. ``'e_{label}'``.
    unit : str
        ``'label'`` means the label's own unit (:func:`label_info`); ``""`` dimensionless.
    description : str
        May use ``{label}`` (the label name), ``{what}`` (the label's description) and
        ``{short}`` (a short name: the description, or for a derived label its symbol
        and components).
    dtype : str
    when : {'all', 'abundance'}
        Which labels get the column: every label, or abundances ([X/Fe] of an element,
        not fe_h, and the derived means ``mean_<x>_fe``).
    """

    template: str
    unit: str | None
    description: str
    dtype: str = "float64"
    when: str = "all"


@dataclass(frozen=True)
class Schema:
    """A catalogue schema: blocks of fixed columns and of per-label patterns.

    Attributes
    ----------
    name : str
    reference : str
        The paper and table the schema follows.
    blocks : tuple of tuples
        Each block is either ColumnSpecs (fixed columns) or LabelPatterns (expanded for
        every label, label by label); :meth:`columns` expands them in order.
    """

    name: str
    reference: str
    blocks: tuple

    def columns(self, label_names=()):
        """Concrete column specs for a label set.

        Parameters
        ----------
        label_names : sequence of str

        Returns
        -------
        list of ColumnSpec
            In schema order, names unique, then :data:`COMMON_EXTRAS`.
        """
        out = {}
        for block in self.blocks:
            if block and isinstance(block[0], ColumnSpec):
                for c in block:
                    out.setdefault(c.name, c)
                continue
            for label in label_names:  # per-label group, patterns in order
                for p in block:
                    if _pattern_applies(p.when, label):
                        spec = _expand(p, label)
                        out.setdefault(spec.name, spec)
        for c in COMMON_EXTRAS:  # Cannonade additions (Gaia, distances, MC errors, ...)
            out.setdefault(c.name, c)
        return list(out.values())


# ----------------------------------------------------------------------------------------
# labels: units and descriptions
# ----------------------------------------------------------------------------------------
_ABUNDANCE = re.compile(r"^([a-z]{1,2}\d?)_fe$", re.IGNORECASE)
_X_H = re.compile(r"^([a-z]{1,2}\d?)_h$", re.IGNORECASE)
_MEAN = re.compile(r"^mean_([a-z0-9]+)_fe$", re.IGNORECASE)

_KNOWN_LABELS = {
    "teff": ("K", "effective temperature T_eff"),
    "logg": ("dex", "surface gravity log10(g / cm s^-2)"),
    "vmic": ("km / s", "microturbulence v_mic"),
    "vmicro": ("km / s", "microturbulence v_micro"),
    "vbroad": ("km / s", "broadening velocity v_broad"),
    "vsini": ("km / s", "projected rotation v sin i"),
    "fe_h": ("dex", "metallicity [Fe/H]"),
    "feh": ("dex", "metallicity [Fe/H]"),
    "m_h": ("dex", "metallicity [M/H]"),
    "alpha_fe": ("dex", "[alpha/Fe]"),
    "alphafe": ("dex", "[alpha/Fe]"),
    "alpha_m": ("dex", "[alpha/M]"),
}

# Derived labels of Wheeler+2020 §2.2: error-weighted means of element abundances
# (the pipeline's default ``labels.derived``). name -> (symbol, components, kind)
_DERIVED = {
    "mean_alpha_fe": ("[alpha/Fe]", ("Mg", "Si", "Ca", "Ti"), "alpha-element"),
    "mean_s_fe": ("[s/Fe]", ("Ba", "Y"), "s-process"),
}


def _element(symbol):
    return symbol[:1].upper() + symbol[1:].lower()


def _is_abundance(label):
    """[X/Fe] of an element (not [Fe/H]) or a derived mean ``mean_<x>_fe``."""
    return (bool(_ABUNDANCE.match(label)) and label.lower() != "fe_h") or bool(_MEAN.match(label))


def _pattern_applies(when, label):
    if when == "all":
        return True
    if when == "abundance":
        return _is_abundance(label)
    raise ValueError(f"unknown pattern selector {when!r}")


def _derived_info(label):
    """(description, short name) of a derived mean label ``mean_<x>_fe``."""
    key = label.lower()
    if key in _DERIVED:
        symbol, parts, kind = _DERIVED[key]
        listed = ", ".join(f"[{p}/Fe]" for p in parts)
        description = f"{symbol}: error-weighted mean of the {kind} abundances {listed} (Wheeler+2020 Sec. 2.2)"
        return description, f"{symbol} (mean of {', '.join(parts)})"
    symbol = f"[{_element(_MEAN.match(label).group(1))}/Fe]"
    return f"{symbol}: mean of several element abundances (derived label)", f"{symbol} (a mean of abundances)"


def label_info(label):
    """Unit and description of a label.

    Parameters
    ----------
    label : str
        A label name: known names (teff, logg, vmic, fe_h, ...), ``x_fe`` -> [X/Fe],
        ``x_h`` -> [X/H], and derived means ``mean_<x>_fe`` (e.g. ``mean_alpha_fe``,
        ``mean_s_fe``, Wheeler+2020 §2.2).

    Returns
    -------
    unit : str
        astropy unit string; abundances are in dex; :data:`DIMENSIONLESS` (``""``) for any
        other name.
    description : str
        The label itself for unknown names.
    """
    key = label.lower()
    if key in _KNOWN_LABELS:
        return _KNOWN_LABELS[key]
    if _MEAN.match(label):
        return "dex", _derived_info(label)[0]
    m = _ABUNDANCE.match(label)
    if m:
        return "dex", f"[{_element(m.group(1))}/Fe]"
    m = _X_H.match(label)
    if m:
        return "dex", f"[{_element(m.group(1))}/H]"
    return DIMENSIONLESS, label


def _expand(pattern, label):
    """The ColumnSpec of ``pattern`` for one label."""
    unit, what = label_info(label)
    short = _derived_info(label)[1] if _MEAN.match(label) else what
    return ColumnSpec(
        pattern.template.format(label=label),
        unit if pattern.unit == "label" else pattern.unit,
        pattern.description.format(label=label, what=what, short=short),
        pattern.dtype,
    )


# ----------------------------------------------------------------------------------------
# the schemas
# ----------------------------------------------------------------------------------------
def _c(name, unit, description, dtype="float64"):
    return ColumnSpec(name, unit, description, dtype)


_KPCKMS = "kpc km / s"
_KMS = "km / s"
_NONE = DIMENSIONLESS
_DYN = (
    _c("R", "kpc", "R, Galactocentric cylindrical radius (the Sun at R = 8 kpc)"),
    _c("phi", "rad", "phi, Galactocentric azimuth (0 at the Sun, increasing in the direction of Galactic rotation)"),
    _c("z", "kpc", "z, height above the Galactic plane (positive towards the north Galactic pole)"),
    _c("vR", _KMS, "R-velocity, dR/dt (positive outwards)"),
    _c("vT", _KMS, "phi-velocity, R dphi/dt (positive for prograde rotation)"),
    _c("vz", _KMS, "z-velocity (positive towards the north Galactic pole)"),
    _c("JR", _KPCKMS, "radial action J_R (Staeckel, MWPotential2014; NaN if unbound)"),
    _c("Jphi", _KPCKMS, "angular momentum J_phi = R vT (positive for prograde rotation; NaN if unbound)"),
    _c("Jz", _KPCKMS, "vertical action J_z (Staeckel, MWPotential2014; NaN if unbound)"),
)

#: Columns Cannonade adds to either schema (Gaia cross-match, distances, MC errors, bookkeeping).
COMMON_EXTRAS = (
    _c("obsid", _NONE, "survey observation (spectrum) identifier (per star: of its best-S/N visit)", "int64"),
    _c("n_obs", _NONE, "number of observations combined into this star's labels", "int64"),
    _c("n_obs_other_model", _NONE, "observations of this star inferred with the other model, left out of the combination", "int64"),
    _c("model_class", _NONE, "Cannon model that produced the labels (e.g. dwarf, giant)", "str"),
    _c("flags", _NONE, "bitmask of cannonade.flags (0 = no warning; recommended cut: flags == 0); bits in the FLAGBnn header cards", "int64"),
    _c("train_distance", _NONE, "mean squared distance to the 10 nearest training stars in CV-scatter units (Nandakumar+2022 Eq. 5)"),
    _c("flag_cannon_dist", _NONE, "true if train_distance is above the threshold (Nandakumar+2022 Sec. 3.6)", "bool"),
    _c("snr", _NONE, "median S/N per pixel of the spectrum on the common grid (the calibration's S/N; per star: its visits' in quadrature)"),
    _c("converged", _NONE, "the label optimisation converged (for a star: every combined observation)", "bool"),
    _c("outside_training", _NONE, "a label lies outside the training set's minimum-maximum range", "bool"),
    _c("rv", _KMS, "heliocentric radial velocity from the target survey's catalogue (per star: S/N-weighted mean of its visits)"),
    _c("rv_err", _KMS, "1-sigma uncertainty of rv (per star: propagated through the weighted mean)"),
    *_DYN,
    *(_c("e_" + c.name, c.unit, f"half the 16-84th percentile spread of {c.name} over the Monte-Carlo resamples") for c in _DYN),
    _c("unbound", _NONE, "nominal orbit unbound in MWPotential2014 (E - Phi(inf) >= 0); actions NaN", "bool"),
    _c("f_unbound", _NONE, "fraction of Monte-Carlo resamples that are unbound"),
    _c("source_id", _NONE, "Gaia source id", "int64"),
    _c("distance", "kpc", "heliocentric distance used for the dynamics (Gaia r_est / 1000)"),
    _c("distance_lo", "kpc", "16th percentile distance (Gaia r_lo / 1000)"),
    _c("distance_hi", "kpc", "84th percentile distance (Gaia r_hi / 1000)"),
    _c("radial_velocity_used", _KMS, "heliocentric radial velocity used for the dynamics: rv where finite, else Gaia's"),
    _c("radial_velocity_used_err", _KMS, "1-sigma uncertainty of radial_velocity_used (resampled in the Monte Carlo)"),
    _c("gaia_radial_velocity", _KMS, "Gaia radial velocity of the matched source (used for the dynamics only where rv is missing)"),
    _c("gaia_radial_velocity_error", _KMS, "1-sigma uncertainty of gaia_radial_velocity"),
    _c("radial_velocity", _KMS, "heliocentric radial velocity (the input of the dynamics; from add_dynamics: Gaia's)"),
    _c("radial_velocity_err", _KMS, "1-sigma uncertainty of radial_velocity"),
    _c("radial_velocity_error", _KMS, "1-sigma uncertainty of radial_velocity (Gaia's name)"),
    _c("gaia_ra", "deg", "Gaia right ascension of the matched source"),
    _c("gaia_dec", "deg", "Gaia declination of the matched source"),
    _c("pmra", "mas / yr", "Gaia proper motion in right ascension (mu_alpha cos delta)"),
    _c("pmra_error", "mas / yr", "Gaia pmra uncertainty"),
    _c("pmdec", "mas / yr", "Gaia proper motion in declination"),
    _c("pmdec_error", "mas / yr", "Gaia pmdec uncertainty"),
    _c("pmra_pmdec_corr", _NONE, "Gaia correlation coefficient of pmra and pmdec"),
    _c("parallax", "mas", "Gaia parallax"),
    _c("parallax_error", "mas", "Gaia parallax uncertainty"),
    _c("phot_g_mean_mag", "mag", "Gaia G magnitude"),
    _c("r_est", "pc", "Gaia distance estimate (Bailer-Jones et al.)"),
    _c("r_lo", "pc", "Gaia distance lower bound (Bailer-Jones et al.)"),
    _c("r_hi", "pc", "Gaia distance upper bound (Bailer-Jones et al.)"),
    _c("gaia_sep_arcsec", "arcsec", "separation to the Gaia counterpart"),
    _c("gaia_n_matches", _NONE, "Gaia sources within the match radius", "int64"),
    _c("gaia_duplicated", _NONE, "the Gaia counterpart is also matched to another star", "bool"),
)

WHEELER2020 = Schema(
    name="wheeler2020",
    reference="Wheeler et al. 2020, AJ 160, 68, Table 1",
    blocks=(
        (
            _c("source_id", _NONE, "Gaia DR2 source id", "int64"),
            _c("designation", _NONE, "LAMOST unique star identifier", "str"),
            _c("giantmodel", _NONE, "true if labels were estimated with giant model", "bool"),
        ),
        (
            LabelPattern("{label}", "label", "{what}"),
            LabelPattern("e_{label}", "label", "calibrated 1-sigma uncertainty of {label} (noise and model mismatch; docs/calibration.md)"),
            LabelPattern("raw_e_{label}", "label", "formal 1-sigma uncertainty of {label} from the covariance (JtWJ)^-1"),
            LabelPattern("chi2_{label}", _NONE, "reduced chi^2 (per valid pixel) in windows around strong lines of {short}", when="abundance"),
            LabelPattern(
                "{label}_extrap",
                _NONE,
                "true if {short} is in regime where model fails to extrapolate (Wheeler+2020 Sec. 4 KDE bounds)",
                "bool",
            ),
        ),
        (
            _c(
                "kiel_extrap",
                _NONE,
                "true if T_eff or log(g) (the axes of the Kiel diagram) are in regime where model fails to extrapolate for any observation",
                "bool",
            ),
            _c("chi2", _NONE, "whole-spectrum chi^2 (per star: S/N-weighted mean of its visits)"),
            _c("dof", _NONE, "degrees of freedom of chi2: pixels used minus the number of labels (per star: weighted like chi2)", "int64"),
            _c("snrz", _NONE, "LAMOST z-band S/N (per star: of its best-S/N visit)"),
            _c("ra", "deg", "right-ascension"),
            _c("dec", "deg", "declination"),
            *_DYN,
        ),
    ),
)

NANDAKUMAR2022 = Schema(
    name="nandakumar2022",
    reference="Nandakumar et al. 2022, MNRAS 513, 232, Table A1",
    blocks=(
        (
            _c("unique_id", _NONE, "unique survey star id", "str"),
            _c("dr2_source_id", _NONE, "Gaia DR2 ID", "int64"),
            _c("dr3_source_id", _NONE, "Gaia DR3 ID", "int64"),
            _c("ra", "deg", "right ascension"),
            _c("dec", "deg", "declination"),
        ),
        (
            LabelPattern("{label}Cann", "label", "Cannon estimate of {what}"),
            LabelPattern("e_{label}Cann", "label", "error for {label}Cann"),
        ),
        (
            _c("r_chi_sq", _NONE, "reduced chi-square from Cannon"),
            _c("snrCann", _NONE, "signal-to-noise ratio from Cannon"),
            _c("Cannon_distance", _NONE, "distance to the training set labels (Eq. 5)"),
            _c("flag_id", _NONE, "0 - GALAH spectra, 1 - APOGEE spectra", "int64"),
            _c("flag_Cannon_dist", _NONE, "flag for quality of Cannon estimates (0/1)", "int64"),
            _c("flag_spectra", _NONE, "flag for problematic spectra", "int64"),
            _c("flag_sp_aspcap", _NONE, "survey pipeline flag (GALAH flag_sp / APOGEE ASPCAPFLAG)", "int64"),
            _c("flag_survey", _NONE, "invalid survey pipeline estimates (1)", "int64"),
            _c("flag_training", _NONE, "star belonging to the training set (0)", "int64"),
        ),
        (
            LabelPattern("{label}", "label", "survey {what}"),
            LabelPattern("e_{label}", "label", "survey {what} error"),
        ),
        (
            _c("snr", _NONE, "survey signal-to-noise ratio"),
            _c("r_est", "pc", "estimated distance from Bailer-Jones+21"),
            _c("r_lo", "pc", "lower bound from Bailer-Jones+21"),
            _c("r_hi", "pc", "higher bound from Bailer-Jones+21"),
            _c("parallax", "mas", "Gaia EDR3 parallax"),
            _c("e_parallax", "mas", "Gaia EDR3 parallax error"),
        ),
    ),
)

LABELS = Schema(
    name="labels",
    reference="cannonade infer: one row per spectrum of a store (docs/tutorial.md)",
    blocks=(
        (
            _c("obj_id", _NONE, "the spectrum's id in the store (from the survey file: LAMOST OBSID, APOGEE_ID, GALAH sobject_id)", "str"),
            _c("store_row", _NONE, "row of the spectrum in the store", "int64"),
            _c("source_file", _NONE, "the survey file the spectrum was read from", "str"),
            _c("model", _NONE, "name of the model that gave the labels ('' = none: no model applied)", "str"),
        ),
        (
            LabelPattern("{label}", "label", "Cannon estimate of {what} (NaN where the chosen model lacks {label})"),
            LabelPattern("e_{label}", "label", "calibrated 1-sigma uncertainty of {label} (docs/calibration.md; formal where the model is uncalibrated)"),
            LabelPattern("raw_e_{label}", "label", "formal 1-sigma uncertainty of {label} from the covariance (JtWJ)^-1"),
            LabelPattern("{label}_extrap", _NONE, "{short} outside the training set's KDE bounds (Wheeler+2020 Sec. 4)", "bool"),
        ),
        (
            _c("chi2", _NONE, "chi^2 of the spectrum against the model at the inferred labels"),
            _c("dof", _NONE, "degrees of freedom of chi2: valid pixels minus the number of labels", "int64"),
            _c("snr", _NONE, "median S/N per pixel over the model's valid pixels"),
            _c("converged", _NONE, "the label optimisation converged", "bool"),
            _c("outside_training", _NONE, "a label lies outside the training set's minimum-maximum range", "bool"),
            _c("train_distance", _NONE, "mean squared distance to the 10 nearest training stars in CV-scatter units (Nandakumar+2022 Eq. 5)"),
            _c("far_from_training", _NONE, "train_distance above the model's threshold (flag bit FAR_FROM_TRAINING)", "bool"),
            _c("kiel_extrap", _NONE, "T_eff or log(g) outside the training set's KDE bounds", "bool"),
            _c("flags", _NONE, "bitmask of cannonade.flags (bits in the FLAGBnn header cards); recommended cut flags == 0", "int64"),
        ),
    ),
)

#: The catalogue schemas by name.
SCHEMAS = {"wheeler2020": WHEELER2020, "nandakumar2022": NANDAKUMAR2022, "labels": LABELS}


def get_schema(schema):
    """A :class:`Schema` from its name (or the Schema itself).

    Raises
    ------
    CatalogueError
        Unknown name (the message lists the known ones).
    """
    if isinstance(schema, Schema):
        return schema
    if schema not in SCHEMAS:
        raise CatalogueError(f"unknown catalogue schema {schema!r}; known: {sorted(SCHEMAS)}")
    return SCHEMAS[schema]


def schema_for(label_names, schema="wheeler2020"):
    """The concrete column list of ``schema`` for a label set.

    Parameters
    ----------
    label_names : sequence of str
        e.g. ``['teff', 'logg', 'vmic', 'fe_h', 'mg_fe', 'mean_alpha_fe']`` (Wheeler) or
        ``['teff', 'logg', 'feh', 'alphafe', 'vmicro', 'vbroad']`` (Nandakumar).
    schema : str or Schema

    Returns
    -------
    list of ColumnSpec
        In schema order (Cannonade's common extra columns last).
    """
    return get_schema(schema).columns(list(label_names))


def infer_label_names(colnames, schema="wheeler2020"):
    """Guess the label names from a table's columns (when not given).

    Parameters
    ----------
    colnames : sequence of str
    schema : str or Schema

    Returns
    -------
    list of str
        Wheeler: every column that is a known label name (teff, logg, ...) or looks like
        ``x_fe``, ``x_h`` or a derived mean ``mean_<x>_fe``, and is not itself a companion
        column (``e_*``, ``chi2_*``, ``*_extrap``). Nandakumar: every ``<label>Cann``
        column except ``snrCann``.
    """
    s = get_schema(schema)
    cols = list(colnames)
    if s.name == "nandakumar2022":
        return [c[:-4] for c in cols if c.endswith("Cann") and not c.startswith("e_") and c != "snrCann"]
    out = []
    for c in cols:
        if c.startswith(("e_", "chi2_")) or c.endswith("_extrap"):
            continue
        if c.lower() in _KNOWN_LABELS or _ABUNDANCE.match(c) or _X_H.match(c) or _MEAN.match(c):
            out.append(c)
    return out
