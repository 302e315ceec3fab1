"""Calibrated per-star errors and out-of-training flags, on a mock with known truth.

The mock (:class:`KielMock`): four labels (teff, logg, fe_h, alpha_fe) on a curved Kiel-diagram
locus and an α–Fe sequence; 200 pixels whose depth depends on the labels through exp and tanh
(plus a small wiggle), so a quadratic Cannon has real model mismatch; each star's spectrum
also carries a small star-specific offset of its labels that the labels do not know (an
error floor that does not fall with S/N); heteroscedastic noise (σ ∝ flux, per-pixel factors,
0.5 % bad pixels). Training: 4000 stars at S/N 30–150; test stars at S/N 20–150. Reference
labels are the truth (clean) or the truth plus noise with reported errors (noisy).
"""

import warnings

import numpy as np
import pytest

from cannonade import CannonModel, cross_validate
from cannonade.cannon.calibration import Calibration, CalibrationError, UncalibratedWarning
from cannonade.cannon.errormodel import (
    best_visit_pairs,
    fit_noise_and_floor,
    half_width,
    precision_curve,
    precision_points,
    repeat_scale_factor,
    visit_pairs,
)
from cannonade.cannon.extrapolation import (
    chi2_threshold_at,
    chi2_threshold_curve,
    conditional_cdf,
    kde_bounds,
    training_distance,
)
from cannonade.cannon.quality import spectrum_snr
from cannonade.exceptions import LabelError, ShapeError
from cannonade.flags import Flag

from cannonade.simulate.toy import NAMES, REF_ERR, KielMock, log_uniform

SNR_BINS = [(20, 40), (40, 80), (80, 150)]


@pytest.fixture(scope="module")
def mock():
    return KielMock()


@pytest.fixture(scope="module")
def training(mock):
    rng = np.random.default_rng(7)
    truth, offset = mock.draw(4000, rng)
    flux, ivar = mock.observe(truth, offset, log_uniform(len(truth), 30, 150, rng), rng)
    err = REF_ERR * rng.uniform(0.5, 1.5, truth.shape)
    return dict(truth=truth, ref=truth + err * rng.normal(size=truth.shape), err=err, flux=flux, ivar=ivar)


def fit_and_cv(training, labels):
    m = CannonModel(NAMES, order=2, show_progress=False).fit(training[labels], training["flux"], training["ivar"])
    return m, cross_validate(m, training[labels], training["flux"], training["ivar"], k=12, seed=0)


@pytest.fixture(scope="module")
def clean(training):
    """A model trained on the true labels, and its CV."""
    return fit_and_cv(training, "truth")


@pytest.fixture(scope="module")
def noisy(training):
    """A model trained on noisy reference labels (errors known), and its CV."""
    return fit_and_cv(training, "ref")


@pytest.fixture(scope="module")
def test_set(mock):
    """9000 stars drawn like the training set, at S/N 20–150."""
    rng = np.random.default_rng(11)
    truth, offset = mock.draw(9000, rng)
    flux, ivar = mock.observe(truth, offset, log_uniform(len(truth), 20, 150, rng), rng)
    return truth, flux, ivar


@pytest.fixture(scope="module")
def repeats(mock):
    """Repeat visits: 400 stars, 2–4 visits each at S/N 20–150."""
    rng = np.random.default_rng(17)
    truth, offset = mock.draw(400, rng)
    sid = np.repeat(np.arange(400), rng.integers(2, 5, 400))
    flux, ivar = mock.observe(truth[sid], offset[sid], log_uniform(sid.size, 20, 150, rng), rng)
    return flux, ivar, np.array([f"star{i:03d}" for i in sid])


def calibrated(model, cv, **kw):
    """A copy of ``model`` calibrated with ``kw`` (the fixtures' model stays uncalibrated)."""
    m = CannonModel(NAMES, order=2, show_progress=False)
    m.__dict__.update({k: v for k, v in model.__dict__.items() if k not in ("calibration_", "_formal_notice")})
    return m.calibrate(cv, **kw)


