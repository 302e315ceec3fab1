"""The Cannon core: training, scatter, inference, censoring, files, bad input.

Scientific tests draw data from an exactly polynomial model with known θ, s and labels.
"""

import json
import zipfile

import numpy as np
import pytest

from cannonade import (
    CannonModel,
    LabelError,
    ModelFileError,
    NotFittedError,
    ShapeError,
    TrainingSetError,
    cross_validate,
)
from cannonade.cannon.vectorizer import design_hessian, design_jacobian, design_matrix, hessian_contract, term_exponents, term_names


class PolyUniverse:
    """Spectra from an exact polynomial Cannon model with per-pixel intrinsic scatter."""

    def __init__(self, n_labels, n_pixels, order=2, seed=0, s_range=(0.002, 0.006), snr=100.0):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.L, self.P, self.snr = n_labels, n_pixels, snr
        self.names = [f"x{i}" for i in range(n_labels)]
        self.E = term_exponents(n_labels, order)
        K = len(self.E)
        self.mu = rng.normal(0, 1, n_labels) * np.array([1000.0] + [1.0] * (n_labels - 1))
        self.sd = rng.uniform(0.5, 2.0, n_labels) * np.array([300.0] + [1.0] * (n_labels - 1))
        theta = np.zeros((n_pixels, K))
        theta[:, 0] = 1.0 - rng.uniform(0.0, 0.3, n_pixels)
        deg = self.E.sum(axis=1)
        theta[:, deg == 1] = rng.normal(0, 0.02, (n_pixels, n_labels))
        theta[:, deg >= 2] = rng.normal(0, 0.003, (n_pixels, int((deg >= 2).sum())))
        self.theta = theta
        self.s = rng.uniform(*s_range, n_pixels)

    def labels(self, n):
        return self.mu + self.sd * self.rng.normal(size=(n, self.L))

    def model_flux(self, labels):
        return design_matrix((labels - self.mu) / self.sd, self.E) @ self.theta.T

    def spectra(self, labels, snr=None):
        snr = self.snr if snr is None else snr
        f = self.model_flux(labels) + self.rng.normal(size=(len(labels), self.P)) * self.s
        sigma = np.full_like(f, 1.0 / snr)
        return f + self.rng.normal(size=f.shape) * sigma, 1.0 / sigma**2


@pytest.fixture(scope="module")
def wheeler_size():
    """Wheeler+2020 dwarf-model size in stars and labels (N=1190, L=9), fewer pixels for speed."""
    u = PolyUniverse(9, 240, seed=1)
    lab = u.labels(1190)
    flux, ivar = u.spectra(lab)
    model = CannonModel(u.names, order=2).fit(lab, flux, ivar)
    return u, lab, flux, ivar, model


def test_vectorizer_terms_and_jacobian():
    E = term_exponents(3, 2)
    assert len(E) == 10
    assert term_names(E, ["teff", "logg", "feh"])[:6] == ["1", "teff", "logg", "feh", "teff^2", "teff*logg"]
    assert len(term_exponents(9, 2)) == (9**2 + 3 * 9) // 2 + 1  # Wheeler+2020 Eq. 4 count + constant
    assert len(term_exponents(3, 3)) == 20
    x = np.random.default_rng(0).normal(size=(7, 3))
    for order in (1, 2, 3):
        E = term_exponents(3, order)
        # every term is the product of its labels' powers (Wheeler+2020 Eq. 4)
        np.testing.assert_allclose(design_matrix(x, E), np.prod(x[:, None, :] ** E[None], axis=-1), rtol=1e-14)
        h = 1e-6
        num = np.stack(
            [(design_matrix(x + h * np.eye(3)[j], E) - design_matrix(x - h * np.eye(3)[j], E)) / (2 * h) for j in range(3)],
            axis=-1,
        )
        np.testing.assert_allclose(design_jacobian(x, E), num, atol=1e-7)
        # second derivatives, and their contraction with weights (used by the Newton steps)
        num2 = np.stack(
            [(design_jacobian(x + h * np.eye(3)[j], E) - design_jacobian(x - h * np.eye(3)[j], E)) / (2 * h) for j in range(3)],
            axis=-1,
        )
        np.testing.assert_allclose(design_hessian(x, E), num2, atol=1e-6)
        wts = np.random.default_rng(order).normal(size=(7, len(E)))
        np.testing.assert_allclose(hessian_contract(x, E, wts), np.einsum("nk,nkij->nij", wts, num2), atol=1e-5)


