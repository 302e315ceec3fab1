"""`cannonade demo --quick`: the Cannon core on in-memory mock spectra, calibrated."""

import numpy as np

from cannonade.demo import quick_demo


def test_quick_demo_reports_calibrated_errors_near_the_cv_scatter():
    table, summary, converged = quick_demo(seed=0)
    assert converged > 0.95 and "training stars" in summary
    e, raw, scatter = (np.asarray(table[c], float) for c in ("median_error", "median_formal_error", "cv_scatter"))
    assert np.all(e > 2 * raw)  # the formal errors miss the model mismatch
    assert np.all((e > 0.5 * scatter) & (e < 2.0 * scatter))  # calibrated errors are on the CV's scale