def pull_widths(labels, truth, errors, snr):
    """(bins, L) half of the 84th − 16th percentile range of the pulls, and (bins, L) fraction beyond 3."""
    pull = (labels - truth) / errors
    widths, tails = [], []
    for lo, hi in SNR_BINS:
        s = (snr >= lo) & (snr < hi)
        widths.append([half_width(pull[s, l]) for l in range(pull.shape[1])])
        tails.append(np.mean(np.abs(pull[s]) > 3.0, axis=0))
    return np.array(widths), np.array(tails)


def check_pulls(model, test_set):
    truth, flux, ivar = test_set
    r = model.infer(flux, ivar)
    assert r.calibrated and r.converged.mean() > 0.99
    for lo, hi in SNR_BINS:
        assert np.sum((r.snr >= lo) & (r.snr < hi)) > 2500  # the bins are populated
    cal, tail = pull_widths(r.labels, truth, r.errors, r.snr)
    raw, _ = pull_widths(r.labels, truth, r.raw_errors, r.snr)
    assert np.all(np.abs(cal - 1.0) < 0.1), cal
    assert np.all(tail <= 0.02), tail
    assert np.all(raw[-1] > 1.2), raw  # the formal errors are too small: the calibration matters
    return cal, raw


def test_pulls_clean_reference_labels(clean, test_set):
    check_pulls(calibrated(*clean), test_set)


def test_pulls_noisy_reference_labels_with_their_errors(noisy, training, test_set):
    check_pulls(calibrated(*noisy, label_errors=training["err"]), test_set)
    # without the reference errors the calibration absorbs them: errors too large, not too small
    m = calibrated(*noisy)
    truth, flux, ivar = test_set
    r = m.infer(flux, ivar)
    cal, _ = pull_widths(r.labels, truth, r.errors, r.snr)
    assert np.all(cal[-1] < 1.0)


def test_pulls_with_repeat_visits(clean, noisy, training, test_set, repeats):
    for model, kw in ((clean, {}), (noisy, dict(label_errors=training["err"]))):
        m = calibrated(*model, repeats=repeats, **kw)
        c = m.calibration_
        assert c.noise_from_repeats.all() and np.all(c.n_repeat_pairs > 500)
        # a is Eq. 6's f over the low-S/N pairs, where noise dominates (f falls with S/N: s² in W)
        assert np.all((c.repeat_factor > 0.4) & (c.repeat_factor < 1.2))
        assert np.all((c.noise_scale >= c.repeat_factor) & (c.noise_scale < 1.3 * c.repeat_factor))
        check_pulls(m, test_set)


def test_errors_are_total_of_scaled_noise(noisy, training, test_set, repeats):
    truth, flux, ivar = test_set
    for kw in (dict(label_errors=training["err"]), dict(repeats=repeats, error_model="nandakumar")):
        m = calibrated(*noisy, **kw)
        r = m.infer(flux[:300], ivar[:300])
        c = m.calibration_
        np.testing.assert_array_equal(r.errors, c.total(c.scaled_noise(r.raw_errors), r.snr))
        np.testing.assert_array_equal(c.scaled_noise(r.raw_errors), r.raw_errors * c.noise_scale)


def test_nandakumar_error_model(noisy, training, test_set, repeats):
    m = calibrated(*noisy, repeats=repeats, error_model="nandakumar")
    c = m.calibration_
    np.testing.assert_array_equal(c.noise_scale, c.repeat_factor)  # f of Eq. 6, all pairs
    A, tau, C = c.precision.T
    assert np.all(np.isfinite(c.precision)) and np.all(A >= 0) and np.all(C >= 0)
    snr = np.array([20.0, 50.0, 150.0])
    prec = c.precision_at(snr)
    assert np.all(np.diff(prec, axis=0) <= 1e-12)  # precision improves with S/N
    raw = np.full((3, 4), 1e-3)
    np.testing.assert_allclose(c.total(c.scaled_noise(raw), snr), np.maximum(raw * c.repeat_factor, prec))
    with pytest.raises(CalibrationError, match="nandakumar.*repeat"):
        calibrated(*noisy, error_model="nandakumar")
    with pytest.raises(CalibrationError, match="'gauss'"):
        calibrated(*noisy, error_model="gauss")


