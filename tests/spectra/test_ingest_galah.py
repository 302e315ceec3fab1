"""GALAH stars as store rows (issue 13): ``ingest(join='star')`` joins the four CCD files of a star.

A mock (``simulate_survey``'s gzipped ``<sobject_id><ccd>.fits.gz`` files) and the real sample in
``../shared/data/galah/com`` (uncompressed) go through the joined mode; its rows must equal, region by
region, the rows ``join='file'`` makes of each CCD file; a star missing a CCD is reported, not stored;
chunks hold whole stars and resume.
"""

import csv
import functools
import os
from pathlib import Path

import numpy as np
import pytest

from cannonade.cli import main
from cannonade.exceptions import ConfigError
from cannonade.execution import StopRequested
from cannonade.spectra.ingest import (
    GALAH_STAR_COLUMNS,
    group_galah_stars,
    ingest,
    prepare_stars,
    process_chunk,
    resolve_join,
)
from cannonade.spectra.readers.galah import galah_ccd_name
from cannonade.spectra.store import SpectraStore
from cannonade.spectra.surveys import detector_regions


@pytest.fixture(scope="module")
def mock_galah(tmp_path_factory):
    """The GALAH CCD files of a small simulated survey (sorted paths, grouped four by four)."""
    from cannonade.simulate import simulate_survey

    out = tmp_path_factory.mktemp("mock")
    try:
        simulate_survey("apogee-galah", n_stars=30, seed=0, out=out, show_progress=False)
    except Exception:  # the apogee-galah preset is being extended elsewhere: the LAMOST one writes the same files
        out = tmp_path_factory.mktemp("mock_lamost")
        simulate_survey("lamost-galah", n_stars=300, reference_fraction=0.1, seed=0, out=out, show_progress=False)
    files = sorted(str(p) for p in (out / "galah" / "spectra").glob("*.fits.gz"))
    assert files and len(files) % 4 == 0
    return files


@pytest.fixture(scope="module")
def star_store(mock_galah, tmp_path_factory):
    """The whole mock ingested with the default join ('auto' -> 'star' on the galah grid)."""
    out = tmp_path_factory.mktemp("stars") / "stars.h5"
    rep = ingest([os.path.dirname(mock_galah[0])], out, grid="galah", normalise="chebyshev", workers=1, chunk_size=16)
    return rep


def _read(path):
    with SpectraStore(path) as st:
        f, i = st.read()
        return f, i, st.meta(), st.wavelength, st.attrs


def _region_slices(wavelength):
    return [slice(int(np.searchsorted(wavelength, lo)), int(np.searchsorted(wavelength, hi, side="right")))
            for lo, hi in detector_regions("galah")]


def _sibling(ccd1_file, ccd):
    """The CCD-``ccd`` file of the star whose CCD-1 file is ``ccd1_file``."""
    d, name = os.path.split(ccd1_file)
    return os.path.join(d, name[:15] + str(ccd) + name[16:])


def test_naming_grouping_and_auto():
    assert galah_ccd_name("/d/1401010001010013.fits.gz") == ("140101000101001", 3)
    assert galah_ccd_name("2101150001010014.fits") == ("210115000101001", 4)
    assert galah_ccd_name("spec-55862-B6212_sp01-001.fits") is None
    assert galah_ccd_name("1401010001010015.fits") is None  # CCD digits are 1-4
    files = ["/a/1000000000000012.fits", "/a/odd.fits", "/a/1000000000000021.fits", "/a/1000000000000011.fits"]
    assert group_galah_stars(files) == [
        ["/a/1000000000000011.fits", "/a/1000000000000012.fits"], ["/a/odd.fits"], ["/a/1000000000000021.fits"]]
    galah = [f for f in files if "odd" not in f]
    assert resolve_join("auto", "galah", galah) == "star"
    assert resolve_join("auto", "GALAH", galah) == "star"
    assert resolve_join("auto", "galah", files) == "file"  # one input is not a GALAH CCD file
    assert resolve_join("auto", "lamost", galah) == "file"
    assert resolve_join("star", "lamost", files) == "star" and resolve_join("file", "galah", galah) == "file"
    with pytest.raises(ConfigError, match="join"):
        resolve_join("ccd", "galah", galah)
    with pytest.raises(ConfigError, match="join"):
        ingest(galah, "x.h5", grid="galah", join="stars")


