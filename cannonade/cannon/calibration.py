"""Calibrated per-star uncertainties and out-of-training flags, carried by the model.

``CannonModel.calibrate(cv, label_errors=None, repeats=None, ...)`` calls
:func:`fit_calibration` and keeps the :class:`Calibration` it returns (``model.calibration_``,
saved in the model file). At inference, :func:`assess` turns it into ``r.errors``,
``r.extrapolated``, ``r.train_distance``, ``r.far_from_training`` and the bitmask ``r.flags``
(bits in :mod:`cannonade.flags`). The maths is in ``errormodel`` (error model, repeat visits)
and ``extrapolation`` (KDE bounds, training distance, χ² curve); the choices and measurements
are in docs/calibration.md.

Error model (default ``"floor"``): σ² = (a σ_formal)² + (b (S/N/S/N₀)^(−γ))², a noise part that
scales with the formal error and a model-mismatch part that falls with S/N at most slowly
(γ ∈ [0, 1] fitted; ``floor_slope=0`` makes it a constant floor b). With ``"nandakumar"``
(Nandakumar+2022 §3.7): σ = max(f σ_formal, precision(S/N)), from repeat visits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from cannonade.cannon.errormodel import (
    best_visit_pairs,
    exp_precision,
    fit_noise_and_floor,
    mismatch,
    precision_curve,
    precision_points,
    repeat_scale_factor,
    visit_pairs,
)
from cannonade.cannon.extrapolation import (
    KIEL_LABELS,
    parameter_mask,
    chi2_threshold_at,
    chi2_threshold_curve,
    default_distance_labels,
    kde_bounds,
    training_distance,
)
from cannonade.cannon.quality import missing_fraction
from cannonade.exceptions import CannonadeError, LabelError, ModelFileError, ShapeError
from cannonade.flags import compose

__all__ = [
    "Calibration",
    "CalibrationError",
    "UncalibratedWarning",
    "FormalErrorsNotice",
    "fit_calibration",
    "assess",
    "ERROR_MODELS",
    "CALIBRATION_VERSION",
]

CALIBRATION_VERSION = 1
ERROR_MODELS = ("floor", "nandakumar")
DEFAULT_LOW_SNR = 20.0
DEFAULT_MAX_MISSING_FRACTION = 0.2
MIN_REPEAT_PAIRS = 20  # fewer pairs of visits than this do not fix a label's noise scale
FAR_WARNING = 0.25  # warn when the distance flag fires on more of the CV's own stars than this
ARRAY_PREFIX = "calibration_"


class CalibrationError(CannonadeError, ValueError):
    """A calibration that cannot be made from the inputs given (names the label or input)."""


class UncalibratedWarning(UserWarning):
    """Formal errors stand in for calibrated ones: the model has not been calibrated."""


class FormalErrorsNotice:
    """Warns (:class:`UncalibratedWarning`) the first time one model's formal errors are read as ``errors``."""

    def __init__(self):
        self.warned = False

    def __call__(self):
        if not self.warned:
            self.warned = True
            warnings.warn(UncalibratedWarning(
                "this model is not calibrated: r.errors are the formal (covariance) errors, typically several "
                "times too small; call model.calibrate(cross_validate(...)) (docs/calibration.md)"), stacklevel=3)


