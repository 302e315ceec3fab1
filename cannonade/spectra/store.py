"""Chunked HDF5 spectra store: the format, its reader and an in-memory writer.

Store layout (``format='cannonade-spectra-store'``, ``version=1``)::

    /wavelength          (P,)   f8   common grid, vacuum Angstrom
    /flux                (N, P) f4   chunked by rows, compressed (below)
    /ivar                (N, P) f4   chunked by rows, compressed; 0 = bad pixel
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

Compression. ``flux`` and ``ivar`` are written with lossless HDF5 filters,
:data:`DEFAULT_COMPRESSION` = ``'blosc-lz4'`` (Blosc: a byte shuffle, then LZ4; HDF5 filter
32001 from the ``hdf5plugin`` package, a dependency, registered on first use by
:func:`register_filters`). HDF5 filters are transparent to readers: stores written before
compression (plain chunked datasets) or with the built-in ``'shuffle+lzf'`` read as they
always did, and :attr:`SpectraStore.compression` says which filters a store has. Measured
by ``benchmarks/bench_store.py`` (reads from the page cache, best of 5-7; 2 cores)::

    3000-star mock ingest (3375 LAMOST spectra x 3900 pixels, 64-row chunks), loaded machine:
    option          size      write   sequential read      read_rows (337 random rows)
    none            106.8 MB  0.75 s  46 400 spectra/s     0.085 s
    gzip1            0.84 x   3.97 s   5 300 (0.11 x)      0.62 s (0.14 x)
    shuffle+gzip1    0.68 x   3.19 s   7 100 (0.15 x)      0.46 s (0.18 x)
    shuffle+gzip4    0.67 x   3.46 s   6 700 (0.14 x)      0.56 s (0.15 x)
    lzf              0.98 x   2.05 s  10 800 (0.23 x)      0.35 s (0.25 x)
    shuffle+lzf      0.73 x   1.82 s   8 800 (0.19 x)      0.41 s (0.21 x)

    tutorial store (2253 spectra), idle machine, 2026-11-30:
    none            72.5 MB   0.35 s  47 300 spectra/s     0.049 s
    shuffle+lzf      0.72 x   1.20 s   7 600 (0.16 x)      0.300 s (0.16 x)
    blosc-lz4        0.72 x   0.35 s  37 600 (0.80 x)      0.064 s (0.77 x)
    blosc-lz4, BLOSC_NTHREADS=2       43 400 (0.82 x)      0.053 s (0.87 x)

The float32 noise of normalised spectra leaves little to compress: the shuffle is what
gains (it groups the sign/exponent bytes), 28 % smaller. Blosc's LZ4 decodes at memory-copy
speed, about 5x faster than LZF at the same size: reads keep 80-87 % of the throughput of an
uncompressed store read from the page cache (the issue asked for 90 %; a memory copy is hard
to beat), and from a cold disk the smaller file reads faster. Writes cost nothing extra.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cannonade.exceptions import ColumnError, ConfigError, ShapeError, StoreFormatError
from cannonade.util import atomic_path

__all__ = [
    "STORE_FORMAT",
    "STORE_VERSION",
    "StoreFormatError",
    "SpectraStore",
    "write_store",
    "META_COLUMNS",
    "STR_COLUMNS",
    "COMPRESSION_OPTIONS",
    "DEFAULT_COMPRESSION",
    "compression_filters",
    "register_filters",
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
_CHUNK_CACHE = 16 << 20  # bytes of HDF5 chunk cache per dataset when reading (a chunk read twice is decoded once)
#: the most pixels a store's grid may have (a survey grid has thousands; the limit bounds what
#: opening a store reads before anything else is checked)
MAX_PIXELS = 1 << 22

#: The lossless HDF5 filters a store's ``flux`` and ``ivar`` can be written with (h5py keyword
#: arguments by name; measured in the module docstring and by ``benchmarks/bench_store.py``).
COMPRESSION_OPTIONS = {
    "none": {},
    "gzip1": {"compression": "gzip", "compression_opts": 1},
    "shuffle+gzip1": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
    "shuffle+gzip4": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
    "lzf": {"compression": "lzf"},
    "shuffle+lzf": {"compression": "lzf", "shuffle": True},
    # Blosc (HDF5 filter 32001, from the hdf5plugin package): LZ4 after a byte shuffle, decoded
    # several times faster than LZF at the same size
    "blosc-lz4": {"plugin": "blosc", "cname": "lz4", "clevel": 5},
}
#: What every writer of the format uses unless told otherwise.
DEFAULT_COMPRESSION = "blosc-lz4"
#: HDF5 id of the Blosc filter
BLOSC_FILTER = 32001


def register_filters():
    """Make the plugin filters (Blosc) known to HDF5 in this process; True when available.

    Importing ``hdf5plugin`` registers them; it is done here, on first use, not at import.
    """
    try:
        import hdf5plugin  # noqa: F401  (registers the filters)
    except ImportError:  # pragma: no cover - hdf5plugin is a dependency
        return False
    return True


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


def compression_filters(compression=None):
    """The h5py keyword arguments of a compression option.

    Parameters
    ----------
    compression : str, optional
        A key of :data:`COMPRESSION_OPTIONS`; None = :data:`DEFAULT_COMPRESSION`.

    Returns
    -------
    dict

    Raises
    ------
    ConfigError
        An unknown option (lists the known ones).
    """
    name = DEFAULT_COMPRESSION if compression is None else str(compression)
    if name not in COMPRESSION_OPTIONS:
        raise ConfigError(f"unknown store compression {name!r}; choose one of {list(COMPRESSION_OPTIONS)}")
    kw = dict(COMPRESSION_OPTIONS[name])
    if kw.pop("plugin", None) == "blosc":
        if not register_filters():
            raise ConfigError(f"store compression {name!r} needs the hdf5plugin package (pip install hdf5plugin)")
        import hdf5plugin

        return dict(hdf5plugin.Blosc(cname=kw["cname"], clevel=kw["clevel"], shuffle=hdf5plugin.Blosc.SHUFFLE))
    return kw


def create_arrays(h5, n, p, compression=None, chunk_rows=_ROW_CHUNK):
    """Create the ``(n, p)`` float32 ``flux`` and ``ivar`` datasets, chunked by rows.

    Parameters
    ----------
    h5 : h5py.File or Group
    n, p : int
        Spectra and pixels.
    compression : str, optional
        A key of :data:`COMPRESSION_OPTIONS` (default :data:`DEFAULT_COMPRESSION`); the
        filters are lossless, so values read back bit for bit.
    chunk_rows : int
        Rows per HDF5 chunk (default 64, ~1 MB for LAMOST; at most ``n``).
    """
    filters = compression_filters(compression)
    chunks = (max(1, min(int(chunk_rows), n)), p) if n > 0 and p > 0 else None
    kw = dict(chunks=chunks, **filters) if chunks else {}  # an empty dataset cannot be chunked or filtered
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


def write_store(path, wavelength, flux, ivar, meta_table=None, attrs=None, compression=None):
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
    compression : str, optional
        A key of :data:`COMPRESSION_OPTIONS` (default :data:`DEFAULT_COMPRESSION`).

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
    compression_filters(compression)  # an unknown option fails before anything is written
    cols = meta_columns(meta_table, n)
    attrs = dict(attrs or {})
    attrs.setdefault("grid", "custom")
    attrs.setdefault("normalise", "unknown")
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("wavelength", data=wavelength)
            create_arrays(h5, n, p, compression=compression)
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
            register_filters()  # a Blosc-compressed store decodes through the plugin
            self._h5 = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE)
        except Exception as exc:
            raise StoreFormatError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        attrs = self._h5.attrs
        fmt = attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != STORE_FORMAT:
            self.close()
            raise StoreFormatError(f"{self.path}: not a cannonade spectra store (format={fmt!r})")
        version = attrs.get("version", -1)
        try:
            version = int(version)
        except (TypeError, ValueError):
            self.close()
            raise StoreFormatError(f"{self.path}: store version {version!r} is not a number") from None
        if version > STORE_VERSION:
            self.close()
            raise StoreFormatError(f"{self.path}: store version {attrs.get('version')} is newer than supported ({STORE_VERSION})")
        for name in ("wavelength", "flux", "ivar", "meta"):
            if name not in self._h5:
                self.close()
                raise StoreFormatError(f"{self.path}: store lacks {name!r}")
        try:
            self._check_layout()
        except BaseException:
            self.close()
            raise
        self._wavelength = self._h5["wavelength"][:]

    def _check_layout(self):
        """StoreFormatError naming the first dataset of another shape or dtype than the format's,
        linked from another file, or declaring more data than the file stores; nothing is read."""
        import h5py

        h5, path = self._h5, self.path

        def dataset(name):
            link = h5.get(name, getlink=True)
            obj = h5.get(name)
            if not isinstance(link, h5py.HardLink) or not isinstance(obj, h5py.Dataset):
                raise StoreFormatError(f"{path}: {name!r} is not a dataset of this file ({type(link).__name__})")
            if obj.is_virtual or obj.external:
                raise StoreFormatError(f"{path}: {name!r} keeps its data in other files; a store holds its own")
            checked.append((name, obj))
            return obj

        def stored(name, obj):
            if obj.chunks is None:
                held, declared = obj.id.get_storage_size(), obj.size * obj.dtype.itemsize
                complete = held >= declared or obj.id.get_create_plist().get_layout() == h5py.h5d.COMPACT
            else:  # every chunk written: unwritten ones would read as fill values, from no data at all
                held = obj.id.get_num_chunks()
                declared = math.prod(-(-n // c) for n, c in zip(obj.shape, obj.chunks))
                complete = held == declared
            if not complete:
                unit = "bytes" if obj.chunks is None else "chunks"
                raise StoreFormatError(f"{path}: {name!r} declares shape {obj.shape} ({declared} {unit}) but the file "
                                       f"stores {held} {unit} of it (truncated or crafted)")

        checked = []

        wl = dataset("wavelength")
        if wl.ndim != 1 or wl.dtype.kind != "f" or not 1 <= wl.shape[0] <= MAX_PIXELS:
            raise StoreFormatError(f"{path}: 'wavelength' is {wl.shape} {wl.dtype}; expected (n_pixels,) float, "
                                   f"1 to {MAX_PIXELS} pixels")
        P = wl.shape[0]
        flux, ivar = dataset("flux"), dataset("ivar")
        for name, ds in (("flux", flux), ("ivar", ivar)):
            if ds.ndim != 2 or ds.dtype.kind != "f" or ds.shape[1] != P:
                raise StoreFormatError(f"{path}: {name!r} is {ds.shape} {ds.dtype}; expected (n_spectra, {P}) float "
                                       f"({P} pixels: the wavelength grid's)")
        if ivar.shape != flux.shape:
            raise StoreFormatError(f"{path}: 'ivar' is {ivar.shape} but 'flux' is {flux.shape}")
        N = flux.shape[0]
        if not isinstance(h5.get("meta"), h5py.Group):
            raise StoreFormatError(f"{path}: 'meta' is not a group")
        kinds = {**{c: "string" for c in STR_COLUMNS}, **{c: "f" for c in F8_COLUMNS}, **{c: "iu" for c in I8_COLUMNS}}
        for name in h5["meta"]:
            ds = dataset(f"meta/{name}")
            if ds.ndim < 1 or ds.shape[0] != N:
                raise StoreFormatError(f"{path}: 'meta/{name}' has shape {ds.shape}; expected ({N},), one value per spectrum")
            kind = kinds.get(name)
            if kind is not None and ((kind == "string") != h5_is_string(ds) or (kind != "string" and ds.dtype.kind not in kind)):
                want = {"string": "strings", "f": "float", "iu": "integers"}[kind]
                raise StoreFormatError(f"{path}: 'meta/{name}' has dtype {ds.dtype}; expected {want}")
        for name, ds in checked:  # shapes and dtypes fine: is the data they declare in the file?
            stored(name, ds)

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
    def compression(self):
        """The filters of ``flux`` as a :data:`COMPRESSION_OPTIONS` name (``'none'`` for an
        uncompressed store, e.g. one written before compression; another combination as
        ``'<filter>[+shuffle]'``)."""
        ds = self._h5["flux"]
        plist = ds.id.get_create_plist()
        if any(plist.get_filter(i)[0] == BLOSC_FILTER for i in range(plist.get_nfilters())):
            return "blosc-lz4"
        found = {"compression": ds.compression, "compression_opts": ds.compression_opts, "shuffle": bool(ds.shuffle)}
        for name, kw in COMPRESSION_OPTIONS.items():
            want = {"compression": kw.get("compression"), "compression_opts": kw.get("compression_opts"), "shuffle": kw.get("shuffle", False)}
            if want == found:
                return name
        return f"{ds.compression}{'' if ds.compression_opts is None else ds.compression_opts}{'+shuffle' if ds.shuffle else ''}"

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

    def read(self, start=0, stop=None, dtype=np.float64):
        """Rows ``start:stop`` as float64 (or ``dtype``).

        ``dtype=np.float32`` returns the stored values as they are, without a float64 copy
        (``CannonModel.infer`` reads float32 spectra as they are, with the same results).

        Returns
        -------
        flux, ivar : (stop - start, n_pixels) float64 (or ``dtype``)
        """
        n = self.n_spectra
        stop = n if stop is None else min(int(stop), n)
        start = max(0, int(start))
        if start > stop:
            raise ShapeError(f"{self.path}: read({start}, {stop}) with start > stop")
        flux = self._h5["flux"][start:stop].astype(dtype, copy=False)
        ivar = self._h5["ivar"][start:stop].astype(dtype, copy=False)
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

    def meta(self, start=0, stop=None, columns=None):
        """Per-spectrum metadata (rows ``start:stop``; only ``columns`` when given) as an astropy Table.

        Raises
        ------
        ColumnError
            A column in ``columns`` that the store does not have (names it and the store).
        """
        from astropy.table import Table

        g = self._h5["meta"]
        stop = self.n_spectra if stop is None else min(int(stop), self.n_spectra)
        cols = {}
        order = [c for c in META_COLUMNS if c in g] + sorted(c for c in g if c not in META_COLUMNS)
        if columns is not None:
            missing = [c for c in columns if c not in g]
            if missing:
                raise ColumnError(f"{self.path}: no metadata column {missing[0]!r} (it has {', '.join(order)})")
            order = list(columns)
        for name in order:
            cols[name] = self._read_column(g[name], start, stop)
        return Table(cols)

    def column(self, name, start=0, stop=None):
        """One metadata column (rows ``start:stop``) as an array: ``str`` for the text columns.

        Parameters
        ----------
        name : str
            E.g. ``'obj_id'``.

        Returns
        -------
        (n,) ndarray

        Raises
        ------
        ColumnError
            The store has no column ``name`` (names it and the store).
        """
        g = self._h5["meta"]
        if name not in g:
            raise ColumnError(f"{self.path}: no metadata column {name!r} (it has {', '.join(sorted(g))})")
        stop = self.n_spectra if stop is None else min(int(stop), self.n_spectra)
        return self._read_column(g[name], start, stop)

    @staticmethod
    def _read_column(ds, start, stop):
        if ds.dtype.kind == "O" or h5_is_string(ds):
            return np.array(ds.asstr()[start:stop], dtype=str) if stop > start else np.array([], dtype=str)
        return ds[start:stop]

    def unique(self, column, block=100_000):
        """The distinct values of one metadata column, sorted, read ``block`` rows at a time (a
        survey's store: never the whole column, or every column, at once).

        Raises
        ------
        ColumnError
            The store has no such column (names it and the store).
        """
        values = set()
        for start in range(0, self.n_spectra, int(block)):
            values.update(np.unique(np.asarray(self.meta(start, start + int(block), columns=[column])[column])).tolist())
        return sorted(values)

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
