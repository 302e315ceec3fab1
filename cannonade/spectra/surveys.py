"""Survey constants: pixel-mask bits, star-flag bits and common wavelength grids.

Everything survey-specific that is *data* (not code) lives here, so readers
(:mod:`cannonade.spectra.readers`), preprocessing and the store agree on one definition.

Wavelengths are vacuum Angstrom throughout.
"""

from __future__ import annotations

import hashlib

import numpy as np

from cannonade.exceptions import ConfigError

#: speed of light in km/s (for RV <-> redshift)
C_KMS = 299792.458

# ---------------------------------------------------------------------------
# LAMOST LRS and/or pixel masks (LAMOST data-release documentation; the same
# bits in the DR1-DR7 image rows 4-5 and the DR8+ ANDMASK/ORMASK columns).
LAMOST_MASK_BITS = {
    "BADCCD": 0,  # bad pixel on CCD
    "BADPROFILE": 1,  # bad profile in extraction
    "NOSKY": 2,  # no sky information at this wavelength
    "BRIGHTSKY": 3,  # sky level too high
    "BADCENTER": 4,  # fibre trace out of the CCD
    "NODATA": 5,  # no good data
}
#: ANDMASK bits that make a pixel bad: any of them (bad in *every* exposure)
LAMOST_AND_BITS_DEFAULT = sum(1 << b for b in LAMOST_MASK_BITS.values())
#: ORMASK bits that make a pixel bad: bad CCD or no data in *any* exposure
LAMOST_OR_BITS_DEFAULT = (1 << LAMOST_MASK_BITS["BADCCD"]) | (1 << LAMOST_MASK_BITS["NODATA"])

# ---------------------------------------------------------------------------
# APOGEE (SDSS bitmask documentation, DR13-DR17).
APOGEE_PIXMASK_BITS = {
    "BADPIX": 0,
    "CRPIX": 1,
    "SATPIX": 2,
    "UNFIXABLE": 3,
    "BADDARK": 4,
    "BADFLAT": 5,
    "BADERR": 6,
    "NOSKY": 7,
    "LITTROW_GHOST": 8,
    "PERSIST_HIGH": 9,
    "PERSIST_MED": 10,
    "PERSIST_LOW": 11,
    "SIG_SKYLINE": 12,
    "SIG_TELLURIC": 13,
    "NOT_ENOUGH_PSF": 14,
}
#: pixel bits rejected by default: APOGEE's own "bad pixel" set (BADPIX..NOSKY)
#: plus significant sky lines, as the apogee tools do for combined spectra.
#: Persistence bits are *not* masked per pixel by default (they cover up to 40 %
#: of a blue chip); Nandakumar+2022 §3.2 rejects such stars through STARFLAG.
APOGEE_PIXMASK_DEFAULT = sum(
    1 << APOGEE_PIXMASK_BITS[k]
    for k in ("BADPIX", "CRPIX", "SATPIX", "UNFIXABLE", "BADDARK", "BADFLAT", "BADERR", "NOSKY", "SIG_SKYLINE")
)
#: the pixel-level counterpart of Nandakumar's STARFLAG list (bad pixels and persistence)
APOGEE_PIXMASK_NANDAKUMAR = APOGEE_PIXMASK_DEFAULT | sum(
    1 << APOGEE_PIXMASK_BITS[k] for k in ("PERSIST_HIGH", "PERSIST_MED", "PERSIST_LOW")
)

APOGEE_STARFLAG_BITS = {
    "BAD_PIXELS": 0,
    "COMMISSIONING": 1,
    "BRIGHT_NEIGHBOR": 2,
    "VERY_BRIGHT_NEIGHBOR": 3,
    "LOW_SNR": 4,
    "PERSIST_HIGH": 9,
    "PERSIST_MED": 10,
    "PERSIST_LOW": 11,
    "PERSIST_JUMP_POS": 12,
    "PERSIST_JUMP_NEG": 13,
    "SUSPECT_RV_COMBINATION": 16,
    "SUSPECT_BROAD_LINES": 17,
}
#: STARFLAG bits that reject a spectrum (Nandakumar+2022 §3.2: 0, 3, 4, 9-13, 17)
APOGEE_STARFLAG_REJECT = sum(1 << b for b in (0, 3, 4, 9, 10, 11, 12, 13, 17))

#: errors at or above this are APOGEE's "no data" sentinel (1e10 in DR13)
APOGEE_BAD_ERROR = 1e9

# order of the ASPCAP parameters in the aspcapStar PARAM vector (DR13-DR16)
ASPCAP_PARAM_NAMES = ("TEFF", "LOGG", "VMICRO", "M_H", "C_M", "N_M", "ALPHA_M", "VSINI", "O_M")

#: values at or below this are "missing" sentinels (-9999, -9999.99)
MISSING_SENTINEL = -9998.0

