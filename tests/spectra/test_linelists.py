"""Element line windows (Wheeler+2020 Table 2) and wavelength conversions."""

import numpy as np
import pytest

from cannonade.exceptions import ColumnError
from cannonade.spectra.linelists import (
    BALMER_LINES,
    STRONG_LINES,
    LineListError,
    air_to_vacuum,
    load_line_windows,
    vacuum_to_air,
    window_mask,
)


def test_default_windows_are_wheeler_table2():
    w = load_line_windows()
    # all 21 elements of Table 2, with their window counts
    expected = {"Al": 4, "Ba": 2, "Ca": 5, "Co": 3, "Cr": 9, "Cu": 1, "Eu": 2, "K": 1, "La": 4, "Li": 1, "Mg": 2,
                "Mn": 4, "Na": 3, "Ni": 8, "O": 3, "Sc": 10, "Si": 4, "Ti": 21, "V": 16, "Y": 4, "Zn": 2}
    assert {k: len(v) for k, v in w.items()} == expected
    for el, arr in w.items():
        assert arr.shape[1] == 2 and np.all(arr[:, 1] > arr[:, 0]), el
        assert np.all(np.diff(arr[:, 0]) > 0), el  # sorted
        assert np.all((arr > 4700) & (arr < 7900)), el  # inside the four HERMES CCDs' span
    np.testing.assert_allclose(w["Eu"], [[5818.61, 5818.99], [6644.97, 6645.29]])
    np.testing.assert_allclose(w["O"][0], [7771.53, 7772.27])


def test_user_csv(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("# my windows\nelement,start,end\nFe,5000.0,5001.0\nFe,4000,4000.5\nMg,5183,5184\n")
    w = load_line_windows(p)
    assert list(w) == ["Fe", "Mg"]
    np.testing.assert_allclose(w["Fe"], [[4000, 4000.5], [5000, 5001]])


@pytest.mark.parametrize(
    "text, exc, needle",
    [
        ("element,start\nFe,1\n", ColumnError, "end"),
        ("element,start,end\nFe,5001,5000\n", LineListError, "line 2"),
        ("element,start,end\nFe,abc,5000\n", LineListError, "non-numeric"),
        ("element,start,end\n", LineListError, "no windows"),
    ],
)
def test_bad_csv_named_errors(tmp_path, text, exc, needle):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(exc, match=needle):
        load_line_windows(p)


def test_missing_file():
    with pytest.raises(LineListError, match="not found"):
        load_line_windows("/nonexistent/windows.csv")


def test_air_vacuum_roundtrip_and_known_values():
    air = np.array([3933.66, 5889.95, 6562.80, 8542.09, 15000.0])
    vac = air_to_vacuum(air)
    # known vacuum wavelengths: Ca II K 3934.78, Na D2 5891.58, H alpha 6564.61, Ca II 8544.44
    np.testing.assert_allclose(vac[:4], [3934.78, 5891.58, 6564.61, 8544.44], atol=0.02)
    np.testing.assert_allclose(vacuum_to_air(vac), air, atol=1e-3)


def test_window_mask_vacuum_and_rv():
    wl = np.linspace(5800, 5830, 3001)
    win = np.array([[5818.61, 5818.99]])
    m_air = window_mask(wl, win)
    assert wl[m_air].min() >= 5818.61 and wl[m_air].max() <= 5818.99
    m_vac = window_mask(wl, win, vacuum=True)
    assert abs(wl[m_vac].mean() - air_to_vacuum(5818.8)) < 0.02
    m_rv = window_mask(wl, win, rv=300.0)  # +300 km/s moves it by ~5.8 Å
    assert abs(wl[m_rv].mean() - 5818.8 * (1 + 300 / 299792.458)) < 0.02


def test_strong_and_balmer_lists_sane():
    assert len({s[0] for s in STRONG_LINES}) == len(STRONG_LINES)
    for label, el, wl, ion, chi, ew, log_a in STRONG_LINES:
        assert 3700 < wl < 9000 and ion in (0, 1) and ew > 0 and log_a < 0, label
    assert [b[0] for b in BALMER_LINES][:2] == ["H alpha", "H beta"]


def _morton_vacuum_index(vacuum):
    """Refractive index of standard air, IAU / Morton (2000) eq. 8, in terms of the *vacuum* wavenumber."""
    s2 = (1e4 / vacuum) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def _ciddor_sdss(air):
    """SDSS idlutils ``airtovac`` (Ciddor 1996), iterated to convergence."""
    vac = np.array(air, dtype=float)
    for _ in range(10):
        s2 = (1e4 / vac) ** 2
        vac = air * (1.0 + 5.792105e-2 / (238.0185 - s2) + 1.67917e-3 / (57.362 - s2))
    return vac


def test_air_to_vacuum_is_the_iau_standard():
    """Fails for Morton's vacuum formula evaluated at the air wavenumber (off by 1e-5-1e-4 A)."""
    air = np.array([2500.0, 3933.66, 5000.0, 6562.80, 8000.0, 15000.0, 16500.0])
    # the exact inverse of lambda_air = lambda_vac / n(lambda_vac), by fixed-point iteration
    vac = air.copy()
    for _ in range(20):
        vac = air * _morton_vacuum_index(vac)
    np.testing.assert_allclose(air_to_vacuum(air), vac, rtol=0, atol=1e-6)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(air)), air, rtol=0, atol=1e-6)
    # the values quoted everywhere, and SDSS's own Ciddor (1996) conversion to 1e-8 (3 m/s)
    np.testing.assert_allclose(air_to_vacuum([5000.0, 8000.0]), [5001.39, 8002.20], atol=0.005)
    np.testing.assert_allclose(air_to_vacuum(air), _ciddor_sdss(air), rtol=1e-8, atol=0)
    assert air_to_vacuum(5000.0).shape == () and air_to_vacuum(np.zeros((2, 3)) + 6000).shape == (2, 3)


def test_one_air_to_vacuum_in_the_package():
    from cannonade.spectra import readers
    from cannonade.spectra.readers import galah, lamost

    assert readers.air_to_vacuum is air_to_vacuum is lamost.air_to_vacuum is galah.air_to_vacuum
