"""Catalogue writers: FITS and Parquet, atomic, with units and descriptions.

:func:`write_catalogue` writes an astropy Table (or pandas DataFrame) in the format the
file suffix names. Columns are written in schema order, then any extra columns in the
table's order (kept silently); schema columns the table lacks are simply absent, so the
catalogue grows with the pipeline. A per-star and a per-observation catalogue are two
calls with the same schema. :class:`CatalogueWriter` streams a large catalogue chunk by
chunk (Parquet row groups, flat memory).

File layout (read back by :func:`cannonade.catalogue.readers.read_catalogue`):

* FITS: one ``BinTableHDU`` named ``CATALOGUE``; units in ``TUNITn`` (FITS syntax;
  ``''`` for a dimensionless column), descriptions in ``TCOMMn``, schema in ``CNDSCHEM``,
  layout version in ``CNDFMTV``, the JSON-serialisable table meta in ``CNDMETA``, the
  provenance record in ``CNDVERS``, ``CNDDATE``, ``CNDRECIP``, ``CNDCONF``, ``CNDTRAIN``,
  ``CNDSTORE`` and, whole, ``CNDPROV`` (:func:`cannonade.provenance.provenance_cards`).
  A float column whose unit the FITS standard cannot express (``dex``) has no ``TUNITn``:
  its unit is in ``CNDUNITS`` (JSON ``{column: unit}``) and in astropy's serialized-column
  block (``COMMENT`` cards, which also repeat the descriptions), so a plain
  ``astropy.table.Table.read`` restores units and descriptions without a ``UnitsWarning``.
* Parquet: each field's metadata has ``unit`` (``""`` for a dimensionless column) and
  ``description``; the file metadata key ``cannonade`` holds JSON ``{schema, reference,
  format_version, columns, meta}``, the key ``cannonade.provenance``
  (:data:`cannonade.provenance.PROVENANCE_KEY`) the provenance record as JSON, and
  astropy's own keys (``table_meta_yaml``, ``table::len::<column>``) the units,
  descriptions, meta and provenance again, so a plain ``astropy.table.Table.read``
  restores them without a warning.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from cannonade.catalogue.formats import FORMAT_VERSION, catalogue_format, fits_unit, parse_unit, unit_string
from cannonade.catalogue.schemas import get_schema, infer_label_names
from cannonade.exceptions import CatalogueError
from cannonade.provenance import PROVENANCE_KEY, provenance_cards
from cannonade.tables import as_table
from cannonade.util import atomic_path

__all__ = ["CatalogueWriter", "write_catalogue"]

log = logging.getLogger(__name__)

# astropy's warning when a unit has no FITS form; the serialized-column block keeps it.
_NO_FITS_UNIT = r"The unit '.*' could not be saved in native FITS format"


# ----------------------------------------------------------------------------------------
# conforming a table to its schema
# ----------------------------------------------------------------------------------------
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


def conform_table(table, schema, label_names, path):
    """Reorder, conform dtypes and fill units/descriptions. Returns (Table, Schema)."""
    import astropy.units as u
    from astropy.table import Table

    t = as_table(table)
    s = get_schema(schema)
    if label_names is None:
        label_names = infer_label_names(t.colnames, s)
    specs = {c.name: c for c in s.columns(label_names)}
    names = [n for n in specs if n in t.colnames] + [n for n in t.colnames if n not in specs]
    out = Table(meta=dict(t.meta))
    for name in names:
        col = t[name]
        unit, desc = getattr(col, "unit", None), getattr(col.info, "description", None)
        if isinstance(unit, u.UnrecognizedUnit):  # e.g. 'dex' from a plain FITS read of an older file
            unit = parse_unit(unit.name)
        spec = specs.get(name)
        if spec is not None:
            col = _conform(col, spec, path)
        out[name] = col
        c = out[name]
        c.unit = unit if unit is not None else (u.Unit(spec.unit) if spec is not None and spec.unit is not None else None)
        c.description = desc if desc else (spec.description if spec is not None else None)
    return out, s


def _meta_json(meta):
    """The JSON-serialisable part of a table's meta (its provenance is written on its own)."""
    keep = {}
    for k, v in dict(meta).items():
        if k == "provenance":
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        keep[str(k)] = v
    return keep


