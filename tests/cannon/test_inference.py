"""Inference edge cases and diagnostics: singular covariances, worker threads, per-pixel χ²."""

import threading

import numpy as np
import pytest

from cannonade import CannonModel, ShapeError, UncalibratedWarning
from cannonade.cannon import inference
from cannonade.cannon.vectorizer import design_matrix, term_exponents


def poly_data(n_labels, n_pixels, n_stars, seed=0, snr=100.0):
    """Spectra of an exact quadratic Cannon model (unit-scaled labels) with scatter 0.003."""
    rng = np.random.default_rng(seed)
    E = term_exponents(n_labels, 2)
    theta = np.zeros((n_pixels, len(E)))
    theta[:, 0] = 1.0 - rng.uniform(0.0, 0.3, n_pixels)
    deg = E.sum(axis=1)
    theta[:, deg == 1] = rng.normal(0, 0.02, (n_pixels, n_labels))
    theta[:, deg == 2] = rng.normal(0, 0.003, (n_pixels, int((deg == 2).sum())))

    def draw(n):
        lab = rng.normal(size=(n, n_labels))
        f = design_matrix(lab, E) @ theta.T + 0.003 * rng.normal(size=(n, n_pixels))
        return lab, f + rng.normal(size=f.shape) / snr, np.full(f.shape, snr**2)

    return draw


@pytest.fixture(scope="module")
def censored():
    """A model in which label x2 acts at only 10 of 60 pixels."""
    draw = poly_data(3, 60, 400, seed=21)
    lab, flux, ivar = draw(400)
    mask = np.zeros(60, dtype=bool)
    mask[:10] = True
    m = CannonModel(["x0", "x1", "x2"], censors={"x2": mask}, show_progress=False).fit(lab, flux, ivar)
    return m, draw, mask


def test_singular_covariance_is_flagged(censored):
    """A spectrum whose valid pixels cannot see one label: NaN covariance, flagged ``singular``."""
    m, draw, mask = censored
    lab, flux, ivar = draw(6)
    ivar[:3, mask] = 0.0  # stars 0-2: only pixels where x2 does not act are valid
    r = m.infer(flux, ivar)
    assert r.singular.dtype == bool and r.singular.shape == (6,)
    assert r.singular[:3].all() and not r.singular[3:].any()
    assert np.all(np.isnan(r.cov[:3])) and np.all(np.isnan(r.raw_errors[:3]))
    assert np.all(np.isfinite(r.cov[3:])) and np.all(np.isfinite(r.raw_errors[3:]))
    # the labels the spectrum does constrain are still measured
    assert np.all(np.isfinite(r.labels[:3])) and np.all(np.abs(r.labels[:3, :2] - lab[:3, :2]) < 0.2)
    with pytest.warns(UncalibratedWarning):  # to_table's e_<label> are the formal errors here
        t = r.to_table()
    assert list(t["singular"]) == r.singular.tolist()


def test_a_label_no_pixel_depends_on_makes_every_covariance_singular():
    draw = poly_data(2, 40, 300, seed=22)
    lab, flux, ivar = draw(300)
    lab = np.column_stack([lab, np.random.default_rng(1).normal(size=300)])  # x2: pure noise
    m = CannonModel(["x0", "x1", "x2"], censors={"x2": np.zeros(40, dtype=bool)}, show_progress=False)
    m.fit(lab, flux, ivar)
    r = m.infer(flux[:20], ivar[:20])
    assert r.singular.all() and np.all(np.isnan(r.raw_errors))
    assert np.all(np.isfinite(r.labels[:, :2]))


def test_singular_agrees_with_nan_covariance_everywhere(censored):
    """cov is NaN exactly where singular: also for a star with no valid pixel (labels NaN too)."""
    m, draw, mask = censored
    lab, flux, ivar = draw(300)
    ivar[5] = 0.0
    ivar[7, 2:] = 0.0  # two valid pixels for three labels
    r = m.infer(flux, ivar)
    assert r.singular[5] and r.singular[7] and not r.converged[5] and not r.converged[7]
    np.testing.assert_array_equal(r.singular, np.isnan(r.cov).any(axis=(1, 2)))
    assert r.singular.sum() == 2


