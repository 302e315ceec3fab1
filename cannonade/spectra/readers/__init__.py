"""Survey spectrum readers: LAMOST LRS, APOGEE (apStar, aspcapStar, apVisit), GALAH.

One entry point, :func:`read_spectrum`, recognises the layout from the file's
*content* (headers, HDU shapes, extension names; never the file name) and
returns a :class:`Spectrum` whose arrays follow the package convention:

* ``wavelength`` -- vacuum Angstrom, increasing, float64;
* ``flux`` -- float64 (NaN allowed at bad pixels);
* ``ivar`` -- inverse variance, float64, exactly 0 at every bad pixel: masked by
  the survey's pixel bits, NaN/inf flux or error, -9999 sentinels, zero or
  negative errors / inverse variances.

``meta`` always holds ``survey`` ('lamost' | 'apogee' | 'galah'), ``obj_id``,
``ra``, ``dec``, ``snr``, ``redshift`` (the redshift still present in the
wavelength array, so that ``wavelength / (1 + redshift)`` is the rest frame; NaN
when unknown), ``rv`` (km/s, NaN when unknown), ``source_file``, ``layout``, plus
the primary header's own keys (upper case; float sentinels <= -9998 -> NaN).

Every failure (missing, truncated, corrupt, non-FITS, unknown layout) raises
:class:`~cannonade.exceptions.SpectrumFormatError` naming the file and why.
File formats and choices are documented in ``docs/spectra.md``.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import io
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cannonade.spectra import surveys
from cannonade.exceptions import SpectrumFormatError

__all__ = [
    "Spectrum",
    "read_spectrum",
    "detect_layout",
    "read_lamost",
    "read_apstar",
    "read_apstar_visits",
    "read_aspcapstar",
    "read_apvisit",
    "read_galah_ccd",
    "read_galah_star",
    "air_to_vacuum",
    "rv_to_redshift",
]


@dataclass
class Spectrum:
    """One 1-D spectrum.

    Attributes
    ----------
    wavelength : (n_pixels,) float64
        Vacuum Angstrom, increasing.
    flux : (n_pixels,) float64
        Flux (NaN allowed where ``ivar == 0``).
    ivar : (n_pixels,) float64
        Inverse variance; 0 marks a bad pixel.
    meta : dict
        See the module docstring.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.wavelength = np.asarray(self.wavelength, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ivar = np.asarray(self.ivar, dtype=np.float64)
        n = self.wavelength.shape
        if self.wavelength.ndim != 1 or self.flux.shape != n or self.ivar.shape != n:
            raise SpectrumFormatError(
                f"{self.meta.get('source_file', '<spectrum>')}: wavelength, flux, ivar shapes differ "
                f"({self.wavelength.shape}, {self.flux.shape}, {self.ivar.shape})"
            )

    @property
    def n_pixels(self):
        return self.wavelength.size


# ---------------------------------------------------------------------------
# small pure helpers


def air_to_vacuum(wavelength_air):
    """Air -> vacuum wavelength (Angstrom), Morton (2000) / Ciddor (1996) refractive index.

    Parameters
    ----------
    wavelength_air : (n,) float

    Returns
    -------
    (n,) float64
    """
    w = np.asarray(wavelength_air, dtype=np.float64)
    s2 = (1e4 / w) ** 2  # (inverse micron)^2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (1.301065924522e2 - s2) + 1.599740894897e-4 / (
        3.892568793293e1 - s2
    )
    return w * n


def rv_to_redshift(rv_kms):
    """Relativistic Doppler redshift of a radial velocity: ``sqrt((1+b)/(1-b)) - 1``."""
    b = np.asarray(rv_kms, dtype=np.float64) / surveys.C_KMS
    with np.errstate(invalid="ignore"):
        z = np.sqrt((1.0 + b) / (1.0 - b)) - 1.0
    return float(z) if np.ndim(z) == 0 else z


def _float(value):
    """A header value as float; None/strings/sentinels (<= -9998) -> NaN."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    if not math.isfinite(x) or x <= surveys.MISSING_SENTINEL:
        return math.nan
    return x


def _header_dict(header):
    """The header's keys as a plain dict (no COMMENT/HISTORY); float sentinels -> NaN."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns while fixing non-standard cards
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
        if isinstance(value, float) and (not math.isfinite(value) or value <= surveys.MISSING_SENTINEL):
            value = math.nan
        elif isinstance(value, int) and not isinstance(value, bool) and value == -9999:
            value = math.nan
        elif isinstance(value, str):
            value = value.strip()
        elif value is None or type(value).__name__ == "Undefined":
            value = None
        out[key] = value
    return out


def _ivar_from_error(flux, error, bad=None, bad_error=np.inf):
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


def _clean_ivar(flux, ivar, bad=None):
    """Zero the ivar of NaN/inf/sentinel/negative pixels (and of ``bad``)."""
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & (flux > surveys.MISSING_SENTINEL)
    if bad is not None:
        good &= ~bad
    return np.where(good, ivar, 0.0)


