"""Property-based bad inputs (hypothesis): NaN, ±inf, negative, zero and huge (±1e30) values in
flux, ivar and labels, zero-length and mismatched shapes, for ``CannonModel.fit``,
``CannonModel.infer`` and the spectra preprocessing (``resample_batch``, ``normalise_batch``,
``normalise``). Issue 16; docs/reliability.md, "Generated inputs".

Each property: a named :class:`~cannonade.CannonadeError` (naming the argument or the star's row),
or a result in which

* a value that cannot be data (non-finite flux or ivar, ivar <= 0) is exactly a masked pixel
  (ivar = 0): the result equals the one with those pixels masked, every row, to 1e-10;
* the rows (stars) not touched equal the result of running them alone -- to 1e-10 for the
  preprocessing, whose rows are independent; to the minimiser's tolerance for ``infer``, whose
  multi-start minimiser switches phase when a fraction of the *batch's* starts is done (so a
  star's last iterations depend on its batch: ~1e-8 of a label, docs/reliability.md);
* a star with no usable pixel is flagged (``Flag.NO_DATA``, NaN labels);
* the outputs are finite or flagged (ivar = 0 where the flux is not finite);

and the caller's arrays are never modified. ``derandomize=True``: the same examples every run.
About 10 s.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cannonade import CannonadeError, CannonModel, Flag  # noqa: E402
from cannonade.cannon.vectorizer import design_matrix, term_exponents  # noqa: E402
from cannonade.exceptions import LabelError, ShapeError  # noqa: E402
from cannonade.spectra.preprocessing import normalise, normalise_batch, resample_batch  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
NAMES = ["x0", "x1", "x2"]
N_TRAIN, N_TEST, P = 60, 6, 30
#: values no data has (a bad pixel) and values that are data, however absurd
NOT_DATA = [np.nan, np.inf, -np.inf]
BAD_IVAR = [np.nan, np.inf, -np.inf, -1.0, 0.0, -1e30]
ABSURD = [1e30, -1e30, -1.0, 0.0, 1e-30]


def universe(n, p=P, seed=0, snr=100.0):
    """Labels (n, 3) and spectra of an exact quadratic model (plus noise)."""
    rng = np.random.default_rng(seed)
    E = term_exponents(3, 2)
    theta = np.zeros((p, len(E)))
    theta[:, 0] = 1.0 - rng.uniform(0.0, 0.3, p)
    deg = E.sum(axis=1)
    theta[:, deg == 1] = rng.normal(0, 0.02, (p, 3))
    theta[:, deg == 2] = rng.normal(0, 0.003, (p, int((deg == 2).sum())))
    mu, sd = np.array([5000.0, 3.0, -0.2]), np.array([400.0, 1.0, 0.3])
    lab = mu + sd * rng.normal(size=(n, 3))
    flux = design_matrix((lab - mu) / sd, E) @ theta.T + rng.normal(size=(n, p)) / snr
    return lab, flux, np.full(flux.shape, snr**2)


LAB, FLUX, IVAR = universe(N_TRAIN + N_TEST)
TEST_FLUX, TEST_IVAR = FLUX[N_TRAIN:], IVAR[N_TRAIN:]


@pytest.fixture(scope="module")
def model():
    return CannonModel(NAMES, show_progress=False).fit(LAB[:N_TRAIN], FLUX[:N_TRAIN], IVAR[:N_TRAIN])


# ------------------------------------------------------------------------------ strategies


def corruptions(n_rows, n_pixels, max_size=12):
    """Cells (row, pixel, 'flux' | 'ivar', value) to overwrite: anything a file or a caller may hold."""
    flux_value = st.sampled_from(NOT_DATA + ABSURD)
    ivar_value = st.sampled_from(BAD_IVAR + [1e30, 1e-30])
    cell = st.tuples(st.integers(0, n_rows - 1), st.integers(0, n_pixels - 1))
    return st.lists(st.one_of(st.tuples(cell, st.just("flux"), flux_value), st.tuples(cell, st.just("ivar"), ivar_value)),
                    min_size=1, max_size=max_size)


def corrupt(flux, ivar, cells, dead_rows=()):
    """Copies of flux, ivar with ``cells`` overwritten and every pixel of ``dead_rows`` unusable."""
    f, i = np.array(flux, copy=True), np.array(ivar, copy=True)
    for (r, p), which, value in cells:
        (f if which == "flux" else i)[r, p] = value
    for r in dead_rows:
        i[r] = 0.0
        f[r, ::2] = np.nan
    return f, i


def masked_equivalent(flux, ivar):
    """What the documented meaning of a bad pixel gives: a pixel with non-finite flux or ivar, or ivar
    <= 0, becomes flux 1, ivar 0 (any finite flux would do)."""
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar > 0)
    return np.where(bad, 1.0, flux), np.where(bad, 0.0, ivar)


def touched_rows(cells, dead_rows=()):
    return sorted({r for (r, _), _, _ in cells} | set(dead_rows))


class Frozen:
    """Copies of the caller's arrays, to check after the call that none was modified."""

    def __init__(self, *arrays):
        self.arrays, self.copies = arrays, [np.array(a, copy=True) for a in arrays]

    def check(self):
        for a, c in zip(self.arrays, self.copies):
            np.testing.assert_array_equal(a, c)


