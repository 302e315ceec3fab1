"""Low-level FITS helpers shared by the survey readers.

Reading a spectrum file goes: :func:`read_bytes` (:func:`read_stored`: exists, a regular file,
not too large, read; :func:`decode_stored`: gunzip, FITS signature; :func:`read_ahead` runs the
first in a thread ahead of a caller that decodes many files)
-> :func:`parse_header_bytes` (a direct parser of the header cards, ~20x faster
than astropy's; used for the primary header and every HDU of an opened file) ->
either a survey's raw-bytes fast path (:func:`primary_image`) or :func:`open_fits`
(astropy, fully in memory, with explicit truncation checks). :func:`load_file`
runs those steps for a list of :class:`Loader` s (a survey's ``identify`` +
``load`` pair); :mod:`cannonade.spectra.readers` keeps the registry of them.

Nothing a file declares is allocated before it is checked against the bytes it holds
(:func:`check_hdus`: every HDU's BITPIX and NAXISn, a tile-compressed image's decompressed size),
and no file is read or inflated past :data:`MAX_SPECTRUM_BYTES` (:func:`read_bytes`).

Header values follow one convention (:func:`clean_header`, :func:`to_float`):
float sentinels <= -9998, NaN/inf and integer -9999 become NaN. Every failure
raises :class:`~cannonade.exceptions.SpectrumFormatError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from cannonade.exceptions import SpectrumFormatError
from cannonade.spectra import surveys

__all__ = [
    "Loader",
    "load_file",
    "MAX_SPECTRUM_BYTES",
    "read_bytes",
    "read_stored",
    "decode_stored",
    "read_ahead",
    "check_hdus",
    "open_fits",
    "parse_header_bytes",
    "header_of",
    "header_dict",
    "clean_header",
    "sentinel_to_nan",
    "to_float",
    "BITPIX",
    "primary_image",
    "hdu_image",
    "is_image",
    "header_axis",
    "log_linear_wavelength",
    "ivar_from_error",
    "clean_ivar",
    "check_wavelength",
    "std_meta",
    "as_format_error",
    "with_hdul",
]


# ---------------------------------------------------------------------------
# header values


def to_float(value):
    """A header value as float; None/strings/sentinels (<= -9998) -> NaN."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    if not math.isfinite(x) or x <= surveys.MISSING_SENTINEL:
        return math.nan
    return x


def header_dict(header):
    """The header's keys as a plain dict (no COMMENT/HISTORY); float sentinels -> NaN."""
    from astropy.utils.exceptions import AstropyWarning

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)  # astropy warns while fixing non-standard cards
        cards = list(header.cards)
        raw = {}
        for card in cards:
            if card.keyword in raw:
                continue
            try:
                raw[card.keyword] = card.value
            except Exception:  # unparsable card (e.g. 'NAN' as a number): keep its raw text
                text = card.image[10:].split("/")[0].strip().strip("'").strip()
                try:
                    raw[card.keyword] = float(text)
                except ValueError:
                    raw[card.keyword] = text
    for card in cards:
        key = card.keyword
        if not key or key in ("COMMENT", "HISTORY", "CONTINUE") or key in out:
            continue
        value = raw.get(key)
        if isinstance(value, str):
            value = value.strip()
        elif value is None or type(value).__name__ == "Undefined":
            value = None
        else:
            value = sentinel_to_nan(value)
        out[key] = value
    return out


def _parse_quoted(t):
    """A FITS string value from text starting at its opening quote ('' is an escaped quote)."""
    out, i = [], 1
    while i < len(t):
        j = t.find("'", i)
        if j < 0:
            out.append(t[i:])
            break
        out.append(t[i:j])
        if t[j + 1 : j + 2] == "'":
            out.append("'")
            i = j + 2
        else:
            break
    return "".join(out).rstrip()


_NOT_INTEGER = frozenset(".EeDd")  # a value holding one of these is never a Python int literal


