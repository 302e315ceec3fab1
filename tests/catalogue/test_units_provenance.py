"""Issue 12: every catalogue column has a unit (or is declared dimensionless) and a description that
a plain ``astropy.table.Table.read`` restores without a warning; every catalogue carries provenance."""

import json
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable, Table

from cannonade.catalogue import (
    DIMENSIONLESS,
    SCHEMAS,
    CatalogueWriter,
    label_info,
    read_catalogue,
    schema_for,
    write_catalogue,
)
from cannonade.exceptions import CatalogueError
from cannonade.provenance import PROVENANCE_KEY, provenance

LABELS = {
    "wheeler2020": ["teff", "logg", "vmic", "fe_h", "mg_fe", "ba_fe", "c_h", "mean_alpha_fe", "mean_s_fe"],
    "nandakumar2022": ["teff", "logg", "feh", "alphafe", "vmicro", "vbroad", "mgfe"],
    "labels": ["teff", "logg", "fe_h", "mg_fe", "mean_alpha_fe"],  # cannonade infer's output
}
PROVENANCE_CARDS = ("CNDVERS", "CNDDATE", "CNDRECIP", "CNDCONF", "CNDTRAIN", "CNDSTORE", "CNDPROV")


def strict_unit(text):
    """The astropy unit of a schema unit string, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return u.Unit(text)


def strict_read(path, cls=Table):
    """``cls.read(path)`` with every warning (UnitsWarning included) an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cls.read(path)


# ---------------------------------------------------------------- (a) the schemas as data
@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_every_schema_column_has_a_unit_or_is_dimensionless_and_a_description(schema):
    specs = schema_for(LABELS[schema], schema)
    assert len({c.name for c in specs}) == len(specs)
    for c in specs:
        assert c.unit is not None, f"{c.name}: unit undeclared (use DIMENSIONLESS)"
        assert c.description and c.description.strip(), f"{c.name}: no description"
        assert c.dtype in ("float64", "int64", "bool", "str"), c.name
        if c.unit != DIMENSIONLESS:
            unit = strict_unit(c.unit)
            assert unit != u.dimensionless_unscaled, c.name
        if c.dtype in ("bool", "str", "int64"):  # flags, booleans, counts, ids, text
            assert c.unit == DIMENSIONLESS, f"{c.name} ({c.dtype}) has unit {c.unit!r}"


def test_unit_convention_of_labels_distances_velocities_and_dof_beside_chi2():
    specs = {c.name: c for c in schema_for(LABELS["wheeler2020"])}
    assert DIMENSIONLESS == ""
    for name in ("logg", "fe_h", "mg_fe", "c_h", "mean_alpha_fe", "e_mean_s_fe", "raw_e_ba_fe"):
        assert strict_unit(specs[name].unit) == u.dex, name
    assert specs["teff"].unit == "K" and strict_unit(specs["vmic"].unit) == u.km / u.s
    # distances of the per-star table: one unit, kpc (Gaia's r_est/r_lo/r_hi in pc are left out by the pipeline)
    for name in ("distance", "distance_lo", "distance_hi", "R", "z", "e_R", "e_z"):
        assert strict_unit(specs[name].unit) == u.kpc, name
    for name in ("rv", "rv_err", "radial_velocity_used", "radial_velocity_used_err", "gaia_radial_velocity"):
        assert strict_unit(specs[name].unit) == u.km / u.s, name
    assert "target" in specs["rv"].description and "Gaia" in specs["gaia_radial_velocity"].description
    for name in ("chi2", "dof", "snr", "snrz", "flags", "train_distance", "chi2_mg_fe", "giantmodel", "teff_extrap"):
        assert specs[name].unit == DIMENSIONLESS, name
    names = list(specs)
    assert names[names.index("chi2") + 1] == "dof"
    assert label_info("age")[0] == DIMENSIONLESS  # an unknown label is dimensionless, never undeclared


