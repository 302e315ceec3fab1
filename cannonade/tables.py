"""Tables at the package's edges: one place that knows astropy and pandas tables, file suffixes,
survey sentinels and how to read a user's catalogue.

Every layer reads catalogues through these functions, so a masked cell, a byte string or a
survey's ``-9999`` means the same thing everywhere: missing (NaN for floats).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cannonade.exceptions import CatalogueError, ColumnError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv",)

# Survey pipelines write "no value" as a number: LAMOST LASP and APOGEE -9999, GALAH DR2 -9999 /
# -99.9 in some abundance columns... A finite value at or below this is missing, never a label.
SENTINEL_MAX = -9998.0


def is_pandas(table):
    """True for a pandas DataFrame (or Series), without importing pandas."""
    return type(table).__module__.startswith("pandas")


def colnames(table):
    """Column names of an astropy Table, a pandas DataFrame, a numpy structured array or a dict."""
    if is_pandas(table):
        return [str(c) for c in table.columns]
    if hasattr(table, "colnames"):
        return list(table.colnames)
    if getattr(getattr(table, "dtype", None), "names", None):
        return list(table.dtype.names)
    if isinstance(table, dict):
        return list(table)
    raise CatalogueError(f"expected a table (astropy Table, pandas DataFrame, dict), got {type(table).__name__}")


def as_table(table):
    """An astropy Table view of an astropy Table or pandas DataFrame (CatalogueError otherwise)."""
    from astropy.table import Table

    if is_pandas(table):
        return Table.from_pandas(table)
    if not isinstance(table, Table):
        raise CatalogueError(f"expected an astropy Table or pandas DataFrame, got {type(table).__name__}")
    return table


def suggest(name, options):
    """' (did you mean 'x'?)' for the closest of ``options``, or ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def require_columns(table, names, what="table"):
    """Raise ColumnError naming every missing column (and the closest existing name)."""
    have = colnames(table)
    missing = [n for n in names if n not in have]
    if missing:
        hints = "".join(suggest(n, have) for n in missing[:1])
        raise ColumnError(f"{what} lacks column(s) {missing}{hints}; it has {sorted(have)}")


def mask_sentinels(values):
    """Float copy of ``values`` with survey sentinels (≤ −9998) set to NaN."""
    arr = np.array(values, dtype=float)
    with np.errstate(invalid="ignore"):
        arr[arr <= SENTINEL_MAX] = np.nan
    return arr


def float_column(table, name, unit=None, rows=slice(None)):
    """Column ``name`` as a new float64 array: masked cells, survey sentinels (≤ −9998) -> NaN.

    Parameters
    ----------
    table : astropy Table, pandas DataFrame or dict of arrays
    name : str
    unit : str or astropy unit, optional
        Convert to this unit when the column carries one.
    rows : slice or index array, optional

    Raises
    ------
    ColumnError
        The column is absent, or holds text that is not numbers.
    """
    require_columns(table, [name])
    col = table[name]
    try:
        if is_pandas(table):
            arr = np.asarray(col.iloc[rows].to_numpy(dtype=float, na_value=np.nan), dtype=float)
        else:
            col = col[rows]
            data = np.asarray(np.ma.getdata(col))
            if data.dtype.kind in "SU":
                raise ValueError("text")
            arr = np.array(data, dtype=float)
            cunit = getattr(col, "unit", None)
            if cunit is not None and unit is not None:
                import astropy.units as u

                arr = (arr * u.Unit(cunit)).to_value(u.Unit(unit))
            mask = np.ma.getmask(col)
            if mask is not np.ma.nomask and np.any(mask):
                arr = np.where(mask, np.nan, arr)
    except (ValueError, TypeError):
        raise ColumnError(f"column {name!r} is not numeric (dtype {getattr(col, 'dtype', '?')})") from None
    return mask_sentinels(arr)


def text_column(table, name, rows=slice(None)):
    """Column ``name`` as a str array (bytes decoded, surrounding blanks stripped, masked -> '')."""
    require_columns(table, [name])
    col = table[name]
    if is_pandas(table):
        return np.asarray(col.iloc[rows].fillna("").astype(str).str.strip().to_numpy(), dtype=str)
    col = col[rows]
    if hasattr(col, "filled"):
        col = col.filled("" if np.dtype(col.dtype).kind in "SU" else 0)
    arr = np.asarray(col)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    return np.char.strip(arr.astype(str))


