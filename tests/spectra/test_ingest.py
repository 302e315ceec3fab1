"""Ingest: files -> store; error reporting, resumability (stop_after / chunk_func hooks), atomicity."""

import csv
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

from cannonade.exceptions import ConfigError
from cannonade.execution import StopRequested
from cannonade.spectra.ingest import IngestReport, expand_inputs, ingest, load_redshift_catalogue, process_chunk
from cannonade.spectra.preprocessing import prepare_spectrum
from cannonade.spectra.readers import read_spectrum
from cannonade.spectra.store import SpectraStore
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


@pytest.fixture(scope="module")
def clean_store(lamost_dir, tmp_path_factory):
    """An uninterrupted serial ingest of lamost_dir in chunks of 4."""
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    ingest([str(lamost_dir)], out, workers=1, chunk_size=4)
    return out


def logged_chunk(k, part_path, files, log, fail=()):
    """A chunk_func: log the call (one line per chunk, any process), fail on request, else do the work."""
    with open(log, "a") as fh:
        fh.write(f"{k}\n")
    if k in fail:
        raise RuntimeError(f"simulated crash of chunk {k}")
    return process_chunk(k, part_path, files)


def _calls(log):
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _store_arrays(path):
    with SpectraStore(path) as st:
        f, i = st.read()
        return f, i, st.meta(), st.wavelength


def _assert_same_store(a, b):
    fa, ia, ma, _ = _store_arrays(a)
    fb, ib, mb, _ = _store_arrays(b)
    np.testing.assert_array_equal(np.nan_to_num(fa, nan=-1), np.nan_to_num(fb, nan=-1))
    np.testing.assert_array_equal(ia, ib)
    assert ma.colnames == mb.colnames
    for col in ma.colnames:
        np.testing.assert_array_equal(np.asarray(ma[col]).astype(str), np.asarray(mb[col]).astype(str))


def test_expand_inputs(tmp_path, lamost_dir):
    lst = tmp_path / "list.txt"
    names = sorted(p.name for p in lamost_dir.glob("*.fits"))
    lst.write_text("# comment\n" + "\n".join(str(lamost_dir / n) for n in names[:3]) + "\n\n")
    files = expand_inputs([f"@{lst}", str(lamost_dir)])
    assert files[:3] == [str(lamost_dir / n) for n in names[:3]]
    assert len(files) == len(names)  # duplicates removed
    with pytest.raises(ConfigError, match="missing.txt"):
        expand_inputs(["@" + str(tmp_path / "missing.txt")])


def test_ingest_of_one_list_reads_it_chunk_by_chunk_and_gives_the_same_store(tmp_path, lamost_dir, clean_store):
    """A single @list is read from the file chunk by chunk (ListedFiles, not held in memory): the
    same files in the same order (repeats dropped), so the same store and the same fingerprint as
    the same files named one by one."""
    from cannonade.spectra import ingest as ingest_module

    files = expand_inputs([str(lamost_dir)])
    lst = tmp_path / "survey.txt"
    lst.write_text("# the survey\n" + "\n".join(files[:5] + files[2:4] + files[5:]) + "\n")  # two repeats
    seen = []
    real = ingest_module.ListedFiles

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    ingest_module.ListedFiles = spy
    try:
        rep = ingest([f"@{lst}"], tmp_path / "listed.h5", workers=2, chunk_size=4)
    finally:
        ingest_module.ListedFiles = real
    assert len(seen) == 1 and list(seen[0]) == files and rep.n_ok == 14 and rep.n_failed == 3
    _assert_same_store(clean_store, tmp_path / "listed.h5")
    with SpectraStore(tmp_path / "listed.h5") as a, SpectraStore(clean_store) as b:
        assert a.attrs["ingest_key"] == b.attrs["ingest_key"]


