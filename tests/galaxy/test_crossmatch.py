"""Sky and ID cross-matching."""

import numpy as np
import pytest
from astropy.table import Table

from cannonade.galaxy.crossmatch import best_match, gaia_match, id_match, sky_match
from cannonade.exceptions import ColumnError

ARCSEC = 1.0 / 3600.0


def offset(ra, dec, east_arcsec=0.0, north_arcsec=0.0):
    """Small-angle offset of a position (deg)."""
    return ra + east_arcsec * ARCSEC / np.cos(np.deg2rad(dec)), dec + north_arcsec * ARCSEC


def test_sky_match_finds_pairs_within_radius_only():
    ra1, dec1 = np.array([10.0, 200.0, 300.0]), np.array([5.0, -60.0, 89.0])
    r_in, d_in = offset(ra1, dec1, north_arcsec=0.7)
    r_out, d_out = offset(ra1, dec1, east_arcsec=1.3)
    ra2, dec2 = np.r_[r_out, r_in], np.r_[d_out, d_in]
    p = sky_match(ra1, dec1, ra2, dec2, radius_arcsec=1.0)
    assert list(p.idx1) == [0, 1, 2] and list(p.idx2) == [3, 4, 5]
    np.testing.assert_allclose(p.sep_arcsec, 0.7, rtol=1e-6)
    p2 = sky_match(ra1, dec1, ra2, dec2, radius_arcsec=1.5)
    assert len(p2.idx1) == 6
    # sorted by idx1 then separation
    assert list(p2.idx1) == [0, 0, 1, 1, 2, 2] and np.all(p2.sep_arcsec[::2] < p2.sep_arcsec[1::2])


def test_sky_match_ignores_nan_and_empty():
    p = sky_match([10.0, np.nan], [0.0, 0.0], [10.0, 10.0], [np.nan, 0.0])
    assert list(p.idx1) == [0] and list(p.idx2) == [1]
    p = sky_match([10.0], [0.0], np.zeros(0), np.zeros(0))
    assert p.idx1.size == 0


def test_best_match_brightest_nearest_and_duplicates():
    ra1, dec1 = np.array([50.0, 50.0 + 0.6 * ARCSEC, 120.0, 240.0]), np.array([0.0, 0.0, 30.0, -30.0])
    # star 0: a faint close source and a bright farther one; star 2: one source; star 3: none
    ra2 = np.array([50.0 + 0.1 * ARCSEC, 50.0 - 0.8 * ARCSEC, 120.0, 10.0])
    dec2 = np.array([0.0, 0.0, 30.0 + 0.2 * ARCSEC, 0.0])
    g = np.array([18.0, 12.0, 15.0, 10.0])
    m = best_match(ra1, dec1, ra2, dec2, rank=g)
    assert list(m.index) == [1, 0, 2, -1]  # brightest within 1": source 1 for star 0
    assert list(m.n_matches) == [2, 1, 1, 0]
    assert list(m.duplicated) == [False, False, False, False]
    assert np.isnan(m.sep_arcsec[3]) and abs(m.sep_arcsec[0] - 0.8) < 1e-6
    near = best_match(ra1, dec1, ra2, dec2)  # rank=None: nearest
    assert list(near.index) == [0, 0, 2, -1]
    assert list(near.duplicated) == [True, True, False, False] and near.n_duplicated == 2
    o2o = best_match(ra1, dec1, ra2, dec2, one_to_one=True)
    assert list(o2o.index) == [0, -1, 2, -1]  # star 0 is nearer to source 0 (0.1" vs 0.5")
    faint = best_match(ra1, dec1, ra2, dec2, rank=g, prefer="max")
    assert faint.index[0] == 0
    assert "3 of 4 matched" in m.summary()


def test_best_match_nan_rank_loses():
    m = best_match([0.0], [0.0], [0.1 * ARCSEC, 0.5 * ARCSEC], [0.0, 0.0], rank=[np.nan, 20.0])
    assert m.index[0] == 1


def test_id_match():
    assert list(id_match([3, 5, 7, 3], [7, 3, 3, 1])) == [1, -1, 0, 1]
    assert list(id_match(np.array(["a", "bb"]), np.array(["bb", "c"]))) == [-1, 0]
    assert list(id_match(np.ma.array([1, 2], mask=[True, False]), [1, 2])) == [-1, 1]


@pytest.fixture
def tables():
    cat = Table(dict(designation=["s0", "s1", "s2"], ra=[10.0, 20.0, 30.0], dec=[1.0, 2.0, 3.0], rv=[5.0, 6.0, 7.0]))
    ra_g, dec_g = offset(np.array([10.0, 10.0, 30.0]), np.array([1.0, 1.0, 3.0]), north_arcsec=np.array([0.3, -0.5, 0.2]))
    gaia = Table(dict(
        source_id=np.array([100, 101, 102], dtype=np.int64), ra=ra_g, dec=dec_g,
        pmra=[1.0, 2.0, 3.0], phot_g_mean_mag=[16.0, 14.0, 12.0],
    ))
    return cat, gaia


def test_gaia_match_keeps_every_row_in_order(tables):
    cat, gaia = tables
    out = gaia_match(cat, gaia)
    assert len(out) == 3 and list(out["designation"]) == ["s0", "s1", "s2"]
    assert list(out["source_id"].filled(-1)) == [101, -1, 102]  # brightest for s0; none for s1
    assert np.isnan(out["pmra"][1]) and out["pmra"][0] == 2.0
    assert list(out["gaia_n_matches"]) == [2, 0, 1]
    assert np.isnan(out["gaia_sep_arcsec"][1]) and abs(out["gaia_sep_arcsec"][0] - 0.5) < 1e-6
    # colliding names are prefixed, the catalogue's own columns untouched
    assert out["ra"][0] == 10.0 and abs(out["gaia_ra"][0] - gaia["ra"][1]) < 1e-12
    assert "gaia_ra" not in cat.colnames


def test_gaia_match_pandas_and_missing_rank(tables):
    cat, gaia = tables
    df = gaia_match(cat.to_pandas(), gaia.to_pandas())
    assert list(df["designation"]) == ["s0", "s1", "s2"] and df["source_id"].isna().tolist() == [False, True, False]
    with pytest.raises(ColumnError, match="phot_g_mean_mag"):
        gaia_match(cat, gaia[["source_id", "ra", "dec"]])
    nearest = gaia_match(cat, gaia[["source_id", "ra", "dec"]], rank=None)
    assert nearest["source_id"][0] == 100


def test_gaia_match_names_a_misspelt_column():
    cat = Table(dict(ra=[10.0], Dec=[5.0]))
    gaia = Table(dict(ra=[10.0], dec=[5.0], phot_g_mean_mag=[12.0]))
    with pytest.raises(ColumnError, match="did you mean 'Dec'"):
        gaia_match(cat, gaia)


def test_gaia_match_rejects_a_non_table():
    from cannonade.exceptions import CannonadeError

    gaia = Table(dict(ra=[10.0], dec=[5.0], phot_g_mean_mag=[12.0]))
    with pytest.raises(CannonadeError, match="astropy Table or pandas DataFrame"):
        gaia_match({"ra": [10.0], "dec": [5.0]}, gaia)