def table_format(path, fmt=None):
    """'fits', 'parquet' or 'csv' from an explicit ``fmt`` or the file name (CatalogueError if neither)."""
    if fmt is not None:
        if fmt not in ("fits", "parquet", "csv"):
            raise CatalogueError(f"unknown table format {fmt!r}; use 'fits', 'parquet' or 'csv'")
        return fmt
    name = Path(path).name.lower()
    for kind, suffixes in (("fits", FITS_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("csv", CSV_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    raise CatalogueError(f"{path}: cannot tell the table format from the name; use one of {FITS_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES}")


#: A Parquet file's footer may declare at most this many bytes of decoded columns per byte of the
#: file (beyond :data:`PARQUET_MIN_BOUND`): real catalogues stay far below; a footer declaring more
#: (absurd row counts or column sizes) is refused before any data is read.
PARQUET_MAX_EXPANSION = 1000
#: ... and at least this much is always allowed (small files of constant columns)
PARQUET_MIN_BOUND = 2**30
# bytes per value of Parquet's physical types once read (a BYTE_ARRAY: at least its offset)
_PARQUET_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8, "BYTE_ARRAY": 4}


def check_parquet_footer(path, what="catalogue"):
    """Refuse a Parquet file whose footer declares more than the file can hold, before reading data.

    From the footer alone (``pyarrow.parquet.read_metadata``): the file's row count must be its row
    groups' sum; every column chunk's compressed bytes must lie inside the file; and the columns
    as read (each row group's rows x each column's width, or its declared uncompressed size when
    larger) must stay within :data:`PARQUET_MAX_EXPANSION` times the file's size (at least
    :data:`PARQUET_MIN_BOUND`): a crafted footer declaring 10^12 rows over a few kB would
    otherwise have pyarrow allocate terabytes.

    Raises
    ------
    CatalogueError
        Names the file, and the row group, column and sizes at fault.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    size = path.stat().st_size
    try:
        md = pq.read_metadata(path)
    except Exception as exc:  # pyarrow's ArrowInvalid / OSError of a corrupt footer
        text = str(exc).strip().splitlines()
        raise CatalogueError(f"{what} {path}: unreadable Parquet footer ({text[0] if text else type(exc).__name__})") from None
    bound = max(PARQUET_MIN_BOUND, PARQUET_MAX_EXPANSION * size)
    rows_sum, decoded = 0, 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        rows = rg.num_rows
        if rows < 0:
            raise CatalogueError(f"{what} {path}: row group {i} declares {rows} rows (crafted or corrupt footer)")
        rows_sum += rows
        for j in range(rg.num_columns):
            col = rg.column(j)
            name = col.path_in_schema
            sizes = (col.total_compressed_size, col.total_uncompressed_size, col.num_values)
            if min(sizes) < 0:
                raise CatalogueError(f"{what} {path}: row group {i}, column {name!r} declares negative sizes {sizes} (crafted or "
                                     "corrupt footer)")
            start = col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else col.data_page_offset
            if start is None or start < 0 or start + col.total_compressed_size > size:
                raise CatalogueError(f"{what} {path}: row group {i}, column {name!r} declares {col.total_compressed_size} "
                                     f"bytes at byte {start}, beyond the end of the file ({size} bytes; truncated or crafted)")
            width = _PARQUET_WIDTH.get(col.physical_type, 8)
            decoded += max(col.total_uncompressed_size, rows * width, col.num_values * width)
            if decoded > bound:
                raise CatalogueError(
                    f"{what} {path}: the footer declares {md.num_rows} rows in {md.num_row_groups} row group(s), row group {i} "
                    f"{rows} rows with column {name!r} of {col.total_uncompressed_size} bytes uncompressed: more than "
                    f"{bound} bytes once read from a file of {size} bytes (PARQUET_MAX_EXPANSION = {PARQUET_MAX_EXPANSION}); "
                    "refused before reading (crafted or corrupt footer)")
    if rows_sum != md.num_rows:
        raise CatalogueError(f"{what} {path}: the footer declares {md.num_rows} rows but its row groups hold {rows_sum} "
                             "(crafted or corrupt footer)")


def read_table(path):
    """Read a user's catalogue (FITS, CSV or Parquet) into an astropy Table.

    Raises CatalogueError naming the file when it is missing or unreadable.
    """
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"catalogue {path} is a directory, not a file" if path.is_dir() else f"catalogue {path} not found")
    kind = table_format(path)
    if path.stat().st_size == 0:
        raise CatalogueError(f"catalogue {path} is empty (0 bytes)")
    if kind == "parquet":
        check_parquet_footer(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return Table.from_pandas(pq.read_table(path).to_pandas())
        if kind == "csv":
            return Table.read(path, format="ascii.csv")
        return Table.read(path, format="fits")
    except Exception as exc:  # astropy and pyarrow raise many kinds; their first line says what
        text = str(exc).strip().splitlines()
        raise CatalogueError(f"catalogue {path} could not be read: {text[0] if text else type(exc).__name__}") from None
