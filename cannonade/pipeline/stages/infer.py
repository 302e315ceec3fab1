"""Stage 8, ``infer``: labels of every target spectrum with its class's model, chunk by chunk.

Chunks run through :class:`cannonade.execution.ChunkedMap`: each finished chunk is an atomic part
file, a rerun after a kill skips finished chunks, and parts from other models are discarded. They
run in this process, or on a dask cluster with ``run.scheduler`` (docs/scale.md).
"""

from __future__ import annotations

import numpy as np

from cannonade.cannon.model import CannonModel
from cannonade.cannon.spectral_setup import SpectralSetup
from cannonade.execution import ChunkedMap, choose_backend
from cannonade.pipeline.inputs import all_model_labels
from cannonade.pipeline.stages.ingest import target_rows
from cannonade.pipeline.stages.split import EITHER, read_classes
from cannonade.pipeline.windows import reduced_window_chi2, window_masks
from cannonade.spectra.linelists import load_line_windows
from cannonade.spectra.store import SpectraStore
from cannonade.util import atomic_path

NAME = "infer"
WORK_DIRS = ("infer",)
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md); run.chunk_size: the part files;
CONFIG = ("models", "labels", "clean.windows", "target.survey", "run.chunk_size", "target.catalogue",
          "target.file_column")
INPUTS = ("target.catalogue", "clean.windows")
LOW_RESOLUTION = {"lamost": 1800.0}  # R of surveys whose windows are widened by λ/2R (Wheeler+2020 §2.1)


def empty_result(classes, label_names):
    """The per-observation arrays of a chunk before any model has run (NaN labels, nothing converged)."""
    n, L = len(classes), len(label_names)
    return dict(
        labels=np.full((n, L), np.nan),
        errors=np.full((n, L), np.nan),
        raw_errors=np.full((n, L), np.nan),
        extrapolated=np.zeros((n, L), dtype=bool),
        kiel_extrap=np.zeros(n, dtype=bool),
        train_distance=np.full(n, np.nan),
        far_from_training=np.zeros(n, dtype=bool),
        flags=np.zeros(n, dtype=np.int64),
        snr=np.full(n, np.nan),
        chi2=np.full(n, np.nan),
        dof=np.zeros(n, dtype=int),
        converged=np.zeros(n, dtype=bool),
        outside_training=np.zeros(n, dtype=bool),
        model_class=np.array(classes, dtype="U32"),
        chi2_windows=np.full((n, L), np.nan),
        label_names=np.array(label_names),
    )


def infer_observations(models, classes, flux, ivar, label_names, masks):
    """Infer one chunk of target spectra with the model of each one's class.

    Parameters
    ----------
    models : dict name -> CannonModel
    classes : (n,) str
        Model names, '' (no catalogue row: skipped) or 'either' (no target-pipeline Teff/log g:
        every model is tried and the lowest χ²/dof wins).
    flux, ivar : (n, P) float
    label_names : list of str
        The union of the models' labels (NaN where a star's model lacks the label).
    masks : dict label -> (P,) bool
        Line windows of each label.

    Returns
    -------
    dict of arrays, one row per spectrum: labels, errors (calibrated), raw_errors (formal),
    extrapolated (n, L); chi2, dof, converged, outside_training, kiel_extrap, train_distance,
    far_from_training, flags (cannonade.flags bitmask), snr, model_class; chi2_windows (n, L)
    reduced χ² in each label's windows; label_names.
    """
    out = empty_result(classes, label_names)
    best_rchi2 = np.full(len(classes), np.inf)
    valid = None  # the valid pixels, only where line windows need them
    for name, m in models.items():
        sel = np.flatnonzero((classes == name) | (classes == EITHER))
        if sel.size == 0:
            continue
        # every spectrum of the chunk (one model): the arrays themselves, no copy of the chunk
        r = m.infer(flux, ivar) if sel.size == len(classes) else m.infer(flux[sel], ivar[sel])
        rchi2 = np.where(np.isfinite(r.chi2), r.chi2 / np.maximum(r.dof, 1), np.inf)
        take = (rchi2 < best_rchi2[sel]) | (~np.isfinite(best_rchi2[sel]) & (classes[sel] == name))
        rows = sel[take]
        best_rchi2[rows] = rchi2[take]
        cols = [label_names.index(lab) for lab in m.label_names]
        out["labels"][np.ix_(rows, cols)] = r.labels[take]
        out["errors"][np.ix_(rows, cols)] = r.errors[take]
        out["raw_errors"][np.ix_(rows, cols)] = r.raw_errors[take]
        out["extrapolated"][np.ix_(rows, cols)] = r.extrapolated[take]
        for key in ("kiel_extrap", "train_distance", "far_from_training", "flags", "snr"):
            out[key][rows] = getattr(r, key)[take]
        out["chi2"][rows] = r.chi2[take]
        out["dof"][rows] = r.dof[take]
        out["converged"][rows] = r.converged[take]
        out["outside_training"][rows] = r.outside_training[take].any(axis=1)
        out["model_class"][rows] = name
        if not any(lab in masks for lab in m.label_names):
            continue
        # reduced χ² in each label's line windows (Wheeler+2020 Table 1 chi2_x_fe); a star that
        # failed (NaN labels) gets NaN, not a prediction at made-up labels
        if valid is None:
            with np.errstate(invalid="ignore"):
                valid = (ivar > 0) & np.isfinite(flux)
        pix = m.pixel_chi2(r.labels[take], flux[rows], ivar[rows])
        pix = np.where(valid[rows] & m.pixel_ok_[None, :], pix, np.nan)
        for lab in m.label_names:
            if lab in masks:
                out["chi2_windows"][rows, label_names.index(lab)] = reduced_window_chi2(pix, masks[lab])
    return out


