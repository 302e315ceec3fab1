"""HDF5 spectra store: layout, round trip, format errors (ingest: test_ingest.py)."""

import h5py
import numpy as np
import pytest
from astropy.table import Table

from cannonade.exceptions import ColumnError, ConfigError, ShapeError
from cannonade.spectra.store import (
    BLOSC_FILTER,
    COMPRESSION_OPTIONS,
    DEFAULT_COMPRESSION,
    SpectraStore,
    StoreFormatError,
    meta_columns,
    write_meta,
    write_store,
)
from cannonade.spectra.surveys import common_grid


def test_write_store_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    w = common_grid("4000:5000:50")
    flux = rng.normal(1, 0.1, (7, 50))
    ivar = rng.uniform(0, 10, (7, 50))
    ivar[0, :5] = 0
    meta = Table({"obj_id": [f"s{k}" for k in range(7)], "ra": np.arange(7.0), "snr": np.full(7, 30.0), "teff": np.arange(7) * 100.0})
    p = write_store(tmp_path / "s.h5", w, flux, ivar, meta, {"grid": "test", "normalise": "none"})
    with h5py.File(p, "r") as h5:
        assert h5.attrs["format"] == "cannonade-spectra-store" and h5.attrs["version"] == 1
        assert h5["flux"].dtype == np.float32 and h5["flux"].chunks[1] == 50
        assert h5["wavelength"].dtype == np.float64
        assert h5["meta/ra"].dtype == np.float64 and h5["meta/starflag"].dtype == np.int64
    with SpectraStore(p) as st:
        assert st.n_spectra == 7 and len(st) == 7 and st.n_pixels == 50
        np.testing.assert_array_equal(st.wavelength, w)
        f, i = st.read(2, 5)
        assert f.dtype == np.float64 and f.shape == (3, 50)
        np.testing.assert_allclose(f, flux[2:5], rtol=1e-6)
        np.testing.assert_allclose(i, ivar[2:5], rtol=1e-6)
        m = st.meta()
        assert list(m["obj_id"]) == [f"s{k}" for k in range(7)]
        np.testing.assert_array_equal(m["teff"], np.arange(7) * 100.0)  # extra column kept
        assert np.all(np.isnan(m["dec"]))  # missing standard column -> NaN
        some = st.meta(2, 5, columns=["teff", "obj_id"])  # only these, in this order
        assert some.colnames == ["teff", "obj_id"] and list(some["obj_id"]) == ["s2", "s3", "s4"]
        with pytest.raises(ColumnError, match="'nope'"):
            st.meta(columns=["obj_id", "nope"])
        ids = st.column("obj_id", 5)  # one column as an array, text as str
        assert ids.dtype.kind == "U" and ids.tolist() == ["s5", "s6"]
        np.testing.assert_array_equal(st.column("teff", 1, 3), [100.0, 200.0])
        assert st.column("obj_id", 9).size == 0
        with pytest.raises(ColumnError, match="s.h5: no metadata column 'nope'"):
            st.column("nope")
        chunks = list(st.iter_chunks(3))
        assert [(a, b) for a, b, _, _ in chunks] == [(0, 3), (3, 6), (6, 7)]
        np.testing.assert_allclose(np.vstack([c[2] for c in chunks]), flux, rtol=1e-6)
        assert st.attrs["grid"] == "test"


