"""HATS catalogues (``write_hats``, ``catalogue.formats = ["hats"]``) on a full disk and after a kill
(issue 16).

A full disk (ENOSPC, simulated as in test_disk_full.py: part of a file written, then the error)
while writing a partition, hats' own properties file or the temporary folder itself is a
``DiskFullError`` naming the catalogue, the previous catalogue left byte for byte and no temporary
folder left. A real SIGKILL of a child process writing a catalogue -- while writing a partition, or
between the two renames of the swap -- leaves its hidden temporary folder (and the previous
catalogue moved aside); the next write, or ``cannonade run``'s clean-up of its run directory,
removes the temporary folder and puts the previous catalogue back.

Needs the optional ``hats`` package (skipped cleanly without it).
"""

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from cannonade import CatalogueError, DiskFullError
from cannonade.catalogue import write_hats
from cannonade.util import remove_stale_temporaries, stale_temporaries

hats = pytest.importorskip("hats")

MAX_ROWS = 150


def sky_table(n, seed=0):
    rng = np.random.default_rng(seed)
    t = Table()
    t["designation"] = [f"J{i:06d}" for i in range(n)]
    t["ra"] = rng.uniform(0, 360, n)
    t["dec"] = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    t["teff"] = rng.normal(5000, 300, n)
    t["fe_h"] = rng.normal(0, 0.3, n)
    return t


def digests(path):
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(path).rglob("*") if p.is_file()}


def full_disk(path):
    """What a write that runs out of space leaves: part of ``path`` written, then ENOSPC."""
    with open(path, "ab") as fh:
        fh.write(b"\0" * 1000)
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.fixture()
def previous(tmp_path):
    """A HATS catalogue of 400 rows at tmp_path/cat, and its files' digests."""
    path = write_hats(sky_table(400), tmp_path / "cat", max_rows=MAX_ROWS)
    return path, digests(path)


def assert_previous_intact(path, before):
    assert digests(path) == before
    assert hats.read_hats(path).catalog_info.total_rows == 400
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary folder left


def test_a_full_disk_writing_a_partition_is_a_disk_full_error_naming_the_catalogue(previous, monkeypatch):
    import pyarrow.parquet as pq

    path, before = previous
    real, calls = pq.write_table, []

    def write_table(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            raise full_disk(where)
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)
    with pytest.raises(DiskFullError, match=re.escape(f"{path}: no space left on device")) as info:
        write_hats(sky_table(300, seed=1), path, max_rows=MAX_ROWS, overwrite=True)
    assert isinstance(info.value, OSError) and isinstance(info.value.__cause__, OSError)
    assert len(calls) == 2 and Path(calls[0]).is_relative_to(path.parent) and not Path(calls[0]).is_relative_to(path)
    assert_previous_intact(path, before)
    monkeypatch.setattr(pq, "write_table", real)  # space freed
    write_hats(sky_table(300, seed=1), path, max_rows=MAX_ROWS, overwrite=True)
    assert hats.read_hats(path).catalog_info.total_rows == 300


def test_a_full_disk_in_hats_own_writer_or_for_the_temporary_folder(previous, monkeypatch):
    from hats.catalog import TableProperties

    path, before = previous

    def to_properties_file(self, catalog_path, *args, **kwargs):
        raise full_disk(Path(catalog_path) / "hats.properties")

    monkeypatch.setattr(TableProperties, "to_properties_file", to_properties_file)
    with pytest.raises(DiskFullError, match=re.escape(f"{path}: no space left on device")):
        write_hats(sky_table(300, seed=1), path, max_rows=MAX_ROWS, overwrite=True)
    assert_previous_intact(path, before)
    monkeypatch.undo()

    def mkdtemp(*args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path.parent / ".cat.xxxxxxxx.tmp"))

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(DiskFullError, match=re.escape(f"{path}: no space left on device")):
        write_hats(sky_table(300, seed=1), path, max_rows=MAX_ROWS, overwrite=True)
    assert_previous_intact(path, before)


