"""The pure functions behind the pipeline stages, each against hand-computed answers."""

import numpy as np
import pytest
from astropy.table import Table

from cannonade.catalogue.visits import combine_errors, combine_visits
from cannonade.pipeline.inputs import column
from cannonade.pipeline.stages.ingest import spectrum_files
from cannonade.pipeline.stages.labels import weighted_mean_label
from cannonade.pipeline.stages.split import classify, is_giant
from cannonade.pipeline.windows import label_element, reduced_window_chi2


def test_wheeler_equation_1():
    # cool stars: the boundary is log g = 4.18; hot stars: −6e-4 Teff + 7.3 (5500 K -> 4.0)
    assert is_giant([4800, 4800, 5500, 5500, 6500], [4.1, 4.3, 3.9, 4.1, 3.5]).tolist() == [True, False, True, False, False]
    assert not is_giant([np.nan], [2.0])[0]


def test_lasp_sentinels_are_missing_not_giants():
    """LASP writes −9999 for Teff/log g it could not measure: 'either', never the giant model."""
    t = Table(dict(teff=[4800.0, -9999.0, 5800.0], logg=[2.5, -9999.0, -9999.0]))
    teff, logg = column(t, "teff"), column(t, "logg")
    assert np.isnan(teff[1]) and np.isnan(logg[2])
    assert classify(teff, logg).tolist() == ["giant", "either", "either"]
    assert np.asarray(t["teff"])[1] == -9999.0  # the input is not mutated


def test_repeat_visit_combination_is_snr_weighted():
    ids = np.array(["a", "b", "a", "a"])
    snr = np.array([10.0, 50.0, 30.0, np.nan])
    values = np.array([[1.0], [5.0], [2.0], [100.0]])
    uniq, inv, mean, n, used = combine_visits(ids, snr, values)
    assert uniq.tolist() == ["a", "b"] and n.tolist() == [3, 1] and used.all()
    np.testing.assert_allclose(mean[:, 0], [(10 * 1 + 30 * 2) / 40, 5.0])  # NaN S/N gets no weight


def test_visits_of_another_model_are_not_averaged():
    """Star a: best visit (S/N 40) is a giant-model one; its dwarf-model visit is left out."""
    ids = np.array(["a", "a", "a", "b"])
    snr = np.array([40.0, 20.0, 30.0, 10.0])
    teff = np.array([[4500.0], [5600.0], [4600.0], [6000.0]])
    model = np.array(["giant", "dwarf", "giant", "dwarf"])
    _, inv, mean, n, used = combine_visits(ids, snr, teff, model=model)
    np.testing.assert_allclose(mean[:, 0], [(40 * 4500 + 30 * 4600) / 70, 6000.0])
    assert n.tolist() == [2, 1] and used.tolist() == [True, False, True, True]
    err = combine_errors(inv, snr, np.array([[10.0], [10.0], [20.0], [5.0]]), used, 2)
    np.testing.assert_allclose(err[:, 0], [np.hypot(40 * 10, 30 * 20) / 70, 5.0])


def test_combined_error_falls_back_to_equal_weights():
    err = combine_errors(np.array([0, 0]), np.array([np.nan, np.nan]), np.array([[3.0], [4.0]]), np.array([True, True]), 1)
    np.testing.assert_allclose(err[0, 0], 2.5)  # sqrt(9 + 16) / 2


def test_error_weighted_mean_label():
    v = np.array([[0.1, 0.3, np.nan], [np.nan, np.nan, np.nan]])
    e = np.array([[0.1, 0.2, 0.1], [0.1, 0.1, 0.1]])
    m, err = weighted_mean_label(v, e)
    np.testing.assert_allclose(m[0], (0.1 / 0.01 + 0.3 / 0.04) / (1 / 0.01 + 1 / 0.04))
    assert np.isnan(m[1]) and np.isfinite(err[0])


def test_label_elements():
    assert [label_element(n) for n in ("fe_h", "mg_fe", "teff", "mean_alpha_fe")] == ["Fe", "Mg", None, "Mean_alpha"]


def test_windowed_chi2_is_per_pixel_so_missing_pixels_do_not_escape():
    """Two stars equally bad in the window; one has half its window pixels missing (NaN)."""
    mask = np.array([True] * 8 + [False] * 4)
    full = np.full((1, 12), 5.0)
    half = full.copy()
    half[0, :4] = np.nan
    chi2 = reduced_window_chi2(np.vstack([full, half, np.full((1, 12), np.nan)]), mask)
    np.testing.assert_allclose(chi2[:2], [5.0, 5.0])
    assert np.isnan(chi2[2])  # a star without labels or data: NaN, not 0


def test_target_spectra_may_be_a_list_file(tmp_path):
    (tmp_path / "spec").mkdir()
    lst = tmp_path / "files.txt"
    lst.write_text("# LAMOST files\nspec/a.fits.gz\n/abs/b.fits\n\n")
    assert spectrum_files(lst, ["ignored"]) == [str(tmp_path / "spec" / "a.fits.gz"), "/abs/b.fits"]
    assert spectrum_files(tmp_path / "spec", ["a.fits", "c.fits"]) == [str(tmp_path / "spec" / "a.fits"), str(tmp_path / "spec" / "c.fits")]
    from cannonade import ConfigError

    with pytest.raises(ConfigError, match="neither a directory nor a list file"):
        spectrum_files(tmp_path / "missing", ["a.fits"])


def test_failed_star_gets_nan_window_chi2_not_a_chi2_at_zero_labels():
    """A spectrum with no valid pixel cannot be inferred: its windowed χ² is NaN (Teff = 0 K is never used)."""
    from cannonade.cannon.model import CannonModel
    from cannonade.pipeline.stages.infer import infer_observations

    rng = np.random.default_rng(0)
    labels = np.column_stack([rng.uniform(4500, 6000, 200), rng.uniform(-1, 0.3, 200)])
    P = 40
    slope = rng.normal(0, 0.05, (2, P))
    x = (labels - labels.mean(0)) / labels.std(0)
    flux = 1 + x @ slope + rng.normal(0, 0.01, (200, P))
    ivar = np.full_like(flux, 1e4)
    m = CannonModel(["teff", "fe_h"], order=1).fit(labels, flux, ivar)
    m.show_progress = False
    f, iv = flux[:3].copy(), ivar[:3].copy()
    iv[1] = 0.0  # nothing to fit
    masks = {"fe_h": np.arange(P) < 10}
    from cannonade.cannon.calibration import UncalibratedWarning

    with pytest.warns(UncalibratedWarning):  # an uncalibrated model says its errors are formal
        out = infer_observations({"all": m}, np.array(["all"] * 3), f, iv, ["teff", "fe_h"], masks)
    from cannonade.flags import Flag

    assert np.all(out["flags"] & int(Flag.UNCALIBRATED))  # ... and flags every star UNCALIBRATED
    assert np.isnan(out["labels"][1]).all() and not out["converged"][1]
    assert np.isnan(out["chi2_windows"][1, 1])
    assert np.isfinite(out["chi2_windows"][[0, 2], 1]).all() and np.isnan(out["chi2_windows"][:, 0]).all()
