"""Wide binaries (Wheeler+2020 §5.2): pair finding from astrometry, Eq. 6, the Fig. 12 test."""

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from cannonade.exceptions import (
    CannonadeError,
    ColumnError,
    LabelError,
    SelectionError,
    ShapeError,
)
from cannonade.science import (
    DWARF_ABUNDANCES,
    chemical_distance,
    find_wide_binaries,
    orbital_pm_limit,
    precision_scaled_distance,
    projected_separation_au,
    wide_binary_test,
)

LABELS = DWARF_ABUNDANCES


def _offset(ra, dec, theta_arcsec, angle):
    """Positions theta away from (ra, dec) in direction angle (small-angle, deg)."""
    d = theta_arcsec / 3600.0
    return ra + d * np.sin(angle) / np.cos(np.radians(dec)), dec + d * np.cos(angle)


def astrometric_sky(n_field=300, n_bin=30, seed=1):
    """Field stars in a 20x20 deg patch, planted binaries, one triple, two chance alignments.

    Returns the table and the true binary pairs (n_bin, 2).
    """
    rng = np.random.default_rng(seed)
    ra = rng.uniform(100, 120, n_field)
    dec = rng.uniform(10, 30, n_field)
    plx = rng.uniform(2, 10, n_field)
    pmra, pmdec = rng.normal(0, 20, (2, n_field))
    # binaries: secondaries at s = 1000-20000 AU, same parallax, orbital motion << limit
    p = rng.choice(n_field, n_bin, replace=False)
    s_au = 10 ** rng.uniform(3, 4.3, n_bin)
    ra2, dec2 = _offset(ra[p], dec[p], s_au * plx[p] / 1000.0, rng.uniform(0, 2 * np.pi, n_bin))
    dmu = 0.3 * orbital_pm_limit(s_au * plx[p] / 1000.0, plx[p])
    # a triple around field star t0, and two chance alignments
    t0 = np.setdiff1d(np.arange(n_field), p)[:2]
    tri_ra, tri_dec = _offset(np.repeat(ra[t0[0]], 2), np.repeat(dec[t0[0]], 2), np.array([20.0, 40.0]), np.array([0.3, 2.0]))
    ch_ra, ch_dec = _offset(np.repeat(ra[t0[1]], 2), np.repeat(dec[t0[1]], 2), np.array([30.0, 30.0]), np.array([1.0, 4.0]))
    t = Table()
    t["ra"] = np.concatenate([ra, ra2, tri_ra, ch_ra])
    t["dec"] = np.concatenate([dec, dec2, tri_dec, ch_dec])
    t["parallax"] = np.concatenate([plx, plx[p], np.repeat(plx[t0[0]], 2),
                                    [plx[t0[1]] * 0.5, plx[t0[1]]]])  # chance 1: wrong parallax
    t["pmra"] = np.concatenate([pmra, pmra[p] + dmu, np.repeat(pmra[t0[0]], 2),
                                [pmra[t0[1]], pmra[t0[1]] + 15.0]])  # chance 2: wrong proper motion
    t["pmdec"] = np.concatenate([pmdec, pmdec[p], np.repeat(pmdec[t0[0]], 2), np.repeat(pmdec[t0[1]], 2)])
    n = len(t)
    t["parallax_error"] = np.full(n, 0.03)
    t["pmra_error"] = np.full(n, 0.03)
    t["pmdec_error"] = np.full(n, 0.03)
    truth = np.sort(np.column_stack([p, n_field + np.arange(n_bin)]), axis=1)
    return t, truth


