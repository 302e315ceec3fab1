"""APOGEE spectra: apStar (combined + visit rows), aspcapStar (normalised) and apVisit.

* ``apstar``: HDU1 flux, HDU2 error, HDU3 APOGEE_PIXMASK (integer), log-linear
  ``CRVAL1``/``CDELT1`` wavelengths; rest frame (``redshift = 0``); row 0 is the
  first combined spectrum, rows 2.. the visits (:func:`read_apstar_visits`).
* ``aspcapstar``: like apStar but HDU3 is the float best-fit model and HDU4 a table
  with ``PARAM``; HDU1 is continuum-normalised; zero flux/error is ASPCAP padding.
* ``apvisit``: HDU1 ``(3, 4096)`` and the same-shaped wavelength image in HDU4
  (observed frame; ``redshift`` is the Doppler redshift of ``VRAD``).

``meta['rv']`` is ``VHELIO``; ``meta['starflag_reject']`` tells whether one of the
Nandakumar+2022 STARFLAG bits is set (the cut itself is left to the caller).
"""

from __future__ import annotations

import math

import numpy as np

from cannonade.exceptions import SpectrumFormatError
from cannonade.spectra import surveys
from cannonade.spectra.readers.fits import (
    Loader,
    check_wavelength,
    hdu_image,
    header_of,
    is_image,
    ivar_from_error,
    log_linear_wavelength,
    open_fits,
    std_meta,
    to_float,
    with_hdul,
)
from cannonade.spectra.readers.spectrum import Spectrum, rv_to_redshift

__all__ = ["identify", "load", "read_apstar", "read_apstar_visits", "read_aspcapstar", "read_apvisit", "LOADER"]


# ---------------------------------------------------------------------------
# identify + load


def identify(hdul):
    """The APOGEE layout of an opened file: ``'apstar'``, ``'aspcapstar'``, ``'apvisit'`` or ``''``."""
    if len(hdul) < 4 or not all(is_image(hdul[i]) for i in (1, 2, 3)):
        return ""
    d1, d3 = hdul[1].data, hdul[3].data
    ctype = str(hdul[1].header.get("CTYPE1", "")).upper()
    # apVisit: (3 chips, 4096) rows and a wavelength image in HDU4
    if d1.ndim == 2 and d1.shape[0] == 3 and is_image(hdul[4]) and hdul[4].data.shape == d1.shape and ctype != "LOG-LINEAR":
        return "apvisit"
    if ctype == "LOG-LINEAR" or "CRVAL1" in hdul[1].header:
        # aspcapStar: HDU3 is the (float) best-fit model and a PARAM table follows
        has_param_table = len(hdul) > 4 and not hdul[4].is_image and "PARAM" in {c.upper() for c in hdul[4].columns.names}
        if d3.dtype.kind == "f" and (has_param_table or d1.ndim == 1):
            return "aspcapstar"
        if d3.dtype.kind in "iu":
            return "apstar"
    return ""


def load(hdul, path, layout, **kwargs):
    """Read an opened APOGEE file of the given ``layout`` (keywords as the per-layout readers)."""
    try:
        reader = _READERS[layout]
    except KeyError:
        raise SpectrumFormatError(f"{path}: not an APOGEE spectrum (layout {layout or 'unknown'})") from None
    return reader(hdul, path, **kwargs)


def _apogee_star_meta(header, path, layout):
    obj = header.get("OBJID", header.get("OBJ", header.get("APOGEE_ID", "")))
    meta = std_meta("apogee", layout, path, obj, header.get("RA"), header.get("DEC"), header.get("SNR"), 0.0, header.get("VHELIO"), header)
    starflag = header.get("STARFLAG")
    meta["starflag"] = int(starflag) if isinstance(starflag, (int, np.integer)) else 0
    meta["starflag_reject"] = bool(meta["starflag"] & surveys.APOGEE_STARFLAG_REJECT)
    meta["rv_err"] = to_float(header.get("VERR"))
    return meta


def _rows(arr):
    arr = np.asarray(arr)
    return arr[None, :] if arr.ndim == 1 else arr


