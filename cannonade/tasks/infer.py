"""``cannonade infer``: labels for every spectrum of a store, from one model or several.

One row per stored spectrum, in store order, keyed by the store's ``obj_id`` (and
``store_row``): the model's label names, ``e_<label>`` (calibrated 1σ), ``raw_e_<label>``
(formal), ``<label>_extrap``, χ², dof, S/N, the bitmask ``flags`` (recommended cut
``flags == 0``; docs/calibration.md) and ``model``, the name of the model that gave the row.

Several models (e.g. ``dwarf.npz giant.npz``) are chosen per spectrum by a rule:

* ``chi2`` — every model is tried, the lowest χ²/dof wins;
* ``wheeler2020`` — Wheeler+2020 Eq. 1 on a catalogue's Teff and log g (giant below
  log g = 4.18 for Teff < 5200 K, else below −6e-4 Teff + 7.3; needs models named ``dwarf``
  and ``giant``); a spectrum without catalogue Teff/log g falls back to lowest χ²/dof.

Every model is checked against the store's grid, normalisation and survey first
(:meth:`cannonade.cannon.model.CannonModel.check_spectra`). Work runs in chunks
(:class:`cannonade.execution.ChunkedMap`): a killed run resumes from its last finished chunk. The
chunks run in this process, in a pool of ``workers`` processes, or on a dask cluster
(``scheduler``: ``'local'`` or a scheduler's address; docs/scale.md) -- the labels are the same.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cannonade.cannon.model import CannonModel
from cannonade.cannon.spectral_setup import SpectralSetup
from cannonade.exceptions import ColumnError, ConfigError, ModelFileError
from cannonade.execution import LOCAL_SCHEDULER, ChunkedMap, choose_backend, get_namespace
from cannonade.execution.backends import validate_workers
from cannonade.flags import fits_header_cards
from cannonade.pipeline.stages.infer import infer_observations
from cannonade.pipeline.stages.split import EITHER, classify
from cannonade.provenance import provenance
from cannonade.spectra.store import SpectraStore
from cannonade.tables import float_column, read_table, suggest, text_column
from cannonade.util import atomic_path, check_output_file, remove_stale_temporaries, remove_temporaries_of

__all__ = ["RULES", "InferReport", "load_models", "model_classes", "infer_store", "label_table"]

RULES = ("chi2", "wheeler2020")

log = logging.getLogger(__name__)


@dataclass
class InferReport:
    path: Path
    n_spectra: int
    counts: dict  # spectra per model
    n_flag_free: int
    n_chunks: int
    resumed_chunks: int
    temporaries_removed: int = 0  # hidden temporaries (of out, of the parts) an interrupted run left

    def summary(self):
        per = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        resumed = f"; resumed after {self.resumed_chunks} of {self.n_chunks} chunks" if self.resumed_chunks else ""
        if self.temporaries_removed:
            resumed += f"; removed {self.temporaries_removed} temporary file(s) left by an interrupted run"
        return (f"labels for {self.n_spectra} spectra ({per}) -> {self.path}; {self.n_flag_free} "
                f"({self.n_flag_free / max(self.n_spectra, 1):.0%}) pass the recommended cut flags == 0{resumed}")


def load_models(paths, device="cpu"):
    """{name: CannonModel} of the model files, named as saved (or by file stem); names must differ.
    ``device``: where the models compute (the files do not say; ``CannonModel(device=...)``)."""
    models = {}
    for p in paths:
        m = CannonModel.load(p)
        name = m.name or Path(p).stem
        if name in models:
            raise ModelFileError(f"{p}: two models are called {name!r}; name them apart (cannonade train --name)")
        m.name, m.show_progress = name, False  # the chunk loop has its own bar
        m.device = device
        models[name] = m
    return models


def catalogue_classes(catalogue, store_ids, id_column=None, teff_column="teff", logg_column="logg"):
    """Wheeler+2020 Eq. 1 class ('dwarf', 'giant' or 'either') of each stored spectrum from a catalogue.

    The catalogue is joined to the store's ``obj_id`` by ``id_column`` (guessed when None); a
    spectrum without a catalogue row, or with NaN/sentinel Teff or log g, is 'either'.
    """
    from cannonade.tasks.training import guess_id_column

    table = read_table(catalogue)
    names = table.colnames
    for c in (teff_column, logg_column):
        if c not in names:
            raise ColumnError(f"{catalogue}: no column {c!r}{suggest(c, names)} (--teff-column / --logg-column)")
    if id_column is not None and id_column not in names:
        raise ColumnError(f"{catalogue}: no id column {id_column!r}{suggest(id_column, names)} (--catalogue-id-column)")
    id_column = id_column or guess_id_column(table, store_ids)
    if id_column is None:
        raise ColumnError(f"{catalogue}: no id column matching the store's obj_id; pass --catalogue-id-column")
    ids = text_column(table, id_column)
    cls = classify(float_column(table, teff_column), float_column(table, logg_column))
    lookup = dict(zip(ids.tolist(), cls.tolist()))
    width = max(len(c) for c in (EITHER, *lookup.values()))
    return np.array([lookup.get(i, EITHER) for i in np.asarray(store_ids).astype(str).tolist()], dtype=f"U{width}")


def model_classes(models, model_by, store_ids, catalogue=None, **catalogue_options):
    """The model (or 'either') each stored spectrum is inferred with, by the rule ``model_by``.

    ``store_ids``: the store's ``obj_id`` (n,) str, needed by ``model_by='wheeler2020'`` with two
    models; else the number of spectra will do."""
    names = list(models)
    if model_by not in RULES:
        raise ConfigError(f"--model-by {model_by!r}: rules are {', '.join(RULES)}")
    n = store_ids if isinstance(store_ids, (int, np.integer)) else len(store_ids)
    # as wide as the longest name, not 32 characters: this process holds one per stored spectrum
    if len(names) == 1:
        return np.full(n, names[0], dtype=f"U{len(names[0])}")
    if model_by == "chi2":
        return np.full(n, EITHER, dtype=f"U{len(EITHER)}")
    missing = {"dwarf", "giant"} - set(names)
    if missing:
        raise ConfigError(f"--model-by wheeler2020 needs models named 'dwarf' and 'giant'; got {names} "
                          f"(name them with cannonade train --name, or use --model-by chi2)")
    if catalogue is None:
        raise ConfigError("--model-by wheeler2020 needs --catalogue with the spectra's Teff and log g")
    return catalogue_classes(catalogue, store_ids, **catalogue_options)


def infer_chunk(k, part, store_path, start, stop, models, classes, label_names):
    """One chunk: rows [start, stop) of the store, inferred, written to ``part`` atomically."""
    with SpectraStore(store_path) as st:
        flux, ivar = st.read(start, stop, dtype=np.float32)  # as stored: inference reads float32 as it is
    res = infer_observations(models, classes, flux, ivar, label_names, masks={})
    res.pop("chi2_windows")
    with atomic_path(part) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **res)
    return stop - start


def label_table(arrays, label_names, meta, first_row=0):
    """The output table: one row per spectrum, columns of the ``labels`` catalogue schema
    (units and descriptions: :data:`cannonade.catalogue.schemas.LABELS`); ``meta`` holds the
    store's rows ``first_row`` onwards."""
    from astropy.table import Table

    t = Table()
    t["obj_id"] = np.asarray(meta["obj_id"]).astype(str)
    t["store_row"] = np.arange(first_row, first_row + len(meta))
    t["source_file"] = np.asarray(meta["source_file"]).astype(str)
    t["model"] = np.asarray(arrays["model_class"]).astype(str)
    for i, lab in enumerate(label_names):
        t[lab] = arrays["labels"][:, i]
        t[f"e_{lab}"] = arrays["errors"][:, i]
        t[f"raw_e_{lab}"] = arrays["raw_errors"][:, i]
        t[f"{lab}_extrap"] = arrays["extrapolated"][:, i]
    for key in ("chi2", "dof", "snr", "converged", "outside_training", "train_distance", "far_from_training",
                "kiel_extrap", "flags"):
        t[key] = arrays[key]
    return t