def test_theta_and_scatter_recovered_at_wheeler_size(wheeler_size):
    u, lab, flux, ivar, model = wheeler_size
    # θ: the model reproduces the noiseless truth to the precision N stars allow: a least-squares
    # fit of K terms to N points with variance σ² + s² predicts with rms ≈ sqrt(K/N (σ² + s²))
    test = u.labels(300)
    err = model.predict(test) - u.model_flux(test)
    expected = np.sqrt(len(u.E) / len(lab) * np.mean(1.0 / u.snr**2 + u.s**2))
    assert np.sqrt(np.mean(err**2)) < 1.25 * expected
    # s: the median ratio of fitted to true scatter within 10 % (REML)
    ratio = np.sqrt(model.s2_) / u.s
    assert abs(np.median(ratio) - 1.0) < 0.10
    # the plain profile likelihood of Wheeler+2020 Eq. 5 is biased low by about K/N of the variance
    ml = CannonModel(u.names, order=2, scatter="ml").fit(lab, flux, ivar)
    ratio_ml = np.median(np.sqrt(ml.s2_) / u.s)
    assert ratio_ml < np.median(ratio) - 0.05


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_scatter_fixed_point_maximises_the_exact_likelihood(method):
    """The score iteration lands on the maximum of Eq. 5 (or its REML form), found here by brute force."""
    from cannonade.cannon.training import fit_scatter, neg_log_likelihood, normal_plan, solve_theta

    u = PolyUniverse(3, 40, seed=5, s_range=(0.0, 0.02), snr=80.0)
    lab = u.labels(150)
    flux, ivar = u.spectra(lab)
    # heteroscedastic noise and missing pixels: the case a closed form cannot handle
    ivar = ivar * u.rng.uniform(0.1, 3.0, ivar.shape)
    ivar[u.rng.random(ivar.shape) < 0.05] = 0.0
    X = design_matrix((lab - lab.mean(0)) / lab.std(0), u.E)
    active = np.ones((u.P, len(u.E)), dtype=bool)
    active[::3, u.E[:, 1] > 0] = False  # censor label 1 at a third of the pixels
    s2, theta = fit_scatter(X, flux, ivar, active, method=method, plan=normal_plan(X, u.E))
    grid = np.linspace(0.0, 0.06, 1201) ** 2  # censoring a label that acts adds model error: s up to ~0.045
    nll = np.array([neg_log_likelihood(*solve_theta(X, flux, ivar, np.full(u.P, g), active)[1:], method) for g in grid])
    best = grid[np.argmin(nll, axis=0)]
    nll_fit = neg_log_likelihood(*solve_theta(X, flux, ivar, s2, active)[1:], method)
    # never worse than the best grid point (beyond its resolution), and at the same s
    assert np.all(nll_fit <= nll.min(axis=0) + 1e-3)
    assert np.allclose(np.sqrt(s2), np.sqrt(best), atol=1.5e-4)
    # θ is the weighted least-squares solution at (the last iterate of) that s²: the model
    # flux it predicts differs by < 1 % of the noise (σ = 1/80 and up), a few % of θ̂'s own
    # error (~sqrt(K/N) σ); censored θ exactly 0
    dflux = X @ (theta - solve_theta(X, flux, ivar, s2, active)[0]).T
    assert np.max(np.abs(dflux)) < 1e-2 / u.snr
    assert np.all(theta[~active] == 0.0)


def test_inference_recovers_labels_with_correct_formal_errors():
    """With θ well determined (large training set), label pulls have unit standard deviation."""
    u = PolyUniverse(3, 300, seed=2, snr=50)
    lab = u.labels(6000)
    model = CannonModel(u.names, order=2).fit(lab, *u.spectra(lab))
    test = u.labels(1500)
    r = model.infer(*u.spectra(test))
    assert r.converged.mean() > 0.99
    pulls = (r.labels - test) / r.raw_errors
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=0.10)
    assert np.all(np.abs(pulls.mean(axis=0)) < 0.1)
    assert r.labels.shape == (1500, 3) and r.cov.shape == (1500, 3, 3)
    assert np.all(r.dof == 300 - 3)
    # χ² per dof near 1 when s² is in the variance (Wheeler+2020 Eq. 3)
    assert abs(np.median(r.chi2 / r.dof) - 1.0) < 0.1
    assert set(np.unique(r.start)) <= set(range(len(r.start_names)))


def test_covariance_is_in_physical_units():
    u = PolyUniverse(2, 200, seed=3)
    lab = u.labels(3000)
    m = CannonModel(u.names, order=2).fit(lab, *u.spectra(lab))
    test = np.repeat(u.labels(1), 400, axis=0)
    r = m.infer(*u.spectra(test))
    # the spread of repeated noisy inferences of one star matches the formal errors (in physical units)
    np.testing.assert_allclose(r.labels.std(axis=0) / np.median(r.raw_errors, axis=0), 1.0, atol=0.15)


