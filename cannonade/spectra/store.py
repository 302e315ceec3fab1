"""Chunked HDF5 spectra store and ``cannonade ingest``.

Store layout (``format='cannonade-spectra-store'``, ``version=1``)::

    /wavelength          (P,)   f8   common grid, vacuum Angstrom
    /flux                (N, P) f4   chunked by rows
    /ivar                (N, P) f4   chunked by rows; 0 = bad pixel
    /meta/obj_id         (N,)   utf-8 str
    /meta/source_file    (N,)   utf-8 str
    /meta/survey         (N,)   utf-8 str
    /meta/ra, dec, snr, redshift, rv, redshift_err, rv_err, z_applied   (N,) f8
    /meta/starflag, n_good                                               (N,) i8
    attrs: format, version, grid, normalise, ...

``ingest`` turns files / directories / ``@list`` files into a store. Files are
cut into chunks of ``chunk_size`` in input order; a process pool turns each
chunk into its own part file ``<out>.parts/chunk_000012.h5`` (written
atomically), so a rerun after a kill skips the finished chunks. The parts are
then copied one at a time into the final store (atomically) and removed. Memory
is bounded by one chunk per worker, whatever the number of files. Unreadable
files go to an error report CSV (file, reason) beside the store.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cannonade.exceptions import CannonadeError, ConfigError, ShapeError, StoreFormatError
from cannonade.util import atomic_path, progress

__all__ = [
    "STORE_FORMAT",
    "STORE_VERSION",
    "StoreFormatError",
    "SpectraStore",
    "IngestReport",
    "write_store",
    "expand_inputs",
    "load_redshift_catalogue",
    "ingest",
    "cli_ingest",
]

STORE_FORMAT = "cannonade-spectra-store"
STORE_VERSION = 1

STR_COLUMNS = ("obj_id", "source_file", "survey")
F8_COLUMNS = ("ra", "dec", "snr", "redshift", "rv", "redshift_err", "rv_err", "z_applied")
I8_COLUMNS = ("starflag", "n_good")
META_COLUMNS = STR_COLUMNS + F8_COLUMNS + I8_COLUMNS

_ROW_CHUNK = 64  # HDF5 chunk = 64 rows x P pixels (~1 MB for LAMOST)
_NORM_BATCH = 256  # spectra normalised at once inside a chunk (bounds temporaries)


# ---------------------------------------------------------------------------
# writing


def _str_dtype():
    import h5py

    return h5py.string_dtype(encoding="utf-8")


def _as_columns(meta_table, n):
    """Meta (astropy Table, dict of columns or list of dicts) -> dict of numpy columns of length n."""
    if meta_table is None:
        cols = {}
    elif isinstance(meta_table, (list, tuple)):
        names = list(META_COLUMNS)
        cols = {k: [m.get(k) for m in meta_table] for k in names}
    elif hasattr(meta_table, "colnames"):
        cols = {k: np.asarray(meta_table[k]) for k in meta_table.colnames}
    else:
        cols = dict(meta_table)
    out = {}
    for name, values in cols.items():
        if name in STR_COLUMNS:
            arr = np.array(["" if v is None else str(v) for v in values], dtype=object)
        elif name in I8_COLUMNS:
            arr = np.array([0 if v is None or (isinstance(v, float) and not math.isfinite(v)) else int(v) for v in values], dtype=np.int64)
        elif name in F8_COLUMNS:
            arr = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        else:
            arr = np.asarray(values)
            if arr.dtype.kind in "US":
                arr = arr.astype(object)
            elif arr.dtype.kind == "O":
                arr = np.array([str(v) for v in arr], dtype=object)
        if arr.shape[:1] != (n,):
            raise ShapeError(f"meta column {name!r} has {arr.shape[0] if arr.ndim else 0} rows, flux has {n}")
        out[name] = arr
    for name in STR_COLUMNS:
        out.setdefault(name, np.array([""] * n, dtype=object))
    for name in F8_COLUMNS:
        out.setdefault(name, np.full(n, np.nan))
    for name in I8_COLUMNS:
        out.setdefault(name, np.zeros(n, dtype=np.int64))
    return out


def _create_meta(group, columns, n):
    for name, arr in columns.items():
        if arr.dtype == object:
            group.create_dataset(name, shape=(n,), dtype=_str_dtype())
        else:
            group.create_dataset(name, shape=(n,), dtype=arr.dtype)


def _create_arrays(h5, n, p):
    chunks = (max(1, min(_ROW_CHUNK, n)), p) if n > 0 else None
    kw = dict(chunks=chunks) if chunks else {}
    h5.create_dataset("flux", shape=(n, p), dtype="f4", **kw)
    h5.create_dataset("ivar", shape=(n, p), dtype="f4", **kw)


def _set_attrs(h5, attrs):
    for key, value in (attrs or {}).items():
        if value is None:
            continue
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value)
        h5.attrs[key] = value
    h5.attrs["format"] = STORE_FORMAT
    h5.attrs["version"] = STORE_VERSION


def write_store(path, wavelength, flux, ivar, meta_table=None, attrs=None):
    """Write a spectra store from arrays in memory (atomically).

    Parameters
    ----------
    path : str or Path
        Output ``.h5`` path (written through a temporary file + rename).
    wavelength : (n_pixels,) float
    flux, ivar : (n_spectra, n_pixels) float
        Stored as float32; ivar = 0 marks bad pixels.
    meta_table : astropy.table.Table, dict of columns or list of dicts, optional
        Per-spectrum metadata; the standard columns (``obj_id``, ``ra``, ...) are
        typed as in the module docstring, missing ones filled (``''``, NaN, 0),
        extra numeric / string columns kept as given.
    attrs : dict, optional
        Extra file attributes (e.g. ``grid``, ``normalise``); ``format`` and
        ``version`` are always set.

    Returns
    -------
    Path
    """
    import h5py

    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux)
    ivar = np.asarray(ivar)
    if flux.ndim != 2 or flux.shape != ivar.shape or flux.shape[1] != wavelength.size:
        raise ShapeError(f"flux {flux.shape}, ivar {ivar.shape} and wavelength ({wavelength.size},) disagree")
    n, p = flux.shape
    cols = _as_columns(meta_table, n)
    attrs = dict(attrs or {})
    attrs.setdefault("grid", "custom")
    attrs.setdefault("normalise", "unknown")
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("wavelength", data=wavelength)
            _create_arrays(h5, n, p)
            for a in range(0, n, 4096):
                h5["flux"][a : a + 4096] = flux[a : a + 4096].astype(np.float32)
                h5["ivar"][a : a + 4096] = np.where(np.isfinite(ivar[a : a + 4096]), ivar[a : a + 4096], 0).astype(np.float32)
            g = h5.create_group("meta")
            _create_meta(g, cols, n)
            for name, arr in cols.items():
                if n:
                    g[name][:] = arr
            _set_attrs(h5, attrs)
    return path


# ---------------------------------------------------------------------------
# reading


class SpectraStore:
    """Read side of a spectra store (HDF5, opened read-only).

    Parameters
    ----------
    path : str or Path

    Examples
    --------
    >>> with SpectraStore("lamost.h5") as store:          # doctest: +SKIP
    ...     for start, stop, flux, ivar in store.iter_chunks(1000):
    ...         ...
    """

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise StoreFormatError(f"{self.path}: spectra store not found")
        try:
            self._h5 = h5py.File(self.path, "r")
        except Exception as exc:
            raise StoreFormatError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        attrs = self._h5.attrs
        fmt = attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != STORE_FORMAT:
            self.close()
            raise StoreFormatError(f"{self.path}: not a cannonade spectra store (format={fmt!r})")
        if int(attrs.get("version", -1)) > STORE_VERSION:
            self.close()
            raise StoreFormatError(f"{self.path}: store version {attrs.get('version')} is newer than supported ({STORE_VERSION})")
        for name in ("wavelength", "flux", "ivar", "meta"):
            if name not in self._h5:
                self.close()
                raise StoreFormatError(f"{self.path}: store lacks {name!r}")
        self._wavelength = self._h5["wavelength"][:]

    # context manager / cleanup
    def close(self):
        h5 = getattr(self, "_h5", None)
        if h5 is not None:
            h5.close()
            self._h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        return self.n_spectra

    def __repr__(self):
        return f"SpectraStore({str(self.path)!r}, n_spectra={self.n_spectra}, n_pixels={self.n_pixels})"

    @property
    def n_spectra(self):
        return int(self._h5["flux"].shape[0])

    @property
    def n_pixels(self):
        return int(self._wavelength.size)

    @property
    def wavelength(self):
        """(n_pixels,) float64 common grid (a copy)."""
        return self._wavelength.copy()

    @property
    def attrs(self):
        """File attributes as a dict."""
        out = {}
        for k, v in self._h5.attrs.items():
            out[k] = v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
        return out

    def read(self, start=0, stop=None):
        """Rows ``start:stop`` as float64.

        Returns
        -------
        flux, ivar : (stop - start, n_pixels) float64
        """
        n = self.n_spectra
        stop = n if stop is None else min(int(stop), n)
        start = max(0, int(start))
        if start > stop:
            raise ShapeError(f"{self.path}: read({start}, {stop}) with start > stop")
        flux = self._h5["flux"][start:stop].astype(np.float64)
        ivar = self._h5["ivar"][start:stop].astype(np.float64)
        return flux, ivar

    def meta(self, start=0, stop=None):
        """Per-spectrum metadata (rows ``start:stop``) as an astropy Table."""
        from astropy.table import Table

        g = self._h5["meta"]
        stop = self.n_spectra if stop is None else min(int(stop), self.n_spectra)
        cols = {}
        order = [c for c in META_COLUMNS if c in g] + sorted(c for c in g if c not in META_COLUMNS)
        for name in order:
            ds = g[name]
            if ds.dtype.kind == "O" or h5_is_string(ds):
                cols[name] = np.array(ds.asstr()[start:stop], dtype=str) if stop > start else np.array([], dtype=str)
            else:
                cols[name] = ds[start:stop]
        return Table(cols)

    def iter_chunks(self, chunk_size=1000):
        """Yield ``(start, stop, flux, ivar)`` over the store, ``chunk_size`` rows at a time (float64)."""
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, self.n_spectra, chunk_size):
            stop = min(start + chunk_size, self.n_spectra)
            flux, ivar = self.read(start, stop)
            yield start, stop, flux, ivar


def h5_is_string(ds):
    import h5py

    return h5py.check_string_dtype(ds.dtype) is not None


# ---------------------------------------------------------------------------
# ingest


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


_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def expand_inputs(inputs):
    """Expand files, directories (recursively: FITS files only) and ``@list.txt`` files.

    Parameters
    ----------
    inputs : str, Path or sequence of them

    Returns
    -------
    list of str
        In the order given (directory contents sorted), duplicates removed.
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
            listfile = Path(item[1:])
            if not listfile.is_file():
                raise ConfigError(f"list file {listfile} not found")
            with open(listfile, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    p = Path(line)
                    if not p.is_absolute() and not p.exists() and (listfile.parent / p).exists():
                        p = listfile.parent / p
                    add(p)
        elif os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".parts"))
                found.extend(os.path.join(root, f) for f in files if f.lower().endswith(_FITS_SUFFIXES) and not f.startswith("."))
            for f in sorted(found):
                add(f)
        else:
            add(item)  # a missing file is reported as a failure, not fatal
    return out