def _parse_value(text):
    """The value of one FITS card from the text after '= ' (fast, no astropy)."""
    t = text.lstrip()
    if t.startswith("'"):
        out, i = [], 1
        while i < len(t):
            j = t.find("'", i)
            if j < 0:
                out.append(t[i:])
                break
            out.append(t[i:j])
            if t[j + 1 : j + 2] == "'":  # '' is an escaped quote
                out.append("'")
                i = j + 2
            else:
                break
        return "".join(out).rstrip()
    v = t.split("/", 1)[0].strip()
    if v == "T":
        return True
    if v == "F":
        return False
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v.replace("D", "E"))
    except ValueError:
        return v


def _parse_header_bytes(raw, start, path):
    """Parse the FITS header starting at byte ``start``; return (dict, data offset).

    About 20x faster than astropy's Card parsing, which dominates the cost of
    reading a small spectrum. Keeps the first occurrence of a keyword; skips
    COMMENT/HISTORY/blank and CONTINUE cards.
    """
    out = {}
    pos = start
    n = len(raw)
    while True:
        if pos + 2880 > n:
            raise SpectrumFormatError(f"{path}: truncated FITS header (no END card before byte {n})")
        block = raw[pos : pos + 2880].decode("ascii", "replace")
        pos += 2880
        for k in range(0, 2880, 80):
            card = block[k : k + 80]
            key = card[:8].rstrip()
            if key == "END":
                return out, pos
            if not key or card[8:10] != "= " or key in out or key in ("COMMENT", "HISTORY"):
                continue
            out[key] = _parse_value(card[10:])


def _clean_header(h):
    """A parsed header dict with float sentinels (<= -9998, NaN, inf) and int -9999 -> NaN."""
    out = {}
    for key, value in h.items():
        if isinstance(value, float) and (not math.isfinite(value) or value <= surveys.MISSING_SENTINEL):
            value = math.nan
        elif isinstance(value, int) and not isinstance(value, bool) and value == -9999:
            value = math.nan
        out[key] = value
    return out


def _header_axis(header, npix, path, what="wavelength solution"):
    """CRVAL1 + CDELT1 * (i + 1 - CRPIX1) for i in range(npix): a FITS header's linear axis."""
    try:
        crval = float(header["CRVAL1"])
        cdelt = float(header.get("CDELT1", header.get("CD1_1")))
        crpix = float(header.get("CRPIX1", 1.0))
    except (KeyError, TypeError, ValueError):
        raise SpectrumFormatError(f"{path}: no {what} (CRVAL1/CDELT1) in the header") from None
    return crval + cdelt * (np.arange(npix) + 1.0 - crpix)


def _log_linear_wavelength(header, npix, path):
    """10**(CRVAL1 + CDELT1 * (i + 1 - CRPIX1)) from a LOG-LINEAR header."""
    return 10.0 ** _header_axis(header, npix, path, "log-linear wavelength solution")


def _std_meta(survey, layout, path, obj_id, ra, dec, snr, redshift, rv, header=None):
    if header is None:
        meta = {}
    elif isinstance(header, dict):
        meta = _clean_header(header)
    else:
        meta = _header_dict(header)
    meta.update(
        survey=survey,
        layout=layout,
        obj_id=str(obj_id).strip() if obj_id is not None else "",
        ra=_float(ra),
        dec=_float(dec),
        snr=_float(snr),
        redshift=_float(redshift) if redshift is not None else math.nan,
        rv=_float(rv) if rv is not None else math.nan,
        source_file=str(path),
    )
    return meta


# ---------------------------------------------------------------------------
# opening files safely

_FITS_MAGIC = b"SIMPLE  ="


def _read_bytes(path):
    """The whole file (spectra are small), after checking it exists and is FITS."""
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SpectrumFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SpectrumFormatError(f"{path}: is a directory, not a spectrum file") from None
    except OSError as exc:
        raise SpectrumFormatError(f"{path}: cannot read ({exc})") from None
    if raw[:2] == b"\x1f\x8b":  # gzip-compressed FITS (.fits.gz)
        import gzip

        try:
            raw = gzip.decompress(raw)
        except Exception as exc:
            raise SpectrumFormatError(f"{path}: corrupt gzip file ({exc})") from None
    if raw[: len(_FITS_MAGIC)] != _FITS_MAGIC:
        raise SpectrumFormatError(f"{path}: not a FITS file (no 'SIMPLE  =' signature)")
    return raw