def test_orders_one_and_three():
    for order in (1, 3):
        u = PolyUniverse(3, 120, order=order, seed=4)
        lab = u.labels(1500)
        m = CannonModel(u.names, order=order).fit(lab, *u.spectra(lab))
        assert m.theta_.shape == (120, len(term_exponents(3, order)))
        test = u.labels(200)
        r = m.infer(*u.spectra(test))
        rms = np.sqrt(np.mean((r.labels - test) ** 2, axis=0)) / u.sd
        assert np.all(rms < 0.05), rms


def test_percentile_scaling_matches_nandakumar_eq2():
    u = PolyUniverse(3, 80, seed=5)
    lab = u.labels(800)
    m = CannonModel(u.names, scale="percentile").fit(lab, *u.spectra(lab))
    p2, p50, p97 = np.percentile(lab, [2.5, 50, 97.5], axis=0)
    np.testing.assert_allclose(m.scaler_.offset_, p50)
    np.testing.assert_allclose(m.scaler_.scale_, p97 - p2)
    r = m.infer(*u.spectra(lab[:100]))
    assert np.all(np.sqrt(np.mean((r.labels - lab[:100]) ** 2, axis=0)) / u.sd < 0.12)  # 80 pixels: ~6 % of the spread


def test_censoring_zeroes_theta_exactly():
    u = PolyUniverse(3, 100, seed=6)
    lab = u.labels(600)
    flux, ivar = u.spectra(lab)
    mask = np.zeros(100, dtype=bool)
    mask[::3] = True  # label x2 may act only at every third pixel
    m = CannonModel(u.names, censors={"x2": mask}).fit(lab, flux, ivar)
    uses = m.exponents[:, 2] > 0
    assert np.all(m.theta_[~mask][:, uses] == 0.0)
    assert np.all(m.theta_[mask][:, uses] != 0.0)
    assert np.all(m.theta_[:, ~uses] != 0.0)
    with pytest.raises(LabelError, match="nope"):
        CannonModel(u.names, censors={"nope": mask}).fit(lab, flux, ivar)
    with pytest.raises(ShapeError):
        CannonModel(u.names, censors={"x2": mask[:10]}).fit(lab, flux, ivar)


def test_l1_regularization_shrinks_to_zero():
    u = PolyUniverse(3, 60, seed=7)
    lab = u.labels(600)
    flux, ivar = u.spectra(lab)
    m0 = CannonModel(u.names).fit(lab, flux, ivar)
    m1 = CannonModel(u.names, regularization=1e4).fit(lab, flux, ivar)
    assert np.abs(m1.theta_[:, 1:]).sum() < np.abs(m0.theta_[:, 1:]).sum()
    assert (m1.theta_[:, 1:] == 0).sum() > (m0.theta_[:, 1:] == 0).sum()
    assert np.all(np.isfinite(m1.theta_))


def test_missing_pixels_and_nan_flux(wheeler_size):
    u = PolyUniverse(3, 80, seed=8)
    lab = u.labels(500)
    flux, ivar = u.spectra(lab)
    rng = np.random.default_rng(0)
    bad = rng.random(flux.shape) < 0.1
    ivar[bad] = 0.0
    flux[bad] = np.nan
    flux[0, 0] = np.inf
    m = CannonModel(u.names).fit(lab, flux, ivar)
    assert np.all(np.isfinite(m.theta_)) and np.all(np.isfinite(m.s2_))
    r = m.infer(flux[:50], ivar[:50])
    assert np.all(np.isfinite(r.labels)) and r.converged.all()
    # a star with no valid pixel is flagged, never returned as a number
    r = m.infer(np.full((1, 80), np.nan), np.zeros((1, 80)))
    assert not r.converged[0] and np.all(np.isnan(r.labels[0]))
    # ... and does not disturb the other stars of its chunk (their linear-algebra start included)
    f2, i2 = flux[:50].copy(), ivar[:50].copy()
    f2[7], i2[7] = np.nan, 0.0
    r2 = m.infer(f2, i2)
    assert np.all(np.isnan(r2.labels[7])) and not r2.converged[7]
    keep = np.arange(50) != 7
    ref = m.infer(flux[:50], ivar[:50])
    assert np.array_equal(r2.start[keep], ref.start[keep])
    assert np.allclose(r2.labels[keep], ref.labels[keep])


