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