def test_flags_out_of_range_off_locus_and_in_range(mock, noisy, training):
    m = calibrated(*noisy, label_errors=training["err"])
    c = m.calibration_
    assert c.distance_labels == NAMES and c.distance_threshold == 8.0  # Nandakumar+2022: four labels, D > 8
    rng = np.random.default_rng(23)
    # hotter than the training set (on the locus continued), or more metal-poor (on the α sequence)
    lab, off = mock.draw_outside(500, rng)
    r = m.infer(*mock.observe(lab, off, log_uniform(1000, 20, 150, rng), rng))
    flagged = r.extrapolated.any(axis=1) | r.far_from_training
    assert flagged[:500].mean() >= 0.9 and flagged[500:].mean() >= 0.9
    assert r.kiel_extrap[:500].mean() > 0.5
    # inside the training min–max box but off the Kiel locus (1–1.6 dex in log g)
    lab, off = mock.draw_off_locus(1500, rng)
    inside = np.all((lab >= training["ref"].min(axis=0)) & (lab <= training["ref"].max(axis=0)), axis=1)
    assert inside.sum() > 500
    r = m.infer(*mock.observe(lab[inside], off[inside], log_uniform(int(inside.sum()), 20, 150, rng), rng))
    assert (r.extrapolated.any(axis=1) | r.far_from_training).mean() >= 0.8
    # drawn like the training set (labels and S/N)
    lab, off = mock.draw(2000, rng)
    r = m.infer(*mock.observe(lab, off, log_uniform(2000, 30, 150, rng), rng))
    flagged = r.extrapolated.any(axis=1) | r.far_from_training
    assert flagged.mean() <= 0.1
    assert np.mean(r.flags == 0) > 0.8


def test_flag_bits_agree_with_the_fields(noisy, training, test_set):
    m = calibrated(*noisy, label_errors=training["err"])
    truth, flux, ivar = test_set
    flux, ivar = flux[:400].copy(), ivar[:400].copy()
    ivar[0] = 0.0  # no data
    ivar[1, : int(0.3 * ivar.shape[1])] = 0.0  # 30 % missing
    ivar[2] /= 100.0  # S/N / 10
    flux[3] += 0.05 * np.sin(np.arange(flux.shape[1]))  # a spectrum the model cannot fit
    r = m.infer(flux, ivar)
    bit = lambda f: (r.flags & int(f)) != 0  # noqa: E731
    from cannonade.cannon.extrapolation import parameter_mask

    params = parameter_mask(NAMES)  # the star-level bit: stellar parameters (alpha_fe's flag stays per label)
    assert params.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(bit(Flag.EXTRAPOLATED), r.extrapolated[:, params].any(axis=1))
    np.testing.assert_array_equal(bit(Flag.KIEL_EXTRAP), r.kiel_extrap)
    np.testing.assert_array_equal(bit(Flag.FAR_FROM_TRAINING), r.far_from_training)
    np.testing.assert_array_equal(bit(Flag.HIGH_CHI2), r.high_chi2)
    np.testing.assert_array_equal(bit(Flag.OUTSIDE_TRAINING), r.outside_training[:, params].any(axis=1))
    np.testing.assert_array_equal(bit(Flag.NOT_CONVERGED), ~r.converged)
    np.testing.assert_array_equal(bit(Flag.SINGULAR), r.singular)
    np.testing.assert_array_equal(bit(Flag.LOW_SNR), ~(r.snr >= 20.0))
    np.testing.assert_array_equal(bit(Flag.MISSING_PIXELS), r.missing_fraction > 0.2)
    assert not bit(Flag.UNCALIBRATED).any() and not bit(Flag.HIGH_WINDOW_CHI2).any()
    assert bit(Flag.NO_DATA)[0] and np.isnan(r.labels[0]).all() and np.isnan(r.errors[0]).all()
    assert np.isnan(r.train_distance[0]) and not r.far_from_training[0]
    assert bit(Flag.MISSING_PIXELS)[1] and r.missing_fraction[1] == pytest.approx(0.3, abs=0.01)
    assert bit(Flag.LOW_SNR)[2] and r.snr[2] < 20.0
    assert bit(Flag.HIGH_CHI2)[3]
    assert r.high_chi2[4:].mean() < 0.05