def test_save_load_round_trip(tmp_path, wheeler_size):
    u, lab, flux, ivar, model = wheeler_size
    path = model.save(tmp_path / "model.npz")
    m2 = CannonModel.load(path)
    np.testing.assert_array_equal(m2.theta_, model.theta_)
    np.testing.assert_array_equal(m2.predict(lab[:5]), model.predict(lab[:5]))
    r1, r2 = model.infer(flux[:20], ivar[:20]), m2.infer(flux[:20], ivar[:20])
    np.testing.assert_array_equal(r1.labels, r2.labels)
    assert m2.term_names == model.term_names and m2.training_hash_ == model.training_hash_
    # no pickle inside: the file loads with allow_pickle=False and carries JSON metadata
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["metadata"]))
    assert meta["format"] == "cannonade-model" and meta["label_names"] == u.names


def test_censored_model_round_trip(tmp_path):
    u = PolyUniverse(2, 40, seed=9)
    lab = u.labels(300)
    mask = np.arange(40) < 20
    m = CannonModel(u.names, censors={"x1": mask}, scale="percentile").fit(lab, *u.spectra(lab))
    m2 = CannonModel.load(m.save(tmp_path / "c.npz"))
    np.testing.assert_array_equal(m2.censors["x1"], mask)
    np.testing.assert_array_equal(m2.predict(lab[:3]), m.predict(lab[:3]))


def test_bad_model_files(tmp_path, wheeler_size):
    model = wheeler_size[-1]
    path = model.save(tmp_path / "m.npz")
    data = path.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="trunc.npz"):
        CannonModel.load(trunc)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["metadata"]))
    meta["format_version"] = 99
    arrays["metadata"] = np.array(json.dumps(meta))
    future = tmp_path / "future.npz"
    np.savez(future, **arrays)
    with pytest.raises(ModelFileError, match="version 99"):
        CannonModel.load(future)
    meta["format_version"] = 1
    arrays["metadata"] = np.array(json.dumps(meta))
    arrays["s2"] = arrays["s2"][:-1]
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, **arrays)
    with pytest.raises(ModelFileError, match="s2"):
        CannonModel.load(bad_shape)
    with pytest.raises(ModelFileError):
        CannonModel.load(tmp_path / "missing.npz")
    assert not zipfile.is_zipfile(trunc) or True  # truncated file stays where it is


def test_bad_input_raises_named_errors():
    u = PolyUniverse(3, 30, seed=10)
    lab = u.labels(50)
    flux, ivar = u.spectra(lab)
    m = CannonModel(u.names)
    with pytest.raises(NotFittedError, match="before fit"):
        m.infer(flux, ivar)
    with pytest.raises(ShapeError, match=r"\(50, 30\)"):
        m.fit(lab, flux, ivar[:, :-1])
    with pytest.raises(ShapeError, match="49 rows"):
        m.fit(lab[:49], flux, ivar)
    bad = lab.copy()
    bad[7, 1] = np.nan
    with pytest.raises(LabelError, match="'x1' of star 7"):
        m.fit(bad, flux, ivar)
    with pytest.raises(TrainingSetError, match="cannot constrain 10"):
        m.fit(lab[:5], flux[:5], ivar[:5])
    with pytest.raises(TrainingSetError, match="empty"):
        m.fit(lab[:0], flux[:0], ivar[:0])
    from astropy.table import Table

    t = Table(lab, names=["x0", "x1", "zz"])
    with pytest.raises(LabelError, match="x2"):
        m.fit(t, flux, ivar)
    m.fit(Table(lab, names=u.names), flux, ivar)  # a table with the right columns works
    with pytest.raises(ShapeError, match="29"):
        m.infer(flux[:, :29], ivar[:, :29])


def test_golden_theta_on_real_apogee(shared_data):
    """Weighted least squares on the file's terms and pivots reproduces AnniesLasso's θ."""
    path = shared_data / "apogee_giants_671.npz"
    if not path.exists():
        pytest.skip("apogee_giants_671.npz absent")
    d = np.load(path, allow_pickle=False)
    m = CannonModel(
        list(d["label_names"]),
        scale={"offset": d["reference_pivots"], "scale": 1.0},
        terms=d["reference_term_exponents"],
    )
    m.fit(d["labels"].astype(float), d["flux"], 1.0 / d["flux_err"] ** 2, s2=d["reference_scatter"] ** 2)
    np.testing.assert_allclose(m.theta_, d["reference_theta"], rtol=1e-6, atol=0)


