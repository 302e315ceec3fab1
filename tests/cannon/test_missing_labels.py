"""Training with incomplete reference labels: ``fit(..., missing="impute")`` (issue 13).

The data are drawn from an exactly quadratic Cannon model with known θ (3 labels, N = 600,
P = 200, S/N 50–100 per star, intrinsic scatter 0.002–0.006). θ is compared with the truth
in the universe's own label scaling (a fixed ``scale``), so the three fits below are
directly comparable: complete labels, 20 % of [Fe/H] blanked and imputed, and those stars
dropped instead.
"""

import time

import numpy as np
import pytest

from cannonade import CannonModel, LabelError, TrainingSetError, cross_validate
from cannonade.cannon.crossval import full_set_imputation
from cannonade.cannon.checks import check_missing_labels
from cannonade.cannon.imputation import conditional_fit, initial_guess
from cannonade.cannon.inference import reduce_chi2
from cannonade.cannon.vectorizer import design_matrix, term_exponents

NAMES = ["teff", "logg", "fe_h"]
MU = np.array([5000.0, 3.0, -0.2])
SD = np.array([400.0, 0.8, 0.3])
FEH = 2


def quadratic_universe(seed=0, n_stars=600, n_pixels=200):
    """Labels, spectra and the true θ of an exact quadratic Cannon model (scaled labels (ℓ − MU)/SD)."""
    rng = np.random.default_rng(seed)
    E = term_exponents(3, 2)
    theta = np.zeros((n_pixels, len(E)))
    theta[:, 0] = 1.0 - rng.uniform(0.0, 0.3, n_pixels)
    deg = E.sum(axis=1)
    theta[:, deg == 1] = rng.normal(0, 0.02, (n_pixels, 3))
    theta[:, deg == 2] = rng.normal(0, 0.003, (n_pixels, int((deg == 2).sum())))
    s = rng.uniform(0.002, 0.006, n_pixels)
    lab = MU + SD * rng.normal(size=(n_stars, 3))
    sigma = np.ones((n_stars, n_pixels)) / rng.uniform(50.0, 100.0, n_stars)[:, None]
    flux = design_matrix((lab - MU) / SD, E) @ theta.T + rng.normal(size=sigma.shape) * s
    flux += rng.normal(size=flux.shape) * sigma
    missing = np.zeros(n_stars, dtype=bool)
    missing[rng.choice(n_stars, n_stars // 5, replace=False)] = True  # 20 %, at random
    return dict(theta=theta, lab=lab, flux=flux, ivar=1.0 / sigma**2, missing=missing)


def rms(a, b=0.0):
    return float(np.sqrt(np.mean((np.asarray(a) - b) ** 2)))


@pytest.fixture(scope="module")
def fits():
    u = quadratic_universe()
    lab, flux, ivar, miss = u["lab"], u["flux"], u["ivar"], u["missing"]
    blank = lab.copy()
    blank[miss, FEH] = np.nan

    def model():
        return CannonModel(NAMES, scale={"offset": MU, "scale": SD}, show_progress=False)

    complete = model().fit(lab, flux, ivar)
    t0 = time.perf_counter()
    imputed = model().fit(blank, flux, ivar, missing="impute")
    seconds = time.perf_counter() - t0
    dropped = model().fit(lab[~miss], flux[~miss], ivar[~miss])
    return dict(u=u, blank=blank, complete=complete, imputed=imputed, dropped=dropped, seconds=seconds)


def test_imputed_fit_recovers_theta_as_well_as_complete_labels(fits):
    """Measured (seed 0): θ RMS error 5.668e-4 complete, 5.675e-4 imputed (×1.001), 6.422e-4
    with the stars dropped (×1.133); worst single term ×1.016; 3 iterations, 0.1–0.5 s. Over
    six seeds and each of the three labels blanked: imputed/complete 0.999–1.006 overall, at
    most 1.031 per term; dropped/complete 1.11–1.16. Tolerances: 1.05 overall, 1.2 per term
    (the issue's), dropped ≥ 1.05."""
    truth = fits["u"]["theta"]
    err = {k: fits[k].theta_ - truth for k in ("complete", "imputed", "dropped")}
    overall = {k: rms(v) for k, v in err.items()}
    per_term = np.sqrt(np.mean(err["imputed"] ** 2, axis=0)) / np.sqrt(np.mean(err["complete"] ** 2, axis=0))
    print(f"theta RMS error: complete {overall['complete']:.4e}, imputed {overall['imputed']:.4e}, "
          f"dropped {overall['dropped']:.4e}; worst term ratio {per_term.max():.3f}; "
          f"{fits['imputed'].n_impute_iter_} iterations, shifts {fits['imputed'].impute_shifts_}, {fits['seconds']:.2f} s")
    assert overall["imputed"] <= 1.05 * overall["complete"]
    assert np.all(per_term <= 1.2), per_term
    # dropping the incomplete stars is measurably worse (fewer stars constrain θ)
    assert overall["dropped"] >= 1.05 * overall["complete"]
    assert overall["dropped"] > overall["imputed"]
    m = fits["imputed"]
    assert 1 <= m.n_impute_iter_ <= 5 and m.impute_shifts_[-1] < 0.01
    assert m.impute_converged_.all()
    # the intrinsic scatter is not disturbed (the imputed stars fit themselves a little: −0.3 %)
    ok = fits["complete"].s2_ > 0
    ratio = np.sqrt(m.s2_[ok] / fits["complete"].s2_[ok])
    assert abs(np.median(ratio) - 1.0) < 0.01


def test_imputed_labels_are_close_to_the_truth(fits):
    """Measured: RMS(imputed − true [Fe/H]) 0.0131 dex (bias −0.0006), the formal error of a
    free inference of those stars 0.0125 dex (the 12-fold CV scatter of [Fe/H] is 0.0137 dex
    with complete labels, 0.0139 with the 20 % blanked)."""
    u, m = fits["u"], fits["imputed"]
    miss = u["missing"]
    assert m.imputed_[:, FEH].tolist() == miss.tolist() and not m.imputed_[:, :FEH].any()
    assert np.all(np.isnan(m.imputed_values_[~m.imputed_]))
    err = m.imputed_values_[miss, FEH] - u["lab"][miss, FEH]
    formal = np.median(fits["complete"].infer(u["flux"][miss], u["ivar"][miss]).raw_errors[:, FEH])
    print(f"imputed [Fe/H]: bias {err.mean():+.4f}, RMS {rms(err):.4f}; formal error of a free inference {formal:.4f}")
    assert rms(err) < 1.5 * formal
    assert abs(err.mean()) < 0.3 * formal


def test_reference_values_only_in_range_and_hash(fits):
    u, m, blank = fits["u"], fits["imputed"], fits["blank"]
    np.testing.assert_array_equal(m.label_min_, np.nanmin(blank, axis=0))
    np.testing.assert_array_equal(m.label_max_, np.nanmax(blank, axis=0))
    assert m.n_train_ == 600 and not m.dropped_.any()
    # the hash is of the reference labels as given (NaN where missing) and the spectra
    again = CannonModel(NAMES, scale={"offset": MU, "scale": SD}, show_progress=False).fit(
        blank, u["flux"], u["ivar"], missing="impute")
    assert again.training_hash_ == m.training_hash_ != fits["complete"].training_hash_
    np.testing.assert_array_equal(again.theta_, m.theta_)


def test_complete_labels_give_the_same_model_either_way(fits):
    u, c = fits["u"], fits["complete"]
    m = CannonModel(NAMES, scale={"offset": MU, "scale": SD}, show_progress=False).fit(
        u["lab"], u["flux"], u["ivar"], missing="impute")
    np.testing.assert_array_equal(m.theta_, c.theta_)
    np.testing.assert_array_equal(m.s2_, c.s2_)
    assert m.training_hash_ == c.training_hash_ and m.n_impute_iter_ == c.n_impute_iter_ == 0
    assert not m.imputed_.any() and not c.imputed_.any() and not c.dropped_.any()


def test_refuse_is_the_default_and_names_the_label(fits):
    u, blank = fits["u"], fits["blank"]
    star = int(np.flatnonzero(u["missing"])[0])
    m = CannonModel(NAMES, show_progress=False)
    with pytest.raises(LabelError, match=rf"'fe_h' of star {star} is nan.*missing=\"impute\""):
        m.fit(blank, u["flux"], u["ivar"])
    with pytest.raises(LabelError, match=rf"'fe_h' of star {star}"):
        m.fit(blank, u["flux"], u["ivar"], missing="refuse")
    with pytest.raises(ValueError, match="missing must be"):
        m.fit(blank, u["flux"], u["ivar"], missing="drop")
    inf = u["lab"].copy()
    inf[3, 1] = np.inf
    with pytest.raises(LabelError, match="'logg' of star 3 is inf"):
        m.fit(inf, u["flux"], u["ivar"], missing="impute")


def test_stars_without_any_label_are_dropped(fits, caplog):
    u = fits["u"]
    lab, flux, ivar = u["lab"][:300].copy(), u["flux"][:300], u["ivar"][:300]
    lab[u["missing"][:300], FEH] = np.nan
    none = np.zeros(300, dtype=bool)
    none[[5, 77, 200]] = True
    lab[none] = np.nan
    m = CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar, missing="impute")
    assert m.dropped_.tolist() == none.tolist() and m.n_train_ == 297
    assert "3 of 300 training stars have no finite label" in caplog.text
    assert not m.imputed_[none].any() and m.imputed_.shape == (300, 3)
    # the same model as without those stars at all
    ref = CannonModel(NAMES, show_progress=False).fit(lab[~none], flux[~none], ivar[~none], missing="impute")
    np.testing.assert_array_equal(m.theta_, ref.theta_)
    assert m.training_hash_ == ref.training_hash_
    with pytest.raises(TrainingSetError, match="none of the 300 training stars"):
        CannonModel(NAMES).fit(np.full((300, 3), np.nan), flux, ivar, missing="impute")


def test_a_label_missing_for_most_stars_is_refused(fits):
    u = fits["u"]
    lab = u["lab"].copy()
    lab[:310, 1] = np.nan  # logg missing for 310 of 600 stars
    with pytest.raises(TrainingSetError, match=r"'logg' \(310 of 600 stars\).*50%"):
        CannonModel(NAMES).fit(lab, u["flux"], u["ivar"], missing="impute")
    lab[290:310, 1] = u["lab"][290:310, 1]  # 290 of 600 is allowed
    known, keep = check_missing_labels(lab, NAMES)
    assert keep.all() and known.sum() == 3 * 600 - 290


def test_cross_validation_with_missing_labels(fits):
    """Each fold imputes; a held-out star's missing label has no truth, so that label's
    statistics use the 480 stars that have it. Measured (k = 4): [Fe/H] scatter 0.0141 dex
    with the label blanked, 0.0139 with complete labels (Teff 19.75 K and 19.76 K)."""
    u, blank = fits["u"], fits["blank"]
    model = CannonModel(NAMES, show_progress=False)  # standard scaling: from the known values
    with pytest.raises(LabelError, match="'fe_h'"):
        cross_validate(model, blank, u["flux"], u["ivar"], k=4, seed=0)
    cv = cross_validate(model, blank, u["flux"], u["ivar"], k=4, seed=0, missing="impute")
    full = cross_validate(model, u["lab"], u["flux"], u["ivar"], k=4, seed=0)
    assert np.all(np.isnan(cv.truth[u["missing"], FEH])) and np.all(np.isfinite(cv.predicted))
    t = cv.table()
    assert list(t["n"]) == [600, 600, 480]
    assert np.all(np.isfinite(t["bias"])) and np.all(np.isfinite(t["scatter"])) and np.all(np.isfinite(t["corr"]))
    print(f"CV scatter with [Fe/H] blanked {np.asarray(cv.scatter).round(4)}, complete {np.asarray(full.scatter).round(4)}")
    np.testing.assert_allclose(cv.scatter, full.scatter, rtol=0.15)
    # the imputed labels are within the label's CV scatter (the issue asks for 2×)
    miss = u["missing"]
    imputed_rms = rms(fits["imputed"].imputed_values_[miss, FEH] - u["lab"][miss, FEH])
    assert imputed_rms < 2.0 * cv.scatter[FEH]
    # a model fitted on these labels: the folds reuse its imputed values (one fit per fold)
    fitted = fits["imputed"]
    filled = full_set_imputation(fitted, blank)
    assert filled is not None and np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[~miss], blank[~miss])
    np.testing.assert_array_equal(filled[miss, FEH], fitted.imputed_values_[miss, FEH])
    assert full_set_imputation(fitted, u["lab"]) is None  # not the labels it imputed
    fixed = cross_validate(fitted, blank, u["flux"], u["ivar"], k=4, seed=0, missing="impute")
    print(f"CV scatter, folds on the full set's imputed values {np.asarray(fixed.scatter).round(4)}")
    np.testing.assert_allclose(fixed.scatter, cv.scatter, rtol=0.1)
    assert list(fixed.table()["n"]) == [600, 600, 480]
    # calibrate() uses, per label, the stars that have it
    m = CannonModel(NAMES, show_progress=False).fit(blank, u["flux"], u["ivar"], missing="impute")
    with _no_training_warning():
        m.calibrate(cv)
    cal = m.calibration_
    assert cal.n_used[FEH] + cal.n_clipped[FEH] <= 480 < cal.n_used[0] + cal.n_clipped[0] + 1
    np.testing.assert_allclose(cal.cv_rms[FEH], np.sqrt(np.nanmean(cv.residuals[:, FEH] ** 2)))
    assert np.all(np.isfinite(cal.train_scaled)) and cal.train_scaled.shape[0] == 600
    r = m.infer(u["flux"][:20], u["ivar"][:20])
    assert np.all(np.isfinite(r.errors)) and np.all(np.isfinite(r.train_distance))


