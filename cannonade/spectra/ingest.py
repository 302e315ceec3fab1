"""Survey spectrum files -> a spectra store on a common grid (``cannonade ingest``).

:func:`ingest` turns files / directories / ``@list`` files into a store
(:mod:`cannonade.spectra.store`). The files are cut into chunks of ``chunk_size``
in input order and mapped with :class:`cannonade.execution.ChunkedMap`: each
chunk is read, shifted to the rest frame, resampled, normalised and written to
its own part file ``<out>.parts/part_000012.h5`` (atomically), in a process pool
when ``workers > 1``. A rerun after a kill skips the finished chunks; the parts
depend on a fingerprint of the file list and every setting, and are discarded
when either changes. When all parts exist they are copied one at a time into the
final store (atomically) and removed. Memory is bounded by one chunk per worker,
whatever the number of files. Unreadable files go to an error report CSV
``(file, reason)`` beside the store; they never stop the run.

Part file (HDF5): ``/flux``, ``/ivar`` (n_ok, P) f4; ``/meta/*`` as in the store;
``/failures/file``, ``/failures/reason``; attrs ``chunk``, ``n_files``, ``n_ok``,
``complete = 1``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cannonade.exceptions import CannonadeError, ColumnError, ConfigError, StoreFormatError
from cannonade.execution import ChunkedMap
from cannonade.spectra import store
from cannonade.spectra.store import META_COLUMNS, STORE_FORMAT, STORE_VERSION, SpectraStore
from cannonade.tables import FITS_SUFFIXES, float_column, text_column
from cannonade.util import atomic_path

__all__ = ["IngestReport", "expand_inputs", "load_redshift_catalogue", "ingest", "prepare_files", "process_chunk"]

_NORM_BATCH = 256  # spectra normalised at once inside a chunk (bounds temporaries)
_NORMALISE = ("gaussian", "chebyshev", "none")
_ID_COLUMNS = ("obj_id", "id", "designation", "desig", "filename", "obsid", "sobject_id", "apogee_id", "source_file")


@dataclass
class IngestReport:
    """What an ingest did.

    Attributes
    ----------
    n_ok, n_failed : int
    failures : list of (file, reason)
    path : Path
        The store.
    error_report : Path or None
        The CSV listing the failures.
    n_chunks, n_chunks_done_before : int
        Chunks in total, and chunks found finished from an earlier (killed) run.
    seconds : float
    """

    n_ok: int
    n_failed: int
    failures: list = field(default_factory=list)
    path: Path | None = None
    error_report: Path | None = None
    n_chunks: int = 0
    n_chunks_done_before: int = 0
    seconds: float = 0.0

    def summary(self, max_failures=5):
        """A human-readable summary (several lines): counts, rate, resume, the first failures."""
        rate = (self.n_ok + self.n_failed) / self.seconds if self.seconds > 0 else float("nan")
        lines = [f"ingested {self.n_ok} spectra into {self.path} ({self.n_failed} failed, {rate:.0f} files/s)"]
        if self.n_chunks_done_before:
            lines.append(f"resumed: {self.n_chunks_done_before} of {self.n_chunks} chunks were already done")
        if self.n_failed:
            lines.append(f"error report: {self.error_report}")
            lines.extend(f"  {f}: {reason}" for f, reason in self.failures[:max_failures])
            if self.n_failed > max_failures:
                lines.append(f"  ... and {self.n_failed - max_failures} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# inputs


def expand_inputs(inputs):
    """Expand files, directories (recursively: FITS files only) and ``@list.txt`` files.

    Parameters
    ----------
    inputs : str, Path or sequence of them
        A directory is searched for names ending in :data:`cannonade.tables.FITS_SUFFIXES`
        (hidden entries and ``*.parts`` directories skipped). An ``@list.txt`` file
        holds one path per line (``#`` comments, blank lines ignored); relative paths
        that do not exist from the working directory are taken relative to the list.

    Returns
    -------
    list of str
        In the order given (directory contents sorted), duplicates removed. Missing
        plain files are kept (ingest reports them as failures).

    Raises
    ------
    ConfigError
        A ``@list`` file that does not exist (names it).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out, seen = [], set()

    def add(p):
        s = str(p)
        if s not in seen:
            seen.add(s)
            out.append(s)

    for item in inputs:
        item = str(item)
        if item.startswith("@"):
            for p in _read_list_file(Path(item[1:])):
                add(p)
        elif os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".parts"))
                found.extend(os.path.join(root, f) for f in files if f.lower().endswith(FITS_SUFFIXES) and not f.startswith("."))
            for f in sorted(found):
                add(f)
        else:
            add(item)  # a missing file is reported as a failure, not fatal
    return out


