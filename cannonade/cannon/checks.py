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

from cannonade.exceptions import ColumnError, LabelError, ParameterError, ShapeError, TrainingSetError
from cannonade.tables import float_column


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
        A new array for tables and masked arrays; the input itself when it already is a 2-D
        float array. A masked cell (astropy masked column, pandas NA, ``numpy.ma`` mask) and,
        in a table, a survey sentinel (≤ −9998) are NaN, a missing label — never a number
        (:func:`cannonade.tables.float_column`).

    Raises
    ------
    ShapeError
        An array whose shape is not (N, L).
    LabelError
        A table that lacks one of ``label_names``, or whose label column is not numeric.
    """
    if not (isinstance(labels, np.ndarray) and labels.dtype.names is None):
        columns = _table_columns(labels)
        if columns is not None:
            missing = [n for n in label_names if n not in columns]
            if missing:
                raise LabelError(f"label column(s) {missing} not found; the labels table has columns {columns}")
            try:
                return np.column_stack([float_column(labels, n) for n in label_names])
            except ColumnError as exc:
                raise LabelError(f"label {exc}") from None
    if np.ma.isMaskedArray(labels):
        labels = np.ma.filled(np.ma.asarray(labels, dtype=float), np.nan)
    arr = np.asarray(labels, dtype=float)
    if arr.ndim == 1 and len(label_names) == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != len(label_names):
        raise ShapeError(f"labels have shape {arr.shape}; expected (n_stars, {len(label_names)}) for {label_names}")
    return arr


def check_spectra(flux, ivar, n_pixels=None, what="flux", keep_float32=False):
    """Flux and inverse variance as 2-D float arrays of one shape (no copy when they already are).

    Parameters
    ----------
    flux, ivar : (N, P) or (P,) float
        A 1-D pair is one spectrum, returned as (1, P).
    n_pixels : int, optional
        The number of pixels the model has (checked when given).
    what : str
        What ``flux`` is called in the error message.
    keep_float32 : bool
        Return a float32 pair as it is (inference reads it block by block in float64, as a
        store's float32 spectra come): no float64 copy of the whole arrays.

    Returns
    -------
    flux, ivar : (N, P) float

    Raises
    ------
    ShapeError
        Shapes that differ, are not 2-D, or have other than ``n_pixels`` pixels.
    """
    if np.ma.isMaskedArray(flux) or np.ma.isMaskedArray(ivar):  # a masked pixel is a bad pixel
        mask = np.ma.getmaskarray(flux) | np.ma.getmaskarray(ivar)
        flux = np.where(mask, np.nan, np.ma.getdata(flux).astype(float))
        ivar = np.where(mask, 0.0, np.ma.getdata(ivar).astype(float))
    as_is = keep_float32 and getattr(flux, "dtype", None) == np.float32 and getattr(ivar, "dtype", None) == np.float32
    flux = np.asarray(flux, dtype=np.float32 if as_is else float)
    ivar = np.asarray(ivar, dtype=np.float32 if as_is else float)
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
        Star n is row n of the caller's array (the index the message names).
    allow_nan : bool
        NaN marks an unknown label (``fit(..., missing="impute")``): only ±inf is refused.
    """
    bad = np.isinf(labels) if allow_nan else ~np.isfinite(labels)
    if bad.any():
        n, l = np.argwhere(bad)[0]
        hint = "" if allow_nan or not np.isnan(labels[n, l]) else \
            ' (NaN, a masked cell or a survey sentinel); fit(..., missing="impute") treats missing labels as ' \
            'unknown and estimates them from the spectra'
        raise LabelError(
            f"training label {label_names[l]!r} of star {n} is {labels[n, l]} "
            f"({bad.any(axis=1).sum()} stars have non-finite labels){hint}"
        )


def check_missing_option(missing):
    """``missing`` of ``CannonModel.fit`` / ``cross_validate``: "refuse" or "impute" (ParameterError otherwise)."""
    if not isinstance(missing, str) or missing not in ("refuse", "impute"):
        raise ParameterError(f"missing must be 'refuse' or 'impute', got {missing!r}")
    return missing


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive_int(value, name, minimum=1, allow_none=False):
    """``value`` as an int ≥ ``minimum`` (None passes when ``allow_none``); ParameterError otherwise."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < minimum:
        none = " or None" if allow_none else ""
        raise ParameterError(f"{name} must be an integer >= {minimum}{none}, got {value!r}")
    return int(value)


def check_regularization(regularization, n_pixels=None):
    """The L1 strength Λ: a finite number ≥ 0, or one per pixel; ParameterError otherwise.

    Returns the value as a float or (P,) float array (broadcast to ``n_pixels`` when given).
    """
    try:
        reg = np.asarray(regularization, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(f"regularization must be a number >= 0 (or one per pixel), got {regularization!r}") from None
    if reg.ndim > 1 or (n_pixels is not None and reg.ndim == 1 and reg.shape != (n_pixels,)):
        raise ParameterError(f"regularization has shape {reg.shape}; expected a number or ({n_pixels or 'n_pixels'},)")
    bad = ~np.isfinite(reg) | (reg < 0)
    if bad.any():
        where = "" if reg.ndim == 0 else f" at pixel {int(np.flatnonzero(bad)[0])}"
        value = reg if reg.ndim == 0 else reg[bad][0]
        raise ParameterError(f"regularization must be finite and >= 0, got {float(value)}{where}")
    return float(reg) if reg.ndim == 0 else reg


SCALES = ("standard", "percentile", "none")
SCATTER_METHODS = ("reml", "ml")


def check_model_params(order=2, scale="standard", regularization=0.0, scatter="reml", pixel_chunk=None,
                       star_chunk=None, terms=None):
    """``CannonModel``'s parameters (as scikit-learn's ``_parameter_constraints``); ParameterError
    naming the first one outside its allowed values.

    order : int ≥ 1 (not checked when ``terms`` is given); scale : "standard" | "percentile" |
    "none" | {"offset", "scale"}; regularization : finite ≥ 0, scalar or (P,); scatter : "reml" |
    "ml"; pixel_chunk, star_chunk : int ≥ 1 or None.
    """
    if terms is None:
        check_positive_int(order, "order")
    if isinstance(scale, dict):
        unknown = sorted(set(scale) - {"offset", "scale"})
        if unknown:
            raise ParameterError(f"scale dict has unknown key(s) {unknown}; allowed: 'offset', 'scale'")
    elif not isinstance(scale, str) or scale not in SCALES:
        raise ParameterError(f"scale must be one of {list(SCALES)} or a dict with 'offset' and 'scale', got {scale!r}")
    check_regularization(regularization)
    if not isinstance(scatter, str) or scatter not in SCATTER_METHODS:
        raise ParameterError(f"scatter must be one of {list(SCATTER_METHODS)}, got {scatter!r}")
    check_positive_int(pixel_chunk, "pixel_chunk", allow_none=True)
    check_positive_int(star_chunk, "star_chunk", allow_none=True)


def check_label_spread(labels, label_names, known=None):
    """LabelError naming a training label that is constant (no spread: nothing to fit a
    dependence on). ``known`` (N, L) bool: the values to look at (default the finite ones)."""
    known = np.isfinite(labels) if known is None else known
    for l, name in enumerate(label_names):
        values = labels[known[:, l], l]
        if values.size and np.all(values == values[0]):
            raise LabelError(f"training label {name!r} is constant ({values[0]:g} for all {values.size} stars that "
                             "have it): the model cannot learn how the spectra depend on it; drop it from label_names "
                             "or add stars that differ in it")


def dependent_columns(A, names, rtol=1e-8):
    """The names of the columns of ``A`` (N, C) that are linearly dependent, or [].

    Columns are scaled to unit RMS; they are dependent when the smallest singular value is
    below ``rtol`` times the largest, and the ones named are those with a weight above 5 % of
    the largest in that singular vector (the combination that vanishes).
    """
    A = np.asarray(A, dtype=float)
    if A.ndim != 2 or A.shape[1] < 2 or A.shape[0] < A.shape[1] or not np.all(np.isfinite(A)):
        return []
    rms = np.sqrt(np.mean(A * A, axis=0))
    if np.any(rms == 0):
        return [names[c] for c in np.flatnonzero(rms == 0)]
    _, sv, vt = np.linalg.svd(A / rms, full_matrices=False)
    if sv[-1] > rtol * sv[0]:
        return []
    v = np.abs(vt[-1])
    return [names[c] for c in np.flatnonzero(v > 0.05 * v.max())]


def collinear_labels(labels, label_names, rtol=1e-6):
    """The names of training labels that are linearly dependent (a combination of them is
    constant), or []; only complete rows are used (with too few of them: []).

    labels : (N, L) float ; rtol : see :func:`dependent_columns` (on the standardised labels).
    """
    Z = labels[np.all(np.isfinite(labels), axis=1)]
    if Z.shape[1] < 2 or Z.shape[0] <= Z.shape[1]:
        return []
    sd = Z.std(axis=0)
    if np.any(sd == 0):
        return []  # a constant label: check_label_spread's message
    return dependent_columns((Z - Z.mean(axis=0)) / sd, list(label_names), rtol)


def check_training_labels(labels, label_names, known=None):
    """Labels a model can be trained on: none constant, none a linear combination of the others.

    Raises
    ------
    LabelError
        Names the constant label, or the collinear labels.
    """
    check_label_spread(labels, label_names, known)
    dep = collinear_labels(np.where(np.isfinite(labels) if known is None else known, labels, np.nan), label_names)
    if dep:
        raise LabelError(f"training labels {dep} are collinear (one is a linear combination of the others over the "
                         "training set): the model cannot separate their effects; drop one of them")


def usable_pixels_error(n_ok, n_labels, n_terms, n_valid=None, collinear_terms=()):
    """The TrainingSetError (returned, to raise) for a fit that left ``n_ok`` ≤ ``n_labels``
    usable pixels, naming why.

    n_valid : (P,) int, optional -- training stars with data at each pixel; collinear_terms : the
    names of model terms that are linearly dependent over the training labels.
    """
    what = "no pixel" if n_ok == 0 else f"only {n_ok} pixel(s)"
    if n_valid is not None and (n_valid.size == 0 or n_valid.max() < n_terms):
        most = int(n_valid.max()) if n_valid.size else 0
        cause = (f"no pixel has data (finite flux, ivar > 0) in >= {n_terms} training stars (the model's number of "
                 f"terms); the most any pixel has is {most}: are the ivar arrays all zero?")
    elif collinear_terms:
        cause = (f"the model terms {list(collinear_terms)} are linearly dependent over the training labels (e.g. one "
                 "label a function of another): no pixel's θ is determined; drop a label or lower the order")
    else:
        cause = "every other pixel's normal equations are singular (too few stars with data, or degenerate labels)"
    return TrainingSetError(f"the fit left {what} the model can use (inference needs more than {n_labels}): {cause}")


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
    """A fixed model scatter: scalar or (P,) -> a new (P,) float array, finite and ≥ 0 (ParameterError otherwise)."""
    try:
        s2 = np.broadcast_to(np.asarray(s2, dtype=float), (n_pixels,)).copy()
    except ValueError:
        raise ShapeError(f"fixed s2 has shape {np.shape(s2)}; expected a number or ({n_pixels},)") from None
    bad = ~np.isfinite(s2) | (s2 < 0)
    if bad.any():
        p = int(np.flatnonzero(bad)[0])
        raise ParameterError(f"fixed s2 must be finite and non-negative; pixel {p} has {s2[p]}")
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
