"""Parts -> store (cannonade.spectra.assembly): the copy plan, and stores assembled from parts on
and off the chunk grid, by this process and by a pool, that hold exactly the parts' rows."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from cannonade.spectra import assembly, store
from cannonade.spectra.assembly import RawRun, Segment, assemble, copy_plan, read_error_report
from cannonade.spectra.store import SpectraStore
from cannonade.util import stale_temporaries

_ENCODE = assembly.encode_segment


def _encode_or_fail(index, *args):
    """A worker's task that writes its scratch file, then fails for segment 1 (picklable by name)."""
    path = _ENCODE(index, *args)
    if index == 1:
        raise RuntimeError("simulated failure while encoding segment 1")
    return path


def _check_plan(plan, counts, raw_ok, c, seg_rows):
    """Every store row once, in order; raw runs only where the chunks are the parts'; no chunk
    that could be copied raw is re-encoded; segments on the grid and no longer than allowed."""
    counts = np.asarray(counts)
    ends = np.cumsum(counts)
    starts = ends - counts
    n = int(ends[-1]) if counts.size else 0
    row = 0
    encoded = []
    for run in plan:
        if isinstance(run, RawRun):
            k = run.part
            assert raw_ok[k] and starts[k] % c == 0 and run.lo % c == 0 and run.row == starts[k] + run.lo == row
            assert run.hi <= counts[k] and ((run.hi - run.lo) % c == 0 or run.row + run.hi - run.lo == n)
            row += run.hi - run.lo
        else:
            assert isinstance(run, Segment) and run.start == row and run.start % c == 0
            assert run.stop % c == 0 or run.stop == n
            assert run.stop - run.start <= max(c, seg_rows // c * c)
            for k, lo, hi in run.sources:  # the rows of the parts that hold these store rows
                assert starts[k] + lo == row and 0 <= lo < hi <= counts[k]
                row += hi - lo
            assert row == run.stop
            encoded.extend(range(run.start, run.stop, c))
    assert row == n
    for g in encoded:  # not copyable raw: spans two parts, or its part is off the grid or another layout
        k = int(np.searchsorted(ends, g, side="right"))
        assert not (raw_ok[k] and starts[k] % c == 0 and (g + c <= ends[k] or ends[k] == n))


def test_plan_of_aligned_parts_copies_everything_raw():
    plan = copy_plan([100, 100, 37], [True] * 3, 50, 1024)
    assert plan == [RawRun(0, 0, 100, 0), RawRun(1, 0, 100, 100), RawRun(2, 0, 37, 200)]


def test_plan_after_a_failure_reencodes_what_is_off_the_grid():
    # the first part lost one spectrum: its last chunk and every later part are off the grid
    plan = copy_plan([99, 100, 100], [True] * 3, 50, 100)
    assert plan == [
        RawRun(0, 0, 50, 0),
        Segment(50, 150, ((0, 50, 99), (1, 0, 51))),
        Segment(150, 250, ((1, 51, 100), (2, 0, 51))),
        Segment(250, 299, ((2, 51, 100),)),
    ]
    # a part in another layout is re-encoded even when it starts on the grid; empty parts vanish
    plan = copy_plan([50, 0, 50, 50], [True, True, False, True], 50, 1024)
    assert plan == [RawRun(0, 0, 50, 0), Segment(50, 100, ((2, 0, 50),)), RawRun(3, 0, 50, 100)]


@pytest.mark.parametrize("seed", range(40))
def test_plan_covers_every_row_once(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.choice([1, 3, 8, 50]))
    counts = rng.choice([0, 1, c - 1 if c > 1 else 2, c, 2 * c, 5 * c + 1, 7], size=int(rng.integers(1, 12)))
    raw_ok = rng.random(counts.size) < 0.8
    seg_rows = int(rng.choice([1, c, 2 * c + 3, 1024]))
    _check_plan(copy_plan(counts, raw_ok, c, seg_rows), counts, raw_ok, c, seg_rows)


def _write_parts(directory, counts, n_pixels=37, chunk_rows=8, seed=0):
    """Part files as an ingest writes them (random flux and ivar, ids, one failure each)."""
    rng = np.random.default_rng(seed)
    paths, rows = [], []
    for k, c in enumerate(counts):
        p = directory / f"part_{k:06d}.h5"
        flux = rng.normal(1, 0.1, (c, n_pixels)).astype(np.float32)
        ivar = rng.uniform(0, 100, (c, n_pixels)).astype(np.float32)
        ids = [f"p{k}s{i}" for i in range(c)]
        with h5py.File(p, "w") as h5:
            store.create_arrays(h5, c, n_pixels, chunk_rows=chunk_rows)
            if c:
                h5["flux"][:] = flux
                h5["ivar"][:] = ivar
            m = h5.create_group("meta")
            m.create_dataset("obj_id", data=np.array(ids, dtype=object), dtype=store.string_dtype())
            m.create_dataset("snr", data=rng.uniform(5, 50, c))
            f = h5.create_group("failures")
            f.create_dataset("file", data=np.array([f"bad{k}.fits"], dtype=object), dtype=store.string_dtype())
            f.create_dataset("reason", data=np.array(["truncated"], dtype=object), dtype=store.string_dtype())
            h5.attrs["n_ok"] = c
        paths.append(p)
        rows.append((flux, ivar, ids))
    return paths, rows


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("counts", [[16, 16, 5], [15, 16, 16, 0, 9], [3], [8, 7, 1, 30, 8]])
def test_assembled_store_holds_the_parts_rows_bit_for_bit(tmp_path, counts, workers):
    parts_dir = tmp_path / "s.h5.parts"
    parts_dir.mkdir()
    paths, rows = _write_parts(parts_dir, counts)
    grid = np.linspace(4000.0, 5000.0, 37)
    n, failures = assemble(tmp_path / "s.h5", paths, grid, {"grid": "test"}, tmp_path / "s.errors.csv", chunk_rows=8,
                           workers=workers)
    assert n == sum(counts) and failures == [(f"bad{k}.fits", "truncated") for k in range(len(counts))]
    assert read_error_report(tmp_path / "s.errors.csv") == failures
    with SpectraStore(tmp_path / "s.h5") as st:
        f, i = st.read()
        assert st.column("obj_id").tolist() == [s for _, _, ids in rows for s in ids]
        np.testing.assert_array_equal(st.wavelength, grid)
    np.testing.assert_array_equal(f, np.concatenate([r[0] for r in rows]).astype(np.float64))
    np.testing.assert_array_equal(i, np.concatenate([r[1] for r in rows]).astype(np.float64))
    with h5py.File(tmp_path / "s.h5", "r") as h5:
        assert h5["flux"].chunks == (min(8, n), 37)
    assert list(parts_dir.iterdir()) == [] and not stale_temporaries(tmp_path)  # parts and scratch files gone


@pytest.mark.parametrize("batch_rows", [10, 16384])
def test_metadata_are_copied_in_batches_as_the_parts_hold_them(tmp_path, monkeypatch, batch_rows):
    """Every part's metadata rows in place, whether written in one batch or several: a non-ASCII
    id (its UTF-8 bytes copied as they are), a part whose ids are fixed-length strings, a part
    without a column (HDF5's fill value there), an empty part."""
    monkeypatch.setattr(assembly, "META_BATCH_ROWS", batch_rows)
    counts = [16, 16, 5, 0, 9]
    paths, rows = _write_parts(tmp_path, counts)
    with h5py.File(paths[0], "r+") as h5:
        del h5["meta/obj_id"]
        h5["meta"].create_dataset("obj_id", data=np.array(["\u00e9toile"] + rows[0][2][1:], dtype=object),
                                  dtype=store.string_dtype())
    with h5py.File(paths[2], "r+") as h5:
        del h5["meta/obj_id"]
        h5["meta"].create_dataset("obj_id", data=np.array(rows[2][2], dtype="S8"))  # fixed length
    with h5py.File(paths[4], "r+") as h5:
        snr4 = h5["meta/snr"][:]
        del h5["meta/snr"]
    snr = []
    for p in paths[:4]:
        with h5py.File(p, "r") as h5:
            snr.append(h5["meta/snr"][:])
    n, _ = assemble(tmp_path / "s.h5", paths, np.linspace(4000.0, 5000.0, 37), {}, tmp_path / "s.errors.csv",
                    chunk_rows=8)
    with SpectraStore(tmp_path / "s.h5") as st:
        ids = st.column("obj_id").tolist()
        got = st.column("snr")
    assert ids == ["\u00e9toile"] + [s for _, _, part in rows for s in part][1:]
    np.testing.assert_array_equal(got, np.concatenate(snr + [np.zeros(9)]))
    assert snr4.size == 9 and n == 46


def test_off_grid_parts_are_encoded_by_the_pool_and_their_chunks_copied(tmp_path, monkeypatch):
    """With workers, each segment is encoded by a worker into a scratch file whose chunks are then
    copied as they are; without, the segments' rows are written here. The stores are the same."""
    copied = []
    real = assembly._copy_chunks

    def spy(src, dst, lo, hi, row):  # which file's chunks went where
        name = Path(src.file.filename).name
        copied.append(("scratch" if name.startswith(".segment.") else name, dst.name, row))
        return real(src, dst, lo, hi, row)

    monkeypatch.setattr(assembly, "_copy_chunks", spy)
    monkeypatch.setattr(assembly, "SEGMENT_ROWS", 16)
    monkeypatch.setattr(assembly.os, "cpu_count", lambda: 2)  # a pool of 2 on any machine
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        paths, _ = _write_parts(d, [15, 16, 16, 9])  # 56 rows: chunk 0 raw, then 3 segments of 16 rows
        copied.clear()
        assemble(d / "s.h5", paths, np.arange(37.0), {}, d / "e.csv", chunk_rows=8, workers=workers)
        raw = [("part_000000.h5", "/flux", 0), ("part_000000.h5", "/ivar", 0)]
        if workers == 1:
            assert copied == raw
        else:
            assert copied == raw + [("scratch", name, row) for row in (8, 24, 40) for name in ("/flux", "/ivar")]
        assert sorted(p.name for p in d.iterdir()) == ["e.csv", "s.h5"]  # parts and scratch files deleted
    with SpectraStore(tmp_path / "w1" / "s.h5") as a, SpectraStore(tmp_path / "w2" / "s.h5") as b:
        fa, ia = a.read()
        fb, ib = b.read()
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(ia, ib)


def test_a_scratch_file_a_kill_leaves_is_a_stale_temporary(tmp_path):
    """A worker killed while encoding leaves its scratch file: hidden, and among the temporaries
    the rerun of an ingest removes from the parts' folder."""
    from cannonade.util import temporary_beside

    p = temporary_beside(tmp_path / "segment.h5")
    assert not p.exists()  # a name only
    p.write_bytes(b"half an HDF5 file")
    assert p.parent == tmp_path and p.name.startswith(".segment.") and p.name.endswith(".tmp.h5")
    assert stale_temporaries(tmp_path) == [p]
    assert temporary_beside(tmp_path / "segment.h5") != p


def test_a_failed_segment_leaves_no_store_and_no_scratch_file(tmp_path, monkeypatch):
    """A worker's task that fails stops the assembly with its error: no store, no report, and
    none of the workers' scratch files left (the parts copied before it are redone by a rerun)."""
    monkeypatch.setattr(assembly, "SEGMENT_ROWS", 8)
    monkeypatch.setattr(assembly.os, "cpu_count", lambda: 2)  # a pool of 2 on any machine
    monkeypatch.setattr(assembly, "encode_segment", _encode_or_fail)  # the forked workers inherit it
    parts_dir = tmp_path / "s.h5.parts"
    parts_dir.mkdir()
    paths, _ = _write_parts(parts_dir, [15, 16, 16, 9])
    with pytest.raises(RuntimeError, match="segment 1"):
        assemble(tmp_path / "s.h5", paths, np.arange(37.0), {}, tmp_path / "e.csv", chunk_rows=8, workers=2)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "e.csv").exists()
    assert stale_temporaries(tmp_path) == []
    assert {p.name for p in parts_dir.iterdir()} <= {p.name for p in paths}


def test_the_pool_never_exceeds_this_machines_cores(tmp_path, monkeypatch):
    """The ingest's workers may be a remote cluster's: on a one-core machine the segments are
    encoded here, whatever ``workers`` says."""
    monkeypatch.setattr(assembly, "SEGMENT_ROWS", 8)
    monkeypatch.setattr(assembly.os, "cpu_count", lambda: 1)
    monkeypatch.setattr(assembly, "ProcessBackend", None)  # a pool would fail at once
    paths, rows = _write_parts(tmp_path, [15, 16, 16, 9])
    n, _ = assemble(tmp_path / "s.h5", paths, np.arange(37.0), {}, tmp_path / "e.csv", chunk_rows=8, workers=64)
    with SpectraStore(tmp_path / "s.h5") as st:
        np.testing.assert_array_equal(st.read()[0], np.concatenate([r[0] for r in rows]).astype(np.float64))
