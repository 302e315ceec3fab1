"""Catalogue schemas and writers (Wheeler+2020 Table 1, Nandakumar+2022 Table A1).

The schemas are data: every column has a name, unit, description and dtype.
Because the label set is configurable, per-label columns are patterns
(``{label}``, ``e_{label}``, ``{label}_extrap``, ...) expanded by
:func:`schema_for`. :func:`write_catalogue` writes an astropy Table (or
DataFrame) as FITS or Parquet, chosen from the file suffix, atomically, with
units and descriptions; :func:`read_catalogue` reads either back. A per-star and a
per-observation catalogue are two calls with the same schema. Columns are written
in schema order, then any extra columns in the table's order (kept silently);
schema columns the table lacks are simply absent (the catalogue gains columns as
the pipeline grows). :class:`CatalogueWriter` streams a large catalogue to Parquet
in row groups. :func:`add_dynamics` is the pipeline's Gaia + orbits stage.

See ``docs/catalogue.md`` for the schemas, units and sign conventions.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cannonade.exceptions import CatalogueError, ColumnError
from cannonade.util import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------
# schema data
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnSpec:
    """One catalogue column: name, unit (astropy string, None = dimensionless), description, dtype."""

    name: str
    unit: str | None
    description: str
    dtype: str  # 'int64', 'float64', 'bool' or 'str'


@dataclass(frozen=True)
class LabelPattern:
    """A per-label column. ``template`` and ``description`` use ``{label}`` (the label
    name) and ``{what}`` (its description); ``unit='label'`` means the label's unit.
    ``when`` selects labels: 'all', 'abundance' ([X/Fe]-like, not fe_h) or
    'not_kiel' (not teff/logg/vmic)."""

    template: str
    unit: str | None
    description: str
    dtype: str = "float64"
    when: str = "all"


@dataclass(frozen=True)
class Schema:
    """A catalogue schema: blocks of fixed columns (tuple of ColumnSpec) and per-label
    patterns (tuple of LabelPattern), expanded in order by :meth:`columns`."""

    name: str
    reference: str
    blocks: tuple

    def columns(self, label_names=()):
        """Concrete ColumnSpecs for ``label_names``, in schema order, names unique."""
        out = {}
        for block in self.blocks:
            if block and isinstance(block[0], ColumnSpec):
                for c in block:
                    out.setdefault(c.name, c)
                continue
            for label in label_names:  # per-label group, patterns in order
                for p in block:
                    if not _pattern_applies(p.when, label):
                        continue
                    unit, what = label_info(label)
                    name = p.template.format(label=label)
                    out.setdefault(
                        name,
                        ColumnSpec(
                            name,
                            unit if p.unit == "label" else p.unit,
                            p.description.format(label=label, what=what),
                            p.dtype,
                        ),
                    )
        for c in COMMON_EXTRAS:  # Cannonade additions (Gaia, distances, MC errors, ...)
            out.setdefault(c.name, c)
        return list(out.values())


_KIEL = {"teff", "logg", "vmic", "vmicro"}
_ABUNDANCE = re.compile(r"^([a-z]{1,2}\d?)_fe$", re.IGNORECASE)
_X_H = re.compile(r"^([a-z]{1,2}\d?)_h$", re.IGNORECASE)


def _pattern_applies(when, label):
    if when == "all":
        return True
    if when == "abundance":
        return bool(_ABUNDANCE.match(label)) and label.lower() != "fe_h"
    if when == "not_kiel":
        return label.lower() not in _KIEL
    raise ValueError(f"unknown pattern selector {when!r}")


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


def label_info(label):
    """(unit, description) of a label name: known names, ``x_fe`` -> [X/Fe] and
    ``x_h`` -> [X/H] in dex; anything else dimensionless, described by its name."""
    key = label.lower()
    if key in _KNOWN_LABELS:
        return _KNOWN_LABELS[key]
    m = _ABUNDANCE.match(label)
    if m:
        return "dex", f"[{m.group(1).capitalize()}/Fe]"
    m = _X_H.match(label)
    if m:
        return "dex", f"[{m.group(1).capitalize()}/H]"
    return None, label


def _c(name, unit, description, dtype="float64"):
    return ColumnSpec(name, unit, description, dtype)


_KPCKMS = "kpc km / s"
_DYN = (
    _c("R", "kpc", "R, in Galactic cylindrical coordinates"),
    _c("phi", "rad", "phi, in Galactic cylindrical coordinates (0 at the Sun, increasing with Galactic rotation)"),
    _c("z", "kpc", "z, in Galactic cylindrical coordinates (towards the NGP)"),
    _c("vR", "km / s", "R-velocity"),
    _c("vT", "km / s", "phi-velocity (positive for prograde rotation)"),
    _c("vz", "km / s", "z-velocity"),
    _c("JR", _KPCKMS, "radial action"),
    _c("Jphi", _KPCKMS, "angular momentum (positive for prograde rotation)"),
    _c("Jz", _KPCKMS, "vertical action"),
)

#: Columns Cannonade adds to either schema (Gaia cross-match, distances, MC errors, bookkeeping).
COMMON_EXTRAS = (
    _c("obsid", None, "survey observation (spectrum) identifier; per-observation table", "int64"),
    _c("n_obs", None, "number of observations combined into this star's labels", "int64"),
    *_DYN,
    *(_c("e_" + c.name, c.unit, f"half the 16-84th percentile spread of {c.name} over the Monte-Carlo resamples") for c in _DYN),
    _c("unbound", None, "nominal orbit unbound in MWPotential2014 (E - Phi(inf) >= 0); actions NaN", "bool"),
    _c("f_unbound", None, "fraction of Monte-Carlo resamples that are unbound"),
    _c("source_id", None, "Gaia source id", "int64"),
    _c("distance", "kpc", "distance used for the dynamics (Gaia r_est)"),
    _c("distance_lo", "kpc", "16th percentile distance (Gaia r_lo)"),
    _c("distance_hi", "kpc", "84th percentile distance (Gaia r_hi)"),
    _c("radial_velocity", "km / s", "radial velocity used for the dynamics"),
    _c("radial_velocity_err", "km / s", "radial velocity uncertainty"),
    _c("radial_velocity_used", "km / s", "radial velocity used for the dynamics (survey, else Gaia)"),
    _c("radial_velocity_used_err", "km / s", "uncertainty of radial_velocity_used"),
    _c("pmra", "mas / yr", "Gaia proper motion in right ascension (mu_alpha cos delta)"),
    _c("pmra_error", "mas / yr", "Gaia pmra uncertainty"),
    _c("pmdec", "mas / yr", "Gaia proper motion in declination"),
    _c("pmdec_error", "mas / yr", "Gaia pmdec uncertainty"),
    _c("parallax", "mas", "Gaia parallax"),
    _c("parallax_error", "mas", "Gaia parallax uncertainty"),
    _c("phot_g_mean_mag", "mag", "Gaia G magnitude"),
    _c("r_est", "pc", "Gaia distance estimate (Bailer-Jones et al.)"),
    _c("r_lo", "pc", "Gaia distance lower bound (Bailer-Jones et al.)"),
    _c("r_hi", "pc", "Gaia distance upper bound (Bailer-Jones et al.)"),
    _c("gaia_sep_arcsec", "arcsec", "separation to the Gaia counterpart"),
    _c("gaia_n_matches", None, "Gaia sources within the match radius", "int64"),
    _c("gaia_duplicated", None, "the Gaia counterpart is also matched to another star", "bool"),
)

WHEELER2020 = Schema(
    name="wheeler2020",
    reference="Wheeler et al. 2020, AJ 160, 68, Table 1",
    blocks=(
        (
            _c("source_id", None, "Gaia DR2 source id", "int64"),
            _c("designation", None, "LAMOST unique star identifier", "str"),
            _c("giantmodel", None, "true if labels were estimated with giant model", "bool"),
        ),
        (
            LabelPattern("{label}", "label", "{what}"),
            LabelPattern("e_{label}", "label", "uncertainty of {label}"),
            LabelPattern("chi2_{label}", None, "chi^2 calculated in windows around strong lines of {what}", when="abundance"),
            LabelPattern(
                "{label}_extrap",
                None,
                "true if {what} is in regime where model fails to extrapolate for any observation",
                "bool",
                when="not_kiel",
            ),
        ),
        (
            _c(
                "kiel_extrap",
                None,
                "true if T_eff or log(g) (the axes of the Kiel diagram) are in regime where model fails to extrapolate for any observation",
                "bool",
            ),
            _c("chi2", None, "whole-spectrum chi^2"),
            _c("snrz", None, "LAMOST z-band S/N"),
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
            _c("unique_id", None, "unique survey star id", "str"),
            _c("dr2_source_id", None, "Gaia DR2 ID", "int64"),
            _c("dr3_source_id", None, "Gaia DR3 ID", "int64"),
            _c("ra", "deg", "right ascension"),
            _c("dec", "deg", "declination"),
        ),
        (
            LabelPattern("{label}Cann", "label", "Cannon estimate of {what}"),
            LabelPattern("e_{label}Cann", "label", "error for {label}Cann"),
        ),
        (
            _c("r_chi_sq", None, "reduced chi-square from Cannon"),
            _c("snrCann", None, "signal-to-noise ratio from Cannon"),
            _c("Cannon_distance", None, "distance to the training set labels (Eq. 5)"),
            _c("flag_id", None, "0 - GALAH spectra, 1 - APOGEE spectra", "int64"),
            _c("flag_Cannon_dist", None, "flag for quality of Cannon estimates (0/1)", "int64"),
            _c("flag_spectra", None, "flag for problematic spectra", "int64"),
            _c("flag_sp_aspcap", None, "survey pipeline flag (GALAH flag_sp / APOGEE ASPCAPFLAG)", "int64"),
            _c("flag_survey", None, "invalid survey pipeline estimates (1)", "int64"),
            _c("flag_training", None, "star belonging to the training set (0)", "int64"),
        ),
        (
            LabelPattern("{label}", "label", "survey {what}"),
            LabelPattern("e_{label}", "label", "survey {what} error"),
        ),
        (
            _c("snr", None, "survey signal-to-noise ratio"),
            _c("r_est", "pc", "estimated distance from Bailer-Jones+21"),
            _c("r_lo", "pc", "lower bound from Bailer-Jones+21"),
            _c("r_hi", "pc", "higher bound from Bailer-Jones+21"),
            _c("parallax", "mas", "Gaia EDR3 parallax"),
            _c("e_parallax", "mas", "Gaia EDR3 parallax error"),
        ),
    ),
)

#: The catalogue schemas by name.
SCHEMAS = {"wheeler2020": WHEELER2020, "nandakumar2022": NANDAKUMAR2022}


def _get_schema(schema):
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
        e.g. ``['teff', 'logg', 'vmic', 'fe_h', 'mg_fe']`` (Wheeler) or
        ``['teff', 'logg', 'feh', 'alphafe', 'vmicro', 'vbroad']`` (Nandakumar).
    schema : str or Schema

    Returns
    -------
    list of ColumnSpec, in schema order (Cannonade's common extra columns last).
    """
    return _get_schema(schema).columns(list(label_names))


