"""Input validation for the Cannon core (in the manner of ``sklearn.utils.validation``).

Every public entry point (``CannonModel.fit / infer / predict / pixel_chi2``,
``cross_validate``) checks its inputs through these functions, so the same mistake raises
the same named error (``ShapeError``, ``LabelError``, ``TrainingSetError``) with the same
message everywhere.

Conventions: ``flux, ivar : (n_stars, n_pixels) float``; labels ``(n_stars, n_labels)`` in
physical units, columns in the order of ``label_names``; bad pixels have ``ivar == 0``.
"""

from __future__ import annotations

import numpy as np

from cannonade.exceptions import LabelError, ShapeError, TrainingSetError


def check_label_names(label_names):
    """The label names as a list; LabelError when empty or not unique.

    Parameters
    ----------
    label_names : iterable of str

    Returns
    -------
    list of str
    """
    names = list(label_names)
    if len(set(names)) != len(names):
        raise LabelError(f"label names are not unique: {names}")
    if not names:
        raise LabelError("a Cannon model needs at least one label name")
    return names


def _table_columns(labels):
    """Column names of a labels table (structured array, astropy Table, DataFrame, dict), or None."""
    names = getattr(getattr(labels, "dtype", None), "names", None)
    if names:
        return list(names)
    if hasattr(labels, "colnames"):
        return list(labels.colnames)
    if hasattr(labels, "keys"):
        return list(labels.keys())
    return None


def as_label_array(labels, label_names):
    """Labels as an ``(n_stars, n_labels)`` float array, columns in the order of ``label_names``.

    Parameters
    ----------
    labels : (N, L) array-like, or a table
        An array (a 1-D array is N stars of a single label), or an astropy Table, pandas
        DataFrame, dict of columns or structured array with (at least) the columns
        ``label_names``.
    label_names : list of str

    Returns
    -------
    (N, L) float
        A new array for tables; the input itself when it already is a 2-D float array.

    Raises
    ------
    ShapeError
        An array whose shape is not (N, L).
    LabelError
        A table that lacks one of ``label_names``.
    """
    if not (isinstance(labels, np.ndarray) and labels.dtype.names is None):
        columns = _table_columns(labels)
        if columns is not None:
            missing = [n for n in label_names if n not in columns]
            if missing:
                raise LabelError(f"label column(s) {missing} not found; the labels table has columns {columns}")
            return np.column_stack([np.asarray(labels[n], dtype=float) for n in label_names])
    arr = np.asarray(labels, dtype=float)
    if arr.ndim == 1 and len(label_names) == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != len(label_names):
        raise ShapeError(f"labels have shape {arr.shape}; expected (n_stars, {len(label_names)}) for {label_names}")
    return arr


def check_spectra(flux, ivar, n_pixels=None, what="flux"):
    """Flux and inverse variance as 2-D float arrays of one shape (no copy when they already are).

    Parameters
    ----------
    flux, ivar : (N, P) or (P,) float
        A 1-D pair is one spectrum, returned as (1, P).
    n_pixels : int, optional
        The number of pixels the model has (checked when given).
    what : str
        What ``flux`` is called in the error message.

    Returns
    -------
    flux, ivar : (N, P) float

    Raises
    ------
    ShapeError
        Shapes that differ, are not 2-D, or have other than ``n_pixels`` pixels.
    """
    flux = np.asarray(flux, dtype=float)
    ivar = np.asarray(ivar, dtype=float)
    if flux.ndim == 1:
        flux, ivar = flux[None], ivar[None] if ivar.ndim == 1 else ivar
    if flux.ndim != 2 or flux.shape != ivar.shape:
        raise ShapeError(f"{what} has shape {flux.shape} but ivar has shape {ivar.shape}; both must be (n_stars, n_pixels)")
    if n_pixels is not None and flux.shape[1] != n_pixels:
        raise ShapeError(f"{what} has {flux.shape[1]} pixels per spectrum but the model was trained on {n_pixels}")
    return flux, ivar


def check_rows(labels, flux):
    """ShapeError unless labels (N, L) and flux (N, P) have one row per star alike."""
    if labels.shape[0] != flux.shape[0]:
        raise ShapeError(f"labels have {labels.shape[0]} rows but flux has {flux.shape[0]} spectra")


def check_finite_labels(labels, label_names, allow_nan=False):
    """LabelError naming the first non-finite label (training labels must all be numbers).

    labels : (N, L) float
    allow_nan : bool
        NaN marks an unknown label (``fit(..., missing="impute")``): only ±inf is refused.
    """
    bad = np.isinf(labels) if allow_nan else ~np.isfinite(labels)
    if bad.any():
        n, l = np.argwhere(bad)[0]
        hint = "" if allow_nan or not np.isnan(labels[n, l]) else \
            '; fit(..., missing="impute") treats NaN labels as unknown and estimates them from the spectra'
        raise LabelError(
            f"training label {label_names[l]!r} of star {n} is {labels[n, l]} "
            f"({bad.any(axis=1).sum()} stars have non-finite labels){hint}"
        )