def test_one_row_per_star(star_store, mock_galah):
    rep = star_store
    f, i, meta, wave, attrs = _read(rep.path)
    stars = sorted({galah_ccd_name(p)[0] for p in mock_galah})
    assert rep.join == "star" and attrs["join"] == "star" and attrs["grid"] == "galah" and attrs["normalise"] == "chebyshev"
    assert rep.n_ok == len(stars) == len(meta) and rep.n_failed == 0 and rep.n_chunks == -(-len(stars) // 16)
    assert sorted(meta["obj_id"]) == stars and set(meta["survey"]) == {"galah"}
    assert all(galah_ccd_name(s) == (o, 1) for s, o in zip(meta["source_file"], meta["obj_id"]))  # the CCD-1 file
    for c in GALAH_STAR_COLUMNS:
        assert c in meta.colnames and np.all(np.isfinite(meta[c])) and np.all(meta[c] > 0)
    np.testing.assert_array_equal(meta["snr"], meta["snr_c2"])  # S/N of the green CCD, as Nandakumar's cut
    assert np.all(np.isfinite(meta["ra"])) and np.all(np.isfinite(meta["z_applied"]))
    # every CCD region of every row holds data; nothing outside the regions
    for sl in _region_slices(wave):
        good = i[:, sl] > 0
        assert good.mean(axis=1).min() > 0.9
        assert np.all(np.isfinite(f[:, sl][good]))
    np.testing.assert_array_equal(meta["n_good"], (i > 0).sum(axis=1))
    assert "GALAH stars" in rep.summary() and "stars/s" in rep.summary()
    # a rerun with the same inputs and settings finds the store finished and does nothing
    again = ingest([os.path.dirname(mock_galah[0])], rep.path, grid="galah", normalise="chebyshev", workers=1, chunk_size=16)
    assert again.n_ok == rep.n_ok and again.n_chunks_done_before == again.n_chunks and again.join == "star"


@pytest.mark.parametrize("normalise, norm_kwargs", [("chebyshev", {}), ("gaussian", {"sigma": 5.0, "truncate": 15.0}), ("none", {})])
def test_star_rows_equal_the_ccd_rows(mock_galah, tmp_path, normalise, norm_kwargs):
    """Region k of a joined row is the join='file' row of the star's CCD-k file: same resampling, and the
    continuum of a CCD row only ever sees that CCD's pixels (the other regions are empty), which is what
    the per-region normalisation of the joined row does."""
    files = mock_galah[:12]  # three stars
    kw = dict(grid="galah", normalise=normalise, norm_kwargs=norm_kwargs, workers=1)
    ingest(files, tmp_path / "file.h5", join="file", **kw)
    ingest(files, tmp_path / "star.h5", join="star", **kw)
    ff, fi, fmeta, wave, fattrs = _read(tmp_path / "file.h5")
    sf, si, smeta, _, sattrs = _read(tmp_path / "star.h5")
    assert len(fmeta) == 12 and len(smeta) == 3 and fattrs["join"] == "file" and sattrs["join"] == "star"
    assert fattrs["ingest_key"] != sattrs["ingest_key"]
    row_of = {s: k for k, s in enumerate(fmeta["source_file"])}
    for r, src in enumerate(smeta["source_file"]):
        for c, sl in enumerate(_region_slices(wave), start=1):
            k = row_of[_sibling(src, c)]
            np.testing.assert_array_equal(si[r, sl], fi[k, sl])
            good = si[r, sl] > 0
            np.testing.assert_array_equal(sf[r, sl][good], ff[k, sl][good])
            assert not np.any(fi[k, :sl.start] > 0) and not np.any(fi[k, sl.stop:] > 0)  # a CCD row: one region
        k2 = row_of[_sibling(src, 2)]
        for col in ("obj_id", "ra", "dec", "snr", "rv", "z_applied"):
            assert smeta[col][r] == fmeta[col][k2]


def test_a_star_missing_ccds_is_reported_not_stored(mock_galah, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for p in mock_galah[:16]:  # four stars
        os.symlink(p, d / os.path.basename(p))
    ids = [galah_ccd_name(p)[0] for p in mock_galah[:16:4]]
    os.unlink(d / os.path.basename(mock_galah[4 + 2]))  # star 2 loses CCD 3
    os.unlink(d / os.path.basename(mock_galah[8 + 1]))  # star 3 loses CCDs 2 and 4
    os.unlink(d / os.path.basename(mock_galah[8 + 3]))
    (d / "odd.fits").symlink_to(mock_galah[0])  # a GALAH file under another name: not joinable
    assert resolve_join("auto", "galah", [str(p) for p in d.iterdir()]) == "file"
    rep = ingest([str(d)], tmp_path / "s.h5", grid="galah", normalise="chebyshev", workers=1, chunk_size=2, join="star")
    _, _, meta, _, attrs = _read(rep.path)
    assert list(meta["obj_id"]) == [ids[0], ids[3]] and rep.n_ok == 2 and rep.n_failed == 3 and attrs["n_failed"] == 3
    reasons = dict(rep.failures)
    assert f"GALAH star {ids[1]}: missing CCD(s) 3 " in reasons[str(d / os.path.basename(mock_galah[4]))]
    assert f"GALAH star {ids[2]}: missing CCD(s) 2, 4 " in reasons[str(d / os.path.basename(mock_galah[8]))]
    assert "cannot be joined" in reasons[str(d / "odd.fits")]
    with open(rep.error_report, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file", "reason"] and len(rows) == 4
    assert sum("missing CCD(s)" in r[1] for r in rows[1:]) == 2


def test_an_unreadable_ccd_loses_its_star(mock_galah, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for p in mock_galah[:8]:
        os.symlink(p, d / os.path.basename(p))
    bad = d / os.path.basename(mock_galah[5])
    bad.unlink()
    bad.write_bytes(b"SIMPLE  =                    T" + b"\x00" * 100)  # truncated, not gzipped
    rep = ingest([str(d)], tmp_path / "s.h5", grid="galah", normalise="none", workers=1)
    assert rep.join == "star" and rep.n_ok == 1 and rep.n_failed == 1
    (file, reason), = rep.failures
    assert file == str(bad) and reason.startswith(f"GALAH star {galah_ccd_name(bad)[0]}, CCD 2: ")


def test_stars_resampled_together_fail_one_by_one_in_star_order(mock_galah, tmp_path):
    """The CCDs of a chunk's stars are resampled together; each star still fails alone, at its
    first bad CCD in CCD order (an unreadable CCD 3 after a CCD 1 off the grid: CCD 1), the
    failures come in star order, and the good stars' rows are those each star gets alone."""
    from cannonade.spectra.surveys import common_grid

    d = tmp_path / "in"
    d.mkdir()
    for p in mock_galah[:16]:  # four stars
        os.symlink(p, d / os.path.basename(p))
    files = [str(d / os.path.basename(p)) for p in mock_galah[:16]]
    ids = [galah_ccd_name(f)[0] for f in files[::4]]
    for f in (files[4 + 2], files[8 + 2]):  # stars 2 and 3: CCD 3 unreadable
        os.unlink(f)
        Path(f).write_bytes(b"SIMPLE  =                    T" + b"\x00" * 100)
    odd = d / "odd.fits"
    odd.symlink_to(mock_galah[0])
    grid = common_grid("galah")
    redshifts = {ids[2]: 0.5}  # star 3 shifted off every CCD region: its CCD 1 fails first
    flux, ivar, metas, failures = prepare_stars(files + [str(odd)], grid, normalise="chebyshev", redshifts=redshifts)
    assert [m["obj_id"] for m in metas] == [ids[0], ids[3]]
    order = [galah_ccd_name(s[0])[0] if galah_ccd_name(s[0]) else "odd" for s in group_galah_stars(files + [str(odd)])]
    failed = [galah_ccd_name(f)[0] if galah_ccd_name(f) else "odd" for f, _ in failures]
    assert failed == [s for s in order if s in (ids[1], ids[2], "odd")]
    reasons = dict(failures)
    assert reasons[files[4 + 2]].startswith(f"GALAH star {ids[1]}, CCD 3: ")
    assert reasons[files[8]].startswith(f"GALAH star {ids[2]}, CCD 1: no good pixel in the CCD's region")
    assert "cannot be joined" in reasons[str(odd)]
    for row, k in ((0, 0), (1, 3)):  # the same bits as the star ingested on its own
        f1, i1, m1, _ = prepare_stars(files[4 * k : 4 * k + 4], grid, normalise="chebyshev")
        np.testing.assert_array_equal(flux[row], f1[0])
        np.testing.assert_array_equal(ivar[row], i1[0])
        assert metas[row] == m1[0]


def test_star_files_are_read_ahead_once_in_star_order(mock_galah, tmp_path, monkeypatch):
    """prepare_stars reads every star's files through read_ahead (batches that straddle stars
    here), each file once, in star order; a CCD file gone before it is read loses only its star,
    reported under that file; the other rows equal each star prepared alone."""
    from cannonade.spectra.readers import fits as fits_module
    from cannonade.spectra.surveys import common_grid

    d = tmp_path / "in"
    d.mkdir()
    for p in mock_galah[:12]:  # three stars
        os.symlink(p, d / os.path.basename(p))
    files = [str(d / os.path.basename(p)) for p in mock_galah[:12]]
    grid = common_grid("galah")
    alone = [prepare_stars(files[4 * k : 4 * k + 4], grid, normalise="chebyshev") for k in range(3)]
    os.unlink(files[4 + 3])  # star 2's CCD 4: listed, then gone

    real, asked, given = fits_module.read_ahead, [], []

    def spy(paths, batch=fits_module.READ_AHEAD):
        asked.append(list(paths))
        for item in real(paths, batch=3):
            given.append(item[0])
            yield item

    monkeypatch.setattr(fits_module, "read_ahead", spy)
    flux, ivar, metas, failures = prepare_stars(files[::-1], grid, normalise="chebyshev")
    order = [p for star in group_galah_stars(files[::-1]) for p in star]
    assert asked == [order] and given == order and sorted(order) == sorted(files)
    ids = [galah_ccd_name(f)[0] for f in files[::4]]
    stars = [galah_ccd_name(star[0])[0] for star in group_galah_stars(files[::-1])]
    assert [m["obj_id"] for m in metas] == [i for i in stars if i != ids[1]]
    (file, reason), = failures
    assert file == files[4 + 3] and reason.startswith(f"GALAH star {ids[1]}, CCD 4: ")
    for row, m in enumerate(metas):
        k = ids.index(m["obj_id"])
        np.testing.assert_array_equal(flux[row], alone[k][0][0])
        np.testing.assert_array_equal(ivar[row], alone[k][1][0])
        assert metas[row] == alone[k][2][0]


def logged_chunk(k, part_path, files, log):
    """A chunk_func logging the files of each chunk (one line per chunk, any process)."""
    with open(log, "a") as fh:
        fh.write(f"{k} {' '.join(files)}\n")
    return process_chunk(k, part_path, files)


def test_resume_and_whole_stars_per_chunk(mock_galah, tmp_path):
    files = mock_galah[:20]  # five stars
    shuffled = [files[j] for j in np.random.default_rng(1).permutation(20)]  # a star's files need not be adjacent
    kw = dict(grid="galah", normalise="chebyshev", chunk_size=2)
    clean = ingest(files, tmp_path / "clean.h5", workers=1, **kw)
    assert clean.n_chunks == 3 and clean.join == "star"
    out, log = tmp_path / "resumed.h5", tmp_path / "chunks.log"
    with pytest.raises(StopRequested):
        ingest(shuffled, out, workers=1, stop_after=1, chunk_func=functools.partial(logged_chunk, log=str(log)), **kw)
    assert not out.exists() and len(list((tmp_path / "resumed.h5.parts").glob("part_*.h5"))) == 1
    rep = ingest(shuffled, out, workers=2, chunk_func=functools.partial(logged_chunk, log=str(log)), **kw)
    assert rep.n_chunks_done_before == 1 and rep.n_ok == 5 and not (tmp_path / "resumed.h5.parts").exists()
    chunks = [line.split()[1:] for line in log.read_text().splitlines()]
    assert sorted(len(c) for c in chunks) == [4, 8, 8]  # whole stars, two per chunk
    for c in chunks:
        assert len(c) == 4 * len({galah_ccd_name(p)[0] for p in c})
    # the resumed store equals the uninterrupted one, up to the order of the stars (first seen first)
    a, b = _read(tmp_path / "clean.h5"), _read(out)
    order = [list(b[2]["obj_id"]).index(o) for o in a[2]["obj_id"]]
    np.testing.assert_array_equal(a[0], b[0][order])
    np.testing.assert_array_equal(a[1], b[1][order])
    for col in a[2].colnames:
        np.testing.assert_array_equal(a[2][col], b[2][col][order])
    # the join mode is part of the fingerprint: the same inputs with join='file' are ingested anew
    per_file = ingest(files, out, workers=1, join="file", **kw)
    assert per_file.n_ok == 20 and per_file.join == "file" and per_file.n_chunks_done_before == 0


def test_real_galah_sample(shared_data, tmp_path):
    """The six real stars (uncompressed iraf-6.0 files), default Gaussian continuum, two workers."""
    from astropy.table import Table

    com = shared_data / "galah" / "com"
    if not com.is_dir():
        pytest.skip(f"{com} not found")
    rep = ingest([str(com)], tmp_path / "galah.h5", grid="galah", workers=2, chunk_size=3)
    f, i, meta, wave, attrs = _read(rep.path)
    assert rep.join == "star" and attrs["join"] == "star" and rep.n_ok == 6 and rep.n_failed == 0 and rep.n_chunks == 2
    dr6 = Table.read(shared_data / "galah" / "dr6.0.fits")
    row = {str(s): k for k, s in enumerate(dr6["sobject_id"])}
    assert sorted(meta["obj_id"]) == sorted(row)
    snr = np.array([np.asarray(dr6["snr"][row[o]], dtype=float) for o in meta["obj_id"]])  # per CCD in the reduction table
    np.testing.assert_allclose(np.column_stack([meta[c] for c in GALAH_STAR_COLUMNS]), snr, rtol=1e-5)
    for sl in _region_slices(wave):
        assert (i[:, sl] > 0).mean(axis=1).min() > 0.95
        good = i[:, sl] > 0
        assert 0.8 < np.median(f[:, sl][good]) < 1.1  # continuum-normalised, CCD by CCD
    assert all(os.path.basename(s).endswith("1.fits") for s in meta["source_file"])


def test_cli_join(mock_galah, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["ingest", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--join {auto,file,star}" in out and "(default: auto)" in out and "missing a CCD" in out
    d = tmp_path / "in"
    d.mkdir()
    for p in mock_galah[:8]:
        os.symlink(p, d / os.path.basename(p))
    args = ["ingest", str(d), "--grid", "galah", "--normalise", "none", "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "s.h5"), "--join", "star"]) == 0
    assert "ingested 2 GALAH stars" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "f.h5"), "--join", "file"]) == 0
    assert "ingested 8 spectra" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(tmp_path / "x.h5"), "--join", "ccd"])
    assert e.value.code == 2