CHILD = r"""
import os, signal, sys
from pathlib import Path
import pyarrow.parquet as pq
from astropy.table import Table
from cannonade.catalogue import write_hats

table, path, where = Table.read(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if where == "partition":  # SIGKILL while writing the third partition file (half of it written)
    real, calls = pq.write_table, []
    def write_table(t, target, *args, **kwargs):
        calls.append(target)
        real(t, target, *args, **kwargs)
        if len(calls) == 3:
            os.truncate(target, os.path.getsize(target) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    pq.write_table = write_table
else:  # SIGKILL between the swap's two renames: the old catalogue moved aside, the new not yet in place
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if Path(dst) == path and Path(src).name.endswith(".tmp"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
write_hats(table, path, max_rows=150, overwrite=True)
"""


def kill_child(tmp_path, path, where):
    src = tmp_path / "new.ecsv"
    sky_table(300, seed=1).write(src, overwrite=True)
    env = {**os.environ, "CANNONADE_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(path), where], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    src.unlink()
    assert proc.returncode == -9, proc.stderr[-3000:]


def test_killed_while_writing_a_partition_the_next_write_removes_the_temporary_folder(previous, tmp_path):
    path, before = previous
    kill_child(tmp_path, path, "partition")
    left = stale_temporaries(tmp_path)
    assert [p.name for p in left] and all(re.fullmatch(r"\.cat\.[a-z0-9_]{8}\.tmp", p.name) and p.is_dir() for p in left)
    assert list(left[0].rglob("*.parquet"))  # the partial catalogue is in it, hidden
    assert digests(path) == before  # the previous catalogue untouched
    write_hats(sky_table(300, seed=1), path, max_rows=MAX_ROWS, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]
    assert hats.read_hats(path).catalog_info.total_rows == 300


def test_killed_in_the_swap_the_previous_catalogue_is_put_back(previous, tmp_path):
    path, before = previous
    kill_child(tmp_path, path, "swap")
    assert not path.exists()
    assert sorted(re.sub(r"[a-z0-9_]{8}", "X", p.name) for p in tmp_path.iterdir()) == [".cat.X.old", ".cat.X.tmp"]
    # the next write puts the previous catalogue back first: without overwrite=True it is refused
    with pytest.raises(CatalogueError, match="already exists"):
        write_hats(sky_table(300, seed=1), path, max_rows=MAX_ROWS)
    assert_previous_intact(path, before)


def test_cannonade_runs_clean_up_removes_a_killed_hats_write(previous, tmp_path):
    """``Run.run`` starts with util.remove_stale_temporaries(run.out): folders too, in any sub-folder."""
    path, before = previous
    kill_child(tmp_path, path, "swap")
    run_dir = tmp_path / "run"
    (run_dir / "catalogue").mkdir(parents=True)
    for p in list(tmp_path.iterdir()):
        if p.name.startswith(".cat."):
            shutil.move(p, run_dir / "catalogue" / p.name)
    removed = remove_stale_temporaries(run_dir)
    assert len(removed) == 2 and sorted(p.name for p in (run_dir / "catalogue").iterdir()) == ["cat"]
    shutil.move(run_dir / "catalogue" / "cat", path)
    shutil.rmtree(run_dir)
    assert_previous_intact(path, before)


def test_cannonade_run_with_hats_removes_the_temporary_folder_a_kill_left(faults, pipeline_mock, reference_run, tmp_path):
    """The whole runner: a finished run directory, a killed HATS write's folder planted in it, rerun with
    ``formats`` adding "hats" (only the catalogue stage is redone)."""
    from cannonade.pipeline import run_pipeline

    cfg = faults.write_config(tmp_path, pipeline_mock)
    cfg.write_text(cfg.read_text() + '\n[catalogue]\nformats = ["fits", "parquet", "hats"]\n')
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run[0], run_dir)
    stale = run_dir / "catalogue" / ".per_star_hats.k1ll3d00.tmp"
    (stale / "dataset" / "Norder=0" / "Dir=0").mkdir(parents=True)
    (stale / "dataset" / "Norder=0" / "Dir=0" / "Npix=3.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    redone = []
    run_pipeline(cfg, chunk_hook=lambda k, r: redone.append(k))
    assert not stale.exists() and redone == []
    assert "temporary file(s) left by an interrupted run (.per_star_hats.k1ll3d00.tmp)" in (run_dir / "run.log").read_text()
    assert hats.read_hats(run_dir / "catalogue" / "per_star_hats").catalog_info.total_rows > 0
    assert not stale_temporaries(run_dir)
