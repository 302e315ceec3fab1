"""Training labels refined by the spectra (cannonade.cannon.refinement): the weighted mean, its
errors, and the recovery of known truth from noisy catalogue labels and noisy predictions."""

import numpy as np
import pytest

from cannonade.cannon.crossval import half_percentile_width
from cannonade.cannon.refinement import SPECTRAL_ERROR_FLOOR, combine_labels, deattenuate, spectral_errors
from cannonade.exceptions import CannonadeError, ShapeError


def test_the_weighted_mean_and_its_error_by_hand():
    labels = np.array([[1.0, 10.0]])
    errors = np.array([[0.1, 1.0]])
    p1, p2 = np.array([[2.0, 12.0]]), np.array([[np.nan, 11.0]])
    s1, s2 = np.array([0.2, 2.0]), np.array([0.1, 1.0])
    refined, err = combine_labels(labels, errors, [p1, p2], [s1, s2])
    # label 0: weights 100 (catalogue), 25 (p1), none (p2 is NaN)
    assert refined[0, 0] == pytest.approx((100 * 1.0 + 25 * 2.0) / 125)
    assert err[0, 0] == pytest.approx(1 / np.sqrt(125))
    # label 1: weights 1, 0.25, 1
    assert refined[0, 1] == pytest.approx((10.0 + 0.25 * 12.0 + 11.0) / 2.25)
    assert err[0, 1] == pytest.approx(1 / np.sqrt(2.25))


def test_missing_labels_stay_missing_and_inputs_are_not_modified():
    labels = np.array([[1.0, np.nan], [2.0, 3.0], [3.0, 4.0]])
    errors = np.array([[0.1, 0.2], [np.nan, 0.2], [0.1, -1.0]])  # a missing and a negative error: the median
    pred = np.array([[1.5, 3.5], [2.5, 3.5], [3.5, 3.5]])
    keep = (labels.copy(), errors.copy(), pred.copy())
    refined, err = combine_labels(labels, errors, [pred], [np.array([0.1, 0.2])])
    assert np.isnan(refined[0, 1]) and np.isnan(err[0, 1])
    assert refined[1, 0] == pytest.approx(2.25) and refined[2, 1] == pytest.approx(3.75)
    for a, b in zip((labels, errors, pred), keep):
        assert np.array_equal(a, b, equal_nan=True)


def test_a_label_without_any_error_is_kept_as_it_is():
    labels = np.array([[1.0, 5.0], [2.0, 6.0]])
    errors = np.array([[0.1, np.nan], [0.1, np.nan]])
    refined, err = combine_labels(labels, errors, [labels + 1.0], [np.array([0.1, 0.1])])
    assert np.array_equal(refined[:, 1], labels[:, 1]) and np.all(np.isnan(err[:, 1]))
    assert np.allclose(refined[:, 0], labels[:, 0] + 0.5)


def test_noisy_labels_and_predictions_recover_the_truth_better_than_either():
    rng = np.random.default_rng(3)
    n = 20000
    truth = rng.normal(size=(n, 2)) * [300.0, 0.2] + [5000.0, 0.0]
    sig_cat, sig_a, sig_b = np.array([60.0, 0.04]), np.array([40.0, 0.05]), np.array([50.0, 0.03])
    labels = truth + rng.normal(size=truth.shape) * sig_cat
    errors = np.broadcast_to(sig_cat, truth.shape).copy()
    pa = truth + rng.normal(size=truth.shape) * sig_a
    pb = truth + rng.normal(size=truth.shape) * sig_b
    ea, eb = spectral_errors(pa, labels, errors), spectral_errors(pb, labels, errors)
    # the prediction errors are recovered from their scatter about the noisy labels (within 5 %)
    np.testing.assert_allclose(ea, sig_a, rtol=0.05)
    np.testing.assert_allclose(eb, sig_b, rtol=0.05)
    refined, err = combine_labels(labels, errors, [pa, pb], [ea, eb])
    expected = 1 / np.sqrt(1 / sig_cat**2 + 1 / sig_a**2 + 1 / sig_b**2)
    np.testing.assert_allclose(np.std(refined - truth, axis=0), expected, rtol=0.05)
    np.testing.assert_allclose(np.median(err, axis=0), expected, rtol=0.05)
    assert np.all(np.std(refined - truth, axis=0) < 0.75 * np.minimum(sig_cat, np.minimum(sig_a, sig_b)))
    assert np.all(np.abs(np.mean(refined - truth, axis=0)) < 0.05 * expected)  # no bias: the catalogue's scale


def test_the_prediction_error_has_a_floor():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(5000, 1))
    pred = labels + 0.1 * rng.normal(size=labels.shape)
    errors = np.full(labels.shape, 0.5)  # quoted errors larger than the whole scatter
    w = half_percentile_width(pred - labels)
    assert spectral_errors(pred, labels, errors)[0] == pytest.approx(SPECTRAL_ERROR_FLOOR * w[0])


def test_mismatched_shapes_are_named_errors():
    a = np.zeros((3, 2))
    with pytest.raises(ShapeError):
        spectral_errors(a, np.zeros((3, 3)), a)
    with pytest.raises(ShapeError):
        combine_labels(a, a, [np.zeros((2, 2))], [np.zeros(2)])
    with pytest.raises(ShapeError):
        combine_labels(a, a, [a], [])
    assert issubclass(ShapeError, CannonadeError)


def test_compressed_predictions_are_put_back_on_the_labels_scale():
    rng = np.random.default_rng(7)
    n = 20000
    truth = rng.normal(-0.2, 0.3, n)
    labels = truth + 0.06 * rng.normal(size=n)
    pred = -0.2 + 0.8 * (truth + 0.2) + 0.04 * rng.normal(size=n)  # compressed by 0.8 about the centre
    errors = np.full(n, 0.06)
    keep = pred.copy()
    out = deattenuate(pred[:, None], labels[:, None], errors[:, None])[:, 0]
    assert np.array_equal(pred, keep)  # not modified
    assert np.polyfit(truth, pred, 1)[0] == pytest.approx(0.8, abs=0.01)
    assert np.polyfit(truth, out, 1)[0] == pytest.approx(1.0, abs=0.02)
    low = truth < np.percentile(truth, 5)  # the extreme stars are no longer pulled to the centre
    assert abs(np.median(out[low] - truth[low])) < 0.01 < abs(np.median(pred[low] - truth[low]))
    # a label without spread beyond its errors, or with too few stars, is left alone
    flat = deattenuate(pred[:5, None], labels[:5, None], errors[:5, None])
    assert np.array_equal(flat, pred[:5, None])
