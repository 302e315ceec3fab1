"""The LAMOST mock: DR1-layout spectrum files ``spec-*.fits.gz`` (with repeat visits) and LASP-like catalogue rows."""

from __future__ import annotations

import numpy as np

from cannonade.simulate import catalogues as cat
from cannonade.simulate.instruments import get_instrument
from cannonade.simulate.layout import BATCH, LAMOST_COLUMNS, OBS_COLUMNS, ORIGIN, band_snr, mjd_to_iso, snr_from_mag, subset
from cannonade.simulate.observing import observe
from cannonade.simulate.realism import draw_visit_effects
from cannonade.simulate.render import normalised_model
from cannonade.simulate.writers import card, write_fits_images
from cannonade.spectra.surveys import C_KMS

__all__ = ["write_lamost_chunk"]


def _lamost_cards(o):
    c = [
        card("COMMENT", "--------FILE INFORMATION"),
        card("FILENAME", o["filename"]),
        card("AUTHOR", "LAMOST Pipeline", "Who compiled the information"),
        card("N_EXTEN", 1, "The extension number"),
        card("EXTEN0", "Flux Inverse Subcontinuum Andmask Ormask"),
        card("ORIGIN", "NAOC-LAMOST", "Organization responsible for creating this file"),
        card("DATE", o["date"], "Time when this HDU is created (UTC)"),
        card("COMMENT", f"Mock spectrum written by {ORIGIN}"),
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


def write_lamost_chunk(out, stars, s_all, rng, counter, writers, preset_opts, realism=False, visit_rng=None):
    """Observe every star of a chunk with LAMOST (plus repeat visits); write files and rows.

    Parameters
    ----------
    out : Path
        Survey root (files go to ``out/lamost/spectra/spec-<lmjd>-<planid>_sp<spid>-<fiber>.fits.gz``, gzipped
        as the real LAMOST files; their headers' ``FILENAME`` is the name without ``.gz``).
    stars : Table, n rows of truth
    s_all : dict of (n, ...) arrays
        :func:`~cannonade.simulate.formation.stellar_arrays` of ``stars``.
    rng : numpy Generator
        The chunk's LAMOST stream.
    counter : int
        LAMOST spectra written so far (defines obsid, plan, spectrograph and fibre).
    writers : dict of FitsTableWriter
        Rows go to ``writers["lamost"]`` and ``writers["obs"]``.
    preset_opts : dict
        ``repeat_fraction``: fraction of stars with repeat visits.
    realism : Realism or bool
        Per-visit flux-calibration errors and sky residuals
        (:func:`cannonade.simulate.realism.draw_visit_effects`), drawn from ``visit_rng``;
        off (default): visits differ only by noise and RV.
    visit_rng : numpy Generator, optional
        The chunk's stream of per-visit effects (needed when ``realism`` has visit effects).

    Returns
    -------
    int
        ``counter`` plus the number of spectra written.
    """
    n = len(stars)
    inst = get_instrument("lamost")
    wl = inst.wavelength
    nvis = 1 + (rng.random(n) < preset_opts["repeat_fraction"]) * (1 + rng.poisson(0.25, n))
    star_idx = np.concatenate([np.flatnonzero(nvis > v) for v in range(nvis.max())])
    visit = np.concatenate([np.full((nvis > v).sum(), v + 1) for v in range(nvis.max())])
    m = len(star_idx)
    g = np.asarray(stars["g_mag"])
    base_snr = snr_from_mag(g, rng, 14.0, 60.0)
    snr = np.clip(base_snr[star_idx] * np.exp(rng.normal(0, 0.3, m)), 2.0, 900.0)
    rv = np.asarray(stars["rv"])[star_idx] + rng.normal(0, 0.5, m)  # intrinsic jitter, km/s
    calib = rng.normal(0, 0.04, (n, 4))[star_idx]  # per star (in the continuum); per visit: ``visit``
    effects = draw_visit_effects(realism, "lamost", m, visit_rng) if realism else None
    scale = (1200.0 * 10.0 ** (-0.4 * (g - 14.0)))[star_idx]
    gid = counter + np.arange(m)
    lab = cat.lamost_labels(stars[star_idx], snr, rng)
    rv_meas = rv + rng.normal(0, 1, m) * (4.0 + 100.0 / snr)
    rv_err = 4.0 + 100.0 / snr
    designation = cat.lamost_designation(np.asarray(stars["ra"])[star_idx], np.asarray(stars["dec"])[star_idx])
    subclass = _subclass(np.asarray(stars["teff"])[star_idx])
    helio = rng.normal(0, 15, m)
    rows = {k: [] for k, _, _ in LAMOST_COLUMNS}
    obs_rows = {k: [] for k, _, _ in OBS_COLUMNS}
    for b0 in range(0, m, BATCH):
        sl = slice(b0, min(m, b0 + BATCH))
        idx = star_idx[sl]
        s = subset(s_all, idx)
        _, norm = normalised_model(s, "lamost", rv[sl])
        syn = observe(wl, norm, s["teff"], "lamost", snr[sl], rng, flux_scale=scale[sl], calib=calib[sl],
                      visit=None if effects is None else effects[sl])
        true_flux = syn.continuum * syn.model
        bands = {"u": (3700, 4000), "g": (4000, 5500), "r": (5500, 7000), "i": (7000, 8500), "z": (8500, 9100)}
        bsnr = {b: band_snr(wl, true_flux, syn.ivar, lo, hi) for b, (lo, hi) in bands.items()}
        for j in range(syn.flux.shape[0]):
            k = b0 + j
            gg = int(gid[k])
            plan = gg // 4000
            spid = (gg % 4000) // 250 + 1
            fiber = gg % 250 + 1
            lmjd = 55900 + plan + 400 * (int(visit[k]) - 1)
            planid = f"M{plan:05d}"
            fits_name = f"spec-{lmjd}-{planid}_sp{spid:02d}-{fiber:03d}.fits"
            fname = fits_name + ".gz"  # the file (and the catalogues' filename); the header names the FITS inside
            z = rv_meas[k] / C_KMS
            o = dict(filename=fits_name, date=mjd_to_iso(lmjd + 0.8), lmjd=lmjd, planid=planid, ra=float(stars["ra"][idx[j]]),
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
                             ("ccd", 0), ("snr", bsnr["g"][j]), ("rv", rv[k]), ("calib_rms", syn.calib_rms[j]),
                             ("sky_line_amp", syn.sky_line_amp[j]), ("sky_continuum", syn.sky_continuum[j])):
                obs_rows[key].append(val)
    writers["lamost"].append(rows)
    writers["obs"].append(obs_rows)
    return counter + m