def test_calibration_survives_save_and_load_bit_for_bit(noisy, training, test_set, repeats, tmp_path):
    m = calibrated(*noisy, label_errors=training["err"], repeats=repeats, distance_threshold=7.5, low_snr=15.0)
    path = m.save(tmp_path / "calibrated.npz")
    m2 = CannonModel.load(path)
    a, b = m.calibration_, m2.calibration_
    assert isinstance(b, Calibration)
    for k in Calibration.ARRAYS:
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and x.shape == y.shape, k
        np.testing.assert_array_equal(x, y, err_msg=k)
    for k in Calibration.SCALARS + ("label_names",):
        assert getattr(a, k) == getattr(b, k), k
    _, flux, ivar = test_set
    r, r2 = m.infer(flux[:500], ivar[:500]), m2.infer(flux[:500], ivar[:500])
    for k in ("labels", "errors", "raw_errors", "extrapolated", "kiel_extrap", "train_distance", "far_from_training",
              "high_chi2", "flags", "snr", "missing_fraction"):
        np.testing.assert_array_equal(getattr(r, k), getattr(r2, k), err_msg=k)
    # saved again: the same file contents
    path2 = m2.save(tmp_path / "again.npz")
    with np.load(path) as f1, np.load(path2) as f2:
        assert sorted(f1.files) == sorted(f2.files)
        for k in f1.files:
            np.testing.assert_array_equal(f1[k], f2[k], err_msg=k)


def test_an_uncalibrated_model_warns_once_and_returns_formal_errors(clean, test_set):
    m, _ = clean
    fresh = CannonModel(NAMES, order=2, show_progress=False)
    fresh.__dict__.update({k: v for k, v in m.__dict__.items() if k not in ("calibration_", "_formal_notice")})
    _, flux, ivar = test_set
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fresh.infer(flux[:50], ivar[:50])
        e1 = r.errors
        e2 = fresh.infer(flux[50:100], ivar[50:100]).errors
        r.errors
    hits = [w for w in caught if issubclass(w.category, UncalibratedWarning)]
    assert len(hits) == 1 and "not calibrated" in str(hits[0].message)
    np.testing.assert_array_equal(e1, r.raw_errors)
    assert e2.shape == (50, 4) and not r.calibrated
    assert np.all(r.flags & int(Flag.UNCALIBRATED))
    assert not (r.extrapolated.any() or r.far_from_training.any() or r.high_chi2.any() or r.kiel_extrap.any())
    assert np.all(np.isnan(r.train_distance))


