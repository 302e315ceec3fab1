"""Stage 1, ``ingest``: target spectra -> HDF5 store on the common grid (resumable per chunk).

Wheeler+2020 §3: rest-frame shift by the catalogue redshift, one common grid, Gaussian continuum.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cannonade.exceptions import ConfigError
from cannonade.pipeline.inputs import column
from cannonade.spectra.ingest import ingest
from cannonade.spectra.store import SpectraStore
from cannonade.util import atomic_path

NAME = "ingest"
WORK_DIRS = ("target.h5.parts",)
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md); not run.chunk_size: it is
# only the resume granularity, the store is the same whatever the chunking
CONFIG = ("target.catalogue", "target.spectra", "target.file_column", "target.redshift_column", "target.grid",
          "target.normalise")
INPUTS = ("target.catalogue", "target.spectra")


def spectrum_files(spectra, names):
    """Paths of the target spectra.

    spectra : Path -- a directory holding the files named in the catalogue, or a list file
        (one path a line, relative to the list's folder unless absolute; '#' comments).
    names : (n,) str -- the catalogue's file names.
    """
    spectra = Path(spectra)
    if spectra.is_dir():
        return [str(spectra / n) for n in names]
    if spectra.is_file():
        lines = [ln.strip() for ln in spectra.read_text().splitlines()]
        return [str(p if Path(p).is_absolute() else spectra.parent / p) for p in lines if _is_entry(p)]
    raise ConfigError(f"target.spectra: {spectra} is neither a directory nor a list file")


def _is_entry(line):
    return bool(line) and not line.startswith("#")


def execute(run):
    t = run.cfg.target
    run.target_rows_cache = None
    tgt = run.table("target")
    names = column(tgt, t.file_column, kind="text")
    files = spectrum_files(t.spectra, names)
    if files and not any(os.path.exists(f) for f in files):  # stops at the first file found: cheap
        raise ConfigError(f"target.spectra = {t.spectra}: none of the {len(files)} spectrum files named by the target "
                          f"catalogue's {t.file_column!r} column is there (e.g. {files[0]})")
    listing = run.path("target_files.txt")
    with atomic_path(listing) as tmp:
        tmp.write_text("\n".join(files) + "\n")
    redshifts = None
    if t.redshift_column:
        z = column(tgt, t.redshift_column)
        by_name = {os.path.basename(n): float(v) for n, v in zip(names, z) if np.isfinite(v)}
        redshifts = {f: by_name[os.path.basename(f)] for f in files if os.path.basename(f) in by_name}
    rep = ingest(
        [f"@{listing}"],
        run.path("target.h5"),
        grid=t.grid,
        normalise=t.normalise,
        redshifts=redshifts,
        workers=run.cfg.run.workers,
        chunk_size=max(200, min(2000, run.cfg.run.chunk_size)),
        stop_after=run.stop_after_chunks,
        scheduler=run.cfg.run.scheduler,
    )
    run.log.info("[ingest] %d target spectra stored, %d unreadable (report: %s)", rep.n_ok, rep.n_failed, rep.error_report)
    if rep.n_ok == 0:
        raise ConfigError(f"no target spectrum could be read from {t.spectra} (see {rep.error_report})")
    return {"n_catalogue": len(tgt), "n_stored": rep.n_ok, "n_failed": rep.n_failed}


def target_rows(run):
    """Store row of every target-catalogue row (-1 where its spectrum could not be read).

    Read from the store once per run (several stages need it; ingest resets it)."""
    if run.target_rows_cache is None:
        names = [os.path.basename(n) for n in column(run.table("target"), run.cfg.target.file_column, kind="text")]
        with SpectraStore(run.path("target.h5")) as st:
            src = [os.path.basename(str(s)) for s in st.meta(columns=["source_file"])["source_file"]]
        index = {s: i for i, s in enumerate(src)}
        run.target_rows_cache = np.array([index.get(n, -1) for n in names], dtype=int)
    return run.target_rows_cache