class _no_training_warning:
    """Fails if calibrate() warns that the CV's labels are not the model's training set."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        bad = [w for w in self.caught if "not the model's training set" in str(w.message)]
        assert not bad, bad


def test_initial_guess_and_conditional_fit_are_pure_and_vectorised():
    """Step 1 regresses a missing label on the known ones; step 3 moves only the free labels."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 3))
    x[:, 2] = 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.05 * rng.normal(size=400)
    known = np.ones_like(x, dtype=bool)
    known[:50, 2] = False
    known[50:60, 0] = False
    guess = initial_guess(np.where(known, x, np.nan), known)
    assert np.all(np.isfinite(guess)) and np.array_equal(guess[known], x[known])
    assert rms(guess[:50, 2] - x[:50, 2]) < 0.1  # the regression, not the median (spread 0.95)
    u = quadratic_universe(seed=4, n_stars=64, n_pixels=100)
    E = term_exponents(3, 2)
    xs = (u["lab"] - MU) / SD
    problem = reduce_chi2(u["theta"], np.zeros(100), u["flux"], u["ivar"])
    free = np.zeros((64, 3), dtype=bool)
    free[::2, 0] = True
    free[1::2, 1:] = True
    start = np.where(free, 0.0, xs)
    out, converged = conditional_fit(problem, E, start, free)
    assert converged.all()
    np.testing.assert_array_equal(out[~free], xs[~free])  # fixed labels never move
    assert rms(out[free] - xs[free]) < 0.1