def _read_list_file(listfile):
    if not listfile.is_file():
        raise ConfigError(f"list file {listfile} not found")
    paths = []
    with open(listfile, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            if not p.is_absolute() and not p.exists() and (listfile.parent / p).exists():
                p = listfile.parent / p
            paths.append(p)
    return paths


def load_redshift_catalogue(source):
    """Redshifts keyed by identifier: ``{key: z}``.

    Parameters
    ----------
    source : dict, astropy Table, or path of a table astropy can read (CSV, FITS, ...)
        A table needs a ``z`` / ``redshift`` column (or ``rv`` / ``vhelio`` in km/s,
        converted with the relativistic Doppler formula) and one or more id columns
        among obj_id, id, designation, filename, obsid, sobject_id, apogee_id,
        source_file; every id column present becomes a key. Spectra are matched by
        ``meta['obj_id']``, then the file name, then the file name without extension.

    Returns
    -------
    dict str -> float

    Raises
    ------
    ConfigError
        Missing or unreadable file, no redshift column or no id column (names the file).
    """
    if source is None:
        return {}
    if isinstance(source, dict):
        return {str(k).strip(): float(v) for k, v in source.items()}
    from cannonade.spectra.readers import rv_to_redshift

    table, what = _redshift_table(source)
    lower = {c.lower(): c for c in table.colnames}
    zcol = next((lower[c] for c in ("z", "redshift") if c in lower), None)
    rvcol = next((lower[c] for c in ("rv", "vhelio", "rv_com") if c in lower), None)
    idcols = [lower[c] for c in _ID_COLUMNS if c in lower]
    if zcol is None and rvcol is None:
        raise ConfigError(f"{what}: no z/redshift or rv/vhelio column in {table.colnames}")
    if not idcols:
        raise ConfigError(f"{what}: no id column (one of {_ID_COLUMNS}) in {table.colnames}")
    try:  # masked cells and survey sentinels (<= -9998) become NaN *before* rv -> z
        z = float_column(table, zcol) if zcol is not None else np.asarray(rv_to_redshift(float_column(table, rvcol)), dtype=np.float64)
        ids = [text_column(table, col) for col in idcols]
    except ColumnError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return {str(key): float(value) for keys in ids for key, value in zip(keys, z) if key and math.isfinite(value)}


def _redshift_table(source):
    """(astropy Table, description) of a table or a table file (ConfigError naming it)."""
    if hasattr(source, "colnames"):
        return source, "redshift catalogue (table)"
    from astropy.table import Table

    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"redshift catalogue {path} not found")
    try:
        table = Table.read(path, format="ascii.csv") if path.suffix.lower() == ".csv" else Table.read(path)
    except Exception as exc:  # astropy raises many kinds
        raise ConfigError(f"redshift catalogue {path}: unreadable ({exc})") from None
    return table, f"redshift catalogue {path}"


def _redshift_for(meta, redshifts):
    if not redshifts:
        return None
    name = os.path.basename(str(meta.get("source_file", "")))
    for key in (str(meta.get("obj_id", "")), name, name.split(".")[0]):
        if key and key in redshifts:
            return redshifts[key]
    return None


# ---------------------------------------------------------------------------
# one chunk (runs in the workers)

# per-worker settings, set once per worker by _init_worker (in this process for workers=1)
_WORKER = {}


def _init_worker(grid, normalise, redshifts, norm_kwargs):
    from cannonade.spectra.surveys import common_grid

    _WORKER.update(
        grid=common_grid(grid),
        normalise=normalise,
        redshifts=redshifts or {},
        norm_kwargs=dict(norm_kwargs or {}),
    )


def _failure_reason(path, exc):
    reason = str(exc)
    if reason.startswith(f"{path}: "):
        return reason[len(str(path)) + 2 :]  # the file is its own column
    if not isinstance(exc, CannonadeError):
        return f"{type(exc).__name__}: {reason}"
    return reason


