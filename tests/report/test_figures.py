"""Each figure function writes a non-empty PNG from small inputs, and refuses an empty or
wrong-shaped input with a named error (a CannonadeError whose message names the argument/column)."""

import struct

import numpy as np
import pytest
from astropy.table import Table

from cannonade.exceptions import CannonadeError, ColumnError, ShapeError
from cannonade.report import figures_model as fm
from cannonade.report import figures_science as fs
from cannonade.report.inputs import ReportInputError
from cannonade.report.style import axis_label, quantity_name

RNG = np.random.default_rng(0)


def png_size(path):
    """(width, height) of a PNG file; fails unless it is a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_image(path):
    assert path.is_file() and path.stat().st_size > 2000
    w, h = png_size(path)
    assert w > 300 and h > 200


def assert_named(excinfo, *words):
    assert isinstance(excinfo.value, CannonadeError)
    msg = str(excinfo.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


# ------------------------------------------------------------------ inputs
def predictions(n=80, labels=("teff", "fe_h")):
    t = Table()
    for lab, scale in zip(labels, (500.0, 0.3)):
        x = RNG.normal(0, scale, n) + (5000.0 if lab == "teff" else 0.0)
        t[lab], t[f"cv_{lab}"] = x, x + RNG.normal(0, 0.1 * scale, n)
    return t


def test_axis_labels_carry_units():
    assert axis_label("teff") == r"$T_\mathrm{eff}$ [K]"
    assert axis_label("fe_h") == "[Fe/H] [dex]"
    assert axis_label("mg_fe") == "[Mg/Fe] [dex]"
    assert axis_label("fe_hCann") == "[Fe/H] [dex]"
    assert axis_label("R") == "$R$ [kpc]" and axis_label("vT") == r"$v_\phi$ [km/s]" and axis_label("Jz").endswith("[kpc km/s]")
    assert quantity_name("mean_alpha_fe") == r"[$\alpha$/Fe]"


# ------------------------------------------------------------------ model figures
def test_cv_one_to_one(tmp_path):
    summary = Table({"label": ["teff", "fe_h"], "bias": [1.0, 0.01], "scatter": [50.0, 0.03], "corr": [0.99, 0.95]})
    out = fm.cv_one_to_one(predictions(), ["teff", "fe_h"], tmp_path / "cv.png", summary=summary,
                           bounds={"teff": (4000.0, 6000.0), "fe_h": (-0.5, 0.5)}, title="test")
    assert_image(out)
    with pytest.raises(ColumnError) as e:
        fm.cv_one_to_one(predictions(), ["teff", "logg"], tmp_path / "bad.png")
    assert_named(e, "logg")
    with pytest.raises(ReportInputError) as e:
        fm.cv_one_to_one(predictions(n=0), ["teff"], tmp_path / "bad.png")
    assert_named(e, "no rows")
    with pytest.raises(ReportInputError) as e:
        fm.cv_one_to_one(predictions(), [], tmp_path / "bad.png")
    assert_named(e, "label_names")
    assert not (tmp_path / "bad.png").exists()


def test_cv_scatter_by_model(tmp_path):
    t = Table({"model": ["ACGS", "ACAA", "ACGS", "ACAA"], "label": ["teff", "teff", "fe_h", "fe_h"],
               "bias": [5.0, -3.0, 0.01, 0.0], "scatter": [90.0, 60.0, 0.08, 0.05]})
    assert_image(fm.cv_scatter_by_model(t, tmp_path / "c.png", title="four models"))
    with pytest.raises(ColumnError) as e:
        fm.cv_scatter_by_model(t[["model", "label", "bias"]], tmp_path / "bad.png")
    assert_named(e, "scatter")
    with pytest.raises(ReportInputError) as e:
        fm.cv_scatter_by_model(t[:0], tmp_path / "bad.png")
    assert_named(e, "no rows")


def test_precision_ranges(tmp_path):
    t = Table({"model": ["dwarf", "dwarf", "giant"], "label": ["mg_fe", "o_fe", "mg_fe"], "scatter": [0.05, 0.1, 0.04],
               "kde_lo": [-0.2, -0.3, -0.2], "kde_hi": [0.4, 0.5, 0.4]})
    assert_image(fm.precision_ranges(t, tmp_path / "p.png"))
    with pytest.raises(ColumnError) as e:
        fm.precision_ranges(t[["model", "label", "scatter"]], tmp_path / "bad.png")
    assert_named(e, "kde_lo")
    t["kde_hi"] = t["kde_lo"]
    with pytest.raises(ReportInputError) as e:
        fm.precision_ranges(t, tmp_path / "bad.png")
    assert_named(e, "range")


def test_linear_coefficients(tmp_path):
    wl = np.linspace(4000, 5000, 200)
    assert_image(fm.linear_coefficients(wl, RNG.normal(size=(200, 3)), np.abs(RNG.normal(size=200)), ["teff", "logg", "fe_h"],
                                        tmp_path / "t.png", title="giant"))
    with pytest.raises(ReportInputError) as e:
        fm.linear_coefficients(wl, RNG.normal(size=200), np.ones(200), ["teff"], tmp_path / "bad.png")
    assert_named(e, "linear", "2-d")
    with pytest.raises(ShapeError) as e:
        fm.linear_coefficients(wl, RNG.normal(size=(150, 1)), np.ones(200), ["teff"], tmp_path / "bad.png")
    assert_named(e, "linear has 150")
    with pytest.raises(ReportInputError) as e:
        fm.linear_coefficients(wl, RNG.normal(size=(200, 2)), np.ones(200), ["teff"], tmp_path / "bad.png")
    assert_named(e, "label_names")


def test_model_versus_data(tmp_path):
    wl = np.linspace(4000, 5000, 300)
    model = 1 - 0.3 * np.exp(-0.5 * ((wl - 4500) / 3) ** 2)
    flux = model + RNG.normal(0, 0.01, (3, 300))
    ivar = np.full((3, 300), 1e4)
    ivar[0, :10] = 0
    assert_image(fm.model_versus_data(wl, flux, ivar, np.tile(model, (3, 1)), np.full(300, 0.005), tmp_path / "m.png",
                                      names=["a", "b", "c"]))
    with pytest.raises(ReportInputError) as e:
        fm.model_versus_data(wl, flux[:, :100], ivar, flux, np.ones(300), tmp_path / "bad.png")
    assert_named(e, "flux", "100 pixels")
    with pytest.raises(ReportInputError) as e:
        fm.model_versus_data(wl, np.empty((0, 300)), np.empty((0, 300)), np.empty((0, 300)), np.ones(300), tmp_path / "bad.png")
    assert_named(e, "flux", "empty")
    with pytest.raises(ReportInputError) as e:
        fm.model_versus_data(wl, flux, ivar, flux, np.ones(300), tmp_path / "bad.png", window=(6000, 7000))
    assert_named(e, "window")


def test_default_window_stays_inside_one_detector_segment():
    wl = np.r_[np.linspace(4716, 4896, 1000), np.linspace(5650, 5870, 1500), np.linspace(6480, 6740, 800)]
    lo, hi = fm.default_window(wl)
    assert 5650 <= lo < hi <= 5870


def test_residual_percentiles(tmp_path):
    wl = np.r_[np.linspace(15100, 15800, 200), np.linspace(15860, 16400, 200)]
    med = RNG.normal(0, 0.002, wl.size)
    t = Table({"wavelength": wl, "median": med, "p16": med - 0.01, "p84": med + 0.01})
    assert_image(fm.residual_percentiles({"ACAA": t, "GCGS": t}, tmp_path / "r.png"))
    with pytest.raises(ColumnError) as e:
        fm.residual_percentiles({"ACAA": t[["wavelength", "median"]]}, tmp_path / "bad.png")
    assert_named(e, "p16", "ACAA")
    with pytest.raises(ReportInputError) as e:
        fm.residual_percentiles({}, tmp_path / "bad.png")
    assert_named(e, "tables")
    t["median"] = np.nan
    with pytest.raises(ReportInputError) as e:
        fm.residual_percentiles({"ACAA": t}, tmp_path / "bad.png")
    assert_named(e, "median")


def test_calibration_pulls(tmp_path):
    n = 300
    snr = np.exp(RNG.uniform(np.log(20), np.log(200), n))
    raw = np.column_stack([30 / snr * 10, 0.3 / snr])
    cal = 2 * raw
    res = cal * RNG.normal(size=(n, 2))
    assert_image(fm.calibration_pulls(snr, res, raw, cal, ["teff", "fe_h"], tmp_path / "p.png",
                                      reference_errors=np.full((n, 2), np.nan)))
    with pytest.raises(ReportInputError) as e:
        fm.calibration_pulls(snr, res, raw[:, :1], cal, ["teff", "fe_h"], tmp_path / "bad.png")
    assert_named(e, "raw_errors", "shape")
    with pytest.raises(ShapeError) as e:
        fm.calibration_pulls(snr[:10], res, raw, cal, ["teff", "fe_h"], tmp_path / "bad.png")
    assert_named(e, "snr has 10")
    with pytest.raises(ReportInputError) as e:
        fm.calibration_pulls(snr, res, raw, cal, ["teff"], tmp_path / "bad.png")
    assert_named(e, "label_names")


def test_flag_rates(tmp_path):
    flags = RNG.integers(0, 2**11, 500)
    flags[:200] = 0
    assert_image(fm.flag_rates(flags, tmp_path / "f.png", groups=np.where(np.arange(500) % 2, "giant", "dwarf")))
    with pytest.raises(ReportInputError) as e:
        fm.flag_rates(np.array([], int), tmp_path / "bad.png")
    assert_named(e, "flags")
    with pytest.raises(ReportInputError) as e:
        fm.flag_rates(np.ones(5), tmp_path / "bad.png")
    assert_named(e, "flags", "integers")
    with pytest.raises(ShapeError) as e:
        fm.flag_rates(flags, tmp_path / "bad.png", groups=["a"])
    assert_named(e, "groups")


def test_kiel_diagram(tmp_path):
    n = 2000
    teff = RNG.uniform(4000, 6500, n)
    logg = 2 + 2.4 * np.sqrt(np.clip((teff - 4000) / 2500, 0, None)) + RNG.normal(0, 0.1, n)
    feh = RNG.normal(-0.2, 0.3, n)
    assert_image(fm.kiel_diagram(teff, logg, feh, tmp_path / "k.png", training=(teff[:100], logg[:100], feh[:100])))
    with pytest.raises(ShapeError) as e:
        fm.kiel_diagram(teff, logg[:10], feh, tmp_path / "bad.png")
    assert_named(e, "logg has 10")
    with pytest.raises(ReportInputError) as e:
        fm.kiel_diagram(teff, logg, np.full(n, np.nan), tmp_path / "bad.png")
    assert_named(e, "fe_h")


# ------------------------------------------------------------------ science figures
def test_chemical_distance_histogram(tmp_path):
    assert_image(fs.chemical_distance_histogram(RNG.gamma(2, 0.5, 40), RNG.gamma(3, 0.7, 2000), tmp_path / "w.png",
                                                p_value=1e-4, labels=["o_fe", "mg_fe"]))
    with pytest.raises(ReportInputError) as e:
        fs.chemical_distance_histogram([], RNG.gamma(3, 0.7, 20), tmp_path / "bad.png")
    assert_named(e, "distance_binaries", "empty")
    with pytest.raises(ReportInputError) as e:
        fs.chemical_distance_histogram(np.ones(5), np.ones((5, 2)), tmp_path / "bad.png")
    assert_named(e, "distance_field", "1-d")


def test_mean_label_maps(tmp_path):
    from cannonade.science.chemical_maps import mean_label_map

    n = 3000
    R, z = RNG.uniform(6, 12, n), RNG.normal(0, 1, n)
    maps = [mean_label_map(R, z, -0.07 * R + RNG.normal(0, 0.1, n), bins=15, min_count=3, label="fe_h", x_name="R", y_name="z"),
            mean_label_map(R, z, 4800 + 50 * z, bins=15, min_count=3, label="teff", x_name="R", y_name="z")]
    assert_image(fs.mean_label_maps(maps, tmp_path / "m.png", title="maps"))
    with pytest.raises(ReportInputError) as e:
        fs.mean_label_maps([], tmp_path / "bad.png")
    assert_named(e, "maps")

    class Wrong:
        x_edges, y_edges, label, x_name, y_name = np.arange(4.0), np.arange(5.0), "fe_h", "R", "z"
        mean = np.ma.ones((3, 3))

    with pytest.raises(ReportInputError) as e:
        fs.mean_label_maps([maps[0], Wrong()], tmp_path / "bad.png")
    assert_named(e, "maps[1].mean", "shape")
    Wrong.mean = np.ma.masked_all((4, 3))
    with pytest.raises(ReportInputError) as e:
        fs.mean_label_maps([Wrong()], tmp_path / "bad.png")
    assert_named(e, "maps[0]", "empty")


def test_abundance_planes_grid(tmp_path):
    from cannonade.science.abundance_planes import abundance_planes

    n = 1500
    t = Table({"R": RNG.uniform(3, 13, n), "z": RNG.normal(0, 2, n), "vT": RNG.normal(150, 100, n),
               "fe_h": RNG.normal(-0.5, 0.5, n), "giantmodel": np.ones(n, bool)})
    t["ba_fe"] = 0.1 - 0.2 * t["fe_h"] + RNG.normal(0, 0.1, n)
    planes = abundance_planes(t, "ba_fe")
    assert_image(fs.abundance_planes_grid(planes, tmp_path / "a.png", title="planes"))
    with pytest.raises(ReportInputError) as e:
        fs.abundance_planes_grid(object(), tmp_path / "bad.png")
    assert_named(e, "planes")

    class Sliced:
        element, r_edges, z_edges = "ba_fe", planes.r_edges, planes.z_edges
        panels = planes.panels[:1]

    with pytest.raises(ReportInputError) as e:
        fs.abundance_planes_grid(Sliced(), tmp_path / "bad.png")
    assert_named(e, "planes.panels", "rows")
    assert not (tmp_path / "bad.png").exists()