def test_expand_inputs_relative_list_and_suffixes(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    for name in ("b.fits", "a.fit", "sub/c.fts.gz", "sub/notes.txt", ".hidden/h.fits", ".x.fits"):
        (d / name).write_bytes(b"")
    assert [p[len(str(d)) + 1 :] for p in expand_inputs(d)] == ["a.fit", "b.fits", "sub/c.fts.gz"]
    (d / "list.txt").write_text("b.fits\nmissing.fits\n")
    assert expand_inputs(f"@{d / 'list.txt'}") == [str(d / "b.fits"), "missing.fits"]
    # absolute lines: a plain one is kept as written, the others as pathlib writes them (the same
    # names, so the same ingest fingerprint, as before the plain lines' fast path)
    lines = [f"{d}/b.fits", f"{d}//sub/./c.fts.gz", f"{d}/sub/", f"{d}/sub/.", f"{d}/./a.fit", f"{d}/sub/../b.fits"]
    (d / "abs.txt").write_text("\n".join(lines) + "\n")
    assert expand_inputs(f"@{d / 'abs.txt'}") == list(dict.fromkeys(str(Path(line)) for line in lines))  # sub/ = sub/.
    assert expand_inputs(f"@{d / 'abs.txt'}")[1] == f"{d}/sub/c.fts.gz"


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
        attrs = st.attrs
    assert attrs["normalise"] == "gaussian" and attrs["grid"] == "lamost" and attrs["n_failed"] == 4
    assert attrs["format"] == "cannonade-spectra-store" and attrs["version"] == 1
    assert {"ingest_key", "norm_kwargs", "cannonade_version", "created"} <= set(attrs)


def test_ingest_resumes_after_kill(tmp_path, lamost_dir, clean_store):
    inputs = [str(lamost_dir)]
    out = tmp_path / "resumed.h5"
    parts = tmp_path / "resumed.h5.parts"
    with pytest.raises(StopRequested):  # as a kill after two chunks
        ingest(inputs, out, workers=1, chunk_size=4, stop_after=2)
    assert sorted(p.name for p in parts.glob("part_*.h5")) == ["part_000000.h5", "part_000001.h5"] and not out.exists()
    inode = (parts / "part_000000.h5").stat().st_ino

    log = tmp_path / "calls.log"
    rep = ingest(inputs, out, workers=1, chunk_size=4, chunk_func=functools.partial(logged_chunk, log=str(log)))
    assert _calls(log) == [2, 3, 4]  # finished chunks 0 and 1 were not redone
    assert rep.n_chunks == 5 and rep.n_chunks_done_before == 2 and rep.n_ok == 14 and rep.n_failed == 3
    assert not parts.exists() and inode  # assembled, parts removed
    _assert_same_store(clean_store, out)

    # a finished store with the same inputs and settings is not redone at all
    log.write_text("")
    rep2 = ingest(inputs, out, workers=1, chunk_size=4, chunk_func=functools.partial(logged_chunk, log=str(log)))
    assert _calls(log) == [] and rep2.n_ok == 14 and rep2.n_failed == 3 and rep2.n_chunks_done_before == 5


def test_ingest_resume_with_process_pool(tmp_path, lamost_dir):
    """Same, with 2 worker processes: a crashed chunk stops the run, the rerun does only the rest."""
    inputs = [str(lamost_dir)]
    out = tmp_path / "pool.h5"
    log = tmp_path / "calls.log"
    with pytest.raises(RuntimeError, match="simulated crash of chunk 3"):
        ingest(inputs, out, workers=2, chunk_size=3, chunk_func=functools.partial(logged_chunk, log=str(log), fail=(3,)))
    done = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "pool.h5.parts").glob("part_*.h5"))
    assert 3 not in done and len(done) >= 1
    log.write_text("")
    rep = ingest(inputs, out, workers=2, chunk_size=3, chunk_func=functools.partial(logged_chunk, log=str(log)))
    assert sorted(_calls(log)) == sorted(set(range(6)) - set(done))
    assert rep.n_ok == 14 and rep.n_failed == 3 and rep.n_chunks_done_before == len(done)


def test_process_pool_stop_after_then_identical(tmp_path, lamost_dir, clean_store):
    out = tmp_path / "p.h5"
    with pytest.raises(StopRequested):
        ingest([str(lamost_dir)], out, workers=2, chunk_size=4, stop_after=1)
    assert not out.exists()
    rep = ingest([str(lamost_dir)], out, workers=2, chunk_size=4)
    assert rep.n_chunks_done_before >= 1
    _assert_same_store(clean_store, out)


