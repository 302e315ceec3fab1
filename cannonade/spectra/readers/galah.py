"""GALAH per-CCD spectra (``<sobject_id><ccd>.fits``, or gzipped ``.fits.gz``) and four-CCD stars.

* ``galah_ccd``: 1-D primary flux + ``normalized`` and ``relative_error``
  extensions; linear ``CRVAL1``/``CDELT1`` air wavelengths (converted to vacuum);
  sigma = ``relative_error`` x flux. The files are barycentric but not RV-shifted:
  ``meta['redshift']`` is the Doppler redshift of ``RVCOM``.
* :func:`read_galah_star` joins a star's four CCD files into one spectrum.
"""

from __future__ import annotations

import glob
import math
import os
import re
from pathlib import Path

import numpy as np

from cannonade.exceptions import SpectrumFormatError
from cannonade.spectra.linelists import air_to_vacuum
from cannonade.spectra.readers.fits import (
    Loader,
    hdu_image,
    header_axis,
    header_of,
    ivar_from_error,
    std_meta,
    to_float,
    with_hdul,
)
from cannonade.spectra.readers.spectrum import Spectrum, rv_to_redshift

__all__ = ["identify", "identify_hdus", "load", "load_hdus", "read_galah_ccd", "read_galah_star", "galah_ccd_name", "LOADER"]

_GALAH_NAME = re.compile(r"^(\d{15})([1-4])$")
_FITS_ENDINGS = (".fits.gz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts")  # longest first


def _split_name(path):
    """(stem, ending) of a file name: ``'1401010001010011.fits.gz'`` -> ``('1401010001010011', '.fits.gz')``."""
    name = Path(str(path)).name
    for ending in _FITS_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)], name[-len(ending) :]
    p = Path(name)
    return p.stem, p.suffix


def galah_ccd_name(path):
    """``(sobject_id, ccd)`` of a GALAH per-CCD file name, or None for any other name.

    The one place the ``<sobject_id><ccd>.fits`` naming (also ``.fit``/``.fts`` and their
    ``.gz``) is parsed: ``'/d/1401010001010013.fits.gz'`` -> ``('140101000101001', 3)``.
    Used to group a star's CCD files before they are read (``cannonade ingest --join star``);
    recognising a file's *layout* never relies on its name.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    (str, int) or None
    """
    stem, ending = _split_name(path)
    m = _GALAH_NAME.match(stem)
    if m is None or ending.lower() not in _FITS_ENDINGS:
        return None
    return m.group(1), int(m.group(2))


def _ccd_files(directory, sobject_id, endings):
    """The existing ``<directory>/<sobject_id><ccd><ending>`` files, sorted (stat calls, no directory listing)."""
    return sorted(f for ending in endings for ccd in "1234"
                  if os.path.isfile(f := os.path.join(str(directory), f"{sobject_id}{ccd}{ending}")))


_GALAH_CCD_CENTRES = (4800.0, 5760.0, 6605.0, 7735.0)  # air Angstrom


def identify(hdul):
    """``'galah_ccd'`` for a GALAH per-CCD file (1-D primary, ``normalized`` + ``relative_error``), else ``''``."""
    names = [h.name.lower() for h in hdul]
    d0 = hdul[0].data
    if d0 is not None and d0.ndim == 1 and "relative_error" in names and "normalized" in names:
        return "galah_ccd"
    return ""


def load(hdul, path, layout, **kwargs):
    """Read an opened GALAH CCD file (``normalised=``, ``vacuum=`` as :func:`read_galah_ccd`)."""
    if layout != "galah_ccd":
        raise SpectrumFormatError(f"{path}: not a GALAH CCD spectrum (layout {layout or 'unknown'})")
    return _read_galah_ccd(hdul, path, **kwargs)


def _extensions(hdus):
    """{lower-case EXTNAME: index} of check_hdus' list (the first of a name, as astropy's ``hdul[name]``)."""
    out = {}
    for k, (h, _, _) in enumerate(hdus):
        name = h.get("EXTNAME")
        if k and isinstance(name, str):
            out.setdefault(name.strip().lower(), k)
    return out


def identify_hdus(hdus):
    """:func:`identify` from the parsed headers alone (:func:`~cannonade.spectra.readers.fits.check_hdus`)."""
    h0 = hdus[0][0]
    names = _extensions(hdus)
    if h0.get("NAXIS") == 1 and "relative_error" in names and "normalized" in names:
        return "galah_ccd"
    return ""


