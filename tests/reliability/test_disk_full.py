"""A full disk while writing (ENOSPC, simulated): the previous file intact, a named error, and the
rerun after space is freed completes to the uninterrupted result (issue 16).

The disk fills up inside the writer — after it has written part of the temporary file — of a
catalogue file, an inference chunk, a stage marker, a model and a spectra store; and when even
the temporary file cannot be created. Each write goes through ``util.atomic_path``, which removes
the temporary file and raises :class:`cannonade.DiskFullError` naming the file.
"""

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cannonade import CannonModel, DiskFullError
from cannonade.cli import main
from cannonade.pipeline import run_pipeline
from cannonade.util import atomic_path

pytestmark = pytest.mark.slow

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_disk(path):
    """What a write that runs out of space leaves: part of ``path`` written, then ENOSPC."""
    path = Path(path)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 1000)
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def is_temporary_of(path, name):
    """``path`` is atomic_path's temporary file for the file ``name`` (``.{stem}.XXXXXXXX.tmp{suffixes}``)."""
    stem, suffixes = name.split(".", 1)
    return path.name.startswith(f".{stem}.") and path.name.endswith(f".tmp.{suffixes}")


def digests(run_dir):
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in run_dir.rglob("*") if p.is_file() and p.name != "run.log"}


@pytest.fixture()
def finished_copy(faults, pipeline_mock, reference_run, tmp_path):
    """A copy of the uninterrupted run (its config over the same mock): (config, run directory)."""
    ref_dir, _ = reference_run
    cfg = faults.write_config(tmp_path, pipeline_mock)
    shutil.copytree(ref_dir, tmp_path / "run")
    return cfg, tmp_path / "run"


def assert_after_disk_full(faults, run_dir, before, target, stage, later):
    """The failed write left the previous ``target`` byte for byte, no temporary, no marker for ``stage``
    and the later stages, and every file of an earlier stage unchanged."""
    after = digests(run_dir)
    assert after[target] == before[target], f"{target} changed"
    assert not faults.temporaries(run_dir), faults.temporaries(run_dir)
    for s in [stage, *later]:
        assert not (run_dir / "stages" / f"{s}.json").exists(), s
    faults.check_run_dir(run_dir, {})  # every file reads completely
    return after


