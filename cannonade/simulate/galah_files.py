"""The GALAH mock: per-CCD iraf-6.0-layout spectrum files ``<sobject_id><ccd>.fits.gz`` and DR3-like catalogue rows."""

from __future__ import annotations

import datetime as _dt

import numpy as np

from cannonade.simulate import catalogues as cat
from cannonade.simulate.instruments import get_instrument
from cannonade.simulate.layout import BATCH, ORIGIN, band_snr, mjd_to_iso, snr_from_mag, subset
from cannonade.simulate.observing import observe
from cannonade.simulate.realism import REFERENCE_ERROR_LABELS, as_realism, dwarf_teff_systematics
from cannonade.simulate.render import normalised_model
from cannonade.simulate.writers import card, write_fits_images

__all__ = ["write_galah_chunk"]


def _galah_sobject(r):
    """15-digit GALAH sobject_id yymmddrrrr01ppp for the r-th reference observation."""
    date = _dt.date(2014, 1, 1) + _dt.timedelta(days=int(r // 4000))
    run = (r // 400) % 10 + 1
    pivot = r % 400 + 1
    return int(f"{date:%y%m%d}{run:04d}01{pivot:03d}"), (date - _dt.date(1858, 11, 17)).days


def write_galah_chunk(out, stars, s_all, idx, rng, counter, writers, corrupt_fraction, realism=False, error_factors=None,
                      jitter_rng=None, cross=None, repeat_fraction=0.0, missing_alpha_fraction=0.0, extra_rng=None):
    """Observe reference stars ``idx`` of a chunk with GALAH; write 4 CCD files each and catalogue rows.

    Parameters
    ----------
    out : Path
        Survey root (files go to ``out/galah/spectra/<sobject_id><ccd>.fits.gz``, gzipped).
    stars : Table, n rows of truth
    s_all : dict of (n, ...) arrays
        :func:`~cannonade.simulate.formation.stellar_arrays` of ``stars``.
    idx : (m,) int
        Chunk rows of the reference stars.
    rng : numpy Generator
        The chunk's GALAH stream.
    counter : int
        GALAH observations written so far (defines the sobject_ids).
    writers : dict
        Rows go to ``writers["galah"]``, ``writers["obs"]`` (one per CCD file) and, when present,
        ``writers["galah_allspec"]`` (one per exposure, ``flag_repeat``).
    corrupt_fraction : float
        See :func:`cannonade.simulate.catalogues.corrupt_labels`.
    realism, error_factors, jitter_rng
        Reference-label systematics and imperfect reported errors
        (:func:`cannonade.simulate.catalogues.galah_labels`).
    cross : dict label -> (m,) float, optional
        The GALAH side of the APOGEE − GALAH systematics of these stars (apogee-galah preset; extended
        catalogue columns). None: the lamost-galah catalogue, draw for draw as before.
    repeat_fraction : float
        With ``cross``: this fraction of the stars (exactly ``round(fraction * m)``) get a second exposure
        (another sobject_id, the same star_id, its own S/N, noise and labels; ``allspec`` only).
    missing_alpha_fraction : float
        With ``cross``: :func:`cannonade.simulate.catalogues.flag_missing_alpha`.
    extra_rng : numpy Generator, optional
        Stream of the repeat exposures and the missing-α draws (required with ``cross``).

    Returns
    -------
    counter : int
        ``counter`` + the exposures written.
    corruption : (m,) int
        Index into :data:`~cannonade.simulate.catalogues.CORRUPTION_KINDS` per reference star.
    truth : dict of (m,) float
        ``ref_sys_<label>`` (the applied systematic) and ``ref_err_<label>`` (the true error); with ``cross``
        also ``galah_sys_<label>`` (:func:`cannonade.simulate.catalogues.galah_systematics`) and
        ``galah_exposures``.
    """
    n = len(idx)
    if n == 0:
        return counter, np.zeros(0, int), {}
    sub = stars[idx]
    ids = [_galah_sobject(counter + k)[0] for k in range(n)]
    snr_c, rv_meas, e_rv = _expose(out, sub, s_all, idx, rng, counter, writers, visit=1)
    labels, corruption = cat.galah_labels(sub, snr_c[:, 1], rng, corrupt_fraction, realism, error_factors, jitter_rng,
                                          cross=cross)
    true_err = cat.galah_errors(snr_c[:, 1], scale=1.0 if cross is None else cat.APOGEE_GALAH_ERROR_SCALE)
    truth = {f"ref_err_{k}": true_err[k] for k in REFERENCE_ERROR_LABELS}
    for k, v in dwarf_teff_systematics(sub["teff"], sub["logg"], as_realism(realism)).items():
        truth[f"ref_sys_{k}"] = v
    rows = _rows(ids, sub, snr_c, rv_meas, e_rv, labels)
    counter += n
    if cross is None:
        writers["galah"].append(rows)
        return counter, corruption, truth
    cat.flag_missing_alpha(rows, snr_c[:, 1], missing_alpha_fraction, extra_rng)
    writers["galah"].append(rows)
    for k, v in cat.galah_systematics(sub, cross, realism).items():
        truth[f"galah_sys_{k}"] = v
    # repeat exposures: a second sobject_id of the same star (allspec only; the allstar row is the first)
    k_rep = int(round(float(repeat_fraction) * n))
    rep = np.sort(extra_rng.choice(n, size=k_rep, replace=False)) if k_rep else np.zeros(0, int)
    truth["galah_exposures"] = 1 + np.isin(np.arange(n), rep).astype(int)
    allspec = dict(rows, flag_repeat=np.zeros(n, np.int32))
    if k_rep:
        rsub = sub[rep]
        r_ids = [_galah_sobject(counter + k)[0] for k in range(k_rep)]
        r_snr, r_rv, r_erv = _expose(out, rsub, s_all, idx[rep], extra_rng, counter, writers, visit=2)
        r_cross = {k: np.asarray(v)[rep] for k, v in cross.items()}
        r_lab, _ = cat.galah_labels(rsub, r_snr[:, 1], extra_rng, 0.0, realism, error_factors, extra_rng, cross=r_cross)
        r_rows = _rows(r_ids, rsub, r_snr, r_rv, r_erv, r_lab)
        cat.flag_missing_alpha(r_rows, r_snr[:, 1], missing_alpha_fraction, extra_rng)
        r_rows["flag_repeat"] = np.ones(k_rep, np.int32)
        allspec = {c: np.concatenate([np.asarray(allspec[c]), np.asarray(r_rows[c])]) for c in allspec}
        counter += k_rep
    if "galah_allspec" in writers:
        writers["galah_allspec"].append(allspec)
    return counter, corruption, truth


def _rows(ids, sub, snr_c, rv_meas, e_rv, labels):
    """GALAH catalogue rows (dict of columns) of one set of exposures."""
    rows = {"sobject_id": ids, "star_id": cat.twomass_id(sub["ra"], sub["dec"]), "ra": np.asarray(sub["ra"]),
            "dec": np.asarray(sub["dec"]), "rv_galah": rv_meas, "e_rv_galah": e_rv}
    for c in range(4):
        rows[f"snr_c{c + 1}_iraf"] = snr_c[:, c]
    rows.update(labels)
    return rows


def _expose(out, sub, s_all, idx, rng, counter, writers, visit=1):
    """Synthesise one GALAH exposure of each star of ``sub`` (chunk rows ``idx``); write its 4 CCD files
    (sobject_ids from ``counter``) and ``truth/observations`` rows.

    Draws from ``rng``: S/N, RV offsets and measured RVs, then the noise batch by batch.

    Returns
    -------
    snr_c : (m, 4) float
        Median S/N per CCD.
    rv_meas, e_rv : (m,) float
        Measured RV and its error (km/s).
    """
    inst = get_instrument("galah")
    wl = inst.wavelength
    segs = inst.segment_wavelengths()
    n = len(idx)
    g = np.asarray(sub["g_mag"])
    snr1 = snr_from_mag(g, rng, 12.5, 40.0, lo=5.0, hi=400.0)
    rv = np.asarray(sub["rv"]) + rng.normal(0, 0.5, n)
    e_rv = 0.1 + 5.0 / snr1
    rv_meas = rv + rng.normal(0, 1, n) * e_rv
    tm = cat.twomass_id(sub["ra"], sub["dec"])
    snr_c = np.zeros((n, 4))
    files = []
    for b0 in range(0, n, BATCH):
        sl = slice(b0, min(n, b0 + BATCH))
        s = subset(s_all, idx[sl])
        _, norm = normalised_model(s, "galah", rv[sl])
        scale = 10.0 ** (-0.4 * (g[sl] - 12.0)) * 3000.0
        syn = observe(wl, norm, s["teff"], "galah", snr1[sl], rng, flux_scale=scale)
        true_flux = syn.continuum * syn.model
        for c, w in enumerate(segs):
            snr_c[sl, c] = band_snr(wl, true_flux, syn.ivar, w[0], w[-1] + 1e-6)
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
                fname = f"{sobject}{c + 1}.fits.gz"
                write_fits_images(out / "galah" / "spectra" / fname, hdus)
                files.append((fname, sobject, int(sub["star_id"][k]), c + 1, snr_c[k, c], rv[k]))
                i0 = i1
    obs = {"survey": ["galah"] * len(files), "filename": [f[0] for f in files], "obsid": [-1] * len(files),
           "sobject_id": [f[1] for f in files], "apogee_id": [""] * len(files), "star_id": [f[2] for f in files],
           "visit": [visit] * len(files), "ccd": [f[3] for f in files], "snr": [f[4] for f in files], "rv": [f[5] for f in files]}
    for key in ("calib_rms", "sky_line_amp", "sky_continuum"):  # no per-visit effects in the reference spectra
        obs[key] = np.zeros(len(files))
    writers["obs"].append(obs)
    return snr_c, rv_meas, e_rv


def _galah_cards(sobject, ccd, crval, cdelt, star, tm, snr, rv, e_rv, mjd):
    ra, dec = float(star["ra"]), float(star["dec"])
    return [
        card("ORIGIN", "IRAF reduction pipeline", "FITS file originator"),
        card("DATE", mjd_to_iso(mjd + 30), "Date FITS file was generated"),
        card("COMMENT", f"Mock spectrum written by {ORIGIN}"),
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

