"""What the catalogue writers and readers share: file formats, the format version, unit strings.

A catalogue is FITS or Parquet, told by the file suffix (:data:`cannonade.tables.FITS_SUFFIXES`,
:data:`cannonade.tables.PARQUET_SUFFIXES`) or an explicit ``fmt``; CSV is refused because it
cannot carry units and descriptions. A run can also write its per-star catalogue as a HATS
catalogue (a directory of HEALPix-partitioned Parquet, :mod:`cannonade.catalogue.hats`):
:data:`OUTPUT_FORMATS` are what ``[catalogue] formats`` may list.
"""

from __future__ import annotations

from cannonade.exceptions import CatalogueError
from cannonade.tables import table_format

__all__ = ["CATALOGUE_FORMATS", "FORMAT_VERSION", "HATS_FORMAT", "OUTPUT_FORMATS", "catalogue_format", "fits_unit", "parse_unit",
           "unit_string"]

#: Version of the catalogue file layout (FITS header keyword ``CNDFMTV``, Parquet ``format_version``).
FORMAT_VERSION = 1

#: The formats a catalogue can be written in.
CATALOGUE_FORMATS = ("fits", "parquet")
#: The HATS layout: a directory, not a file (per-star catalogue only; :func:`cannonade.catalogue.write_hats`).
HATS_FORMAT = "hats"
#: What a run's ``[catalogue] formats`` may list: the file formats, and the HATS directory.
OUTPUT_FORMATS = CATALOGUE_FORMATS + (HATS_FORMAT,)


def catalogue_format(path, fmt=None):
    """'fits' or 'parquet' for a catalogue file.

    Parameters
    ----------
    path : str or Path
    fmt : str, optional
        Overrides the suffix (case-insensitive).

    Raises
    ------
    CatalogueError
        ``fmt`` is not a catalogue format, or the suffix is neither FITS nor Parquet
        (CSV included); the message names the file.
    """
    if fmt is not None:
        fmt = str(fmt).lower()
        if fmt == HATS_FORMAT:
            raise CatalogueError(f"{path}: a HATS catalogue is a directory, not a file: write it with "
                                 "cannonade.catalogue.write_hats")
        if fmt not in CATALOGUE_FORMATS:
            raise CatalogueError(f"unknown catalogue format {fmt!r} for {path}: use 'fits' or 'parquet'")
        return fmt
    try:
        kind = table_format(path)
    except CatalogueError:
        kind = None
    if kind not in CATALOGUE_FORMATS:
        raise CatalogueError(f"cannot tell the catalogue format of {path} from its suffix; use .fits or .parquet, or pass fmt=")
    return kind


def unit_string(unit):
    """astropy's generic string of ``unit`` ('' for dimensionless), or None."""
    return None if unit is None else unit.to_string()


def fits_unit(unit):
    """``unit`` in FITS syntax, or None where the FITS standard cannot express it (e.g. dex)."""
    try:
        return unit.to_string("fits")
    except ValueError:
        return None


def parse_unit(text):
    """An astropy unit from a generic or FITS string; None for an empty one.

    A string neither syntax knows gives an ``UnrecognizedUnit`` (no warning).
    """
    import astropy.units as u

    if text is None or str(text).strip() == "":
        return None
    for syntax in ("generic", "fits"):
        try:
            return u.Unit(text, format=syntax)
        except ValueError:
            continue
    return u.Unit(text, parse_strict="silent")