_ID_COLUMNS = ("obj_id", "id", "designation", "desig", "filename", "obsid", "sobject_id", "apogee_id", "source_file")


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
    """
    if source is None:
        return {}
    if isinstance(source, dict):
        return {str(k).strip(): float(v) for k, v in source.items()}
    from astropy.table import Table

    from cannonade.spectra.readers import rv_to_redshift

    if hasattr(source, "colnames"):
        table = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"redshift catalogue {path} not found")
        try:
            fmt = "ascii.csv" if path.suffix.lower() == ".csv" else None
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
        except Exception as exc:
            raise ConfigError(f"redshift catalogue {path}: unreadable ({exc})") from None
    lower = {c.lower(): c for c in table.colnames}
    zcol = next((lower[c] for c in ("z", "redshift") if c in lower), None)
    if zcol is not None:
        z = np.asarray(table[zcol], dtype=np.float64)
    else:
        rvcol = next((lower[c] for c in ("rv", "vhelio", "rv_com") if c in lower), None)
        if rvcol is None:
            raise ConfigError(f"redshift catalogue {source}: no z/redshift or rv/vhelio column in {table.colnames}")
        z = np.asarray(rv_to_redshift(np.asarray(table[rvcol], dtype=np.float64)), dtype=np.float64)
    idcols = [lower[c] for c in _ID_COLUMNS if c in lower]
    if not idcols:
        raise ConfigError(f"redshift catalogue {source}: no id column (one of {_ID_COLUMNS}) in {table.colnames}")
    out = {}
    for col in idcols:
        for key, value in zip(table[col], z):
            if math.isfinite(value) and value > -9998:
                out[str(key).strip()] = float(value)
    return out


def _redshift_for(meta, redshifts):
    if not redshifts:
        return None
    name = os.path.basename(str(meta.get("source_file", "")))
    for key in (str(meta.get("obj_id", "")), name, name.split(".")[0]):
        if key and key in redshifts:
            return redshifts[key]
    return None


# worker state (set once per worker process by _init_worker)
_WORKER = {}


def _init_worker(grid_name, normalise, redshifts, norm_kwargs):
    from cannonade.spectra.surveys import common_grid

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER.update(
        grid=common_grid(grid_name),
        normalise=normalise,
        redshifts=redshifts or {},
        norm_kwargs=dict(norm_kwargs or {}),
    )


def _prepare_files(files, grid, normalise, redshifts, norm_kwargs):
    """Read, shift and resample files; normalise in batches.

    Returns
    -------
    flux, ivar : (n_ok, P) float32
    metas : list of dict (standard columns only)
    failures : list of (file, reason)
    """
    from cannonade.spectra.readers import read_spectrum
    from cannonade.spectra.preprocessing import doppler_shift, normalise_batch, resample

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
            reason = str(exc)
            if reason.startswith(f"{path}: "):
                reason = reason[len(str(path)) + 2 :]  # the file is its own column
            elif not isinstance(exc, CannonadeError):
                reason = f"{type(exc).__name__}: {reason}"
            failures.append((str(path), reason))
            continue
        row = len(metas)
        m = {k: meta.get(k) for k in STR_COLUMNS + F8_COLUMNS + I8_COLUMNS if k in meta}
        m["z_applied"] = float(z_applied) if z_applied is not None else math.nan
        m["source_file"] = str(path)
        metas.append(m)
        bf.append(f)
        bi.append(i)
        brow.append(row)
        if len(bf) >= _NORM_BATCH:
            flush()
    flush()
    n = len(metas)
    return flux[:n], ivar[:n], metas, failures


def _write_part(part_path, index, files, flux, ivar, metas, failures):
    """One chunk's results -> its own HDF5 part file (atomically)."""
    import h5py

    n = len(metas)
    cols = _as_columns(metas, n)
    with atomic_path(part_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("flux", data=flux)
            h5.create_dataset("ivar", data=ivar)
            g = h5.create_group("meta")
            _create_meta(g, cols, n)
            for name, arr in cols.items():
                if n:
                    g[name][:] = arr
            fg = h5.create_group("failures")
            fg.create_dataset("file", data=np.array([f for f, _ in failures], dtype=object), dtype=_str_dtype())
            fg.create_dataset("reason", data=np.array([r for _, r in failures], dtype=object), dtype=_str_dtype())
            h5.attrs["chunk"] = index
            h5.attrs["n_files"] = len(files)
            h5.attrs["n_ok"] = n
            h5.attrs["complete"] = 1


def _process_chunk(index, files, part_path):
    """Turn one chunk of files into its part file; returns (index, n_ok, n_failed)."""
    w = _WORKER
    flux, ivar, metas, failures = _prepare_files(files, w["grid"], w["normalise"], w["redshifts"], w["norm_kwargs"])
    _write_part(part_path, index, files, flux, ivar, metas, failures)
    return index, len(metas), len(failures)


def _run_chunk(index, files, part_path):
    # looked up at call time, so tests can wrap _process_chunk (also in forked workers)
    return sys.modules[__name__]._process_chunk(index, files, part_path)


def _part_ok(part_path, n_files):
    """A finished part: readable, complete, and for the same number of files."""
    import h5py

    try:
        with h5py.File(part_path, "r") as h5:
            return int(h5.attrs.get("complete", 0)) == 1 and int(h5.attrs.get("n_files", -1)) == n_files
    except Exception:
        return False


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


def _mp_context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


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
):
    """Read survey spectra into a chunked HDF5 store on a common grid.

    Parameters
    ----------
    inputs : str, Path or sequence
        FITS files, directories (searched recursively for FITS files) or
        ``@list.txt`` files (one path per line).
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

    Returns
    -------
    IngestReport
    """
    from cannonade.spectra.surveys import common_grid

    t0 = time.perf_counter()
    if normalise not in ("gaussian", "chebyshev", "none"):
        raise ConfigError(f"normalise must be 'gaussian', 'chebyshev' or 'none', got {normalise!r}")
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    workers = max(1, int(workers))
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

    # already complete with the same inputs and settings: nothing to do
    if out.is_file():
        try:
            with SpectraStore(out) as st:
                if st.attrs.get("ingest_key") == key:
                    failures = _read_failures_csv(error_report)
                    return IngestReport(st.n_spectra, len(failures), failures, out, error_report, n_chunks, n_chunks, time.perf_counter() - t0)
        except StoreFormatError:
            pass

    parts_dir = Path(str(out) + ".parts")
    state_path = parts_dir / "state.json"
    state = {"format": STORE_FORMAT, "version": STORE_VERSION, "ingest_key": key, "n_files": len(files), "chunk_size": chunk_size}
    if parts_dir.is_dir():
        try:
            old = json.loads(state_path.read_text())
        except Exception:
            old = None
        if old != state:  # different inputs or settings: old parts are not ours to reuse
            shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not state_path.is_file():
        with atomic_path(state_path) as tmp:
            tmp.write_text(json.dumps(state, indent=1))

    def chunk_files(k):
        return files[k * chunk_size : (k + 1) * chunk_size]

    def part(k):
        return parts_dir / f"chunk_{k:06d}.h5"

    todo = [k for k in range(n_chunks) if not _part_ok(part(k), len(chunk_files(k)))]
    n_done_before = n_chunks - len(todo)

    if todo:
        bar = None
        if workers == 1 or len(todo) == 1:
            _init_worker(grid, normalise, z_map, norm_kwargs)
            bar = progress(total=len(files), desc="ingest", unit="spec", initial=n_done_before * chunk_size)
            try:
                for k in todo:
                    _run_chunk(k, chunk_files(k), str(part(k)))
                    bar.update(len(chunk_files(k)))
            finally:
                bar.close()
        else:
            ctx = _mp_context()
            with ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_init_worker, initargs=(grid, normalise, z_map, norm_kwargs)
            ) as pool:
                bar = progress(total=len(files), desc="ingest", unit="spec", initial=min(len(files), n_done_before * chunk_size))
                try:
                    pending = {}
                    queue = list(todo)
                    while queue or pending:
                        while queue and len(pending) < 2 * workers:  # bounded in-flight work
                            k = queue.pop(0)
                            pending[pool.submit(_run_chunk, k, chunk_files(k), str(part(k)))] = k
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            k = pending.pop(fut)
                            fut.result()  # a crashed chunk stops the run; finished parts stay for the rerun
                            bar.update(len(chunk_files(k)))
                except BaseException:
                    # drop queued chunks, let running ones finish their part files (kept for the rerun)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                finally:
                    bar.close()

    n_ok, failures = _assemble(out, [part(k) for k in range(n_chunks)], grid_arr, grid_name, normalise, key, norm_kwargs, error_report)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return IngestReport(n_ok, len(failures), failures, out, error_report, n_chunks, n_done_before, time.perf_counter() - t0)