def test_calibrate_names_what_is_wrong(noisy, training):
    m, cv = noisy
    with pytest.raises(ShapeError, match=r"label_errors have shape \(3999, 4\)"):
        calibrated(m, cv, label_errors=training["err"][:-1])
    err = training["err"].copy()
    err[17, 2] = -0.1
    with pytest.raises(CalibrationError, match=r"'fe_h'.*star 17"):
        calibrated(m, cv, label_errors=err)
    with pytest.raises(LabelError, match="vmic"):
        calibrated(m, cv, distance_labels=["teff", "vmic"])
    with pytest.raises(CalibrationError, match="distance_threshold"):
        calibrated(m, cv, distance_threshold=-1.0)
    other = CannonModel(["teff", "logg", "fe_h", "mg_fe"], order=2)
    skip = ("label_names", "calibration_", "_formal_notice")
    other.__dict__.update({k: v for k, v in m.__dict__.items() if k not in skip})
    with pytest.raises(LabelError, match="mg_fe"):
        other.calibrate(cv)
    with pytest.raises(CalibrationError, match="repeats must be a tuple"):
        calibrated(m, cv, repeats=(np.zeros((3, 200)), np.ones((3, 200))))


def test_cross_validation_keeps_per_star_fit_quality(noisy, training):
    m, cv = noisy
    N = len(training["truth"])
    assert cv.chi2.shape == cv.dof.shape == cv.snr.shape == (N,) and cv.raw_errors is cv.errors
    assert np.all(np.isfinite(cv.snr)) and np.all(cv.dof > 150)
    assert 0.5 < np.median(cv.reduced_chi2) < 2.0
    # the held-out S/N is the spectrum's median flux·sqrt(ivar) over valid pixels
    np.testing.assert_allclose(cv.snr[:20], spectrum_snr(training["flux"][:20], training["ivar"][:20]))
    t = cv.predictions_table()
    assert {"chi2", "dof", "snr"} <= set(t.colnames)


# ---------------------------------------------------------------------------- the pure functions
def test_spectrum_snr_is_the_median_over_valid_pixels():
    from cannonade.cannon import inference

    rng = np.random.default_rng(3)
    for P in (1, 2, 7, 8, 51):
        flux = rng.normal(1.0, 0.8, (60, P))
        ivar = rng.uniform(0.0, 5.0, (60, P))
        ivar[rng.random((60, P)) < 0.3] = 0.0
        flux[rng.random((60, P)) < 0.05] = np.nan
        ivar[rng.random((60, P)) < 0.02] = np.inf
        x = flux * np.sqrt(np.where(np.isfinite(ivar), ivar, 0.0))
        x[~((ivar > 0) & np.isfinite(ivar) & np.isfinite(flux))] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expect = np.nanmedian(x, axis=1)
        np.testing.assert_allclose(spectrum_snr(flux, ivar), expect, rtol=1e-7, atol=1e-7, equal_nan=True)  # float32
        # the same numbers from the χ² reduction, which computes them block by block (in cache)
        theta = np.column_stack([np.ones(P), rng.normal(size=(P, 2))])
        problem = inference.reduce_chi2(theta, np.zeros(P), flux, ivar, block_elements=7 * P)
        np.testing.assert_array_equal(problem.snr, spectrum_snr(flux, ivar))