def prepare_files(files, grid, normalise="gaussian", redshifts=None, norm_kwargs=None):
    """Read, shift to the rest frame and resample files onto ``grid``; normalise in batches.

    Parameters
    ----------
    files : sequence of str
    grid : (P,) float
        Common wavelength grid (vacuum Angstrom).
    normalise : {'gaussian', 'chebyshev', 'none'}
    redshifts : dict, optional
        :func:`load_redshift_catalogue` output overriding the files' own redshifts.
    norm_kwargs : dict, optional
        Passed to the continuum method.

    Returns
    -------
    flux, ivar : (n_ok, P) float32
    metas : list of n_ok dict
        The store's standard columns only; ``z_applied`` and ``n_good`` filled.
    failures : list of (file, reason)
        Every per-file problem (unreadable, no good pixel on the grid); none is fatal.
    """
    from cannonade.spectra.preprocessing import doppler_shift, normalise_batch, resample
    from cannonade.spectra.readers import read_spectrum

    norm_kwargs = dict(norm_kwargs or {})
    p = grid.size
    flux = np.empty((len(files), p), dtype=np.float32)
    ivar = np.empty((len(files), p), dtype=np.float32)
    metas, failures = [], []
    bf, bi, brow = [], [], []

    def flush():
        if not bf:
            return
        f, i = normalise_batch(grid, np.array(bf), np.array(bi), method=normalise, **norm_kwargs)
        for k, row in enumerate(brow):
            flux[row] = f[k]
            ivar[row] = i[k]
            metas[row]["n_good"] = int(np.count_nonzero(i[k] > 0))
        bf.clear()
        bi.clear()
        brow.clear()

    for path in files:
        try:
            spec = read_spectrum(path)
            meta = spec.meta
            z = _redshift_for(meta, redshifts)
            z_applied = meta.get("redshift", math.nan) if z is None else z
            f, i = resample(doppler_shift(spec.wavelength, z_applied), spec.flux, spec.ivar, grid)
            if not np.any(i > 0):
                raise CannonadeError(
                    f"{path}: no good pixel on the common grid ({grid[0]:.0f}-{grid[-1]:.0f} A); "
                    f"spectrum covers {spec.wavelength[0]:.0f}-{spec.wavelength[-1]:.0f} A"
                )
        except Exception as exc:  # every per-file problem is reported, none is fatal
            failures.append((str(path), _failure_reason(path, exc)))
            continue
        m = {k: meta.get(k) for k in META_COLUMNS if k in meta}
        m["z_applied"] = float(z_applied) if z_applied is not None else math.nan
        m["source_file"] = str(path)
        brow.append(len(metas))
        metas.append(m)
        bf.append(f)
        bi.append(i)
        if len(bf) >= _NORM_BATCH:
            flush()
    flush()
    n = len(metas)
    return flux[:n], ivar[:n], metas, failures