def _open_fits(path, raw=None):
    """Open a FITS file fully in memory, raising SpectrumFormatError on any problem.

    Checks the FITS signature, that every HDU's data lies inside the file (astropy
    reads lazily and only warns on truncation), and forces every data array to be read.
    """
    from astropy.io import fits

    path = str(path)
    raw = _read_bytes(path) if raw is None else raw
    size = len(raw)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
            for k, hdu in enumerate(hdul):
                info = hdu.fileinfo()
                need = info["datLoc"] + hdu.size if info is not None else 0
                if need > size:
                    raise SpectrumFormatError(f"{path}: truncated FITS file ({size} bytes, HDU {k} needs {need})")
                _ = hdu.data  # force the read now: corrupt data fails here, not later
    except SpectrumFormatError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError, VerifyError...
        raise SpectrumFormatError(f"{path}: corrupt FITS file ({type(exc).__name__}: {exc})") from None
    if len(hdul) == 0:
        raise SpectrumFormatError(f"{path}: empty FITS file")
    hdul._cannonade_raw = raw
    return hdul


def _hdr(hdul, i, path):
    """Header ``i`` of an HDUList as a plain dict (fast parse of the raw bytes when available)."""
    cache = hdul.__dict__.setdefault("_cannonade_headers", {})
    if i not in cache:
        raw = getattr(hdul, "_cannonade_raw", None)
        info = hdul[i].fileinfo() if raw is not None else None
        if info is not None:
            cache[i] = _parse_header_bytes(raw, info["hdrLoc"], path)[0]
        else:
            cache[i] = _header_dict(hdul[i].header)
    return cache[i]


_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _is_lamost_image_header(h):
    return (
        h.get("NAXIS") == 2
        and isinstance(h.get("NAXIS2"), int)
        and h["NAXIS2"] >= 3
        and "COEFF0" in h
        and "COEFF1" in h
        and h.get("BITPIX") in _BITPIX
    )


def _primary_image(raw, h, start, path):
    """The primary image straight from the bytes (no astropy): (NAXIS2, NAXIS1) float64."""
    n1, n2 = int(h["NAXIS1"]), int(h["NAXIS2"])
    dtype = np.dtype(_BITPIX[h["BITPIX"]])
    nbytes = n1 * n2 * dtype.itemsize
    if start + nbytes > len(raw):
        raise SpectrumFormatError(f"{path}: truncated FITS file ({len(raw)} bytes, primary image needs {start + nbytes})")
    data = np.frombuffer(raw, dtype=dtype, count=n1 * n2, offset=start).reshape(n2, n1).astype(np.float64)
    bscale, bzero = h.get("BSCALE", 1), h.get("BZERO", 0)
    if bscale not in (1, None) or bzero not in (0, None):
        data = data * float(bscale) + float(bzero)
    return data


def _is_image(hdu):
    return hdu.is_image and hdu.data is not None


def detect_layout(hdul):
    """The layout of an opened FITS file, from its content.

    Returns
    -------
    str
        One of ``'lamost_image'``, ``'lamost_table'``, ``'apstar'``, ``'aspcapstar'``,
        ``'apvisit'``, ``'galah_ccd'``, or ``''`` when unknown.
    """
    h0 = hdul[0].header
    names = [h.name.lower() for h in hdul]
    d0 = hdul[0].data
    # LAMOST DR1-DR7: primary image (n_rows >= 3, n_pix) with COEFF0/COEFF1
    if d0 is not None and d0.ndim == 2 and d0.shape[0] >= 3 and ("COEFF0" in h0 or "LAMOST" in str(h0.get("TELESCOP", ""))):
        return "lamost_image"
    # LAMOST DR8+: a binary table with FLUX, IVAR, WAVELENGTH columns
    for hdu in hdul[1:]:
        if hdu.is_image:
            continue
        cols = {c.upper() for c in hdu.columns.names}
        if {"FLUX", "IVAR", "WAVELENGTH"} <= cols:
            return "lamost_table"
    # GALAH per-CCD: 1-D primary flux + 'normalized' and 'relative_error' extensions
    if d0 is not None and d0.ndim == 1 and "relative_error" in names and "normalized" in names:
        return "galah_ccd"
    if len(hdul) >= 4 and all(_is_image(hdul[i]) for i in (1, 2, 3)):
        d1, d3 = hdul[1].data, hdul[3].data
        ctype = str(hdul[1].header.get("CTYPE1", "")).upper()
        # apVisit: (3 chips, 4096) rows and a wavelength image in HDU4
        if d1.ndim == 2 and d1.shape[0] == 3 and _is_image(hdul[4]) and hdul[4].data.shape == d1.shape and ctype != "LOG-LINEAR":
            return "apvisit"
        if ctype == "LOG-LINEAR" or "CRVAL1" in hdul[1].header:
            # aspcapStar: HDU3 is the (float) best-fit model and a PARAM table follows
            has_param_table = len(hdul) > 4 and not hdul[4].is_image and "PARAM" in {c.upper() for c in hdul[4].columns.names}
            if d3.dtype.kind == "f" and (has_param_table or d1.ndim == 1):
                return "aspcapstar"
            if d3.dtype.kind in "iu":
                return "apstar"
    return ""


