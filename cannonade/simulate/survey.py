"""``simulate_survey``: a mock survey written to disk in the real file layouts.

Output layout (kept stable: the pipeline depends on it)::

    OUT/manifest.json
    OUT/lamost/spectra/spec-<lmjd>-<planid>_sp<spid>-<fiberid>.fits   (lamost-galah)
    OUT/lamost/catalogue.fits
    OUT/galah/spectra/<sobject_id><ccd>.fits                           (4 CCD files per star)
    OUT/galah/catalogue.fits
    OUT/apogee/spectra/apStar-r12-<APOGEE_ID>.fits, OUT/apogee/allStar.fits   (apogee-galah)
    OUT/gaia/catalogue.fits
    OUT/truth/stars.fits, OUT/truth/observations.fits

Stars are simulated, observed and written in chunks (each with its own seeded
random stream), so memory is bounded and the same seed gives byte-identical files.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from pathlib import Path

import numpy as np

from cannonade.exceptions import ConfigError
from cannonade.util import atomic_path, progress
from cannonade.simulate import catalogues as cat
from cannonade.simulate.instruments import get_instrument
from cannonade.simulate.population import simulate_population
from cannonade.simulate.spectra import ABUNDANCE_ELEMENTS, C_KMS, normalised_model, observe, stellar_arrays
from cannonade.simulate.writers import FitsTableWriter, card, write_fits_images

__all__ = ["simulate_survey", "PRESETS"]

PRESETS = ("lamost-galah", "apogee-galah")
CHUNK = 2000  # stars per chunk (fixed: part of the seeded stream definition)
BATCH = 128  # spectra per vectorised synthesis batch
_ORIGIN = "cannonade.simulate (mock survey)"


def _chunk_rng(seed, chunk, stream):
    """Independent, reproducible random stream per (seed, chunk, purpose)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(chunk), int(stream)]))


def _version():
    from cannonade._version import __version__

    return __version__


# ----------------------------------------------------------------------------- catalogue schemas
def _truth_columns():
    cols = [("star_id", "i8", 0), ("population", "str", 7), ("stage", "str", 8), ("cluster_id", "i8", 0),
            ("binary_id", "i8", 0), ("teff", "f8", 0), ("logg", "f8", 0), ("vmic", "f8", 0), ("vbroad", "f8", 0),
            ("fe_h", "f8", 0)]
    cols += [(f"{x.lower()}_fe", "f8", 0) for x in ABUNDANCE_ELEMENTS]
    cols += [("alpha_fe", "f8", 0)]
    cols += [(c, "f8", 0) for c in ("x", "y", "z", "vx", "vy", "vz", "ra", "dec", "distance", "pmra", "pmdec", "rv", "g_mag")]
    cols += [("is_reference", "bool", 0), ("labels_corrupted", "bool", 0), ("corruption", "str", 5)]
    return cols


_OBS_COLUMNS = [("survey", "str", 6), ("filename", "str", 64), ("obsid", "i8", 0), ("sobject_id", "i8", 0),
                ("apogee_id", "str", 20), ("star_id", "i8", 0), ("visit", "i4", 0), ("ccd", "i2", 0),
                ("snr", "f8", 0), ("rv", "f8", 0)]

_LAMOST_COLUMNS = [("obsid", "i8", 0), ("designation", "str", 20), ("lmjd", "i4", 0), ("planid", "str", 8),
                   ("spid", "i2", 0), ("fiberid", "i2", 0), ("ra", "f8", 0), ("dec", "f8", 0)] + [
    (f"snr{b}", "f4", 0) for b in "ugriz"] + [
    ("z", "f8", 0), ("z_err", "f8", 0), ("rv", "f4", 0), ("rv_err", "f4", 0), ("teff", "f4", 0), ("teff_err", "f4", 0),
    ("logg", "f4", 0), ("logg_err", "f4", 0), ("feh", "f4", 0), ("feh_err", "f4", 0), ("class", "str", 6),
    ("filename", "str", 40)]


def _galah_columns():
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
    return cols


def _apogee_columns():
    cols = [("APOGEE_ID", "str", 20), ("FILE", "str", 40), ("RA", "f8", 0), ("DEC", "f8", 0), ("SNR", "f4", 0),
            ("NVISITS", "i4", 0), ("VHELIO_AVG", "f4", 0), ("VERR", "f4", 0)]
    for k in ("TEFF", "LOGG", "FE_H", "ALPHA_M"):
        cols += [(k, "f4", 0), (f"{k}_ERR", "f4", 0)]
    cols += [("M_H", "f4", 0), ("VMICRO", "f4", 0), ("VMACRO", "f4", 0), ("VSINI", "f4", 0)]
    for x in cat.APOGEE_ELEMENTS:
        cols += [(f"{x.upper()}_FE", "f4", 0), (f"{x.upper()}_FE_ERR", "f4", 0)]
    cols += [("ASPCAPFLAG", "i8", 0), ("STARFLAG", "i8", 0)]
    return cols