@dataclass(eq=False)
class Calibration:
    """A model's error model, extrapolation bounds and training-distance scale (all labels, L).

    Attributes
    ----------
    label_names : list of str
    error_model : {"floor", "nandakumar"}
    noise_scale : (L,) float
        a (floor) or f (nandakumar): the noise part is ``noise_scale × σ_formal``.
    floor : (L,) float
        b, the model-mismatch part at S/N₀ = ``floor_snr`` (used by the ``floor`` model;
        reported for both); ``floor_slope`` (L,) its γ: mismatch = b (S/N / S/N₀)^(−γ).
    precision : (L, 3) float
        A, τ, C of the precision curve A exp(−S/N/τ) + C (NaN without repeat visits).
    repeat_factor : (L,) float
        Nandakumar+2022 Eq. 6 f from repeat visits (NaN without); ``n_repeat_pairs`` (L,) int.
    noise_from_repeats : (L,) bool
        a fixed from repeat visits (True) or fitted from the CV together with b (False). From
        repeats, a is Eq. 6 over the pairs of visits both below the visits' median S/N, where
        noise dominates the error (``floor``), or ``repeat_factor`` itself (``nandakumar``).
    kde_lo, kde_hi : (L,) float
        Wheeler+2020 §4 bounds of each label; outside them a label is ``extrapolated``.
    cv_rms : (L,) float
        Cross-validated RMS of each label: K_l of Nandakumar+2022 Eq. 5.
    distance_labels : list of str
        The labels of the distance; ``train_scaled`` (N, D) the training labels / K_l.
    distance_threshold : float
        ``far_from_training`` where the distance exceeds it; ``n_neighbours`` (10).
    chi2_log_snr, chi2_threshold : (B,) float
        χ²/dof threshold curve versus ln S/N.
    low_snr, max_missing_fraction : float
        LOW_SNR and MISSING_PIXELS thresholds.
    n_used, n_clipped : (L,) int
        CV stars kept and clipped by the error-model fit.
    options : dict
        The remaining settings (clip, kde_level, chi2_percentile, floor_slope, min_noise_scale).
    diagnostics : dict
        The flags on the cross-validated training stars themselves: ``cv_far_fraction`` (of
        their predictions above the distance threshold, each without itself in the training
        set), ``cv_distance_median``, ``cv_distance_p99``, ``cv_extrapolated_fraction``; ``n_cv``.
        :func:`fit_calibration` warns when ``cv_far_fraction`` exceeds ``FAR_WARNING``.
    """

    label_names: list
    error_model: str
    noise_scale: np.ndarray
    floor: np.ndarray
    floor_slope: np.ndarray
    floor_snr: float
    precision: np.ndarray
    repeat_factor: np.ndarray
    n_repeat_pairs: np.ndarray
    noise_from_repeats: np.ndarray
    kde_lo: np.ndarray
    kde_hi: np.ndarray
    cv_rms: np.ndarray
    distance_labels: list
    train_scaled: np.ndarray
    distance_threshold: float
    n_neighbours: int
    chi2_log_snr: np.ndarray
    chi2_threshold: np.ndarray
    low_snr: float = DEFAULT_LOW_SNR
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION
    n_used: np.ndarray | None = None
    n_clipped: np.ndarray | None = None
    options: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)

    ARRAYS = ("noise_scale", "floor", "floor_slope", "precision", "repeat_factor", "n_repeat_pairs",
              "noise_from_repeats", "kde_lo", "kde_hi", "cv_rms", "train_scaled", "chi2_log_snr", "chi2_threshold",
              "n_used", "n_clipped")
    SCALARS = ("error_model", "floor_snr", "distance_labels", "distance_threshold", "n_neighbours", "low_snr",
               "max_missing_fraction", "options", "diagnostics")

    # ------------------------------------------------------------------ errors
    def scaled_noise(self, raw_errors):
        """The noise part of the error: (M, L) ``noise_scale × raw_errors`` (a σ or f σ)."""
        return np.asarray(raw_errors, dtype=float) * self.noise_scale

    def precision_at(self, snr):
        """(M, L) precision A exp(−S/N/τ) + C at each star's S/N (Nandakumar+2022 §3.7.2)."""
        snr = np.reshape(np.asarray(snr, dtype=float), (-1, 1))
        return exp_precision(snr, self.precision[:, 0], self.precision[:, 1], self.precision[:, 2])

    def total(self, noise, snr):
        """The final 1σ error (M, L) from a noise part (M, L) and the S/N (M,) (or a scalar).

        ``floor``: sqrt(noise² + (b (S/N/S/N₀)^(−γ))²). ``nandakumar``: max(noise,
        precision(S/N)). For one spectrum ``noise = scaled_noise(raw_errors)`` and its S/N
        (``errors``). For visits of one star combined into one value: the noise part of the
        combination (the visits' scaled noises combined as independent errors, e.g. by inverse
        variance) and, as S/N, the highest single visit's: the mismatch part is the same in
        every visit and does not average down (with γ = 0 the S/N does not matter).
        """
        noise = np.asarray(noise, dtype=float)
        if self.error_model == "nandakumar":
            return np.maximum(noise, self.precision_at(snr))  # NaN noise stays NaN
        m = mismatch(self.floor, self.floor_slope, np.reshape(np.asarray(snr, dtype=float), (-1, 1)), self.floor_snr)
        return np.sqrt(noise * noise + m * m)

    def errors(self, raw_errors, snr):
        """Calibrated (M, L) errors: ``total(scaled_noise(raw_errors), snr)``."""
        return self.total(self.scaled_noise(raw_errors), snr)

    # ------------------------------------------------------------------ flags
    def extrapolated(self, labels):
        """(M, L) bool: label outside its Wheeler+2020 KDE bounds (False where NaN)."""
        labels = np.asarray(labels, dtype=float)
        return (labels < self.kde_lo) | (labels > self.kde_hi)

    def kiel_extrap(self, extrapolated):
        """(M,) bool: Teff or log g extrapolated (False when the model has neither)."""
        idx = [i for i, n in enumerate(self.label_names) if n.lower() in KIEL_LABELS]
        extrapolated = np.asarray(extrapolated, dtype=bool)
        return extrapolated[:, idx].any(axis=1) if idx else np.zeros(extrapolated.shape[0], dtype=bool)

    @property
    def distance_index(self):
        return [self.label_names.index(n) for n in self.distance_labels]

    def tree(self):
        """The cKDTree over ``train_scaled`` (built on first use, not saved)."""
        tree = self.__dict__.get("_kdtree")
        if tree is None or tree[0] is not self.train_scaled:
            tree = (self.train_scaled, cKDTree(self.train_scaled))
            self.__dict__["_kdtree"] = tree  # built once per calibration (not saved)
        return tree[1]

    def train_distance(self, labels):
        """(M,) Nandakumar+2022 Eq. 5 distance of labels (M, L) to the training set (NaN if not finite)."""
        idx = self.distance_index
        scaled = np.asarray(labels, dtype=float)[:, idx] / self.cv_rms[idx]
        return training_distance(self.tree(), scaled, self.n_neighbours)

    def far_from_training(self, distance):
        """(M,) bool: distance above ``distance_threshold``."""
        return np.asarray(distance, dtype=float) > self.distance_threshold

    def chi2_threshold_at(self, snr):
        """(M,) χ²/dof threshold at each S/N (constant beyond the CV's S/N range)."""
        return chi2_threshold_at(self.chi2_log_snr, self.chi2_threshold, snr)

    def high_chi2(self, chi2, dof, snr):
        """(M,) bool: χ²/dof above the threshold for the star's S/N."""
        with np.errstate(invalid="ignore", divide="ignore"):
            rchi2 = np.asarray(chi2, dtype=float) / np.maximum(np.asarray(dof), 1)
        return rchi2 > self.chi2_threshold_at(snr)

    # ------------------------------------------------------------------ reports and files
    def table(self):
        """Per-label summary (astropy Table): the error model, bounds, scales and counts."""
        from astropy.table import Table

        return Table(dict(
            label=self.label_names, error_model=[self.error_model] * len(self.label_names),
            noise_scale=self.noise_scale, floor=self.floor, floor_slope=self.floor_slope,
            floor_snr=[self.floor_snr] * len(self.label_names), noise_from_repeats=self.noise_from_repeats,
            repeat_factor=self.repeat_factor, n_repeat_pairs=self.n_repeat_pairs,
            precision_A=self.precision[:, 0], precision_tau=self.precision[:, 1], precision_C=self.precision[:, 2],
            kde_lo=self.kde_lo, kde_hi=self.kde_hi, cv_rms=self.cv_rms,
            distance_label=[n in self.distance_labels for n in self.label_names],
            n_used=self.n_used, n_clipped=self.n_clipped,
        ))

    def to_arrays(self):
        """The arrays of the model file, ``calibration_<name>``."""
        return {ARRAY_PREFIX + k: np.asarray(getattr(self, k)) for k in self.ARRAYS}

    def metadata(self):
        """The JSON block of the model file (scalars; the arrays are in :meth:`to_arrays`)."""
        meta = {k: getattr(self, k) for k in self.SCALARS}
        meta["distance_threshold"] = float(self.distance_threshold)
        meta["floor_snr"] = float(self.floor_snr)
        meta["n_neighbours"] = int(self.n_neighbours)
        meta["low_snr"], meta["max_missing_fraction"] = float(self.low_snr), float(self.max_missing_fraction)
        return dict(version=CALIBRATION_VERSION, **meta)

    @classmethod
    def from_file(cls, arrays, meta, label_names, path="model file"):
        """The calibration stored by :meth:`to_arrays` and :meth:`metadata` (ModelFileError names what is wrong)."""
        if meta.get("version") != CALIBRATION_VERSION:
            raise ModelFileError(f"{path}: calibration block version {meta.get('version')!r} is not {CALIBRATION_VERSION}")
        missing = [ARRAY_PREFIX + k for k in cls.ARRAYS if ARRAY_PREFIX + k not in arrays]
        missing += [k for k in cls.SCALARS if k not in meta]
        if missing:
            raise ModelFileError(f"{path}: calibration is missing {missing}")
        values = {k: arrays[ARRAY_PREFIX + k] for k in cls.ARRAYS}
        L = len(label_names)
        for k, v in values.items():
            want = {"precision": (L, 3), "train_scaled": (v.shape[0], len(meta["distance_labels"])),
                    "chi2_log_snr": values["chi2_threshold"].shape, "chi2_threshold": v.shape}.get(k, (L,))
            if v.shape != want:
                raise ModelFileError(f"{path}: array {ARRAY_PREFIX + k!r} has shape {v.shape}, expected {want}")
        unknown = [n for n in meta["distance_labels"] if n not in label_names]
        if unknown:
            raise ModelFileError(f"{path}: calibration distance labels {unknown} are not model labels {label_names}")
        values["noise_from_repeats"] = values["noise_from_repeats"].astype(bool)
        scalars = {k: meta[k] for k in cls.SCALARS}
        return cls(label_names=list(label_names), **values, **scalars)