def infer_label_names(colnames, schema="wheeler2020"):
    """Guess the label names from a table's columns (when not given).

    Wheeler: a column is a label if it is a known label name (teff, logg, ...), or
    looks like ``x_fe`` / ``x_h``, and is not itself a companion column.
    Nandakumar: every ``<label>Cann`` column except ``snrCann``.
    """
    s = _get_schema(schema)
    cols = list(colnames)
    if s.name == "nandakumar2022":
        return [c[:-4] for c in cols if c.endswith("Cann") and not c.startswith("e_") and c != "snrCann"]
    out = []
    for c in cols:
        if c.startswith(("e_", "chi2_")) or c.endswith("_extrap"):
            continue
        if c.lower() in _KNOWN_LABELS or _ABUNDANCE.match(c) or _X_H.match(c):
            out.append(c)
    return out


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
_FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


def _format_of(path, fmt):
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in ("fits", "parquet"):
            raise CatalogueError(f"unknown catalogue format {fmt!r} for {path}: use 'fits' or 'parquet'")
        return fmt
    name = str(path).lower()
    if name.endswith(_FITS_SUFFIXES):
        return "fits"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    raise CatalogueError(f"cannot tell the catalogue format of {path} from its suffix; use .fits or .parquet, or pass fmt=")


def _as_table(table):
    from astropy.table import Table

    if type(table).__module__.startswith("pandas"):
        return Table.from_pandas(table)
    if not isinstance(table, Table):
        raise CatalogueError(f"expected an astropy Table or pandas DataFrame, got {type(table).__name__}")
    return table