def test_error_model_fit_recovers_noise_scale_floor_and_slope():
    rng = np.random.default_rng(0)
    n = 4000
    snr = log_uniform(n, 30, 150, rng)
    sigma = 30.0 / snr * rng.uniform(0.8, 1.2, n)
    e = rng.uniform(0.0, 0.3, n)
    truth = np.sqrt((1.4 * sigma) ** 2 + (0.5 * (snr / 60.0) ** -0.3) ** 2)
    r = truth * rng.normal(size=n) + e * rng.normal(size=n)
    r[:40] = 30.0 * rng.normal(size=40)  # 1 % outliers
    a, b, g, used, clipped = fit_noise_and_floor(r, sigma, e, snr, 60.0, min_noise_scale=0.0, robust=False)
    assert 35 <= clipped <= 60 and used + clipped == n
    fitted = np.sqrt((a * sigma) ** 2 + (b * (snr / 60.0) ** -g) ** 2)
    np.testing.assert_allclose(fitted, truth, rtol=0.05)  # a and γ trade off; the total does not
    # a fixed (as from repeat visits): b and γ themselves
    a2, b2, g2, _, _ = fit_noise_and_floor(r, sigma, e, snr, 60.0, noise_scale=1.4, robust=False)
    assert a2 == 1.4 and b2 == pytest.approx(0.5, rel=0.1) and g2 == pytest.approx(0.3, abs=0.15)
    a3, b3, g3, _, _ = fit_noise_and_floor(r, sigma, e, snr, 60.0, noise_scale=1.4, slope=0.0)
    assert g3 == 0.0 and b3 == pytest.approx(0.5, rel=0.2)
    # the robust scale: pulls of unit half 84th − 16th width
    z = r / np.sqrt((1.4 * sigma) ** 2 + (b2 * (snr / 60.0) ** -g2) ** 2 + e**2)
    assert half_width(z) == pytest.approx(1.0, abs=0.05)
    a4, b4, g4, _, _ = fit_noise_and_floor(r, sigma, e, snr, 60.0, noise_scale=1.4)
    z = r / np.sqrt((1.4 * sigma) ** 2 + (b4 * (snr / 60.0) ** -g4) ** 2 + e**2)
    assert half_width(z) == pytest.approx(1.0, abs=0.002)
    # the clipping does not shrink the variance (a Gaussian cut at ±clip σ, corrected)
    z = rng.normal(size=20000)
    for clip in (2.5, 3.0, 4.0):
        _, b_, _, _, _ = fit_noise_and_floor(z, np.full(z.size, 1e-6), clip=clip, slope=0.0, min_noise_scale=0.0,
                                             robust=False)
        assert b_ == pytest.approx(1.0, abs=0.02)


def test_repeat_pairs_and_the_eq6_factor():
    sid = np.array(["b", "a", "b", "c", "a", "b", "d"])
    i, j = visit_pairs(sid)
    assert sorted(map(tuple, np.sort(np.column_stack([i, j]), axis=1))) == [(0, 2), (0, 5), (1, 4), (2, 5)]
    snr = np.array([10.0, 30.0, 50.0, 5.0, 20.0, 40.0, 99.0])
    best, other = best_visit_pairs(sid, snr)
    assert sorted(zip(best, other)) == [(1, 4), (2, 0), (2, 5)]
    rng = np.random.default_rng(1)
    s1, s2 = rng.uniform(0.5, 2.0, 5000), rng.uniform(0.5, 2.0, 5000)
    dl = 2.5 * np.sqrt(s1**2 + s2**2) * rng.normal(size=5000)
    f, n = repeat_scale_factor(dl, s1, s2)
    assert n == 5000 and f == pytest.approx(2.5, rel=0.05)  # Nandakumar+2022 Eq. 6


def test_precision_curve_follows_the_exponential():
    rng = np.random.default_rng(2)
    snr = rng.uniform(10, 150, 6000)
    dl = (0.3 * np.exp(-snr / 25.0) + 0.02) * rng.normal(size=snr.size)
    s, w = precision_points(dl, snr)
    assert len(s) == 10 and np.all(np.diff(s) > 0)
    A, tau, C = precision_curve(s, w)
    assert A == pytest.approx(0.3, rel=0.3) and tau == pytest.approx(25.0, rel=0.3)
    assert C == pytest.approx(0.02, abs=0.01)
    # too few bins: a constant
    np.testing.assert_array_equal(precision_curve(s[:2], w[:2]), [0.0, 1.0, np.median(w[:2])])


