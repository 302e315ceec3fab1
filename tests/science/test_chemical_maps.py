"""Mean-label maps, the radial gradient (Wheeler+2020 §5.3) and the shared star selections."""

import numpy as np
import pytest
from astropy.table import Table

from cannonade.exceptions import ColumnError, SelectionError, ShapeError
from cannonade.science import (
    dwarf_mask,
    galactic_xy,
    giant_mask,
    intrinsic_scatter,
    map_rvphi,
    map_rz,
    map_xy,
    mean_label_map,
    quality_mask,
    radial_gradient,
    thin_disc_mask,
    weighted_line_fit,
)

SLOPE = -0.07


def galaxy(n=3000, seed=0, outliers=0.03):
    """Giants and dwarfs with [Fe/H] = 0.3 + SLOPE R + N(0, 0.15), a few catastrophic failures."""
    rng = np.random.default_rng(seed)
    t = Table()
    t["R"] = rng.uniform(5, 13, n)
    t["phi"] = rng.uniform(-0.5, 0.5, n)
    t["z"] = rng.normal(0, 0.6, n)
    t["vT"] = rng.normal(220, 20, n)
    t["Jz"] = rng.exponential(20, n)
    t["giantmodel"] = rng.random(n) < 0.7
    feh = 0.3 + SLOPE * np.asarray(t["R"]) + rng.normal(0, 0.15, n)
    bad = rng.random(n) < outliers
    feh[bad] += rng.choice([-2.0, 2.0], bad.sum())
    t["fe_h"] = feh
    t["e_fe_h"] = rng.uniform(0.02, 0.05, n)
    t["mg_fe"] = 0.1 * np.abs(np.asarray(t["z"])) + rng.normal(0, 0.02, n)
    t["chi2"] = rng.uniform(2000, 9000, n)
    t["flags"] = np.where(rng.random(n) < 0.1, 8, 0)
    return t


# ---------------------------------------------------------------------------------- maps
def test_mean_label_map_orientation_counts_and_mask():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 4, 20000), rng.uniform(0, 2, 20000)
    m = mean_label_map(x, y, y, bins=(4, 2), extent=((0, 4), (0, 2)), min_count=1)
    assert m.mean.shape == (2, 4) and m.count.shape == (2, 4)  # (n_y, n_x)
    assert m.mean.filled(np.nan)[:, 0] == pytest.approx([0.5, 1.5], abs=0.02)  # rows follow y
    assert m.count.sum() == m.n == 20000
    assert m.x_centres == pytest.approx([0.5, 1.5, 2.5, 3.5])
    sparse = mean_label_map([0.1, 0.2, 3.9], [0.1, 0.1, 1.9], [1.0, 3.0, 5.0], bins=(2, 2), extent=((0, 4), (0, 2)), min_count=2)
    assert sparse.mean.mask.tolist() == [[False, True], [True, True]]
    assert sparse.mean[0, 0] == pytest.approx(2.0) and sparse.count[1, 1] == 1


def test_mean_label_map_errors():
    with pytest.raises(ShapeError):
        mean_label_map(np.ones(3), np.ones(4), np.ones(3))
    with pytest.raises(SelectionError):
        mean_label_map(np.full(3, np.nan), np.ones(3), np.ones(3))
    with pytest.raises(SelectionError):
        mean_label_map([], [], [])
    with pytest.raises(SelectionError):
        mean_label_map([1.0], [1.0], [1.0], extent=((5, 6), (5, 6)))


def test_galactic_xy_convention():
    X, Y = galactic_xy([8.0, 8.0], [0.0, np.pi / 2])
    assert X == pytest.approx([8.0, 0.0], abs=1e-12)
    assert Y == pytest.approx([0.0, -8.0], abs=1e-12)  # rotation carries the Sun towards -Y