@contextlib.contextmanager
def _as_format_error(path):
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


def read_spectrum(path, **kwargs):
    """Read one survey spectrum, whatever its layout (detected from the file content).

    Parameters
    ----------
    path : str or Path
        A LAMOST (DR1-DR7 image or DR8+ table), APOGEE apStar / aspcapStar /
        apVisit, or GALAH per-CCD FITS file.
    **kwargs
        Passed to the layout's reader (e.g. ``row=`` for apStar, ``and_bits=``
        for LAMOST, ``pixmask_bits=`` for APOGEE, ``normalised=`` for GALAH).

    Returns
    -------
    Spectrum

    Raises
    ------
    SpectrumFormatError
        Missing, truncated, corrupt, non-FITS or unknown-layout file (the message
        names the file and the reason).
    """
    raw = _read_bytes(path)
    h0, data_start = _parse_header_bytes(raw, 0, str(path))
    if _is_lamost_image_header(h0):
        # fast path for the commonest layout (millions of LAMOST DR1-DR7 files)
        with _as_format_error(path):
            return _lamost_image(_primary_image(raw, h0, data_start, path), h0, str(path), **kwargs)
    hdul = _open_fits(path, raw)
    try:
        with _as_format_error(path):
            layout = detect_layout(hdul)
            if not layout:
                raise SpectrumFormatError(
                    f"{path}: unknown spectrum layout (not LAMOST, APOGEE apStar/aspcapStar/apVisit or GALAH)"
                )
            return _READERS[layout](hdul, path, **kwargs)
    finally:
        hdul.close()


def _with_hdul(reader):
    """Let a per-layout reader take a path or an opened HDUList."""

    def wrapper(path_or_hdul, path=None, **kwargs):
        if isinstance(path_or_hdul, (str, os.PathLike)):
            path = str(path_or_hdul)
            hdul = _open_fits(path)
            try:
                with _as_format_error(path):
                    return reader(hdul, path, **kwargs)
            finally:
                hdul.close()
        return reader(path_or_hdul, path if path is not None else "<HDUList>", **kwargs)

    wrapper.__name__ = reader.__name__
    wrapper.__doc__ = reader.__doc__
    wrapper.__wrapped__ = reader
    return wrapper


# ---------------------------------------------------------------------------
# LAMOST


def _lamost_meta(header, path, layout):
    z = _float(header.get("Z"))
    rv = _float(header.get("RV", header.get("HELIO_RV_OBJ")))
    if not math.isfinite(rv) and math.isfinite(z):
        rv = z * surveys.C_KMS  # LAMOST's catalogue rv is c*z
    snr = header.get("SN_G", header.get("SNRG", header.get("SNR")))
    obj = header.get("OBSID")
    if obj is None or str(obj).strip() == "":
        obj = str(header.get("DESIG", header.get("DESIGNATION", header.get("OBJNAME", "")))).strip()
        obj = re.sub(r"^LAMOST\s+", "", obj)  # 'LAMOST J0637..' -> catalogue designation 'J0637..'
    meta = _std_meta("lamost", layout, path, obj, header.get("RA"), header.get("DEC"), snr, z, rv, header)
    meta["redshift_err"] = _float(header.get("Z_ERR"))
    return meta


def _lamost_bad(andmask, ormask, and_bits, or_bits):
    bad = np.zeros(np.shape(andmask), dtype=bool)
    if andmask is not None and and_bits:
        bad |= (np.asarray(andmask).astype(np.int64) & int(and_bits)) != 0
    if ormask is not None and or_bits:
        bad |= (np.asarray(ormask).astype(np.int64) & int(or_bits)) != 0
    return bad


def _read_lamost_image(hdul, path, and_bits=surveys.LAMOST_AND_BITS_DEFAULT, or_bits=surveys.LAMOST_OR_BITS_DEFAULT):
    return _lamost_image(np.asarray(hdul[0].data, dtype=np.float64), _hdr(hdul, 0, path), path, and_bits, or_bits)


def _lamost_image(data, h, path, and_bits=surveys.LAMOST_AND_BITS_DEFAULT, or_bits=surveys.LAMOST_OR_BITS_DEFAULT):
    """LAMOST DR1-DR7 image rows (flux, ivar, [3rd row], andmask, ormask) + header dict -> Spectrum."""
    if data.ndim != 2:
        raise SpectrumFormatError(f"{path}: LAMOST image must be 2-D (rows x pixels), got shape {data.shape}")
    nrow, npix = data.shape
    if nrow < 2:
        raise SpectrumFormatError(f"{path}: LAMOST image has {nrow} rows, need flux and ivar")
    if "COEFF0" in h and "COEFF1" in h:
        # Wavelength from the header, never from row 3 (it is a normalised flux in DR1)
        wave = 10.0 ** (float(h["COEFF0"]) + float(h["COEFF1"]) * np.arange(npix))
    elif nrow >= 3 and np.all(np.diff(data[2]) > 0) and 3000 < data[2, 0] < 10000:
        wave = data[2].copy()  # layouts whose row 3 *is* the wavelength and no COEFF0
    else:
        raise SpectrumFormatError(f"{path}: LAMOST image without COEFF0/COEFF1 and no wavelength row")
    if not bool(h.get("VACUUM", True)):
        wave = air_to_vacuum(wave)
    andmask = data[3] if nrow >= 4 else None
    ormask = data[4] if nrow >= 5 else None
    bad = _lamost_bad(andmask, ormask, and_bits, or_bits) if andmask is not None else None
    ivar = _clean_ivar(data[0], data[1], bad)
    return Spectrum(wave, data[0], ivar, _lamost_meta(h, path, "lamost_image"))


