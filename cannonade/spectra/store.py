"""Chunked HDF5 spectra store: the format, its reader and an in-memory writer.

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

:class:`SpectraStore` reads a store; :func:`write_store` writes one from arrays in
memory. Building a store from survey files (``cannonade ingest``) lives in
:mod:`cannonade.spectra.ingest`, which writes through the building blocks here
(:func:`meta_columns`, :func:`create_arrays`, :func:`create_meta`,
:func:`set_store_attrs`), so the format is defined in this module only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cannonade.exceptions import ConfigError, ShapeError, StoreFormatError
from cannonade.util import atomic_path

__all__ = [
    "STORE_FORMAT",
    "STORE_VERSION",
    "StoreFormatError",
    "SpectraStore",
    "write_store",
    "META_COLUMNS",
    "STR_COLUMNS",
    "F8_COLUMNS",
    "I8_COLUMNS",
    # building blocks for writers of the format (cannonade.spectra.ingest)
    "meta_columns",
    "create_arrays",
    "create_meta",
    "write_meta",
    "set_store_attrs",
    "string_dtype",
    "h5_is_string",
]

STORE_FORMAT = "cannonade-spectra-store"
STORE_VERSION = 1

STR_COLUMNS = ("obj_id", "source_file", "survey")
F8_COLUMNS = ("ra", "dec", "snr", "redshift", "rv", "redshift_err", "rv_err", "z_applied")
I8_COLUMNS = ("starflag", "n_good")
META_COLUMNS = STR_COLUMNS + F8_COLUMNS + I8_COLUMNS

_ROW_CHUNK = 64  # HDF5 chunk = 64 rows x P pixels (~1 MB for LAMOST)


# ---------------------------------------------------------------------------
# writing


def string_dtype():
    """The HDF5 variable-length UTF-8 string dtype of the text columns."""
    import h5py

    return h5py.string_dtype(encoding="utf-8")


def meta_columns(meta_table, n):
    """Per-spectrum metadata as typed numpy columns of the store.

    Parameters
    ----------
    meta_table : astropy Table, dict of columns, list of dicts, or None
    n : int
        Number of spectra (rows).

    Returns
    -------
    dict of str -> (n,) ndarray
        The standard columns typed as in the module docstring (text as ``object``),
        missing ones filled (``''``, NaN, 0); extra columns kept.

    Raises
    ------
    ShapeError
        A column whose length is not ``n`` (names it).
    """
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


def create_meta(group, columns, n):
    """Create (empty) ``(n,)`` datasets in the HDF5 ``group`` for :func:`meta_columns` output."""
    for name, arr in columns.items():
        if arr.dtype == object:
            group.create_dataset(name, shape=(n,), dtype=string_dtype())
        else:
            group.create_dataset(name, shape=(n,), dtype=arr.dtype)


def create_arrays(h5, n, p):
    """Create the ``(n, p)`` float32 ``flux`` and ``ivar`` datasets, chunked by 64 rows."""
    chunks = (max(1, min(_ROW_CHUNK, n)), p) if n > 0 else None
    kw = dict(chunks=chunks) if chunks else {}
    h5.create_dataset("flux", shape=(n, p), dtype="f4", **kw)
    h5.create_dataset("ivar", shape=(n, p), dtype="f4", **kw)


def write_meta(group, columns, n):
    """Create and fill the ``(n,)`` metadata datasets of ``columns`` (:func:`meta_columns`) in ``group``."""
    create_meta(group, columns, n)
    for name, arr in columns.items():
        if n:
            group[name][:] = arr


def set_store_attrs(h5, attrs):
    """Set file attributes (dicts/lists as JSON; None skipped) plus ``format`` and ``version``."""
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
    cols = meta_columns(meta_table, n)
    attrs = dict(attrs or {})
    attrs.setdefault("grid", "custom")
    attrs.setdefault("normalise", "unknown")
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("wavelength", data=wavelength)
            create_arrays(h5, n, p)
            for a in range(0, n, 4096):
                h5["flux"][a : a + 4096] = flux[a : a + 4096].astype(np.float32)
                h5["ivar"][a : a + 4096] = np.where(np.isfinite(ivar[a : a + 4096]), ivar[a : a + 4096], 0).astype(np.float32)
            write_meta(h5.create_group("meta"), cols, n)
            set_store_attrs(h5, attrs)
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

    def read_rows(self, rows, block=2000):
        """Arbitrary rows, in the order given, read as sorted contiguous blocks of at most ``block`` rows.

        Parameters
        ----------
        rows : (n,) int
            Store rows (repeats allowed).

        Returns
        -------
        flux, ivar : (n, n_pixels) float64

        Raises
        ------
        ShapeError
            A row outside the store (names it).
        """
        rows = np.asarray(rows, dtype=int)
        bad = (rows < 0) | (rows >= self.n_spectra)
        if bad.any():
            raise ShapeError(f"{self.path}: row {int(rows[bad][0])} (position {int(np.flatnonzero(bad)[0])}) is outside the store of {self.n_spectra} spectra")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        flux = np.empty((len(rows), self.n_pixels))
        ivar = np.empty_like(flux)
        i = 0
        while i < len(srt):
            j = int(np.searchsorted(srt, srt[i] + block, side="left"))  # rows [srt[i], srt[i] + block)
            f, iv = self.read(int(srt[i]), int(srt[j - 1]) + 1)
            flux[order[i:j]] = f[srt[i:j] - srt[i]]
            ivar[order[i:j]] = iv[srt[i:j] - srt[i]]
            i = j
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
    """True if the HDF5 dataset ``ds`` holds strings."""
    import h5py

    return h5py.check_string_dtype(ds.dtype) is not None