def _assemble(out, parts, grid, grid_name, normalise, key, norm_kwargs, error_report):
    """Copy the part files, in order, into the final store (atomically); write the error report."""
    import h5py

    from cannonade._version import __version__

    counts = []
    for p in parts:
        with h5py.File(p, "r") as h5:
            counts.append(int(h5.attrs["n_ok"]))
    n = int(sum(counts))
    P = grid.size
    failures = []
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as dst:
            dst.create_dataset("wavelength", data=grid)
            _create_arrays(dst, n, P)
            g = dst.create_group("meta")
            created = False
            row = 0
            for p, c in zip(parts, counts):
                with h5py.File(p, "r") as src:
                    if not created:
                        for name in src["meta"]:
                            ds = src["meta"][name]
                            g.create_dataset(name, shape=(n,), dtype=_str_dtype() if h5_is_string(ds) else ds.dtype)
                        created = True
                    if c:
                        dst["flux"][row : row + c] = src["flux"][:]
                        dst["ivar"][row : row + c] = src["ivar"][:]
                        for name in g:
                            if name in src["meta"]:
                                ds = src["meta"][name]
                                g[name][row : row + c] = ds.asstr()[:] if h5_is_string(ds) else ds[:]
                    files = src["failures/file"].asstr()[:]
                    reasons = src["failures/reason"].asstr()[:]
                    failures.extend(zip(files.tolist(), reasons.tolist()))
                row += c
            if not created:
                _create_meta(g, _as_columns([], 0), 0)
            _set_attrs(
                dst,
                {
                    "grid": grid_name,
                    "normalise": normalise,
                    "norm_kwargs": json.dumps(norm_kwargs, sort_keys=True, default=str),
                    "ingest_key": key,
                    "n_failed": len(failures),
                    "cannonade_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
    with atomic_path(error_report) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "reason"])
            w.writerows(failures)
    return n, failures


def cli_ingest(args):
    """``cannonade ingest``: build a store and print a summary. Returns the exit code."""
    report = ingest(
        args.inputs,
        args.out,
        grid=args.grid,
        normalise=args.normalise,
        redshifts=args.redshift_catalogue,
        workers=args.workers,
        chunk_size=args.chunk_size,
    )
    rate = (report.n_ok + report.n_failed) / report.seconds if report.seconds > 0 else float("nan")
    print(f"ingested {report.n_ok} spectra into {report.path} ({report.n_failed} failed, {rate:.0f} files/s)")
    if report.n_chunks_done_before:
        print(f"resumed: {report.n_chunks_done_before} of {report.n_chunks} chunks were already done")
    if report.n_failed:
        print(f"error report: {report.error_report}")
        for f, reason in report.failures[:5]:
            print(f"  {f}: {reason}")
        if report.n_failed > 5:
            print(f"  ... and {report.n_failed - 5} more")
    return 0 if report.n_ok > 0 else 1
