"""Mock realism for the uncertainty calibration, each effect measured against the truth.

* per-visit flux-calibration errors and sky-subtraction residuals in the LAMOST spectra (not in
  their ivar), compared with ``truth/observations.fits`` (``calib_rms``, ``sky_line_amp``,
  ``sky_continuum``);
* the dwarf Teff systematics of the GALAH abundances (``truth.ref_sys_<label>``);
* imperfect reported GALAH errors (``truth.ref_err_<label>``, manifest ``realism.galah_error_factors``).

Two mocks from one seed, realism on (the default) and off, share every random draw except the
realism streams, so their difference isolates the injected effects.
"""

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cannonade.exceptions import ConfigError
from cannonade.simulate import catalogues as cat
from cannonade.simulate import normalised_model, simulate_population, simulate_survey
from cannonade.simulate.instruments import get_instrument
from cannonade.simulate.observing import observe
from cannonade.simulate.realism import (
    DWARF_TEFF_SLOPES,
    REFERENCE_ERROR_LABELS,
    SKY_LINES,
    SYSTEMATIC_LABELS,
    Realism,
    VisitEffects,
    as_realism,
    draw_error_factors,
    sky_line_profiles,
)

N = 300
LAMOST = get_instrument("lamost")
WL = LAMOST.wavelength
BAND = (WL >= 4000.0) & (WL <= 5500.0)  # the LAMOST S/N reference band
LEG = np.polynomial.legendre.legvander(2.0 * (WL - WL[0]) / (WL[-1] - WL[0]) - 1.0, 5)
PROFILES = sky_line_profiles(WL, "lamost")
NEAR_SKY = (PROFILES > 1e-3).any(axis=0)


def _s(a):
    return np.char.strip(np.asarray(a).astype(str))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("realism")
    kw = dict(n_stars=N, seed=21, reference_fraction=0.2, repeat_fraction=0.3)
    simulate_survey("lamost-galah", out=root / "on", **kw)
    simulate_survey("lamost-galah", out=root / "off", realism=False, **kw)
    return root / "on", root / "off"


def _lamost_obs(out):
    obs = Table.read(out / "truth" / "observations.fits")
    return obs[_s(obs["survey"]) == "lamost"]


def _spectrum(out, fname):
    with fits.open(out / "lamost" / "spectra" / str(fname).strip()) as h:
        return h[0].data.astype(float)


def _smooth_log_fit(y, w):
    """Weighted degree-5 Legendre fit (over the LAMOST span) of y; returns the fit on every pixel."""
    c, *_ = np.linalg.lstsq(LEG[w > 0] * w[w > 0, None], y[w > 0] * w[w > 0], rcond=None)
    return LEG @ c


def _rms(a):
    return float(np.sqrt(np.mean((a - a.mean()) ** 2)))


# ----------------------------------------------------------------------------- per-visit spectra
def test_switched_off_visits_differ_only_by_noise_and_rv(twins):
    """realism=False: the mock of earlier versions (repeat visits share the continuum exactly)."""
    _, out = twins
    lam = _lamost_obs(out)
    truth = Table.read(out / "truth" / "stars.fits")
    assert np.all(lam["calib_rms"] == 0) and np.all(lam["sky_line_amp"] == 0) and np.all(lam["sky_continuum"] == 0)
    sid, cnt = np.unique(lam["star_id"], return_counts=True)
    rep = sid[cnt > 1][:4]
    assert len(rep) >= 3
    for s in rep:
        rows = lam[lam["star_id"] == s]
        star = truth[truth["star_id"] == s]
        conts, chis = [], []
        for r in rows:
            flux, ivar, normed = _spectrum(out, r["filename"])[:3]
            cont = flux / normed
            _, model = normalised_model(star, "lamost", rv=float(r["rv"]))
            good = ivar > 0
            chis.append(np.sum((normed - model[0])[good] ** 2 * (ivar * cont**2)[good]) / good.sum())
            conts.append(cont)
        assert all(0.8 < c < 1.25 for c in chis), chis  # the model + noise explains each visit
        np.testing.assert_allclose(conts[0], conts[1], rtol=1e-4)
        assert len(np.unique(np.round(rows["rv"], 6))) == len(rows)
        # the wrong RV is a much worse fit: the RV really is in the spectrum
        d = _spectrum(out, rows["filename"][0])
        _, wrong = normalised_model(star, "lamost", rv=float(rows["rv"][0]) + 60.0)
        good = d[1] > 0
        chi_wrong = np.sum((d[2] - wrong[0])[good] ** 2 * (d[1] * (d[0] / d[2]) ** 2)[good]) / good.sum()
        assert chi_wrong > chis[0] + 0.05