def chemical_catalogue(n_field=600, n_bin=40, seed=2, noise=0.05):
    """Dwarfs whose [X/Fe] carry information beyond [Fe/H]; binaries share their true chemistry."""
    rng = np.random.default_rng(seed)
    n = n_field + 2 * n_bin
    feh = rng.normal(0.0, 0.25, n)
    slopes = np.array([-0.2, 0.1, -0.15, 0.05, -0.3])
    xfe = feh[:, None] * slopes + rng.normal(0, 0.12, (n, len(LABELS)))  # intrinsic spread at fixed [Fe/H]
    teff = rng.uniform(4800, 6200, n)
    a = np.arange(n_field, n_field + n_bin)
    b = a + n_bin
    feh[b], xfe[b] = feh[a], xfe[a]
    teff[b] = teff[a] - rng.uniform(0, 240, n_bin)
    t = Table()
    t["teff"] = teff
    t["logg"] = np.full(n, 4.5)
    t["giantmodel"] = np.zeros(n, bool)
    t["fe_h"] = feh + rng.normal(0, noise, n)
    t["e_fe_h"] = np.full(n, noise)
    for k, lab in enumerate(LABELS):
        t[lab] = xfe[:, k] + rng.normal(0, noise, n)
        t["e_" + lab] = np.full(n, noise)
    return t, np.column_stack([a, b])


# ---------------------------------------------------------------------------------- maths
def test_orbital_limit_is_el_badry_rix_coefficient():
    # 0.44 mas/yr (plx/mas)^1.5 (theta/arcsec)^-0.5 for 5 Msun (El-Badry & Rix 2018)
    assert orbital_pm_limit(1.0, 1.0, 5.0) == pytest.approx(0.444, abs=0.001)
    assert orbital_pm_limit(4.0, 4.0, 5.0) == pytest.approx(0.444 * 8 / 2, rel=1e-3)
    assert projected_separation_au(10.0, 5.0) == pytest.approx(2000.0)


def test_precision_scaled_distance_is_eq6():
    delta = np.array([[0.1, -0.2], [0.0, 0.0]])
    d = precision_scaled_distance(delta, np.array([0.1, 0.1]))
    assert d == pytest.approx([np.sqrt(1 + 4), 0.0])
    assert precision_scaled_distance(delta, np.array([0.1, 0.1]), normalise=True)[0] == pytest.approx(np.sqrt(5 / 2))
    with pytest.raises(ShapeError):
        precision_scaled_distance(delta, np.ones(3))


# ---------------------------------------------------------------------------------- finding
def test_find_wide_binaries_recovers_planted_pairs_only():
    t, truth = astrometric_sky()
    wb = find_wide_binaries(t)
    found = set(map(tuple, wb.pairs.tolist()))
    assert found == set(map(tuple, truth.tolist()))  # no triple, no chance alignment, none missed
    assert wb.n_candidates >= wb.n_pairs + 3  # the triple's three pairs were candidates
    assert np.all(wb.separation_au <= 50_000) and np.all(wb.delta_mu <= wb.delta_mu_orbit + 2 * wb.sigma_delta_mu)
    assert wb.pairs.shape == (len(truth), 2) and wb.theta_arcsec.shape == (len(truth),)


def test_find_wide_binaries_options_and_pandas():
    t, truth = astrometric_sky()
    loose = find_wide_binaries(t, isolated=False)
    assert loose.n_pairs == len(truth) + 3  # the triple's pairs come back
    tight = find_wide_binaries(t, max_separation_au=5000)
    assert 0 < tight.n_pairs < len(truth) and np.all(tight.separation_au <= 5000)
    mask = np.ones(len(t), bool)
    mask[truth[0, 1]] = False
    assert find_wide_binaries(t, mask=mask).n_pairs == len(truth) - 1
    assert find_wide_binaries(t.to_pandas()).n_pairs == len(truth)


def test_find_wide_binaries_errors():
    t, _ = astrometric_sky()
    del t["pmdec_error"]
    with pytest.raises(ColumnError, match="pmdec_error"):
        find_wide_binaries(t)
    with pytest.raises(SelectionError):
        find_wide_binaries(t[:0])
    t2, _ = astrometric_sky()
    with pytest.raises(ShapeError, match="mask"):
        find_wide_binaries(t2, mask=np.ones(3, bool))


# ---------------------------------------------------------------------------------- Eq. 6
def test_chemical_distance_per_star_errors_and_sigma():
    t, pairs = chemical_catalogue()
    i, j = pairs[:, 0], pairs[:, 1]
    d = chemical_distance(t, i, j)
    x = np.column_stack([t[lab] for lab in LABELS])
    expect = np.sqrt(np.sum((x[i] - x[j]) ** 2 / (2 * 0.05**2), axis=1))
    assert d == pytest.approx(expect)
    # identical true chemistry: d^2 ~ chi2 with L degrees of freedom
    assert np.mean(d**2) == pytest.approx(len(LABELS), rel=0.3)
    d_sig = chemical_distance(t, i, j, sigma=dict.fromkeys(LABELS, 0.1))
    assert d_sig == pytest.approx(np.sqrt(np.sum((x[i] - x[j]) ** 2, axis=1)) / 0.1)