def _check_label_errors(label_errors, shape, label_names):
    """Reference-label errors as (N, L) float, 0 where NaN; names the label and star of a negative one."""
    if label_errors is None:
        return np.zeros(shape)
    e = np.asarray(label_errors, dtype=float)
    if e.ndim == 1 and len(label_names) == 1:
        e = e[:, None]
    if e.shape != shape:
        raise ShapeError(f"label_errors have shape {e.shape}; expected {shape}, rows as the cross-validation's")
    neg = np.argwhere(e < 0)
    if neg.size:
        n, l = neg[0]
        raise CalibrationError(f"label_errors of {label_names[l]!r} is negative ({e[n, l]}) for star {n}")
    return np.where(np.isfinite(e), e, 0.0)


def _check_cv(cv, label_names):
    if list(cv.label_names) != list(label_names):
        raise LabelError(f"the cross-validation is of labels {list(cv.label_names)}, the model of {list(label_names)}")
    for key in ("chi2", "dof", "snr"):
        if getattr(cv, key, None) is None:
            raise CalibrationError(f"the cross-validation result has no per-star {key!r}; rerun cross_validate()")


def _repeat_statistics(repeats, infer, label_names):
    """Infer repeat visits: Eq. 6 factors, pair counts and precision curve per label.

    Returns f over all pairs (Nandakumar+2022 Eq. 6), f over the pairs of visits both below the
    visits' median S/N (where noise dominates; all pairs when fewer than ``MIN_REPEAT_PAIRS``),
    the number of pairs, and the precision curve (L, 3).
    """
    try:
        flux, ivar, star_id = repeats
    except (TypeError, ValueError):
        raise CalibrationError("repeats must be a tuple (flux (R, P), ivar (R, P), star_id (R,))") from None
    star_id = np.asarray(star_id).ravel()
    r = infer(flux, ivar)
    if star_id.shape[0] != r.labels.shape[0]:
        raise ShapeError(f"repeats: star_id has {star_id.shape[0]} entries but flux has {r.labels.shape[0]} spectra")
    L = len(label_names)
    factor, factor_low = np.full(L, np.nan), np.full(L, np.nan)
    n_pairs, precision = np.zeros(L, dtype=np.int64), np.full((L, 3), np.nan)
    raw = r.raw_errors
    for l in range(L):
        ok = r.converged & ~r.singular & np.isfinite(r.labels[:, l]) & np.isfinite(raw[:, l]) & np.isfinite(r.snr)
        i, j = visit_pairs(star_id, ok)
        dl, s1, s2 = r.labels[i, l] - r.labels[j, l], raw[i, l], raw[j, l]
        factor[l], n_pairs[l] = repeat_scale_factor(dl, s1, s2)  # Nandakumar+2022 Eq. 6
        low = np.maximum(r.snr[i], r.snr[j]) <= np.median(r.snr[ok]) if ok.any() else np.zeros(0, bool)
        enough = low.sum() >= MIN_REPEAT_PAIRS
        factor_low[l] = repeat_scale_factor(dl[low], s1[low], s2[low])[0] if enough else factor[l]
        best, other = best_visit_pairs(star_id, r.snr, ok)
        precision[l] = precision_curve(*precision_points(r.labels[best, l] - r.labels[other, l], r.snr[other]))
    return factor, factor_low, n_pairs, precision