def test_visit_effects_are_in_the_flux_not_in_the_uncertainties(twins):
    """Same noise draws and ivar with realism on and off; only the flux (rows 0 and 2) differs."""
    on, off = twins
    lam = _lamost_obs(on)
    assert np.all(lam["calib_rms"] > 0) and np.all(lam["sky_line_amp"] > 0) and np.all(lam["sky_continuum"] > 0)
    for r in lam[::15]:
        a, b = _spectrum(on, r["filename"]), _spectrum(off, r["filename"])
        np.testing.assert_array_equal(a[1], b[1])  # ivar: photon + read noise only
        np.testing.assert_array_equal(a[3:], b[3:])  # masks
        np.testing.assert_allclose(a[0] / a[2], b[0] / b[2], rtol=1e-5)  # the star's continuum row
        assert not np.allclose(a[0], b[0], rtol=1e-3)
    for name in ("lamost/catalogue.fits", "gaia/catalogue.fits"):
        assert (on / name).read_bytes() == (off / name).read_bytes(), name


def test_per_visit_calibration_matches_the_truth(twins):
    """ln(flux_on / flux_off) away from sky lines is ln D of the visit: its RMS is truth.calib_rms."""
    on, off = twins
    lam = _lamost_obs(on)
    lam = lam[lam["snr"] >= 20]
    assert len(lam) > 200
    ratios = []
    for r in lam:
        a, b = _spectrum(on, r["filename"]), _spectrum(off, r["filename"])
        snr_pix = b[0] * np.sqrt(b[1])
        w = np.where((b[1] > 0) & ~NEAR_SKY & (snr_pix > 5), np.minimum(snr_pix, 50.0), 0.0)
        ln_d = _smooth_log_fit(np.log(np.abs(a[0] / np.where(b[0] != 0, b[0], 1.0))), w)
        ratios.append(_rms(ln_d) / r["calib_rms"])
    ratios = np.array(ratios)
    assert 0.97 < np.median(ratios) < 1.03, np.median(ratios)
    assert np.mean(np.abs(ratios - 1) < 0.1) > 0.9
    # the amplitudes are the documented few per cent
    assert 0.02 < np.median(lam["calib_rms"]) < 0.04 and lam["calib_rms"].max() < 0.12