def assert_close(a, b, rtol=1e-10):
    """Equal to ``rtol`` of their scale (NaN where the other is NaN)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    scale = max(1.0, float(np.max(np.abs(b[ok]), initial=0.0)))
    np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------------------ CannonModel.infer


@SETTINGS
@given(cells=corruptions(N_TEST, P), dead=st.lists(st.integers(0, N_TEST - 1), max_size=2, unique=True))
def test_infer_bad_values_are_masked_pixels_and_the_other_stars_are_unchanged(model, cells, dead):
    flux, ivar = corrupt(TEST_FLUX, TEST_IVAR, cells, dead)
    frozen = Frozen(flux, ivar)
    r = model.infer(flux, ivar)
    frozen.check()
    # a value that cannot be data is a masked pixel: the same result, every star, to 1e-10
    mf, mi = masked_equivalent(flux, ivar)
    m = model.infer(mf, mi)
    assert_close(r.labels, m.labels)
    np.testing.assert_array_equal(r.flags, m.flags)
    np.testing.assert_array_equal(r.converged, m.converged)
    # a star with no usable pixel is flagged, its labels NaN
    usable = (np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)).any(axis=1)
    for k in np.flatnonzero(~usable):
        assert r.flags[k] & Flag.NO_DATA and np.isnan(r.labels[k]).all()
    serious = int(Flag.NO_DATA | Flag.NOT_CONVERGED | Flag.SINGULAR | Flag.OUTSIDE_TRAINING)
    assert (r.flags[~np.isfinite(r.labels).all(axis=1)] & serious).all()  # a NaN label is always flagged
    # the stars not touched: what they get alone (the minimiser's tolerance: module docstring)
    keep = [k for k in range(N_TEST) if k not in touched_rows(cells, dead)]
    if keep:
        alone = model.infer(TEST_FLUX[keep], TEST_IVAR[keep])
        assert np.all(np.abs(r.labels[keep] - alone.labels) <= 0.01 * alone.raw_errors)
        np.testing.assert_array_equal(r.flags[keep], alone.flags)


@SETTINGS
@given(n_stars=st.integers(0, 3), d_pixels=st.integers(-3, 3), d_ivar=st.sampled_from([(0, 0), (0, 1), (1, 0), (0, -1)]),
       ndim=st.sampled_from([1, 2, 3]))
def test_infer_shapes_are_checked(model, n_stars, d_pixels, d_ivar, ndim):
    p = P + d_pixels
    flux = np.ones((n_stars, p)) if ndim == 2 else np.ones(p) if ndim == 1 else np.ones((n_stars, p, 1))
    ivar = np.ones(tuple(max(0, s + d) for s, d in zip(flux.shape, d_ivar + (0,) * 3)))
    frozen = Frozen(flux, ivar)
    if flux.shape != ivar.shape or ndim == 3 or p != P:
        with pytest.raises(ShapeError) as info:
            model.infer(flux, ivar)
        text = str(info.value)
        assert ("flux" in text and "ivar" in text) or f"{p} pixels" in text, text
    else:
        r = model.infer(flux, ivar)  # zero stars: an empty result
        assert r.labels.shape == (1 if ndim == 1 else n_stars, len(NAMES))
    frozen.check()


# ------------------------------------------------------------------------------ CannonModel.fit


@SETTINGS
@given(cells=corruptions(N_TRAIN, P, max_size=20), dead=st.lists(st.integers(0, N_TRAIN - 1), max_size=3, unique=True))
def test_fit_bad_values_are_masked_pixels(cells, dead):
    lab, flux, ivar = LAB[:N_TRAIN].copy(), *corrupt(FLUX[:N_TRAIN], IVAR[:N_TRAIN], cells, dead)
    frozen = Frozen(lab, flux, ivar)
    try:
        m = CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar)
    except CannonadeError as exc:  # e.g. absurd values leave a pixel unusable: named, never a NumPy error
        assert str(exc)
        frozen.check()
        return
    frozen.check()
    mf, mi = masked_equivalent(flux, ivar)
    ref = CannonModel(NAMES, show_progress=False).fit(lab, mf, mi)
    np.testing.assert_array_equal(m.pixel_ok_, ref.pixel_ok_)
    assert_close(m.theta_, ref.theta_)
    assert_close(m.s2_, ref.s2_)
    assert np.isfinite(m.theta_[m.pixel_ok_]).all() and np.isfinite(m.s2_[m.pixel_ok_]).all()


@SETTINGS
@given(row=st.integers(0, N_TRAIN - 1), col=st.integers(0, 2), value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_fit_names_the_star_and_label_of_a_non_finite_label(row, col, value):
    lab = LAB[:N_TRAIN].copy()
    lab[row, col] = value
    frozen = Frozen(lab, FLUX[:N_TRAIN], IVAR[:N_TRAIN])
    with pytest.raises(LabelError, match=rf"training label '{NAMES[col]}' of star {row} is {value}"):
        CannonModel(NAMES, show_progress=False).fit(lab, FLUX[:N_TRAIN], IVAR[:N_TRAIN])
    frozen.check()


@SETTINGS
@given(n_labels=st.integers(0, N_TRAIN + 2), n_flux=st.integers(0, N_TRAIN + 2), d_pixels=st.sampled_from([0, 1, -1]))
def test_fit_shapes_are_checked(n_labels, n_flux, d_pixels):
    lab = LAB[:N_TRAIN].copy() if n_labels > N_TRAIN else LAB[:n_labels].copy()
    if n_labels > N_TRAIN:
        lab = np.concatenate([lab, lab[: n_labels - N_TRAIN]])
    flux = np.resize(FLUX, (n_flux, P))
    ivar = np.resize(IVAR, (n_flux, P + d_pixels))
    frozen = Frozen(lab, flux, ivar)
    if d_pixels or len(lab) != n_flux or n_flux == 0:
        with pytest.raises(CannonadeError) as info:
            CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar)
        text = str(info.value)
        assert ("flux" in text and ("ivar" in text or "labels" in text)) or "empty" in text, text
    else:
        assert CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar).is_fitted
    frozen.check()


# ------------------------------------------------------------------------------ spectra: resampling and normalisation

WAVE = np.linspace(5000.0, 5100.0, 80)
NEW_WAVE = np.linspace(5002.0, 5098.0, 50)
rng = np.random.default_rng(3)
SPEC_FLUX = 1.0 + 0.05 * rng.normal(size=(5, WAVE.size)) - 0.3 * np.exp(-0.5 * ((WAVE - 5050.0) / 2.0) ** 2)
SPEC_IVAR = np.full(SPEC_FLUX.shape, 400.0)
METHODS = {
    "resample": lambda f, i: resample_batch(WAVE, f, i, NEW_WAVE),
    "normalise gaussian": lambda f, i: normalise_batch(WAVE, f, i, method="gaussian", sigma=5.0, truncate=15.0),
    "normalise chebyshev": lambda f, i: normalise_batch(WAVE, f, i, method="chebyshev", degree=2),
    "normalise none": lambda f, i: normalise_batch(WAVE, f, i, method="none"),
}


def assert_valid_output(f, i):
    """ivar finite and >= 0; a pixel with ivar > 0 has a finite flux (else it is flagged: ivar 0)."""
    assert np.isfinite(i).all() and (i >= 0).all()
    assert np.isfinite(f[i > 0]).all()


@pytest.mark.parametrize("method", list(METHODS))
@SETTINGS
@given(cells=corruptions(5, WAVE.size, max_size=15), dead=st.lists(st.integers(0, 4), max_size=2, unique=True))
def test_preprocessing_bad_values_are_masked_pixels_and_rows_are_independent(method, cells, dead):
    run = METHODS[method]
    flux, ivar = corrupt(SPEC_FLUX, SPEC_IVAR, cells, dead)
    frozen = Frozen(flux, ivar)
    f, i = run(flux, ivar)
    frozen.check()
    assert_valid_output(f, i)
    # a value that cannot be data is a masked pixel (the flux under ivar = 0 means nothing)
    mf, mi = masked_equivalent(flux, ivar)
    f2, i2 = run(mf, mi)
    assert_close(i, i2)
    assert_close(np.where(i > 0, f, 0.0), np.where(i2 > 0, f2, 0.0))
    # every row is what it is alone, to 1e-10
    for k in range(len(flux)):
        fk, ik = run(flux[k:k + 1], ivar[k:k + 1])
        assert_close(ik[0], i[k])
        assert_close(np.where(ik[0] > 0, fk[0], 0.0), np.where(i[k] > 0, f[k], 0.0))
    for k in dead:
        assert (i[k] == 0).all()


@pytest.mark.parametrize("method", list(METHODS))
@SETTINGS
@given(n=st.integers(0, 3), d_flux=st.integers(-2, 2), d_ivar=st.integers(-2, 2), d_rows=st.integers(-1, 1))
def test_preprocessing_shapes_are_checked(method, n, d_flux, d_ivar, d_rows):
    run = METHODS[method]
    flux = np.ones((n, WAVE.size + d_flux))
    ivar = np.ones((max(0, n + d_rows), WAVE.size + d_ivar))
    frozen = Frozen(flux, ivar)
    if flux.shape != ivar.shape or flux.shape[1] != WAVE.size:
        with pytest.raises(ShapeError) as info:
            run(flux, ivar)
        text = str(info.value)
        assert "flux" in text and ("ivar" in text or "wavelength" in text), text
    else:
        f, i = run(flux, ivar)
        assert f.shape == i.shape and f.shape[0] == n
        assert_valid_output(f, i)
    frozen.check()


@SETTINGS
@given(cells=corruptions(1, WAVE.size), method=st.sampled_from(["gaussian", "chebyshev", "none"]))
def test_normalise_one_spectrum_is_the_batch_row(cells, method):
    flux, ivar = corrupt(SPEC_FLUX[:1], SPEC_IVAR[:1], cells)
    frozen = Frozen(flux, ivar)
    kw = {"gaussian": dict(sigma=5.0, truncate=15.0), "chebyshev": dict(degree=2), "none": {}}[method]
    f, i = normalise(WAVE, flux[0], ivar[0], method=method, **kw)
    fb, ib = normalise_batch(WAVE, flux, ivar, method=method, **kw)
    frozen.check()
    assert_valid_output(f, i)
    assert_close(i, ib[0])
    assert_close(np.where(i > 0, f, 0.0), np.where(ib[0] > 0, fb[0], 0.0))