def test_real_apogee_cross_validation(shared_data):
    path = shared_data / "apogee_giants_671.npz"
    if not path.exists():
        pytest.skip("apogee_giants_671.npz absent")
    d = np.load(path, allow_pickle=False)
    m = CannonModel(["teff", "logg", "m_h"], order=2)
    cv = cross_validate(m, d["labels"].astype(float), d["flux"], 1.0 / d["flux_err"] ** 2, k=12, seed=0)
    # 100 pixels only, so precision is modest (measured: 173 K, 0.36 dex, 0.15 dex; r ≈ 0.7–0.75)
    spread = d["labels"].std(axis=0)
    assert np.all(cv.scatter < 0.7 * spread), (cv.scatter, spread)
    assert np.all(cv.corr > 0.6)
    assert np.all(np.abs(cv.bias) < 0.2 * cv.scatter)
    assert cv.converged.mean() > 0.95


def test_cross_validation_on_known_truth():
    u = PolyUniverse(3, 150, seed=11)
    lab = u.labels(600)
    flux, ivar = u.spectra(lab)
    cv = cross_validate(CannonModel(u.names), lab, flux, ivar, k=12, seed=0)
    assert cv.predicted.shape == lab.shape and np.bincount(cv.fold).tolist() == [50] * 12
    assert np.all(np.abs(cv.bias) < 0.2 * cv.scatter + 1e-12)
    assert np.all(cv.corr > 0.99)
    # the robust scatter agrees with the formal errors of a model that did not see the star
    np.testing.assert_allclose(cv.scatter / np.median(cv.errors, axis=0), 1.0, atol=0.25)
    t = cv.table()
    assert list(t["label"]) == u.names and len(cv.predictions_table()) == 600
    # same seed, same folds
    cv2 = cross_validate(CannonModel(u.names), lab, flux, ivar, k=12, seed=0)
    np.testing.assert_array_equal(cv.fold, cv2.fold)


def test_pixels_the_training_set_cannot_constrain_are_excluded():
    """A pixel seen by fewer stars than there are terms: no crash, excluded from inference."""
    u = PolyUniverse(3, 40, seed=12)
    lab = u.labels(300)
    flux, ivar = u.spectra(lab)
    ivar[3:, 0] = 0.0  # pixel 0: only 3 stars
    ivar[:, 1] = 0.0  # pixel 1: none
    flux[:, 1] = np.nan
    m = CannonModel(u.names).fit(lab, flux, ivar)
    assert not m.pixel_ok_[0] and not m.pixel_ok_[1] and m.pixel_ok_[2:].all()
    assert np.all(np.isnan(m.predict(lab[:2])[:, :2]))
    r = m.infer(flux[3:20], ivar[3:20])
    assert r.converged.all() and np.all(r.dof == 38 - 3)
    cv = cross_validate(m, lab, flux, ivar, k=4, seed=1)  # folds must survive such pixels too
    assert np.all(np.isfinite(cv.scatter))


@pytest.mark.parametrize("threads", [2, 3])
def test_training_threads_give_the_same_bits_as_one(threads, monkeypatch):
    """Pixel batches trained on a pool of threads: θ, s², the usable pixels and the training-set
    hash are the same bits as batch by batch on one thread (censored terms, L1 and bad pixels
    included); a batch that raises stops the training with its error."""
    import hashlib

    from cannonade.cannon import training

    u = PolyUniverse(3, 150, seed=11)
    lab = u.labels(400)
    flux, ivar = u.spectra(lab)
    ivar[:, 40:45] = 0.0  # pixels without data
    ivar[::7, 90] = 0.0
    X = design_matrix((lab - lab.mean(0)) / lab.std(0), u.E)
    active = np.ones((u.P, len(u.E)), dtype=bool)
    active[::4, u.E[:, 2] > 0] = False
    reg = np.where(np.arange(u.P) % 5 == 0, 50.0, 0.0)
    runs = []
    for n in (1, threads):
        digest = hashlib.sha256()
        out = training.train_pixels(X, u.E, flux, ivar, active=active, regularization=reg, pixel_chunk=16,
                                    digest=digest, show_progress=False, threads=n)
        runs.append((*out, digest.hexdigest()))
    (t1, s1, ok1, h1), (t2, s2, ok2, h2) = runs
    assert np.array_equal(t1, t2) and np.array_equal(s1, s2) and np.array_equal(ok1, ok2) and h1 == h2
    assert not ok1[40:45].any() and ok1.sum() == u.P - 5
    fit, calls = training._fit_batch, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 4:
            raise ZeroDivisionError("batch 4")
        return fit(*args)

    monkeypatch.setattr(training, "_fit_batch", failing)
    with pytest.raises(ZeroDivisionError, match="batch 4"):
        training.train_pixels(X, u.E, flux, ivar, pixel_chunk=16, show_progress=False, threads=threads)