def test_repeat_visits_differ_by_more_than_their_noise(twins):
    """Two visits of one star: the difference exceeds the noise, by the smooth calibration ratio,
    whose RMS is what the truth says on average; removing it leaves photon noise."""
    on, _ = twins
    lam = _lamost_obs(on)
    by_star = {}
    for r in lam[lam["snr"] >= 30]:
        by_star.setdefault(int(r["star_id"]), []).append(r)
    pairs = [v[:2] for v in by_star.values() if len(v) >= 2]
    assert len(pairs) >= 15
    chi_raw, chi_fixed, measured, expected = [], [], [], []
    for r1, r2 in pairs:
        a, b = _spectrum(on, r1["filename"]), _spectrum(on, r2["filename"])
        # normalised flux (row 2) and its variance; sky-line pixels left out
        var = [np.where(x[1] > 0, (x[0] / x[2]) ** -2 / np.where(x[1] > 0, x[1], 1.0), np.inf) for x in (a, b)]
        good = (a[1] > 0) & (b[1] > 0) & ~NEAR_SKY
        v = var[0] + var[1]
        chi_raw.append(np.mean(((a[2] - b[2]) ** 2 / v)[good]))
        w = np.where(good, 1.0 / np.sqrt(v), 0.0) * np.abs(b[2])
        q = _smooth_log_fit(np.log(np.abs(a[2] / np.where(b[2] != 0, b[2], 1.0))), w)
        chi_fixed.append(np.mean(((a[2] * np.exp(-q) - b[2]) ** 2 / (var[0] * np.exp(-2 * q) + var[1]))[good]))
        measured.append(_rms(q) ** 2)
        expected.append(r1["calib_rms"] ** 2 + r2["calib_rms"] ** 2)
    chi_raw, chi_fixed = np.array(chi_raw), np.array(chi_fixed)
    assert np.median(chi_raw) > 1.5, np.median(chi_raw)  # the visits disagree beyond their noise ...
    assert np.all((chi_fixed > 0.85) & (chi_fixed < 1.2)), chi_fixed  # ... by a smooth ratio only
    assert 0.7 < np.sum(measured) / np.sum(expected) < 1.4, (np.sum(measured), np.sum(expected))


def test_sky_residuals_match_the_truth_and_grow_at_low_snr(twins):
    """(flux_on / D - flux_off) is the sky residual: its line peaks have the truth's RMS, and in
    units of the noise they are strong at low S/N and weak at high S/N."""
    on, off = twins
    lam = _lamost_obs(on)
    lam = lam[lam["snr"] >= 4]
    ratios, z_rms, snrs = [], [], []
    for r in lam:
        a, b = _spectrum(on, r["filename"]), _spectrum(off, r["filename"])
        snr_pix = b[0] * np.sqrt(b[1])
        w = np.where((b[1] > 0) & ~NEAR_SKY & (snr_pix > 5), np.minimum(snr_pix, 50.0), 0.0)
        d = np.exp(_smooth_log_fit(np.log(np.abs(a[0] / np.where(b[0] != 0, b[0], 1.0))), w))
        c_band = np.median((b[0] / b[2])[BAND])
        y = (a[0] / d - b[0]) / c_band
        sig = np.where(b[1] > 0, 1.0 / np.sqrt(np.where(b[1] > 0, b[1], 1.0)), np.inf) / c_band
        amps, zs = [], []
        for i, (lam0, _) in enumerate(SKY_LINES["lamost"]):
            win = (np.abs(WL - lam0) < 6 * LAMOST.lsf_sigma(lam0)) & (b[1] > 0)
            if win.sum() < 6:  # line lost in a bad region: its amplitude cannot be measured
                continue
            basis = np.column_stack([PROFILES[i][win], np.ones(win.sum()), WL[win] - lam0])
            coef, *_ = np.linalg.lstsq(basis, y[win], rcond=None)
            cov = np.linalg.inv((basis / sig[win, None]).T @ (basis / sig[win, None]))
            amps.append(coef[0])
            zs.append(coef[0] / np.sqrt(cov[0, 0]))
        if len(amps) >= 12:
            ratios.append(np.sqrt(np.mean(np.square(amps))) / r["sky_line_amp"])
            z_rms.append(np.sqrt(np.mean(np.square(zs))))
            snrs.append(r["snr"])
    ratios, z_rms, snrs = np.array(ratios), np.array(z_rms), np.array(snrs)
    assert len(ratios) > 200
    assert 0.95 < np.median(ratios) < 1.05, np.median(ratios)
    assert np.mean(np.abs(ratios - 1) < 0.15) > 0.85
    assert np.median(z_rms[snrs < 15]) > 3.0  # clearly visible at low S/N ...
    assert np.median(z_rms[snrs > 100]) < 1.0  # ... lost in the noise at high S/N
    # fixed in counts: relative to the star the residuals scale as 1 / S/N^2
    slope = np.polyfit(np.log(lam["snr"]), np.log(lam["sky_line_amp"]), 1)[0]
    assert -2.2 < slope < -1.8, slope
    slope_c = np.polyfit(np.log(lam["snr"]), np.log(lam["sky_continuum"]), 1)[0]
    assert -2.4 < slope_c < -1.6, slope_c


