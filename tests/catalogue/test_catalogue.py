"""Catalogue schemas, FITS/Parquet writers, atomic writes, and the Gaia + dynamics stage."""

import os

import astropy.units as u
import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from cannonade.catalogue import (
    SCHEMAS,
    CatalogueWriter,
    read_catalogue,
    schema_for,
    write_catalogue,
)
from cannonade.exceptions import CatalogueError

LABELS = ["teff", "logg", "vmic", "fe_h", "mg_fe"]


def test_schemas_are_data_and_expand_label_patterns():
    assert set(SCHEMAS) == {"wheeler2020", "nandakumar2022", "labels"}
    cols = {c.name: c for c in schema_for(LABELS)}
    # Wheeler Table 1: chi2_x_fe and x_fe_extrap for abundances, fe_h_extrap, kiel_extrap
    for name in ("source_id", "designation", "giantmodel", "kiel_extrap", "chi2", "snrz", "chi2_mg_fe",
                 "mg_fe_extrap", "fe_h_extrap", "ra", "dec", "R", "phi", "z", "vR", "vT", "vz", "JR", "Jphi", "Jz"):
        assert name in cols, name
    assert "chi2_fe_h" not in cols and "chi2_teff" not in cols
    assert cols["teff_extrap"].dtype == "bool"  # per-label KDE flags for every label (issue 11), kiel_extrap jointly
    assert cols["teff"].unit == "K" and cols["e_teff"].unit == "K" and cols["Jz"].unit == "kpc km / s"
    assert cols["source_id"].dtype == "int64" and cols["kiel_extrap"].dtype == "bool" and cols["designation"].dtype == "str"
    assert cols["mg_fe"].description == "[Mg/Fe]"
    names = [c.name for c in schema_for(["teff", "logg", "feh", "alphafe"], "nandakumar2022")]
    for name in ("dr2_source_id", "dr3_source_id", "teffCann", "e_teffCann", "alphafeCann", "r_chi_sq",
                 "Cannon_distance", "flag_Cannon_dist", "teff", "e_alphafe", "r_est", "r_lo", "r_hi", "e_parallax"):
        assert name in names, name
    assert names.index("teffCann") < names.index("r_chi_sq") < names.index("teff")
    with pytest.raises(CatalogueError, match="nope"):
        schema_for(LABELS, "nope")