def fit_calibration(cv, label_names, label_errors=None, repeats=None, infer=None, error_model="floor",
                    distance_labels=None, distance_threshold=None, n_neighbours=10, low_snr=DEFAULT_LOW_SNR,
                    max_missing_fraction=DEFAULT_MAX_MISSING_FRACTION, floor_slope=None, min_noise_scale=1.0, clip=4.0,
                    kde_level=0.1, chi2_percentile=99.0, training=None):
    """Fit a model's :class:`Calibration` from its cross-validation (and repeat visits).

    Parameters
    ----------
    cv : CVResult
        Of the model's training set (``cross_validate``); its truth are the training labels.
    label_names : list of str
    label_errors : (N, L) float, optional
        1σ errors of the reference labels (rows as ``cv``; NaN counts as 0): subtracted in
        quadrature, var(pred − ref) = a²σ² + b²(S/N/S/N₀)^(−2γ) + e_ref².
    repeats : (flux (R, P), ivar (R, P), star_id (R,)), optional
        Repeat visits of any stars (a star counts with ≥ 2 visits), inferred here: fix a from
        Nandakumar+2022 Eq. 6 for labels with ≥ ``MIN_REPEAT_PAIRS`` pairs (floor: over the
        pairs below the visits' median S/N; nandakumar: over all pairs), and give the
        precision curve (§3.7.2).
    infer : callable (flux, ivar) -> InferenceResult
        The model's inference (needed with ``repeats``).
    error_model : {"floor", "nandakumar"}
        ``nandakumar`` needs ``repeats``.
    distance_labels : list of str, optional
        Labels of the Eq. 5 distance (default :func:`extrapolation.default_distance_labels`).
    distance_threshold : float, optional
        Default 2 × the number of distance labels (8 for four, as Nandakumar+2022).
    n_neighbours : int
        Nearest training stars averaged (10).
    low_snr, max_missing_fraction : float
        LOW_SNR below this S/N (20); MISSING_PIXELS above this fraction (0.2).
    floor_slope : float, optional
        γ of the mismatch part b (S/N/S/N₀)^(−γ): fitted in [0, 1] per label by default; 0
        makes it a constant floor.
    min_noise_scale : float
        Lower bound of a fitted from the CV (1: formal errors are the noise errors at low S/N).
    clip : float
        Residuals beyond ``clip`` σ are dropped from the error-model fit (4).
    kde_level : float
        Wheeler+2020's 10 %: biased where P(l_true ≤ l_inf | l_inf) ≤ level or ≥ 1 − level.
    chi2_percentile : float
        HIGH_CHI2 above this percentile of the CV's χ²/dof at the star's S/N (99).
    training : (n_train, label_min (L,), label_max (L,)), optional
        The model's training set's size and range: a warning when ``cv.truth`` is another
        set (the distance flag takes ``cv.truth`` as the training set).

    Returns
    -------
    Calibration

    Raises
    ------
    CalibrationError, LabelError, ShapeError
        An unknown error model; nandakumar without repeats or with too few pairs for a label
        (named); a bad distance label or threshold; label errors of the wrong shape or sign.
    """
    names = list(label_names)
    L = len(names)
    _check_cv(cv, names)
    if error_model not in ERROR_MODELS:
        raise CalibrationError(f"error_model {error_model!r} is not one of {ERROR_MODELS}")
    if error_model == "nandakumar" and repeats is None:
        raise CalibrationError("error_model='nandakumar' needs repeat visits: pass repeats=(flux, ivar, star_id)")
    dist, threshold = _distance_options(names, distance_labels, distance_threshold)
    e_ref = _check_label_errors(label_errors, cv.truth.shape, names)
    # a truth may be NaN (a training set fitted with missing="impute"): per-label statistics
    # use the stars that have that label; stars with no label at all were not trained on
    has = np.isfinite(cv.truth)
    rows = has.any(axis=1)
    if training is not None and not (int(rows.sum()) == training[0] and _same(cv.truth, has, np.nanmin, training[1])
                                     and _same(cv.truth, has, np.nanmax, training[2])):
        warnings.warn("the cross-validation's labels are not the model's training set; the training distance "
                      "uses the cross-validation's labels", stacklevel=3)
    resid, raw = cv.predicted - cv.truth, cv.errors
    valid = np.asarray(cv.converged, bool) & np.all(np.isfinite(cv.predicted), axis=1) & np.all(np.isfinite(raw), axis=1)
    if valid.sum() < max(10, n_neighbours):
        raise CalibrationError(f"only {int(valid.sum())} cross-validated stars have finite predictions; "
                               f"need at least {max(10, n_neighbours)}")
    factor, fixed, n_pairs, precision = _noise_from_repeats(repeats, infer, names, error_model)
    a, b, gamma = np.empty(L), np.empty(L), np.empty(L)
    n_used, n_clipped = np.zeros(L, dtype=np.int64), np.zeros(L, dtype=np.int64)
    lo, hi = np.empty(L), np.empty(L)
    snr = np.asarray(cv.snr, dtype=float)
    snr0 = float(np.median(snr[valid & np.isfinite(snr)])) if np.any(valid & np.isfinite(snr)) else 1.0
    for l in range(L):
        ok = valid & has[:, l]  # the stars with a reference value of this label
        a[l], b[l], gamma[l], n_used[l], n_clipped[l] = fit_noise_and_floor(
            resid[ok, l], raw[ok, l], e_ref[ok, l], snr[ok], snr0, noise_scale=fixed[l], slope=floor_slope,
            min_noise_scale=min_noise_scale, clip=clip)
        if not (np.isfinite(a[l]) and np.isfinite(b[l])):
            raise CalibrationError(f"the error model of label {names[l]!r} could not be fitted ({n_used[l]} usable stars)")
        lo[l], hi[l] = kde_bounds(cv.truth[ok, l], cv.predicted[ok, l], level=kde_level)  # Wheeler+2020 §4
    # K_l of Nandakumar+2022 Eq. 5 (invalid entries add 0, so complete truth sums as before)
    counted = valid[:, None] & has
    cv_rms = np.sqrt(np.sum(np.where(counted, resid, 0.0) ** 2, axis=0) / np.maximum(counted.sum(axis=0), 1))
    idx = [names.index(n) for n in dist]
    if np.any(cv_rms[idx] <= 0):
        raise CalibrationError(f"a distance label has zero CV RMS: {dict(zip(dist, cv_rms[idx]))}")
    # the training stars' places in label space: the reference labels, and where one is
    # missing the star's cross-validated estimate of it; stars with neither are left out
    place = np.where(has, cv.truth, cv.predicted)[:, idx] / cv_rms[idx]
    in_tree = np.all(np.isfinite(place), axis=1) & rows
    tree_row = np.cumsum(in_tree) - 1  # each star's row in train_scaled (where in_tree)
    with np.errstate(invalid="ignore", divide="ignore"):
        rchi2 = np.where(np.asarray(cv.dof) > 0, cv.chi2 / np.maximum(cv.dof, 1), np.nan)
    log_snr, thresh = chi2_threshold_curve(rchi2[valid], snr[valid], percentile=chi2_percentile)
    cal = Calibration(
        label_names=names, error_model=error_model, noise_scale=a, floor=b, floor_slope=gamma, floor_snr=snr0,
        precision=precision, repeat_factor=factor, n_repeat_pairs=n_pairs,
        noise_from_repeats=np.array([f is not None for f in fixed]), kde_lo=lo, kde_hi=hi, cv_rms=cv_rms,
        distance_labels=dist, train_scaled=np.ascontiguousarray(place[in_tree]),
        distance_threshold=threshold, n_neighbours=int(n_neighbours), chi2_log_snr=log_snr, chi2_threshold=thresh,
        low_snr=float(low_snr), max_missing_fraction=float(max_missing_fraction), n_used=n_used, n_clipped=n_clipped,
        options=dict(clip=float(clip), kde_level=float(kde_level), chi2_percentile=float(chi2_percentile),
                     floor_slope=None if floor_slope is None else float(floor_slope), min_noise_scale=float(min_noise_scale)),
    )
    cal.diagnostics = _cv_flag_rates(cal, cv.predicted[valid], np.where(in_tree, tree_row, -1)[valid])
    return cal