def test_changed_inputs_start_over(tmp_path, lamost_dir):
    out = tmp_path / "s.h5"
    parts = tmp_path / "s.h5.parts"
    parts.mkdir()
    (parts / "state.json").write_text('{"ingest_key": "something else"}')
    (parts / "part_000000.h5").write_bytes(b"stale")
    rep = ingest([str(lamost_dir)], out, workers=1, chunk_size=20)
    assert rep.n_chunks_done_before == 0 and rep.n_ok == 14
    # same parts directory, different settings: the finished parts are not reused
    with pytest.raises(StopRequested):
        ingest([str(lamost_dir)], tmp_path / "t.h5", workers=1, chunk_size=4, stop_after=1)
    rep = ingest([str(lamost_dir)], tmp_path / "t.h5", workers=1, chunk_size=4, normalise="none")
    assert rep.n_chunks_done_before == 0


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
    with pytest.raises(ConfigError, match="absent.csv"):
        load_redshift_catalogue(tmp_path / "absent.csv")


def test_redshift_catalogue_from_rv_and_errors(tmp_path):
    from astropy.table import Table

    z = load_redshift_catalogue(Table({"apogee_id": ["a", "b"], "vhelio": [29.9792458, -9999.0]}))
    assert z == {"a": pytest.approx(1.00005e-4, rel=1e-4)}  # sentinel dropped
    assert load_redshift_catalogue({"x": "0.5"}) == {"x": 0.5} and load_redshift_catalogue(None) == {}
    with pytest.raises(ConfigError, match="no z/redshift"):
        load_redshift_catalogue(Table({"obj_id": ["a"], "teff": [5000.0]}))
    with pytest.raises(ConfigError, match="no id column"):
        load_redshift_catalogue(Table({"star": ["a"], "z": [0.1]}))


def test_ingest_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="normalise"):
        ingest([], tmp_path / "x.h5", normalise="median")
    with pytest.raises(ConfigError, match="chunk_size"):
        ingest([], tmp_path / "x.h5", chunk_size=0)
    with pytest.raises(ConfigError, match="no input files"):
        ingest([str(tmp_path)], tmp_path / "x.h5")


def test_ingest_summary_text():
    rep = IngestReport(14, 7, [(f"f{k}.fits", "truncated") for k in range(7)], "cli.h5", "cli.errors.csv", 3, 1, 2.0)
    text = rep.summary()
    assert text.splitlines()[0] == "ingested 14 spectra into cli.h5 (7 failed, 10 files/s)"
    assert "resumed: 1 of 3 chunks" in text and "error report: cli.errors.csv" in text
    assert "  f0.fits: truncated" in text and "... and 2 more" in text and "f5.fits" not in text
    assert IngestReport(3, 0, seconds=0.0, path="s.h5").summary() == "ingested 3 spectra into s.h5 (0 failed, nan files/s)"


def test_parts_and_store_are_compressed(tmp_path, lamost_dir, clean_store):
    import h5py

    from cannonade.spectra.store import DEFAULT_COMPRESSION

    out = tmp_path / "c.h5"
    with pytest.raises(StopRequested):
        ingest([str(lamost_dir)], out, workers=1, chunk_size=4, stop_after=1)
    with h5py.File(tmp_path / "c.h5.parts" / "part_000000.h5", "r") as h5:
        assert h5["flux"].compression is not None and h5["ivar"].compression is not None
    ingest([str(lamost_dir)], out, workers=1, chunk_size=4)
    with SpectraStore(out) as st:
        assert st.compression == DEFAULT_COMPRESSION
    _assert_same_store(clean_store, out)