def test_observe_applies_the_drawn_effects_exactly():
    """observe(visit=...) against observe() with the same noise: (counts + sky) * D, as recorded."""
    n, k_deg = 3, 5
    norm = np.ones((n, len(WL)))
    teff, snr = np.array([4800.0, 5800.0, 6500.0]), np.array([10.0, 50.0, 200.0])
    calib = np.array([[0.03, -0.02, 0.01, 0.0, 0.005]] * n)
    effects = VisitEffects(calib, np.zeros((n, len(SKY_LINES["lamost"]))), np.tile([0.004, 0.002, -0.001], (n, 1)), 50.0)
    base = observe(WL, norm, teff, "lamost", snr, np.random.default_rng(1), bad_pixels=False)
    syn = observe(WL, norm, teff, "lamost", snr, np.random.default_rng(1), bad_pixels=False, visit=effects)
    np.testing.assert_array_equal(syn.ivar, base.ivar)
    np.testing.assert_array_equal(syn.continuum, base.continuum)
    leg = np.polynomial.legendre.legvander(2.0 * (WL - WL[0]) / (WL[-1] - WL[0]) - 1.0, k_deg)
    d = np.exp(calib @ leg[:, 1:].T)
    sky_flux = syn.flux / d - base.flux  # the additive residual continuum, in flux units
    c_band = np.median(base.continuum[:, BAND], axis=1)
    rel = sky_flux / c_band[:, None]
    np.testing.assert_allclose(np.sqrt(np.mean(rel**2, axis=1)), syn.sky_continuum, rtol=0.05)
    # the same counts for every star: relative to the star it falls as 1 / S/N^2
    np.testing.assert_allclose(syn.sky_continuum * snr**2, (syn.sky_continuum * snr**2)[1], rtol=0.1)
    np.testing.assert_allclose(syn.calib_rms, [_rms(np.log(d[0]))] * n, rtol=1e-10)
    assert np.all(base.calib_rms == 0) and np.all(base.sky_line_amp == 0)


# ----------------------------------------------------------------------------- reference labels
@pytest.fixture(scope="module")
def galah_pair():
    """GALAH labels of one population with realism off and on (same noise draws)."""
    t = simulate_population(6000, seed=8, stage_probs=(0.6, 0.1, 0.2, 0.1))
    snr = np.full(len(t), 150.0)
    realism = Realism()
    factors = draw_error_factors(realism, np.random.default_rng(5))
    off, _ = cat.galah_labels(t, snr, np.random.default_rng(3))
    on, _ = cat.galah_labels(t, snr, np.random.default_rng(3), realism=realism, error_factors=factors,
                             jitter_rng=np.random.default_rng(4))
    return t, snr, off, on, factors, realism


