"""The APOGEE mock: apStar-layout files ``apStar-r12-<APOGEE_ID>.fits.gz`` (combined + visit spectra) and
allStar-like catalogue rows."""

from __future__ import annotations

import numpy as np

from cannonade.simulate import catalogues as cat
from cannonade.simulate.instruments import APOGEE_CHIPS, get_instrument
from cannonade.simulate.layout import OBS_COLUMNS, ORIGIN, apogee_columns, mjd_to_iso, obs_append, snr_from_mag, subset
from cannonade.simulate.observing import observe
from cannonade.simulate.realism import SKY_LINES, draw_visit_effects
from cannonade.simulate.render import normalised_model
from cannonade.simulate.writers import card, write_fits_images

__all__ = ["write_apogee_chunk"]


# OH sky lines flagged (bit 12) in the apStar bitmask (vacuum Å); their subtraction residuals: realism.py
_SKY_LINES = tuple(w for w, _ in SKY_LINES["apogee"])


def write_apogee_chunk(out, stars, s_all, rng, writers, realism=False, visit_rng=None, idx=None, systematics=None):
    """Observe the stars ``idx`` of a chunk with APOGEE (2-6 visits each); write apStar files and rows.

    Parameters
    ----------
    out : Path
        Survey root (files go to ``out/apogee/spectra/apStar-r12-<APOGEE_ID>.fits.gz``, gzipped; allStar ``FILE``
        names them).
    stars : Table, n rows of truth
    s_all : dict of (n, ...) arrays
        :func:`~cannonade.simulate.formation.stellar_arrays` of ``stars``.
    rng : numpy Generator
        The chunk's APOGEE stream (its draws define the files).
    writers : dict of FitsTableWriter
        Rows go to ``writers["apogee"]`` (allStar) and ``writers["obs"]`` (one per visit).
    realism : Realism or bool
        Per-visit flux-calibration errors and sky residuals in each visit (and so in the
        combined rows), drawn from ``visit_rng`` (:func:`cannonade.simulate.realism.draw_visit_effects`).
    visit_rng : numpy Generator, optional
    idx : (m,) int, optional
        Chunk rows of the stars APOGEE observes (default: all).
    systematics : dict label -> (m,) float, optional
        The APOGEE side of the APOGEE − GALAH label systematics of these stars
        (:func:`cannonade.simulate.catalogues.apogee_labels`).
    """
    if idx is not None:
        stars = stars[idx]
        s_all = subset(s_all, idx)
    inst = get_instrument("apogee")
    wl = inst.wavelength
    n = len(stars)
    if n == 0:
        return
    nvis = rng.integers(2, 7, n)
    g = np.asarray(stars["g_mag"])
    snr_tot = snr_from_mag(g - 1.5, rng, 12.0, 140.0, lo=10.0, hi=1000.0)  # H ~ G - 1.5 for red giants
    ids = np.array(["2M" + t for t in cat.twomass_id(stars["ra"], stars["dec"])])
    labels = cat.apogee_labels(stars, snr_tot, rng, systematics)
    vhelio = np.asarray(stars["rv"]) + rng.normal(0, 0.3, n)
    rows = {k: [] for k, _, _ in apogee_columns()}
    obs = {k: [] for k, _, _ in OBS_COLUMNS}
    gap = np.ones(len(wl), bool)
    for lo, hi in APOGEE_CHIPS:
        gap &= ~((wl >= lo) & (wl <= hi))
    sky = np.zeros(len(wl), bool)
    for lam in _SKY_LINES:
        sky |= np.abs(wl - lam) < 1.2
    visit_all = draw_visit_effects(realism, "apogee", int(nvis.sum()), visit_rng) if realism else None
    for b0 in range(0, n, 32):
        sl = np.arange(b0, min(n, b0 + 32))
        vi = np.repeat(sl, nvis[sl])
        s = subset(s_all, vi)
        # apStar spectra are resampled to the star's rest frame: residual RV errors only
        _, norm = normalised_model(s, "apogee", rng.normal(0, 0.05, len(vi)))
        snr_v = snr_tot[vi] / np.sqrt(nvis[vi]) * np.exp(rng.normal(0, 0.2, len(vi)))
        scale = 300.0 * 10.0 ** (-0.4 * (g[vi] - 13.0))
        v0 = int(nvis[:b0].sum())
        visit = None if visit_all is None else visit_all[v0:v0 + len(vi)]
        syn = observe(wl, norm, s["teff"], "apogee", snr_v, rng, flux_scale=scale, visit=visit)
        effects = np.column_stack([syn.calib_rms, syn.sky_line_amp, syn.sky_continuum])
        err = np.where(syn.ivar > 0, 1.0 / np.sqrt(np.where(syn.ivar > 0, syn.ivar, 1.0)), 1e10)
        mask = np.where(syn.bad, 1, 0).astype(np.int16)
        mask[:, sky] |= 1 << 12  # significant sky lines
        pos = 0
        for i in sl:
            k = nvis[i]
            visits = (syn.flux[pos:pos + k], err[pos:pos + k], mask[pos:pos + k])
            star = dict(i=int(i), apogee_id=ids[i], star_id=int(stars["star_id"][i]), ra=float(stars["ra"][i]),
                        dec=float(stars["dec"][i]), rv=float(stars["rv"][i]), vhelio=float(vhelio[i]),
                        starflag=int(labels["STARFLAG"][i]))
            fname, snr_c = _write_apstar(out, star, visits, gap, rng, obs, effects[pos:pos + k])
            for key, val in (("APOGEE_ID", ids[i]), ("FILE", fname), ("RA", star["ra"]), ("DEC", star["dec"]), ("SNR", snr_c),
                             ("NVISITS", int(k)), ("VHELIO_AVG", star["vhelio"]), ("VERR", 0.03)):
                rows[key].append(val)
            for key in rows:
                if key in labels:
                    rows[key].append(labels[key][i])
            pos += k
    writers["apogee"].append(rows)
    writers["obs"].append(obs)