def provenance_record(t, provenance):
    """The provenance record to write: ``provenance``, else the table's ``meta['provenance']``.

    Returns a JSON-able dict, or None when there is none.

    Raises
    ------
    CatalogueError
        ``provenance`` is not a dict.
    """
    prov = provenance if provenance is not None else t.meta.get("provenance")
    if prov is None:
        return None
    if not isinstance(prov, dict):
        raise CatalogueError(f"provenance must be a dict (cannonade.provenance.provenance()), not {type(prov).__name__}")
    return json.loads(json.dumps(prov, default=str))


# ----------------------------------------------------------------------------------------
# FITS
# ----------------------------------------------------------------------------------------
def _quantity_unit(col):
    """True where ``col``'s unit has no FITS form (e.g. dex) and astropy can carry it instead.

    Float columns with a unit astropy knows only: astropy restores a unit as a Quantity,
    which would turn integers into floats.
    """
    import astropy.units as u

    unit = col.unit
    if unit is None or fits_unit(unit) is not None or isinstance(unit, u.UnrecognizedUnit):
        return False
    if np.ma.getdata(col).dtype.kind != "f":
        return False
    try:
        return u.Unit(unit.to_string()) == unit
    except ValueError:
        return False


def _astropy_column_cards(t, quantities):
    """astropy's serialized-column COMMENT cards for ``t``: descriptions, and the units of
    the columns in ``quantities`` (which FITS cannot express), as astropy writes them.

    The cards come from writing an empty copy of those columns with astropy's own FITS
    writer, so they follow whatever serialization the installed astropy reads back.
    """
    import astropy.units as u
    from astropy.io import fits
    from astropy.table import QTable
    from astropy.utils.exceptions import AstropyUserWarning

    empty = QTable()
    for n in t.colnames:
        col = t[n]
        if n not in quantities and not col.info.description:
            continue
        data = np.asarray(np.ma.getdata(col))[:0]  # floats carry missing values as NaN
        if n in quantities:
            data = u.Quantity(data, col.unit, dtype=data.dtype, subok=True)  # subok: Dex for dex(cm / s2)
        empty[n] = data
        empty[n].info.description = col.info.description or None
    if not empty.colnames:
        return []
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_FITS_UNIT, category=AstropyUserWarning)
        empty.write(buf, format="fits")
    buf.seek(0)
    with fits.open(buf) as hdul:
        return [card for card in hdul[1].header.cards if card.keyword == "COMMENT"]


def _set_card(header, key, value, comment):
    """``header[key] = value``; the comment only where it fits beside the value (a long text
    continues over CONTINUE cards, which have no room for it). Text is made ASCII."""
    if isinstance(value, str):
        value = value.encode("ascii", "backslashreplace").decode("ascii")
        if len(value) + len(comment) > 60:
            header[key] = value
            return
    header[key] = (value, comment)


def _set_json_card(header, key, obj, comment):
    """``header[key]`` = JSON of ``obj`` (see :func:`_set_card`)."""
    _set_card(header, key, json.dumps(obj), comment)


def _fits_text(col):
    """A text column holding non-ASCII characters (a model called 'mödel', an id from a non-ASCII file
    name) as its UTF-8 bytes, which FITS can hold (its text is ASCII; read back as bytes and decoded as
    UTF-8); None for any other column."""
    data = np.ma.getdata(col)
    if data.dtype.kind != "U":
        return None
    try:
        np.char.encode(data, "ascii")
    except UnicodeEncodeError:
        mask = np.ma.getmask(col)
        encoded = np.char.encode(data, "utf-8")
        return np.ma.array(encoded, mask=mask) if mask is not np.ma.nomask and np.any(mask) else encoded
    return None


