"""[X/Fe] vs [Fe/H] planes in (R, |z|) bins (Wheeler+2020 §5.4, Figs 16–17)."""

import numpy as np
import pytest
from astropy.table import Table

from cannonade.exceptions import ColumnError, SelectionError, ShapeError
from cannonade.science import abundance_planes, binned_median


def halo_and_disc(n=4000, seed=0):
    """Prograde metal-rich disc giants near the plane, slow metal-poor halo giants above it."""
    rng = np.random.default_rng(seed)
    halo = rng.random(n) < 0.3
    t = Table()
    t["R"] = rng.uniform(3, 13, n)
    t["z"] = np.where(halo, rng.uniform(-6, 6, n), rng.normal(0, 0.5, n))
    t["vT"] = np.where(halo, rng.normal(20, 100, n), rng.normal(210, 25, n))
    t["fe_h"] = np.where(halo, rng.normal(-1.4, 0.4, n), rng.normal(-0.1, 0.2, n))
    t["ba_fe"] = np.where(np.asarray(t["fe_h"]) < -1, -0.2, 0.1) + rng.normal(0, 0.05, n)
    t["teff"] = rng.uniform(4500, 5300, n)
    t["giantmodel"] = rng.random(n) < 0.8
    return t


def test_panels_hold_the_right_stars():
    t = halo_and_disc()
    ap = abundance_planes(t, "ba_fe")
    R, z = np.asarray(t["R"]), np.abs(np.asarray(t["z"]))
    g = np.asarray(t["giantmodel"])
    expect = np.histogram2d(z[g], R[g], bins=[ap.z_edges, ap.r_edges])[0]
    assert ap.counts.shape == (3, 5) and np.array_equal(ap.counts, expect)
    p = ap.panel(2, 1)  # 7-9 kpc, 2-4 kpc
    assert p.r_range == (7.0, 9.0) and p.z_range == (2.0, 4.0) and p.n == ap.counts[1, 2]
    assert np.all((R[p.rows] >= 7) & (R[p.rows] < 9) & (z[p.rows] >= 2) & (z[p.rows] < 4))
    assert np.array_equal(p.vphi, np.asarray(t["vT"])[p.rows]) and p.fe_h.shape == p.x_fe.shape == (p.n,)
    # the disc panel rotates, the halo panels barely
    assert ap.panel(2, 0).median_vphi > 150 and abs(ap.panel(2, 2).median_vphi) < 80
    assert ap.n == g.sum() - np.sum(g & ((z >= 6) | (R >= 13)))


def test_medians_per_fe_h_bin():
    t = halo_and_disc()
    ap = abundance_planes(t, "ba_fe", min_count=5)
    p = ap.panel(1, 0)
    assert p.count_per_fe_h.sum() == p.n - np.sum((p.fe_h < ap.fe_h_edges[0]) | (p.fe_h >= ap.fe_h_edges[-1]))
    k = int(np.argmax(p.count_per_fe_h))
    in_bin = (p.fe_h >= ap.fe_h_edges[k]) & (p.fe_h < ap.fe_h_edges[k + 1])
    assert p.median_x_fe[k] == pytest.approx(np.median(p.x_fe[in_bin]))
    assert np.array_equal(p.median_x_fe.mask, p.count_per_fe_h < 5)
    count, med = binned_median([0.1, 0.2, 1.5], [1.0, 3.0, 7.0], [0, 1, 2], min_count=2)
    assert count.tolist() == [2, 1] and med[0] == 2.0 and med.mask.tolist() == [False, True]


def test_options_teff_mask_dwarfs_and_pandas():
    t = halo_and_disc()
    hot = abundance_planes(t, "ba_fe", teff_range=(4800, 5000))
    teff = np.asarray(t["teff"])
    for row in hot.panels:
        for p in row:
            assert np.all((teff[p.rows] > 4800) & (teff[p.rows] < 5000))
    assert hot.teff_range == (4800.0, 5000.0) and hot.n < abundance_planes(t, "ba_fe").n
    everyone = abundance_planes(t, "ba_fe", giants=False, r_bins=(0, 20), z_bins=(0, 10))
    assert everyone.n == len(t)
    half = np.arange(len(t)) < len(t) // 2
    assert abundance_planes(t, "ba_fe", giants=False, r_bins=(0, 20), z_bins=(0, 10), mask=half).n == half.sum()
    assert abundance_planes(t.to_pandas(), "ba_fe").n == abundance_planes(t, "ba_fe").n


def test_errors():
    t = halo_and_disc(n=300)
    with pytest.raises(ColumnError, match="eu_fe"):
        abundance_planes(t, "eu_fe")
    t2 = t.copy()
    del t2["vT"]
    with pytest.raises(ColumnError, match="vT"):
        abundance_planes(t2)
    with pytest.raises(ShapeError, match="r_bins"):
        abundance_planes(t, r_bins=(5, 3))
    with pytest.raises(ShapeError, match="z_bins"):
        abundance_planes(t, z_bins=(1,))
    with pytest.raises(SelectionError):
        abundance_planes(t, r_bins=(50, 60))
    with pytest.raises(SelectionError):
        abundance_planes(t[:0])
