"""Model files: a trained ``CannonModel`` as a self-describing, versioned ``.npz`` (no pickle).

Format ``cannonade-model``, version 1. Arrays:

==================  ===================  ==============================================
``theta``           (P, K) float         θ, one row per pixel (0 where ``pixel_ok`` is False)
``s2``              (P,) float           intrinsic scatter s² per pixel
``exponents``       (K, L) int           term exponents, constant first
``label_offset``    (L,) float           label scaling: scaled = (ℓ − offset) / scale
``label_scale``     (L,) float
``pixel_ok``        (P,) bool            pixels the training set constrained
``label_min/max``   (L,) float           the training set's label range
``regularization``  (P,) float           L1 strength Λ per pixel
``wavelength``      (P,) float           optional
``censor_masks``    (n_censored, P) bool optional, rows in the order of ``censored_labels``
``calibration_*``   see ``Calibration``  optional: the per-star error calibration's arrays
``metadata``        0-d str              JSON, see :func:`model_metadata`
==================  ===================  ==============================================

Optional metadata entries added within version 1 (read as absent/unknown from older files):
``name`` (the model's name), ``spectra`` (the training spectra's preparation,
:meth:`SpectralSetup.to_metadata`: grid, normalisation and parameters, survey, resolution)
and ``provenance`` (:func:`cannonade.provenance.provenance`: software version, creation
time, the command or recipe, the input store...).

The calibration (``CannonModel.calibrate``) lives inside format version 1, which reserved the
``calibration`` block of the metadata for it: its scalars there (with their own ``version``),
its arrays as ``calibration_<name>`` (``Calibration.to_arrays``). A model without one writes
``calibration: {}`` and no such arrays, byte for byte as before, and loads uncalibrated; so do
files written before the calibration existed. A reader older than the calibration ignores it.

Files are written atomically and read with ``allow_pickle=False``; :func:`load_model`
checks the format name, the version and every shape, and names what is wrong.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from cannonade._version import __version__
from cannonade.cannon.calibration import Calibration
from cannonade.cannon.checks import check_censors
from cannonade.cannon.spectral_setup import SpectralSetup
from cannonade.cannon.vectorizer import LabelScaler, active_terms
from cannonade.exceptions import ModelFileError, NotFittedError
from cannonade.util import atomic_path

MODEL_FORMAT = "cannonade-model"
MODEL_FORMAT_VERSION = 1
REQUIRED_ARRAYS = ("theta", "s2", "exponents", "label_offset", "label_scale", "pixel_ok", "label_min", "label_max")


def model_metadata(model):
    """The JSON metadata block of a fitted model's file.

    Format name and version, package version, label and term names, order, scaling
    (``"fixed"`` for explicit offsets/scales, which are in the arrays), scatter method,
    regularization (a number, or ``"per-pixel"``), pixel and term counts, training-set size
    and SHA-256, censored labels, and the ``calibration`` block.
    """
    reg = model.regularization
    meta = dict(
        format=MODEL_FORMAT,
        format_version=MODEL_FORMAT_VERSION,
        cannonade_version=__version__,
        label_names=model.label_names,
        order=int(model.order),
        scale=model.scale if isinstance(model.scale, str) else "fixed",
        scatter=model.scatter,
        regularization=np.asarray(reg, dtype=float).tolist() if np.ndim(reg) == 0 else "per-pixel",
        term_names=model.term_names,
        n_pixels=int(model.theta_.shape[0]),
        n_terms=int(model.n_terms),
        n_train=int(model.n_train_),
        training_hash=model.training_hash_,
        censored_labels=sorted(model.censors) if model.censors else [],
        calibration=model.calibration_.metadata() if model.calibration_ is not None else {},
    )
    # entries added within format version 1: written only when there is something to say, so a
    # model without them is byte-for-byte the file it always was
    if model.name:
        meta["name"] = str(model.name)
    setup = getattr(model, "spectral_setup_", None)
    if setup is not None and setup.to_metadata() != SpectralSetup().to_metadata():
        meta["spectra"] = setup.to_metadata()
    if getattr(model, "provenance_", None):
        meta["provenance"] = model.provenance_
    return meta


def model_arrays(model):
    """The arrays of a fitted model's file (see the module docstring), metadata included."""
    arrays = dict(
        theta=model.theta_,
        s2=model.s2_,
        exponents=model.exponents,
        label_offset=model.scaler_.offset_,
        label_scale=model.scaler_.scale_,
        pixel_ok=model.pixel_ok_,
        label_min=model.label_min_,
        label_max=model.label_max_,
        regularization=np.broadcast_to(np.asarray(model.regularization, float), model.s2_.shape).copy(),
        metadata=np.array(json.dumps(model_metadata(model))),
    )
    if model.wavelength is not None:
        arrays["wavelength"] = model.wavelength
    if model.censors:
        arrays["censor_masks"] = np.array([np.asarray(model.censors[n], bool) for n in sorted(model.censors)])
    if model.calibration_ is not None:
        arrays.update(model.calibration_.to_arrays())
    return arrays