def _same(truth, has, reduce, expected):
    """True when each label's reduce (nanmin/nanmax) over its finite truth equals ``expected`` (L,)."""
    got = np.array([reduce(truth[has[:, l], l]) if has[:, l].any() else np.nan for l in range(truth.shape[1])])
    return np.array_equal(got, np.asarray(expected, dtype=float), equal_nan=True)


def _distance_options(names, distance_labels, distance_threshold):
    """The Eq. 5 labels and threshold (defaults: Teff, log g, [Fe/H], α; 2 per label)."""
    dist = default_distance_labels(names) if distance_labels is None else list(distance_labels)
    bad = [n for n in dist if n not in names] or ([] if dist else ["(none)"])
    if bad:
        raise LabelError(f"distance_labels {bad} are not labels of the model {names}")
    threshold = 2.0 * len(dist) if distance_threshold is None else float(distance_threshold)
    if not threshold > 0:
        raise CalibrationError(f"distance_threshold must be positive, got {distance_threshold!r}")
    return dist, threshold


def _noise_from_repeats(repeats, infer, names, error_model):
    """Eq. 6 factor f (L,), the fixed noise scale of each label (None: fit it), pair counts, precision (L, 3)."""
    L = len(names)
    factor, n_pairs, precision = np.full(L, np.nan), np.zeros(L, dtype=np.int64), np.full((L, 3), np.nan)
    if repeats is None:
        return factor, [None] * L, n_pairs, precision
    if infer is None:
        raise CalibrationError("repeats given without the model's infer()")
    factor, factor_low, n_pairs, precision = _repeat_statistics(repeats, infer, names)
    usable = np.isfinite(factor) & (factor > 0) & (n_pairs >= MIN_REPEAT_PAIRS)
    if error_model == "nandakumar" and not usable.all():
        l = int(np.flatnonzero(~usable)[0])
        raise CalibrationError(f"error_model='nandakumar': label {names[l]!r} has {n_pairs[l]} usable pairs of "
                               f"repeat visits; need {MIN_REPEAT_PAIRS}")
    if not usable.all():
        few = [names[l] for l in np.flatnonzero(~usable)]
        warnings.warn(f"fewer than {MIN_REPEAT_PAIRS} pairs of repeat visits for {few}: their noise scale is fitted "
                      "from the CV", stacklevel=4)
    # nandakumar: the paper's f over all pairs; floor: f where noise dominates the error (low S/N)
    chosen = factor if error_model == "nandakumar" else factor_low
    return factor, [float(chosen[l]) if usable[l] else None for l in range(L)], n_pairs, precision


