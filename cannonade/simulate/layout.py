"""The mock survey's file layout: catalogue schemas, provenance and helpers shared by the
per-survey writers (:mod:`cannonade.simulate.lamost_files`, :mod:`~cannonade.simulate.galah_files`,
:mod:`~cannonade.simulate.apogee_files`).

A schema is a list of ``(name, kind, width)`` as taken by
:class:`cannonade.simulate.writers.FitsTableWriter`.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from cannonade.simulate.lines import ABUNDANCE_ELEMENTS
from cannonade.simulate.catalogues import APOGEE_ELEMENTS
from cannonade.simulate.realism import REFERENCE_ERROR_LABELS, SYSTEMATIC_LABELS
from cannonade.simulate.systematics import CROSS_LABELS

__all__ = [
    "ORIGIN",
    "BATCH",
    "truth_columns",
    "OBS_COLUMNS",
    "LAMOST_COLUMNS",
    "galah_columns",
    "apogee_columns",
    "GAIA_COLUMNS",
    "subset",
    "snr_from_mag",
    "band_snr",
    "mjd_to_iso",
    "obs_append",
]

BATCH = 128  # spectra per vectorised synthesis batch
ORIGIN = "cannonade.simulate (mock survey)"


# ----------------------------------------------------------------------------- catalogue schemas
def truth_columns(apogee_galah=False):
    """Schema of ``truth/stars.fits`` (one row per star).

    ``ref_sys_<label>``: the reference-label systematic applied to that GALAH label (dex, before any
    corruption); ``ref_err_<label>``: the true 1-sigma error its noise was drawn with (NaN for
    stars outside the reference set; see :mod:`cannonade.simulate.realism`).

    ``apogee_galah=True`` adds ``cluster_name`` (named cluster, '' for none), ``apogee_id`` (the
    APOGEE-style 2MASS id, every star), ``in_apogee``, ``in_galah``, ``galah_exposures`` (GALAH spectra of
    the star: 0, 1, or 2 with a repeat) and ``apogee_sys_<label>``, ``galah_sys_<label>`` for the labels
    of :data:`~cannonade.simulate.systematics.CROSS_LABELS`: each survey's systematic offset (reported −
    true, without noise, flag damage or corruption; NaN where the star is not in that survey).
    """
    cols = [("star_id", "i8", 0), ("population", "str", 7), ("stage", "str", 8), ("cluster_id", "i8", 0),
            ("binary_id", "i8", 0), ("teff", "f8", 0), ("logg", "f8", 0), ("vmic", "f8", 0), ("vbroad", "f8", 0),
            ("fe_h", "f8", 0)]
    cols += [(f"{x.lower()}_fe", "f8", 0) for x in ABUNDANCE_ELEMENTS]
    cols += [("alpha_fe", "f8", 0)]
    cols += [(c, "f8", 0) for c in ("x", "y", "z", "vx", "vy", "vz", "ra", "dec", "distance", "pmra", "pmdec", "rv", "g_mag")]
    cols += [("is_reference", "bool", 0), ("labels_corrupted", "bool", 0), ("corruption", "str", 5)]
    cols += [(f"ref_sys_{c}", "f8", 0) for c in SYSTEMATIC_LABELS]
    cols += [(f"ref_err_{c}", "f8", 0) for c in REFERENCE_ERROR_LABELS]
    if apogee_galah:
        cols += [("cluster_name", "str", 12), ("apogee_id", "str", 20), ("in_apogee", "bool", 0), ("in_galah", "bool", 0),
                 ("galah_exposures", "i2", 0)]
        cols += [(f"{s}_sys_{c}", "f8", 0) for s in ("apogee", "galah") for c in CROSS_LABELS]
    return cols


#: ``truth/observations.fits``: one row per spectrum file (APOGEE: per visit). ``calib_rms``: RMS of
#: ln D, the visit's own flux-calibration error; ``sky_line_amp``, ``sky_continuum``: RMS of the
#: residual sky-line peaks / of the residual sky continuum relative to the star's median
#: reference-band continuum (0 where no per-visit effects were applied, e.g. GALAH).
OBS_COLUMNS = [("survey", "str", 6), ("filename", "str", 64), ("obsid", "i8", 0), ("sobject_id", "i8", 0),
                ("apogee_id", "str", 20), ("star_id", "i8", 0), ("visit", "i4", 0), ("ccd", "i2", 0),
                ("snr", "f8", 0), ("rv", "f8", 0), ("calib_rms", "f8", 0), ("sky_line_amp", "f8", 0),
                ("sky_continuum", "f8", 0)]

#: LAMOST LASP-like ``lamost/catalogue.fits``
LAMOST_COLUMNS = [("obsid", "i8", 0), ("designation", "str", 20), ("lmjd", "i4", 0), ("planid", "str", 8),
                   ("spid", "i2", 0), ("fiberid", "i2", 0), ("ra", "f8", 0), ("dec", "f8", 0)] + [
    (f"snr{b}", "f4", 0) for b in "ugriz"] + [
    ("z", "f8", 0), ("z_err", "f8", 0), ("rv", "f4", 0), ("rv_err", "f4", 0), ("teff", "f4", 0), ("teff_err", "f4", 0),
    ("logg", "f4", 0), ("logg_err", "f4", 0), ("feh", "f4", 0), ("feh_err", "f4", 0), ("class", "str", 6),
    ("filename", "str", 40)]


def galah_columns(extended=False, allspec=False):
    """Schema of the GALAH DR3-like ``galah/catalogue.fits``.

    ``extended`` (apogee-galah): adds ``e_alpha_fe``, ``flag_alpha_fe``, ``e_vmic``, ``e_vbroad``;
    ``allspec`` also ``flag_repeat`` (``galah/allspec.fits``, one row per spectrum).
    """
    cols = [("sobject_id", "i8", 0), ("star_id", "str", 16), ("ra", "f8", 0), ("dec", "f8", 0)]
    cols += [(f"snr_c{k}_iraf", "f4", 0) for k in range(1, 5)]
    cols += [("rv_galah", "f4", 0), ("e_rv_galah", "f4", 0)]
    for k in ("teff", "logg", "fe_h"):
        cols += [(k, "f4", 0), (f"e_{k}", "f4", 0)]
    cols += [("vmic", "f4", 0), ("vbroad", "f4", 0)]
    for x in ABUNDANCE_ELEMENTS:
        c = x.lower()
        cols += [(f"{c}_fe", "f4", 0), (f"e_{c}_fe", "f4", 0), (f"flag_{c}_fe", "i4", 0)]
    cols += [("alpha_fe", "f4", 0), ("chi2_sp", "f4", 0), ("flag_sp", "i4", 0)]
    if extended or allspec:
        cols += [("e_alpha_fe", "f4", 0), ("flag_alpha_fe", "i4", 0), ("e_vmic", "f4", 0), ("e_vbroad", "f4", 0)]
    if allspec:
        cols += [("flag_repeat", "i4", 0)]
    return cols


def apogee_columns():
    """Schema of the APOGEE DR16-like ``apogee/allStar.fits``.

    ``ALPHA_FE`` is not a DR16 column: it is ``ALPHA_M + M_H − FE_H`` (exactly), given for convenience.
    ``VMACRO`` (giants) and ``VSINI`` (dwarfs) as in DR16; ``VBROAD`` is whichever of the two is set.
    """
    cols = [("APOGEE_ID", "str", 20), ("FILE", "str", 40), ("RA", "f8", 0), ("DEC", "f8", 0), ("SNR", "f4", 0),
            ("NVISITS", "i4", 0), ("VHELIO_AVG", "f4", 0), ("VERR", "f4", 0)]
    for k in ("TEFF", "LOGG", "FE_H", "M_H", "ALPHA_M", "ALPHA_FE", "VMICRO", "VBROAD"):
        cols += [(k, "f4", 0), (f"{k}_ERR", "f4", 0)]
    cols += [("VMACRO", "f4", 0), ("VSINI", "f4", 0)]
    for x in APOGEE_ELEMENTS:
        cols += [(f"{x.upper()}_FE", "f4", 0), (f"{x.upper()}_FE_ERR", "f4", 0)]
    cols += [("ASPCAPFLAG", "i8", 0), ("STARFLAG", "i8", 0)]
    return cols


#: Gaia-like ``gaia/catalogue.fits``
GAIA_COLUMNS = [("source_id", "i8", 0), ("ra", "f8", 0), ("dec", "f8", 0)] + [
    (c, "f8", 0) for c in ("parallax", "parallax_error", "pmra", "pmra_error", "pmdec", "pmdec_error",
                           "radial_velocity", "radial_velocity_error", "phot_g_mean_mag", "r_est", "r_lo", "r_hi")]


# ----------------------------------------------------------------------------- helpers
def subset(s, idx):
    """Rows ``idx`` of a dict of (n, ...) arrays (e.g. :func:`~cannonade.simulate.formation.stellar_arrays`)."""
    return {k: v[idx] for k, v in s.items()}


def snr_from_mag(g, rng, zero, scale, lo=2.0, hi=900.0):
    """Median S/N per pixel for a star of magnitude g: photon-limited ∝ 10^(-0.2 (g - zero))."""
    return np.clip(scale * 10.0 ** (-0.2 * (np.asarray(g) - zero)) * np.exp(rng.normal(0, 0.25, len(g))), lo, hi)


def band_snr(wl, model_flux, ivar, lo, hi):
    """(n,) median S/N per pixel of ``model_flux`` in [lo, hi) over good pixels (0 where none)."""
    sel = (wl >= lo) & (wl < hi)
    out = np.zeros(len(model_flux))
    if not sel.any():
        return out
    good = ivar[:, sel] > 0
    s = np.where(good, model_flux[:, sel] * np.sqrt(ivar[:, sel]), np.nan)
    rows = good.any(axis=1)  # rows without a good pixel stay 0 (nanmedian of nothing)
    if rows.any():
        out[rows] = np.nanmedian(s[rows], axis=1)
    return np.where(np.isfinite(out), out, 0.0)


def mjd_to_iso(mjd):
    """ISO date-time string of a Modified Julian Day (header ``DATE`` keywords; no wall clock)."""
    return (_dt.datetime(1858, 11, 17) + _dt.timedelta(days=float(mjd))).strftime("%Y-%m-%dT%H:%M:%S")


def obs_append(obs, survey, fname, obsid, sobject, apogee_id, star_id, visit, ccd, snr, rv, effects=(0.0, 0.0, 0.0)):
    """Append one ``truth/observations.fits`` row to ``obs`` (dict of lists keyed by :data:`OBS_COLUMNS`).

    ``effects``: (calib_rms, sky_line_amp, sky_continuum) of the spectrum.
    """
    for key, val in zip(("survey", "filename", "obsid", "sobject_id", "apogee_id", "star_id", "visit", "ccd", "snr", "rv",
                         "calib_rms", "sky_line_amp", "sky_continuum"),
                        (survey, fname, obsid, sobject, apogee_id, star_id, visit, ccd, snr, rv, *effects)):
        obs[key].append(val)