def _kind_ok(dtype, spec_dtype):
    k = dtype.kind
    return {
        "float64": k in "fiu",
        "int64": k in "iu",
        "bool": k == "b",
        "str": k in "USO",
    }.get(spec_dtype, True)


def _conform(col, spec, path):
    """Cast a column to its schema kind where that is lossless; else CatalogueError."""
    from astropy.table import MaskedColumn

    data = np.ma.getdata(col)
    if _kind_ok(data.dtype, spec.dtype):
        if spec.dtype == "float64" and data.dtype.kind in "iu":
            return np.where(np.ma.getmaskarray(col), np.nan, data.astype(np.float64))
        if spec.dtype == "str" and data.dtype.kind == "O":
            return col.astype(str)
        return col
    if spec.dtype == "bool" and data.dtype.kind in "iu" and np.all(np.isin(data, (0, 1))):
        return MaskedColumn(data.astype(bool), mask=np.ma.getmaskarray(col)) if hasattr(col, "mask") else data.astype(bool)
    if spec.dtype == "int64" and data.dtype.kind == "b":
        return data.astype(np.int64)
    raise CatalogueError(
        f"column {spec.name!r} of {path} has dtype {data.dtype}, but schema {spec.dtype!r} wants {spec.dtype} ({spec.description})"
    )