def _parse_value(text):
    """The value of one FITS card from the text after '= ' (fast, no astropy)."""
    t = text.lstrip()
    if t[:1] == "'":
        j = t.find("'", 1)
        if j > 0 and t[j + 1 : j + 2] != "'":  # the common string: no escaped quote inside
            return t[1:j].rstrip()
        return _parse_quoted(t)
    v = t.split("/", 1)[0].strip()
    if v == "T":
        return True
    if v == "F":
        return False
    if v == "":
        return None
    if _NOT_INTEGER.isdisjoint(v):  # int() would fail on a '.' or an exponent: no failed try (~1 us)
        try:
            return int(v)
        except ValueError:
            pass
    try:
        return float(v.replace("D", "E"))
    except ValueError:
        return v


def parse_header_bytes(raw, start, path):
    """Parse the FITS header starting at byte ``start``; return (dict, data offset).

    About 20x faster than astropy's Card parsing, which dominates the cost of
    reading a small spectrum. Keeps the first occurrence of a keyword; skips
    COMMENT/HISTORY/blank and CONTINUE cards.
    """
    out = {}
    pos = start
    n = len(raw)
    cards = _CARDS
    while True:
        if pos + 2880 > n:
            raise SpectrumFormatError(f"{path}: truncated FITS header (no END card before byte {n})")
        block = raw[pos : pos + 2880].decode("ascii", "replace")
        pos += 2880
        for k in range(0, 2880, 80):
            card = block[k : k + 80]
            parsed = cards.get(card)
            if parsed is None:
                parsed = _parse_card(card)
                if len(cards) >= _MAX_CARDS:
                    cards.clear()
                cards[card] = parsed
            key, value = parsed
            if key and key not in out:
                if key is _END:
                    return out, pos
                out[key] = value


_SKIPPED_KEYS = frozenset(("COMMENT", "HISTORY"))
_END = "END"
# card text -> (key, value), key '' for a card without a value (blank, COMMENT, HISTORY, no '= ').
# A survey's files share most of their cards (LAMOST DR1: ~120 of 144 per file), so most cards are
# parsed once per process, not once per file; values are immutable (str, int, float, bool, None).
_CARDS: dict = {}
_MAX_CARDS = 16384  # ~4 MB; cleared when full (the varying cards: RA, DEC, OBSID, ...)


def _parse_card(card):
    """(key, value) of one 80-character header card; key ``'END'`` for the END card, ``''`` for a
    card that holds no value (:func:`parse_header_bytes` keeps the first value of each key)."""
    key = card[:8].rstrip()
    if key == _END:
        return _END, None
    if card[8:10] == "= " and key and key not in _SKIPPED_KEYS:
        return key, _parse_value(card[10:80])
    return "", None


def sentinel_to_nan(value):
    """NaN for a header value that means "missing" (a float <= -9998, NaN or ±inf; the int
    -9999), else ``value`` unchanged."""
    if isinstance(value, float):
        return value if surveys.MISSING_SENTINEL < value < math.inf else math.nan  # NaN fails this too
    if isinstance(value, int) and not isinstance(value, bool) and value == -9999:
        return math.nan
    return value


def clean_header(h):
    """A parsed header dict with its missing-value sentinels as NaN (:func:`sentinel_to_nan`)."""
    out = dict(h)
    for key, value in h.items():
        if type(value) is not str:  # most cards are text: nothing to check
            out[key] = sentinel_to_nan(value)
    return out


