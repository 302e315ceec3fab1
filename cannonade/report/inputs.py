"""Checks of a figure's inputs: every failure is a named error that says which argument or column.

The figure functions take plain arrays and tables; these helpers turn what they were given
into float arrays of the expected shape, or raise :class:`ReportInputError` (an empty or
wrong-shaped argument), :class:`cannonade.exceptions.ColumnError` (a missing table column)
or :class:`cannonade.exceptions.ShapeError` (arrays that do not agree).
"""

from __future__ import annotations

import numpy as np

from cannonade.exceptions import CannonadeError, ColumnError, ShapeError

__all__ = ["ReportInputError", "ReportError", "as_float", "require_columns", "same_length", "column"]


class ReportError(CannonadeError, ValueError):
    """A run directory the report cannot be made from (names the file or directory)."""


class ReportInputError(CannonadeError, ValueError):
    """A figure input that is empty, of the wrong shape or without a finite value (names the argument)."""


def as_float(values, name, ndim=1, min_rows=1, finite=True):
    """``values`` as a float array of ``ndim`` dimensions with at least ``min_rows`` rows.

    Parameters
    ----------
    values : array-like
    name : str
        The argument's name, for the message.
    ndim : int
        Required number of dimensions.
    min_rows : int
        Required length of the first axis.
    finite : bool
        Require at least one finite value.

    Returns
    -------
    ndarray of float

    Raises
    ------
    ReportInputError
        Not numeric, wrong number of dimensions, too few rows, or no finite value.
    """
    if values is None:
        raise ReportInputError(f"{name}: no values given (None)")
    try:
        arr = np.asarray(np.ma.filled(np.ma.asarray(values, dtype=float), np.nan), dtype=float)
    except (TypeError, ValueError) as exc:
        raise ReportInputError(f"{name}: not numeric ({exc})") from None
    if arr.ndim != ndim:
        raise ReportInputError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ReportInputError(f"{name}: empty (shape {arr.shape}); need at least {min_rows} row(s)")
    if finite and not np.isfinite(arr).any():
        raise ReportInputError(f"{name}: no finite value among {arr.size}")
    return arr


def same_length(**arrays):
    """Raise :class:`ShapeError` unless every array has the same first dimension (names them)."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ShapeError("arrays of different lengths: " + ", ".join(f"{k} has {n}" for k, n in lengths.items()))


def require_columns(table, names, what="table"):
    """Raise :class:`ColumnError` naming the first of ``names`` that ``table`` lacks.

    Parameters
    ----------
    table : astropy Table, pandas DataFrame or dict
    names : iterable of str
    what : str
        How the message calls the table (e.g. ``"CV predictions"``).
    """
    if table is None:
        raise ReportInputError(f"{what}: no table given (None)")
    cols = list(table.colnames) if hasattr(table, "colnames") else list(table.keys())
    missing = [n for n in names if n not in cols]
    if missing:
        shown = ", ".join(cols[:30]) + (", ..." if len(cols) > 30 else "")
        raise ColumnError(f"{what}: no column {missing[0]!r}" + (f" (also missing {missing[1:]})" if missing[1:] else "")
                          + f"; columns are {shown}")
    if not cols or len(table[cols[0]]) == 0:
        raise ReportInputError(f"{what}: the table has no rows")


def column(table, name, what="table"):
    """Column ``name`` of ``table`` as a float array (NaN where masked); ColumnError when absent."""
    require_columns(table, [name], what)
    return as_float(table[name], f"{what} column {name!r}", finite=False)