def _combine(f, e, mk, gap):
    """Inverse-variance combination of one star's visits (k, n_pixels) into apStar HDU arrays.

    Returns flux, err (2 + k, n_pixels) float32, mask (2 + k, n_pixels) int16 (two combined
    rows, then the visits; chip gaps flux 0, error 1e10) and the combined median S/N.
    """
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
    return flux_all, err_all, mask_all, snr_c


def _write_apstar(out, star, visits, gap, rng, obs, effects):
    """Write one apStar file; append its visits (with their ``effects`` rows) to ``obs``.

    Returns (file name, combined S/N).
    """
    f, e, mk = visits
    k = f.shape[0]
    i = star["i"]
    flux_all, err_all, mask_all, snr_c = _combine(f, e, mk, gap)
    fname = f"apStar-r12-{star['apogee_id']}.fits.gz"
    mjd0 = 56000 + int(rng.integers(0, 2000))
    vcards = []
    for v in range(k):
        sv = float(np.median((f[v] / e[v])[(e[v] < 1e9) & ~gap])) if ((e[v] < 1e9) & ~gap).any() else 0.0
        mjd = mjd0 + 30 * v
        bc = float(rng.normal(0, 15))
        vrad = float(star["vhelio"] - bc)
        vcards += [card("SFILE%d" % (v + 1), f"apVisit-r12-{5000 + i % 4000}-{mjd}-{(i * 7 + v) % 300 + 1:03d}.fits"),
                   card("DATE%d" % (v + 1), mjd_to_iso(mjd + 0.3)), card("JD%d" % (v + 1), mjd + 2400000.8),
                   card("FIBER%d" % (v + 1), (i * 7 + v) % 300 + 1), card("BC%d" % (v + 1), round(bc, 5)),
                   card("VRAD%d" % (v + 1), round(vrad, 5)), card("VERR%d" % (v + 1), 0.05),
                   card("VHELIO%d" % (v + 1), round(star["vhelio"], 5)), card("SNRVIS%d" % (v + 1), round(sv, 4)),
                   card("FLAG%d" % (v + 1), 0)]
        obs_append(obs, "apogee", fname, -1, -1, star["apogee_id"], star["star_id"], v + 1, 0, sv, star["rv"],
                   tuple(float(x) for x in effects[v]))
    pcards = [card("CRVAL1", 4.179, "Start log10(wavelength) in subsequent HDUs"),
              card("CDELT1", 6e-6, "Dispersion in log10(wave) in subsequent HDUs"),
              card("CRPIX1", 1, "Pixel of starting wavelength in subsequent HDUs"),
              card("CTYPE1", "LOG-LINEAR", "Logarithmic wavelength scale in subsequent HDUs"),
              card("DC-FLAG", 1), card("NWAVE", f.shape[1], "Number of wavelengths in subsequent HDUs"),
              card("FIELD", "MOCK", "APOGEE field name"), card("OBJID", star["apogee_id"], "APOGEE object name"),
              card("SNR", round(snr_c, 4), "Median S/N per apStar pixel"),
              card("RA", round(star["ra"], 8), "right ascension, deg, J2000"),
              card("DEC", round(star["dec"], 8), "declination, deg, J2000"),
              card("NVISITS", int(k), "Number of visit spectra combined flag"),
              card("STARFLAG", star["starflag"], "bitwise OR of individual visit starflags"),
              card("ANDFLAG", 0, "bitwise AND of individual visit starflags"),
              card("VHELIO", round(star["vhelio"], 5), "S/N weighted mean barycentric RV"),
              card("VSCATTER", 0.1, "standard deviation of visit RVs"),
              card("VERR", 0.03, "weighted error in VHELIO"),
              card("COMMENT", f"Mock spectrum written by {ORIGIN}")] + vcards
    ext = [card("CRVAL1", 4.179), card("CDELT1", 6e-6), card("CRPIX1", 1), card("CTYPE1", "LOG-LINEAR")]
    write_fits_images(out / "apogee" / "spectra" / fname, [
        (None, pcards, None),
        (flux_all, ext + [card("BUNIT", "Flux (10^-17 erg/s/cm^2/Ang)")], None),
        (err_all, ext + [card("BUNIT", "Err (10^-17 erg/s/cm^2/Ang)")], None),
        (mask_all, ext + [card("BUNIT", "Pixel bitmask")], None),
    ])
    return fname, snr_c