def _prepare(table, schema, label_names, path):
    """Reorder, conform dtypes and fill units/descriptions. Returns (Table, specs dict)."""
    import astropy.units as u
    from astropy.table import Table

    t = _as_table(table)
    s = _get_schema(schema)
    if label_names is None:
        label_names = infer_label_names(t.colnames, s)
    specs = {c.name: c for c in s.columns(label_names)}
    names = [n for n in specs if n in t.colnames] + [n for n in t.colnames if n not in specs]
    out = Table(meta=dict(t.meta))
    for name in names:
        col = t[name]
        unit, desc = getattr(col, "unit", None), getattr(col.info, "description", None)
        spec = specs.get(name)
        if spec is not None:
            col = _conform(col, spec, path)
        out[name] = col
        c = out[name]
        c.unit = unit if unit is not None else (u.Unit(spec.unit) if spec is not None and spec.unit is not None else None)
        c.description = desc if desc else (spec.description if spec is not None else None)
    return out, s


def _unit_string(unit):
    return None if unit is None else unit.to_string()


def _meta_json(meta):
    """The JSON-serialisable part of a table's meta."""
    keep = {}
    for k, v in dict(meta).items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        keep[str(k)] = v
    return keep


def _write_fits(t, tmp, schema):
    from astropy.io import fits

    units = {n: t[n].unit for n in t.colnames}
    bare = t.copy(copy_data=False)
    for n in bare.colnames:
        bare[n].unit = None  # written by hand below: FITS cannot express e.g. 'dex'
    bare.meta = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu = fits.table_to_hdu(bare)
    hdu.name = "CATALOGUE"
    h = hdu.header
    for i, n in enumerate(t.colnames, start=1):
        unit = units[n]
        if unit is not None:
            try:
                h[f"TUNIT{i}"] = unit.to_string("fits")
            except ValueError:
                h[f"TUNIT{i}"] = unit.to_string()  # read back by read_catalogue (generic format)
        if t[n].description:
            h[f"TCOMM{i}"] = t[n].description
    h["CNDSCHEM"] = (schema.name, "Cannonade catalogue schema")
    h["CNDREF"] = (schema.reference[:60], "schema reference")
    h["CNDFMTV"] = (FORMAT_VERSION, "Cannonade catalogue format version")
    h["CNDMETA"] = (json.dumps(_meta_json(t.meta)), "table meta (JSON)")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)


def _arrow_array(col):
    import pyarrow as pa

    data = np.ma.getdata(col)
    mask = np.ma.getmaskarray(col)
    if data.ndim > 2:
        raise CatalogueError(f"column {col.info.name!r} has {data.ndim} dimensions; Parquet catalogues take at most 2")
    if data.ndim == 2:
        flat = pa.array(np.ascontiguousarray(data).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, data.shape[1])
    if data.dtype.kind == "f":
        return pa.array(np.where(mask, np.nan, data))
    if data.dtype.kind == "O":
        data = data.astype(str)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    return pa.array(data, mask=mask if mask.any() else None)