def save_model(model, path, overwrite=True):
    """Write a fitted model to ``path`` (``.npz``) atomically; returns the path.

    Raises
    ------
    NotFittedError
        The model has not been fitted.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        ``path`` does not end in ``.npz``.
    """
    if not model.is_fitted:
        raise NotFittedError("CannonModel.save() called before fit(); train the model or load one first")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    arrays = model_arrays(model)
    if path.suffix != ".npz":
        raise ValueError(f"model files are .npz; got {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


def read_model_file(path):
    """The checked arrays and metadata of a model file.

    Returns
    -------
    data : dict {name: ndarray}
    meta : dict
        The parsed JSON metadata.

    Raises
    ------
    ModelFileError
        Missing, unreadable, another format or version, missing arrays, wrong shapes.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        # the file handle is ours, so it is closed even when the zip is corrupt (np.load(path)
        # leaves its own handle open when the zip directory cannot be read)
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{path} holds a single array, not a Cannonade model file (.npz)")
            with npz:
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
    _check_arrays(path, data, meta)
    return data, meta


def _check_arrays(path, data, meta):
    """ModelFileError naming the first missing array or wrong shape."""
    missing = [k for k in REQUIRED_ARRAYS if k not in data]
    if missing:
        raise ModelFileError(f"{path}: missing arrays {missing}")
    P, K = data["theta"].shape
    L = len(meta["label_names"])
    expect = dict(s2=(P,), exponents=(K, L), label_offset=(L,), label_scale=(L,), pixel_ok=(P,), label_min=(L,), label_max=(L,))
    for k, shape in expect.items():
        if data[k].shape != shape:
            raise ModelFileError(f"{path}: array {k!r} has shape {data[k].shape}, expected {shape} (theta is {(P, K)})")
    if P != meta.get("n_pixels") or K != meta.get("n_terms"):
        raise ModelFileError(f"{path}: theta shape {(P, K)} disagrees with metadata ({meta.get('n_pixels')}, {meta.get('n_terms')})")
    if meta.get("censored_labels"):
        masks = data.get("censor_masks")
        if masks is None or masks.shape != (len(meta["censored_labels"]), P):
            raise ModelFileError(f"{path}: censor masks missing or of the wrong shape")


def load_model(path, model_class):
    """Read a model written by :func:`save_model` (usually called as ``CannonModel.load(path)``).

    Parameters
    ----------
    path : str or Path
    model_class : type
        ``CannonModel`` (or a subclass): built with the file's parameters, then given its
        fitted state (``theta_``, ``s2_``, ``scaler_``, ``pixel_ok_``, ...).

    Returns
    -------
    model_class instance
    """
    data, meta = read_model_file(path)
    names = meta["label_names"]
    P = data["theta"].shape[0]
    censors = None
    if meta.get("censored_labels"):
        censors = {n: m for n, m in zip(meta["censored_labels"], data["censor_masks"])}
    reg = data.get("regularization", np.zeros(P))
    reg = float(reg[0]) if reg.size and np.all(reg == reg[0]) else reg
    scale = meta["scale"] if meta["scale"] != "fixed" else {"offset": data["label_offset"], "scale": data["label_scale"]}
    model = model_class(names, order=meta["order"], scale=scale, censors=censors, regularization=reg,
                        scatter=meta["scatter"], terms=data["exponents"], name=meta.get("name"))
    model.scaler_ = LabelScaler(scale)
    model.scaler_.offset_, model.scaler_.scale_ = data["label_offset"], data["label_scale"]
    model.theta_, model.s2_, model.pixel_ok_ = data["theta"], data["s2"], data["pixel_ok"].astype(bool)
    model.active_ = active_terms(model.exponents, model.label_names, check_censors(censors, model.label_names, P), P)
    model.label_min_, model.label_max_ = data["label_min"], data["label_max"]
    model.wavelength = data.get("wavelength")
    model.n_train_ = meta["n_train"]
    model.training_hash_ = meta["training_hash"]
    model.spectral_setup_ = SpectralSetup.from_metadata(meta.get("spectra") or {}, wavelength=model.wavelength)
    model.provenance_ = dict(meta.get("provenance") or {})
    block = meta.get("calibration") or {}
    model.calibration_ = Calibration.from_file(data, block, names, path) if block else None
    return model
