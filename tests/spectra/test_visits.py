"""Repeat visits inside apStar files, prepared as the store's spectra (real DR17 file)."""

import numpy as np

from cannonade.spectra import surveys
from cannonade.spectra.ingest import prepare_files
from cannonade.spectra.visits import prepare_visits


def test_apstar_visits_are_prepared_like_the_stored_combined_spectrum(shared_data):
    f = str(shared_data / "apogee" / "apStar-dr17-2M17335483-2753043.fits")
    lam = str(sorted((shared_data / "lamost_dr1" / "spectra").glob("*.fits"))[0])
    grid = surveys.common_grid("apogee")
    flux, ivar, src, failures = prepare_visits([f, lam], grid, normalise="chebyshev")
    # three visits of the first file; the LAMOST file is reported, not fatal
    assert flux.shape == ivar.shape == (3, grid.size) and list(src) == [0, 0, 0]
    assert len(failures) == 1 and failures[0][0] == lam and "apStar" in failures[0][1]
    comb, civ, _, _ = prepare_files([f], grid, normalise="chebyshev")
    good = (ivar > 0).all(axis=0) & (civ[0] > 0)
    assert good.sum() > 0.5 * grid.size
    # normalised as the store's row: continuum near 1, and the visits average to the combined spectrum
    assert abs(np.median(flux[:, good]) - 1.0) < 0.05
    mean = np.average(flux[:, good], axis=0, weights=ivar[:, good])
    resid = (mean - comb[0, good]) * np.sqrt(ivar[:, good].sum(axis=0))
    assert np.median(np.abs(resid)) < 1.5  # within the visits' own noise (|z| median ~0.67)
    # each visit is noisier than the combined spectrum
    assert np.all(np.median(ivar[:, good], axis=1) < np.median(civ[0, good]))
    one, _, src1, _ = prepare_visits([f], grid, normalise="chebyshev", max_visits=2)
    assert one.shape[0] == 2 and list(src1) == [0, 0]