def per_star_table(n=4):
    rng = np.random.default_rng(0)
    t = Table()
    t["extra_col"] = np.arange(n, dtype=np.int16)  # not in the schema: kept, after the schema columns
    t["designation"] = [f"J{i:03d}+{i}" for i in range(n)]
    t["source_id"] = MaskedColumn(np.arange(n, dtype=np.int64) + 10**18, mask=[False, True] + [False] * (n - 2))
    t["teff"] = rng.normal(5000, 300, n)
    t["e_teff"] = np.full(n, 50.0, dtype=np.float32)
    t["fe_h"] = rng.normal(0, 0.3, n)
    t["fe_h"][2] = np.nan
    t["mg_fe"] = rng.normal(0.1, 0.1, n)
    t["mg_fe_extrap"] = np.array([True, False] * (n // 2))
    t["giantmodel"] = np.array([1, 0] * (n // 2))  # int 0/1 -> bool (schema)
    t["n_obs"] = np.ones(n, dtype=np.int64)
    t["Jz"] = rng.uniform(0, 10, n)
    t["Jz"].unit = u.kpc * u.km / u.s
    t["distance"] = np.full(n, 1500.0)
    t["distance"].unit = u.pc  # a unit the column already carries is kept
    t["cov"] = rng.normal(size=(n, 2))
    t.meta["run"] = "test"
    return t


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_round_trip_columns_dtypes_units(tmp_path, suffix):
    t = per_star_table()
    path = write_catalogue(t, tmp_path / f"stars{suffix}", label_names=LABELS)
    r = read_catalogue(path)
    schema_first = ["source_id", "designation", "giantmodel", "teff", "e_teff", "fe_h", "mg_fe", "mg_fe_extrap", "Jz", "n_obs", "distance"]
    assert r.colnames == schema_first + ["extra_col", "cov"]
    assert r.meta["schema"] == "wheeler2020" and r.meta["run"] == "test"
    expect_dtype = dict(source_id=np.int64, teff=np.float64, e_teff=np.float32, giantmodel=np.bool_,
                        mg_fe_extrap=np.bool_, extra_col=np.int16, n_obs=np.int64, cov=np.float64)
    for name, dt in expect_dtype.items():
        assert r[name].dtype == np.dtype(dt), name
    assert r["designation"].dtype.kind == "U" and list(r["designation"]) == list(t["designation"])
    assert r["teff"].unit == u.K and r["fe_h"].unit == u.dex and r["Jz"].unit == u.kpc * u.km / u.s
    assert r["distance"].unit == u.pc and r["extra_col"].unit is None
    assert r["teff"].description == "effective temperature T_eff" and r["source_id"].description == "Gaia DR2 source id"
    # missing values: masked int, NaN float
    assert r["source_id"].mask[1] and not r["source_id"].mask[0] and r["source_id"][0] == 10**18
    assert np.isnan(r["fe_h"][2])
    np.testing.assert_array_equal(r["teff"], t["teff"])
    np.testing.assert_array_equal(r["cov"], t["cov"])
    assert list(r["giantmodel"]) == [True, False, True, False]
    assert r.colnames == read_catalogue(path).colnames  # stable


def test_nandakumar_schema_and_dataframe(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(dict(unique_id=["a", "b"], teffCann=[4800.0, 5100.0], e_teffCann=[40.0, 50.0], flag_training=[0, 1], r_est=[900.0, 1200.0]))
    path = write_catalogue(df, tmp_path / "n.parquet", schema="nandakumar2022")
    r = read_catalogue(path)
    assert r.colnames == ["unique_id", "teffCann", "e_teffCann", "flag_training", "r_est"]
    assert r["teffCann"].unit == u.K and r["r_est"].unit == u.pc and r["flag_training"].dtype == np.int64
    assert r["teffCann"].description == "Cannon estimate of effective temperature T_eff"


def test_parquet_metadata_is_readable_without_cannonade(tmp_path):
    import json

    import pyarrow.parquet as pq

    path = write_catalogue(per_star_table(), tmp_path / "s.parquet", label_names=LABELS)
    sch = pq.read_schema(path)
    assert sch.field("teff").metadata[b"unit"] == b"K"
    md = json.loads(sch.metadata[b"cannonade"])
    assert md["schema"] == "wheeler2020" and md["columns"]["Jz"]["unit"] == "km kpc / s"


def test_bad_dtype_is_named_and_unknown_suffix(tmp_path):
    t = Table(dict(teff=["hot", "cool"]))
    with pytest.raises(CatalogueError, match="teff"):
        write_catalogue(t, tmp_path / "x.fits")
    with pytest.raises(CatalogueError, match="suffix"):
        write_catalogue(per_star_table(), tmp_path / "x.csv")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_write_is_atomic(tmp_path, suffix, monkeypatch):
    import cannonade.catalogue.writers as catmod

    path = tmp_path / f"stars{suffix}"
    write_catalogue(per_star_table(4), path, label_names=LABELS)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        # leave a half-written temporary file behind, then fail
        tmp = args[1] if len(args) > 1 else kwargs.get("where")
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    if suffix == ".fits":
        monkeypatch.setattr(catmod, "_write_fits", boom)
    else:
        import pyarrow.parquet as pq

        monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_catalogue(per_star_table(6), path, label_names=LABELS)
    assert path.read_bytes() == before and len(read_catalogue(path)) == 4
    assert os.listdir(tmp_path) == [path.name]  # no temporary left behind
    with pytest.raises(OSError):
        write_catalogue(per_star_table(6), tmp_path / f"new{suffix}", label_names=LABELS)
    assert not (tmp_path / f"new{suffix}").exists()


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_chunked_writer(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    full = per_star_table(12)
    full["source_id"].mask[5] = True  # missing values in a later chunk too
    with CatalogueWriter(path, label_names=LABELS) as w:
        for start in range(0, 12, 4):
            w.write(full[start:start + 4])
        assert not path.exists()  # appears only on success
    r = read_catalogue(path)
    assert len(r) == 12 and w.n_rows == 12
    np.testing.assert_array_equal(r["teff"], full["teff"])
    assert list(np.flatnonzero(r["source_id"].mask)) == [1, 5] and r["teff"].unit == u.K
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        assert pq.ParquetFile(path).num_row_groups == 3
    with pytest.raises(RuntimeError):
        with CatalogueWriter(tmp_path / f"fail{suffix}", label_names=LABELS) as w:
            w.write(full[:4])
            raise RuntimeError("crash mid-way")
    assert not (tmp_path / f"fail{suffix}").exists()


def test_corrupt_file_raises_named_error(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(CatalogueError, match="bad.parquet"):
        read_catalogue(bad)


# ---------------------------------------------------------------- derived labels and chi^2
DERIVED_LABELS = ["teff", "fe_h", "mg_fe", "mean_alpha_fe", "mean_s_fe"]


def pipeline_like_table(n=3):
    """Columns as the pipeline writes them: derived means, their errors, windowed chi^2, chi2, dof."""
    rng = np.random.default_rng(1)
    t = Table()
    t["designation"] = [f"J{i:03d}" for i in range(n)]
    for name in DERIVED_LABELS:
        t[name] = rng.normal(0, 0.1, n) + (5000.0 if name == "teff" else 0.0)
        t[f"e_{name}"] = np.full(n, 0.05)
    t["chi2"] = rng.uniform(3000, 4000, n)
    t["dof"] = np.full(n, 3600, dtype=np.int64)
    for name in ("mg_fe", "mean_alpha_fe", "mean_s_fe"):
        t[f"chi2_{name}"] = rng.uniform(10, 100, n)
    return t


def expected_units_and_descriptions():
    """name -> (unit, words the description must contain)."""
    dex = u.dex
    return {
        "mean_alpha_fe": (dex, ["[alpha/Fe]", "error-weighted mean", "[Mg/Fe]", "[Si/Fe]", "[Ca/Fe]", "[Ti/Fe]", "Wheeler+2020"]),
        "mean_s_fe": (dex, ["[s/Fe]", "error-weighted mean", "[Ba/Fe]", "[Y/Fe]", "Wheeler+2020"]),
        "e_mean_alpha_fe": (dex, ["uncertainty", "mean_alpha_fe"]),
        "e_mean_s_fe": (dex, ["uncertainty", "mean_s_fe"]),
        "mg_fe": (dex, ["[Mg/Fe]"]),
        "fe_h": (dex, ["[Fe/H]"]),
        "chi2_mg_fe": (None, ["chi^2", "windows", "[Mg/Fe]"]),
        "chi2_mean_alpha_fe": (None, ["chi^2", "windows", "[alpha/Fe]", "Mg, Si, Ca, Ti"]),
        "chi2_mean_s_fe": (None, ["chi^2", "windows", "[s/Fe]", "Ba, Y"]),
        "chi2": (None, ["chi^2"]),
        "dof": (None, ["degrees of freedom"]),
        "teff": (u.K, ["effective temperature"]),
    }


def assert_units_and_descriptions(table, how):
    for name, (unit, words) in expected_units_and_descriptions().items():
        col = table[name]
        assert col.unit == unit, f"{how}: {name} has unit {col.unit!r}, expected {unit!r}"
        desc = col.info.description
        assert desc, f"{how}: {name} has no description"
        for w in words:
            assert w in desc, f"{how}: description of {name} ({desc!r}) lacks {w!r}"


def test_derived_labels_and_chi2_columns_in_the_schema():
    from cannonade.catalogue import infer_label_names, label_info

    assert label_info("mean_alpha_fe")[0] == "dex" and label_info("mean_s_fe")[0] == "dex"
    assert infer_label_names(pipeline_like_table().colnames) == DERIVED_LABELS
    specs = {c.name: c for c in schema_for(DERIVED_LABELS)}
    for name, (unit, words) in expected_units_and_descriptions().items():
        spec = specs[name]
        assert (u.Unit(spec.unit) if spec.unit else None) == unit, name
        assert all(w in spec.description for w in words), (name, spec.description)
    assert specs["dof"].dtype == "int64"
    assert "mean_alpha_fe_extrap" in specs and "chi2_fe_h" not in specs and "chi2_teff" not in specs
    names = list(specs)
    assert names.index("mean_alpha_fe") < names.index("e_mean_alpha_fe") < names.index("chi2_mean_alpha_fe")
    assert names.index("chi2") < names.index("dof")


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_derived_labels_and_chi2_keep_units_and_descriptions(tmp_path, suffix):
    import warnings

    path = write_catalogue(pipeline_like_table(), tmp_path / f"obs{suffix}")  # labels inferred, as the pipeline does
    assert_units_and_descriptions(read_catalogue(path), "read_catalogue")
    r = read_catalogue(path)
    assert r["dof"].dtype == np.int64 and list(r["dof"]) == [3600] * 3
    if suffix == ".fits":
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no UnitsWarning for 'dex', nor any other
            plain = Table.read(path)
        assert_units_and_descriptions(plain, "astropy Table.read")
        np.testing.assert_array_equal(plain["mean_alpha_fe"], r["mean_alpha_fe"])
    else:
        import pyarrow.parquet as pq

        sch = pq.read_schema(path)
        assert sch.field("mean_alpha_fe").metadata[b"unit"] == b"dex"
        assert b"[alpha/Fe]" in sch.field("mean_alpha_fe").metadata[b"description"]
        assert b"windows" in sch.field("chi2_mean_s_fe").metadata[b"description"]


def test_fits_written_with_dex_in_tunit_still_reads(tmp_path):
    """Files of the earlier layout kept 'dex' in TUNITn (astropy's generic syntax)."""
    import warnings

    from astropy.io import fits

    cols = [fits.Column(name="fe_h", format="D", unit="dex", array=np.array([0.1, -0.2]))]
    hdu = fits.BinTableHDU.from_columns(cols, name="CATALOGUE")
    hdu.header["TCOMM1"] = "metallicity [Fe/H]"
    hdu.header["CNDSCHEM"] = "wheeler2020"
    hdu.header["CNDFMTV"] = 1
    path = tmp_path / "old.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    r = read_catalogue(path)
    assert r["fe_h"].unit == u.dex and r["fe_h"].description == "metallicity [Fe/H]"
    assert r.meta["schema"] == "wheeler2020"
    # a plain astropy read of such a file warns and leaves 'dex' unrecognised; rewritten, it is clean
    with pytest.warns(u.UnitsWarning, match="dex"):
        plain = Table.read(path)
    again = write_catalogue(plain, tmp_path / "again.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Table.read(again)["fe_h"].unit == u.dex


def test_catalogue_refuses_csv_and_unknown_format(tmp_path):
    with pytest.raises(CatalogueError, match=r"x\.csv.*suffix"):
        write_catalogue(per_star_table(), tmp_path / "x.csv")
    with pytest.raises(CatalogueError, match="unknown catalogue format 'csv'"):
        write_catalogue(per_star_table(), tmp_path / "x.fits", fmt="csv")
    with pytest.raises(CatalogueError, match=r"x\.csv"):
        CatalogueWriter(tmp_path / "x.csv")
    path = write_catalogue(per_star_table(), tmp_path / "x.dat", fmt="PARQUET", label_names=LABELS)
    assert len(read_catalogue(path, fmt="parquet")) == 4


def test_byte_strings_are_written_to_parquet_as_text(tmp_path):
    t = Table(dict(designation=np.array([b"J0001+0001", b"J0002+0002"]), teff=[5000.0, 5100.0]))
    path = write_catalogue(t, tmp_path / "b.parquet")
    back = read_catalogue(path)
    assert list(back["designation"]) == ["J0001+0001", "J0002+0002"]