# ---------------------------------------------------------------------------
# Detector regions (vacuum Angstrom) used to split continuum fits.
DETECTOR_REGIONS = {
    # blue and red arms, joined by the pipeline near 5800 A
    "lamost": ((3650.0, 5800.0), (5800.0, 9200.0)),
    # the three APOGEE chips (blue, green, red)
    "apogee": ((15090.0, 15810.0), (15830.0, 16450.0), (16460.0, 17010.0)),
    # the four HERMES CCDs (blue, green, red, IR)
    "galah": ((4700.0, 4920.0), (5640.0, 5890.0), (6470.0, 6750.0), (7570.0, 7900.0)),
}


#: the most pixels a grid may have (= the spectra store's limit, :data:`cannonade.spectra.store.MAX_PIXELS`)
MAX_GRID_PIXELS = 1 << 22


def log_lambda_grid(wmin, wmax, npix):
    """Pixel centres evenly spaced in log10(wavelength).

    Parameters
    ----------
    wmin, wmax : float
        First and last pixel centres (Angstrom).
    npix : int
        Number of pixels.

    Returns
    -------
    wavelength : (npix,) float64
    """
    if not (wmin > 0 and wmax > wmin and np.isfinite(wmax) and 2 <= int(npix) <= MAX_GRID_PIXELS):
        raise ConfigError(f"bad grid: wmin={wmin}, wmax={wmax}, npix={npix} (need 0 < wmin < wmax < inf, "
                          f"2 <= npix <= {MAX_GRID_PIXELS}, the most a spectra store holds)")
    return 10.0 ** np.linspace(np.log10(wmin), np.log10(wmax), int(npix))


def _lamost_grid():
    # LAMOST DR1: COEFF0 = 3.5682, COEFF1 = 1e-4 (log10 A per pixel); 3900 pixels
    # reach 9078 A and stay inside every DR1 spectrum (3904-3909 pixels).
    return 10.0 ** (3.5682 + 1e-4 * np.arange(3900))


def _apogee_grid():
    # the apStar / aspcapStar grid: CRVAL1 = 4.179, CDELT1 = 6e-6, 8575 pixels
    return 10.0 ** (4.179 + 6e-6 * np.arange(8575))


def _galah_grid():
    # four log-linear segments (one per HERMES CCD) with a common step of
    # 4.15e-6 dex (~the native 0.046-0.074 A pixels), inside the vacuum ranges of the CCDs
    step = 4.15e-6
    segments = []
    for lo, hi in ((4716.0, 4902.0), (5650.5, 5873.0), (6480.0, 6735.0), (7588.0, 7885.0)):
        n = int(np.floor(np.log10(hi / lo) / step)) + 1
        segments.append(10.0 ** (np.log10(lo) + step * np.arange(n)))
    return np.concatenate(segments)


_NAMED_GRIDS = {"lamost": _lamost_grid, "apogee": _apogee_grid, "galah": _galah_grid}


def common_grid(name):
    """A named common wavelength grid, or ``"WMIN:WMAX:NPIX"`` (log-linear).

    Parameters
    ----------
    name : str
        ``'lamost'`` (3700-9078 A, 3900 px, 1e-4 dex, the DR1 pixels),
        ``'apogee'`` (15101-16999 A, 8575 px, 6e-6 dex, the apStar pixels),
        ``'galah'`` (four CCD segments, 4.15e-6 dex, ~16 000 px), or
        ``'WMIN:WMAX:NPIX'``.

    Returns
    -------
    wavelength : (n_pixels,) float64, vacuum Angstrom, increasing
    """
    if isinstance(name, np.ndarray):
        return np.asarray(name, dtype=np.float64)
    key = str(name).strip().lower()
    if key in _NAMED_GRIDS:
        return _NAMED_GRIDS[key]()
    parts = key.split(":")
    if len(parts) == 3:
        try:
            wmin, wmax, npix = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            pass
        else:
            try:
                return log_lambda_grid(wmin, wmax, npix)
            except ConfigError as exc:
                raise ConfigError(f"grid {name!r}: {exc}") from None
    raise ConfigError(f"unknown grid {name!r}: use one of {sorted(_NAMED_GRIDS)} or 'WMIN:WMAX:NPIX'")


def grid_key(wavelength):
    """A cache key of a wavelength grid, the same for equal grids whatever array holds them.

    Parameters
    ----------
    wavelength : (n_pixels,) float

    Returns
    -------
    key : tuple
        ``(n_pixels, first, last, sha1 hex digest of the float64 bytes)``.
    w : (n_pixels,) float64, C-contiguous
        The grid as hashed (``wavelength`` itself when it already is one).
    """
    w = np.ascontiguousarray(wavelength, dtype=np.float64)
    return (w.size, float(w[0]) if w.size else None, float(w[-1]) if w.size else None,
            hashlib.sha1(w.tobytes()).hexdigest()), w


def detector_regions(survey):
    """Detector regions ``((wmin, wmax), ...)`` of a survey (vacuum Angstrom)."""
    try:
        return DETECTOR_REGIONS[str(survey).lower()]
    except KeyError:
        raise ConfigError(f"no detector regions for survey {survey!r}: known {sorted(DETECTOR_REGIONS)}") from None
