"""Catalogues: schemas (columns, units, descriptions) and their FITS / Parquet writers and readers.

* :mod:`~cannonade.catalogue.schemas`: the schemas as data (Wheeler+2020 Table 1,
  Nandakumar+2022 Table A1), expanded for a label set by :func:`schema_for`;
* :mod:`~cannonade.catalogue.writers`: :func:`write_catalogue`, :class:`CatalogueWriter`;
* :mod:`~cannonade.catalogue.readers`: :func:`read_catalogue`;
* :mod:`~cannonade.catalogue.formats`: the file formats and layout version they share;
* :mod:`~cannonade.catalogue.hats`: :func:`write_hats`, the per-star catalogue as a HATS
  catalogue (HEALPix-partitioned Parquet for LSDB; the optional ``hats`` extra).

See ``docs/catalogue.md``.
"""

from cannonade.catalogue.formats import (
    CATALOGUE_FORMATS,
    FORMAT_VERSION,
    HATS_FORMAT,
    OUTPUT_FORMATS,
    catalogue_format,
)
from cannonade.catalogue.hats import write_hats
from cannonade.catalogue.readers import read_catalogue
from cannonade.catalogue.schemas import (
    COMMON_EXTRAS,
    DIMENSIONLESS,
    NANDAKUMAR2022,
    SCHEMAS,
    WHEELER2020,
    ColumnSpec,
    LabelPattern,
    Schema,
    get_schema,
    infer_label_names,
    label_info,
    schema_for,
)
from cannonade.catalogue.writers import CatalogueWriter, write_catalogue

__all__ = [
    "CATALOGUE_FORMATS",
    "COMMON_EXTRAS",
    "DIMENSIONLESS",
    "FORMAT_VERSION",
    "HATS_FORMAT",
    "NANDAKUMAR2022",
    "OUTPUT_FORMATS",
    "SCHEMAS",
    "WHEELER2020",
    "CatalogueWriter",
    "ColumnSpec",
    "LabelPattern",
    "Schema",
    "catalogue_format",
    "get_schema",
    "infer_label_names",
    "label_info",
    "read_catalogue",
    "schema_for",
    "write_catalogue",
    "write_hats",
]
