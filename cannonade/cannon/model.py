"""The trained Cannon model: ``CannonModel`` (fit / infer / predict / save / load).

A scikit-learn-style estimator: parameters are set in ``__init__``; everything learned
from data carries a trailing underscore (``theta_``, ``s2_``, ``scaler_``...).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np

from cannonade._version import __version__
from cannonade.exceptions import LabelError, ModelFileError, NotFittedError, ShapeError, TrainingSetError
from cannonade.cannon.inference import START_NAMES, infer_chunk, theta_products
from cannonade.cannon.training import fit_scatter, l1_theta, normal_plan, solve_theta
from cannonade.util import atomic_path, progress
from cannonade.cannon.vectorizer import LabelScaler, design_matrix, term_exponents, term_names, with_constant

MODEL_FORMAT = "cannonade-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class InferenceResult:
    """Labels inferred for M spectra, in physical units.

    Attributes
    ----------
    labels : (M, L) float
    cov : (M, L, L) float
        Covariance from (JᵀWJ)⁻¹ with the model scatter s² in W.
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

    @property
    def errors(self):
        """(M, L) 1σ label uncertainties, sqrt of the covariance diagonal."""
        return np.sqrt(np.diagonal(self.cov, axis1=1, axis2=2))

    @property
    def reduced_chi2(self):
        return self.chi2 / np.maximum(self.dof, 1)

    def to_table(self, prefix=""):
        """An astropy Table: one column per label, ``e_<label>``, chi2, dof, converged, flags."""
        from astropy.table import Table

        t = Table()
        err = self.errors
        for i, name in enumerate(self.label_names):
            t[prefix + name] = self.labels[:, i]
            t[f"e_{prefix}{name}"] = err[:, i]
        t["chi2"] = self.chi2
        t["dof"] = self.dof
        t["converged"] = self.converged
        t["outside_training"] = self.outside_training.any(axis=1)
        return t


def _as_label_array(labels, label_names):
    """Labels given as an (N, L) array, an astropy Table / DataFrame / dict / structured array -> (N, L) float."""
    if isinstance(labels, np.ndarray) and labels.dtype.names is None:
        arr = np.asarray(labels, dtype=float)
        if arr.ndim == 1 and len(label_names) == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != len(label_names):
            raise ShapeError(f"labels have shape {arr.shape}; expected (n_stars, {len(label_names)}) for {label_names}")
        return arr
    try:
        columns = list(labels.dtype.names) if hasattr(labels, "dtype") and labels.dtype.names else list(labels.keys())
    except AttributeError:
        try:
            columns = list(labels.colnames)
        except AttributeError:
            arr = np.asarray(labels, dtype=float)
            return _as_label_array(arr, label_names)
    if hasattr(labels, "colnames"):
        columns = list(labels.colnames)
    missing = [n for n in label_names if n not in columns]
    if missing:
        raise LabelError(f"label column(s) {missing} not found; the labels table has columns {columns}")
    return np.column_stack([np.asarray(labels[n], dtype=float) for n in label_names])


def _check_shapes(flux, ivar, n_pixels=None, what="flux"):
    """flux, ivar as 2-D float arrays (no copy when they already are); ShapeError naming the shapes."""
    flux = np.asarray(flux, dtype=float)
    ivar = np.asarray(ivar, dtype=float)
    if flux.ndim == 1:
        flux, ivar = flux[None], ivar[None] if ivar.ndim == 1 else ivar
    if flux.ndim != 2 or flux.shape != ivar.shape:
        raise ShapeError(f"{what} has shape {flux.shape} but ivar has shape {ivar.shape}; both must be (n_stars, n_pixels)")
    if n_pixels is not None and flux.shape[1] != n_pixels:
        raise ShapeError(f"{what} has {flux.shape[1]} pixels per spectrum but the model has {n_pixels}")
    return flux, ivar


def _clean(flux, ivar):
    """NaN/inf flux or ivar, and negative ivar, mean "no information here": ivar = 0, flux = 0 there (copies)."""
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar <= 0)
    return np.where(bad, 0.0, flux), np.where(bad, 0.0, ivar)


