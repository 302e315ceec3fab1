"""Reading a catalogue written by :mod:`cannonade.catalogue.writers` (FITS or Parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cannonade.catalogue.formats import FORMAT_VERSION, catalogue_format, parse_unit
from cannonade.catalogue.schemas import SCHEMAS, infer_label_names
from cannonade.exceptions import CatalogueError
from cannonade.provenance import PROVENANCE_KEY
from cannonade.tables import check_parquet_footer

__all__ = ["read_catalogue"]


def _native(col):
    """``col`` in the machine's byte order (FITS data are big-endian)."""
    data = np.ma.getdata(col)
    if data.dtype.byteorder not in ("=", "|") and data.dtype.byteorder != ("<" if np.little_endian else ">"):
        return col.astype(data.dtype.newbyteorder("="))
    return col


def _json_object(text):
    """The JSON object in ``text`` ({} when absent, unreadable or not an object)."""
    if isinstance(text, bytes):
        text = text.decode()
    try:
        value = json.loads(text or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _json_card(header, key):
    """The JSON object in header keyword ``key`` ({} when absent or unreadable)."""
    return _json_object(header.get(key))


def _read_fits(path):
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path) as hdul:
        hdu = hdul["CATALOGUE"] if "CATALOGUE" in hdul else next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
        if hdu is None:
            raise CatalogueError(f"{path} has no binary-table HDU")
        # the rows the header declares must be in the file (checked before any is read)
        h = hdu.header
        declared = int(h.get("NAXIS1", 0)) * int(h.get("NAXIS2", 0)) + int(h.get("PCOUNT", 0))
        start = hdul.fileinfo(hdul.index(hdu))["datLoc"]
        if start + declared > Path(path).stat().st_size:
            raise CatalogueError(f"{path}: HDU {hdu.name or hdul.index(hdu)} declares {h.get('NAXIS2')} rows ({declared} bytes) "
                                 f"but the file holds {Path(path).stat().st_size - start} bytes of data (truncated or crafted)")
        header = hdu.header.copy()
        if "COMMENT" in hdu.header:
            # astropy's serialized-column block (for plain astropy readers): the columns are
            # read as written, units and descriptions come from the cards read below
            del hdu.header["COMMENT"]
        # units that are not FITS (e.g. 'dex' in older files) are parsed below, generic first
        t = Table.read(hdu, character_as_bytes=False, mask_invalid=False, unit_parse_strict="silent")
    other_units = _json_card(header, "CNDUNITS")
    out = Table()
    for i, n in enumerate(t.colnames, start=1):
        out[n] = _native(t[n])
        out[n].unit = parse_unit(header.get(f"TUNIT{i}", other_units.get(n)))
        out[n].description = header.get(f"TCOMM{i}")
    meta = _json_card(header, "CNDMETA")
    meta["schema"] = header.get("CNDSCHEM")
    meta["format_version"] = header.get("CNDFMTV")
    prov = _json_card(header, "CNDPROV")
    if prov:
        meta["provenance"] = prov
    out.meta.update(meta)
    return out


def _arrow_column_data(field, col):
    """(data, mask or None) of one Parquet column; missing cells filled for the mask."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(field.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, field.type.list_size), None
    mask = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        data = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=str)
    elif mask is not None and pa.types.is_boolean(field.type):
        data = col.fill_null(False).to_numpy(zero_copy_only=False)
    elif mask is not None and pa.types.is_integer(field.type):
        data = col.fill_null(0).to_numpy(zero_copy_only=False)
    else:
        data = col.to_numpy(zero_copy_only=False)
    return data, mask


def _read_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import MaskedColumn, Table

    check_parquet_footer(path)  # nothing the footer declares is allocated before it is checked
    at = pq.read_table(path)
    md = at.schema.metadata or {}
    info = json.loads(md[b"cannonade"]) if b"cannonade" in md else {}
    out = Table()
    for field, col in zip(at.schema, at.columns):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        data, mask = _arrow_column_data(field, col)
        out[field.name] = MaskedColumn(data, mask=mask) if mask is not None and mask.any() else data
        fmd = field.metadata or {}
        unit = fmd.get(b"unit")
        out[field.name].unit = parse_unit(unit.decode() if unit else None)
        desc = fmd.get(b"description")
        out[field.name].description = desc.decode() if desc else None
    out.meta.update(info.get("meta", {}))
    out.meta["schema"] = info.get("schema")
    out.meta["format_version"] = info.get("format_version")
    prov = _json_object(md.get(PROVENANCE_KEY.encode()))
    if prov:
        out.meta["provenance"] = prov
    return out


def read_catalogue(path, fmt=None):
    """Read a catalogue written by :func:`~cannonade.catalogue.writers.write_catalogue`.

    Parameters
    ----------
    path : str or Path
        FITS or Parquet, told by the suffix.
    fmt : {'fits', 'parquet'} or None
        Overrides the suffix.

    Returns
    -------
    astropy Table
        Columns in file order with their units and descriptions (a dimensionless column
        has no unit); integer/bool/str columns with missing values are masked, floats use
        NaN; ``meta['schema']`` names the schema, ``meta['format_version']`` the file
        layout and ``meta['provenance']`` (where the file has one) its provenance record
        (:func:`cannonade.provenance.provenance`), from the FITS card ``CNDPROV`` or the
        Parquet metadata key ``cannonade.provenance``.

    Raises
    ------
    CatalogueError
        Missing, corrupt or truncated file (rows declared beyond its end), an unknown format,
        a layout version newer than this reader's, or a column of a known schema whose dtype is
        not the schema's (names the file and the column).
    """
    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"catalogue {path} does not exist")
    fmt = catalogue_format(path, fmt)
    try:
        table = _read_fits(path) if fmt == "fits" else _read_parquet(path)
    except CatalogueError:
        raise
    except Exception as exc:  # corrupt / truncated file
        raise CatalogueError(f"cannot read catalogue {path}: {exc}") from exc
    _check_version_and_dtypes(table, path)
    return table


#: numpy dtype kinds a column of each schema dtype reads back as
_READ_KINDS = {"float64": "f", "int64": "iu", "bool": "b", "str": "US"}


def _check_version_and_dtypes(table, path):
    """CatalogueError for a layout version newer than this reader's, or a column of a known
    schema whose dtype is not the schema's (names the column, its dtype and the schema's)."""
    version = table.meta.get("format_version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION):
        raise CatalogueError(f"{path}: catalogue format version {version!r} is not supported (this cannonade reads "
                             f"versions up to {FORMAT_VERSION})")
    schema = SCHEMAS.get(table.meta.get("schema")) if isinstance(table.meta.get("schema"), str) else None
    if schema is None:
        return
    specs = {c.name: c for c in schema.columns(infer_label_names(table.colnames, schema))}
    for name in table.colnames:
        spec = specs.get(name)
        kind = np.ma.getdata(table[name]).dtype.kind
        if spec is not None and kind not in _READ_KINDS.get(spec.dtype, kind):
            raise CatalogueError(f"{path}: column {name!r} has dtype {np.ma.getdata(table[name]).dtype}, but schema "
                                 f"{schema.name!r} declares {spec.dtype} ({spec.description})")