def _cv_flag_rates(cal, predicted, rows):
    """How often the flags fire on the cross-validated training stars themselves (a diagnostic).

    The distance of each CV prediction is to the training set without the star itself
    (``rows``: each prediction's row in ``cal.train_scaled``, −1 where it has none).
    """
    idx = cal.distance_index
    scaled = predicted[:, idx] / cal.cv_rms[idx]
    k = int(min(cal.n_neighbours + 1, cal.train_scaled.shape[0]))
    d, j = cal.tree().query(scaled, k=k, workers=-1)
    d, j = d.reshape(len(rows), k), j.reshape(len(rows), k)
    own = j == rows[:, None]
    keep = ~own & (np.cumsum(~own, axis=1) <= k - 1)  # the k − 1 nearest others
    dist = np.sum(np.where(keep, d * d, 0.0), axis=1) / np.maximum(keep.sum(axis=1), 1)
    out = dict(n_cv=int(len(rows)), cv_far_fraction=float(np.mean(dist > cal.distance_threshold)),
               cv_distance_median=float(np.median(dist)), cv_distance_p99=float(np.percentile(dist, 99.0)),
               cv_extrapolated_fraction=float(np.mean(cal.extrapolated(predicted).any(axis=1))))
    if out["cv_far_fraction"] > FAR_WARNING:
        warnings.warn(
            f"FAR_FROM_TRAINING (distance > {cal.distance_threshold:g}) flags {out['cv_far_fraction']:.0%} of the "
            f"cross-validated training stars themselves: the training set is sparse in units of its CV scatter; "
            f"distance_threshold={out['cv_distance_p99']:.3g} would flag 1 % of them (docs/calibration.md)", stacklevel=4)
    return out