def test_catalogue_write_on_a_full_disk_is_one_line_from_the_cli(faults, finished_copy, reference_run, monkeypatch, capsys):
    import pyarrow.parquet as pq

    cfg, run_dir = finished_copy
    before = digests(run_dir)
    real = pq.write_table

    def write_table(table, where, *args, **kwargs):
        if is_temporary_of(Path(where), "per_star.parquet"):
            raise full_disk(where)
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)
    assert main(["run", str(cfg), "--from", "catalogue"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no space left on device" in err and str(run_dir / "catalogue" / "per_star.parquet") in err
    after = assert_after_disk_full(faults, run_dir, before, "catalogue/per_star.parquet", "catalogue", [])
    assert after["catalogue/per_observation.parquet"] == before["catalogue/per_observation.parquet"]  # not reached
    for name, digest in before.items():
        if not name.startswith(("catalogue/", "stages/", "config.toml")):
            assert after[name] == digest, name  # the earlier stages' files are untouched

    monkeypatch.setattr(pq, "write_table", real)  # space freed
    assert main(["run", str(cfg)]) == 0
    faults.assert_same_catalogue(reference_run[0] / "catalogue", run_dir / "catalogue")


def test_inference_chunk_on_a_full_disk_resumes_without_redoing_finished_chunks(faults, finished_copy, reference_run,
                                                                                 monkeypatch):
    cfg, run_dir = finished_copy
    before = digests(run_dir)
    real = np.savez

    def savez(file, *args, **kwargs):
        if is_temporary_of(Path(getattr(file, "name", str(file))), "part_000002.npz"):
            file.write(b"PK\x03\x04" + b"\0" * 500)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(DiskFullError, match="part_000002.npz: no space left on device"):
        run_pipeline(cfg, from_stage="infer")
    parts = run_dir / "infer" / "chunks"
    assert sorted(p.name for p in parts.glob("part_*")) == ["part_000000.npz", "part_000001.npz"]
    assert_after_disk_full(faults, run_dir, before, "per_star.fits", "infer", ["combine", "dynamics", "catalogue"])

    monkeypatch.setattr(np, "savez", real)
    redone = []
    run = run_pipeline(cfg, chunk_hook=lambda k, result: redone.append(k))
    assert sorted(redone) == [2, 3, 4] and run.stage_info("infer")["resumed_chunks"] == 2
    faults.assert_same_catalogue(reference_run[0] / "catalogue", run_dir / "catalogue")


def test_stage_marker_on_a_full_disk_redoes_the_stage(faults, finished_copy, reference_run, monkeypatch):
    cfg, run_dir = finished_copy
    before = digests(run_dir)
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if is_temporary_of(self, "dynamics.json"):
            raise full_disk(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(DiskFullError, match=r"stages/dynamics\.json: no space left on device"):
        run_pipeline(cfg, from_stage="dynamics")
    assert_after_disk_full(faults, run_dir, before, "per_star.fits", "dynamics", ["catalogue"])

    monkeypatch.setattr(Path, "write_text", real)
    run = run_pipeline(cfg)
    assert run.done("dynamics") and run.done("catalogue")
    faults.assert_same_catalogue(reference_run[0] / "catalogue", run_dir / "catalogue")


def test_model_file_on_a_full_disk(reference_run, tmp_path, monkeypatch):
    model = CannonModel.load(reference_run[0] / "models" / "dwarf.npz")
    path = model.save(tmp_path / "dwarf.npz")
    old = path.read_bytes()
    real = np.savez_compressed

    def savez_compressed(file, *args, **kwargs):
        file.write(b"PK\x03\x04" + b"\0" * 500)
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(np, "savez_compressed", savez_compressed)
    with pytest.raises(DiskFullError, match="dwarf.npz: no space left on device") as info:
        model.save(path)
    assert isinstance(info.value, OSError)  # `except OSError` still catches it
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["dwarf.npz"]
    monkeypatch.setattr(np, "savez_compressed", real)
    model.save(path)
    assert CannonModel.load(path).training_hash_ == model.training_hash_


def test_spectra_store_on_a_full_disk_as_hdf5_reports_it(tmp_path, monkeypatch):
    """h5py does not set errno: its message carries the C library's "No space left on device"."""
    import h5py

    from cannonade.spectra.store import SpectraStore, write_store

    wl = np.linspace(4000.0, 5000.0, 50)
    flux = np.ones((3, 50))
    path = write_store(tmp_path / "store.h5", wl, flux, flux)
    old = path.read_bytes()
    real = h5py.File

    def File(name, mode="r", *args, **kwargs):
        if mode == "w" and is_temporary_of(Path(name), "store.h5"):
            full_disk(name)
            raise OSError(f"Unable to synchronously create file (file write failed: time = Thu Jan  1 00:00:00 2026\n, "
                          f"filename = '{name}', file descriptor = 7, errno = 28, error message = 'No space left on device', "
                          f"buf = 0x55, total write size = 96, bytes this sub-write = 96, bytes actually written = "
                          f"18446744073709551615, offset = 0)")
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", File)
    with pytest.raises(DiskFullError, match="store.h5: no space left on device"):
        write_store(path, wl, 2 * flux, flux)
    monkeypatch.setattr(h5py, "File", real)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["store.h5"]
    with SpectraStore(path) as st:
        assert np.all(st.read()[0] == 1)


def test_no_room_for_the_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    target.write_text("a\n1\n")

    def mkstemp(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / ".table.xxxxxxxx.tmp.csv"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(DiskFullError, match="table.csv: no space left on device"):
        with atomic_path(target) as tmp:
            tmp.write_text("a\n2\n")
    assert target.read_text() == "a\n1\n" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(PermissionError):
        with atomic_path(target):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert not list(tmp_path.iterdir())


def test_what_counts_as_a_full_disk():
    """errno ENOSPC or EDQUOT, or the C library's words where a library (h5py) sets no errno."""
    from cannonade.util import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "x")) and is_disk_full(OSError(errno.EDQUOT, "x"))
    assert is_disk_full(OSError("Can't write data (errno = 28, error message = 'No space left on device')"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(ValueError("no space"))


def test_a_folder_written_through_atomic_dir(tmp_path):
    """util.atomic_dir (HATS catalogues; tested here without hats): a full disk inside is a
    DiskFullError naming the folder, the previous one kept; what a kill leaves -- the hidden
    temporary folder, the previous folder moved aside -- is removed, or put back, by the clean-ups."""
    from cannonade.util import atomic_dir, remove_temporaries_of, stale_temporaries

    target = tmp_path / "cat"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(DiskFullError, match=f"{target}: no space left on device"):
        with atomic_dir(target) as tmp:
            raise full_disk(tmp / "a.txt")
    assert (target / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["cat"]
    with atomic_dir(target) as tmp:  # replaced whole
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["cat"]

    # a kill between the swap's renames: the previous folder aside, the new one still temporary
    os.replace(target, tmp_path / ".cat.abcdefgh.old")
    (tmp_path / ".cat.ijklmnop.tmp").mkdir()
    (tmp_path / ".cat.ijklmnop.tmp" / "half.txt").write_text("x")
    (tmp_path / ".other.qrstuvwx.tmp").mkdir()  # another folder's: not cat's
    assert [p.name for p in stale_temporaries(tmp_path)] == [".cat.abcdefgh.old", ".cat.ijklmnop.tmp", ".other.qrstuvwx.tmp"]
    assert len(remove_temporaries_of(target)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.qrstuvwx.tmp", "cat"]
    assert (target / "b.txt").read_text() == "two"  # put back
