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
checks the format name, the version and every shape and dtype — from the arrays' headers, which
must account for exactly the bytes each member holds, before any array is read (a crafted header
cannot make the reader allocate more than the file holds) — and names what is wrong.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from cannonade._version import __version__
from cannonade.cannon.calibration import Calibration
from cannonade.cannon.checks import check_censors
from cannonade.cannon.spectral_setup import SpectralSetup
from cannonade.cannon.vectorizer import LabelScaler, active_terms
from cannonade.exceptions import ModelFileError, NotFittedError, OutputExistsError, ParameterError
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
    OutputExistsError
        ``path`` exists and ``overwrite`` is False (also a ``FileExistsError``); the file is left as it is.
    ParameterError
        ``path`` does not end in ``.npz`` (also a ``ValueError``).
    OutputError
        ``path`` is a directory, or its folder cannot be written.
    """
    if not model.is_fitted:
        raise NotFittedError("CannonModel.save() called before fit(); train the model or load one first")
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"model file {path} exists (pass overwrite=True to replace it)")
    arrays = model_arrays(model)
    if path.suffix != ".npz":
        raise ParameterError(f"model files are .npz; got {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


#: dtype kinds of the arrays of a model file (calibration arrays: numbers; their shapes are checked
#: by ``Calibration.from_file``)
ARRAY_KINDS = {"theta": "f", "s2": "f", "label_offset": "f", "label_scale": "f", "label_min": "f", "label_max": "f",
               "regularization": "f", "wavelength": "f", "exponents": "iu", "pixel_ok": "b", "censor_masks": "b",
               "metadata": "U"}
#: the most a member of a model file may inflate when decompressed: deflate itself cannot exceed
#: about 1032:1, so a member claiming more is crafted (a "zip bomb" header)
MAX_INFLATION = 1100
_NPY_MAGIC = b"\x93NUMPY"


def _npy_header(fh, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    return np.lib.format._read_array_header(fh, version)  # 3.0: utf-8 field names (no public reader)


def npz_headers(zf, path):
    """{array name: (shape, dtype)} of the members of an open ``.npz`` (a ``zipfile.ZipFile``), from
    their ``.npy`` headers only: no array is read.

    Each member must be an array without Python objects whose header's shape and dtype account
    for exactly the bytes the member holds, and no member may claim to inflate more than deflate
    can: so reading the file afterwards allocates at most what the file itself can hold, whatever
    a crafted header says.

    Raises
    ------
    ModelFileError
        Names the member and what is wrong.
    """
    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise ModelFileError(f"{path}: member {info.filename!r} is not an array (.npy); not a Cannonade model file")
        name = info.filename[:-4]
        if info.file_size > MAX_INFLATION * max(info.compress_size, 1) + 4096:
            raise ModelFileError(f"{path}: array {name!r} claims to inflate from {info.compress_size} to {info.file_size} "
                                 "bytes, more than any deflate stream can: refusing to read it")
        with zf.open(info) as fh:
            shape, _, dtype = _npy_header(fh, np.lib.format.read_magic(fh))
            held = info.file_size - fh.tell()
        if dtype.hasobject:
            raise ModelFileError(f"{path}: array {name!r} holds Python objects ({dtype}); model files never do")
        claimed = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
        if claimed != held:
            raise ModelFileError(f"{path}: array {name!r} claims shape {tuple(shape)} of {dtype} ({claimed} bytes) but "
                                 f"holds {held} bytes")
        out[name] = (tuple(shape), dtype)
    return out


def read_model_file(path):
    """The checked arrays and metadata of a model file.

    Every array's shape and dtype are checked, from the headers, before any array is read (and
    those headers against the bytes the file holds: :func:`npz_headers`), so a crafted file can
    make the reader allocate no more than the file's own contents.

    Returns
    -------
    data : dict {name: ndarray}
    meta : dict
        The parsed JSON metadata.

    Raises
    ------
    ModelFileError
        Missing, unreadable, another format or version, missing arrays, wrong shapes or dtypes,
        headers that disagree with the file.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        # the file handle is ours, so it is closed even when the zip is corrupt (np.load(path)
        # leaves its own handle open when the zip directory cannot be read)
        with open(path, "rb") as fh:
            if fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
                raise ModelFileError(f"{path} holds a single array, not a Cannonade model file (.npz)")
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                headers = npz_headers(zf, path)
                if "metadata" not in headers:
                    raise ModelFileError(f"{path} has no 'metadata' entry; it is not a Cannonade model file")
                if headers["metadata"][1].kind != "U" or headers["metadata"][0] != ():
                    raise ModelFileError(f"{path}: 'metadata' is an array {headers['metadata']}, expected one JSON string")
                with zf.open("metadata.npy") as member:
                    meta = _parse_metadata(path, str(np.lib.format.read_array(member, allow_pickle=False)))
                _check_arrays(path, {k: v[0] for k, v in headers.items()}, meta)
                _check_kinds(path, headers)
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path} is not a readable Cannonade model file (truncated or corrupt?): {exc}") from exc
    return data, meta


def _parse_metadata(path, text):
    """The metadata's JSON, its format and version checked, and the entries the checks use typed."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: metadata is not a JSON object")
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: format is {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    version = meta.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {version!r} is not supported by cannonade {__version__} "
            f"(which reads version {MODEL_FORMAT_VERSION})"
        )
    names = meta.get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{path}: metadata label_names is {names!r}, expected a list of label names")
    for key in ("n_pixels", "n_terms", "order", "n_train"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ModelFileError(f"{path}: metadata {key} is {value!r}, expected a non-negative integer")
    if not isinstance(meta.get("calibration", {}), dict):
        raise ModelFileError(f"{path}: metadata calibration is {meta.get('calibration')!r}, expected a JSON object")
    return meta


def _check_kinds(path, headers):
    """ModelFileError naming the first array whose dtype is not of its kind (float, integer, bool)."""
    for name, (_, dtype) in headers.items():
        kinds = ARRAY_KINDS.get(name, "fiub" if name.startswith("calibration_") else "")
        if dtype.kind not in kinds:
            what = {"f": "float", "iu": "integer", "b": "bool", "U": "str", "fiub": "numbers"}.get(kinds, "no such array in a model file")
            raise ModelFileError(f"{path}: array {name!r} has dtype {dtype}, expected {what}")


def _check_arrays(path, shapes, meta):
    """ModelFileError naming the first missing array or wrong shape (``shapes``: name -> shape)."""
    missing = [k for k in REQUIRED_ARRAYS if k not in shapes]
    if missing:
        raise ModelFileError(f"{path}: missing arrays {missing}")
    if len(shapes["theta"]) != 2:
        raise ModelFileError(f"{path}: array 'theta' has shape {shapes['theta']}, expected (pixels, terms)")
    P, K = shapes["theta"]
    L = len(meta["label_names"])
    expect = dict(s2=(P,), exponents=(K, L), label_offset=(L,), label_scale=(L,), pixel_ok=(P,), label_min=(L,), label_max=(L,),
                  regularization=(P,), wavelength=(P,))
    for k, shape in expect.items():
        if k in shapes and shapes[k] != shape:
            raise ModelFileError(f"{path}: array {k!r} has shape {shapes[k]}, expected {shape} (theta is {(P, K)})")
    if P != meta.get("n_pixels") or K != meta.get("n_terms"):
        raise ModelFileError(f"{path}: theta shape {(P, K)} disagrees with metadata ({meta.get('n_pixels')}, {meta.get('n_terms')})")
    if meta.get("censored_labels"):
        masks = shapes.get("censor_masks")
        if masks is None or masks != (len(meta["censored_labels"]), P):
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