def identify_hdus(hdus):
    """:func:`identify` from the parsed headers alone (:func:`~cannonade.spectra.readers.fits.check_hdus`),
    for apStar files (HDU1-3 images, HDU1 ``CTYPE1 = 'LOG-LINEAR'``, an integer HDU3): ``'apstar'``
    or ``''`` (aspcapStar, apVisit and anything unusual go to :func:`identify` on the opened file)."""
    if len(hdus) < 4:
        return ""
    for h, _, size in hdus[1:4]:
        if h.get("XTENSION") != "IMAGE" or not size or h.get("ZIMAGE") is True:
            return ""
    if str(hdus[1][0].get("CTYPE1", "")).upper() != "LOG-LINEAR":
        return ""
    h3 = hdus[3][0]
    # an integer mask as astropy reads it (a BSCALE would make it float: identify decides then)
    if h3.get("BITPIX", 0) > 0 and h3.get("BSCALE", 1) == 1:
        return "apstar"
    return ""


def load_hdus(raw, hdus, path, layout="apstar", row=0, pixmask_bits=surveys.APOGEE_PIXMASK_DEFAULT):
    """Read an apStar file straight from its bytes (see :func:`identify_hdus`): the same spectrum
    as :func:`read_apstar`, without astropy (which also reads every table and sky HDU, most of
    the cost of reading the file)."""
    if layout != "apstar":
        raise SpectrumFormatError(f"{path}: not an APOGEE apStar spectrum (layout {layout or 'unknown'})")
    arrays = (_rows(hdu_image(raw, hdus[k][0], hdus[k][1], path, k, as_stored=True)) for k in (1, 2, 3))
    return _apstar_row(hdus[0][0], hdus[1][0], *arrays, path, row, pixmask_bits)


def _read_apstar(hdul, path, row=0, pixmask_bits=surveys.APOGEE_PIXMASK_DEFAULT):
    arrays = (_rows(hdul[i].data) for i in (1, 2, 3))
    return _apstar_row(header_of(hdul, 0, path), header_of(hdul, 1, path), *arrays, path, row, pixmask_bits)


def _apstar_row(h0, h1, flux_all, err_all, mask_all, path, row, pixmask_bits):
    """Row ``row`` of an apStar file from its primary and HDU1 headers and HDU1-3 arrays."""
    nrow, npix = flux_all.shape
    if err_all.shape != flux_all.shape or mask_all.shape != flux_all.shape:
        raise SpectrumFormatError(f"{path}: apStar HDU1-3 shapes differ ({flux_all.shape}, {err_all.shape}, {mask_all.shape})")
    if not (-nrow <= row < nrow):
        raise SpectrumFormatError(f"{path}: apStar has {nrow} row(s) (combined then visits); row {row} does not exist")
    wave = log_linear_wavelength(h1 if "CRVAL1" in h1 else h0, npix, path)
    flux = flux_all[row].astype(np.float64)
    bad = (mask_all[row].astype(np.int64) & int(pixmask_bits)) != 0
    ivar = ivar_from_error(flux, err_all[row], bad, bad_error=surveys.APOGEE_BAD_ERROR)
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
        meta["snr"] = to_float(h0.get(f"SNRVIS{k}", meta["snr"]))
    return Spectrum(wave, flux, ivar, meta)


read_apstar = with_hdul(_read_apstar)
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
    hdul = open_fits(path)
    try:
        nrow = _rows(hdul[1].data).shape[0]
        nvis = int(header_of(hdul, 0, str(path)).get("NVISITS", 1) or 1)
        if nvis <= 1 or nrow <= nvis:
            return []
        return [_read_apstar(hdul, str(path), row=r, pixmask_bits=pixmask_bits) for r in range(nrow - nvis, nrow)]
    finally:
        hdul.close()


