"""Fast, deterministic FITS writers for the mock surveys.

Spectrum files are written by hand (80-character cards, big-endian data,
2880-byte blocks; FITS standard 4.0) rather than through astropy, because a
survey of millions of spectra must be written at hundreds of files per second
and byte-for-byte reproducibly (no time stamps, no checksums of the moment).
Astropy reads every file back (see ``tests/simulate/test_simulate.py``).

A name ending in ``.gz`` is written gzip-compressed (as real LAMOST ships ``.fits.gz``;
every reader of the package, astropy and ``gunzip`` read it): one gzip member, no name and
a zero time stamp in its header, so the same spectrum gives the same bytes. The deflate
stream uses zlib's run-length strategy (:data:`GZIP_STRATEGY`): the mock spectra are
noise-dominated floats, whose only redundancy is runs (zero mask rows and extensions, repeated
exponent bytes); it compresses LAMOST files as well as the default strategy (50 % saved) and
GALAH files nearly so (48 % instead of 52 %) in half the time (``docs/simulate.md``).

Catalogues are streamed: :class:`FitsTableWriter` spools rows to a temporary
file chunk by chunk and writes the header (which needs the final row count)
when closed, so memory stays bounded for any number of rows.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from cannonade.exceptions import SimulationWriteError
from cannonade.util import atomic_path

__all__ = ["card", "fits_image_bytes", "gzip_bytes", "write_fits_images", "FitsTableWriter", "SimulationWriteError",
           "GZIP_LEVEL", "GZIP_STRATEGY"]

BLOCK = 2880
GZIP_LEVEL = 1  # deflate level of the .gz spectrum files (with Z_RLE only the run-length matcher runs)
GZIP_STRATEGY = zlib.Z_RLE  # measured in docs/simulate.md: as small as the default strategy on LAMOST, 2x faster


def _fmt_value(value):
    if isinstance(value, (bool, np.bool_)):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):>20d}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not np.isfinite(v):
            raise ValueError(f"non-finite header value {v}")
        s = f"{v:.15G}"
        if "." not in s and "E" not in s:
            s += "."
        if len(s) > 20:
            s = f"{v:.12E}"
        return f"{s:>20}"
    s = str(value).replace("'", "''")
    return f"'{s:<8}'".ljust(20)


def card(key, value=None, comment=""):
    """One 80-character FITS header card (``COMMENT``/``HISTORY`` take the text as value)."""
    key = str(key).upper()
    if key in ("COMMENT", "HISTORY", ""):
        return f"{key:<8}{str(value or '')}"[:80].ljust(80)
    text = f"{key:<8}= {_fmt_value(value)}"
    if comment:
        text += f" / {comment}"
    if len(text) > 80 and not isinstance(value, str):
        text = text[:80]
    if len(text) > 80:
        raise ValueError(f"header card {key} too long: {text!r}")
    return text.ljust(80)


def _header_bytes(cards):
    raw = "".join(cards) + "END".ljust(80)
    pad = (-len(raw)) % BLOCK
    return (raw + " " * pad).encode("ascii")


def _data_bytes(arr):
    raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder(">")).tobytes()
    return raw + b"\0" * ((-len(raw)) % BLOCK)


_BITPIX = {np.dtype("float64"): -64, np.dtype("float32"): -32, np.dtype("int16"): 16, np.dtype("int32"): 32,
           np.dtype("int64"): 64, np.dtype("uint8"): 8}


def _image_cards(data, primary, extname=None):
    if data is None:
        cards = [card("SIMPLE", True, "conforms to FITS standard"), card("BITPIX", 8), card("NAXIS", 0)]
        return cards + [card("EXTEND", True)]
    bitpix = _BITPIX[np.dtype(data.dtype).newbyteorder("=")]
    cards = [card("SIMPLE", True, "conforms to FITS standard")] if primary else [card("XTENSION", "IMAGE", "Image extension")]
    cards += [card("BITPIX", bitpix), card("NAXIS", data.ndim)]
    cards += [card(f"NAXIS{i + 1}", n) for i, n in enumerate(data.shape[::-1])]
    if primary:
        cards.append(card("EXTEND", True))
    else:
        cards += [card("PCOUNT", 0), card("GCOUNT", 1)]
        if extname:
            cards.append(card("EXTNAME", extname, "Extension name"))
    return cards


def fits_image_bytes(hdus):
    """The bytes of a FITS file of image HDUs (a list of blocks, header and data of each HDU).

    Parameters
    ----------
    hdus : list of (data, cards, extname)
        ``data``: ndarray (float32/64, int16/32/64) or None (empty primary);
        ``cards``: list of strings from :func:`card` (structural keywords are
        added automatically); ``extname``: str or None (ignored for the primary).

    Returns
    -------
    list of bytes
    """
    chunks = []
    for i, (data, cards, extname) in enumerate(hdus):
        data = None if data is None else np.asarray(data)
        chunks.append(_header_bytes(_image_cards(data, i == 0, extname) + list(cards)))
        if data is not None and data.size:
            chunks.append(_data_bytes(data))
    return chunks


def gzip_bytes(chunks, level=GZIP_LEVEL, strategy=GZIP_STRATEGY):
    """One deterministic gzip member of the concatenated ``chunks`` (no name, time stamp 0).

    Parameters
    ----------
    chunks : bytes or list of bytes
    level : int
        Deflate level (1 fastest ... 9 smallest).
    strategy : int
        zlib strategy (``zlib.Z_RLE``, ``zlib.Z_DEFAULT_STRATEGY``, ...).

    Returns
    -------
    bytes
        What ``gzip.decompress`` turns back into ``b"".join(chunks)``.
    """
    if isinstance(chunks, (bytes, bytearray)):
        chunks = [chunks]
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, strategy)  # raw deflate; the gzip frame is ours
    crc, size = 0, 0
    # header: magic, deflate, no flags, mtime 0, extra flags (4 = fastest, 2 = best), OS 255 (unknown)
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([4 if level <= 1 else (2 if level >= 9 else 0)]) + b"\xff"]
    for c in chunks:
        crc = zlib.crc32(c, crc)
        size += len(c)
        out.append(comp.compress(c))
    out.append(comp.flush())
    out.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(out)


def write_fits_images(path, hdus):
    """Write a FITS file of image HDUs atomically (gzip-compressed when ``path`` ends in ``.gz``).

    Parameters
    ----------
    path : str or Path
    hdus : list of (data, cards, extname)
        As :func:`fits_image_bytes`.

    Raises
    ------
    SimulationWriteError
        The file cannot be written (names it).
    """
    chunks = fits_image_bytes(hdus)
    data = gzip_bytes(chunks) if str(path).endswith(".gz") else b"".join(chunks)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise SimulationWriteError(f"cannot write {path}: {exc}") from exc


class FitsTableWriter:
    """Stream rows into a FITS binary table (primary HDU empty, table in HDU 1).

    Parameters
    ----------
    path : str or Path
    columns : list of (name, kind, width)
        ``kind``: 'f8', 'f4', 'i8', 'i4', 'i2', 'bool', or 'str' (``width`` characters).
    extname : str
    header : list of str, optional
        Extra cards for the table header (e.g. provenance).

    Examples
    --------
    >>> w = FitsTableWriter("cat.fits", [("obsid", "i8", 0), ("teff", "f4", 0)])  # doctest: +SKIP
    >>> w.append({"obsid": ids, "teff": teff}); w.close()                          # doctest: +SKIP
    """

    _TFORM = {"f8": "D", "f4": "E", "i8": "K", "i4": "J", "i2": "I", "bool": "L"}

    def __init__(self, path, columns, extname="CATALOGUE", header=None):
        self.path = Path(path)
        self.columns = [(str(n), k, int(w)) for n, k, w in columns]
        self.extname = extname
        self.header = list(header or [])
        fields = []
        for name, kind, width in self.columns:
            if kind == "str":
                fields.append((name, f"S{max(width, 1)}"))
            elif kind == "bool":
                fields.append((name, "S1"))
            else:
                fields.append((name, ">" + kind))
        self.dtype = np.dtype(fields)
        self.n_rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._spool = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".rows", dir=self.path.parent)
        self._fh = os.fdopen(fd, "wb")

    def append(self, rows):
        """Append rows: a dict (or Table) of equal-length arrays keyed by column name."""
        n = len(np.atleast_1d(rows[self.columns[0][0]]))
        rec = np.zeros(n, dtype=self.dtype)
        for name, kind, width in self.columns:
            try:
                v = np.asarray(rows[name])
            except KeyError:
                raise SimulationWriteError(f"{self.path}: row block lacks column {name!r}") from None
            if len(np.atleast_1d(v)) != n:
                raise SimulationWriteError(f"{self.path}: column {name!r} has {len(v)} rows, expected {n}")
            if kind == "bool":
                rec[name] = np.where(v.astype(bool), b"T", b"F")
            elif kind == "str":
                s = np.char.encode(v.astype(str), "ascii")
                if n and np.char.str_len(s).max() > width:
                    raise SimulationWriteError(f"{self.path}: column {name!r} value longer than {width} chars")
                rec[name] = s
            else:
                rec[name] = v
        self._fh.write(rec.tobytes())
        self.n_rows += n

    def close(self):
        """Write the header and data atomically; returns the path."""
        self._fh.close()
        cards = [card("XTENSION", "BINTABLE", "binary table extension"), card("BITPIX", 8), card("NAXIS", 2),
                 card("NAXIS1", self.dtype.itemsize), card("NAXIS2", self.n_rows), card("PCOUNT", 0),
                 card("GCOUNT", 1), card("TFIELDS", len(self.columns))]
        for i, (name, kind, width) in enumerate(self.columns, start=1):
            cards.append(card(f"TTYPE{i}", name))
            cards.append(card(f"TFORM{i}", f"{width}A" if kind == "str" else self._TFORM[kind]))
        cards.append(card("EXTNAME", self.extname))
        cards += self.header
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
                out.write(_header_bytes(_image_cards(None, True)))
                out.write(_header_bytes(cards))
                with open(self._spool, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                nbytes = self.n_rows * self.dtype.itemsize
                out.write(b"\0" * ((-nbytes) % BLOCK))
        except OSError as exc:
            raise SimulationWriteError(f"cannot write {self.path}: {exc}") from exc
        finally:
            if os.path.exists(self._spool):
                os.unlink(self._spool)
        return self.path

    def abort(self):
        """Discard the spooled rows (on error)."""
        if not self._fh.closed:
            self._fh.close()
        if os.path.exists(self._spool):
            os.unlink(self._spool)