def test_kde_bounds_find_where_the_model_is_biased():
    rng = np.random.default_rng(4)
    truth = rng.uniform(-3.0, 3.0, 4000)
    # a model that cannot predict beyond 1.5: above it, it under-predicts (truth > inferred)
    pred = np.minimum(truth, 1.5 + 0.1 * (truth - 1.5)) + 0.1 * rng.normal(size=truth.size)
    lo, hi = kde_bounds(truth, pred)
    assert lo == pytest.approx(pred.min(), abs=0.15)  # unbiased down to the predictions' end
    assert 1.0 < hi < pred.max() - 0.05
    beyond = pred > hi
    assert beyond.sum() > 50 and np.mean(truth[beyond] > pred[beyond]) > 0.9  # "under-predicts 90 % of the time"
    F = conditional_cdf(truth, pred, np.array([hi]))
    assert F[0] == pytest.approx(0.1, abs=1e-3)  # the bound is where F crosses 10 %
    grid = np.linspace(-2.0, 1.0, 7)
    F = conditional_cdf(truth, pred, grid)
    assert np.all((F > 0.3) & (F < 0.7))


def test_training_distance_is_eq5():
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(5)
    train = rng.normal(size=(300, 3))
    x = rng.normal(size=(20, 3)) * 2
    x[3, 1] = np.nan
    d = training_distance(cKDTree(train), x, k=10)
    brute = np.sort(((x[:, None, :] - train[None]) ** 2).sum(axis=2), axis=1)[:, :10].mean(axis=1)
    np.testing.assert_allclose(d[np.arange(20) != 3], brute[np.arange(20) != 3])
    assert np.isnan(d[3])


def test_chi2_threshold_curve_is_constant_beyond_its_ends():
    rng = np.random.default_rng(6)
    snr = log_uniform(3000, 30, 150, rng)
    rchi2 = 1.0 + snr / 100.0 + 0.1 * rng.normal(size=snr.size)
    x, t = chi2_threshold_curve(rchi2, snr)
    assert len(x) == 8 and np.all(np.diff(t) > 0)
    at = chi2_threshold_at(x, t, np.array([10.0, 30.0, 100.0, 500.0, np.nan]))
    assert at[0] == t[0] and at[3] == t[-1] and at[4] == np.inf
    assert np.mean(rchi2 > chi2_threshold_at(x, t, snr)) == pytest.approx(0.01, abs=0.005)


def test_a_model_file_without_calibration_loads_uncalibrated(tmp_path):
    from pathlib import Path

    old = Path(__file__).resolve().parent / "data" / "model_format1.npz"  # written before the calibration existed
    m = CannonModel.load(old)
    assert m.calibration_ is None
    with np.load(Path(__file__).resolve().parent / "data" / "model_format1_check.npz") as check:
        flux, ivar = check["flux"], check["ivar"]
    r = m.infer(flux, ivar)
    assert np.all(r.flags & int(Flag.UNCALIBRATED)) and np.all(np.isnan(r.train_distance))
    with pytest.warns(UncalibratedWarning):
        np.testing.assert_array_equal(r.errors, r.raw_errors)
    # an uncalibrated model writes no calibration arrays and an empty calibration block
    import json

    with np.load(m.save(tmp_path / "m.npz")) as f:
        assert not [k for k in f.files if k.startswith("calibration_")]
        assert json.loads(str(f["metadata"]))["calibration"] == {}


def test_result_table_carries_errors_and_flags(noisy, training, test_set):
    m = calibrated(*noisy, label_errors=training["err"])
    _, flux, ivar = test_set
    r = m.infer(flux[:20], ivar[:20])
    t = r.to_table()
    for n in NAMES:
        np.testing.assert_array_equal(t[f"e_{n}"], r.errors[:, NAMES.index(n)])
        np.testing.assert_array_equal(t[f"raw_e_{n}"], r.raw_errors[:, NAMES.index(n)])
        assert f"{n}_extrap" in t.colnames
    for k in ("flags", "snr", "train_distance", "far_from_training", "kiel_extrap"):
        np.testing.assert_array_equal(t[k], getattr(r, k))
    table = m.calibration_.table()
    assert list(table["label"]) == NAMES and np.all(table["noise_scale"] >= 1.0)  # a ≥ 1 without repeats
    assert np.all(table["floor"] > 0) and np.all(table["kde_lo"] < table["kde_hi"])