def test_dwarf_abundances_drift_with_teff_by_the_injected_slope(galah_pair):
    t, _, off, on, _, realism = galah_pair
    teff, logg = np.asarray(t["teff"]), np.asarray(t["logg"])
    dwarf = logg >= realism.dwarf_logg_min
    assert dwarf.sum() > 3000 and (~dwarf).sum() > 1000
    x = (teff - realism.dwarf_teff_pivot) / 1000.0
    for lab in SYSTEMATIC_LABELS:
        slope = DWARF_TEFF_SLOPES.get(lab, 0.0)
        # the noise draws are shared: on - off is exactly the injected systematic
        np.testing.assert_allclose(on[lab] - off[lab], np.where(dwarf, slope * x, 0.0), atol=1e-12)
        # measured against the truth, as a user would: the slope of (GALAH - truth) vs Teff
        res = on[lab] - np.asarray(t[lab])
        fit = np.polyfit(x[dwarf], res[dwarf], 1)[0]
        se = np.std(res[dwarf]) / (np.std(x[dwarf]) * np.sqrt(dwarf.sum()))
        assert abs(fit - slope) < max(5 * se, 0.006), (lab, fit, slope, se)
        if lab != "fe_h":  # giants: no Teff trend ([Fe/H] keeps its metal-rich-giant bias)
            fit_g = np.polyfit(x[~dwarf], res[~dwarf], 1)[0]
            assert abs(fit_g) < 0.015, (lab, fit_g)
    assert sum(abs(s) >= 0.02 for s in DWARF_TEFF_SLOPES.values()) >= 5  # "a few 0.01 dex / 1000 K", several labels
    for k in ("teff", "logg", "vmic", "vbroad"):
        np.testing.assert_array_equal(on[k], off[k])


def test_reported_errors_are_imperfect_by_the_injected_distribution(galah_pair):
    t, snr, off, on, factors, realism = galah_pair
    true_err = cat.galah_errors(snr)
    lo, hi = realism.error_factor_range
    f = np.array([factors[k] for k in REFERENCE_ERROR_LABELS])
    assert np.all((f >= lo) & (f <= hi)) and f.max() / f.min() > 1.2
    giant = np.asarray(t["logg"]) < 3.5
    for lab in REFERENCE_ERROR_LABELS:
        np.testing.assert_array_equal(off[f"e_{lab}"], true_err[lab])  # realism off: exact errors
        lr = np.log(on[f"e_{lab}"] / true_err[lab])
        assert abs(np.mean(lr) - np.log(factors[lab])) < 0.01, lab
        assert abs(np.std(lr) - realism.error_jitter) < 0.01, lab
        # expected label: truth + the injected systematic (on - off) (+ GALAH's metal-rich giant [Fe/H] bias)
        truth = np.asarray(t[lab], float) + (np.asarray(on[lab]) - np.asarray(off[lab]))
        if lab == "fe_h":
            truth = truth - 0.12 * np.clip(np.asarray(t[lab]), 0, None) * giant
        pull = (np.asarray(on[lab]) - truth) / true_err[lab]
        assert abs(np.std(pull) - 1.0) < 0.05, (lab, np.std(pull))  # the noise follows the true error ...
        pull_rep = (np.asarray(on[lab]) - truth) / on[f"e_{lab}"]
        expect = np.sqrt(np.mean((true_err[lab] / on[f"e_{lab}"]) ** 2))
        assert abs(np.std(pull_rep) / expect - 1.0) < 0.05, lab  # ... not the reported one
        if abs(np.log(factors[lab])) > 0.15:
            assert abs(np.std(pull_rep) - 1.0) > 0.1, lab  # so a calibration has something to find