def _read_lamost_table(hdul, path, and_bits=surveys.LAMOST_AND_BITS_DEFAULT, or_bits=surveys.LAMOST_OR_BITS_DEFAULT):
    for hdu in hdul[1:]:
        if not hdu.is_image and {"FLUX", "IVAR", "WAVELENGTH"} <= {c.upper() for c in hdu.columns.names}:
            table = hdu
            break
    data = table.data
    if data is None or len(data) < 1:
        raise SpectrumFormatError(f"{path}: LAMOST table HDU {table.name!r} has no rows")
    cols = {c.upper(): c for c in table.columns.names}

    def col(name):
        return np.asarray(data[cols[name]][0], dtype=np.float64).ravel() if name in cols else None

    wave, flux, ivar = col("WAVELENGTH"), col("FLUX"), col("IVAR")
    if not (wave.shape == flux.shape == ivar.shape):
        raise SpectrumFormatError(f"{path}: WAVELENGTH, FLUX, IVAR lengths differ ({wave.size}, {flux.size}, {ivar.size})")
    header = dict(_hdr(hdul, 0, path))
    for key, value in _hdr(hdul, hdul.index(table), path).items():
        if key not in header and not key.startswith(("TTYPE", "TFORM", "TDIM", "NAXIS", "TUNIT", "XTENSION", "PCOUNT", "GCOUNT", "TFIELDS")):
            header[key] = value
    if not bool(header.get("VACUUM", True)):
        wave = air_to_vacuum(wave)
    bad = _lamost_bad(col("ANDMASK") if "ANDMASK" in cols else np.zeros(flux.shape), col("ORMASK"), and_bits, or_bits)
    ivar = _clean_ivar(flux, ivar, bad)
    order = np.argsort(wave, kind="stable")
    return Spectrum(wave[order], flux[order], ivar[order], _lamost_meta(header, path, "lamost_table"))


def _read_lamost(hdul, path, **kwargs):
    layout = detect_layout(hdul)
    if layout == "lamost_image":
        return _read_lamost_image(hdul, path, **kwargs)
    if layout == "lamost_table":
        return _read_lamost_table(hdul, path, **kwargs)
    raise SpectrumFormatError(f"{path}: not a LAMOST spectrum (layout {layout or 'unknown'})")


def read_lamost(path, **kwargs):
    spec = read_spectrum(path, **kwargs) if isinstance(path, (str, os.PathLike)) else _read_lamost(path, "<HDUList>", **kwargs)
    if spec.meta.get("survey") != "lamost":
        raise SpectrumFormatError(f"{path}: not a LAMOST spectrum (layout {spec.meta.get('layout')})")
    return spec


read_lamost.__doc__ = """Read a LAMOST LRS spectrum (DR1-DR7 image or DR8+ table layout).

Parameters
----------
path : str or Path
and_bits, or_bits : int
    ANDMASK / ORMASK bits that make a pixel bad (defaults in
    :mod:`cannonade.spectra.surveys`: any ANDMASK bit; ORMASK BADCCD|NODATA). 0 disables.

Returns
-------
Spectrum
    ``meta['redshift']`` is the header's Z; ``meta['rv'] = c z``; ``meta['snr']`` is SN_G.
"""


# ---------------------------------------------------------------------------
# APOGEE


def _apogee_star_meta(header, path, layout):
    obj = header.get("OBJID", header.get("OBJ", header.get("APOGEE_ID", "")))
    meta = _std_meta("apogee", layout, path, obj, header.get("RA"), header.get("DEC"), header.get("SNR"), 0.0, header.get("VHELIO"), header)
    starflag = header.get("STARFLAG")
    meta["starflag"] = int(starflag) if isinstance(starflag, (int, np.integer)) else 0
    meta["starflag_reject"] = bool(meta["starflag"] & surveys.APOGEE_STARFLAG_REJECT)
    meta["rv_err"] = _float(header.get("VERR"))
    return meta


def _rows(arr):
    arr = np.asarray(arr)
    return arr[None, :] if arr.ndim == 1 else arr