def check_missing_option(missing):
    """``missing`` of ``CannonModel.fit`` / ``cross_validate``: "refuse" or "impute" (ValueError otherwise)."""
    if missing not in ("refuse", "impute"):
        raise ValueError(f"missing must be 'refuse' or 'impute', got {missing!r}")
    return missing


def check_missing_labels(labels, label_names, max_fraction=0.5):
    """Which training labels are known, and which stars can be kept, when NaN means "unknown".

    Parameters
    ----------
    labels : (N, L) float
        NaN where a reference label is missing; ±inf is refused.
    label_names : list of str
    max_fraction : float
        A label missing for more than this fraction of the kept stars is refused.

    Returns
    -------
    known : (N, L) bool
        Finite entries.
    keep : (N,) bool
        Stars with at least one known label (a star with none is dropped by the caller).

    Raises
    ------
    LabelError
        An infinite label (names label and star).
    TrainingSetError
        No star has any label; a label missing for more than ``max_fraction`` of the kept
        stars (names it, with its count).
    """
    check_finite_labels(labels, label_names, allow_nan=True)
    known = np.isfinite(labels)
    keep = known.any(axis=1)
    n = int(keep.sum())
    if labels.shape[0] and n == 0:
        raise TrainingSetError(f"none of the {labels.shape[0]} training stars has a finite label")
    if n:
        n_miss = (~known[keep]).sum(axis=0)
        over = np.flatnonzero(n_miss > max_fraction * n)
        if over.size:
            which = ", ".join(f"{label_names[l]!r} ({n_miss[l]} of {n} stars)" for l in over)
            raise TrainingSetError(f"training label(s) {which} missing for more than {max_fraction:.0%} of the "
                                   "stars: too few to train on or to impute from; drop the label or those stars")
    return known, keep


def check_training_set(labels, flux, label_names, n_terms, missing="refuse"):
    """A training set the model can be fitted to.

    Parameters
    ----------
    labels : (N, L) float
    flux : (N, P) float
    label_names : list of str
    n_terms : int
        K, the number of model terms (θ per pixel).
    missing : {"refuse", "impute"}
        "impute": NaN labels are unknowns (checked by :func:`check_missing_labels`), only
        ±inf is refused here.

    Raises
    ------
    ShapeError, TrainingSetError, LabelError
        Rows that disagree; no star or fewer stars than terms; a non-finite label.
    """
    check_rows(labels, flux)
    if flux.shape[0] == 0:
        raise TrainingSetError("the training set is empty")
    check_finite_labels(labels, label_names, allow_nan=check_missing_option(missing) == "impute")
    if flux.shape[0] < n_terms:
        raise TrainingSetError(f"{flux.shape[0]} training stars cannot constrain {n_terms} model terms; need at least {n_terms}")


def check_pixel_array(values, n_pixels, name):
    """A per-pixel array (e.g. ``wavelength``) as (P,) float; ShapeError otherwise. None stays None."""
    if values is None:
        return None
    values = np.asarray(values, dtype=float)
    if values.shape != (n_pixels,):
        raise ShapeError(f"{name} has shape {values.shape}; expected ({n_pixels},)")
    return values


def check_fixed_s2(s2, n_pixels):
    """A fixed model scatter: scalar or (P,) -> a new (P,) float array, finite and ≥ 0 (ValueError otherwise)."""
    s2 = np.broadcast_to(np.asarray(s2, dtype=float), (n_pixels,)).copy()
    if np.any(~np.isfinite(s2)) or np.any(s2 < 0):
        raise ValueError("fixed s2 must be finite and non-negative")
    return s2


def check_censors(censors, label_names, n_pixels):
    """Censoring masks as ``{label_name: (P,) bool}`` (True where the label may act).

    Parameters
    ----------
    censors : dict {str: (P,) bool} or None
    label_names : list of str
    n_pixels : int

    Returns
    -------
    dict {str: (P,) bool}
        Empty when ``censors`` is None or empty.

    Raises
    ------
    LabelError
        A mask for a label that is not one of ``label_names``.
    ShapeError
        A mask that is not (P,).
    """
    out = {}
    for name, mask in (censors or {}).items():
        if name not in label_names:
            raise LabelError(f"censors name label {name!r}, which is not one of {label_names}")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n_pixels,):
            raise ShapeError(f"censor mask for {name!r} has shape {mask.shape}; expected ({n_pixels},)")
        out[name] = mask
    return out


def clean_spectra(flux, ivar):
    """Bad pixels mean "no information here": ivar = 0 and flux = 0 there (new arrays).

    A pixel is bad where flux or ivar is NaN/inf or ivar ≤ 0.

    Parameters
    ----------
    flux, ivar : (N, P) float

    Returns
    -------
    flux, ivar : (N, P) float
    """
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar <= 0)
    return np.where(bad, 0.0, flux), np.where(bad, 0.0, ivar)