def _write_fits(t, tmp, schema, header_cards=(), provenance=None):
    from astropy.io import fits

    quantities = [n for n in t.colnames if _quantity_unit(t[n])]
    bare = t.copy(copy_data=False)
    for n in bare.colnames:
        bare[n].unit = None  # written by hand below
    bare.meta = {}
    for n in bare.colnames:
        text = _fits_text(bare[n])
        if text is not None:
            bare[n] = text
    hdu = fits.table_to_hdu(bare)
    hdu.name = "CATALOGUE"
    h = hdu.header
    for i, n in enumerate(t.colnames, start=1):
        unit = t[n].unit
        if unit is not None and n not in quantities:
            # FITS syntax ('' for dimensionless); else astropy's generic string (read back by read_catalogue)
            text = fits_unit(unit)
            h[f"TUNIT{i}"] = text if text is not None else unit.to_string()
        if t[n].description:
            h[f"TCOMM{i}"] = t[n].description
    h["CNDSCHEM"] = (schema.name, "Cannonade catalogue schema")
    h["CNDREF"] = (schema.reference[:60], "schema reference")
    h["CNDFMTV"] = (FORMAT_VERSION, "Cannonade catalogue format version")
    _set_json_card(h, "CNDMETA", _meta_json(t.meta), "table meta (JSON)")
    if quantities:
        _set_json_card(h, "CNDUNITS", {n: t[n].unit.to_string() for n in quantities}, "units FITS cannot express (JSON)")
    for key, value, comment in provenance_cards(provenance) if provenance else ():
        _set_card(h, key, value, comment)
    for card in _astropy_column_cards(t, quantities):
        h.append(card)
    for key, value, comment in header_cards:
        h[key] = (value, comment)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)


# ----------------------------------------------------------------------------------------
# Parquet
# ----------------------------------------------------------------------------------------
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
    if data.dtype.kind == "S":  # FITS text comes back as bytes: Parquet holds it as text, not binary
        data = np.char.decode(data, "utf-8")
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    return pa.array(data, mask=mask if mask.any() else None)