def load_hdus(raw, hdus, path, layout="galah_ccd", normalised=False, vacuum=True):
    """Read a GALAH CCD file straight from its bytes (see :func:`identify_hdus`): the same
    spectrum as :func:`read_galah_ccd`, without astropy's header parsing (most of its cost)."""
    if layout != "galah_ccd":
        raise SpectrumFormatError(f"{path}: not a GALAH CCD spectrum (layout {layout or 'unknown'})")
    names = _extensions(hdus)

    def image(k):
        h, start, _ = hdus[k]
        return hdu_image(raw, h, start, path, k).ravel()

    flux = image(names["normalized"] if normalised else 0)
    return _galah_ccd(hdus[0][0], flux, image(names["relative_error"]), path, normalised, vacuum)


LOADER = Loader("galah", identify, load, "GALAH per-CCD", identify_hdus=identify_hdus, load_hdus=load_hdus)


def _read_galah_ccd(hdul, path, normalised=False, vacuum=True):
    h = header_of(hdul, 0, path)
    try:
        flux_ext = hdul["normalized"] if normalised else hdul[0]
        rel = np.asarray(hdul["relative_error"].data, dtype=np.float64)
    except KeyError as exc:
        raise SpectrumFormatError(f"{path}: GALAH file lacks extension {exc}") from None
    return _galah_ccd(h, np.asarray(flux_ext.data, dtype=np.float64), rel, path, normalised, vacuum)


def _galah_ccd(h, flux, rel, path, normalised, vacuum):
    """A GALAH CCD's primary header dict, flux and relative error (NAXIS1,) -> Spectrum."""
    npix = flux.size
    wave_air = header_axis(h, npix, path, "linear wavelength solution for a GALAH file")  # barycentric, air
    wave = air_to_vacuum(wave_air) if vacuum else wave_air
    sigma = np.abs(rel * flux)  # relative_error is sigma / flux
    ivar = ivar_from_error(flux, sigma)
    stem = _split_name(path)[0]
    m = _GALAH_NAME.match(stem)
    if m:
        sobject_id, ccd = m.group(1), int(m.group(2))
    else:  # not a standard name: CCD from the wavelength, id from the header
        ccd = int(np.argmin([abs(np.mean(wave_air) - c) for c in _GALAH_CCD_CENTRES])) + 1
        sobject_id = str(h.get("GAIA_ID", h.get("OBJ_NAME", stem))).strip()
    ra, dec = to_float(h.get("RA_ICRS")), to_float(h.get("DEC_ICRS"))
    if not (math.isfinite(ra) and math.isfinite(dec)) or (ra == 0.0 and dec == 0.0):
        ra, dec = to_float(h.get("RA_OBS")), to_float(h.get("DEC_OBS"))  # known bug: ICRS is 0 when no Gaia id
    if ra == 0.0 and dec == 0.0:  # no position at all (e.g. the solar spectrum 'Vesta/Sun')
        ra, dec = math.nan, math.nan
    rv = to_float(h.get("RVCOM"))
    if not math.isfinite(rv):
        rv = to_float(h.get("RV"))
    # wavelengths are barycentric but not shifted by the star's RV
    z = rv_to_redshift(rv) if math.isfinite(rv) else math.nan
    meta = std_meta("galah", "galah_ccd", path, sobject_id, ra, dec, h.get("SNR"), z, rv, h)
    meta.update(ccd=ccd, sobject_id=sobject_id, normalised=bool(normalised), air_to_vacuum=bool(vacuum),
                rv_err=to_float(h.get("E_RVCOM")))
    return Spectrum(wave, flux, ivar, meta)


read_galah_ccd = with_hdul(_read_galah_ccd)
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
        A 15-digit sobject_id (files ``<directory>/<id>[1-4].fits`` or ``.fits.gz``), a glob
        pattern, or the path of one CCD file (its siblings, with the same ending, are found beside it).
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
        paths = _ccd_files(directory, key, (".fits", ".fits.gz"))
    elif any(ch in key for ch in "*?["):
        paths = sorted(glob.glob(key))
    else:
        p = Path(key)
        stem, ending = _split_name(p)
        m = _GALAH_NAME.match(stem)
        if not m:
            raise SpectrumFormatError(f"{key}: not a GALAH sobject_id, glob or <sobject_id><ccd>.fits path")
        paths = _ccd_files(os.path.dirname(key), m.group(1), (ending,))
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