def test_chemical_distance_errors():
    t, pairs = chemical_catalogue()
    i, j = pairs[:, 0], pairs[:, 1]
    with pytest.raises(ShapeError):
        chemical_distance(t, i, j[:-1])
    with pytest.raises(ShapeError):
        chemical_distance(t, i, j + len(t))
    with pytest.raises(SelectionError):
        chemical_distance(t, i[:0], j[:0])
    with pytest.raises(LabelError):
        chemical_distance(t, i, j, labels=[])
    with pytest.raises(ColumnError, match="e_sc_fe"):
        t2 = t.copy()
        del t2["e_sc_fe"]
        chemical_distance(t2, i, j)
    t3 = t.copy()
    t3["o_fe"][i[3]] = np.nan
    with pytest.raises(LabelError, match="o_fe"):
        chemical_distance(t3, i, j)
    with pytest.raises(LabelError, match="mean_s_fe"):
        chemical_distance(t, i, j, sigma={"o_fe": 0.1})


# ---------------------------------------------------------------------------------- Fig. 12
def test_wide_binary_test_binaries_are_closer():
    t, pairs = chemical_catalogue()
    r = wide_binary_test(t, pairs, n_field=2000, seed=3)
    assert r.n_pairs == len(pairs) and r.n_field == 2000
    assert r.p_value < 1e-4 and r.ks_p_value < 1e-3
    assert r.median_binaries < 0.6 * r.median_field
    # the field pairs follow the binaries' |Δ[Fe/H]| distribution
    assert stats.ks_2samp(r.delta_fe_h_binaries, r.delta_fe_h_field).pvalue > 0.05
    assert np.all(np.abs(t["teff"][r.field_pairs[:, 0]] - t["teff"][r.field_pairs[:, 1]]) < 250)
    assert r.counts_binaries.sum() <= r.n_pairs and len(r.edges) == len(r.counts_field) + 1
    again = wide_binary_test(t, pairs, n_field=2000, seed=3)
    assert np.array_equal(again.field_pairs, r.field_pairs) and again.p_value == r.p_value


def test_wide_binary_test_without_chemical_signal_is_not_significant():
    t, _ = chemical_catalogue(seed=5)
    rng = np.random.default_rng(0)
    fake = np.column_stack([rng.choice(600, 40, replace=False), rng.choice(np.arange(600, 680), 40, replace=False)])
    fake = fake[np.abs(t["teff"][fake[:, 0]] - t["teff"][fake[:, 1]]) < 250]
    if len(fake) < 3:
        pytest.skip("too few random pairs pass the ΔTeff cut")
    assert wide_binary_test(t, fake, n_field=2000, seed=1).p_value > 0.01


def test_wide_binary_test_cuts_and_errors():
    t, pairs = chemical_catalogue()
    giants = t.copy()
    giants["giantmodel"][pairs[:10, 0]] = True  # giants are not dwarfs: those pairs leave
    assert wide_binary_test(giants, pairs, n_field=500).n_pairs == len(pairs) - 10
    assert wide_binary_test(t, pairs, max_delta_teff=100, n_field=500).n_pairs < len(pairs)
    with pytest.raises(SelectionError, match="at least 3"):
        wide_binary_test(t, pairs, max_delta_teff=0.0)
    with pytest.raises(ShapeError):
        wide_binary_test(t, pairs.ravel())
    with pytest.raises(SelectionError):
        wide_binary_test(t, np.empty((0, 2), int))
    t2 = t.copy()
    del t2["teff"]
    with pytest.raises(ColumnError, match="teff"):
        wide_binary_test(t2, pairs)
    t3 = t.copy()
    del t3["eu_fe"]
    with pytest.raises(CannonadeError, match="eu_fe"):
        wide_binary_test(t3, pairs)