def test_inference_leaves_no_worker_threads_behind():
    """Threads for the batched solves belong to one infer() call: none outlives it."""
    draw = poly_data(3, 50, 300, seed=23)
    lab, flux, ivar = draw(300)
    m = CannonModel(["x0", "x1", "x2"], show_progress=False).fit(lab, flux, ivar)
    _, f, i = draw(1200)  # batches big enough for the solve to be split over threads
    before = {t.ident for t in threading.enumerate()}
    r = m.infer(f, i)
    assert r.converged.mean() > 0.99
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not left, left
    assert not hasattr(inference, "_POOL")
    # and the threads change nothing: the same labels without them
    r1 = m.infer(f[:200], i[:200])
    np.testing.assert_allclose(r1.labels, r.labels[:200], rtol=0, atol=1e-6)


def test_pixel_chi2():
    draw = poly_data(3, 50, 300, seed=24)
    lab, flux, ivar = draw(300)
    flux[:, 3] = np.nan
    ivar[:, 3] = 0.0  # a pixel no star sees: the model cannot predict it
    m = CannonModel(["x0", "x1", "x2"], show_progress=False).fit(lab, flux, ivar)
    assert not m.pixel_ok_[3]
    tl, f, i = draw(8)
    i = i * np.linspace(0.5, 2.0, 50)
    i[1, 10] = 0.0
    f[2, 11] = np.nan
    f[2, 12] = np.inf
    i[2, 13] = np.nan
    tl[4, 1] = np.nan
    c = m.pixel_chi2(tl, f, i)
    assert c.shape == (8, 50) and c.dtype == float
    # never evaluated at a made-up label: a star with a NaN label has a row of NaN
    assert np.all(np.isnan(c[4])) and np.all(np.isfinite(np.delete(c, 4, axis=0)))
    # zero where there is no information
    assert c[1, 10] == 0.0 and c[2, 11] == 0.0 and c[2, 12] == 0.0 and c[2, 13] == 0.0
    assert np.all(np.delete(c, 4, axis=0)[:, 3] == 0.0)
    # elsewhere w (f − model)² with w = ivar / (1 + ivar s²) (Wheeler+2020 Eq. 3)
    w = i / (1.0 + i * m.s2_)
    expect = w * (f - m.predict(tl)) ** 2
    ok = np.isfinite(expect) & (i > 0)
    ok[4] = False
    np.testing.assert_allclose(c[ok], expect[ok], rtol=1e-9, atol=1e-12)
    # summed over pixels at the inferred labels it is the inference χ²
    r = m.infer(f, i)
    np.testing.assert_allclose(m.pixel_chi2(r.labels, f, i).sum(axis=1), r.chi2, rtol=1e-4)
    # one spectrum, and a table of labels, work too
    np.testing.assert_allclose(m.pixel_chi2(tl[:1], f[0], i[0]), c[:1])
    np.testing.assert_allclose(m.pixel_chi2({"x0": tl[:, 0], "x1": tl[:, 1], "x2": tl[:, 2]}, f, i), c)
    with pytest.raises(ShapeError, match="7 rows"):
        m.pixel_chi2(tl[:7], f, i)
    with pytest.raises(ShapeError, match="49"):
        m.pixel_chi2(tl, f[:, :49], i[:, :49])


def test_covariance_flags_directions_lost_in_rounding():
    """Two labels with nearly the same effect: flagged once the float32 JᵀWJ cannot separate them."""
    rng = np.random.default_rng(25)
    E = term_exponents(3, 1)  # linear: JᵀWJ is M without the constant
    P = 200
    base = rng.normal(0, 0.02, P)
    out = {}
    for gap in (1e-1, 1e-2, 1e-5):
        theta = np.column_stack([np.ones(P), rng.normal(0, 0.02, P), base, base + gap * rng.normal(0, 0.02, P)])
        flux = np.ones((1, P))
        ivar = np.full((1, P), 1e4)
        problem = inference.reduce_chi2(theta, np.zeros(P), flux, ivar)
        cov, singular = inference.covariance(problem, E, np.zeros((1, 3)))
        out[gap] = singular[0]
        assert np.isnan(cov[0]).all() == singular[0]
    assert out == {1e-1: False, 1e-2: False, 1e-5: True}


