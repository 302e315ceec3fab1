"""Stage ``scaled_infer`` (Nandakumar+2022 §3.5): every spectrum of both surveys, on both scales.

Each survey's store is inferred with its two models (APOGEE spectra: ACGS and ACAA; GALAH
spectra: GCAA and GCGS), chunk by chunk through :class:`cannonade.execution.ChunkedMap`
(a killed run resumes per chunk). Parts: ``scaled_infer/<model>/part_*.npz``.
"""

from __future__ import annotations

import numpy as np

from cannonade.cannon.model import CannonModel
from cannonade.cannon.spectral_setup import SpectralSetup
from cannonade.execution import ChunkedMap, choose_backend, shared_cluster
from cannonade.pipeline.stages.infer import infer_observations
from cannonade.pipeline.stages.scaled_train import model_names
from cannonade.spectra.store import SpectraStore
from cannonade.util import atomic_path

NAME = "scaled_infer"
WORK_DIRS = ("scaled_infer",)
CONFIG = ("run.chunk_size",)
INPUTS = ()


def infer_chunk(k, part, store_path, start, stop, model):
    with SpectraStore(store_path) as st:
        flux, ivar = st.read(start, stop, dtype=np.float32)  # as stored: inference reads float32 as it is
    res = infer_observations({model.name: model}, np.full(stop - start, model.name, dtype="U32"), flux, ivar,
                             list(model.label_names), masks={})
    res.pop("chi2_windows")
    with atomic_path(part) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **res)
    return stop - start


def execute(run):
    chunk = run.cfg.run.chunk_size
    backend, options = choose_backend(run.cfg.run.scheduler, default="serial")  # run.scheduler: docs/scale.md
    # one dask cluster for the four models (not one started and stopped per model)
    with shared_cluster(backend, options, run.cfg.run.workers) as options:
        return _infer_models(run, chunk, backend, options)


def _infer_models(run, chunk, backend, options):
    info = {}
    for name, (side, _) in model_names(run.cfg).items():
        m = CannonModel.load(run.path("models", f"{name}.npz"))
        m.device = run.cfg.run.device  # where each chunk's χ² reduction runs (the file does not say)
        m.show_progress = False
        store = run.path(f"{side}.h5")
        with SpectraStore(store) as st:
            n = st.n_spectra
            m.check_spectra(SpectralSetup.from_store(st), what=str(store))
        starts = list(range(0, n, chunk))
        cm = ChunkedMap(run.path("scaled_infer", name), {"model": m.training_hash_, "chunk": chunk, "n": n}, len(starts), suffix=".npz")

        def args(k, store=store, m=m, n=n, starts=starts):
            return (str(store), starts[k], min(n, starts[k] + chunk), m)

        cm.run(infer_chunk, args=args, backend=backend, workers=run.cfg.run.workers, desc=f"infer {name}", total=n,
               unit="spec", weight=lambda k, n=n, starts=starts: min(n, starts[k] + chunk) - starts[k],
               stop_after=run.stop_after_chunks, on_done=run.chunk_hook, **options)
        info[name] = {"n_spectra": n}
        run.log.info("[scaled_infer] %s: %d %s spectra", name, n, side)
    return info


def read_model_result(run, name):
    """The inference of model ``name`` over its survey's store: dict of arrays (rows = store rows)."""
    arrays = {}
    for p in sorted(run.path("scaled_infer", name).glob("part_*.npz")):
        with np.load(p, allow_pickle=False) as d:
            for k in d.files:
                if k != "label_names":
                    arrays.setdefault(k, []).append(d[k])
    return {k: np.concatenate(v) for k, v in arrays.items()}