def _write_part(part_path, index, files, flux, ivar, metas, failures):
    """One chunk's results -> its own HDF5 part file (atomically)."""
    import h5py

    n = len(metas)
    with atomic_path(part_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("flux", data=flux)
            h5.create_dataset("ivar", data=ivar)
            store.write_meta(h5.create_group("meta"), store.meta_columns(metas, n), n)
            fg = h5.create_group("failures")
            fg.create_dataset("file", data=np.array([f for f, _ in failures], dtype=object), dtype=store.string_dtype())
            fg.create_dataset("reason", data=np.array([r for _, r in failures], dtype=object), dtype=store.string_dtype())
            h5.attrs["chunk"] = index
            h5.attrs["n_files"] = len(files)
            h5.attrs["n_ok"] = n
            h5.attrs["complete"] = 1


def process_chunk(k, part_path, files):
    """The default chunk function of :func:`ingest`: ``files`` -> part file ``part_path``.

    Runs in an ingest worker (whose initializer has set the grid, normalisation and
    redshifts). A custom ``chunk_func`` passed to :func:`ingest` (e.g. to count or
    log calls) should call this to do the work.

    Parameters
    ----------
    k : int
        Chunk index.
    part_path : str
        Where to write the part (atomically).
    files : list of str
        The chunk's files.

    Returns
    -------
    (n_ok, n_failed) : tuple of int
    """
    if not _WORKER:
        raise CannonadeError(f"{part_path}: process_chunk called outside an ingest worker (no grid/settings set)")
    w = _WORKER
    flux, ivar, metas, failures = prepare_files(files, w["grid"], w["normalise"], w["redshifts"], w["norm_kwargs"])
    _write_part(part_path, k, files, flux, ivar, metas, failures)
    return len(metas), len(failures)


def _part_complete(part_path):
    """A finished part: a readable HDF5 file marked complete."""
    import h5py

    try:
        with h5py.File(part_path, "r") as h5:
            return int(h5.attrs.get("complete", 0)) == 1 and "flux" in h5 and "failures" in h5
    except Exception:  # unreadable (e.g. a part from a crashed disk): redo it
        return False


# ---------------------------------------------------------------------------
# the whole ingest


def _ingest_key(files, grid_name, grid, normalise, redshifts, chunk_size, norm_kwargs):
    h = hashlib.sha1()
    h.update(f"{STORE_FORMAT}/{STORE_VERSION}|{grid_name}|{normalise}|{chunk_size}|{json.dumps(norm_kwargs, sort_keys=True, default=str)}|".encode())
    h.update(np.ascontiguousarray(grid, dtype=np.float64).tobytes())
    for k in sorted(redshifts):
        h.update(f"{k}={redshifts[k]!r};".encode())
    h.update(b"|files|")
    for f in files:
        h.update(f.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def _default_error_report(out):
    out = Path(out)
    name = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(name + ".errors.csv")


def _read_failures_csv(path):
    if path is None or not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]


def _finished_store(out, key):
    """Spectra in ``out`` if it is a finished store of this very ingest, else None."""
    if not out.is_file():
        return None
    try:
        with SpectraStore(out) as st:
            return st.n_spectra if st.attrs.get("ingest_key") == key else None
    except StoreFormatError:
        return None


def ingest(
    inputs,
    out,
    grid="lamost",
    normalise="gaussian",
    redshifts=None,
    workers=2,
    chunk_size=1000,
    error_report=None,
    norm_kwargs=None,
    stop_after=None,
    chunk_func=None,
):
    """Read survey spectra into a chunked HDF5 store on a common grid.

    Parameters
    ----------
    inputs : str, Path or sequence
        FITS files, directories (searched recursively for FITS files) or
        ``@list.txt`` files (one path per line); see :func:`expand_inputs`.
    out : str or Path
        The store (``.h5``). Parts live in ``<out>.parts/`` until assembled.
    grid : str
        ``'lamost'``, ``'apogee'``, ``'galah'`` or ``'WMIN:WMAX:NPIX'``
        (:func:`cannonade.spectra.surveys.common_grid`).
    normalise : {'gaussian', 'chebyshev', 'none'}
    redshifts : dict, table or path, optional
        Rest-frame redshifts overriding the files' own (:func:`load_redshift_catalogue`).
    workers : int
        Processes (1 = run in this process).
    chunk_size : int
        Files per chunk (= per part file, and the memory bound per worker).
    error_report : str or Path, optional
        CSV of (file, reason); default ``<out without suffix>.errors.csv``.
    norm_kwargs : dict, optional
        Passed to the continuum method (e.g. ``{'sigma': 50, 'truncate': 150}``).
    stop_after : int, optional
        Test hook (:meth:`cannonade.execution.ChunkedMap.run`): stop with
        :class:`~cannonade.execution.StopRequested` once this many chunks have
        finished and some are left, as a kill would; the rerun resumes.
    chunk_func : callable, optional
        ``chunk_func(k, part_path, files)`` run for each chunk in the workers instead
        of :func:`process_chunk` (which it should call); a hook to count or log chunk
        calls. Must be picklable (a top-level function or ``functools.partial``)
        when ``workers > 1``.

    Returns
    -------
    IngestReport

    Raises
    ------
    ConfigError
        Bad ``normalise``/``chunk_size``/grid, no input files, a missing ``@list`` file
        or redshift catalogue.
    """
    from cannonade.spectra.surveys import common_grid

    t0 = time.perf_counter()
    if normalise not in _NORMALISE:
        raise ConfigError(f"normalise must be 'gaussian', 'chebyshev' or 'none', got {normalise!r}")
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    out = Path(out)
    error_report = Path(error_report) if error_report is not None else _default_error_report(out)
    grid_name = grid if isinstance(grid, str) else "custom"
    grid_arr = common_grid(grid)
    z_map = load_redshift_catalogue(redshifts)
    norm_kwargs = dict(norm_kwargs or {})
    files = expand_inputs(inputs)
    if not files:
        raise ConfigError(f"no input files found in {inputs}")
    key = _ingest_key(files, grid_name, grid_arr, normalise, z_map, chunk_size, norm_kwargs)
    n_chunks = (len(files) + chunk_size - 1) // chunk_size

    n_stored = _finished_store(out, key)
    if n_stored is not None:  # already complete with the same inputs and settings: nothing to do
        failures = _read_failures_csv(error_report)
        return IngestReport(n_stored, len(failures), failures, out, error_report, n_chunks, n_chunks, time.perf_counter() - t0)

    fingerprint = {"format": STORE_FORMAT, "version": STORE_VERSION, "ingest_key": key, "n_files": len(files), "chunk_size": chunk_size}
    cm = ChunkedMap(Path(str(out) + ".parts"), fingerprint, n_chunks, suffix=".h5", is_complete=_part_complete)
    n_done_before = cm.n_done
    settings = (grid, normalise, z_map, norm_kwargs)
    _map_chunks(cm, files, chunk_size, max(1, int(workers)), settings, chunk_func or process_chunk, stop_after)
    attrs = {"grid": grid_name, "normalise": normalise, "norm_kwargs": json.dumps(norm_kwargs, sort_keys=True, default=str), "ingest_key": key}
    n_ok, failures = _assemble(out, cm.parts(), grid_arr, attrs, error_report)
    cm.cleanup()
    return IngestReport(n_ok, len(failures), failures, out, error_report, n_chunks, n_done_before, time.perf_counter() - t0)


def _map_chunks(cm, files, chunk_size, workers, settings, chunk_func, stop_after):
    """Run ``chunk_func`` over the pending chunks of ``cm`` (a process pool when workers > 1)."""

    def chunk_files(k):
        return files[k * chunk_size : (k + 1) * chunk_size]

    try:
        cm.run(
            chunk_func,
            args=lambda k: (chunk_files(k),),
            backend="process" if workers > 1 and len(cm.pending()) > 1 else "serial",
            workers=workers,
            initializer=_init_worker,
            initargs=settings,
            desc="ingest",
            unit="spec",
            total=len(files),
            weight=lambda k: len(chunk_files(k)),
            stop_after=stop_after,
        )
    finally:
        _WORKER.clear()  # the serial backend set it in this process


def _assemble(out, parts, grid, attrs, error_report):
    """Copy the part files, in order, into the final store (atomically); write the error report.

    Returns
    -------
    n_ok : int
    failures : list of (file, reason)
    """
    import h5py

    from cannonade._version import __version__

    counts = []
    for p in parts:
        with h5py.File(p, "r") as h5:
            counts.append(int(h5.attrs["n_ok"]))
    n = int(sum(counts))
    failures = []
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as dst:
            dst.create_dataset("wavelength", data=grid)
            store.create_arrays(dst, n, grid.size)
            g = dst.create_group("meta")
            row = 0
            for p, c in zip(parts, counts):
                with h5py.File(p, "r") as src:
                    if not g.keys():
                        for name, ds in src["meta"].items():
                            g.create_dataset(name, shape=(n,), dtype=store.string_dtype() if store.h5_is_string(ds) else ds.dtype)
                    if c:
                        dst["flux"][row : row + c] = src["flux"][:]
                        dst["ivar"][row : row + c] = src["ivar"][:]
                        for name in g:
                            if name in src["meta"]:
                                ds = src["meta"][name]
                                g[name][row : row + c] = ds.asstr()[:] if store.h5_is_string(ds) else ds[:]
                    files = src["failures/file"].asstr()[:]
                    reasons = src["failures/reason"].asstr()[:]
                    failures.extend(zip(files.tolist(), reasons.tolist()))
                row += c
            if not g.keys():
                store.create_meta(g, store.meta_columns([], 0), 0)
            store.set_store_attrs(
                dst,
                dict(attrs, n_failed=len(failures), cannonade_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S")),
            )
    _write_error_report(error_report, failures)
    return n, failures


def _write_error_report(path, failures):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "reason"])
            w.writerows(failures)