def test_giant_maps_select_giants_and_thin_disc():
    t = galaxy()
    g = np.asarray(t["giantmodel"])
    rz = map_rz(t, "mg_fe", r_range=(5, 13), z_range=(-2, 2), bins=(8, 8), min_count=1)
    inside = g & (np.abs(np.asarray(t["z"])) <= 2)
    assert rz.n == inside.sum() and rz.x_name == "R" and rz.label == "mg_fe"
    # [Mg/Fe] rises with |z|: the midplane rows are lower than the outer rows
    assert np.ma.mean(rz.mean[3:5]) < np.ma.mean(rz.mean[[0, -1]])
    thin = g & (np.asarray(t["Jz"]) < 30)
    xy = map_xy(t, "fe_h", x_range=(0, 20), y_range=(-10, 10), bins=10)
    assert xy.n == thin.sum()
    rv = map_rvphi(t, "fe_h", r_range=(0, 20), vphi_range=(0, 500), jz_max=None, giants=False)
    assert rv.n == len(t) and rv.y_name == "vphi"
    with pytest.raises(ColumnError, match="Jz"):
        t2 = t.copy()
        del t2["Jz"]
        map_xy(t2, "fe_h")
    with pytest.raises(ColumnError, match="al_fe"):
        map_rz(t, "al_fe")
    with pytest.raises(SelectionError):
        map_rz(t, "fe_h", mask=np.zeros(len(t), bool))


# ---------------------------------------------------------------------------------- gradient
def test_line_fit_and_intrinsic_scatter():
    x = np.linspace(0, 10, 50)
    coef, cov = weighted_line_fit(x, 1.0 - 0.5 * x, np.full(50, 0.1))
    assert coef == pytest.approx([1.0, -0.5]) and cov.shape == (2, 2)
    rng = np.random.default_rng(2)
    r = rng.normal(0, np.sqrt(0.2**2 + 0.05**2), 20000)
    assert intrinsic_scatter(r, np.full(r.size, 0.05), r.size) == pytest.approx(0.2, rel=0.03)
    assert intrinsic_scatter(np.zeros(5), np.ones(5), 3) == 0.0


def test_radial_gradient_recovers_known_slope():
    t = galaxy(n=4000)
    g = radial_gradient(t, z_max=1.0)
    assert g.slope == pytest.approx(SLOPE, abs=3 * g.slope_error)
    assert 0.001 < g.slope_error < 0.005
    assert g.scatter == pytest.approx(0.15, rel=0.15)
    assert g.n_clipped >= 0.8 * 0.03 * 4000 * 0.7 * 0.85  # most catastrophic failures clipped
    assert g.value_at(8.0) == pytest.approx(0.3 + 8 * SLOPE, abs=0.03)
    boot = radial_gradient(t, z_max=1.0, n_bootstrap=100, seed=1)
    assert boot.error_method == "bootstrap" and boot.slope == g.slope
    assert boot.slope_error == pytest.approx(g.slope_error, rel=0.35)
    unclipped = radial_gradient(t, z_max=1.0, clip=None)
    assert unclipped.n_clipped == 0 and unclipped.slope_error > g.slope_error


def test_radial_gradient_errors():
    t = galaxy(n=500)
    t2 = t.copy()
    del t2["e_fe_h"]
    with pytest.raises(ColumnError, match="e_fe_h"):
        radial_gradient(t2)
    with pytest.raises(SelectionError, match="R"):
        radial_gradient(t, r_range=(30, 40))
    with pytest.raises(ShapeError):
        radial_gradient(t, mask=np.ones(len(t) + 1, bool))
    with pytest.raises(SelectionError):
        radial_gradient(t[:0])


# ---------------------------------------------------------------------------------- selections
def test_selections():
    t = galaxy(n=200)
    q = quality_mask(t)
    assert np.array_equal(q, np.asarray(t["chi2"]) < 7000)
    q2 = quality_mask(t, reject_flags=-1)
    assert np.array_equal(q2, q & (np.asarray(t["flags"]) == 0))
    assert thin_disc_mask(t).sum() == (np.asarray(t["Jz"]) < 30).sum()
    assert np.array_equal(giant_mask(t), np.asarray(t["giantmodel"]))
    d = {"model_class": np.array(["giant", "dwarf", "either"]), "chi2": np.ones(3)}
    assert giant_mask(d).tolist() == [True, False, False] and dwarf_mask(d).tolist() == [False, True, False]
    eq1 = {"teff": np.array([4500.0, 5800.0, np.nan]), "logg": np.array([2.5, 4.4, 4.0])}  # Wheeler+2020 Eq. 1
    assert giant_mask(eq1).tolist() == [True, False, False] and dwarf_mask(eq1).tolist() == [False, True, False]
    with pytest.raises(ColumnError, match="giantmodel"):
        giant_mask({"R": np.ones(3)})
    with pytest.raises(ColumnError, match="chi2"):
        quality_mask({"R": np.ones(3)})