def test_reference_truth_in_the_files(twins):
    """truth.ref_sys_* / ref_err_* and the manifest's error factors describe the GALAH catalogue."""
    on, off = twins
    m = json.loads((on / "manifest.json").read_text())
    rz = m["realism"]
    assert rz["enabled"] and rz["dwarf_teff_slopes"] == DWARF_TEFF_SLOPES
    factors = rz["galah_error_factors"]
    assert set(factors) == set(REFERENCE_ERROR_LABELS)
    assert json.loads((off / "manifest.json").read_text())["realism"]["galah_error_factors"] == dict.fromkeys(
        REFERENCE_ERROR_LABELS, 1.0)
    truth = Table.read(on / "truth" / "stars.fits")
    gal = Table.read(on / "galah" / "catalogue.fits")
    obs = Table.read(on / "truth" / "observations.fits")
    go = obs[(_s(obs["survey"]) == "galah") & (obs["ccd"] == 1)]
    star_of = dict(zip(go["sobject_id"], go["star_id"]))
    idx = {int(s): i for i, s in enumerate(truth["star_id"])}
    t = truth[[idx[int(star_of[int(s)])] for s in gal["sobject_id"]]]
    assert len(t) == round(0.2 * N)
    ref = np.asarray(truth["is_reference"])
    for c in ("ref_err_fe_h", "ref_sys_mg_fe"):  # NaN (read back masked) outside the reference set
        v = np.ma.filled(truth[c], np.nan)
        assert np.all(np.isnan(v[~ref])) and np.all(np.isfinite(v[ref])), c
    dwarf = np.asarray(t["logg"]) >= 3.5
    ok = ~np.asarray(t["labels_corrupted"])
    x = (np.asarray(t["teff"]) - 5750.0) / 1000.0
    pulls = []
    for lab in REFERENCE_ERROR_LABELS:
        e_true = np.asarray(t[f"ref_err_{lab}"])
        ratio = np.log(np.asarray(gal[f"e_{lab}"], float) / e_true)
        assert abs(np.mean(ratio) - np.log(factors[lab])) < 0.08, lab  # ~60 stars, jitter 0.15
        syst = np.asarray(t[f"ref_sys_{lab}"]) if lab in SYSTEMATIC_LABELS else 0.0
        if lab in SYSTEMATIC_LABELS:
            np.testing.assert_allclose(syst, np.where(dwarf, DWARF_TEFF_SLOPES.get(lab, 0.0) * x, 0.0), atol=1e-12)
        bias = 0.12 * np.clip(np.asarray(t[lab]), 0, None) * ~dwarf if lab == "fe_h" else 0.0  # GALAH giants
        pulls.append(((np.asarray(gal[lab], float) - np.asarray(t[lab]) - syst + bias) / e_true)[ok])
    pulls = np.concatenate(pulls)
    assert np.all(np.abs(pulls) < 5.5) and 0.85 < np.std(pulls) < 1.15


# ----------------------------------------------------------------------------- switches
def test_realism_switches_and_validation(tmp_path):
    assert as_realism(None) == Realism() and as_realism(True) == Realism()
    assert as_realism(False) == Realism.off() and not Realism.off().visit_effects
    assert as_realism({"visit_calibration": 0.01}).visit_calibration == 0.01
    assert not Realism(visit_calibration=0, sky_line_residual=0, sky_continuum_residual=0).visit_effects
    with pytest.raises(ConfigError, match="visit_calibration"):
        Realism(visit_calibration=-0.1)
    with pytest.raises(ConfigError, match="unknown labels"):
        Realism(dwarf_teff_slopes={"xx_fe": 0.1})
    with pytest.raises(ConfigError, match="error_factor_range"):
        Realism(error_factor_range=(1.4, 0.7))
    with pytest.raises(ConfigError, match="realism"):
        as_realism({"no_such_field": 1})
    with pytest.raises(ConfigError, match="realism"):
        simulate_survey("lamost-galah", 10, 0, tmp_path / "x", realism="yes")
    # amplitudes set to zero one by one: only that effect goes
    r = Realism(dwarf_teff_slopes={}, error_jitter=0.0)
    t = simulate_population(200, seed=3)
    on, _ = cat.galah_labels(t, np.full(200, 100.0), np.random.default_rng(0), realism=r,
                             error_factors=dict.fromkeys(REFERENCE_ERROR_LABELS, 1.0), jitter_rng=np.random.default_rng(1))
    off, _ = cat.galah_labels(t, np.full(200, 100.0), np.random.default_rng(0))
    for k in off:
        np.testing.assert_allclose(on[k], off[k], rtol=1e-12, err_msg=k)