def write_labels(t, out, prov, label_names):
    """Write the label table by suffix (.parquet, .fits, .csv/.ecsv), atomically, with provenance."""
    from cannonade.catalogue.writers import write_catalogue

    out = Path(out)
    name = out.name.lower()
    if name.endswith((".parquet", ".fits", ".fits.gz")):
        return write_catalogue(t, out, schema="labels", label_names=label_names, header_cards=fits_header_cards(),
                               provenance=prov)
    if name.endswith((".csv", ".ecsv")):
        from cannonade.catalogue.schemas import schema_for

        specs = {c.name: c for c in schema_for(label_names, "labels")}
        for c in t.colnames:
            t[c].unit = specs[c].unit or None
            t[c].description = specs[c].description
        t.meta["provenance"] = prov
        with atomic_path(out) as tmp:
            t.write(tmp, format="ascii.ecsv", overwrite=True)  # ECSV: a CSV that keeps units, descriptions, meta
        return out
    raise ConfigError(f"--out {out}: write labels as .parquet, .fits or .csv")


def infer_store(models, store, out, model_by="chi2", catalogue=None, allow_mismatch=False, chunk_size=2000,
                stop_after=None, on_done=None, workers=None, scheduler="", device="cpu", **catalogue_options):
    """Infer labels for every spectrum of a store and write them to ``out``.

    Parameters
    ----------
    models : list of str or Path
        Model files (``cannonade train`` or a pipeline run's ``models/``).
    store : str or Path
        The spectra store.
    out : str or Path
        ``.parquet``, ``.fits`` or ``.csv``; parts of an unfinished run live beside it in
        ``.<name>.parts/``. A rerun resumes from them, first removing the hidden temporaries a
        killed run left of ``out`` and of its parts (counted in the report).
    model_by : {"chi2", "wheeler2020"}
        The rule choosing a model per spectrum when there are several (module docstring).
    catalogue : str or Path, optional
        Teff and log g per spectrum for ``wheeler2020`` (``catalogue_options``: ``id_column``,
        ``teff_column``, ``logg_column``).
    allow_mismatch : bool
        Infer even when a model was trained on spectra prepared differently (a warning).
    chunk_size : int
        Spectra per chunk (the resume granularity, and what one worker holds in memory).
    workers : int, optional
        Parallel workers. Without ``scheduler``: processes (None or 1: this process). With
        ``scheduler='local'``: the workers of the embedded dask ``LocalCluster`` (None: one per
        core). With a scheduler address: unused beyond sizing the tasks in flight.
    scheduler : str
        ``''`` (default): no dask; ``'local'``: an embedded dask ``LocalCluster``; else the
        address (``tcp://HOST:PORT``) or scheduler file of a running dask scheduler.
    device : {"cpu", "gpu"}
        Where each chunk's χ² reduction runs (docs/scale.md); the labels agree to rounding, and
        a rerun with the other device reuses the finished chunks. ``"gpu"`` runs the chunks in
        this process or on a dask cluster, not in forked processes (``workers`` > 1 without
        ``scheduler``: ConfigError), which cannot use CUDA once this process has.
    stop_after, on_done
        Test hooks of :meth:`cannonade.execution.ChunkedMap.run`.

    Returns
    -------
    InferReport

    Raises
    ------
    SpectraMismatchError
        A model's grid, normalisation or survey differs from the store's (names each difference).
    ConfigError, ColumnError, ModelFileError, StoreFormatError
        Bad options, files or columns (named).
    DeviceError
        ``device="gpu"`` without CuPy or a visible CUDA device.
    """
    out = Path(out)
    if not out.name.lower().endswith((".parquet", ".fits", ".fits.gz", ".csv", ".ecsv")):
        raise ConfigError(f"--out {out}: write labels as .parquet, .fits or .csv")
    check_output_file(out, "--out")
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    paths = [str(p) for p in models]
    models = load_models(paths, device=device)
    store = Path(store)
    with SpectraStore(store) as st:
        setup = SpectralSetup.from_store(st)
        n = st.n_spectra
        ids = n  # the identifiers only where a catalogue names each spectrum's model (the rest, chunk by chunk)
        if catalogue is not None and model_by == "wheeler2020":
            ids = st.column("obj_id")
    for m in models.values():
        m.check_spectra(setup, allow_mismatch=allow_mismatch, what=f"the spectra of {store}")
    classes = model_classes(models, model_by, ids, catalogue=catalogue, **catalogue_options)
    label_names = list(dict.fromkeys(lab for m in models.values() for lab in m.label_names))
    starts = list(range(0, n, chunk_size))
    stat = store.stat()
    fingerprint = {"models": {k: m.training_hash_ for k, m in models.items()}, "calibrated": {k: m.calibration_ is not None for k, m in models.items()},
                   "store": [str(store.resolve()), stat.st_size, stat.st_mtime_ns], "chunk_size": chunk_size,
                   "model_by": model_by, "classes": _digest(classes)}
    parts_dir = out.parent / f".{out.name}.parts"
    # what a killed run of this command left: hidden temporaries of the table and of the parts
    stale = remove_temporaries_of(out) + remove_stale_temporaries(parts_dir)
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted infer (%s%s)", len(stale), stale[0].name,
                 ", ..." if len(stale) > 1 else "")
    cm = ChunkedMap(parts_dir, fingerprint, len(starts), suffix=".npz")
    n_before = cm.n_done

    def args(k):
        s0, s1 = starts[k], min(n, starts[k] + chunk_size)
        return (str(store), s0, s1, models, classes[s0:s1], label_names)

    workers = None if workers is None else validate_workers(workers)
    backend, options = choose_backend(scheduler, default="process" if workers is not None and workers > 1 else "serial")
    if device == "gpu" and backend == "process":
        raise ConfigError(f"--device gpu with --workers {workers}: forked worker processes cannot use the GPU; use "
                          "--workers 1 (the GPU does the heavy part) or a dask scheduler (--scheduler local)")
    get_namespace(device)  # an unusable device fails now, before any chunk
    if workers is None:
        workers = (os.cpu_count() or 1) if str(scheduler or "").strip() == LOCAL_SCHEDULER else 1
    cm.run(infer_chunk, args=args, backend=backend, workers=workers, desc="infer", total=n, unit="spec",
           weight=lambda k: min(n, starts[k] + chunk_size) - starts[k], stop_after=stop_after, on_done=on_done, **options)
    prov = provenance(recipe="cannonade infer", input_store=store, training_hash={k: m.training_hash_ for k, m in models.items()},
                      models=paths, model_by=model_by)
    used, n_clean = _write_label_parts(cm.parts(), starts, store, out, prov, label_names)
    cm.cleanup()
    counts = {k: int(used.get(k, 0)) for k in models}
    if used.get(""):
        counts["none"] = int(used[""])
    return InferReport(out, n, counts, n_clean, len(starts), n_before, len(stale))