# ----------------------------------------------------------------------------- issue 15: the fast paths


def test_theta_products_are_the_float64_products_rounded_once():
    """The row-by-row θ products are bit for bit the gathered float64 products cast to float32."""
    rng = np.random.default_rng(15)
    for K in (2, 6, 21, 28):
        theta = rng.normal(0.0, 0.3, (50, K)) * 10.0 ** rng.integers(-6, 2, (50, K))
        i, j = np.triu_indices(K - 1)
        ref = (theta[:, 1:][:, i] * theta[:, 1:][:, j]).astype(np.float32)
        got = inference.theta_products(theta)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, ref)


def spectra_with_bad_pixels(n_stars=40, n_pixels=300, seed=5):
    """A quadratic model's θ, s² and noisy spectra with every kind of bad pixel."""
    draw = poly_data(3, n_pixels, n_stars, seed=seed)
    lab, flux, ivar = draw(n_stars)
    m = CannonModel(["a", "b", "c"], show_progress=False).fit(lab, flux, ivar)
    _, flux, ivar = draw(n_stars)
    rng = np.random.default_rng(seed)
    ivar = ivar * rng.uniform(0.5, 2.0, ivar.shape)
    flux[rng.random(flux.shape) < 0.01] = np.nan
    ivar[rng.random(ivar.shape) < 0.01] = 0.0
    ivar[3, :7] = np.inf  # the slow path of the preparation: ivar not finite ...
    ivar[4, 2:5] = -1.0   # ... or negative
    ivar[5] = 0.0         # a star without data
    return m, flux, ivar


def test_reduction_of_float32_spectra_is_that_of_their_float64_copy():
    """float32 spectra, read as they are (no float64 copy), give bit for bit the reduction of
    their float64 copy, through the usual and the slow (bad ivar) preparation alike."""
    m, flux, ivar = spectra_with_bad_pixels()
    f32, i32 = flux.astype(np.float32), ivar.astype(np.float32)
    pairs = inference.theta_products(m.theta_)
    kw = dict(block_elements=3 * flux.shape[1], gemm_rows=13)  # blocks of 3 stars, groups of 12
    ref = inference.reduce_chi2(m.theta_, m.s2_, f32.astype(float), i32.astype(float), pairs, **kw)
    got = inference.reduce_chi2(m.theta_, m.s2_, f32, i32, pairs, **kw)
    for key in ("M", "M32", "b", "c", "n_pixels", "snr"):
        assert np.array_equal(getattr(got, key), getattr(ref, key), equal_nan=True), key
    assert ref.n_pixels[5] == 0 and np.isnan(ref.snr[5])
    no_pairs = inference.reduce_chi2(m.theta_, m.s2_, f32, i32, **kw)  # the products made here
    assert np.array_equal(no_pairs.M, ref.M)


def test_infer_of_float32_spectra_and_cached_products_match_the_reference_path():
    """``CannonModel.infer`` on float32 spectra (no float64 copy) with its cached θ products gives
    the results of the reference path: float64 spectra, products computed for the call."""
    m, flux, ivar = spectra_with_bad_pixels(n_stars=30)
    f32, i32 = flux.astype(np.float32), ivar.astype(np.float32)
    r1 = m.infer(f32, i32)
    assert m._theta_pairs[0] is m.theta_  # the products are cached on the model ...
    cached = m._theta_pairs[1]
    r2 = m.infer(f32.astype(float), i32.astype(float))
    assert m._theta_pairs[1] is cached  # ... and reused, not recomputed
    ref = inference.infer_spectra(m.theta_, m.s2_, m.exponents, f32.astype(float), i32.astype(float),
                                  theta_pairs=None, show_progress=False)
    for r in (r1, r2):
        assert np.array_equal(r.labels, m.scaler_.inverse(ref["labels"]), equal_nan=True)
        for key in ("chi2", "dof", "converged", "singular", "snr"):
            assert np.array_equal(getattr(r, key), ref[key], equal_nan=True), key
    assert np.array_equal(r1.cov, r2.cov, equal_nan=True) and np.array_equal(r1.flags, r2.flags)
    assert np.isnan(r1.labels[5]).all() and np.isfinite(r1.labels[6:]).all()