def assess(calibration, labels, raw_errors, chi2, dof, converged, singular, snr, outside_training, n_pixels, label_names=None):
    """Calibrated errors, flags and their parts for M inferred stars (vectorised, no loop over stars).

    Parameters
    ----------
    calibration : Calibration or None
        None: errors are not calibrated (``errors`` None), the flags that need the calibration
        are False, ``train_distance`` NaN, and every star has the UNCALIBRATED bit.
    labels, raw_errors : (M, L) float
    chi2 : (M,) float; dof : (M,) int (valid pixels − L)
    converged, singular : (M,) bool
    snr : (M,) float
    outside_training : (M, L) bool
    n_pixels : int
        The model's pixels (for the missing fraction).
    label_names : list of str, optional
        Used when ``calibration`` is None: the EXTRAPOLATED and OUTSIDE_TRAINING bits look at
        the non-abundance labels only (``extrapolation.parameter_mask``); per-label flags stay
        in ``extrapolated``.

    Returns
    -------
    dict
        errors (M, L) or None, missing_fraction (M,), extrapolated (M, L), kiel_extrap (M,),
        train_distance (M,), far_from_training (M,), high_chi2 (M,), flags (M,) int64.
    """
    M, L = labels.shape
    cal = calibration
    names = cal.label_names if cal is not None else label_names
    params = parameter_mask(names) if names is not None else np.ones(L, dtype=bool)
    no_data = ~np.all(np.isfinite(labels), axis=1)
    missing = missing_fraction(np.asarray(dof) + L, n_pixels)
    low, max_missing = (cal.low_snr, cal.max_missing_fraction) if cal else (DEFAULT_LOW_SNR, DEFAULT_MAX_MISSING_FRACTION)
    if cal is None:
        errors, extrap, kiel = None, np.zeros((M, L), dtype=bool), np.zeros(M, dtype=bool)
        distance, far, high = np.full(M, np.nan), np.zeros(M, dtype=bool), np.zeros(M, dtype=bool)
    else:
        errors = cal.errors(raw_errors, snr)
        extrap = cal.extrapolated(labels)
        kiel = cal.kiel_extrap(extrap)
        distance = cal.train_distance(labels)
        far = cal.far_from_training(distance)
        high = cal.high_chi2(chi2, dof, snr)
    flags = compose(
        no_data=no_data, not_converged=~np.asarray(converged, bool), singular=singular,
        low_snr=~(np.asarray(snr) >= low), missing_pixels=missing > max_missing, high_chi2=high,
        outside_training=np.asarray(outside_training, bool)[:, params].any(axis=1), extrapolated=extrap[:, params].any(axis=1),
        kiel_extrap=kiel, far_from_training=far, uncalibrated=np.full(M, cal is None),
    )
    return dict(errors=errors, missing_fraction=missing, extrapolated=extrap, kiel_extrap=kiel, train_distance=distance,
                far_from_training=far, high_chi2=high, flags=flags)
