"""Catalogues: schemas (columns, units, descriptions) and their FITS / Parquet writers and readers."""