def _arrow_table(t, schema):
    import pyarrow as pa

    arrays, fields = [], []
    for n in t.colnames:
        arr = _arrow_array(t[n])
        md = {}
        if t[n].unit is not None:
            md[b"unit"] = t[n].unit.to_string().encode()
        if t[n].description:
            md[b"description"] = str(t[n].description).encode()
        arrays.append(arr)
        fields.append(pa.field(n, arr.type, metadata=md or None))
    file_md = {
        "schema": schema.name,
        "reference": schema.reference,
        "format_version": FORMAT_VERSION,
        "columns": {n: {"unit": _unit_string(t[n].unit), "description": t[n].description} for n in t.colnames},
        "meta": _meta_json(t.meta),
    }
    sch = pa.schema(fields, metadata={b"cannonade": json.dumps(file_md).encode()})
    return pa.Table.from_arrays(arrays, schema=sch)


def write_catalogue(table, path, schema="wheeler2020", fmt=None, label_names=None):
    """Write a catalogue as FITS or Parquet, atomically, with units and descriptions.

    Parameters
    ----------
    table : astropy Table or pandas DataFrame
        Per-star or per-observation rows. Schema columns are cast to the schema's
        kind where lossless (int -> float, 0/1 int -> bool, object -> str), units and
        descriptions are filled from the schema where the column has none (a unit a
        column already carries is kept). Extra columns are kept, after the schema's.
    path : str or Path
        ``.fits`` (astropy; units in TUNITn, descriptions in TCOMMn, schema name in
        CNDSCHEM) or ``.parquet`` (pyarrow; units/descriptions in each field's
        metadata and, as JSON, in the file metadata key ``cannonade``).
    schema : str or Schema
        ``'wheeler2020'`` or ``'nandakumar2022'``.
    fmt : {'fits', 'parquet'} or None
        Overrides the suffix.
    label_names : sequence of str or None
        The label set (expands the per-label patterns); inferred from the columns if None.

    Returns
    -------
    Path of the written file. A failing write leaves any previous file intact.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    fmt = _format_of(path, fmt)
    t, s = _prepare(table, schema, label_names, path)
    with atomic_path(path) as tmp:
        if fmt == "fits":
            _write_fits(t, tmp, s)
        else:
            pq.write_table(_arrow_table(t, s), tmp)
    log.info("wrote %d rows x %d columns to %s", len(t), len(t.colnames), path)
    return path


class CatalogueWriter:
    """Stream a large catalogue to disk chunk by chunk (flat memory for Parquet).

    Parquet: each :meth:`write` appends row groups; the first chunk fixes the column
    set and types, later chunks are cast to it. FITS: chunks are collected and
    written on close (memory grows with the catalogue; prefer Parquet at scale).
    The file appears atomically when the ``with`` block exits without error.

    Examples
    --------
    >>> with CatalogueWriter("stars.parquet", label_names=labels) as w:  # doctest: +SKIP
    ...     for chunk in chunks:
    ...         w.write(chunk)
    """

    def __init__(self, path, schema="wheeler2020", fmt=None, label_names=None):
        self.path = Path(path)
        self.fmt = _format_of(self.path, fmt)
        self.schema = _get_schema(schema)
        self.label_names = None if label_names is None else list(label_names)
        self.n_rows = 0
        self._ctx = None
        self._tmp = None
        self._writer = None
        self._arrow_schema = None
        self._chunks = []

    def __enter__(self):
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        return self

    def write(self, table):
        """Append the rows of ``table`` (astropy Table or DataFrame)."""
        import pyarrow.parquet as pq

        if self._ctx is None:
            raise CatalogueError(f"CatalogueWriter for {self.path} used outside its 'with' block")
        t, s = _prepare(table, self.schema, self.label_names, self.path)
        if self.label_names is None:
            self.label_names = infer_label_names(t.colnames, s)
        if self.fmt == "fits":
            self._chunks.append(t)
        else:
            at = _arrow_table(t, s)
            if self._writer is None:
                self._arrow_schema = at.schema
                self._writer = pq.ParquetWriter(self._tmp, at.schema)
            else:
                if at.schema.names != self._arrow_schema.names:
                    raise CatalogueError(
                        f"chunk written to {self.path} has columns {at.schema.names}, the first chunk had {self._arrow_schema.names}"
                    )
                at = at.cast(self._arrow_schema)
            self._writer.write_table(at)
        self.n_rows += len(t)

    def __exit__(self, exc_type, exc, tb):
        from astropy.table import vstack

        try:
            if exc_type is None:
                if self.fmt == "fits":
                    t = vstack(self._chunks, metadata_conflicts="silent") if self._chunks else _prepare(_empty(), self.schema, [], self.path)[0]
                    _write_fits(t, self._tmp, self.schema)
                elif self._writer is None:
                    import pyarrow.parquet as pq

                    pq.write_table(_arrow_table(_empty(), self.schema), self._tmp)
        finally:
            if self._writer is not None:
                self._writer.close()
            ctx, self._ctx = self._ctx, None
        return ctx.__exit__(exc_type, exc, tb)


def _empty():
    from astropy.table import Table

    return Table()


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def _parse_unit(s):
    import astropy.units as u

    if s is None or str(s).strip() == "":
        return None
    for fmt in ("generic", "fits"):
        try:
            return u.Unit(s, format=fmt)
        except ValueError:
            continue
    return u.Unit(s, parse_strict="silent")


def _native(col):
    data = np.ma.getdata(col)
    if data.dtype.byteorder not in ("=", "|") and data.dtype.byteorder != ("<" if np.little_endian else ">"):
        return col.astype(data.dtype.newbyteorder("="))
    return col


def _read_fits(path):
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path) as hdul:
        hdu = hdul["CATALOGUE"] if "CATALOGUE" in hdul else next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
        if hdu is None:
            raise CatalogueError(f"{path} has no binary-table HDU")
        header = hdu.header.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(hdu, character_as_bytes=False, mask_invalid=False, unit_parse_strict="silent")
    out = Table()
    for i, n in enumerate(t.colnames, start=1):
        out[n] = _native(t[n])
        out[n].unit = _parse_unit(header.get(f"TUNIT{i}"))
        out[n].description = header.get(f"TCOMM{i}")
    meta = {}
    try:
        meta.update(json.loads(header.get("CNDMETA", "{}")))
    except json.JSONDecodeError:
        pass
    meta["schema"] = header.get("CNDSCHEM")
    meta["format_version"] = header.get("CNDFMTV")
    out.meta.update(meta)
    return out


def _read_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import MaskedColumn, Table

    at = pq.read_table(path)
    md = at.schema.metadata or {}
    info = json.loads(md[b"cannonade"]) if b"cannonade" in md else {}
    out = Table()
    for field, col in zip(at.schema, at.columns):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        fmd = field.metadata or {}
        if pa.types.is_fixed_size_list(field.type):
            width = field.type.list_size
            data = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            out[field.name] = data
        else:
            mask = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                data = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=str)
            elif mask is not None and pa.types.is_boolean(field.type):
                data = col.fill_null(False).to_numpy(zero_copy_only=False)
            elif mask is not None and pa.types.is_integer(field.type):
                data = col.fill_null(0).to_numpy(zero_copy_only=False)
            else:
                data = col.to_numpy(zero_copy_only=False)
            out[field.name] = MaskedColumn(data, mask=mask) if mask is not None and mask.any() else data
        unit = fmd.get(b"unit")
        out[field.name].unit = _parse_unit(unit.decode() if unit else None)
        desc = fmd.get(b"description")
        out[field.name].description = desc.decode() if desc else None
    out.meta.update(info.get("meta", {}))
    out.meta["schema"] = info.get("schema")
    out.meta["format_version"] = info.get("format_version")
    return out


def read_catalogue(path, fmt=None):
    """Read a catalogue written by :func:`write_catalogue` (FITS or Parquet).

    Returns
    -------
    astropy Table
        Columns in file order with their units and descriptions; integer/bool/str
        columns with missing values are masked, floats use NaN; ``meta['schema']``
        names the schema.
    """
    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"catalogue {path} does not exist")
    fmt = _format_of(path, fmt)
    try:
        return _read_fits(path) if fmt == "fits" else _read_parquet(path)
    except CatalogueError:
        raise
    except Exception as exc:  # corrupt / truncated file
        raise CatalogueError(f"cannot read catalogue {path}: {exc}") from exc