# ---------------------------------------------------------------- (b) files: no UnitsWarning
def full_table(schema, n=5, seed=0):
    """A table with every column of ``schema`` for its label set (some values missing)."""
    rng = np.random.default_rng(seed)
    t = Table()
    for c in schema_for(LABELS[schema], schema):
        if c.dtype == "float64":
            t[c.name] = rng.normal(size=n)
            t[c.name][1] = np.nan
        elif c.dtype == "int64":
            t[c.name] = rng.integers(0, 100, n)
        elif c.dtype == "bool":
            t[c.name] = rng.random(n) > 0.5
        else:
            t[c.name] = [f"{c.name[:3]}{i:0{i + 1}d}" for i in range(n)]
    t.meta["run"] = "units test"
    return t


def declared_units(path):
    """Names of the columns whose unit the file declares ('' included)."""
    if path.suffix == ".fits":
        h = fits.getheader(path, "CATALOGUE")
        names = {h[f"TTYPE{i}"] for i in range(1, h["TFIELDS"] + 1) if f"TUNIT{i}" in h}
        return names | set(json.loads(h.get("CNDUNITS", "{}")))
    import pyarrow.parquet as pq

    return {f.name for f in pq.read_schema(path) if f.metadata and b"unit" in f.metadata}


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_plain_astropy_read_has_every_unit_and_description_without_warnings(tmp_path, schema, suffix):
    t = full_table(schema)
    path = write_catalogue(t, tmp_path / f"cat{suffix}", schema=schema, label_names=LABELS[schema])
    specs = {c.name: c for c in schema_for(LABELS[schema], schema)}
    plain = strict_read(path)  # a UnitsWarning (e.g. for 'dex') or any other warning fails here
    assert plain.colnames == list(specs)
    assert declared_units(path) == set(specs)
    ours = read_catalogue(path)
    for name, spec in specs.items():
        expect = None if spec.unit == DIMENSIONLESS else strict_unit(spec.unit)
        for how, table in (("Table.read", plain), ("read_catalogue", ours)):
            assert table[name].unit == expect, (how, name, table[name].unit, spec.unit)
            assert table[name].description == spec.description, (how, name)
        if spec.dtype == "str":
            assert list(plain[name]) == list(t[name]), name  # full length, no truncation
    # QTable: quantities where there is a unit, and flags, counts and booleans stay integers/booleans
    q = strict_read(path, QTable)
    for name, spec in specs.items():
        if spec.dtype in ("int64", "bool"):
            assert not isinstance(q[name], u.Quantity) and q[name].dtype.kind == np.dtype(spec.dtype).kind, name
        elif spec.unit != DIMENSIONLESS:
            assert isinstance(q[name], u.Quantity), name
    if suffix == ".fits":
        h = fits.getheader(path, "CATALOGUE")
        for i, name in enumerate(plain.colnames, start=1):
            assert h[f"TCOMM{i}"] == specs[name].description
            if specs[name].unit == DIMENSIONLESS:
                assert h[f"TUNIT{i}"] == "", name  # declared dimensionless


def test_dex_columns_in_fits_and_parquet(tmp_path):
    """'dex' is no FITS unit: no TUNITn, but CNDUNITS and astropy's block; Parquet carries it as is."""
    t = Table(dict(fe_h=[0.1, -0.2], e_fe_h=[0.05, 0.06], teff=[5000.0, 5100.0]))
    f = write_catalogue(t, tmp_path / "d.fits")
    h = fits.getheader(f, "CATALOGUE")
    assert "TUNIT1" not in h and json.loads(h["CNDUNITS"]) == {"fe_h": "dex", "e_fe_h": "dex"} and h["TUNIT3"] == "K"
    p = write_catalogue(t, tmp_path / "d.parquet")
    for path in (f, p):
        plain = strict_read(path)
        assert plain["fe_h"].unit == u.dex and plain["e_fe_h"].unit == u.dex and plain["teff"].unit == u.K


