"""Survey spectrum files -> a spectra store on a common grid (``cannonade ingest``).

:func:`ingest` turns files / directories / ``@list`` files into a store
(:mod:`cannonade.spectra.store`). The files are cut into chunks of ``chunk_size``
in input order and mapped with :class:`cannonade.execution.ChunkedMap`: each
chunk is read, shifted to the rest frame, resampled, normalised and written to
its own part file ``<out>.parts/part_000012.h5`` (atomically), in a process pool
when ``workers > 1``, or on a dask cluster with ``scheduler`` (docs/scale.md). A rerun after a kill skips the finished chunks
(and first removes the hidden temporaries the kill left of the store, its error report and the parts); the parts
depend on a fingerprint of the file list and every setting, and are discarded
when either changes. When all parts exist they are copied one at a time into the
final store (atomically; :mod:`cannonade.spectra.assembly`), each part deleted as soon as it
is copied, so the parts and the store never both hold all the spectra on disk (a kill during
that copy costs only the re-reading of the copied parts' files on the rerun). Memory is bounded by one chunk
per worker, whatever the number of files. Unreadable files go to an error report CSV
``(file, reason)`` beside the store; they never stop the run.

Part files and the store are compressed alike (lossless HDF5 filters,
:data:`cannonade.spectra.store.DEFAULT_COMPRESSION`; see :mod:`cannonade.spectra.store`).
Gzipped input files (``.fits.gz``, as LAMOST ships them) are read as they are.

GALAH stars (``join='star'``, :func:`prepare_stars`): a GALAH star comes as four per-CCD
files ``<sobject_id><ccd>.fits[.gz]``. With ``join='star'`` (the default ``'auto'`` picks it on
the ``galah`` grid when every input is such a file) the files are grouped by sobject_id and
each star becomes ONE row: every CCD is shifted to the rest frame and resampled onto its own
detector region of the grid (:data:`cannonade.spectra.surveys.DETECTOR_REGIONS` ``['galah']``),
then continuum-normalised region by region, exactly as a CCD row of ``join='file'`` is (the
values agree with those rows). A star missing some CCD file, or with an unreadable CCD, is not
stored: it goes to the error report (``missing CCD(s) 2, 4``). Chunks are made of whole stars,
so a star's files never straddle two chunks.

Part file (HDF5): ``/flux``, ``/ivar`` (n_ok, P) f4, chunked and compressed as the store;
``/meta/*`` as in the store (plus ``snr_c1``..``snr_c4`` for joined GALAH stars);
``/failures/file``, ``/failures/reason``; attrs ``chunk``, ``n_files``, ``n_ok``, ``complete = 1``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cannonade.exceptions import CannonadeError, ColumnError, ConfigError, StoreFormatError
from cannonade.execution import ChunkedMap, choose_backend
from cannonade.execution.backends import validate_workers
from cannonade.spectra import store
from cannonade.spectra.assembly import assemble, read_error_report
from cannonade.spectra.filelist import ListedFiles, read_list_file
from cannonade.spectra.store import META_COLUMNS, STORE_FORMAT, STORE_VERSION, SpectraStore
from cannonade.tables import FITS_SUFFIXES, float_column, text_column
from cannonade.util import atomic_path, check_output_file, remove_stale_temporaries, remove_temporaries_of

__all__ = [
    "IngestReport",
    "expand_inputs",
    "load_redshift_catalogue",
    "ingest",
    "resolve_join",
    "group_galah_stars",
    "prepare_files",
    "prepare_stars",
    "process_chunk",
    "JOIN_MODES",
    "GALAH_STAR_COLUMNS",
]

log = logging.getLogger(__name__)

_NORM_BATCH = 256  # spectra normalised at once inside a chunk (bounds temporaries)
_RESAMPLE_BATCH = 32  # spectra resampled at once: their arrays stay in cache (~3x faster than 256)
_NORMALISE = ("gaussian", "chebyshev", "none")
#: ``ingest(join=...)``: one row per file, one row per GALAH star (its four CCDs joined), or pick
JOIN_MODES = ("auto", "file", "star")
_GALAH_CCDS = (1, 2, 3, 4)
#: the extra store columns of a joined GALAH star: the S/N of each CCD (header ``SNR``)
GALAH_STAR_COLUMNS = tuple(f"snr_c{c}" for c in _GALAH_CCDS)
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
    temporaries_removed : int
        Hidden temporary files (of the store, the error report, the parts) that an interrupted
        run left and this one removed.
    seconds : float
    join : {'file', 'star'}
        What a row is (the resolved ``join`` mode): one file, or one GALAH star whose four
        CCD files were joined; ``n_ok`` and ``n_failed`` count rows and failed files or stars.
    """

    n_ok: int
    n_failed: int
    failures: list = field(default_factory=list)
    path: Path | None = None
    error_report: Path | None = None
    n_chunks: int = 0
    n_chunks_done_before: int = 0
    seconds: float = 0.0
    join: str = "file"
    temporaries_removed: int = 0

    def summary(self, max_failures=5):
        """A human-readable summary (several lines): counts, rate, resume, the first failures."""
        rate = (self.n_ok + self.n_failed) / self.seconds if self.seconds > 0 else float("nan")
        if self.join == "star":
            what, unit = "GALAH stars (four CCDs joined, one row each)", "stars/s"
        else:
            what, unit = "spectra", "files/s"
        lines = [f"ingested {self.n_ok} {what} into {self.path} ({self.n_failed} failed, {rate:.0f} {unit})"]
        if self.n_chunks_done_before:
            lines.append(f"resumed: {self.n_chunks_done_before} of {self.n_chunks} chunks were already done")
        if self.temporaries_removed:
            lines.append(f"removed {self.temporaries_removed} temporary file(s) left by an interrupted run")
        if self.n_failed:
            lines.append(f"error report: {self.error_report}")
            lines.extend(f"  {f}: {reason}" for f, reason in self.failures[:max_failures])
            if self.n_failed > max_failures:
                lines.append(f"  ... and {self.n_failed - max_failures} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# inputs


def default_norm_kwargs(normalise, grid_name, norm_kwargs=None):
    """The continuum parameters of a store: a Chebyshev series per detector on a survey's grid.

    APOGEE's grid is one contiguous log-linear run over its three detectors; its continuum is
    fitted per detector (``surveys.detector_regions``), each with its own flux-calibration
    shape, unless ``norm_kwargs`` names ``regions`` itself. Returns a new dict.
    """
    from cannonade.spectra.surveys import DETECTOR_REGIONS

    out = dict(norm_kwargs or {})
    if normalise == "chebyshev" and "regions" not in out and str(grid_name).lower() in DETECTOR_REGIONS:
        out["regions"] = [list(r) for r in DETECTOR_REGIONS[str(grid_name).lower()]]
    return out


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
            for p in read_list_file(Path(item[1:])):
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


def input_files(inputs):
    """The files of an ingest: :func:`expand_inputs`, except that a single ``@list`` file (a
    survey's millions of files) is a :class:`~cannonade.spectra.filelist.ListedFiles`, the same
    paths in the same order read from the list when a chunk needs them (not held in memory)."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if len(items) == 1 and str(items[0]).startswith("@"):
        return ListedFiles(Path(str(items[0])[1:]))
    return expand_inputs(items)


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


def group_galah_stars(files):
    """Group GALAH per-CCD files into stars by the sobject_id of their names.

    Parameters
    ----------
    files : sequence of str
        Files named ``<sobject_id><ccd>.fits`` (``.fit``, ``.fts``, each possibly ``.gz``;
        :func:`cannonade.spectra.readers.galah.galah_ccd_name`), in any order.

    Returns
    -------
    list of list of str
        One list per star, in the order of the star's first file in ``files``, holding its
        files sorted by CCD (a CCD given twice stays twice: :func:`prepare_stars` reports it).
        A file with any other name is a group of its own (reported as not joinable).
    """
    from cannonade.spectra.readers.galah import galah_ccd_name

    groups, order = {}, []
    for f in files:
        f = str(f)
        name = galah_ccd_name(f)
        key = ("star", name[0]) if name is not None else ("file", f)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((name[1] if name is not None else 0, f))
    return [[f for _, f in sorted(groups[key])] for key in order]


def resolve_join(join, grid, files):
    """The join mode an ingest runs with: ``'file'`` (a row per file) or ``'star'`` (a row per GALAH star).

    Parameters
    ----------
    join : {'auto', 'file', 'star'}
        ``'auto'`` is ``'star'`` when ``grid`` is the named ``'galah'`` grid and every file is
        named as a GALAH CCD file (``<sobject_id><ccd>.fits[.gz]``), else ``'file'``.
    grid : str or array
        The ``grid`` argument of :func:`ingest`.
    files : sequence of str
        The expanded inputs.

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        An unknown ``join``.
    """
    from cannonade.spectra.readers.galah import galah_ccd_name

    if join not in JOIN_MODES:
        raise ConfigError(f"join must be one of {', '.join(repr(j) for j in JOIN_MODES)}, got {join!r}")
    if join != "auto":
        return join
    on_galah = isinstance(grid, str) and grid.strip().lower() == "galah"
    return "star" if on_galah and files and all(galah_ccd_name(f) is not None for f in files) else "file"


# ---------------------------------------------------------------------------
# one chunk (runs in the workers)

# per-worker settings, set once per worker by _init_worker (in this process for workers=1)
_WORKER = {}


def _init_worker(grid, normalise, redshifts, norm_kwargs, chunk_rows=64, join="file"):
    from cannonade.spectra.surveys import common_grid

    _WORKER.update(
        grid=common_grid(grid),
        normalise=normalise,
        redshifts=redshifts or {},
        norm_kwargs=dict(norm_kwargs or {}),
        chunk_rows=int(chunk_rows),
        join=join,
    )


def _chunk_rows(chunk_size):
    """HDF5 rows per chunk of the parts and the store: the largest of 64, 50, 40, 32, 25, 20, 16,
    10, 8 dividing ``chunk_size``, so that a part of ``chunk_size`` spectra fills whole chunks and
    its compressed chunks are copied into the store as they are (64 when none divides it). The
    default 1 000 gets 50 (8 before 50 was a candidate: 6x the chunks to compress, copy and
    index, ~5 % of a LAMOST worker's time)."""
    return next((r for r in (64, 50, 40, 32, 25, 20, 16, 10, 8) if chunk_size % r == 0), 64)


def _failure_reason(path, exc):
    reason = str(exc)
    if reason.startswith(f"{path}: "):
        return reason[len(str(path)) + 2 :]  # the file is its own column
    if not isinstance(exc, CannonadeError):
        return f"{type(exc).__name__}: {reason}"
    return reason


def put_rows(flux, ivar, metas, rows, batch_flux, batch_ivar):
    """Place a normalised batch into the chunk's arrays at ``rows`` and count each row's good pixels
    (the whole batch at once: one cast to the store's float32, one count)."""
    rows = np.asarray(rows, dtype=np.intp)
    flux[rows] = batch_flux
    ivar[rows] = batch_ivar
    for row, n_good in zip(rows.tolist(), np.count_nonzero(batch_ivar > 0, axis=1).tolist()):
        metas[row]["n_good"] = n_good


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
    from cannonade.spectra.preprocessing import doppler_shift
    from cannonade.spectra.readers import read_stored_spectrum
    from cannonade.spectra.readers.fits import read_ahead

    norm_kwargs = dict(norm_kwargs or {})
    p = grid.size
    flux = np.empty((len(files), p), dtype=np.float32)
    ivar = np.empty((len(files), p), dtype=np.float32)
    metas, failures = [], []
    pending = []  # (path, rest wavelength, flux, ivar, meta row) read, not yet resampled

    def flush():
        if pending:
            _resample_and_normalise(pending, grid, normalise, norm_kwargs, flux, ivar, metas, failures)
            pending.clear()

    for path, stored in read_ahead(files):
        try:
            if isinstance(stored, Exception):
                raise stored
            spec = read_stored_spectrum(path, stored)
            meta = spec.meta
            z = _redshift_for(meta, redshifts)
            z_applied = meta.get("redshift", math.nan) if z is None else z
            wave = doppler_shift(spec.wavelength, z_applied)
        except Exception as exc:  # every per-file problem is reported, none is fatal
            failures.append((str(path), _failure_reason(path, exc)))
            continue
        m = {k: meta.get(k) for k in META_COLUMNS if k in meta}
        m["z_applied"] = float(z_applied) if z_applied is not None else math.nan
        m["source_file"] = str(path)
        pending.append((str(path), wave, spec.flux, spec.ivar, m))
        if len(pending) >= _NORM_BATCH:
            flush()
    flush()
    n = len(metas)
    return flux[:n], ivar[:n], metas, failures


def _resample_rows_of(items, grid):
    """(flux, ivar) on ``grid`` of each (path, wave, flux, ivar, meta) item, or the exception that
    spectrum raised; spectra with as many pixels are resampled together, ``_RESAMPLE_BATCH`` at once."""
    from cannonade.spectra.resampling import resample, resample_batch

    out = [None] * len(items)
    by_size = {}
    for k, item in enumerate(items):
        by_size.setdefault(np.size(item[1]), []).append(k)
    for ks in by_size.values():
        for j in range(0, len(ks), _RESAMPLE_BATCH):
            sel = ks[j : j + _RESAMPLE_BATCH]
            try:
                f, i = resample_batch(*(np.array([items[k][c] for k in sel], dtype=np.float64) for c in (1, 2, 3)), grid)
                for r, k in enumerate(sel):
                    out[k] = (f[r], i[r])
            except Exception:  # one bad spectrum: each alone, so only it fails
                for k in sel:
                    try:
                        out[k] = resample(*items[k][1:4], grid)
                    except Exception as exc:
                        out[k] = exc
    return out


def _resample_and_normalise(items, grid, normalise, norm_kwargs, flux, ivar, metas, failures):
    """Resample the read ``items`` onto ``grid``, normalise those with a good pixel in one batch and
    place them in ``flux``, ``ivar`` (rows after ``metas``' last, in the items' order); the others
    join ``failures``."""
    from cannonade.spectra.continuum import normalise_batch

    rows, bf, bi = [], [], []
    for (path, wave, *_, m), res in zip(items, _resample_rows_of(items, grid)):
        if not isinstance(res, Exception) and not np.any(res[1] > 0):
            res = CannonadeError(f"{path}: no good pixel on the common grid ({grid[0]:.0f}-{grid[-1]:.0f} A); "
                                 f"spectrum covers {wave[0]:.0f}-{wave[-1]:.0f} A")
        if isinstance(res, Exception):
            failures.append((path, _failure_reason(path, res)))
            continue
        rows.append(len(metas))
        metas.append(m)
        bf.append(res[0])
        bi.append(res[1])
    if rows:
        f, i = normalise_batch(grid, np.array(bf), np.array(bi), method=normalise, **norm_kwargs)
        put_rows(flux, ivar, metas, rows, f, i)


class _StarFailure(Exception):
    """A star that cannot be stored: ``(file, reason)`` for the error report."""


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ccd_slices(grid):
    """The pixels of ``grid`` inside each HERMES CCD's detector region: four slices (maybe empty)."""
    from cannonade.spectra.surveys import detector_regions

    return [slice(int(np.searchsorted(grid, lo, side="left")), int(np.searchsorted(grid, hi, side="right")))
            for lo, hi in detector_regions("galah")]


def _read_star(paths, redshifts, stored):
    """One GALAH star's CCD files (``stored``: path -> bytes read ahead, or the exception reading
    them raised), read and shifted to the rest frame (not yet resampled).

    Returns
    -------
    sid : str
    ccds : list of (ccd, path, rest wavelength, flux, ivar, meta, z_applied, (first, last observed wavelength))
        CCDs 1, 2, ... in order, up to the first that cannot be read.
    error : (path, reason) or None
        That CCD's failure (the star is lost, unless an earlier CCD already fails on the grid).

    Raises _StarFailure(file, reason) for files that do not make a star (names, a CCD twice or missing)."""
    from cannonade.spectra.preprocessing import doppler_shift
    from cannonade.spectra.readers import read_stored_spectrum
    from cannonade.spectra.readers.galah import galah_ccd_name

    named = [(galah_ccd_name(p), p) for p in paths]
    if named[0][0] is None:
        raise _StarFailure(paths[0], "not named as a GALAH CCD file (<sobject_id><ccd>.fits[.gz]), so it cannot be "
                                     "joined into a star (join='star'); ingest it with join='file'")
    sid = named[0][0][0]
    by_ccd = {}
    for (_, ccd), p in named:
        by_ccd.setdefault(ccd, []).append(p)
    for ccd, ps in sorted(by_ccd.items()):
        if len(ps) > 1:
            raise _StarFailure(ps[0], f"GALAH star {sid}: CCD {ccd} given {len(ps)} times ({', '.join(ps)})")
    missing = [c for c in _GALAH_CCDS if c not in by_ccd]
    if missing:
        found = ", ".join(str(c) for c in sorted(by_ccd))
        raise _StarFailure(paths[0], f"GALAH star {sid}: missing CCD(s) {', '.join(str(c) for c in missing)} "
                                     f"(found {found}; a star is stored only with all four)")
    ccds = []
    for ccd in _GALAH_CCDS:
        path = by_ccd[ccd][0]
        try:
            if isinstance(stored[path], Exception):
                raise stored[path]
            spec = read_stored_spectrum(path, stored[path])
            meta = spec.meta
            if meta.get("layout") != "galah_ccd":
                raise CannonadeError(f"{path}: not a GALAH CCD spectrum (layout {meta.get('layout')!r})")
            z = _redshift_for(meta, redshifts)
            z_applied = meta.get("redshift", math.nan) if z is None else z
            z_applied = math.nan if z_applied is None else float(z_applied)
            wave = doppler_shift(spec.wavelength, z_applied)
        except Exception as exc:  # one bad CCD loses the star, never the run
            return sid, ccds, _ccd_failure(sid, ccd, path, exc)
        ccds.append((ccd, path, wave, spec.flux, spec.ivar, meta, z_applied, (spec.wavelength[0], spec.wavelength[-1])))
    return sid, ccds, None


def _ccd_failure(sid, ccd, path, exc):
    return path, f"GALAH star {sid}, CCD {ccd}: {_failure_reason(path, exc)}"


def _resample_stars(stars, grid, slices):
    """Every read CCD of ``stars`` (:func:`_read_star` outputs) resampled onto its own region of
    ``grid``: all the stars' CCD k at once (:func:`_resample_rows_of`, the same numbers as one by
    one). Returns, per star, per read CCD, (flux, ivar) on the region, an exception, or None
    when the grid misses the CCD's region."""
    out = [[None] * len(ccds) for _, ccds, _ in stars]
    for k in _GALAH_CCDS:
        sl = slices[k - 1]
        if sl.stop <= sl.start:
            continue
        read = [s for s, (_, ccds, _) in enumerate(stars) if len(ccds) >= k]  # ccds[k - 1] is CCD k
        items = [(path, wave, flux, ivar, None) for _, path, wave, flux, ivar, *_ in (stars[s][1][k - 1] for s in read)]
        for s, res in zip(read, _resample_rows_of(items, grid[sl])):
            out[s][k - 1] = res
    return out


def _star_row(sid, ccds, error, resampled, grid, slices):
    """One star's row on ``grid`` (flux, ivar, meta), resampled but not normalised, from its read
    CCDs and their resampled regions. Raises _StarFailure(file, reason) for the first CCD, in
    order, that cannot be read or has no good pixel in its region, or a row without any."""
    flux = np.full(grid.size, np.nan)
    ivar = np.zeros(grid.size)
    metas = {}
    for (ccd, path, _, _, _, meta, z_applied, observed), res in zip(ccds, resampled):
        sl = slices[ccd - 1]
        if res is not None:  # the grid reaches this CCD's region: its pixels go there, and only there
            if not isinstance(res, Exception) and not np.any(res[1] > 0):
                res = CannonadeError(
                    f"{path}: no good pixel in the CCD's region of the grid ({grid[sl.start]:.0f}-{grid[sl.stop - 1]:.0f} A); "
                    f"spectrum covers {observed[0]:.0f}-{observed[1]:.0f} A"
                )
            if isinstance(res, Exception):
                raise _StarFailure(*_ccd_failure(sid, ccd, path, res))
            flux[sl], ivar[sl] = res
        metas[ccd] = (meta, z_applied)
    if error is not None:
        raise _StarFailure(*error)
    if not np.any(ivar > 0):
        raise _StarFailure(ccds[0][1], f"GALAH star {sid}: no good pixel on the common grid "
                                       f"({grid[0]:.0f}-{grid[-1]:.0f} A), which misses the four CCD regions")
    ref, z_ref = metas[2]  # the green CCD, as read_galah_star and Nandakumar+2022's snr_c2 cut
    m = {k: ref.get(k) for k in META_COLUMNS if k in ref}
    m.update(obj_id=sid, survey="galah", source_file=str(ccds[0][1]), z_applied=z_ref)
    m.update({f"snr_c{c}": _as_float(metas[c][0].get("snr")) for c in _GALAH_CCDS})
    return flux, ivar, m


def prepare_stars(files, grid, normalise="gaussian", redshifts=None, norm_kwargs=None):
    """GALAH per-CCD files -> one row per star on ``grid`` (the ``join='star'`` chunk work).

    The files are grouped by sobject_id (:func:`group_galah_stars`). For each star with all
    four CCDs, each CCD is read, shifted to the rest frame (its own ``meta['redshift']``, or
    the catalogue's by sobject_id or file name) and resampled onto the pixels of ``grid`` inside
    its own detector region (:func:`cannonade.spectra.surveys.detector_regions` ``('galah')``);
    the row is then continuum-normalised region by region (each CCD on its own, in batches), so
    every region of the row equals the row ``join='file'`` makes of that CCD's file.

    Parameters
    ----------
    files : sequence of str
        Whole stars: every CCD file of each star in the chunk.
    grid : (P,) float
        Common wavelength grid (vacuum Angstrom), usually ``common_grid('galah')``.
    normalise : {'gaussian', 'chebyshev', 'none'}
    redshifts : dict, optional
        :func:`load_redshift_catalogue` output (keys: sobject_id or file name).
    norm_kwargs : dict, optional
        Passed to the continuum method (applied to each CCD region).

    Returns
    -------
    flux, ivar : (n_ok, P) float32
    metas : list of n_ok dict
        ``obj_id`` = sobject_id; ``source_file`` = the CCD-1 file (its siblings differ in the
        CCD digit); ``survey`` = 'galah'; ``ra``, ``dec``, ``snr``, ``redshift``, ``rv``,
        ``z_applied`` from the green CCD 2 (``snr`` = CCD 2's S/N, the one Nandakumar+2022 cut on);
        ``snr_c1``..``snr_c4`` every CCD's S/N; ``n_good`` over the whole row.
    failures : list of (file, reason)
        One per star not stored: a missing CCD (``'GALAH star <id>: missing CCD(s) 2, 4 ...'``,
        listed under its first file), a CCD given twice, an unreadable CCD or one without a good
        pixel in its region (listed under that CCD's file), and a file not named as a GALAH CCD.
    """
    from cannonade.spectra.continuum import normalise_batch
    from cannonade.spectra.readers.fits import read_ahead

    norm_kwargs = dict(norm_kwargs or {})
    slices = _ccd_slices(grid)
    stars = group_galah_stars(files)
    p = grid.size
    flux = np.empty((len(stars), p), dtype=np.float32)
    ivar = np.empty((len(stars), p), dtype=np.float32)
    metas, failures = [], []
    bf, bi, brow = [], [], []

    def flush():
        if not brow:
            return
        rf, ri = np.array(bf), np.array(bi)
        nf, ni = np.full(rf.shape, np.nan), np.zeros(ri.shape)
        for sl in slices:  # each CCD normalised on its own region, as a join='file' row of that CCD is
            if sl.stop > sl.start:
                nf[:, sl], ni[:, sl] = normalise_batch(grid[sl], rf[:, sl], ri[:, sl], method=normalise, **norm_kwargs)
        put_rows(flux, ivar, metas, brow, nf, ni)
        bf.clear()
        bi.clear()
        brow.clear()

    read = []  # read stars, not yet resampled: _RESAMPLE_BATCH at a time (their CCDs resampled together)

    def place():
        for star, res in zip(read, _resample_stars(read, grid, slices)):
            if star[0] is None:  # files that make no star: reported in star order, as every failure
                failures.append(star[2])
                continue
            try:
                f, i, m = _star_row(*star, res, grid, slices)
            except _StarFailure as exc:
                failures.append((str(exc.args[0]), str(exc.args[1])))
                continue
            brow.append(len(metas))
            metas.append(m)
            bf.append(f)
            bi.append(i)
            if len(bf) >= _NORM_BATCH:
                flush()
        read.clear()

    ahead = read_ahead([p for paths in stars for p in paths])  # by a thread, a batch ahead (~400 kB a file)
    for paths in stars:
        stored = dict(next(ahead) for _ in paths)
        try:
            read.append(_read_star(paths, redshifts, stored))
        except _StarFailure as exc:
            read.append((None, [], (str(exc.args[0]), str(exc.args[1]))))
        if len(read) >= _RESAMPLE_BATCH:
            place()
    place()
    flush()
    n = len(metas)
    return flux[:n], ivar[:n], metas, failures


def _write_part(part_path, index, files, flux, ivar, metas, failures, chunk_rows=64, extra_columns=()):
    """One chunk's results -> its own HDF5 part file (atomically), chunked and compressed as the store.

    ``extra_columns`` name float meta columns beyond the store's standard ones (NaN where a
    row lacks them); every part of an ingest has the same columns, even an empty one."""
    import h5py

    n = len(metas)
    columns = store.meta_columns(metas, n)
    for name in extra_columns:
        columns[name] = np.array([m.get(name, math.nan) for m in metas], dtype=np.float64)
    with atomic_path(part_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            store.create_arrays(h5, n, flux.shape[1], chunk_rows=chunk_rows)
            if n:
                h5["flux"][:] = flux
                h5["ivar"][:] = ivar
            store.write_meta(h5.create_group("meta"), columns, n)
            fg = h5.create_group("failures")
            fg.create_dataset("file", data=np.array([f for f, _ in failures], dtype=object), dtype=store.string_dtype())
            fg.create_dataset("reason", data=np.array([r for _, r in failures], dtype=object), dtype=store.string_dtype())
            h5.attrs["chunk"] = index
            h5.attrs["n_files"] = len(files)
            h5.attrs["n_ok"] = n
            h5.attrs["complete"] = 1


def process_chunk(k, part_path, files):
    """The default chunk function of :func:`ingest`: ``files`` -> part file ``part_path``.

    Runs in an ingest worker (whose initializer has set the grid, normalisation,
    redshifts and join mode): :func:`prepare_files` (a row per file) or, for
    ``join='star'``, :func:`prepare_stars` (a row per GALAH star; ``files`` then holds
    whole stars). A custom ``chunk_func`` passed to :func:`ingest` (e.g. to count or
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
        Rows written and failed files (stars for ``join='star'``).
    """
    if not _WORKER:
        raise CannonadeError(f"{part_path}: process_chunk called outside an ingest worker (no grid/settings set)")
    w = _WORKER
    star = w.get("join", "file") == "star"
    prepare = prepare_stars if star else prepare_files
    flux, ivar, metas, failures = prepare(files, w["grid"], w["normalise"], w["redshifts"], w["norm_kwargs"])
    _write_part(part_path, k, files, flux, ivar, metas, failures, w.get("chunk_rows", 64), GALAH_STAR_COLUMNS if star else ())
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


def _ingest_key(files, grid_name, grid, normalise, redshifts, chunk_size, norm_kwargs, join="file"):
    """The fingerprint of an ingest: format, settings, the resolved join mode, grid, redshifts, files.

    ``join='file'`` adds nothing, so the keys of stores written before join modes existed still
    match (their rerun does nothing)."""
    h = hashlib.sha1()
    h.update(f"{STORE_FORMAT}/{STORE_VERSION}|{grid_name}|{normalise}|{chunk_size}|{json.dumps(norm_kwargs, sort_keys=True, default=str)}|".encode())
    if join != "file":
        h.update(f"join={join}|".encode())
    h.update(np.ascontiguousarray(grid, dtype=np.float64).tobytes())
    for k in sorted(redshifts):
        h.update(f"{k}={redshifts[k]!r};".encode())
    h.update(b"|files|")
    for k in range(0, len(files), 65536):  # each path and a newline: the same digest as one update per path
        h.update(("\n".join(files[k : k + 65536]) + "\n").encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _default_error_report(out):
    out = Path(out)
    name = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(name + ".errors.csv")


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
    join="auto",
    scheduler="",
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
        Processes (1 = run in this process); the workers of the dask ``LocalCluster`` with
        ``scheduler='local'``.
    chunk_size : int
        Files per chunk (= per part file, and the memory bound per worker); stars per chunk
        with ``join='star'`` (a star's files always share a chunk).
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
    join : {'auto', 'file', 'star'}
        What a row of the store is. ``'file'``: one input file (a GALAH CCD file gives a row
        whose other CCD regions are empty). ``'star'``: one GALAH star, its four CCD files
        (grouped by the sobject_id of their names, :func:`group_galah_stars`) joined on the
        grid, each CCD in its own region and normalised on its own (:func:`prepare_stars`);
        a star missing a CCD is not stored and goes to the error report (``missing CCD(s)
        2, 4``). ``'auto'`` (default): ``'star'`` on the ``'galah'`` grid when every input
        is named as a GALAH CCD file, else ``'file'`` (:func:`resolve_join`). The store
        records the mode in its ``join`` attribute.
    scheduler : str
        ``''`` (default): a process pool of ``workers`` (in this process for one). ``'local'``: an
        embedded dask ``LocalCluster`` of ``workers`` processes; else the address (or scheduler
        file) of a running dask scheduler (:func:`cannonade.execution.choose_backend`;
        docs/scale.md). The store is the same whichever runs the chunks.

    Returns
    -------
    IngestReport

    Raises
    ------
    ConfigError
        Bad ``normalise``/``chunk_size``/``join``/grid, no input files, a missing ``@list``
        file or redshift catalogue.
    """
    from cannonade.spectra.surveys import common_grid

    t0 = time.perf_counter()
    if normalise not in _NORMALISE:
        raise ConfigError(f"normalise must be 'gaussian', 'chebyshev' or 'none', got {normalise!r}")
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    if join not in JOIN_MODES:
        raise ConfigError(f"join must be one of {', '.join(repr(j) for j in JOIN_MODES)}, got {join!r}")
    workers = validate_workers(workers)
    out = check_output_file(out, "store")
    error_report = Path(error_report) if error_report is not None else _default_error_report(out)
    grid_name = grid if isinstance(grid, str) else "custom"
    grid_arr = common_grid(grid)
    z_map = load_redshift_catalogue(redshifts)
    norm_kwargs = default_norm_kwargs(normalise, grid_name, norm_kwargs)
    files = input_files(inputs)
    if not files:
        raise ConfigError(f"no input files found in {inputs}")
    join = resolve_join(join, grid, files)
    key = _ingest_key(files, grid_name, grid_arr, normalise, z_map, chunk_size, norm_kwargs, join)
    fingerprint = {"format": STORE_FORMAT, "version": STORE_VERSION, "ingest_key": key, "n_files": len(files), "chunk_size": chunk_size}
    if join == "star":  # chunks of whole stars: files in star order, cut at star boundaries
        stars = group_galah_stars(files)
        files = [f for star in stars for f in star]
        bounds = np.concatenate([[0], np.cumsum([len(star) for star in stars])]).astype(np.int64)
        del stars
        fingerprint.update(join=join, n_stars=int(bounds.size - 1))
    else:
        bounds = None
    n_units = len(files) if bounds is None else int(bounds.size - 1)
    n_chunks = (n_units + chunk_size - 1) // chunk_size

    parts_dir = Path(str(out) + ".parts")
    # what a killed ingest of this store left: hidden temporaries of the store, the report, the parts
    stale = remove_temporaries_of(out) + remove_temporaries_of(error_report) + remove_stale_temporaries(parts_dir)
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted ingest (%s%s)", len(stale), stale[0].name,
                 ", ..." if len(stale) > 1 else "")

    def report(n_ok, failures, n_done_before):
        return IngestReport(n_ok, len(failures), failures, out, error_report, n_chunks, n_done_before, time.perf_counter() - t0, join,
                            len(stale))

    n_stored = _finished_store(out, key)
    if n_stored is not None:  # already complete with the same inputs and settings: nothing to do
        return report(n_stored, read_error_report(error_report), n_chunks)

    cm = ChunkedMap(parts_dir, fingerprint, n_chunks, suffix=".h5", is_complete=_part_complete)
    n_done_before = cm.n_done
    chunk_rows = _chunk_rows(chunk_size)
    settings = (grid, normalise, z_map, norm_kwargs, chunk_rows, join)

    def chunk_files(k):
        if bounds is None:
            return files[k * chunk_size : (k + 1) * chunk_size]
        return files[bounds[k * chunk_size] : bounds[min((k + 1) * chunk_size, n_units)]]

    def chunk_units(k):
        return min((k + 1) * chunk_size, n_units) - k * chunk_size

    _map_chunks(cm, chunk_files, chunk_units, n_units, "star" if join == "star" else "spec", workers, settings,
                chunk_func or process_chunk, stop_after, scheduler)
    attrs = {"grid": grid_name, "normalise": normalise, "norm_kwargs": json.dumps(norm_kwargs, sort_keys=True, default=str),
             "ingest_key": key, "join": join}
    n_ok, failures = assemble(out, cm.parts(), grid_arr, attrs, error_report, chunk_rows, workers=workers, scratch_dir=parts_dir)
    cm.cleanup()
    return report(n_ok, failures, n_done_before)


def _map_chunks(cm, chunk_files, chunk_units, total, unit, workers, settings, chunk_func, stop_after, scheduler=""):
    """Run ``chunk_func(k, part, chunk_files(k))`` over the pending chunks of ``cm`` (a process pool
    when workers > 1, a dask cluster with a ``scheduler``); the progress bar counts
    ``chunk_units(k)`` files or stars per chunk."""
    backend, options = choose_backend(scheduler, default="process" if workers > 1 and len(cm.pending()) > 1 else "serial")
    try:
        cm.run(
            chunk_func,
            args=lambda k: (chunk_files(k),),
            backend=backend,
            workers=workers,
            initializer=_init_worker,
            initargs=settings,
            desc="ingest",
            unit=unit,
            total=total,
            weight=chunk_units,
            stop_after=stop_after,
            **options,
        )
    finally:
        _WORKER.clear()  # the serial backend set it in this process