_GAIA_COLUMNS = [("source_id", "i8", 0), ("ra", "f8", 0), ("dec", "f8", 0)] + [
    (c, "f8", 0) for c in ("parallax", "parallax_error", "pmra", "pmra_error", "pmdec", "pmdec_error",
                           "radial_velocity", "radial_velocity_error", "phot_g_mean_mag", "r_est", "r_lo", "r_hi")]


# ----------------------------------------------------------------------------- helpers
def _subset(s, idx):
    return {k: v[idx] for k, v in s.items()}


def _snr_from_mag(g, rng, zero, scale, lo=2.0, hi=900.0):
    """Median S/N per pixel for a star of magnitude g: photon-limited ∝ 10^(-0.2 (g - zero))."""
    return np.clip(scale * 10.0 ** (-0.2 * (np.asarray(g) - zero)) * np.exp(rng.normal(0, 0.25, len(g))), lo, hi)


def _band_snr(wl, model_flux, ivar, lo, hi):
    sel = (wl >= lo) & (wl < hi)
    s = model_flux[:, sel] * np.sqrt(ivar[:, sel])
    s = np.where(ivar[:, sel] > 0, s, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-bad bands -> NaN -> 0 below
        out = np.nanmedian(s, axis=1) if sel.any() else np.full(len(model_flux), np.nan)
    return np.where(np.isfinite(out), out, 0.0)


def _mjd_to_iso(mjd):
    return (_dt.datetime(1858, 11, 17) + _dt.timedelta(days=float(mjd))).strftime("%Y-%m-%dT%H:%M:%S")


def _galah_sobject(r):
    """15-digit GALAH sobject_id yymmddrrrr01ppp for the r-th reference observation."""
    date = _dt.date(2014, 1, 1) + _dt.timedelta(days=int(r // 4000))
    run = (r // 400) % 10 + 1
    pivot = r % 400 + 1
    return int(f"{date:%y%m%d}{run:04d}01{pivot:03d}"), (date - _dt.date(1858, 11, 17)).days


# ----------------------------------------------------------------------------- LAMOST
def _lamost_cards(o):
    c = [
        card("COMMENT", "--------FILE INFORMATION"),
        card("FILENAME", o["filename"]),
        card("AUTHOR", "LAMOST Pipeline", "Who compiled the information"),
        card("N_EXTEN", 1, "The extension number"),
        card("EXTEN0", "Flux Inverse Subcontinuum Andmask Ormask"),
        card("ORIGIN", "NAOC-LAMOST", "Organization responsible for creating this file"),
        card("DATE", o["date"], "Time when this HDU is created (UTC)"),
        card("COMMENT", f"Mock spectrum written by {_ORIGIN}"),
        card("TELESCOP", "LAMOST", "GuoShouJing Telescope"),
        card("LONGITUD", 117.58, "[deg] Longitude of site"),
        card("LATITUDE", 40.39, "[deg] Latitude of site"),
        card("DATE-OBS", o["date"], "The observation median UTC"),
        card("LMJD", o["lmjd"], "Local Modified Julian Day"),
        card("MJD", o["lmjd"] + 1, "Modified Julian Day"),
        card("PLANID", o["planid"], "Plan ID in use"),
        card("RA", round(o["ra"], 8), "[deg] Right ascension of object"),
        card("DEC", round(o["dec"], 8), "[deg] Declination of object"),
        card("DESIG", "LAMOST " + o["designation"], "Designation of LAMOST target"),
        card("FIBERID", o["fiberid"], "Fiber ID of Object"),
        card("OBSID", o["obsid"], "Unique number ID of this spectrum"),
        card("OBJNAME", str(o["objname"]), "Name of object"),
        card("OBJTYPE", "star", "Object type from input catalog"),
        card("OBS_TYPE", "OBJ", "The type of target (OBJ, FLAT, ARC or BIAS)"),
        card("RADECSYS", "FK5", "Equatorial coordinate system"),
        card("EQUINOX", 2000.0, "Equinox in years"),
        card("SPID", o["spid"], "Spectrograph ID"),
        card("HELIO", True, "Heliocentric correction"),
        card("HELIO_RV", round(o["helio_rv"], 6), "[km/s] Heliocentric correction"),
        card("VACUUM", True, "Wavelengths are in vacuum"),
        card("NWORDER", 2, "Number of linear-log10 coefficients"),
        card("WFITTYPE", "LOG-LINEAR", "Linear-log10 dispersion"),
        card("COEFF0", 3.5682, "Central wavelength (log10) of first pixel"),
        card("COEFF1", 1e-4, "Log10 dispersion per pixel"),
        card("CRVAL1", 3.5682, "Central wavelength (log10) of first pixel"),
        card("CD1_1", 1e-4, "Log10 dispersion per pixel"),
        card("CRPIX1", 1, "Starting pixel (1-indexed)"),
        card("CTYPE1", "LINEAR"),
        card("DC-FLAG", 1, "Log-linear flag"),
        card("COMMENT", "--------SPECTRA ANALYSIS RESULTS"),
        card("VERSPIPE", "v2.6.4", "Version of Pipeline"),
        card("CLASS", "STAR", "Class of object"),
        card("SUBCLASS", o["subclass"], "Subclass of object"),
        card("Z", round(o["z"], 9), "Redshift of object"),
        card("Z_ERR", round(o["z_err"], 9), "Redshift error of object"),
    ]
    for b in "UGRIZ":
        c.append(card(f"SN_{b}", round(float(o[f"snr{b.lower()}"]), 2), f"SNR of {b.lower()} filter"))
    return c


def _subclass(teff):
    edges = [3900, 4400, 5300, 6000, 7300]
    names = ["M0", "K5", "K0", "G2", "F5", "A5"]
    return np.array(names)[np.searchsorted(edges, teff)]


def _lamost_chunk(out, stars, s_all, rng, counter, writers, preset_opts):
    """Observe every star of a chunk with LAMOST (plus repeat visits); write files and rows."""
    n = len(stars)
    inst = get_instrument("lamost")
    wl = inst.wavelength
    nvis = 1 + (rng.random(n) < preset_opts["repeat_fraction"]) * (1 + rng.poisson(0.25, n))
    star_idx = np.concatenate([np.flatnonzero(nvis > v) for v in range(nvis.max())])
    visit = np.concatenate([np.full((nvis > v).sum(), v + 1) for v in range(nvis.max())])
    m = len(star_idx)
    g = np.asarray(stars["g_mag"])
    base_snr = _snr_from_mag(g, rng, 14.0, 60.0)
    snr = np.clip(base_snr[star_idx] * np.exp(rng.normal(0, 0.3, m)), 2.0, 900.0)
    rv = np.asarray(stars["rv"])[star_idx] + rng.normal(0, 0.5, m)  # intrinsic jitter, km/s
    calib = rng.normal(0, 0.04, (n, 4))[star_idx]  # per star: visits differ only by noise and RV
    scale = (1200.0 * 10.0 ** (-0.4 * (g - 14.0)))[star_idx]
    gid = counter + np.arange(m)
    lab = cat.lamost_labels(stars[star_idx], snr, rng)
    rv_meas = rv + rng.normal(0, 1, m) * (4.0 + 100.0 / snr)
    rv_err = 4.0 + 100.0 / snr
    designation = cat.lamost_designation(np.asarray(stars["ra"])[star_idx], np.asarray(stars["dec"])[star_idx])
    subclass = _subclass(np.asarray(stars["teff"])[star_idx])
    helio = rng.normal(0, 15, m)
    rows = {k: [] for k, _, _ in _LAMOST_COLUMNS}
    obs_rows = {k: [] for k, _, _ in _OBS_COLUMNS}
    for b0 in range(0, m, BATCH):
        sl = slice(b0, min(m, b0 + BATCH))
        idx = star_idx[sl]
        s = _subset(s_all, idx)
        _, norm = normalised_model(s, "lamost", rv[sl])
        syn = observe(wl, norm, s["teff"], "lamost", snr[sl], rng, flux_scale=scale[sl], calib=calib[sl])
        true_flux = syn.continuum * syn.model
        bands = {"u": (3700, 4000), "g": (4000, 5500), "r": (5500, 7000), "i": (7000, 8500), "z": (8500, 9100)}
        bsnr = {b: _band_snr(wl, true_flux, syn.ivar, lo, hi) for b, (lo, hi) in bands.items()}
        for j in range(syn.flux.shape[0]):
            k = b0 + j
            gg = int(gid[k])
            plan = gg // 4000
            spid = (gg % 4000) // 250 + 1
            fiber = gg % 250 + 1
            lmjd = 55900 + plan + 400 * (int(visit[k]) - 1)
            planid = f"M{plan:05d}"
            fname = f"spec-{lmjd}-{planid}_sp{spid:02d}-{fiber:03d}.fits"
            z = rv_meas[k] / C_KMS
            o = dict(filename=fname, date=_mjd_to_iso(lmjd + 0.8), lmjd=lmjd, planid=planid, ra=float(stars["ra"][idx[j]]),
                     dec=float(stars["dec"][idx[j]]), designation=designation[k], fiberid=fiber, obsid=100000000 + gg,
                     objname=100000000 + gg, spid=spid, helio_rv=helio[k],
                     subclass=subclass[k], z=z, z_err=rv_err[k] / C_KMS, **{f"snr{b}": bsnr[b][j] for b in "ugriz"})
            bad = syn.bad[j]
            mask = bad.astype(np.float32)
            img = np.stack([
                syn.flux[j], syn.ivar[j], syn.flux[j] / syn.continuum[j], mask, mask,
            ]).astype(np.float32)
            write_fits_images(out / "lamost" / "spectra" / fname, [(img, _lamost_cards(o), None)])
            for key, val in (("obsid", 100000000 + gg), ("designation", designation[k]), ("lmjd", lmjd), ("planid", planid),
                             ("spid", spid), ("fiberid", fiber), ("ra", o["ra"]), ("dec", o["dec"]), ("z", z),
                             ("z_err", o["z_err"]), ("rv", rv_meas[k]), ("rv_err", rv_err[k]), ("class", "STAR"),
                             ("filename", fname)):
                rows[key].append(val)
            for b in "ugriz":
                rows[f"snr{b}"].append(bsnr[b][j])
            for key in ("teff", "teff_err", "logg", "logg_err", "feh", "feh_err"):
                rows[key].append(lab[key][k])
            for key, val in (("survey", "lamost"), ("filename", fname), ("obsid", 100000000 + gg), ("sobject_id", -1),
                             ("apogee_id", ""), ("star_id", int(stars["star_id"][idx[j]])), ("visit", int(visit[k])),
                             ("ccd", 0), ("snr", bsnr["g"][j]), ("rv", rv[k])):
                obs_rows[key].append(val)
    writers["lamost"].append(rows)
    writers["obs"].append(obs_rows)
    return counter + m


# ----------------------------------------------------------------------------- GALAH
_GALAH_EXT = ["normalized", "relative_error", "sky", "teluric", "scattered", "cross_talk", "resolution_profile"]


def _galah_chunk(out, stars, s_all, idx, rng, counter, writers, corrupt_fraction):
    """Observe reference stars ``idx`` (chunk indices) with GALAH; returns (counter, corruption per idx)."""
    inst = get_instrument("galah")
    wl = inst.wavelength
    segs = inst.segment_wavelengths()
    n = len(idx)
    if n == 0:
        return counter, np.zeros(0, int)
    sub = stars[idx]
    g = np.asarray(sub["g_mag"])
    snr1 = _snr_from_mag(g, rng, 12.5, 40.0, lo=5.0, hi=400.0)
    rv = np.asarray(sub["rv"]) + rng.normal(0, 0.5, n)
    e_rv = 0.1 + 5.0 / snr1
    rv_meas = rv + rng.normal(0, 1, n) * e_rv
    tm = cat.twomass_id(sub["ra"], sub["dec"])
    snr_c = np.zeros((n, 4))
    files = []
    for b0 in range(0, n, BATCH):
        sl = slice(b0, min(n, b0 + BATCH))
        s = _subset(s_all, idx[sl])
        _, norm = normalised_model(s, "galah", rv[sl])
        scale = 10.0 ** (-0.4 * (g[sl] - 12.0)) * 3000.0
        syn = observe(wl, norm, s["teff"], "galah", snr1[sl], rng, flux_scale=scale)
        true_flux = syn.continuum * syn.model
        for c, w in enumerate(segs):
            snr_c[sl, c] = _band_snr(wl, true_flux, syn.ivar, w[0], w[-1] + 1e-6)
        for j in range(syn.flux.shape[0]):
            k = b0 + j
            sobject, mjd = _galah_sobject(counter + k)
            i0 = 0
            for c, w in enumerate(segs):
                i1 = i0 + len(w)
                flux = syn.flux[j, i0:i1]
                iv = syn.ivar[j, i0:i1]
                sig = np.where(iv > 0, 1.0 / np.sqrt(np.where(iv > 0, iv, 1.0)), np.nan)
                rel = np.where(iv > 0, sig / np.where(flux != 0, flux, np.nan), np.nan)
                normd = flux / syn.continuum[j, i0:i1]
                crval, cdelt = inst.segments[c][1], inst.segments[c][2]
                cards = _galah_cards(sobject, c + 1, crval, cdelt, sub[k], tm[k], snr_c[k, c], rv_meas[k], e_rv[k], mjd)
                ext_cards = [card("CRVAL1", crval), card("CDELT1", cdelt), card("CRPIX1", 1.0), card("CTYPE1", "LINEAR"),
                             card("CD1_1", cdelt)]
                fwhm = (w / inst.resolution).astype(np.float32)
                hdus = [(flux.astype(np.float64), cards, None),
                        (normd.astype(np.float64), ext_cards, "normalized"),
                        (rel.astype(np.float64), ext_cards, "relative_error"),
                        (np.zeros(len(w), np.float32), ext_cards, "sky"),
                        (np.ones(len(w), np.float32), ext_cards, "teluric"),
                        (np.zeros(len(w), np.float32), ext_cards, "scattered"),
                        (np.zeros(len(w), np.float32), ext_cards, "cross_talk"),
                        (fwhm, ext_cards, "resolution_profile")]
                fname = f"{sobject}{c + 1}.fits"
                write_fits_images(out / "galah" / "spectra" / fname, hdus)
                files.append((fname, sobject, int(sub["star_id"][k]), c + 1, snr_c[k, c], rv[k]))
                i0 = i1
    labels, corruption = cat.galah_labels(sub, snr_c[:, 1], rng, corrupt_fraction)
    rows = {"sobject_id": [_galah_sobject(counter + k)[0] for k in range(n)], "star_id": tm,
            "ra": np.asarray(sub["ra"]), "dec": np.asarray(sub["dec"]), "rv_galah": rv_meas, "e_rv_galah": e_rv}
    for c in range(4):
        rows[f"snr_c{c + 1}_iraf"] = snr_c[:, c]
    rows.update(labels)
    writers["galah"].append(rows)
    obs = {"survey": ["galah"] * len(files), "filename": [f[0] for f in files], "obsid": [-1] * len(files),
           "sobject_id": [f[1] for f in files], "apogee_id": [""] * len(files), "star_id": [f[2] for f in files],
           "visit": [1] * len(files), "ccd": [f[3] for f in files], "snr": [f[4] for f in files], "rv": [f[5] for f in files]}
    writers["obs"].append(obs)
    return counter + n, corruption


def _galah_cards(sobject, ccd, crval, cdelt, star, tm, snr, rv, e_rv, mjd):
    ra, dec = float(star["ra"]), float(star["dec"])
    return [
        card("ORIGIN", "IRAF reduction pipeline", "FITS file originator"),
        card("DATE", _mjd_to_iso(mjd + 30), "Date FITS file was generated"),
        card("COMMENT", f"Mock spectrum written by {_ORIGIN}"),
        card("INSTRUME", "HERMES-2dF", "Instrument in use"),
        card("TELESCOP", "Anglo-Australian Telescope", "Telescope Name"),
        card("UTMJD", float(mjd) + 0.5, "Mean MJD in UT"),
        card("WCSDIM", 1),
        card("CTYPE1", "LINEAR"),
        card("CDELT1", cdelt),
        card("CRVAL1", crval),
        card("CRPIX1", 1.0),
        card("CD1_1", cdelt),
        card("CUNIT1", "angstroms"),
        card("2MASS_ID", tm, "2MASS id (if exists)"),
        card("OBJ_NAME", f"mock_{int(star['star_id'])}", "Object name from the .fld file"),
        card("SNR", round(float(snr), 4), "Average SNR of the final spectrum per pixel"),
        card("RES", round(crval * 1.08 / 28000.0, 6), "Average resolution (FWHM in Angstroms)"),
        card("RA_OBS", round(ra, 8), "RA of object in degrees"),
        card("DEC_OBS", round(dec, 8), "dec of object in degrees"),
        card("RA_ICRS", round(ra, 8), "RA of object in degrees in ICRS"),
        card("DEC_ICRS", round(dec, 8), "DEC of object in degrees in ICRS"),
        card("PIPE_VER", "6.0", "IRAF reduction pipeline version"),
        card("RV", round(float(rv), 5), "Radial velocity (this CCD) in km/s"),
        card("E_RV", round(float(e_rv), 5), "Radial velocity uncertainty (this CCD) in km/s"),
        card("RV_OK", 1, "Did RV pipeline converge? 1=yes, 0=no"),
        card("RVCOM", round(float(rv), 5), "Combined radial velocity in km/s"),
        card("E_RVCOM", round(float(e_rv), 5), "Radial velocity uncertainty in km/s"),
        card("RVCOM_OK", 1, "Did RV pipeline converge? 1=yes, 0=no"),
        card("LSF", "exp(-0.693147|2x/fwhm|^2)", "Line spread function"),
        card("B", 2.0, "Boxiness parameter for LSF"),
        card("BUNIT", "counts"),
        card("CCD", ccd, "HERMES CCD (1 blue, 2 green, 3 red, 4 IR)"),
        card("SOBJECT", str(sobject), "GALAH sobject_id"),
    ]


# ----------------------------------------------------------------------------- APOGEE
def _apogee_chunk(out, stars, s_all, rng, writers):
    inst = get_instrument("apogee")
    wl = inst.wavelength
    n = len(stars)
    nvis = rng.integers(2, 7, n)
    g = np.asarray(stars["g_mag"])
    snr_tot = _snr_from_mag(g - 1.5, rng, 12.0, 140.0, lo=10.0, hi=1000.0)  # H ~ G - 1.5 for red giants
    ids = np.array(["2M" + t for t in cat.twomass_id(stars["ra"], stars["dec"])])
    labels = cat.apogee_labels(stars, snr_tot, rng)
    vhelio = np.asarray(stars["rv"]) + rng.normal(0, 0.3, n)
    rows = {k: [] for k, _, _ in _apogee_columns()}
    obs = {k: [] for k, _, _ in _OBS_COLUMNS}
    gap = np.ones(len(wl), bool)
    from cannonade.simulate.instruments import APOGEE_CHIPS

    for lo, hi in APOGEE_CHIPS:
        gap &= ~((wl >= lo) & (wl <= hi))
    for b0 in range(0, n, 32):
        sl = np.arange(b0, min(n, b0 + 32))
        vi = np.repeat(sl, nvis[sl])
        s = _subset(s_all, vi)
        # apStar spectra are resampled to the star's rest frame: residual RV errors only
        _, norm = normalised_model(s, "apogee", rng.normal(0, 0.05, len(vi)))
        snr_v = snr_tot[vi] / np.sqrt(nvis[vi]) * np.exp(rng.normal(0, 0.2, len(vi)))
        scale = 300.0 * 10.0 ** (-0.4 * (g[vi] - 13.0))
        syn = observe(wl, norm, s["teff"], "apogee", snr_v, rng, flux_scale=scale)
        err = np.where(syn.ivar > 0, 1.0 / np.sqrt(np.where(syn.ivar > 0, syn.ivar, 1.0)), 1e10)
        mask = np.where(syn.bad, 1, 0).astype(np.int16)
        # significant sky lines: flagged (bit 12) at fixed OH wavelengths, noise inflated
        sky = np.zeros(len(wl), bool)
        for lam in (15240.5, 15332.4, 15395.5, 15432.2, 15597.6, 15862.9, 16079.6, 16128.6, 16235.4, 16477.8, 16530.0, 16840.6):
            sky |= np.abs(wl - lam) < 1.2
        mask[:, sky] |= 1 << 12
        pos = 0
        for i in sl:
            k = nvis[i]
            f, e, mk = syn.flux[pos:pos + k], err[pos:pos + k], mask[pos:pos + k]
            w = np.where(e < 1e9, 1.0 / e**2, 0.0)
            wsum = w.sum(axis=0)
            comb = np.where(wsum > 0, (w * f).sum(axis=0) / np.where(wsum > 0, wsum, 1.0), 0.0)
            cerr = np.where(wsum > 0, 1.0 / np.sqrt(np.where(wsum > 0, wsum, 1.0)), 1e10)
            cmask = np.bitwise_or.reduce(mk, axis=0) & ~np.int16(1)
            cmask |= (wsum == 0).astype(np.int16)
            comb = np.where(gap, 0.0, comb)
            cerr = np.where(gap, 1e10, cerr)
            fv = np.where(gap[None, :], 0.0, f)
            ev = np.where(gap[None, :], 1e10, e)
            flux_all = np.vstack([comb, comb, fv]).astype(np.float32)
            err_all = np.vstack([cerr, cerr, ev]).astype(np.float32)
            mask_all = np.vstack([cmask, cmask, mk]).astype(np.int16)
            good = cerr < 1e9
            snr_c = float(np.median((comb / cerr)[good])) if good.any() else 0.0
            fname = f"apStar-r12-{ids[i]}.fits"
            mjd0 = 56000 + int(rng.integers(0, 2000))
            vcards = []
            for v in range(k):
                sv = float(np.median((f[v] / e[v])[(e[v] < 1e9) & ~gap])) if ((e[v] < 1e9) & ~gap).any() else 0.0
                mjd = mjd0 + 30 * v
                bc = float(rng.normal(0, 15))
                vrad = float(vhelio[i] - bc)
                vcards += [card("SFILE%d" % (v + 1), f"apVisit-r12-{5000 + i % 4000}-{mjd}-{(i * 7 + v) % 300 + 1:03d}.fits"),
                           card("DATE%d" % (v + 1), _mjd_to_iso(mjd + 0.3)), card("JD%d" % (v + 1), mjd + 2400000.8),
                           card("FIBER%d" % (v + 1), (i * 7 + v) % 300 + 1), card("BC%d" % (v + 1), round(bc, 5)),
                           card("VRAD%d" % (v + 1), round(vrad, 5)), card("VERR%d" % (v + 1), 0.05),
                           card("VHELIO%d" % (v + 1), round(float(vhelio[i]), 5)), card("SNRVIS%d" % (v + 1), round(sv, 4)),
                           card("FLAG%d" % (v + 1), 0)]
                obs_append(obs, "apogee", fname, -1, -1, ids[i], int(stars["star_id"][i]), v + 1, 0, sv, float(stars["rv"][i]))
            ra, dec = float(stars["ra"][i]), float(stars["dec"][i])
            pcards = [card("CRVAL1", 4.179, "Start log10(wavelength) in subsequent HDUs"),
                      card("CDELT1", 6e-6, "Dispersion in log10(wave) in subsequent HDUs"),
                      card("CRPIX1", 1, "Pixel of starting wavelength in subsequent HDUs"),
                      card("CTYPE1", "LOG-LINEAR", "Logarithmic wavelength scale in subsequent HDUs"),
                      card("DC-FLAG", 1), card("NWAVE", len(wl), "Number of wavelengths in subsequent HDUs"),
                      card("FIELD", "MOCK", "APOGEE field name"), card("OBJID", ids[i], "APOGEE object name"),
                      card("SNR", round(snr_c, 4), "Median S/N per apStar pixel"),
                      card("RA", round(ra, 8), "right ascension, deg, J2000"), card("DEC", round(dec, 8), "declination, deg, J2000"),
                      card("NVISITS", int(k), "Number of visit spectra combined flag"),
                      card("STARFLAG", int(labels["STARFLAG"][i]), "bitwise OR of individual visit starflags"),
                      card("ANDFLAG", 0, "bitwise AND of individual visit starflags"),
                      card("VHELIO", round(float(vhelio[i]), 5), "S/N weighted mean barycentric RV"),
                      card("VSCATTER", 0.1, "standard deviation of visit RVs"),
                      card("VERR", 0.03, "weighted error in VHELIO"),
                      card("COMMENT", f"Mock spectrum written by {_ORIGIN}")] + vcards
            ext = [card("CRVAL1", 4.179), card("CDELT1", 6e-6), card("CRPIX1", 1), card("CTYPE1", "LOG-LINEAR")]
            write_fits_images(out / "apogee" / "spectra" / fname, [
                (None, pcards, None),
                (flux_all, ext + [card("BUNIT", "Flux (10^-17 erg/s/cm^2/Ang)")], None),
                (err_all, ext + [card("BUNIT", "Err (10^-17 erg/s/cm^2/Ang)")], None),
                (mask_all, ext + [card("BUNIT", "Pixel bitmask")], None),
            ])
            rows["APOGEE_ID"].append(ids[i])
            rows["FILE"].append(fname)
            rows["RA"].append(ra)
            rows["DEC"].append(dec)
            rows["SNR"].append(snr_c)
            rows["NVISITS"].append(int(k))
            rows["VHELIO_AVG"].append(float(vhelio[i]))
            rows["VERR"].append(0.03)
            for key in rows:
                if key in labels:
                    rows[key].append(labels[key][i])
            pos += k
    writers["apogee"].append(rows)
    writers["obs"].append(obs)


def obs_append(obs, survey, fname, obsid, sobject, apogee_id, star_id, visit, ccd, snr, rv):
    for key, val in zip(("survey", "filename", "obsid", "sobject_id", "apogee_id", "star_id", "visit", "ccd", "snr", "rv"),
                        (survey, fname, obsid, sobject, apogee_id, star_id, visit, ccd, snr, rv)):
        obs[key].append(val)


# ----------------------------------------------------------------------------- driver
def simulate_survey(preset="lamost-galah", n_stars=500, seed=0, out="mock_survey", reference_fraction=0.06,
                    repeat_fraction=0.10, corrupt_fraction=0.04, cluster_fraction=0.04, binary_fraction=0.04,
                    chunk_size=CHUNK, show_progress=None):
    """Simulate a mock survey and write it in the real file layouts.

    Parameters
    ----------
    preset : {'lamost-galah', 'apogee-galah'}
        'lamost-galah': every star gets LAMOST spectra (a ``repeat_fraction`` of them
        repeat visits); a ``reference_fraction`` (brightness-weighted) are also observed
        by GALAH. 'apogee-galah': every star is a common APOGEE + GALAH star (mostly giants).
    n_stars : int
    seed : int
    out : str or Path
        Output directory (created).
    reference_fraction : float
        Fraction of stars in the GALAH reference set (lamost-galah; ~6 % as in the
        LAMOST x GALAH overlap).
    repeat_fraction : float
        Fraction of LAMOST stars with repeat visits.
    corrupt_fraction : float
        Fraction of GALAH reference stars given badly wrong labels (recorded in truth).
    cluster_fraction, binary_fraction : float
        Open-cluster members and wide-binary members, as fractions of all stars.
    chunk_size : int
        Stars per chunk (memory bound). Part of the random-stream definition: keep the
        default for reproducible files.
    show_progress : bool, optional

    Returns
    -------
    dict
        The manifest (also written to ``OUT/manifest.json``).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    n_stars = int(n_stars)
    if n_stars < 1:
        raise ConfigError(f"n_stars must be >= 1, got {n_stars}")
    for name, v in (("reference_fraction", reference_fraction), ("repeat_fraction", repeat_fraction),
                    ("corrupt_fraction", corrupt_fraction), ("cluster_fraction", cluster_fraction),
                    ("binary_fraction", binary_fraction)):
        if not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {v}")
    out = Path(out)
    lamost = preset == "lamost-galah"
    ver = _version()
    prov = [card("ORIGIN", _ORIGIN), card("PRESET", preset), card("SEED", int(seed)), card("VERSION", ver)]
    writers = {
        "truth": FitsTableWriter(out / "truth" / "stars.fits", _truth_columns(), "STARS", prov),
        "obs": FitsTableWriter(out / "truth" / "observations.fits", _OBS_COLUMNS, "OBSERVATIONS", prov),
        "galah": FitsTableWriter(out / "galah" / "catalogue.fits", _galah_columns(), "GALAH_DR3", prov),
        "gaia": FitsTableWriter(out / "gaia" / "catalogue.fits", _GAIA_COLUMNS, "GAIA", prov),
    }
    if lamost:
        writers["lamost"] = FitsTableWriter(out / "lamost" / "catalogue.fits", _LAMOST_COLUMNS, "LAMOST_DR", prov)
    else:
        writers["apogee"] = FitsTableWriter(out / "apogee" / "allStar.fits", _apogee_columns(), "ALLSTAR", prov)
    for d in (["lamost/spectra"] if lamost else ["apogee/spectra"]) + ["galah/spectra"]:
        (out / d).mkdir(parents=True, exist_ok=True)
    counts = dict(stars=0, reference_stars=0, corrupted=0, lamost_spectra=0, repeat_visit_stars=0,
                  galah_spectra=0, apogee_spectra=0, apogee_visits=0, clusters=0, cluster_members=0, binaries=0)
    lamost_counter = 0
    galah_counter = 0
    stage_probs = (0.52, 0.13, 0.23, 0.12) if lamost else (0.25, 0.10, 0.42, 0.23)
    bar = progress(total=n_stars, desc=f"simulate {preset}", disable=None if show_progress is None else not show_progress)
    try:
        for ci, c0 in enumerate(range(0, n_stars, int(chunk_size))):
            m = min(int(chunk_size), n_stars - c0)
            stars = simulate_population(m, rng=_chunk_rng(seed, ci, 0), id_offset=c0, cluster_fraction=cluster_fraction,
                                        binary_fraction=binary_fraction, stage_probs=stage_probs)
            s_all = stellar_arrays(stars)
            rng_sel = _chunk_rng(seed, ci, 1)
            if lamost:
                n_ref = int(round(reference_fraction * m))
                w = 1.0 / (1.0 + np.exp((np.asarray(stars["g_mag"]) - 13.5) / 0.6)) + 1e-4
                ref = np.sort(rng_sel.choice(m, size=n_ref, replace=False, p=w / w.sum())) if n_ref else np.zeros(0, int)
            else:
                ref = np.arange(m)
            is_ref = np.zeros(m, bool)
            is_ref[ref] = True
            galah_counter, corruption = _galah_chunk(out, stars, s_all, ref, _chunk_rng(seed, ci, 2), galah_counter,
                                                     writers, corrupt_fraction)
            if lamost:
                before = lamost_counter
                lamost_counter = _lamost_chunk(out, stars, s_all, _chunk_rng(seed, ci, 3), lamost_counter, writers,
                                               {"repeat_fraction": repeat_fraction})
                counts["lamost_spectra"] += lamost_counter - before
            else:
                _apogee_chunk(out, stars, s_all, _chunk_rng(seed, ci, 4), writers)
                counts["apogee_spectra"] += m
            # Gaia for everyone
            gaia = cat.gaia_catalogue(stars, _chunk_rng(seed, ci, 5))
            gaia["source_id"] = 4_000_000_000_000_000_000 + np.asarray(stars["star_id"]) * 7919
            gaia["ra"], gaia["dec"] = np.asarray(stars["ra"]), np.asarray(stars["dec"])
            writers["gaia"].append(gaia)
            # truth
            kind = np.zeros(m, int)
            kind[ref] = corruption
            tr = {c: np.asarray(stars[c]) for c, _, _ in _truth_columns() if c in stars.colnames}
            tr["is_reference"] = is_ref
            tr["labels_corrupted"] = kind > 0
            tr["corruption"] = np.array(cat.CORRUPTION_KINDS)[kind]
            writers["truth"].append(tr)
            counts["stars"] += m
            counts["reference_stars"] += len(ref)
            counts["corrupted"] += int((kind > 0).sum())
            counts["galah_spectra"] += 4 * len(ref)
            counts["clusters"] += len(np.unique(stars["cluster_id"][stars["cluster_id"] >= 0]))
            counts["cluster_members"] += int((stars["cluster_id"] >= 0).sum())
            counts["binaries"] += len(np.unique(stars["binary_id"][stars["binary_id"] >= 0]))
            bar.update(m)
        for key in list(writers):
            writers[key].close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    obs_tab = _read_obs(out / "truth" / "observations.fits")
    if lamost:
        lam = obs_tab[obs_tab["survey"] == "lamost"]
        _, per_star = np.unique(lam["star_id"], return_counts=True)
        counts["repeat_visit_stars"] = int((per_star > 1).sum())
    else:
        counts["apogee_visits"] = int((obs_tab["survey"] == "apogee").sum())
    manifest = {
        "preset": preset,
        "seed": int(seed),
        "n_stars": n_stars,
        "package": "cannonade",
        "package_version": ver,
        "parameters": {"reference_fraction": reference_fraction, "repeat_fraction": repeat_fraction,
                       "corrupt_fraction": corrupt_fraction, "cluster_fraction": cluster_fraction,
                       "binary_fraction": binary_fraction, "chunk_size": int(chunk_size)},
        "counts": counts,
        "files": _file_summary(out, lamost),
        "conventions": {
            "galactocentric": "astropy Galactocentric, Sun at x = -8 kpc, z_sun = 20.8 pc",
            "wavelengths": "LAMOST and APOGEE vacuum, GALAH air (as the real products)",
            "truth": "truth/stars.fits (one row per star), truth/observations.fits (one row per spectrum file)",
        },
    }
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _read_obs(path):
    from astropy.table import Table

    t = Table.read(path, hdu=1)
    t["survey"] = np.char.strip(np.asarray(t["survey"]).astype(str))
    return t


def _file_summary(out, lamost):
    summary = {}
    dirs = (["lamost/spectra"] if lamost else ["apogee/spectra"]) + ["galah/spectra"]
    for d in dirs:
        names = sorted(p.name for p in (out / d).glob("*.fits"))
        summary[d] = {"count": len(names), "first": names[0] if names else None, "last": names[-1] if names else None}
    cats = ["truth/stars.fits", "truth/observations.fits", "galah/catalogue.fits", "gaia/catalogue.fits"]
    cats += ["lamost/catalogue.fits"] if lamost else ["apogee/allStar.fits"]
    summary["catalogues"] = sorted(cats)
    return summary