def ivar_from_error(flux, error, bad=None, bad_error=np.inf):
    """ivar = 1/error^2, 0 where error or flux is non-finite, <= 0, a sentinel or flagged."""
    flux = np.asarray(flux, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ivar = 1.0 / (error * error)
    good = (
        np.isfinite(flux)
        & np.isfinite(error)
        & (error > 0)
        & (error < bad_error)
        & (flux > surveys.MISSING_SENTINEL)
        & np.isfinite(ivar)
    )
    if bad is not None:
        good &= ~bad
    return np.where(good, ivar, 0.0)


def clean_ivar(flux, ivar, bad=None):
    """Zero the ivar of NaN/inf/sentinel/negative pixels (and of ``bad``: non-zero is bad)."""
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    # finite and > 0 (NaN fails every comparison), flux finite and above the sentinel: in place
    good = ivar > 0
    good &= ivar < np.inf
    good &= flux > surveys.MISSING_SENTINEL
    good &= flux < np.inf
    if bad is not None:
        np.greater(good, np.asarray(bad, dtype=bool), out=good)  # good and not bad
    return np.where(good, ivar, 0.0)


def check_wavelength(wave, path, source="wavelength"):
    """``wave`` if it is finite and strictly increasing, else SpectrumFormatError naming the file
    and ``source`` (the header keys or column it came from) and the first bad pixel."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.size > 1 and math.isfinite(wave[0]) and math.isfinite(wave[-1]) and np.diff(wave).min() > 0:
        return wave  # strictly increasing between finite ends: all finite (the common case, one pass)
    bad = ~np.isfinite(wave)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SpectrumFormatError(f"{path}: wavelength from {source} is not finite at pixel {i} ({wave[i]})")
    step = np.diff(wave)
    if wave.size > 1 and not np.all(step > 0):
        i = int(np.flatnonzero(~(step > 0))[0])
        kind = "constant" if np.all(step == 0) else "not increasing"
        raise SpectrumFormatError(f"{path}: wavelength from {source} is {kind} (pixel {i}: {wave[i]!r}, pixel {i + 1}: "
                                  f"{wave[i + 1]!r}); a spectrum's wavelengths must increase")
    return wave


def header_axis(header, npix, path, what="wavelength solution"):
    """CRVAL1 + CDELT1 * (i + 1 - CRPIX1) for i in range(npix): a FITS header's linear axis.

    SpectrumFormatError naming the file and key when a key is missing or not a number, or
    the step (CDELT1, or CD1_1) is not positive (a constant or reversed axis).
    """
    step_key = "CDELT1" if "CDELT1" in header else "CD1_1"
    try:
        crval = float(header["CRVAL1"])
        cdelt = float(header.get("CDELT1", header.get("CD1_1")))
        crpix = float(header.get("CRPIX1", 1.0))
    except (KeyError, TypeError, ValueError):
        raise SpectrumFormatError(f"{path}: no {what} (CRVAL1/CDELT1) in the header") from None
    for key, value in (("CRVAL1", crval), (step_key, cdelt), ("CRPIX1", crpix)):
        if not math.isfinite(value):
            raise SpectrumFormatError(f"{path}: {what}: header key {key} is not a number ({value})")
    if not cdelt > 0:
        raise SpectrumFormatError(f"{path}: {what}: header key {step_key} = {cdelt!r}; the wavelength step must be "
                                  "positive (0 is a constant wavelength, < 0 a reversed axis)")
    return crval + cdelt * (np.arange(npix) + 1.0 - crpix)


def log_linear_wavelength(header, npix, path):
    """10**(CRVAL1 + CDELT1 * (i + 1 - CRPIX1)) from a LOG-LINEAR header."""
    return 10.0 ** header_axis(header, npix, path, "log-linear wavelength solution")


def std_meta(survey, layout, path, obj_id, ra, dec, snr, redshift, rv, header=None):
    if header is None:
        meta = {}
    elif isinstance(header, dict):
        meta = clean_header(header)
    else:
        meta = header_dict(header)
    meta.update(
        survey=survey,
        layout=layout,
        obj_id=str(obj_id).strip() if obj_id is not None else "",
        ra=to_float(ra),
        dec=to_float(dec),
        snr=to_float(snr),
        redshift=to_float(redshift) if redshift is not None else math.nan,
        rv=to_float(rv) if rv is not None else math.nan,
        source_file=str(path),
    )
    return meta


# ---------------------------------------------------------------------------
# opening files safely


_FITS_MAGIC = b"SIMPLE  ="
_GZIP_MAGIC = b"\x1f\x8b"
#: The most bytes a spectrum file may hold, as stored and once decompressed (``.fits.gz``; a
#: tile-compressed image's pixels): a survey spectrum is a few MB at most. A larger file is
#: refused, never read or inflated past this (a decompression bomb costs at most this much).
MAX_SPECTRUM_BYTES = 256 * 2**20
_MAX_NAXIS = 999


def _decompressobj():
    """A gzip decompressor: ISA-L's (``cannonade[fast]``, ``isal``) when installed, else zlib's."""
    try:
        from isal import isal_zlib as z
    except ImportError:
        import zlib as z
    return z.decompressobj(16 + 15)


def _gunzip(raw, path):
    """Decompress gzip bytes (every member, as ``gzip.decompress``), never past
    :data:`MAX_SPECTRUM_BYTES`: with ISA-L when installed, else the standard library; the same
    bytes either way."""
    limit = MAX_SPECTRUM_BYTES
    # a member inflates to at least its trailer's size (mod 2**32): a bomb that says so is refused at once
    if len(raw) >= 18 and int.from_bytes(raw[-4:], "little") > limit:
        raise SpectrumFormatError(f"{path}: the gzip file says it inflates to {int.from_bytes(raw[-4:], 'little')} bytes, more "
                                  f"than a spectrum file may hold (MAX_SPECTRUM_BYTES = {limit}); refused unread")
    pieces, total, data = [], 0, raw
    while data:
        if data[:2] != _GZIP_MAGIC:
            if data.count(0) == len(data):  # zero padding after the last member (gzip accepts it too)
                break
            raise SpectrumFormatError(f"{path}: corrupt gzip file (not a gzip member at byte {len(raw) - len(data)})")
        d = _decompressobj()
        try:
            piece = d.decompress(data, limit + 1 - total)  # stops limit + 1 bytes in: nothing inflates further
        except Exception as exc:  # zlib.error, isal_zlib.error
            raise SpectrumFormatError(f"{path}: corrupt gzip file ({exc})") from None
        total += len(piece)
        if total > limit:
            raise SpectrumFormatError(f"{path}: the gzip file inflates to more than {limit} bytes, more than a spectrum file "
                                      "may hold (MAX_SPECTRUM_BYTES; a decompression bomb?); stopped there")
        pieces.append(piece)
        if not d.eof:  # all input consumed below the limit, yet no end of stream
            raise SpectrumFormatError(f"{path}: corrupt gzip file (truncated: it ends before the end-of-stream marker)")
        data = d.unused_data
    return b"".join(pieces)


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)


def _read_fd(fd, size):
    """The bytes of an open file of ``size`` bytes, and one more if it has grown: up to
    ``size + 1``, reading again only after a short read (``os.read`` may return fewer than asked)."""
    raw = os.read(fd, size + 1)
    while len(raw) < size:
        piece = os.read(fd, size + 1 - len(raw))
        if not piece:  # the file shrank: what it holds now
            break
        raw += piece
    return raw


def read_stored(path):
    """A spectrum file's bytes as stored (a ``.fits.gz`` still compressed), after checking that it
    exists, is a regular file and holds at most :data:`MAX_SPECTRUM_BYTES`: the I/O part of
    :func:`read_bytes`, which a caller may run ahead in a thread (:func:`decode_stored` does
    the rest)."""
    path = str(path)
    limit = MAX_SPECTRUM_BYTES
    try:
        # os-level calls: no file object per spectrum (~5 us of ~10); non-blocking, so that a FIFO
        # is refused below instead of waiting for a writer
        fd = os.open(path, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode):
                raise SpectrumFormatError(f"{path}: not a regular file")
            if st.st_size > limit:
                raise SpectrumFormatError(f"{path}: {st.st_size} bytes, more than a spectrum file may hold "
                                          f"(MAX_SPECTRUM_BYTES = {limit}); refused unread")
            raw = _read_fd(fd, st.st_size)  # never a buffer larger than the file
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise SpectrumFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SpectrumFormatError(f"{path}: is a directory, not a spectrum file") from None
    except OSError as exc:
        raise SpectrumFormatError(f"{path}: cannot read ({exc})") from None
    if len(raw) > st.st_size:
        raise SpectrumFormatError(f"{path}: the file grew while it was read (still being written?)")
    return raw


def decode_stored(raw, path):
    """The FITS bytes of a file's stored bytes (:func:`read_stored`): gunzipped when gzip, then
    checked for the FITS signature."""
    if raw[:2] == _GZIP_MAGIC:  # gzip-compressed FITS (.fits.gz)
        raw = _gunzip(raw, path)
    if raw[: len(_FITS_MAGIC)] != _FITS_MAGIC:
        raise SpectrumFormatError(f"{path}: not a FITS file (no 'SIMPLE  =' signature)")
    return raw


def read_bytes(path):
    """The whole file (spectra are small), after checking it exists, is at most
    :data:`MAX_SPECTRUM_BYTES` (decompressed too) and is FITS; a ``.fits.gz`` is decompressed."""
    return decode_stored(read_stored(path), str(path))


#: files a thread reads ahead, as a batch, while the caller decodes the batch before (~1.4 MB of
#: gzipped LAMOST files)
READ_AHEAD = 32


def read_ahead(files, batch=READ_AHEAD):
    """``(path, stored bytes)`` of every file, in order, read by a thread one batch ahead of the
    caller, so that the disk's latency overlaps the caller's decoding; a file that cannot be read
    gives its exception (:class:`~cannonade.exceptions.SpectrumFormatError`) in place of bytes.

    Read from a cold disk, a LAMOST file costs ~0.15 ms before its first byte is decoded (this
    machine; ~0.45 ms to decode it): the thread hides it. In the page cache the thread costs
    nothing measurable (one task per batch)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(paths):
        out = []
        for path in paths:
            try:
                out.append(read_stored(path))
            except Exception as exc:  # reported where the caller reaches this file
                out.append(exc)
        return out

    batches = [files[i : i + batch] for i in range(0, len(files), batch)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(read, batches[0])
        for k, paths in enumerate(batches):
            got = ahead.result()
            if k + 1 < len(batches):
                ahead = pool.submit(read, batches[k + 1])
            yield from zip(paths, got)


def _integer_key(h, key, path, k, default=None, low=0, high=None):
    """Header ``h``'s ``key`` as an int in [low, high], else SpectrumFormatError naming the file, HDU and key."""
    value = h.get(key, default)
    if value is None:
        raise SpectrumFormatError(f"{path}: HDU {k}: the header has no {key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpectrumFormatError(f"{path}: HDU {k}: header key {key} = {value!r} is not an integer")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SpectrumFormatError(f"{path}: HDU {k}: header key {key} = {value} must be {bound}")
    return value


def _bitpix(h, key, path, k):
    value = h.get(key)
    if isinstance(value, bool) or value not in BITPIX:
        raise SpectrumFormatError(f"{path}: HDU {k}: header key {key} = {value!r} is not a FITS value "
                                  f"({', '.join(map(str, BITPIX))})")
    return value


def _declared(h, path, k):
    """(bytes of data the header declares, the keys that say so)."""
    bitpix = _bitpix(h, "BITPIX", path, k)
    naxis = _integer_key(h, "NAXIS", path, k, high=_MAX_NAXIS)
    axes = [(f"NAXIS{i}", _integer_key(h, f"NAXIS{i}", path, k)) for i in range(1, naxis + 1)]
    keys = [f"BITPIX = {bitpix}"] + [f"{key} = {v}" for key, v in axes]
    if k == 0 and h.get("GROUPS") is True and axes and axes[0][1] == 0:
        axes = axes[1:]  # random groups: NAXIS1 = 0
    elif not axes:
        return 0, keys
    pcount = _integer_key(h, "PCOUNT", path, k, default=0)
    gcount = _integer_key(h, "GCOUNT", path, k, default=1)
    keys += [f"PCOUNT = {pcount}"] if pcount else []
    keys += [f"GCOUNT = {gcount}"] if gcount != 1 else []
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(v for _, v in axes)), keys


def _check_compressed(h, path, k):
    """A tile-compressed image (``ZIMAGE = T``): its decompressed size and tiles within MAX_SPECTRUM_BYTES."""
    zbitpix = _bitpix(h, "ZBITPIX", path, k)
    znaxis = _integer_key(h, "ZNAXIS", path, k, high=_MAX_NAXIS)
    axes = [(f"ZNAXIS{i}", _integer_key(h, f"ZNAXIS{i}", path, k)) for i in range(1, znaxis + 1)]
    tiles = [(f"ZTILE{i}", _integer_key(h, f"ZTILE{i}", path, k, low=1)) for i in range(1, znaxis + 1) if f"ZTILE{i}" in h]
    limit = MAX_SPECTRUM_BYTES
    for what, keys in (("the image", axes), ("one tile", tiles)):
        n = abs(zbitpix) // 8 * math.prod(v for _, v in keys)
        if keys and n > limit:
            raise SpectrumFormatError(
                f"{path}: HDU {k} is a tile-compressed image declaring ZBITPIX = {zbitpix}, "
                f"{', '.join(f'{key} = {v}' for key, v in keys)}: {what} is {n} bytes once decompressed, more than a spectrum "
                f"may hold (MAX_SPECTRUM_BYTES = {limit}); refused before decompressing")


def check_hdus(raw, path):
    """Every HDU's header against the bytes of the file, before anything is allocated.

    Walks the HDUs of ``raw`` (:func:`read_bytes`) with :func:`parse_header_bytes`. Each header needs
    an END card, a BITPIX that is a FITS value and NAXIS, NAXISn (PCOUNT, GCOUNT) that are
    non-negative integers, and the data they declare must lie inside the file; a tile-compressed
    image (``ZIMAGE = T``) must decompress to at most :data:`MAX_SPECTRUM_BYTES` (ZBITPIX, ZNAXISn,
    ZTILEn checked alike). Bytes after the last HDU that do not start an extension are ignored.

    Returns
    -------
    list of (dict, int, int)
        Each HDU's parsed header, the byte where its data start and the data's size.

    Raises
    ------
    SpectrumFormatError
        Names the file, the HDU and the keys (and the bytes declared and held).
    """
    out, pos, n = [], 0, len(raw)
    while pos < n:
        if out and raw[pos : pos + 8] != b"XTENSION":
            break
        k = len(out)
        h, start = parse_header_bytes(raw, pos, path)
        size, keys = _declared(h, path, k)
        if start + size > n:
            raise SpectrumFormatError(f"{path}: truncated or crafted FITS file: HDU {k} declares {size} bytes of data "
                                      f"({', '.join(keys)}), the file holds {max(n - start, 0)} after its header")
        if h.get("ZIMAGE") is True:
            _check_compressed(h, path, k)
        out.append((h, start, size))
        pos = start + -(-size // 2880) * 2880
    return out


def open_fits(path, raw=None, checked=False):
    """Open a FITS file fully in memory, raising SpectrumFormatError on any problem.

    Checks the FITS signature, that every HDU's declared data lie inside the file and fit in
    memory (:func:`check_hdus`, before astropy sees the bytes: astropy reads lazily and only warns
    on truncation; ``checked=True``: the caller has run it on ``raw``), and forces every data
    array to be read.
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    path = str(path)
    raw = read_bytes(path) if raw is None else raw
    if not checked:
        check_hdus(raw, path)
    try:
        with warnings.catch_warnings():
            # astropy only warns on truncation / non-standard cards; checked by check_hdus
            warnings.simplefilter("ignore", AstropyWarning)
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
            for hdu in hdul:
                _ = hdu.data  # force the read now: corrupt data fails here, not later
    except SpectrumFormatError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError, VerifyError...
        raise SpectrumFormatError(f"{path}: corrupt FITS file ({type(exc).__name__}: {exc})") from None
    if len(hdul) == 0:
        raise SpectrumFormatError(f"{path}: empty FITS file")
    hdul._cannonade_raw = raw
    return hdul


def header_of(hdul, i, path):
    """Header ``i`` of an HDUList as a plain dict (fast parse of the raw bytes when available)."""
    cache = hdul.__dict__.setdefault("_cannonade_headers", {})
    if i not in cache:
        raw = getattr(hdul, "_cannonade_raw", None)
        info = hdul[i].fileinfo() if raw is not None else None
        if info is not None:
            cache[i] = parse_header_bytes(raw, info["hdrLoc"], path)[0]
        else:
            cache[i] = header_dict(hdul[i].header)
    return cache[i]


BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def primary_image(raw, h, start, path, as_stored=False):
    """The primary image straight from the bytes (no astropy): (NAXIS2, NAXIS1) float64.

    ``as_stored=True``: a read-only view of the bytes in the file's own type (big-endian) when no
    BSCALE/BZERO applies, so that a reader converts only the rows it uses. SpectrumFormatError
    naming the file and keys for a BITPIX that is not a FITS value, NAXIS1 or NAXIS2 not a
    positive integer, or an image larger than the file holds (checked before reading)."""
    for key in ("NAXIS1", "NAXIS2"):
        _integer_key(h, key, path, 0, low=1)
    return hdu_image(raw, h, start, path, 0, as_stored).reshape(h["NAXIS2"], h["NAXIS1"])


def hdu_image(raw, h, start, path, k=0, as_stored=False):
    """HDU ``k``'s image straight from the bytes (no astropy): float64 of shape (NAXISn, ..., NAXIS1).

    ``h`` and ``start`` are the HDU's parsed header and data offset (:func:`check_hdus`); BSCALE
    and BZERO applied (``as_stored=True``: the bytes' own type, as :func:`primary_image`).
    SpectrumFormatError naming the file, HDU and keys for a BITPIX that is not a FITS value,
    NAXISn not a positive integer, or an image larger than the file holds."""
    dtype = np.dtype(BITPIX[_bitpix(h, "BITPIX", path, k)])
    naxis = _integer_key(h, "NAXIS", path, k, low=1, high=_MAX_NAXIS)
    shape = tuple(_integer_key(h, f"NAXIS{i}", path, k, low=1) for i in range(naxis, 0, -1))
    count = math.prod(shape)
    if start + count * dtype.itemsize > len(raw):
        axes = ", ".join(f"NAXIS{i} = {h[f'NAXIS{i}']}" for i in range(1, naxis + 1))
        raise SpectrumFormatError(f"{path}: truncated or crafted FITS file: the image of HDU {k} (BITPIX = {h['BITPIX']}, "
                                  f"{axes}) needs {count * dtype.itemsize} bytes, the file holds "
                                  f"{max(len(raw) - start, 0)} after its header")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(shape)
    bscale, bzero = h.get("BSCALE", 1), h.get("BZERO", 0)
    if bscale not in (1, None) or bzero not in (0, None):
        return data * float(bscale) + float(bzero)
    return data if as_stored else data.astype(np.float64)


def is_image(hdu):
    """True for an image HDU with data."""
    return hdu.is_image and hdu.data is not None


@contextlib.contextmanager
def as_format_error(path):
    """Any failure while decoding a file becomes a SpectrumFormatError naming it (a wrong
    keyword argument stays a TypeError: that is the caller's bug, not the file's)."""
    try:
        yield
    except SpectrumFormatError:
        raise
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise
        raise SpectrumFormatError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    except Exception as exc:
        raise SpectrumFormatError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def with_hdul(reader):
    """Let a per-layout reader take a path or an opened HDUList."""

    def wrapper(path_or_hdul, path=None, **kwargs):
        if isinstance(path_or_hdul, (str, os.PathLike)):
            path = str(path_or_hdul)
            hdul = open_fits(path)
            try:
                with as_format_error(path):
                    return reader(hdul, path, **kwargs)
            finally:
                hdul.close()
        return reader(path_or_hdul, path if path is not None else "<HDUList>", **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = reader.__name__.lstrip("_")
    wrapper.__module__ = reader.__module__
    wrapper.__doc__ = reader.__doc__
    wrapper.__wrapped__ = reader
    return wrapper


# ---------------------------------------------------------------------------
# loaders: a survey's identify + load pair


@dataclass(frozen=True)
class Loader:
    """How one survey's files are recognised and read.

    Attributes
    ----------
    name : str
        Registry key (``'lamost'``, ``'galah'``, ``'apogee'``).
    identify : callable
        ``identify(hdul) -> str``: the layout name (e.g. ``'apstar'``) if this
        survey's reader understands the opened file, else ``''``. Must not raise
        for other surveys' files.
    load : callable
        ``load(hdul, path, layout, **kwargs) -> Spectrum``.
    description : str
        Human-readable list of the layouts (used in "unknown layout" messages).
    identify_header : callable, optional
        ``identify_header(header_dict) -> str``: a fast path deciding from the
        parsed primary header alone, before astropy opens the file.
    load_raw : callable, optional
        ``load_raw(raw, header_dict, data_start, path, layout, **kwargs) -> Spectrum``
        reading straight from the bytes; required with ``identify_header``.
    identify_hdus : callable, optional
        ``identify_hdus(hdus) -> str``: a fast path deciding from every HDU's parsed
        header (:func:`check_hdus`' list of ``(header_dict, data_start, data_size)``),
        for layouts recognised by their extensions.
    load_hdus : callable, optional
        ``load_hdus(raw, hdus, path, layout, **kwargs) -> Spectrum`` reading straight
        from the bytes; required with ``identify_hdus``.
    """

    name: str
    identify: Callable
    load: Callable
    description: str = ""
    identify_header: Optional[Callable] = None
    load_raw: Optional[Callable] = None
    identify_hdus: Optional[Callable] = None
    load_hdus: Optional[Callable] = None


def load_file(path, loaders, unknown="unknown spectrum layout", stored=None, **kwargs):
    """Read ``path`` with the first of ``loaders`` that recognises it.

    Parameters
    ----------
    path : str or Path
    loaders : sequence of Loader
        Tried in order: first every ``identify_header`` on the primary header, then every
        ``identify_hdus`` on all the headers (neither needs astropy), then every ``identify``
        on the opened file.
    unknown : str
        Reason given when no loader recognises the file.
    stored : bytes, optional
        The file's bytes as stored, already read (:func:`read_stored`, e.g. ahead in a thread);
        default: read now.
    **kwargs
        Passed to the loader's ``load`` / ``load_raw``.

    Returns
    -------
    Spectrum

    Raises
    ------
    SpectrumFormatError
        Missing, truncated, corrupt, non-FITS or unrecognised file (names it).
    """
    path = str(path)
    raw = read_bytes(path) if stored is None else decode_stored(stored, path)
    hdus = check_hdus(raw, path)  # nothing declared is allocated before this
    h0, data_start, _ = hdus[0]
    for loader in loaders:
        if loader.identify_header is not None:
            layout = loader.identify_header(h0)
            if layout:
                with as_format_error(path):
                    return _checked(loader.load_raw(raw, h0, data_start, path, layout, **kwargs), path, loader)
    for loader in loaders:
        if loader.identify_hdus is not None:
            layout = loader.identify_hdus(hdus)
            if layout:
                with as_format_error(path):
                    return _checked(loader.load_hdus(raw, hdus, path, layout, **kwargs), path, loader)
    hdul = open_fits(path, raw, checked=True)
    try:
        with as_format_error(path):
            for loader in loaders:
                layout = loader.identify(hdul)
                if layout:
                    return _checked(loader.load(hdul, path, layout, **kwargs), path, loader)
            raise SpectrumFormatError(f"{path}: {unknown}")
    finally:
        hdul.close()


def _checked(spectrum, path, loader):
    """Every reader's promise, checked once for all (and for registered readers): finite,
    strictly increasing wavelengths."""
    check_wavelength(spectrum.wavelength, path, f"the {loader.name} reader's wavelength solution")
    return spectrum