def test_store_format_errors(tmp_path):
    with pytest.raises(StoreFormatError, match="not found"):
        SpectraStore(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(StoreFormatError, match="junk.h5"):
        SpectraStore(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = 1
    with pytest.raises(StoreFormatError, match="not a cannonade spectra store"):
        SpectraStore(tmp_path / "other.h5")


def test_write_store_shape_errors(tmp_path):
    w = common_grid("4000:5000:50")
    with pytest.raises(ShapeError, match="disagree"):
        write_store(tmp_path / "s.h5", w, np.ones((3, 50)), np.ones((3, 49)))
    with pytest.raises(ShapeError, match="'ra'"):
        write_store(tmp_path / "s.h5", w, np.ones((3, 50)), np.ones((3, 50)), {"ra": [1.0, 2.0]})
    assert not (tmp_path / "s.h5").exists()
    with pytest.raises(StoreFormatError, match="newer"):
        p = write_store(tmp_path / "v.h5", w, np.ones((1, 50)), np.ones((1, 50)))
        with h5py.File(p, "a") as h5:
            h5.attrs["version"] = 99
        SpectraStore(p)


def test_read_rows_in_any_order(tmp_path):
    from cannonade.exceptions import ShapeError

    rng = np.random.default_rng(1)
    wl = np.linspace(4000, 5000, 20)
    flux = rng.normal(size=(50, 20)).astype(np.float32)
    ivar = rng.uniform(1, 2, size=(50, 20)).astype(np.float32)
    path = tmp_path / "s.h5"
    write_store(path, wl, flux, ivar)
    rows = np.array([40, 3, 3, 17, 0, 49])
    with SpectraStore(path) as st:
        f, iv = st.read_rows(rows, block=5)
        np.testing.assert_array_equal(f, flux[rows].astype(float))
        np.testing.assert_array_equal(iv, ivar[rows].astype(float))
        with pytest.raises(ShapeError, match="row 50"):
            st.read_rows([1, 50])


def _noisy(n=130, p=200, seed=2):
    """Spectrum-like float32 arrays (noise around 1, some bad pixels) that do not compress trivially."""
    rng = np.random.default_rng(seed)
    flux = rng.normal(1.0, 0.05, (n, p)).astype(np.float32)
    ivar = rng.uniform(100, 900, (n, p)).astype(np.float32)
    ivar[rng.random((n, p)) < 0.03] = 0
    return np.linspace(4000, 5000, p), flux, ivar


def test_store_is_compressed_by_default_and_round_trips_exactly(tmp_path):
    w, flux, ivar = _noisy()
    path = write_store(tmp_path / "c.h5", w, flux, ivar)
    with h5py.File(path, "r") as h5:
        for name in ("flux", "ivar"):
            ds = h5[name]
            plist = ds.id.get_create_plist()
            filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            assert BLOSC_FILTER in filters, (name, filters)  # the default: Blosc LZ4
            assert ds.id.get_storage_size() < ds.size * 4  # it does compress
    with SpectraStore(path) as st:
        assert st.compression == DEFAULT_COMPRESSION
        f, i = st.read()
        np.testing.assert_array_equal(f, flux.astype(np.float64))  # lossless: bit for bit
        np.testing.assert_array_equal(i, ivar.astype(np.float64))
        rows = np.array([129, 0, 64, 63, 64, 7])
        f, i = st.read_rows(rows, block=40)
        np.testing.assert_array_equal(f, flux[rows].astype(np.float64))
        np.testing.assert_array_equal(i, ivar[rows].astype(np.float64))


@pytest.mark.parametrize("option", sorted(COMPRESSION_OPTIONS))
def test_every_compression_option_is_lossless(tmp_path, option):
    w, flux, ivar = _noisy(n=70, p=50)
    path = write_store(tmp_path / "o.h5", w, flux, ivar, compression=option)
    with SpectraStore(path) as st:
        assert st.compression == option
        f, i = st.read()
    np.testing.assert_array_equal(f, flux)
    np.testing.assert_array_equal(i, ivar)


def test_unknown_compression_fails_before_writing(tmp_path):
    w, flux, ivar = _noisy(n=3, p=10)
    with pytest.raises(ConfigError, match="shuffle\\+lzf"):
        write_store(tmp_path / "x.h5", w, flux, ivar, compression="zip")
    assert not (tmp_path / "x.h5").exists()


def test_uncompressed_store_of_the_old_layout_still_reads(tmp_path):
    """A store written before compression (plain chunked float32 datasets) reads as before."""
    w, flux, ivar = _noisy(n=100, p=30)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as h5:  # the version-1 layout as the writers made it before
        h5.create_dataset("wavelength", data=w)
        h5.create_dataset("flux", data=flux, chunks=(64, 30))
        h5.create_dataset("ivar", data=ivar, chunks=(64, 30))
        write_meta(h5.create_group("meta"), meta_columns({"obj_id": [f"s{k}" for k in range(100)]}, 100), 100)
        h5.attrs["format"] = "cannonade-spectra-store"
        h5.attrs["version"] = 1
        h5.attrs["grid"] = "custom"
    with SpectraStore(path) as st:
        assert st.compression == "none" and st.n_spectra == 100
        np.testing.assert_array_equal(st.read(10, 20)[0], flux[10:20])
        np.testing.assert_array_equal(st.read_rows([99, 3])[1], ivar[[99, 3]])
        assert list(st.meta(0, 2)["obj_id"]) == ["s0", "s1"]
        assert sum(b - a for a, b, _, _ in st.iter_chunks(33)) == 100


def test_empty_store(tmp_path):
    path = write_store(tmp_path / "e.h5", np.linspace(4000, 5000, 10), np.zeros((0, 10)), np.zeros((0, 10)))
    with SpectraStore(path) as st:
        assert st.n_spectra == 0 and st.read()[0].shape == (0, 10)


def test_unique_reads_one_column_in_blocks(tmp_path):
    """``unique`` gives the distinct values of one column, block by block (what a survey's setup
    needs of its million spectra); SpectralSetup.from_store joins the surveys with '+'."""
    from cannonade.cannon.spectral_setup import SpectralSetup

    w = common_grid("4000:5000:20")
    surveys = ["lamost", "lamost", "galah", "lamost", "", "apogee", "galah"]
    meta = Table({"obj_id": [f"s{k}" for k in range(7)], "survey": surveys, "snr": np.arange(7.0)})
    path = write_store(tmp_path / "u.h5", w, np.ones((7, 20)), np.ones((7, 20)), meta, {"grid": "test", "normalise": "none"})
    with SpectraStore(path) as st:
        for block in (1, 2, 3, 100):
            assert st.unique("survey", block=block) == ["", "apogee", "galah", "lamost"]
        assert st.unique("snr", block=4) == [float(k) for k in range(7)]
        with pytest.raises(ColumnError, match="no metadata column 'teff_x'"):
            st.unique("teff_x")
        assert SpectralSetup.from_store(st).survey == "apogee+galah+lamost"
    empty = write_store(tmp_path / "e.h5", w, np.zeros((0, 20)), np.zeros((0, 20)))
    with SpectraStore(empty) as st:
        assert st.unique("survey") == [] and SpectralSetup.from_store(st).survey == "unknown"