def load_models(run):
    models = {name: CannonModel.load(run.path("models", f"{name}.npz")) for name in run.cfg.models}
    for m in models.values():
        m.show_progress = False  # the stage has its own bar
        m.device = run.cfg.run.device  # where each chunk's chi2 reduction runs (the file does not say)
    return models


def infer_chunk(k, part, store_path, start, stop, models, classes, label_names, masks):
    """One chunk: read store rows [start, stop), infer, write the part atomically."""
    with SpectraStore(store_path) as st:
        flux, ivar = st.read(start, stop, dtype=np.float32)  # as stored: inference reads float32 as it is
    res = infer_observations(models, classes, flux, ivar, label_names, masks)
    res["store_row"] = np.arange(start, stop)
    with atomic_path(part) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **res)
    return stop - start


def execute(run):
    cfg = run.cfg
    models = load_models(run)
    store_path = run.path("target.h5")
    with SpectraStore(store_path) as st:
        n_store, wavelength = st.n_spectra, st.wavelength
        setup = SpectralSetup.from_store(st)
    for m in models.values():  # the models were trained on this very store: a mismatch is a bug upstream
        m.check_spectra(setup, what=str(store_path))
    # class of each store row ('' for a spectrum without a catalogue row: skipped)
    cls = np.full(n_store, "", dtype="U32")
    rows_t = target_rows(run)
    ok = rows_t >= 0
    cls[rows_t[ok]] = read_classes(run)[ok]
    labels = all_model_labels(cfg)
    derived = {n: list(s.mean_of) for n, s in cfg.labels.derived.items()}
    masks = window_masks(wavelength, labels, load_line_windows(cfg.clean.windows), derived,
                         resolution=LOW_RESOLUTION.get(cfg.target.survey))
    chunk = cfg.run.chunk_size
    starts = list(range(0, n_store, chunk))
    # finished chunks are reused only if they came from these very models and chunking
    fingerprint = {"models": {name: m.training_hash_ for name, m in models.items()}, "chunk_size": chunk, "n_spectra": n_store}
    cm = ChunkedMap(run.path("infer", "chunks"), fingerprint, len(starts), suffix=".npz")
    n_before = cm.n_done
    if n_before:
        run.log.info("[infer] resuming: %d of %d chunks already finished", n_before, len(starts))

    def args(k):
        s0, s1 = starts[k], min(n_store, starts[k] + chunk)
        return (str(store_path), s0, s1, models, cls[s0:s1], labels, masks)

    backend, options = choose_backend(cfg.run.scheduler, default="serial")  # run.scheduler: docs/scale.md
    cm.run(infer_chunk, args=args, backend=backend, workers=cfg.run.workers, desc="infer", total=n_store, unit="spec",
           weight=lambda k: min(n_store, starts[k] + chunk) - starts[k], stop_after=run.stop_after_chunks,
           on_done=run.chunk_hook, **options)
    return {"n_spectra": int(n_store), "n_chunks": len(starts), "resumed_chunks": n_before}


def read_parts(run):
    """The finished inference, all chunks concatenated: (dict of arrays, label names)."""
    arrays, label_names = {}, []
    for p in sorted(run.path("infer", "chunks").glob("part_*.npz")):
        with np.load(p, allow_pickle=False) as d:
            label_names = [str(n) for n in d["label_names"]]  # the same in every part
            for k in d.files:
                if k != "label_names":
                    arrays.setdefault(k, []).append(d[k])
    return {k: np.concatenate(v) for k, v in arrays.items()}, label_names