def test_streamed_parquet_declares_the_longest_text(tmp_path):
    """astropy's text length (table::len::) must cover later, longer chunks: no truncation, no warning."""
    path = tmp_path / "s.parquet"
    with CatalogueWriter(path, label_names=["teff"]) as w:
        w.write(Table(dict(designation=["a", "bb"], teff=[1.0, 2.0])))
        w.write(Table(dict(designation=["a much longer designation"], teff=[3.0])))
    plain = strict_read(path)
    assert list(plain["designation"]) == ["a", "bb", "a much longer designation"]
    assert plain["teff"].unit == u.K and plain["designation"].description
    assert list(read_catalogue(path)["designation"]) == list(plain["designation"])


# ---------------------------------------------------------------- (c) provenance
def a_provenance():
    return provenance(recipe="wheeler2020", config_fingerprint="0123456789abcdef",
                      training_hash={"dwarf": "a" * 64, "giant": "b" * 64}, input_store="run/target.h5")


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_provenance_round_trips(tmp_path, suffix):
    prov = a_provenance()
    t = full_table("wheeler2020")
    path = write_catalogue(t, tmp_path / f"p{suffix}", label_names=LABELS["wheeler2020"], provenance=prov)
    r = read_catalogue(path)
    assert r.meta["provenance"] == prov and r.meta["run"] == "units test"
    plain = strict_read(path)
    if suffix == ".fits":
        h = fits.getheader(path, "CATALOGUE")
        for key in PROVENANCE_CARDS:
            assert key in h, key
        assert h["CNDVERS"] == prov["version"] and h["CNDRECIP"] == "wheeler2020" and h["CNDCONF"] == "0123456789abcdef"
        assert json.loads(h["CNDTRAIN"]) == prov["training_hash"] and h["CNDSTORE"] == "run/target.h5"
        assert h["CNDDATE"] == prov["created"] and json.loads(h["CNDPROV"]) == prov
        assert "provenance" not in json.loads(h["CNDMETA"])  # once, in its own cards
        assert plain.meta["CNDRECIP"] == "wheeler2020"
    else:
        import pyarrow.parquet as pq

        md = pq.read_schema(path).metadata
        assert json.loads(md[PROVENANCE_KEY.encode()]) == prov
        assert plain.meta["provenance"] == prov  # astropy's own metadata carries it too
    # read -> write keeps the provenance (from meta) unless another is given
    again = write_catalogue(r, tmp_path / f"again{suffix}")
    assert read_catalogue(again).meta["provenance"] == prov
    other = dict(prov, recipe="other")
    assert read_catalogue(write_catalogue(r, tmp_path / f"other{suffix}", provenance=other)).meta["provenance"] == other


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_streamed_catalogue_carries_provenance_and_header_cards(tmp_path, suffix):
    prov = a_provenance()
    path = tmp_path / f"w{suffix}"
    with CatalogueWriter(path, label_names=["teff"], provenance=prov, header_cards=[("FLAGB00", "X", "a bit")]) as w:
        w.write(Table(dict(teff=[1.0, 2.0])))
    assert read_catalogue(path).meta["provenance"] == prov
    if suffix == ".fits":
        h = fits.getheader(path, "CATALOGUE")
        assert h["FLAGB00"] == "X" and h["CNDRECIP"] == "wheeler2020"


def test_no_provenance_and_bad_provenance(tmp_path):
    path = write_catalogue(Table(dict(teff=[1.0])), tmp_path / "n.fits")
    assert "provenance" not in read_catalogue(path).meta and "CNDPROV" not in fits.getheader(path, 1)
    with pytest.raises(CatalogueError, match="provenance"):
        write_catalogue(Table(dict(teff=[1.0])), tmp_path / "b.parquet", provenance="wheeler2020")
    assert not (tmp_path / "b.parquet").exists()