def _read_apstar(hdul, path, row=0, pixmask_bits=surveys.APOGEE_PIXMASK_DEFAULT):
    h0 = _hdr(hdul, 0, path)
    h1 = _hdr(hdul, 1, path)
    flux_all, err_all, mask_all = (_rows(hdul[i].data) for i in (1, 2, 3))
    nrow, npix = flux_all.shape
    if err_all.shape != flux_all.shape or mask_all.shape != flux_all.shape:
        raise SpectrumFormatError(f"{path}: apStar HDU1-3 shapes differ ({flux_all.shape}, {err_all.shape}, {mask_all.shape})")
    if not (-nrow <= row < nrow):
        raise SpectrumFormatError(f"{path}: apStar has {nrow} row(s) (combined then visits); row {row} does not exist")
    wave = _log_linear_wavelength(h1 if "CRVAL1" in h1 else h0, npix, path)
    flux = flux_all[row].astype(np.float64)
    bad = (mask_all[row].astype(np.int64) & int(pixmask_bits)) != 0
    ivar = _ivar_from_error(flux, err_all[row], bad, bad_error=surveys.APOGEE_BAD_ERROR)
    meta = _apogee_star_meta(h0, path, "apstar")
    meta["row"] = int(row % nrow)
    nvis = int(h0.get("NVISITS", 1) or 1)
    meta["n_rows"] = nrow
    # rows: 0 and 1 combined spectra (only one row when a single visit), then the visits
    n_comb = nrow - nvis if nvis > 1 and nrow > nvis else nrow
    meta["is_visit"] = bool(meta["row"] >= n_comb)
    if meta["is_visit"]:
        k = meta["row"] - n_comb + 1
        meta["visit"] = k
        meta["snr"] = _float(h0.get(f"SNRVIS{k}", meta["snr"]))
    return Spectrum(wave, flux, ivar, meta)


read_apstar = _with_hdul(_read_apstar)
read_apstar.__doc__ = """Read one row of an APOGEE apStar file (HDU1 flux, HDU2 error, HDU3 pixel mask).

Parameters
----------
path : str or Path
row : int
    0 (default) = the first combined spectrum; with several visits rows 0-1 are
    the two combined spectra and rows 2.. the visits (all in the rest frame).
pixmask_bits : int
    APOGEE_PIXMASK bits that make a pixel bad (default
    :data:`cannonade.spectra.surveys.APOGEE_PIXMASK_DEFAULT`).

Returns
-------
Spectrum
    ``meta['redshift'] = 0`` (apStar spectra are already rest frame); ``meta['rv']``
    is VHELIO; ``meta['starflag_reject']`` tells whether a Nandakumar+2022 STARFLAG bit is set.
"""


def read_apstar_visits(path, pixmask_bits=surveys.APOGEE_PIXMASK_DEFAULT):
    """All visit spectra of an apStar file (an empty list for a single-visit file).

    Returns
    -------
    list of Spectrum
    """
    hdul = _open_fits(path)
    try:
        nrow = _rows(hdul[1].data).shape[0]
        nvis = int(_hdr(hdul, 0, str(path)).get("NVISITS", 1) or 1)
        if nvis <= 1 or nrow <= nvis:
            return []
        return [_read_apstar(hdul, str(path), row=r, pixmask_bits=pixmask_bits) for r in range(nrow - nvis, nrow)]
    finally:
        hdul.close()


def _read_aspcapstar(hdul, path):
    h0, h1 = _hdr(hdul, 0, path), _hdr(hdul, 1, path)
    flux = np.asarray(hdul[1].data, dtype=np.float64).ravel()
    err = np.asarray(hdul[2].data, dtype=np.float64).ravel()
    wave = _log_linear_wavelength(h1 if "CRVAL1" in h1 else h0, flux.size, path)
    # zero flux *and* zero error is ASPCAP's padding of chip gaps / rejected pixels
    bad = (flux <= 0) | (err <= 0)
    ivar = _ivar_from_error(flux, err, bad, bad_error=surveys.APOGEE_BAD_ERROR)
    meta = _apogee_star_meta(h0, path, "aspcapstar")
    meta["normalised"] = True
    if len(hdul) > 4 and not hdul[4].is_image and hdul[4].data is not None and len(hdul[4].data):
        rec = hdul[4].data[0]
        names = {c.upper(): c for c in hdul[4].columns.names}
        if "PARAM" in names:
            params = np.asarray(rec[names["PARAM"]], dtype=np.float64).ravel()
            for name, value in zip(surveys.ASPCAP_PARAM_NAMES, params):
                meta[f"aspcap_{name.lower()}"] = _float(value)  # -9999 -> NaN (missing)
        for key in ("STARFLAG", "ASPCAPFLAG", "ANDFLAG"):
            if key in names:
                meta[key.lower()] = int(rec[names[key]])
        meta["starflag_reject"] = bool(meta.get("starflag", 0) & surveys.APOGEE_STARFLAG_REJECT)
        for key in ("SNR", "VHELIO"):
            if key in names and not math.isfinite(meta["snr" if key == "SNR" else "rv"]):
                meta["snr" if key == "SNR" else "rv"] = _float(rec[names[key]])
        if not meta["obj_id"] and "APOGEE_ID" in names:
            meta["obj_id"] = str(rec[names["APOGEE_ID"]]).strip()
    return Spectrum(wave, flux, ivar, meta)


