"""The per-star catalogue as a HATS catalogue (HEALPix-partitioned Parquet for LSDB).

Tests that write a catalogue need the optional ``hats`` package (``pip install cannonade[hats]``)
and skip without it; the partitioning, the named error for a missing ``hats`` and the config
rules run everywhere.
"""

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from cannonade.catalogue import read_catalogue, write_catalogue, write_hats
from cannonade.catalogue.hats import SPATIAL_INDEX_COLUMN, partition_orders
from cannonade.exceptions import CatalogueError, ConfigError, ParameterError

MAX_ROWS = 150


@pytest.fixture
def hatslib():
    return pytest.importorskip("hats")


def sky_table(n=3000, seed=0):
    """A per-star table over the whole sky, with a dense patch (so that several orders appear)."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    dense = n // 3
    ra[:dense] = rng.normal(100, 1.5, dense) % 360  # a cluster: several orders deeper there
    dec[:dense] = rng.normal(30, 1.5, dense)
    ra[-2:], dec[-2:] = [0.0, 359.999], [90.0, -90.0]  # the poles and the RA wrap
    t = Table()
    t["source_id"] = np.arange(n, dtype=np.int64) + 10**15
    t["designation"] = [f"J{i:06d}" for i in range(n)]
    t["ra"], t["dec"] = ra, dec
    t["teff"] = rng.normal(5000, 300, n)
    t["e_teff"] = np.full(n, 50.0, dtype=np.float32)
    t["fe_h"] = rng.normal(0, 0.3, n)
    t["fe_h"][3] = np.nan
    t["giantmodel"] = rng.uniform(size=n) < 0.5
    t["flags"] = np.zeros(n, dtype=np.int64)
    t["Jz"] = rng.uniform(0, 10, n)
    t["my_extra"] = MaskedColumn(np.arange(n, dtype=np.int32), mask=np.arange(n) % 7 == 0)
    t["my_extra"].description = "an extra column with its own description"
    t.meta["flag_cut"] = "flags == 0"
    return t


def partition_files(path):
    """{(order, pixel): file} of the partition files on disk."""
    out = {}
    for f in sorted((Path(path) / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet")):
        order = int(f.parts[-3].split("=")[1])
        pixel = int(f.stem.split("=")[1])
        assert int(f.parts[-2].split("=")[1]) == pixel // 10_000 * 10_000, f  # Dir = pixel rounded down to 10 000
        out[(order, pixel)] = f
    return out


# ------------------------------------------------------------------ everywhere (no hats needed)
def test_partitions_split_crowded_pixels_and_never_overlap():
    rng = np.random.default_rng(1)
    crowd = (np.int64(5) << 56) + rng.integers(0, 1 << 40, 500)  # 500 rows in one small patch of order-0 pixel 5
    spread = rng.integers(0, 12 << 56, 200)  # order-29 indices over the whole sky
    index29 = np.sort(np.r_[crowd, spread])
    order, pixel = partition_orders(index29, max_rows=60, max_order=12)
    assert (order >= 0).all() and order.max() > 2 and set(order[np.isin(index29, spread)]) & {0}
    for k, p in set(zip(order.tolist(), pixel.tolist())):
        rows = (order == k) & (pixel == p)
        assert rows.sum() <= 60 or k == 12
        assert np.all(index29[rows] >> (2 * (29 - k)) == p)  # each row inside its pixel
    # sorted by index29 every partition is contiguous: no pixel contains another
    change = np.flatnonzero((order[1:] != order[:-1]) | (pixel[1:] != pixel[:-1]))
    assert len(change) + 1 == len(set(zip(order.tolist(), pixel.tolist())))
    # max_order caps the depth: everything in one order-0 pixel stays there when max_order = 0
    order0, _ = partition_orders(index29, max_rows=1, max_order=0)
    assert set(order0.tolist()) == {0}


def test_missing_hats_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "hats", None)  # import hats -> ImportError
    with pytest.raises(CatalogueError, match=r"pip install cannonade\[hats\]"):
        write_hats(sky_table(10), tmp_path / "cat")
    assert not (tmp_path / "cat").exists()


def test_hats_is_not_a_file_format(tmp_path):
    with pytest.raises(CatalogueError, match="write_hats"):
        write_catalogue(sky_table(10), tmp_path / "per_star.hats", fmt="hats")


MINIMAL = {"target": {"spectra": "s", "catalogue": "c.fits"}, "reference": {"catalogue": "r.fits"}}


def test_config_accepts_hats_beside_a_file_format(tmp_path, monkeypatch):
    from cannonade.config import config_from_dict

    with pytest.raises(ConfigError, match="add 'fits' or 'parquet'"):
        config_from_dict({**MINIMAL, "catalogue": {"formats": ["hats"]}}, tmp_path)
    with pytest.raises(ConfigError, match="must be one of"):
        config_from_dict({**MINIMAL, "catalogue": {"formats": ["fits", "hatz"]}}, tmp_path)
    if importlib.util.find_spec("hats") is not None:
        cfg = config_from_dict({**MINIMAL, "catalogue": {"formats": ["parquet", "hats"]}}, tmp_path)
        assert cfg.catalogue.formats == ("parquet", "hats")
    monkeypatch.setitem(sys.modules, "hats", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install cannonade\[hats\]"):
        config_from_dict({**MINIMAL, "catalogue": {"formats": ["fits", "hats"]}}, tmp_path)


# ------------------------------------------------------------------ with hats
def test_written_catalogue_reads_back_with_hats(tmp_path, hatslib):
    from hats.catalog import PartitionInfo

    t = sky_table()
    prov = {"recipe": "wheeler2020", "config_fingerprint": "abc"}
    path = write_hats(t, tmp_path / "per_star_hats", "cannonade_per_star", max_rows=MAX_ROWS, provenance=prov)
    assert path == tmp_path / "per_star_hats"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_star_hats"]  # no temporary directory left

    cat = hatslib.read_hats(path)
    info = cat.catalog_info
    assert info.catalog_name == "cannonade_per_star" and info.catalog_type == "object"
    assert info.total_rows == len(t) and info.ra_column == "ra" and info.dec_column == "dec"
    assert info.healpix_column == SPATIAL_INDEX_COLUMN and info.healpix_order == 29
    assert 0 < info.hats_max_rows <= MAX_ROWS

    # the partition list: hats' reading = partition_info.csv = _metadata = the files on disk
    pixels = {(p.order, p.pixel) for p in cat.get_healpix_pixels()}
    files = partition_files(path)
    assert pixels == set(files)
    assert pixels == {(p.order, p.pixel) for p in PartitionInfo.read_from_file(path / "dataset" / "_metadata").get_healpix_pixels()}
    assert len({k for k, _ in pixels}) >= 3  # adaptive: several orders
    ranges = sorted((p << 2 * (29 - k), (p + 1) << 2 * (29 - k)) for k, p in pixels)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))  # no partition overlaps another

    # every row once, in the partition whose pixel holds its (ra, dec), sorted by _healpix_29
    import cdshealpix
    import pyarrow.parquet as pq

    seen = []
    for (k, p), f in files.items():
        part = pq.read_table(f)
        assert part.column_names[0] == SPATIAL_INDEX_COLUMN
        assert 0 < part.num_rows <= MAX_ROWS
        ra, dec = part["ra"].to_numpy(), part["dec"].to_numpy()
        pix = cdshealpix.lonlat_to_healpix(ra * u.deg, dec * u.deg, k)
        assert np.all(pix == p), (k, p)
        idx = part[SPATIAL_INDEX_COLUMN].to_numpy()
        assert np.all(np.diff(idx) >= 0) and np.all(idx >> (2 * (29 - k)) == p)
        seen.append(part["source_id"].to_numpy())
    seen = np.concatenate(seen)
    assert len(seen) == len(t) and set(seen.tolist()) == set(t["source_id"].tolist())

    # the values, units, descriptions, meta and provenance of write_catalogue, in every partition
    parts = [read_catalogue(f) for f in files.values()]
    one = parts[0]
    assert one.colnames[0] == SPATIAL_INDEX_COLUMN and one.colnames[1:4] == ["source_id", "designation", "giantmodel"]
    assert one["teff"].unit == u.K and one["fe_h"].unit == u.dex and one["ra"].unit == u.deg
    assert one["Jz"].unit == u.kpc * u.km / u.s and one["flags"].unit is None
    assert one["teff"].description == "effective temperature T_eff"
    assert one["my_extra"].description == "an extra column with its own description"
    assert "HEALPix" in one[SPATIAL_INDEX_COLUMN].description
    assert one.meta["provenance"] == prov and one.meta["schema"] == "wheeler2020"
    from astropy.table import vstack

    back = vstack(parts)
    back.sort("source_id")
    np.testing.assert_array_equal(np.asarray(back["teff"]), np.asarray(t["teff"]))
    np.testing.assert_array_equal(np.asarray(back["fe_h"]), np.asarray(t["fe_h"]))  # NaN where NaN
    assert np.all(back["designation"] == t["designation"]) and np.all(back["giantmodel"] == t["giantmodel"])
    assert np.array_equal(back["my_extra"].mask, t["my_extra"].mask)

    # the schema hats (and LSDB) read: units and descriptions, also as VOParquet metadata
    field = cat.schema.field("fe_h")
    assert field.metadata[b"unit"] == b"dex" and field.metadata[b"description"] == b"metallicity [Fe/H]"
    common = pq.read_schema(path / "dataset" / "_common_metadata")
    assert common.field("teff").metadata[b"unit"] == b"K"
    assert json.loads(common.metadata[b"cannonade"])["columns"]["teff"]["unit"] == "K"
    if b"IVOA.VOTable-Parquet.content" in common.metadata:
        assert 'name="teff"' in common.metadata[b"IVOA.VOTable-Parquet.content"].decode()

    props = (path / "properties").read_text()
    assert "hats_builder=cannonade" in props and "hats_col_ra=ra" in props
    assert (path / "hats.properties").is_file() and (path / "skymap.fits").is_file()


def test_overwrite_is_refused_unless_asked(tmp_path, hatslib):
    path = tmp_path / "cat"
    write_hats(sky_table(400), path, max_rows=MAX_ROWS)
    with pytest.raises(CatalogueError, match="overwrite=True"):
        write_hats(sky_table(300), path, max_rows=MAX_ROWS)
    assert hatslib.read_hats(path).catalog_info.total_rows == 400
    write_hats(sky_table(300), path, max_rows=MAX_ROWS, overwrite=True)
    assert hatslib.read_hats(path).catalog_info.total_rows == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]

    # overwrite=True replaces only a HATS catalogue: never another directory, never a file
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CatalogueError, match="not a HATS catalogue"):
        write_hats(sky_table(10), other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CatalogueError, match="not a directory"):
        write_hats(sky_table(10), tmp_path / "file", overwrite=True)


def test_a_failed_write_leaves_the_previous_catalogue(tmp_path, hatslib, monkeypatch):
    import cannonade.catalogue.hats as mod

    path = tmp_path / "cat"
    write_hats(sky_table(200), path, max_rows=MAX_ROWS)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "_describe_common_metadata", boom)
    with pytest.raises(OSError, match="disk full"):
        write_hats(sky_table(300), path, max_rows=MAX_ROWS, overwrite=True)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert hatslib.read_hats(path).catalog_info.total_rows == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]
    with pytest.raises(OSError, match="disk full"):
        write_hats(sky_table(300), tmp_path / "new", max_rows=MAX_ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]


def test_positions_are_checked(tmp_path, hatslib):
    t = sky_table(50)
    with pytest.raises(CatalogueError, match=r"no position column\(s\) \['dec'\]"):
        write_hats(t[[c for c in t.colnames if c != "dec"]], tmp_path / "a")
    with pytest.raises(CatalogueError, match="'RA_ICRS'"):
        write_hats(t, tmp_path / "a", ra_column="RA_ICRS")
    bad = t.copy()
    bad["ra"] = MaskedColumn(bad["ra"], mask=np.arange(50) == 9)
    bad["dec"][5] = np.nan
    with pytest.raises(CatalogueError, match="2 of 50 rows have no valid position.*first at row 5"):
        write_hats(bad, tmp_path / "a")
    bad = t.copy()
    bad["dec"][7] = 91.0
    with pytest.raises(CatalogueError, match="1 of 50 rows.*row 7"):
        write_hats(bad, tmp_path / "a")
    rad = t.copy()
    rad["ra"].unit = u.rad
    with pytest.raises(CatalogueError, match="degrees"):
        write_hats(rad, tmp_path / "a")
    with pytest.raises(ParameterError, match="max_rows"):
        write_hats(t, tmp_path / "a", max_rows=0)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary directory


def test_other_position_columns_and_a_dataframe(tmp_path, hatslib):
    t = sky_table(500)
    t.rename_columns(["ra", "dec"], ["gaia_ra", "gaia_dec"])
    t[SPATIAL_INDEX_COLUMN] = np.zeros(len(t), dtype=np.int64)  # a stale index is recomputed
    path = write_hats(t.to_pandas(), tmp_path / "cat", ra_column="gaia_ra", dec_column="gaia_dec", max_rows=100)
    cat = hatslib.read_hats(path)
    assert cat.catalog_info.ra_column == "gaia_ra" and cat.catalog_info.total_rows == 500
    first = next(iter(partition_files(path).values()))
    import pyarrow.parquet as pq

    part = pq.read_table(first)
    assert part.column_names.count(SPATIAL_INDEX_COLUMN) == 1 and part[SPATIAL_INDEX_COLUMN].to_numpy().min() > 0


def test_an_empty_catalogue(tmp_path, hatslib):
    path = write_hats(sky_table(10)[:0], tmp_path / "cat")
    cat = hatslib.read_hats(path)
    assert cat.catalog_info.total_rows == 0 and len(cat.get_healpix_pixels()) == 0
    assert "teff" in cat.schema.names


def test_the_catalogue_stage_writes_per_star_hats(tmp_path, hatslib, monkeypatch):
    """``[catalogue] formats = ["parquet", "hats"]``: catalogue/per_star_hats/ beside the Parquet files."""
    import dataclasses

    from cannonade.pipeline import runner
    from cannonade.pipeline.stages import catalogue

    # the catalogue stage alone, on the files the earlier stages leave (their input checks skipped)
    recipe_for = runner.recipe_for
    monkeypatch.setattr(runner, "recipe_for", lambda cfg: dataclasses.replace(recipe_for(cfg), check=lambda *a: None))
    for name in ("c.fits", "r.fits"):
        Table({"obsid": np.arange(3)}).write(tmp_path / name)
    raw = {"run": {"out": str(tmp_path / "run")}, "target": {"spectra": "s", "catalogue": str(tmp_path / "c.fits")},
           "reference": {"catalogue": str(tmp_path / "r.fits")}, "dynamics": {"gaia": ""},
           "catalogue": {"formats": ["parquet", "hats"]}}
    run = runner.Run(raw)
    run.mark("infer", {"training_hash": {"dwarf": "d" * 64, "giant": "g" * 64}})
    star = sky_table(800)
    run.write_table(star, "per_star_dynamics.fits")
    obs = star[["designation", "ra", "dec", "teff"]]
    obs["obsid"] = np.arange(len(obs))
    run.write_table(obs, "per_observation.fits")
    for _ in range(2):  # a second run of the stage replaces the HATS catalogue
        info = catalogue.execute(run)
    hats_dir = run.path("catalogue", "per_star_hats")
    assert str(hats_dir) in info["files"] and not run.path("catalogue", "per_observation_hats").exists()
    assert sorted(p.name for p in run.path("catalogue").iterdir()) == ["per_observation.parquet", "per_star.parquet",
                                                                       "per_star_hats"]
    cat = hatslib.read_hats(hats_dir)
    assert cat.catalog_info.catalog_name == "per_star" and cat.catalog_info.total_rows == 800
    part = read_catalogue(next(iter(partition_files(hats_dir).values())))
    assert part.meta["provenance"]["recipe"] == "wheeler2020" and part.meta["provenance"]["training_hash"]["dwarf"] == "d" * 64
    assert part.meta["flag_cut"] == "flags == 0" and "flag_bits" in part.meta


def test_lsdb_opens_it(tmp_path, hatslib):
    lsdb = pytest.importorskip("lsdb")
    t = sky_table(1000)
    path = write_hats(t, tmp_path / "cat", max_rows=MAX_ROWS)
    opener = getattr(lsdb, "open_catalog", None) or lsdb.read_hats
    df = opener(path).compute()
    assert len(df) == len(t) and set(df["source_id"]) == set(t["source_id"].tolist())