def _read_aspcapstar(hdul, path):
    h0, h1 = header_of(hdul, 0, path), header_of(hdul, 1, path)
    flux = np.asarray(hdul[1].data, dtype=np.float64).ravel()
    err = np.asarray(hdul[2].data, dtype=np.float64).ravel()
    wave = log_linear_wavelength(h1 if "CRVAL1" in h1 else h0, flux.size, path)
    # zero flux *and* zero error is ASPCAP's padding of chip gaps / rejected pixels
    bad = (flux <= 0) | (err <= 0)
    ivar = ivar_from_error(flux, err, bad, bad_error=surveys.APOGEE_BAD_ERROR)
    meta = _apogee_star_meta(h0, path, "aspcapstar")
    meta["normalised"] = True
    if len(hdul) > 4 and not hdul[4].is_image and hdul[4].data is not None and len(hdul[4].data):
        rec = hdul[4].data[0]
        names = {c.upper(): c for c in hdul[4].columns.names}
        if "PARAM" in names:
            params = np.asarray(rec[names["PARAM"]], dtype=np.float64).ravel()
            for name, value in zip(surveys.ASPCAP_PARAM_NAMES, params):
                meta[f"aspcap_{name.lower()}"] = to_float(value)  # -9999 -> NaN (missing)
        for key in ("STARFLAG", "ASPCAPFLAG", "ANDFLAG"):
            if key in names:
                meta[key.lower()] = int(rec[names[key]])
        meta["starflag_reject"] = bool(meta.get("starflag", 0) & surveys.APOGEE_STARFLAG_REJECT)
        for key in ("SNR", "VHELIO"):
            if key in names and not math.isfinite(meta["snr" if key == "SNR" else "rv"]):
                meta["snr" if key == "SNR" else "rv"] = to_float(rec[names[key]])
        if not meta["obj_id"] and "APOGEE_ID" in names:
            meta["obj_id"] = str(rec[names["APOGEE_ID"]]).strip()
    return Spectrum(wave, flux, ivar, meta)


read_aspcapstar = with_hdul(_read_aspcapstar)
read_aspcapstar.__doc__ = """Read an APOGEE aspcapStar file (continuum-normalised flux, HDU1; error, HDU2).

Zero flux / zero error pixels (ASPCAP padding) get ivar = 0. ASPCAP parameters
from the PARAM vector are put in ``meta['aspcap_teff']`` etc., -9999 -> NaN.
``meta['normalised']`` is True.
"""


def _read_apvisit(hdul, path, pixmask_bits=surveys.APOGEE_PIXMASK_DEFAULT):
    h0 = header_of(hdul, 0, path)
    flux, err, mask, wave = (np.asarray(hdul[i].data) for i in (1, 2, 3, 4))
    if not (flux.shape == err.shape == mask.shape == wave.shape):
        raise SpectrumFormatError(f"{path}: apVisit HDU1-4 shapes differ")
    wave = wave.astype(np.float64).ravel()
    order = np.argsort(wave, kind="stable")  # chips run red -> blue and decreasing in each chip
    check_wavelength(wave[order], path, "the apVisit wavelength image (HDU4)")
    flux = flux.astype(np.float64).ravel()[order]
    bad = (mask.astype(np.int64).ravel()[order] & int(pixmask_bits)) != 0
    ivar = ivar_from_error(flux, err.astype(np.float64).ravel()[order], bad, bad_error=surveys.APOGEE_BAD_ERROR)
    vrad = to_float(h0.get("VRAD"))  # observed Doppler shift of this visit
    meta = std_meta("apogee", "apvisit", path, h0.get("OBJID", ""), h0.get("RA"), h0.get("DEC"), h0.get("SNR"),
                     rv_to_redshift(vrad) if math.isfinite(vrad) else math.nan, h0.get("VHELIO"), h0)
    starflag = h0.get("STARFLAG")
    meta["starflag"] = int(starflag) if isinstance(starflag, (int, np.integer)) else 0
    meta["starflag_reject"] = bool(meta["starflag"] & surveys.APOGEE_STARFLAG_REJECT)
    meta["rv_err"] = to_float(h0.get("VRADERR"))
    return Spectrum(wave[order], flux, ivar, meta)


read_apvisit = with_hdul(_read_apvisit)
read_apvisit.__doc__ = """Read an APOGEE apVisit file: the three chips (HDU1 flux, HDU2 error, HDU3 mask,
HDU4 wavelength) joined and sorted by wavelength (observed frame).

``meta['redshift']`` is the Doppler redshift of VRAD (so dividing by 1+z gives the
rest frame); ``meta['rv']`` is VHELIO.
"""


_READERS = {"apstar": _read_apstar, "aspcapstar": _read_aspcapstar, "apvisit": _read_apvisit}

LOADER = Loader("apogee", identify, load, "APOGEE apStar/aspcapStar/apVisit", identify_hdus=identify_hdus, load_hdus=load_hdus)
