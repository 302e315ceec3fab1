"""The trained Cannon model: ``CannonModel`` (fit / infer / predict / pixel_chi2 / save / load).

A scikit-learn-style estimator: parameters are set in ``__init__``; everything learned
from data carries a trailing underscore (``theta_``, ``s2_``, ``scaler_``...). The numerical
work is in ``training`` (θ, s²), ``inference`` (labels), ``persistence`` (model files) and
``checks`` (input validation); this module holds the state and the public API.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from cannonade.cannon.calibration import FormalErrorsNotice, assess, fit_calibration
from cannonade.cannon.checks import (
    as_label_array,
    check_censors,
    check_fixed_s2,
    check_missing_labels,
    check_label_names,
    check_model_params,
    check_pixel_array,
    check_positive_int,
    check_regularization,
    check_rows,
    check_spectra,
    check_training_labels,
    check_training_set,
    dependent_columns,
    usable_pixels_error,
)
from cannonade.cannon.imputation import MAX_MISSING_FRACTION, fit_scaler, impute_and_train
from cannonade.cannon.inference import START_NAMES, infer_spectra, pixel_chi2, theta_products
from cannonade.cannon.persistence import MODEL_FORMAT, MODEL_FORMAT_VERSION, load_model, save_model
from cannonade.cannon.spectral_setup import SpectralSetup, check_setup
from cannonade.cannon.training import train_pixels
from cannonade.cannon.vectorizer import LabelScaler, active_terms, design_matrix, term_exponents, term_names, with_constant
from cannonade.exceptions import NotFittedError, ShapeError
from cannonade.execution import device as devices
from cannonade.flags import compose

logger = logging.getLogger(__name__)

__all__ = ["CannonModel", "InferenceResult", "MODEL_FORMAT", "MODEL_FORMAT_VERSION"]


@dataclass
class InferenceResult:
    """Labels inferred for M spectra, in physical units.

    Attributes
    ----------
    labels : (M, L) float
        NaN for a star with no more valid pixels than labels.
    cov : (M, L, L) float
        Covariance from (JᵀWJ)⁻¹ with the model scatter s² in W; NaN where ``singular``.
    chi2 : (M,) float
        Σ (f − model)² / (σ² + s²) over valid pixels.
    dof : (M,) int
        Valid pixels minus the number of labels.
    converged : (M,) bool
        False where no start converged (labels are then the lowest-χ² point reached, not trusted).
    start : (M,) int
        Index of the winning start in ``start_names``.
    outside_training : (M, L) bool
        Label outside the training set's [min, max] (an extrapolation).
    singular : (M,) bool
        JᵀWJ could not be inverted: the spectrum does not constrain some direction in label
        space (its valid pixels are all ones where a label is censored, no pixel depends on
        a label, or it has no more valid pixels than labels). ``cov`` and ``errors`` are NaN
        there, never a number; ``converged`` may still be True (χ² reached its minimum, but
        along the unconstrained direction the labels stay where the start put them).
        Constructed without it, it is taken as "``cov`` not finite".
    snr : (M,) float
        Median of flux·sqrt(ivar) over the valid model pixels: the S/N of the calibration.
    missing_fraction : (M,) float
        Fraction of the model's pixels without data.
    calibrated_errors : (M, L) float or None
        The calibrated 1σ errors (``errors``); None when the model is not calibrated.
    extrapolated : (M, L) bool
        Label beyond its Wheeler+2020 §4 KDE bounds; ``kiel_extrap`` (M,): Teff or log g is.
    train_distance : (M,) float
        Nandakumar+2022 Eq. 5: mean squared distance to the 10 nearest training stars in
        CV-RMS units (NaN uncalibrated); ``far_from_training`` (M,) bool: above the threshold.
    high_chi2 : (M,) bool
        χ²/dof above the calibration's threshold for the star's S/N.
    flags : (M,) int64
        Bitmask of :class:`cannonade.flags.Flag`; recommended cut ``flags == 0``.
    formal_notice : callable, optional
        Called when ``errors`` falls back to the formal errors (the model's warn-once).

    The calibration-dependent fields are False/NaN for an uncalibrated model (and for a
    result constructed without them).
    """

    labels: np.ndarray
    cov: np.ndarray
    chi2: np.ndarray
    dof: np.ndarray
    converged: np.ndarray
    start: np.ndarray
    outside_training: np.ndarray
    label_names: list = field(default_factory=list)
    n_iter: np.ndarray | None = None
    start_names: tuple = START_NAMES
    singular: np.ndarray | None = None
    snr: np.ndarray | None = None
    missing_fraction: np.ndarray | None = None
    calibrated_errors: np.ndarray | None = None
    extrapolated: np.ndarray | None = None
    kiel_extrap: np.ndarray | None = None
    train_distance: np.ndarray | None = None
    far_from_training: np.ndarray | None = None
    high_chi2: np.ndarray | None = None
    flags: np.ndarray | None = None
    formal_notice: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.singular is None:
            self.singular = ~np.all(np.isfinite(self.cov), axis=(1, 2))
        M, L = self.labels.shape
        for key, value in (("snr", np.nan), ("missing_fraction", np.nan), ("train_distance", np.nan),
                           ("kiel_extrap", False), ("far_from_training", False), ("high_chi2", False)):
            if getattr(self, key) is None:
                setattr(self, key, np.full(M, value))
        if self.extrapolated is None:
            self.extrapolated = np.zeros((M, L), dtype=bool)
        if self.flags is None:
            self.flags = compose(no_data=~np.all(np.isfinite(self.labels), axis=1), not_converged=~self.converged,
                                 singular=self.singular, outside_training=self.outside_training.any(axis=1),
                                 uncalibrated=np.full(M, self.calibrated_errors is None))

    @property
    def raw_errors(self):
        """(M, L) formal 1σ uncertainties, sqrt of the covariance diagonal (NaN where ``singular``)."""
        return np.sqrt(np.diagonal(self.cov, axis1=1, axis2=2))

    @property
    def calibrated(self):
        """True when ``errors`` are calibrated (the model had a calibration)."""
        return self.calibrated_errors is not None

    @property
    def errors(self):
        """(M, L) calibrated 1σ label uncertainties (NaN where ``singular``).

        From an uncalibrated model the formal ``raw_errors``, with an
        ``UncalibratedWarning`` the first time per model.
        """
        if self.calibrated_errors is not None:
            return self.calibrated_errors
        if self.formal_notice is not None:
            self.formal_notice()
        return self.raw_errors

    @property
    def reduced_chi2(self):
        return self.chi2 / np.maximum(self.dof, 1)

    def to_table(self, prefix=""):
        """An astropy Table: per label the value, ``e_`` (calibrated), ``raw_e_`` and ``_extrap``;
        chi2, dof, snr, converged, singular, outside_training, train_distance,
        far_from_training, kiel_extrap, flags."""
        from astropy.table import Table

        t = Table()
        err, raw = self.errors, self.raw_errors
        for i, name in enumerate(self.label_names):
            t[prefix + name] = self.labels[:, i]
            t[f"e_{prefix}{name}"] = err[:, i]
            t[f"raw_e_{prefix}{name}"] = raw[:, i]
            t[f"{prefix}{name}_extrap"] = self.extrapolated[:, i]
        for key in ("chi2", "dof", "snr", "converged", "singular"):
            t[key] = getattr(self, key)
        t["outside_training"] = self.outside_training.any(axis=1)
        for key in ("train_distance", "far_from_training", "kiel_extrap", "flags"):
            t[key] = getattr(self, key)
        return t


class CannonModel:
    """The Cannon: a per-pixel polynomial in the labels with per-pixel intrinsic scatter.

    Wheeler+2020 Eqs. 2–5; Nandakumar+2022 Eqs. 1–4. Choices and measurements: docs/model.md.

    Parameters
    ----------
    label_names : list of str
    order : int
        Polynomial order of the vectorizer (1, 2, 3, ...). Ignored if ``terms`` is given.
    scale : {"standard", "percentile", "none"} or dict
        Label scaling: standard = (ℓ − mean)/std (Wheeler+2020 §3); percentile =
        (ℓ − p50)/(p97.5 − p2.5) (Nandakumar+2022 Eq. 2); or fixed ``{"offset", "scale"}``.
    censors : dict {label_name: (P,) bool}, optional
        True where the label may act. At a pixel where a label is censored every term
        containing it is dropped and its θ is exactly 0.
    regularization : float or (P,) float
        L1 strength Λ (Casey+2016). With Λ > 0, s² is first fitted without the penalty,
        then θ is re-solved with it.
    scatter : {"reml", "ml"}
        How s² is fitted: restricted likelihood (default; unbiased for the degrees of freedom
        used by θ) or the plain profile likelihood of Wheeler+2020 Eq. 5.
    terms : (K, L) int, optional
        Explicit term exponents (a constant term is added first if absent).
    pixel_chunk : int or None
        Pixels trained per batch (no effect on results). ``None`` (default): one batch's
        (N, pixels) arrays stay near 1 MB, in cache (2× faster than 512 pixels at the
        Nandakumar size).
    star_chunk : int or None
        Stars inferred per batch (no effect on results). ``None`` (default): a batch's (K, K)
        matrices take ~6 MB (256 stars for a quadratic model in 9 labels, 1024 in 6), 8 %
        faster than 1024 at the Wheeler size.
    show_progress : bool
        Progress bars for long fits/inferences (also silenced by ``CANNONADE_QUIET=1``).
    name : str, optional
        What the model is called (``"dwarf"``, ``"giant"``); saved in the model file and used
        by ``cannonade infer`` to choose a model per spectrum.
    device : {"cpu", "gpu"}
        Where the heavy array work runs: ``"gpu"`` trains (θ, s², in float64) and reduces
        each inference batch's χ² on a CUDA GPU through CuPy (``pip install
        'cannonade[gpu]'``; docs/scale.md), the per-star Levenberg–Marquardt stays on the
        host. Learned arrays are NumPy either way; the saved file does not record the device
        (a model trained on a GPU loads as ``"cpu"``). Checked here (ParameterError); a GPU
        that cannot be used raises DeviceError from ``fit``/``infer``/``predict``/``pixel_chi2``.

    Attributes
    ----------
    theta_ : (P, K) float
        θ per pixel, for the scaled labels; ``s2_`` : (P,) float, the intrinsic scatter s².
    scaler_ : LabelScaler
        ``offset_``, ``scale_`` (L,): scaled = (ℓ − offset) / scale.
    pixel_ok_ : (P,) bool
        Pixels the training set constrained (the others are ignored at inference).
    label_min_, label_max_ : (L,) float
        The training set's label range; ``n_train_`` its size, ``training_hash_`` its SHA-256.
        With ``fit(..., missing="impute")``: the range of the reference (known) values only,
        ``n_train_`` the stars kept, and the hash over the reference labels as given (NaN
        where missing) and the kept stars' spectra — the imputed values enter none of them.
    imputed_ : (N, L) bool
        Rows as the labels given to ``fit``: True where a missing label was imputed (all
        False for complete labels). ``imputed_values_`` (N, L) float: those values (physical
        units; NaN elsewhere); ``dropped_`` (N,) bool: stars dropped for having no label;
        ``impute_converged_`` (N,) bool: the last conditional fit of the star's missing labels
        converged (True for complete stars); ``n_impute_iter_`` int: impute-and-refit
        iterations run (0 for complete labels); ``impute_shifts_`` (n_impute_iter_,) float:
        the largest move of an imputed label per iteration, in standard deviations of that
        label. Not saved in the model file.
    spectral_setup_ : SpectralSetup
        How the training spectra were prepared (grid, normalisation, survey); what
        :meth:`check_spectra` compares new spectra with. Unknown fields are not checked.
    provenance_ : dict
        Where the model came from (:func:`cannonade.provenance.provenance`), saved with it.
    """

    def __init__(self, label_names, order=2, scale="standard", censors=None, regularization=0.0, scatter="reml",
                 terms=None, pixel_chunk=None, star_chunk=None, show_progress=True, name=None, device="cpu"):
        self.label_names = check_label_names(label_names)
        check_model_params(order, scale, regularization, scatter, pixel_chunk, star_chunk, terms)
        # the device is checked, not used, here: CuPy is resolved lazily by fit()/infer()
        self.device = devices.check_device(device)
        self.order = order
        self.scale = scale
        self.censors = censors
        self.regularization = regularization
        self.scatter = scatter
        self.terms = terms
        self.pixel_chunk = pixel_chunk
        self.star_chunk = star_chunk
        self.show_progress = show_progress
        self.name = name
        self.exponents = with_constant(terms) if terms is not None else term_exponents(len(self.label_names), order)
        if self.exponents.shape[1] != len(self.label_names):
            raise ShapeError(f"terms use {self.exponents.shape[1]} labels but {len(self.label_names)} label names were given")
        self.calibration_ = None  # a Calibration after calibrate() (docs/calibration.md)
        self._formal_notice = FormalErrorsNotice()  # warns once per model when errors are formal

    # ------------------------------------------------------------------ properties
    @property
    def term_names(self):
        return term_names(self.exponents, self.label_names)

    @property
    def n_terms(self):
        return self.exponents.shape[0]

    @property
    def is_fitted(self):
        return hasattr(self, "theta_")

    @property
    def s_(self):
        return np.sqrt(self.s2_)

    def _require_fitted(self, what):
        if not self.is_fitted:
            raise NotFittedError(f"CannonModel.{what}() called before fit(); train the model or load one first")

    def get_params(self):
        names = ("label_names", "order", "scale", "censors", "regularization", "scatter", "terms", "pixel_chunk",
                 "star_chunk", "show_progress", "name", "device")
        return {n: getattr(self, n) for n in names}

    def clone(self):
        """An unfitted copy with the same parameters."""
        return CannonModel(**self.get_params())

    # ------------------------------------------------------------------ training
    def fit(self, labels, flux, ivar, s2=None, wavelength=None, init_s2=None, setup=None, provenance=None,
            missing="refuse"):
        """Train θ and s² on a labelled set.

        Parameters
        ----------
        labels : (N, L) float, or a table with columns ``label_names``
        flux, ivar : (N, P) float
            Normalised flux and inverse variance; NaN/inf flux or ivar count as ivar = 0.
        s2 : (P,) float, optional
            Fix the scatter instead of fitting it.
        wavelength : (P,) float, optional
            Stored with the model.
        init_s2 : (P,) float, optional
            Starting point of the s² search (it is still maximised; cross-validation passes
            the full training set's s² to make each fold's fit cheaper).
        setup : SpectralSetup, optional
            How the training spectra were prepared (``SpectralSetup.from_store(store)``);
            its wavelength is used when ``wavelength`` is not given.
        provenance : dict, optional
            Kept as ``provenance_`` and saved with the model.
        missing : {"refuse", "impute"}
            What a NaN label means. ``"refuse"`` (default): an error (``LabelError`` naming
            the label and star). ``"impute"``: the reference catalogue lacks that label for
            that star; it is estimated from the star's spectrum with the model, its other
            labels held at their reference values, alternately with θ and s², until the
            imputed labels settle (:mod:`cannonade.cannon.imputation`, docs/model.md). A star
            with no label at all is dropped (``dropped_``); a label missing for more than
            half of the stars raises ``TrainingSetError`` naming it. With complete labels both
            give the same model. A fitting option, not a model parameter: it is not saved,
            and ``cross_validate`` takes it too.

        Returns
        -------
        self

        Raises
        ------
        ShapeError, LabelError, TrainingSetError, ParameterError
            Shapes that disagree; a non-finite (missing, masked) label (names label and star);
            a constant label or collinear labels (names them); too few stars; a fit that leaves
            the model no usable pixel (names why: e.g. no pixel has data in ≥ K stars); a
            parameter outside its allowed values (names it).
        """
        check_model_params(self.order, self.scale, self.regularization, self.scatter, self.pixel_chunk,
                           self.star_chunk, self.terms)
        devices.get_namespace(devices.check_device(self.device))  # DeviceError before any work
        lab = as_label_array(labels, self.label_names)
        if wavelength is None and setup is not None:
            wavelength = setup.wavelength
        flux, ivar = check_spectra(flux, ivar)  # bad pixels are cleaned batch by batch, not copied whole
        N, P = flux.shape
        check_training_set(lab, flux, self.label_names, self.n_terms, missing=missing)
        known, keep = (np.ones(lab.shape, dtype=bool), np.ones(N, dtype=bool)) if missing == "refuse" else \
            check_missing_labels(lab, self.label_names, MAX_MISSING_FRACTION)
        if not keep.all():  # stars with no label at all: nothing to train on
            logger.warning("fit: %d of %d training stars have no finite label and are dropped", int((~keep).sum()), N)
            lab, flux, ivar, known = lab[keep], flux[keep], ivar[keep], known[keep]
            check_training_set(lab, flux, self.label_names, self.n_terms, missing=missing)
        incomplete = not known.all()
        check_training_labels(lab, self.label_names, known)  # constant or collinear labels: named here
        regularization = check_regularization(self.regularization, P)
        wavelength = check_pixel_array(wavelength, P, "wavelength")
        s2 = None if s2 is None else check_fixed_s2(s2, P)
        active = active_terms(self.exponents, self.label_names, check_censors(self.censors, self.label_names, P), P)
        scaler = fit_scaler(self.scale, lab, known, self.label_names) if incomplete else LabelScaler(self.scale).fit(lab, self.label_names)
        # the training-set hash: shape, the reference labels (NaN where missing), the spectra
        digest = hashlib.sha256(str(lab.shape).encode() + np.ascontiguousarray(np.where(known, lab, np.nan)).tobytes())

        hashed = {"spectra": False}

        def train(X, start_s2, rows=None):
            """θ, s², pixel_ok on the stars ``rows`` (None: all; the first such fit hashes the spectra)."""
            f, i = (flux, ivar) if rows is None else (flux[rows], ivar[rows])
            dig = None if rows is not None or hashed["spectra"] else digest
            hashed["spectra"] |= dig is not None
            # on a GPU: X goes there (the spectra follow batch by batch), θ, s², pixel_ok come back
            out = train_pixels(devices.to_device(X, self.device), self.exponents, f, i, active, method=self.scatter,
                               s2=s2, init_s2=start_s2, regularization=regularization, pixel_chunk=self.pixel_chunk,
                               digest=dig, show_progress=self.show_progress)
            out = tuple(devices.to_host(a) for a in out)
            n_ok = int(out[2].sum())
            if n_ok <= len(self.label_names):  # nothing inference could use: say why now, not in infer()
                with np.errstate(invalid="ignore"):
                    n_valid = ((i > 0) & np.isfinite(i) & np.isfinite(f)).sum(axis=0)
                raise usable_pixels_error(n_ok, len(self.label_names), self.n_terms, n_valid,
                                          dependent_columns(X, self.term_names))
            return out

        imputed_values = np.full((N, lab.shape[1]), np.nan)
        if incomplete:
            fitted = impute_and_train(train, scaler.transform(lab), known, self.exponents, flux, ivar, init_s2=init_s2,
                                      star_chunk=self.star_chunk)
            theta, s2_fit, pixel_ok = fitted["theta"], fitted["s2"], fitted["pixel_ok"]
            imputed_values[np.flatnonzero(keep)] = np.where(known, np.nan, scaler.inverse(fitted["labels"]))
            self.n_impute_iter_, self.impute_shifts_ = fitted["n_iter"], np.asarray(fitted["shifts"])
            self.impute_converged_ = np.zeros(N, dtype=bool)
            self.impute_converged_[keep] = fitted["converged"]
        else:
            theta, s2_fit, pixel_ok = train(design_matrix(scaler.transform(lab), self.exponents), init_s2)
            self.n_impute_iter_, self.impute_shifts_ = 0, np.zeros(0)
            self.impute_converged_ = keep.copy()
        self.scaler_, self.theta_, self.s2_, self.pixel_ok_, self.active_ = scaler, theta, s2_fit, pixel_ok, active
        self.wavelength = wavelength
        self.n_train_ = lab.shape[0]
        # the range of the reference values only (an imputed label is not a measurement)
        self.label_min_, self.label_max_ = (np.nanmin(lab, axis=0), np.nanmax(lab, axis=0)) if incomplete else \
            (lab.min(axis=0), lab.max(axis=0))
        self.training_hash_ = digest.hexdigest()
        self.imputed_ = np.isfinite(imputed_values)
        self.imputed_values_ = imputed_values
        self.dropped_ = ~keep
        setup = setup if setup is not None else SpectralSetup()
        self.spectral_setup_ = SpectralSetup(wavelength=wavelength, grid=setup.grid, normalise=setup.normalise,
                                             norm_params=dict(setup.norm_params), survey=setup.survey,
                                             resolution=setup.resolution)
        self.provenance_ = dict(provenance or {})
        return self

    def check_spectra(self, setup, allow_mismatch=False, what="spectra"):
        """Refuse spectra prepared differently from the training spectra.

        Parameters
        ----------
        setup : SpectralSetup
            The spectra's preparation (``SpectralSetup.from_store(store)``).
        allow_mismatch : bool
            Warn instead of raising (an explicit override).
        what : str
            Names the spectra in the message (e.g. the store's path).

        Returns
        -------
        list of str
            The differences (empty when none).

        Raises
        ------
        SpectraMismatchError
            Grid, normalisation, survey or resolution differ; the message names each.
        """
        self._require_fitted("check_spectra")
        return check_setup(self.spectral_setup_, setup, allow_mismatch=allow_mismatch, what=what)

    # ------------------------------------------------------------------ prediction
    def predict(self, labels):
        """Model flux at the given labels.

        labels : (M, L) float or table  ->  (M, P) float (NaN at pixels the model cannot predict)
        """
        self._require_fitted("predict")
        lab = as_label_array(labels, self.label_names)
        xp = devices.get_namespace(self.device)
        D = xp.asarray(design_matrix(self.scaler_.transform(lab), self.exponents))
        flux = devices.to_host(D @ devices.to_device(self.theta_, self.device).T)  # the (M, P) product on the device
        flux[:, ~self.pixel_ok_] = np.nan
        return flux

    def pixel_chi2(self, labels, flux, ivar):
        """Each pixel's χ² contribution at given labels: w (f − model)², w = ivar / (1 + ivar s²).

        The Wheeler+2020 Eq. 3 weights, with the model scatter s² in the variance; summed over
        pixels at the inferred labels it is ``infer(...).chi2``. Summed over a window of
        pixels it is the windowed χ² of a line (e.g. for cleaning a training set).

        Parameters
        ----------
        labels : (M, L) float, or a table with columns ``label_names``
        flux, ivar : (M, P) float

        Returns
        -------
        (M, P) float
            0 where there is no information (ivar 0, negative or not finite; flux not finite;
            pixels the model cannot predict, ``pixel_ok_`` False). A row of NaN for a star
            whose labels are not all finite: the model is never evaluated at a made-up label.
        """
        self._require_fitted("pixel_chi2")
        lab = as_label_array(labels, self.label_names)
        flux, ivar = check_spectra(flux, ivar, n_pixels=self.theta_.shape[0])
        check_rows(lab, flux)
        on = [devices.to_device(a, self.device) for a in (self.theta_, self.s2_, flux, ivar)]  # host: as they are
        out = pixel_chi2(on[0], on[1], self.exponents, self.scaler_.transform(lab), on[2], on[3], self.pixel_ok_)
        return devices.to_host(out)

    def infer(self, flux, ivar, max_iter=100):
        """Labels of new spectra by maximum likelihood (batched multi-start Levenberg–Marquardt).

        Parameters
        ----------
        flux, ivar : (M, P) float
            Non-finite values count as ivar = 0. A float32 pair (as a store holds spectra) is
            used as it is, with the same results as its float64 copy.
        max_iter : int
            Levenberg–Marquardt iterations per start at most.

        With ``device="gpu"`` each batch's χ² reduction runs on the GPU (θ, s² and their
        products are put there once per model); the rest runs on the host.

        Returns
        -------
        InferenceResult
        """
        self._require_fitted("infer")
        max_iter = check_positive_int(max_iter, "max_iter")
        # float32 spectra (a store's) are read block by block as they are, never copied whole to float64
        flux, ivar = check_spectra(flux, ivar, n_pixels=self.theta_.shape[0], keep_float32=True)
        ok = self.pixel_ok_
        all_ok = bool(ok.all())
        theta, s2 = (self.theta_, self.s2_) if all_ok else (self.theta_[ok], self.s2_[ok])
        device = devices.check_device(self.device)
        if device == "cpu":
            cache = getattr(self, "_theta_pairs", None)
            if cache is None or cache[0] is not self.theta_:
                # θθᵀ products depend only on the model: computed once, reused by every infer() call
                cache = (self.theta_, theta_products(theta))
                self._theta_pairs = cache
            pairs = cache[1]
        else:
            # θ, s² and their (float64) products go to the device once per model, not per batch
            state = getattr(self, "_device_arrays", None)
            if state is None or state[0] is not self.theta_ or state[1] != device:
                theta_d, s2_d = devices.to_device(theta, device), devices.to_device(s2, device)  # DeviceError here
                state = (self.theta_, device, theta_d, s2_d, theta_products(theta_d))
                self._device_arrays = state
            theta, s2, pairs = state[2:]
        res = infer_spectra(theta, s2, self.exponents, flux, ivar, pixels=None if all_ok else ok, theta_pairs=pairs,
                            star_chunk=self.star_chunk, max_iter=max_iter, show_progress=self.show_progress,
                            device=device)
        labels = self.scaler_.inverse(res["labels"])
        sc = self.scaler_.scale_
        cov = res["cov"] * sc[None, :, None] * sc[None, None, :]  # back to physical units
        outside = (labels < self.label_min_) | (labels > self.label_max_)
        q = assess(self.calibration_, labels, np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), res["chi2"], res["dof"],
                   res["converged"], res["singular"], res["snr"], outside, int(ok.sum()), list(self.label_names))
        return InferenceResult(
            labels=labels, cov=cov, chi2=res["chi2"], dof=res["dof"], converged=res["converged"], start=res["start"],
            outside_training=outside, label_names=list(self.label_names), n_iter=res["n_iter"],
            singular=res["singular"], snr=res["snr"], calibrated_errors=q.pop("errors"), **q,
            formal_notice=self._formal_notice,
        )

    # ------------------------------------------------------------------ calibration
    def calibrate(self, cv, label_errors=None, repeats=None, error_model="floor", **options):
        """Calibrate errors and flags from this model's cross-validation; kept by :meth:`save`.

        ``cv``: ``cross_validate`` of the training set; ``label_errors`` (N, L): the reference
        labels' 1σ errors, rows as ``cv``; ``repeats``: (flux (R, P), ivar (R, P), star_id (R,))
        repeat visits of any stars; ``error_model``: "floor" sqrt((aσ)² + b²) or "nandakumar"
        max(fσ, precision(S/N)) (needs repeats); ``options``: ``distance_labels``,
        ``distance_threshold``, ``n_neighbours``, ``low_snr``, ``max_missing_fraction``, ``clip``,
        ``kde_level``, ``chi2_percentile`` — all documented in
        :func:`cannonade.cannon.calibration.fit_calibration` and docs/calibration.md.
        Returns self, with ``calibration_`` a :class:`~cannonade.cannon.calibration.Calibration`.
        """
        self._require_fitted("calibrate")
        self.calibration_ = fit_calibration(cv, self.label_names, label_errors=label_errors, repeats=repeats,
                                            infer=self.infer, error_model=error_model,
                                            training=(self.n_train_, self.label_min_, self.label_max_), **options)
        return self

    # ------------------------------------------------------------------ files
    def save(self, path, overwrite=True):
        """Write the model to a self-describing, versioned ``.npz`` (no pickle) atomically.

        See :mod:`cannonade.cannon.persistence` for the arrays and the JSON metadata.
        Returns the path.
        """
        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; checks format, version and shapes."""
        return load_model(path, cls)

    def __repr__(self):
        state = f"fitted on {self.n_train_} stars x {self.theta_.shape[0]} pixels" if self.is_fitted else "unfitted"
        named = f" {self.name!r}" if self.name else ""
        return (f"<CannonModel{named} labels={self.label_names} order={self.order} terms={self.n_terms} "
                f"device={self.device!r} {state}>")