def _string_lengths(t, arrays):
    """{column: longest text in characters} of the text columns (astropy's ``table::len::``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for n, arr in zip(t.colnames, arrays):
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            longest = pc.max(pc.utf8_length(arr)).as_py() if len(arr) else None
            out[n] = max(1, longest or 0)
    return out


def _astropy_yaml(t, provenance):
    """astropy's ``table_meta_yaml`` of ``t``: column types, units, descriptions and meta.

    What :func:`astropy.table.Table.read` of a Parquet file restores; dimensionless columns
    carry no unit there (as in a FITS file), the provenance is in the meta.
    """
    import astropy.units as u
    from astropy.table import Table
    from astropy.table import meta as table_meta

    empty = Table()
    for n in t.colnames:
        data = np.asarray(np.ma.getdata(t[n]))[:0]
        if data.dtype.kind in "SO":
            data = data.astype(str)  # written as Parquet text
        empty[n] = data
        unit = t[n].unit
        if unit is not None and unit != u.dimensionless_unscaled and not isinstance(unit, u.UnrecognizedUnit):
            empty[n].unit = unit
        empty[n].description = t[n].description or None
    empty.meta = _meta_json(t.meta)
    if provenance:
        empty.meta["provenance"] = provenance
    return "\n".join(table_meta.get_yaml_from_table(empty))


def arrow_table(t, schema, provenance=None):
    """The pyarrow Table of ``t`` with its file metadata (see the module docstring)."""
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
        "columns": {n: {"unit": unit_string(t[n].unit), "description": t[n].description} for n in t.colnames},
        "meta": _meta_json(t.meta),
    }
    md = {"cannonade": json.dumps(file_md), "table_meta_yaml": _astropy_yaml(t, provenance)}
    if provenance:
        md[PROVENANCE_KEY] = json.dumps(provenance)
    md.update({f"table::len::{n}": str(k) for n, k in _string_lengths(t, arrays).items()})
    sch = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in md.items()})
    return pa.Table.from_arrays(arrays, schema=sch)


# ----------------------------------------------------------------------------------------
# the public writers
# ----------------------------------------------------------------------------------------
def write_catalogue(table, path, schema="wheeler2020", fmt=None, label_names=None, header_cards=(), provenance=None):
    """Write a catalogue as FITS or Parquet, atomically, with units, descriptions and provenance.

    Parameters
    ----------
    table : astropy Table or pandas DataFrame
        Per-star or per-observation rows. Schema columns are cast to the schema's
        kind where lossless (int -> float, 0/1 int -> bool, object -> str); units and
        descriptions are filled from the schema where the column has none (a unit or
        description a column already carries is kept). Extra columns are kept, after
        the schema's.
    path : str or Path
        ``.fits`` (units in TUNITn, descriptions in TCOMMn, schema name in CNDSCHEM,
        provenance in CND* cards, plus astropy's serialized-column block) or ``.parquet``
        (units/descriptions in each field's metadata and, as JSON, in the file metadata
        key ``cannonade``; provenance under ``cannonade.provenance``).
    schema : str or Schema
        ``'wheeler2020'`` or ``'nandakumar2022'``.
    fmt : {'fits', 'parquet'} or None
        Overrides the suffix.
    label_names : sequence of str or None
        The label set (expands the per-label patterns); inferred from the columns if None.
    header_cards : sequence of (keyword, value, comment)
        Extra FITS header cards (e.g. the flag bits, :func:`cannonade.flags.fits_header_cards`);
        FITS only (put what Parquet readers need into ``table.meta``).
    provenance : dict, optional
        The file's provenance record (:func:`cannonade.provenance.provenance`): FITS cards
        ``CNDVERS``, ``CNDDATE``, ``CNDRECIP``, ``CNDCONF``, ``CNDTRAIN``, ``CNDSTORE``,
        ``CNDPROV`` (:func:`cannonade.provenance.provenance_cards`); Parquet metadata key
        :data:`cannonade.provenance.PROVENANCE_KEY` (JSON). Default: the table's
        ``meta['provenance']`` if any (what :func:`read_catalogue` returns), else none.

    Returns
    -------
    Path
        The written file. A failing write leaves any previous file intact.

    Raises
    ------
    CatalogueError
        Unknown format or suffix (CSV included), unknown schema, a schema column whose
        dtype cannot be cast losslessly (names the column and the file), or a provenance
        that is not a dict.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    fmt = catalogue_format(path, fmt)
    t, s = conform_table(table, schema, label_names, path)
    prov = provenance_record(t, provenance)
    with atomic_path(path) as tmp:
        if fmt == "fits":
            _write_fits(t, tmp, s, header_cards, prov)
        else:
            pq.write_table(arrow_table(t, s, prov), tmp)
    log.info("wrote %d rows x %d columns to %s", len(t), len(t.colnames), path)
    return path


def _redeclare_string_lengths(path, lengths):
    """Rewrite the Parquet file ``path`` with ``lengths`` as astropy's ``table::len::`` keys.

    Row group by row group (flat memory); for a streamed file whose later chunks hold longer
    text than its first, whose lengths the file's schema declared.
    """
    import pyarrow.parquet as pq

    out = Path(str(path) + ".len")
    src = pq.ParquetFile(path)
    try:
        md = dict(src.schema_arrow.metadata or {})
        md.update({f"table::len::{n}".encode(): str(k).encode() for n, k in lengths.items()})
        sch = src.schema_arrow.with_metadata(md)
        with pq.ParquetWriter(out, sch) as w:
            for i in range(src.num_row_groups):
                w.write_table(src.read_row_group(i).replace_schema_metadata(md))
    finally:
        src.close()
    try:
        out.replace(path)
    finally:
        out.unlink(missing_ok=True)


class CatalogueWriter:
    """Stream a large catalogue to disk chunk by chunk (flat memory for Parquet).

    Parquet: each :meth:`write` appends row groups; the first chunk fixes the column
    set and types, later chunks are cast to it. FITS: chunks are collected and
    written on close (memory grows with the catalogue; prefer Parquet at scale).
    The file appears atomically when the ``with`` block exits without error.

    Parameters
    ----------
    path : str or Path
    schema : str or Schema
    fmt : {'fits', 'parquet'} or None
        Overrides the suffix.
    label_names : sequence of str or None
        Inferred from the first chunk's columns if None.
    header_cards : sequence of (keyword, value, comment)
        Extra FITS header cards (FITS only), as in :func:`write_catalogue`.
    provenance : dict, optional
        The file's provenance record, as in :func:`write_catalogue` (default: the first
        chunk's ``meta['provenance']``, if any).

    Examples
    --------
    >>> with CatalogueWriter("stars.parquet", label_names=labels) as w:  # doctest: +SKIP
    ...     for chunk in chunks:
    ...         w.write(chunk)
    """

    def __init__(self, path, schema="wheeler2020", fmt=None, label_names=None, header_cards=(), provenance=None):
        self.path = Path(path)
        self.fmt = catalogue_format(self.path, fmt)
        self.schema = get_schema(schema)
        self.label_names = None if label_names is None else list(label_names)
        self.header_cards = tuple(header_cards)
        self.provenance = provenance
        self.n_rows = 0
        self._ctx = None
        self._tmp = None
        self._writer = None
        self._arrow_schema = None
        self._lengths = {}
        self._chunks = []

    def __enter__(self):
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        return self

    def write(self, table):
        """Append the rows of ``table`` (astropy Table or DataFrame).

        Raises
        ------
        CatalogueError
            Used outside the ``with`` block, or (Parquet) a chunk whose columns differ
            from the first chunk's.
        """
        import pyarrow.parquet as pq

        if self._ctx is None:
            raise CatalogueError(f"CatalogueWriter for {self.path} used outside its 'with' block")
        t, s = conform_table(table, self.schema, self.label_names, self.path)
        if self.label_names is None:
            self.label_names = infer_label_names(t.colnames, s)
        if self.provenance is None and self.n_rows == 0 and not self._chunks:
            self.provenance = provenance_record(t, None)
        if self.fmt == "fits":
            self._chunks.append(t)
        else:
            at = arrow_table(t, s, provenance_record(t, self.provenance))
            if self._writer is None:
                self._arrow_schema = at.schema
                self._writer = pq.ParquetWriter(self._tmp, at.schema)
            else:
                if at.schema.names != self._arrow_schema.names:
                    raise CatalogueError(
                        f"chunk written to {self.path} has columns {at.schema.names}, the first chunk had {self._arrow_schema.names}"
                    )
                at = at.cast(self._arrow_schema)
            for n, k in _string_lengths(t, at.columns).items():
                self._lengths[n] = max(k, self._lengths.get(n, 0))
            self._writer.write_table(at)
        self.n_rows += len(t)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._writer is not None:
                self._writer.close()
            ctx, self._ctx = self._ctx, None
        return ctx.__exit__(exc_type, exc, tb)

    def _finish(self):
        """Write what only the end can: the FITS file, an empty Parquet file, or longer text lengths."""
        from astropy.table import Table, vstack

        if self.fmt == "fits":
            if self._chunks:
                t = vstack(self._chunks, metadata_conflicts="silent")
            else:
                t = conform_table(Table(), self.schema, [], self.path)[0]
            _write_fits(t, self._tmp, self.schema, self.header_cards, provenance_record(t, self.provenance))
        elif self._writer is None:
            import pyarrow.parquet as pq

            t = conform_table(Table(), self.schema, [], self.path)[0]
            pq.write_table(arrow_table(t, self.schema, provenance_record(t, self.provenance)), self._tmp)
        else:
            md = self._arrow_schema.metadata or {}
            declared = {n: int(md.get(f"table::len::{n}".encode(), b"0")) for n in self._lengths}
            if any(k > declared[n] for n, k in self._lengths.items()):
                self._writer.close()
                self._writer = None
                _redeclare_string_lengths(self._tmp, self._lengths)
