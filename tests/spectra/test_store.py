"""HDF5 spectra store and ingest: layout, error reporting, resumability, atomicity."""

import csv
import shutil

import h5py
import numpy as np
import pytest
from astropy.table import Table

from cannonade.spectra import store as store_mod
from cannonade.cli import build_parser
from cannonade.exceptions import ConfigError
from cannonade.spectra.readers import read_spectrum
from cannonade.spectra.preprocessing import prepare_spectrum
from cannonade.spectra.store import (
    SpectraStore,
    StoreFormatError,
    cli_ingest,
    expand_inputs,
    ingest,
    load_redshift_catalogue,
    write_store,
)
from cannonade.spectra.surveys import common_grid


@pytest.fixture(scope="module")
def lamost_dir(shared_data, tmp_path_factory):
    """14 real LAMOST files plus truncated, corrupt and non-FITS files (in a temp dir)."""
    d = tmp_path_factory.mktemp("lamost")
    files = sorted((shared_data / "lamost_dr1" / "spectra").glob("*.fits"))[:14]
    for f in files:
        shutil.copy(f, d / f.name)
    raw = files[0].read_bytes()
    (d / "zz_truncated.fits").write_bytes(raw[: len(raw) // 3])
    (d / "zz_corrupt.fits").write_bytes(raw[:100] + b"\x00garbage" * 500 + raw[4100:])
    (d / "zz_notfits.fits").write_bytes(b"name,z\nfoo,0.1\n")
    return d


def _store_arrays(path):
    with SpectraStore(path) as st:
        f, i = st.read()
        return f, i, st.meta(), st.wavelength


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


def test_expand_inputs(tmp_path, lamost_dir):
    lst = tmp_path / "list.txt"
    names = sorted(p.name for p in lamost_dir.glob("*.fits"))
    lst.write_text("# comment\n" + "\n".join(str(lamost_dir / n) for n in names[:3]) + "\n\n")
    files = expand_inputs([f"@{lst}", str(lamost_dir)])
    assert files[:3] == [str(lamost_dir / n) for n in names[:3]]
    assert len(files) == len(names)  # duplicates removed
    with pytest.raises(ConfigError):
        expand_inputs(["@" + str(tmp_path / "missing.txt")])


def test_ingest_reports_bad_files_and_matches_readers(tmp_path, lamost_dir):
    out = tmp_path / "store.h5"
    rep = ingest([str(lamost_dir), str(tmp_path / "missing.fits")], out, workers=2, chunk_size=5)
    assert rep.n_ok == 14 and rep.n_failed == 4 and rep.n_chunks == 4
    failed = {f.split("/")[-1]: r for f, r in rep.failures}
    assert set(failed) == {"zz_truncated.fits", "zz_corrupt.fits", "zz_notfits.fits", "missing.fits"}
    assert "truncated" in failed["zz_truncated.fits"] and "not a FITS" in failed["zz_notfits.fits"]
    with open(rep.error_report, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file", "reason"] and len(rows) == 5
    assert not (tmp_path / "store.h5.parts").exists()  # parts removed after assembly
    f, i, meta, w = _store_arrays(out)
    np.testing.assert_array_equal(w, common_grid("lamost"))
    real = sorted(p for p in lamost_dir.glob("spec-*.fits"))
    assert list(meta["source_file"]) == [str(p) for p in real]
    for k in (0, 7, 13):
        s = read_spectrum(real[k])
        ef, ei = prepare_spectrum(s, w)
        assert meta["obj_id"][k] == s.meta["obj_id"]
        assert meta["redshift"][k] == pytest.approx(s.meta["redshift"]) and meta["z_applied"][k] == pytest.approx(s.meta["redshift"])
        np.testing.assert_array_equal(i[k] > 0, ei > 0)
        good = ei > 0
        np.testing.assert_allclose(f[k][good], ef[good], rtol=1e-5)
        np.testing.assert_allclose(i[k][good], ei[good], rtol=1e-5)
        assert meta["n_good"][k] == good.sum()
    with SpectraStore(out) as st:
        assert st.attrs["normalise"] == "gaussian" and st.attrs["grid"] == "lamost" and st.attrs["n_failed"] == 4


def test_ingest_resumes_after_kill(tmp_path, lamost_dir, monkeypatch):
    inputs = [str(lamost_dir)]
    clean = tmp_path / "clean.h5"
    ingest(inputs, clean, workers=1, chunk_size=4)

    out = tmp_path / "resumed.h5"
    real = store_mod._process_chunk
    calls = []

    def dies_on_chunk_2(index, files, part_path):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(index, files, part_path)

    monkeypatch.setattr(store_mod, "_process_chunk", dies_on_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        ingest(inputs, out, workers=1, chunk_size=4)
    parts = sorted(p.name for p in (tmp_path / "resumed.h5.parts").glob("chunk_*.h5"))
    assert parts == ["chunk_000000.h5", "chunk_000001.h5"] and not out.exists()
    stamps = {p: (tmp_path / "resumed.h5.parts" / p).stat().st_mtime_ns for p in parts}

    calls.clear()

    def counting(index, files, part_path):
        calls.append(index)
        assert (tmp_path / "resumed.h5.parts" / "chunk_000000.h5").stat().st_mtime_ns == stamps["chunk_000000.h5"]
        return real(index, files, part_path)

    monkeypatch.setattr(store_mod, "_process_chunk", counting)
    rep = ingest(inputs, out, workers=1, chunk_size=4)
    assert calls == [2, 3, 4]  # finished chunks 0 and 1 were not redone
    assert rep.n_chunks == 5 and rep.n_chunks_done_before == 2 and rep.n_ok == 14 and rep.n_failed == 3
    fa, ia, ma, _ = _store_arrays(clean)
    fb, ib, mb, _ = _store_arrays(out)
    np.testing.assert_array_equal(np.nan_to_num(fa, nan=-1), np.nan_to_num(fb, nan=-1))
    np.testing.assert_array_equal(ia, ib)
    for col in ma.colnames:
        np.testing.assert_array_equal(np.asarray(ma[col]).astype(str), np.asarray(mb[col]).astype(str))

    # a finished store with the same inputs and settings is not redone at all
    calls.clear()
    rep2 = ingest(inputs, out, workers=1, chunk_size=4)
    assert calls == [] and rep2.n_ok == 14 and rep2.n_failed == 3


def test_ingest_resume_with_process_pool(tmp_path, lamost_dir, monkeypatch):
    """Same, with 2 worker processes: a log file records which chunks ran."""
    inputs = [str(lamost_dir)]
    out = tmp_path / "pool.h5"
    log = tmp_path / "calls.log"
    real = store_mod._process_chunk

    def logged(index, files, part_path, fail=(3,)):
        with open(log, "a") as fh:
            fh.write(f"{index}\n")
        if index in fail:
            raise RuntimeError("simulated crash of chunk 3")
        return real(index, files, part_path)

    monkeypatch.setattr(store_mod, "_process_chunk", logged)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(inputs, out, workers=2, chunk_size=3)
    done = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "pool.h5.parts").glob("chunk_*.h5"))
    assert 3 not in done and len(done) >= 1
    log.write_text("")
    monkeypatch.setattr(store_mod, "_process_chunk", lambda i, f, p: logged(i, f, p, fail=()))
    rep = ingest(inputs, out, workers=2, chunk_size=3)
    ran = sorted(int(x) for x in log.read_text().split())
    assert ran == sorted(set(range(6)) - set(done))
    assert rep.n_ok == 14 and rep.n_failed == 3


def test_changed_inputs_start_over(tmp_path, lamost_dir, monkeypatch):
    out = tmp_path / "s.h5"
    parts = tmp_path / "s.h5.parts"
    parts.mkdir()
    (parts / "state.json").write_text('{"ingest_key": "something else"}')
    (parts / "chunk_000000.h5").write_bytes(b"stale")
    rep = ingest([str(lamost_dir)], out, workers=1, chunk_size=20)
    assert rep.n_chunks_done_before == 0 and rep.n_ok == 14


def test_redshift_catalogue_overrides(tmp_path, lamost_dir):
    real = sorted(lamost_dir.glob("spec-*.fits"))[:3]
    cat = tmp_path / "z.csv"
    cat.write_text("filename,z\n" + "".join(f"{p.name},{0.001 * (k + 1)}\n" for k, p in enumerate(real)))
    zmap = load_redshift_catalogue(cat)
    assert zmap[real[1].name] == pytest.approx(0.002)
    out = tmp_path / "z.h5"
    ingest([str(p) for p in real], out, workers=1, redshifts=str(cat), normalise="none")
    _, _, meta, _ = _store_arrays(out)
    np.testing.assert_allclose(meta["z_applied"], [0.001, 0.002, 0.003])
    assert not np.allclose(meta["redshift"], meta["z_applied"])  # the files' own Z is kept too
    with pytest.raises(ConfigError):
        load_redshift_catalogue(tmp_path / "absent.csv")


def test_cli_ingest(tmp_path, lamost_dir, capsys):
    out = tmp_path / "cli.h5"
    args = build_parser().parse_args(["ingest", str(lamost_dir), "--out", str(out), "--workers", "1", "--chunk-size", "100", "--normalise", "none"])
    assert cli_ingest(args) == 0
    text = capsys.readouterr().out
    assert "ingested 14 spectra" in text and "3 failed" in text and "cli.errors.csv" in text
    with SpectraStore(out) as st:
        assert st.attrs["normalise"] == "none" and st.n_spectra == 14