def _write_label_parts(parts, starts, store, out, prov, label_names):
    """Write the label table of the finished ``parts`` (chunk k = store rows from ``starts[k]``).

    Parquet is streamed (:class:`~cannonade.catalogue.writers.CatalogueWriter`), :data:`WRITE_ROWS`
    rows at a time: this process holds those, not the survey's (1 000 000 spectra: 2.5 GB in one table). FITS
    and CSV, and an empty store, are written from one table. Returns (spectra per model name,
    spectra with flags 0)."""
    from collections import Counter

    from cannonade.catalogue.writers import CatalogueWriter

    used, n_clean = Counter(), 0

    def tally(t):
        nonlocal n_clean
        used.update(np.asarray(t["model"]).tolist())
        n_clean += int((np.asarray(t["flags"]) == 0).sum())

    with SpectraStore(store) as st:
        if not out.name.lower().endswith(".parquet") or not parts:
            t = label_table(_read_parts(parts, label_names), label_names, st.meta())
            write_labels(t, out, prov, label_names)
            tally(t)
            return used, n_clean
        with CatalogueWriter(out, schema="labels", label_names=label_names, provenance=prov) as w:
            # parts grouped to ~WRITE_ROWS rows a write: a write's fixed cost (the store's metadata
            # columns, the Arrow conversion) is then small per row, and memory still bounded
            ends = list(starts[1:]) + [st.n_spectra]
            first = 0  # the first part of the group not yet written
            for k in range(len(parts)):
                if ends[k] - starts[first] >= WRITE_ROWS or k == len(parts) - 1:
                    arrays = _read_parts(parts[first : k + 1], label_names)
                    t = label_table(arrays, label_names, st.meta(starts[first], ends[k]), first_row=starts[first])
                    w.write(t)
                    tally(t)
                    first = k + 1
    return used, n_clean


#: rows of the label table written at once when streaming Parquet: the group's conversions (astropy,
#: Arrow) set this process's peak (100 000 spectra: 394 MB with 50 000 rows, 283 MB with 10 000)
WRITE_ROWS = 50_000


def _digest(values, block=100_000):
    """sha256 of the values joined by newlines (16 hex digits), hashed ``block`` values at a time
    (the same digest without a string of the survey's length)."""
    values = np.asarray(values)
    h = hashlib.sha256()
    for b0 in range(0, len(values), block):
        if b0:
            h.update(b"\n")
        h.update("\n".join(values[b0 : b0 + block].astype(str).tolist()).encode())
    return h.hexdigest()[:16]


def _read_parts(parts, label_names):
    """The chunks' arrays concatenated in store order (label columns in ``label_names`` order)."""
    arrays = {}
    for p in parts:
        with np.load(p, allow_pickle=False) as d:
            for k in d.files:
                if k != "label_names":
                    arrays.setdefault(k, []).append(d[k])
    if not arrays:  # an empty store
        from cannonade.pipeline.stages.infer import empty_result

        out = empty_result(np.array([], dtype="U32"), label_names)
        out.pop("chi2_windows")
        return out
    return {k: np.concatenate(v) for k, v in arrays.items()}