def _auto_pixel_chunk(n_stars, elements=131072):
    """Pixels per training batch so that an (n_stars, batch) float64 array is ~1 MB (cache-sized)."""
    return int(np.clip(16 * round(elements / max(n_stars, 1) / 16), 16, 1024))


def _auto_star_chunk(n_terms, nbytes=6e6):
    """Stars per inference batch so that their (K, K) float64 matrices take ~``nbytes``."""
    n = nbytes / (8.0 * n_terms * n_terms)
    return int(np.clip(2 ** round(np.log2(max(n, 1.0))), 64, 4096))


class CannonModel:
    """The Cannon: a per-pixel polynomial in the labels with per-pixel intrinsic scatter.

    Wheeler+2020 Eqs. 2–5; Nandakumar+2022 Eqs. 1–4.

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
        Pixels trained per batch (no effect on results). ``None`` (default) picks it so one
        batch's (N, pixels) arrays stay near 1 MB: the s² iteration makes many element-wise
        passes over them, and keeping them in cache makes training 2× faster than 512-pixel
        batches at the Nandakumar size.
    star_chunk : int or None
        Stars inferred per batch (no effect on results). ``None`` (default) sizes it so a
        batch's (K, K) matrices take ~6 MB (256 stars for a quadratic model in 9 labels, 1024
        in 6), which keeps the per-star solution in cache: 8 % faster than 1024 at the Wheeler
        size.
    show_progress : bool
        Progress bars for long fits/inferences (also silenced by ``CANNONADE_QUIET=1``).
    """

    def __init__(
        self,
        label_names,
        order=2,
        scale="standard",
        censors=None,
        regularization=0.0,
        scatter="reml",
        terms=None,
        pixel_chunk=None,
        star_chunk=None,
        show_progress=True,
    ):
        self.label_names = list(label_names)
        if len(set(self.label_names)) != len(self.label_names):
            raise LabelError(f"label names are not unique: {self.label_names}")
        if not self.label_names:
            raise LabelError("a Cannon model needs at least one label name")
        self.order = order
        self.scale = scale
        self.censors = censors
        self.regularization = regularization
        self.scatter = scatter
        self.terms = terms
        self.pixel_chunk = pixel_chunk
        self.star_chunk = star_chunk
        self.show_progress = show_progress
        self.exponents = with_constant(terms) if terms is not None else term_exponents(len(self.label_names), order)
        if self.exponents.shape[1] != len(self.label_names):
            raise ShapeError(f"terms use {self.exponents.shape[1]} labels but {len(self.label_names)} label names were given")
        self.calibration_ = {}

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

    def _require_fitted(self, what):
        if not self.is_fitted:
            raise NotFittedError(f"CannonModel.{what}() called before fit(); train the model or load one first")

    def get_params(self):
        return dict(
            label_names=self.label_names,
            order=self.order,
            scale=self.scale,
            censors=self.censors,
            regularization=self.regularization,
            scatter=self.scatter,
            terms=self.terms,
            pixel_chunk=self.pixel_chunk,
            star_chunk=self.star_chunk,
            show_progress=self.show_progress,
        )

    def clone(self):
        """An unfitted copy with the same parameters."""
        return CannonModel(**self.get_params())

    # ------------------------------------------------------------------ training
    def _active_terms(self, n_pixels):
        """(P, K) bool: term k may act at pixel p (no censored label in it)."""
        if not self.censors:
            return None
        active = np.ones((n_pixels, self.n_terms), dtype=bool)
        for name, mask in self.censors.items():
            if name not in self.label_names:
                raise LabelError(f"censors name label {name!r}, which is not one of {self.label_names}")
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (n_pixels,):
                raise ShapeError(f"censor mask for {name!r} has shape {mask.shape}; expected ({n_pixels},)")
            uses = self.exponents[:, self.label_names.index(name)] > 0
            active &= ~(uses[None, :] & ~mask[:, None])
        return active

    def fit(self, labels, flux, ivar, s2=None, wavelength=None, init_s2=None):
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

        Returns
        -------
        self
        """
        lab = _as_label_array(labels, self.label_names)
        # bad pixels are cleaned one pixel chunk at a time (no full-size copies of the inputs)
        flux, ivar = _check_shapes(flux, ivar)
        N, P = flux.shape
        if lab.shape[0] != N:
            raise ShapeError(f"labels have {lab.shape[0]} rows but flux has {N} spectra")
        if N == 0:
            raise TrainingSetError("the training set is empty")
        bad = ~np.isfinite(lab)
        if bad.any():
            n, l = np.argwhere(bad)[0]
            raise LabelError(
                f"training label {self.label_names[l]!r} of star {n} is {lab[n, l]} "
                f"({bad.any(axis=1).sum()} stars have non-finite labels)"
            )
        if N < self.n_terms:
            raise TrainingSetError(f"{N} training stars cannot constrain {self.n_terms} model terms; need at least {self.n_terms}")
        if wavelength is not None:
            wavelength = np.asarray(wavelength, dtype=float)
            if wavelength.shape != (P,):
                raise ShapeError(f"wavelength has shape {wavelength.shape}; expected ({P},)")
        if s2 is not None:
            s2 = np.broadcast_to(np.asarray(s2, dtype=float), (P,)).copy()
            if np.any(~np.isfinite(s2)) or np.any(s2 < 0):
                raise ValueError("fixed s2 must be finite and non-negative")
        active = self._active_terms(P)
        scaler = LabelScaler(self.scale).fit(lab)
        X = design_matrix(scaler.transform(lab), self.exponents)
        # equilibrate the design matrix's columns: θ is unchanged, the K×K solves are well conditioned
        col = np.sqrt(np.mean(X * X, axis=0))
        col[col == 0] = 1.0
        Xs = X / col
        plan = normal_plan(Xs, self.exponents)
        reg = np.broadcast_to(np.asarray(self.regularization, dtype=float), (P,))
        theta = np.zeros((P, self.n_terms))
        s2_out = np.zeros(P)
        n_valid = np.zeros(P, dtype=int)
        digest = hashlib.sha256()
        for a in (lab,):
            digest.update(str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
        pixel_chunk = self.pixel_chunk or _auto_pixel_chunk(N)
        chunks = range(0, P, pixel_chunk)
        for p0 in progress(chunks, desc="train (pixel chunks)", total=len(chunks), disable=not self.show_progress or None):
            sl = slice(p0, min(P, p0 + pixel_chunk))
            act = None if active is None else active[sl]
            f_c, i_c = _clean(flux[:, sl], ivar[:, sl])
            digest.update(np.ascontiguousarray(f_c).tobytes() + np.ascontiguousarray(i_c).tobytes())
            n_valid[sl] = (i_c > 0).sum(axis=0)
            if s2 is None:
                s2_c, th = fit_scatter(
                    Xs, f_c, i_c, act, method=self.scatter, plan=plan,
                    init_s2=None if init_s2 is None else np.asarray(init_s2, dtype=float)[sl],
                )
            else:
                s2_c = s2[sl]
                th = solve_theta(Xs, f_c, i_c, s2_c, act, plan=plan)[0]
            if np.any(reg[sl] > 0):
                th = l1_theta(Xs, f_c, i_c, s2_c, reg[sl], act, term_weights=1.0 / col, plan=plan)
            theta[sl], s2_out[sl] = th, s2_c
        theta = theta / col  # undo the column equilibration
        if active is not None:
            theta[~active] = 0.0
        # pixels the training set cannot constrain (too few valid stars): excluded at inference
        n_active = self.n_terms if active is None else active.sum(axis=1)
        pixel_ok = np.all(np.isfinite(theta), axis=1) & np.isfinite(s2_out) & (n_valid >= n_active)
        theta[~pixel_ok] = 0.0
        s2_out[~pixel_ok] = 0.0
        self.scaler_ = scaler
        self.theta_ = theta
        self.s2_ = s2_out
        self.pixel_ok_ = pixel_ok
        self.active_ = active
        self.wavelength = wavelength
        self.n_train_ = N
        self.label_min_ = lab.min(axis=0)
        self.label_max_ = lab.max(axis=0)
        self.training_hash_ = digest.hexdigest()
        return self

    # ------------------------------------------------------------------ prediction
    @property
    def s_(self):
        return np.sqrt(self.s2_)

    def predict(self, labels):
        """Model flux at the given labels.

        labels : (M, L) float or table  ->  (M, P) float (NaN at pixels the model cannot predict)
        """
        self._require_fitted("predict")
        lab = _as_label_array(labels, self.label_names)
        flux = design_matrix(self.scaler_.transform(lab), self.exponents) @ self.theta_.T
        flux[:, ~self.pixel_ok_] = np.nan
        return flux

    def infer(self, flux, ivar, max_iter=100):
        """Labels of new spectra by maximum likelihood (batched multi-start Levenberg–Marquardt).

        Parameters
        ----------
        flux, ivar : (M, P) float
            Non-finite values count as ivar = 0.

        Returns
        -------
        InferenceResult
        """
        self._require_fitted("infer")
        P = self.theta_.shape[0]
        flux = np.asarray(flux, dtype=float)
        ivar = np.asarray(ivar, dtype=float)
        if flux.ndim == 1:
            flux, ivar = flux[None], ivar[None]
        if flux.shape != ivar.shape or flux.ndim != 2:
            raise ShapeError(f"flux has shape {flux.shape} but ivar has shape {ivar.shape}; both must be (n_stars, n_pixels)")
        if flux.shape[1] != P:
            raise ShapeError(f"spectra have {flux.shape[1]} pixels but the model was trained on {P}")
        ok = self.pixel_ok_
        all_ok = bool(ok.all())
        theta, s2 = (self.theta_, self.s2_) if all_ok else (self.theta_[ok], self.s2_[ok])
        cache = getattr(self, "_theta_pairs", None)
        if cache is None or cache[0] is not self.theta_:
            # θθᵀ products depend only on the model: computed once, reused by every infer() call
            cache = (self.theta_, theta_products(theta))
            self._theta_pairs = cache
        theta_pairs = cache[1]
        M = flux.shape[0]
        L = len(self.label_names)
        out = {k: [] for k in ("labels", "cov", "chi2", "dof", "converged", "start", "n_iter")}
        star_chunk = self.star_chunk or _auto_star_chunk(self.n_terms)
        chunks = range(0, M, star_chunk)
        for s0 in progress(chunks, desc="infer (star chunks)", total=len(chunks), disable=not self.show_progress or None):
            sl = slice(s0, min(M, s0 + star_chunk))
            f_c, i_c = (flux[sl], ivar[sl]) if all_ok else (flux[sl][:, ok], ivar[sl][:, ok])
            r = infer_chunk(theta, s2, self.exponents, f_c, i_c, theta_pairs, max_iter=max_iter)
            for k in out:
                out[k].append(r[k])
        res = {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in out.items()}
        if M == 0:
            res["labels"] = np.zeros((0, L))
            res["cov"] = np.zeros((0, L, L))
        labels = self.scaler_.inverse(res["labels"])
        sc = self.scaler_.scale_
        cov = res["cov"] * sc[None, :, None] * sc[None, None, :]  # back to physical units
        outside = (labels < self.label_min_) | (labels > self.label_max_)
        return InferenceResult(
            labels=labels,
            cov=cov,
            chi2=res["chi2"],
            dof=res["dof"].astype(int),
            converged=res["converged"].astype(bool),
            start=res["start"].astype(int),
            outside_training=outside,
            label_names=list(self.label_names),
            n_iter=res["n_iter"].astype(int),
        )

    # ------------------------------------------------------------------ files
    def _metadata(self):
        scale = self.scale if isinstance(self.scale, str) else "fixed"
        return dict(
            format=MODEL_FORMAT,
            format_version=MODEL_FORMAT_VERSION,
            cannonade_version=__version__,
            label_names=self.label_names,
            order=int(self.order),
            scale=scale,
            scatter=self.scatter,
            regularization=np.asarray(self.regularization, dtype=float).tolist() if np.ndim(self.regularization) == 0 else "per-pixel",
            term_names=self.term_names,
            n_pixels=int(self.theta_.shape[0]),
            n_terms=int(self.n_terms),
            n_train=int(self.n_train_),
            training_hash=self.training_hash_,
            censored_labels=sorted(self.censors) if self.censors else [],
            calibration=self.calibration_,
        )

    def save(self, path, overwrite=True):
        """Write the model to a self-describing, versioned ``.npz`` (no pickle) atomically.

        Arrays: theta (P, K), s2 (P,), exponents (K, L), label_offset/label_scale (L,),
        pixel_ok (P,), label_min/label_max (L,), optional wavelength (P,), censor masks
        (n_censored, P), regularization (P,), and ``metadata``: a JSON string.
        """
        self._require_fitted("save")
        from pathlib import Path

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        meta = self._metadata()
        arrays = dict(
            theta=self.theta_,
            s2=self.s2_,
            exponents=self.exponents,
            label_offset=self.scaler_.offset_,
            label_scale=self.scaler_.scale_,
            pixel_ok=self.pixel_ok_,
            label_min=self.label_min_,
            label_max=self.label_max_,
            regularization=np.broadcast_to(np.asarray(self.regularization, float), self.s2_.shape).copy(),
            metadata=np.array(json.dumps(meta)),
        )
        if self.wavelength is not None:
            arrays["wavelength"] = self.wavelength
        if self.censors:
            names = sorted(self.censors)
            arrays["censor_masks"] = np.array([np.asarray(self.censors[n], bool) for n in names])
        if path.suffix != ".npz":
            raise ValueError(f"model files are .npz; got {path}")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; checks format, version and shapes."""
        from pathlib import Path

        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"model file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
            raise ModelFileError(f"{path} is not a readable Cannonade model file (truncated or corrupt?): {exc}") from exc
        if "metadata" not in data:
            raise ModelFileError(f"{path} has no 'metadata' entry; it is not a Cannonade model file")
        try:
            meta = json.loads(str(data["metadata"]))
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{path}: metadata is not valid JSON: {exc}") from exc
        if meta.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{path}: format is {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
        version = meta.get("format_version")
        if version != MODEL_FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: model file format version {version!r} is not supported by cannonade {__version__} "
                f"(which reads version {MODEL_FORMAT_VERSION})"
            )
        required = ["theta", "s2", "exponents", "label_offset", "label_scale", "pixel_ok", "label_min", "label_max"]
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelFileError(f"{path}: missing arrays {missing}")
        names = meta["label_names"]
        P, K = data["theta"].shape
        L = len(names)
        expect = dict(s2=(P,), exponents=(K, L), label_offset=(L,), label_scale=(L,), pixel_ok=(P,), label_min=(L,), label_max=(L,))
        for k, shape in expect.items():
            if data[k].shape != shape:
                raise ModelFileError(f"{path}: array {k!r} has shape {data[k].shape}, expected {shape} (theta is {(P, K)})")
        if P != meta.get("n_pixels") or K != meta.get("n_terms"):
            raise ModelFileError(f"{path}: theta shape {(P, K)} disagrees with metadata ({meta.get('n_pixels')}, {meta.get('n_terms')})")
        censors = None
        if meta.get("censored_labels"):
            masks = data.get("censor_masks")
            if masks is None or masks.shape != (len(meta["censored_labels"]), P):
                raise ModelFileError(f"{path}: censor masks missing or of the wrong shape")
            censors = {n: m for n, m in zip(meta["censored_labels"], masks)}
        reg = data.get("regularization", np.zeros(P))
        reg = float(reg[0]) if reg.size and np.all(reg == reg[0]) else reg
        scale = meta["scale"] if meta["scale"] != "fixed" else {"offset": data["label_offset"], "scale": data["label_scale"]}
        model = cls(names, order=meta["order"], scale=scale, censors=censors, regularization=reg, scatter=meta["scatter"], terms=data["exponents"])
        model.scaler_ = LabelScaler(scale)
        model.scaler_.offset_, model.scaler_.scale_ = data["label_offset"], data["label_scale"]
        model.theta_, model.s2_, model.pixel_ok_ = data["theta"], data["s2"], data["pixel_ok"].astype(bool)
        model.active_ = model._active_terms(P)
        model.label_min_, model.label_max_ = data["label_min"], data["label_max"]
        model.wavelength = data.get("wavelength")
        model.n_train_ = meta["n_train"]
        model.training_hash_ = meta["training_hash"]
        model.calibration_ = meta.get("calibration", {})
        return model

    def __repr__(self):
        state = f"fitted on {self.n_train_} stars x {self.theta_.shape[0]} pixels" if self.is_fitted else "unfitted"
        return f"<CannonModel labels={self.label_names} order={self.order} terms={self.n_terms} {state}>"