def test_gzipped_files_are_found_and_ingested_like_plain_ones(tmp_path, lamost_dir):
    import gzip

    plain = sorted(lamost_dir.glob("spec-*.fits"))[:3]
    gz = tmp_path / "gz"
    gz.mkdir()
    for p in plain:
        (gz / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
    assert [f.rsplit("/", 1)[1] for f in expand_inputs(gz)] == [p.name + ".gz" for p in plain]
    ingest([str(gz)], tmp_path / "gz.h5", workers=1)
    ingest([str(p) for p in plain], tmp_path / "plain.h5", workers=1)
    fa, ia, ma, _ = _store_arrays(tmp_path / "gz.h5")
    fb, ib, mb, _ = _store_arrays(tmp_path / "plain.h5")
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(ia, ib)
    assert list(ma["obj_id"]) == list(mb["obj_id"]) and all(s.endswith(".fits.gz") for s in ma["source_file"])


def test_compressed_chunks_copied_as_they_are_give_the_same_store(tmp_path, lamost_dir, monkeypatch):
    """Parts filling whole chunks are copied without decoding; a part ending in a partial chunk, the
    misaligned parts after it and parts with failures are encoded again, by this process or by
    the workers: the store is the same."""
    import gzip

    import h5py

    from cannonade.spectra import assembly
    from cannonade.spectra import ingest as ingest_module

    d = tmp_path / "many"
    d.mkdir()
    for p in sorted(lamost_dir.glob("*.fits")):  # 14 real files, 3 broken ones (sorted first: aa_*)
        shutil.copy(p, d / p.name.replace("zz_", "aa_"))
        if p.name.startswith("spec-"):
            (d / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
    assert ingest_module._chunk_rows(24) == 8 and ingest_module._chunk_rows(2000) == 50 and ingest_module._chunk_rows(5) == 64
    assert ingest_module._chunk_rows(1000) == 50 and ingest_module._chunk_rows(1024) == 64  # the default: 50
    plans = []
    real_plan = assembly.copy_plan
    monkeypatch.setattr(assembly, "copy_plan", lambda *a: plans.append(real_plan(*a)) or plans[-1])
    rep = ingest([str(d)], tmp_path / "raw.h5", workers=1, chunk_size=24)  # 31 files: parts of 21 and 7 spectra
    # rows 0-15: the first part's two whole chunks of 8, raw; 16-27: its partial chunk and the
    # second part (off the grid), encoded again
    assert rep.n_ok == 28 and plans == [[assembly.RawRun(0, 0, 16, 0), assembly.Segment(16, 28, ((0, 16, 21), (1, 0, 7)))]]
    ingest([str(d)], tmp_path / "plain.h5", workers=1, chunk_size=5)  # 5 rows: never aligned, all encoded again
    assert not any(isinstance(run, assembly.RawRun) for run in plans[-1])
    monkeypatch.setattr(assembly, "SEGMENT_ROWS", 8)  # two segments of the first layout: each encoded by a worker
    ingest([str(d)], tmp_path / "pool.h5", workers=2, chunk_size=24)
    assert [run.start for run in plans[-1] if isinstance(run, assembly.Segment)] == [16, 24]
    a, b, c = _store_arrays(tmp_path / "raw.h5"), _store_arrays(tmp_path / "plain.h5"), _store_arrays(tmp_path / "pool.h5")
    for other in (b, c):
        np.testing.assert_array_equal(a[0], other[0])
        np.testing.assert_array_equal(a[1], other[1])
        assert list(a[2]["source_file"]) == list(other[2]["source_file"])
    with h5py.File(tmp_path / "raw.h5", "r") as h5:
        assert h5["flux"].chunks[0] == 8

def test_a_spectrum_from_its_stored_bytes_is_the_file_read(lamost_dir, tmp_path):
    """read_stored_spectrum gives read_spectrum's spectrum, gzipped or not, and its errors."""
    import gzip

    from cannonade.exceptions import SpectrumFormatError
    from cannonade.spectra.readers import read_stored_spectrum
    from cannonade.spectra.readers.fits import read_stored

    real = sorted(lamost_dir.glob("spec-*.fits"))[0]
    gz = tmp_path / (real.name + ".gz")
    gz.write_bytes(gzip.compress(real.read_bytes()))
    for path in (real, gz):
        a, b = read_spectrum(path), read_stored_spectrum(path, read_stored(path))
        for x, y in ((a.wavelength, b.wavelength), (a.flux, b.flux), (a.ivar, b.ivar)):
            np.testing.assert_array_equal(x, y)
        assert a.meta.keys() == b.meta.keys() and str(a.meta["obj_id"]) == str(b.meta["obj_id"])
    bad = lamost_dir / "zz_notfits.fits"
    with pytest.raises(SpectrumFormatError, match="zz_notfits.fits: not a FITS file"):
        read_stored_spectrum(bad, read_stored(bad))