read_aspcapstar = _with_hdul(_read_aspcapstar)
read_aspcapstar.__doc__ = """Read an APOGEE aspcapStar file (continuum-normalised flux, HDU1; error, HDU2).

Zero flux / zero error pixels (ASPCAP padding) get ivar = 0. ASPCAP parameters
from the PARAM vector are put in ``meta['aspcap_teff']`` etc., -9999 -> NaN.
``meta['normalised']`` is True.
"""


def _read_apvisit(hdul, path, pixmask_bits=surveys.APOGEE_PIXMASK_DEFAULT):
    h0 = _hdr(hdul, 0, path)
    flux, err, mask, wave = (np.asarray(hdul[i].data) for i in (1, 2, 3, 4))
    if not (flux.shape == err.shape == mask.shape == wave.shape):
        raise SpectrumFormatError(f"{path}: apVisit HDU1-4 shapes differ")
    wave = wave.astype(np.float64).ravel()
    order = np.argsort(wave, kind="stable")  # chips run red -> blue and decreasing in each chip
    flux = flux.astype(np.float64).ravel()[order]
    bad = (mask.astype(np.int64).ravel()[order] & int(pixmask_bits)) != 0
    ivar = _ivar_from_error(flux, err.astype(np.float64).ravel()[order], bad, bad_error=surveys.APOGEE_BAD_ERROR)
    vrad = _float(h0.get("VRAD"))  # observed Doppler shift of this visit
    meta = _std_meta("apogee", "apvisit", path, h0.get("OBJID", ""), h0.get("RA"), h0.get("DEC"), h0.get("SNR"),
                     rv_to_redshift(vrad) if math.isfinite(vrad) else math.nan, h0.get("VHELIO"), h0)
    starflag = h0.get("STARFLAG")
    meta["starflag"] = int(starflag) if isinstance(starflag, (int, np.integer)) else 0
    meta["starflag_reject"] = bool(meta["starflag"] & surveys.APOGEE_STARFLAG_REJECT)
    meta["rv_err"] = _float(h0.get("VRADERR"))
    return Spectrum(wave[order], flux, ivar, meta)


read_apvisit = _with_hdul(_read_apvisit)
read_apvisit.__doc__ = """Read an APOGEE apVisit file: the three chips (HDU1 flux, HDU2 error, HDU3 mask,
HDU4 wavelength) joined and sorted by wavelength (observed frame).

``meta['redshift']`` is the Doppler redshift of VRAD (so dividing by 1+z gives the
rest frame); ``meta['rv']`` is VHELIO.
"""


_READERS_APOGEE = {"apstar": _read_apstar, "aspcapstar": _read_aspcapstar, "apvisit": _read_apvisit}


# ---------------------------------------------------------------------------
# GALAH

_GALAH_NAME = re.compile(r"^(\d{15})([1-4])$")
_GALAH_CCD_CENTRES = (4800.0, 5760.0, 6605.0, 7735.0)  # air Angstrom


def _read_galah_ccd(hdul, path, normalised=False, vacuum=True):
    h = _hdr(hdul, 0, path)
    try:
        flux_ext = hdul["normalized"] if normalised else hdul[0]
        rel = np.asarray(hdul["relative_error"].data, dtype=np.float64)
    except KeyError as exc:
        raise SpectrumFormatError(f"{path}: GALAH file lacks extension {exc}") from None
    flux = np.asarray(flux_ext.data, dtype=np.float64)
    npix = flux.size
    wave_air = _header_axis(h, npix, path, "linear wavelength solution for a GALAH file")  # barycentric, air
    wave = air_to_vacuum(wave_air) if vacuum else wave_air
    sigma = np.abs(rel * flux)  # relative_error is sigma / flux
    ivar = _ivar_from_error(flux, sigma)
    stem = Path(str(path)).stem
    m = _GALAH_NAME.match(stem)
    if m:
        sobject_id, ccd = m.group(1), int(m.group(2))
    else:  # not a standard name: CCD from the wavelength, id from the header
        ccd = int(np.argmin([abs(np.mean(wave_air) - c) for c in _GALAH_CCD_CENTRES])) + 1
        sobject_id = str(h.get("GAIA_ID", h.get("OBJ_NAME", stem))).strip()
    ra, dec = _float(h.get("RA_ICRS")), _float(h.get("DEC_ICRS"))
    if not (math.isfinite(ra) and math.isfinite(dec)) or (ra == 0.0 and dec == 0.0):
        ra, dec = _float(h.get("RA_OBS")), _float(h.get("DEC_OBS"))  # known bug: ICRS is 0 when no Gaia id
    if ra == 0.0 and dec == 0.0:  # no position at all (e.g. the solar spectrum 'Vesta/Sun')
        ra, dec = math.nan, math.nan
    rv = _float(h.get("RVCOM"))
    if not math.isfinite(rv):
        rv = _float(h.get("RV"))
    # wavelengths are barycentric but not shifted by the star's RV
    z = rv_to_redshift(rv) if math.isfinite(rv) else math.nan
    meta = _std_meta("galah", "galah_ccd", path, sobject_id, ra, dec, h.get("SNR"), z, rv, h)
    meta.update(ccd=ccd, sobject_id=sobject_id, normalised=bool(normalised), air_to_vacuum=bool(vacuum),
                rv_err=_float(h.get("E_RVCOM")))
    return Spectrum(wave, flux, ivar, meta)


read_galah_ccd = _with_hdul(_read_galah_ccd)
read_galah_ccd.__doc__ = """Read one GALAH per-CCD file (``<sobject_id><ccd>.fits``).

Parameters
----------
path : str or Path
normalised : bool
    False (default): the fluxed primary HDU; True: the pipeline-normalised
    ``normalized`` extension. sigma = ``relative_error`` x flux either way.
vacuum : bool
    Convert the (air) wavelengths to vacuum (default True).

Returns
-------
Spectrum
    ``meta['ccd']`` (1-4), ``meta['sobject_id']``; ``meta['rv']`` = RVCOM and
    ``meta['redshift']`` its Doppler redshift (the files are barycentric but not RV-shifted).
"""


def read_galah_star(sobject_id_or_path_glob, directory=".", normalised=False, vacuum=True, require_all=True):
    """Join the four CCD files of one GALAH star into one spectrum.

    Parameters
    ----------
    sobject_id_or_path_glob : str or int
        A 15-digit sobject_id (files ``<directory>/<id>[1-4].fits``), a glob
        pattern, or the path of one CCD file (its siblings are found beside it).
    directory : str or Path
        Where to look for a bare sobject_id.
    normalised, vacuum : bool
        As :func:`read_galah_ccd`.
    require_all : bool
        Raise if fewer than four CCDs are found (default True).

    Returns
    -------
    Spectrum
        Pixels of all CCDs sorted by wavelength (gaps between CCDs are simply
        absent); meta from the green CCD 2 (the S/N Nandakumar+2022 cuts on),
        plus ``ccds`` and ``snr_ccd1``..``snr_ccd4``.
    """
    key = str(sobject_id_or_path_glob)
    if re.fullmatch(r"\d{15}", key):
        paths = sorted(_glob.glob(os.path.join(str(directory), f"{key}[1-4].fits")))
    elif any(ch in key for ch in "*?["):
        paths = sorted(_glob.glob(key))
    else:
        p = Path(key)
        m = _GALAH_NAME.match(p.stem)
        if not m:
            raise SpectrumFormatError(f"{key}: not a GALAH sobject_id, glob or <sobject_id><ccd>.fits path")
        paths = sorted(_glob.glob(str(p.with_name(f"{m.group(1)}[1-4]{p.suffix}"))))
    if not paths:
        raise SpectrumFormatError(f"{key}: no GALAH CCD files found")
    specs = [read_galah_ccd(p, normalised=normalised, vacuum=vacuum) for p in paths]
    ids = {s.meta["sobject_id"] for s in specs}
    if len(ids) != 1:
        raise SpectrumFormatError(f"{key}: CCD files of different stars {sorted(ids)}")
    ccds = sorted(s.meta["ccd"] for s in specs)
    if len(set(ccds)) != len(ccds):
        raise SpectrumFormatError(f"{key}: duplicated CCDs {ccds}")
    if require_all and ccds != [1, 2, 3, 4]:
        raise SpectrumFormatError(f"{key}: found CCDs {ccds}, need all four (require_all=False to allow fewer)")
    specs.sort(key=lambda s: s.meta["ccd"])
    wave = np.concatenate([s.wavelength for s in specs])
    order = np.argsort(wave, kind="stable")
    ref = next((s for s in specs if s.meta["ccd"] == 2), specs[0])
    meta = dict(ref.meta)
    meta.update(
        ccds=ccds,
        layout="galah_star",
        source_file=";".join(str(p) for p in paths),
        **{f"snr_ccd{s.meta['ccd']}": s.meta["snr"] for s in specs},
    )
    meta.pop("ccd", None)
    return Spectrum(
        wave[order],
        np.concatenate([s.flux for s in specs])[order],
        np.concatenate([s.ivar for s in specs])[order],
        meta,
    )


_READERS = {
    "lamost_image": _read_lamost_image,
    "lamost_table": _read_lamost_table,
    "galah_ccd": _read_galah_ccd,
    **_READERS_APOGEE,
}
