"""Part files -> the spectra store: the last step of an ingest (:mod:`cannonade.spectra.ingest`).

An ingest writes one part file per chunk of input files (``flux``, ``ivar`` and ``meta`` of the
spectra it read, and its failures). :func:`assemble` copies them, in order, into the final store
(atomically) and writes the error report; each part is deleted as soon as it is copied, so the
parts and the store never both hold all the spectra on disk.

The store's ``flux`` and ``ivar`` are chunked by ``chunk_rows`` rows, as the parts. Where a
store chunk lies inside one part that starts on the store's chunk grid, its compressed bytes are
copied as they are (no decoding). A failed file moves every later part off the grid by one row,
and their chunks must then be decoded and encoded again: :func:`copy_plan` splits the store's
rows into runs copied as they are and *segments* to re-encode, and with ``workers > 1`` the
segments are encoded in a pool of worker processes (each into a scratch file whose chunks sit on
the store's grid) while the parent copies. That takes most of the failures' cost off the assembly
where the parent waits on the disk (a million spectra: 48 -> 40 s, against 34 s without failures);
where everything fits in the page cache, two cores are busy either way (docs/scale.md).

The error report is a CSV ``file,reason`` of the files that could not be ingested.
"""

from __future__ import annotations

import csv
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cannonade.execution.backends import ProcessBackend
from cannonade.spectra import store
from cannonade.util import atomic_path, progress, temporaries_of, temporary_beside

__all__ = ["assemble", "copy_plan", "RawRun", "Segment", "write_error_report", "read_error_report"]

#: the arrays of a store that are chunked by rows (the metadata columns are copied in batches of parts)
ARRAYS = ("flux", "ivar")
#: rows of a re-encoded segment at most (~16 MB per array on the LAMOST grid): a worker's task
SEGMENT_ROWS = 1024
#: metadata rows gathered from the parts before each column is written
META_BATCH_ROWS = 16384


@dataclass(frozen=True)
class RawRun:
    """Store rows ``row:row + (hi - lo)`` are rows ``lo:hi`` of part ``part``, whose chunks are
    the store's: their compressed bytes are copied as they are."""

    part: int
    lo: int
    hi: int
    row: int


@dataclass(frozen=True)
class Segment:
    """Store rows ``start:stop`` (``start`` on the chunk grid; ``stop`` too, or the store's end)
    are encoded again from ``sources``: ``(part, lo, hi)`` row ranges of parts, in order."""

    start: int
    stop: int
    sources: tuple


def copy_plan(counts, raw_ok, chunk_rows, segment_rows):
    """How the rows of consecutive parts become the store's chunks.

    Parameters
    ----------
    counts : (n_parts,) int
        Rows (spectra) of each part, in store order.
    raw_ok : (n_parts,) bool
        The part's arrays have the store's layout (chunk shape, dtype, filters).
    chunk_rows : int
        Rows per chunk of the store.
    segment_rows : int
        Rows of a :class:`Segment` at most (rounded down to whole chunks, at least one).

    Returns
    -------
    list of RawRun and Segment
        Covering rows ``0:sum(counts)`` once, in order. A store chunk is copied raw when its rows
        all lie in one part that starts on the chunk grid and has the store's layout (the store's
        last chunk may be partial: it is copied raw when it is the part's last).
    """
    counts = np.asarray(counts, dtype=np.int64)
    c = int(chunk_rows)
    seg = max(c, int(segment_rows) // c * c)
    ends = np.cumsum(counts)
    starts = ends - counts
    n = int(ends[-1]) if counts.size else 0
    plan = []
    pending = None  # start of the rows waiting to be encoded

    def flush(stop):
        for a in range(pending, stop, seg):
            b = min(a + seg, stop)
            plan.append(Segment(a, b, _sources(starts, ends, a, b)))

    for g in range(0, n, c):
        k = int(np.searchsorted(ends, g, side="right"))  # the part holding row g (empty parts skipped)
        s, e = int(starts[k]), int(ends[k])
        raw = bool(raw_ok[k]) and s % c == 0 and (g + c <= e or e == n)
        if not raw:
            if pending is None:
                pending = g
            continue
        if pending is not None:
            flush(g)
            pending = None
        stop = min(g + c, n)
        last = plan[-1] if plan else None
        if isinstance(last, RawRun) and last.part == k and last.row + (last.hi - last.lo) == g:
            plan[-1] = RawRun(k, last.lo, stop - s, last.row)
        else:
            plan.append(RawRun(k, g - s, stop - s, g))
    if pending is not None:
        flush(n)
    return plan


def _sources(starts, ends, a, b):
    """The ``(part, lo, hi)`` row ranges of parts that hold store rows ``a:b``."""
    out = []
    k = int(np.searchsorted(ends, a, side="right"))
    while a < b:
        s, e = int(starts[k]), int(ends[k])
        hi = min(e, b)
        if hi > a:
            out.append((k, a - s, hi - s))
            a = hi
        k += 1
    return tuple(out)


def _read_rows(sources, n_pixels):
    """The rows of every array in :data:`ARRAYS`, gathered from part files (each opened once):
    ``{name: (rows, P) float32}``; ``sources`` = ``(path, lo, hi)``."""
    import h5py

    n = sum(hi - lo for _, lo, hi in sources)
    out = {name: np.empty((n, n_pixels), dtype=np.float32) for name in ARRAYS}
    row = 0
    for path, lo, hi in sources:
        with h5py.File(path, "r") as h5:
            for name in ARRAYS:  # straight into place: no copy of a block
                h5[name].read_direct(out[name], np.s_[lo:hi], np.s_[row : row + hi - lo])
        row += hi - lo
    return out


def _with_paths(paths, sources):
    """``(part, lo, hi)`` sources as ``(path, lo, hi)``."""
    return [(paths[k], lo, hi) for k, lo, hi in sources]


def _layout(ds):
    return ds.chunks, ds.dtype, ds.compression, ds.compression_opts, ds.shuffle


def encode_segment(index, sources, n_pixels, chunk_rows, scratch):
    """Encode one segment's rows into a scratch store file whose chunks are the store's (a worker
    task). The file has whole chunks (its last is padded: only the segment's rows are copied).

    Parameters
    ----------
    index : int
        The segment's number (the task's key).
    sources : list of (str, int, int)
        Part file, first and end row, in store order.
    n_pixels : int
    chunk_rows : int
        The store's rows per chunk.
    scratch : path
        The scratch file's name is a hidden temporary beside this one.

    Returns
    -------
    str
        The scratch file, a hidden temporary beside ``scratch`` (removed by a rerun if left).
    """
    import h5py

    store.register_filters()
    rows = _read_rows(sources, n_pixels)
    n = len(rows[ARRAYS[0]])
    padded = -(-n // chunk_rows) * chunk_rows
    path = temporary_beside(scratch)
    with h5py.File(path, "w") as h5:
        store.create_arrays(h5, padded, n_pixels, chunk_rows=chunk_rows)
        for name in ARRAYS:
            h5[name][:n] = rows[name]
    return str(path)


def _copy_chunks(src, dst, lo, hi, row):
    """Copy the compressed chunks of ``src`` rows ``lo:hi`` (``lo`` on its grid) to ``dst`` at ``row``."""
    step = src.chunks[0]
    for i in range(lo, hi, step):
        mask, data = src.id.read_direct_chunk((i, 0))
        dst.id.write_direct_chunk((row + i - lo, 0), data, mask)


class _SegmentSource:
    """The encoded segments of a plan, in order: from a pool of ``workers`` processes (started
    before the store is opened for writing: no worker inherits its open file), or encoded by
    the caller when ``workers <= 1`` (returns None: the rows are then written through HDF5)."""

    def __init__(self, segments, paths, n_pixels, chunk_rows, workers, scratch):
        # one segment (or none): no pool; never more processes than this machine's cores (the
        # ingest's workers may be a remote cluster's)
        self.workers = min(int(workers), len(segments), os.cpu_count() or 1)
        # each task carries only its own parts' paths (not the list of every part: a million spectra make a thousand)
        self._tasks = ((i, (_with_paths(paths, s.sources), n_pixels, chunk_rows, scratch)) for i, s in enumerate(segments))
        self._backend = ProcessBackend(self.workers) if self.workers > 1 else None
        self._results = None
        self._ready = {}
        self._scratch = scratch

    def __enter__(self):
        if self._backend is not None:
            self._backend.__enter__()
            self._results = self._backend.imap_unordered(encode_segment, self._tasks)
        return self

    def get(self, i):
        """Segment ``i``'s scratch file (waiting for it), or None when encoded by the caller."""
        if self._results is None:
            return None
        while i not in self._ready:
            k, path = next(self._results)
            self._ready[k] = path
        return self._ready.pop(i)

    def __exit__(self, *exc):
        if self._backend is not None:
            self._backend.__exit__(*exc)  # running tasks finish: their files exist now
            for path in temporaries_of(self._scratch):  # encoded, never copied (the copy failed)
                path.unlink(missing_ok=True)
        return False


def assemble(out, parts, grid, attrs, error_report, chunk_rows=64, workers=1, scratch_dir=None):
    """Copy the part files, in order, into the final store (atomically); write the error report.

    Parameters
    ----------
    out : path
        The store.
    parts : list of path
        The part files, in store order (each deleted once copied).
    grid : (P,) float
        The wavelength grid.
    attrs : dict
        The store's attributes (the format's own are added).
    error_report : path
        The CSV of failures, written before the store appears.
    chunk_rows : int
        Rows per chunk of the store (the parts' chunks).
    workers : int
        Processes that re-encode the rows of parts off the chunk grid (1: this process; at most
        this machine's cores).
    scratch_dir : path, optional
        Where those processes write their scratch files (default: the parts' folder).

    Returns
    -------
    n_ok : int
    failures : list of (file, reason)

    Notes
    -----
    If the copy fails, the store is not written, and the deleted parts are simply redone by the
    next run (their chunks' files read again).
    """
    store.register_filters()  # a part with a plugin filter (Blosc) may have to be decoded
    import h5py

    from cannonade._version import __version__

    parts = [str(p) for p in parts]
    counts, layouts, failures = [], [], []
    for p in parts:
        with h5py.File(p, "r") as h5:
            counts.append(int(h5.attrs["n_ok"]))
            layouts.append(tuple(_layout(h5[name]) for name in ARRAYS))
            failures.extend(zip(h5["failures/file"].asstr()[:].tolist(), h5["failures/reason"].asstr()[:].tolist()))
    n = int(sum(counts))
    ends = np.cumsum(counts, dtype=np.int64)
    scratch = Path(scratch_dir if scratch_dir is not None else Path(parts[0]).parent if parts else Path(out).parent)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as dst:  # created first: the plan compares the parts' layout with it
            dst.create_dataset("wavelength", data=grid)
            store.create_arrays(dst, n, grid.size, chunk_rows=chunk_rows)
            want = tuple(_layout(dst[name]) for name in ARRAYS)
            raw_ok = [lay == want and lay[0][0] is not None for lay in layouts]
            rows = dst["flux"].chunks[0] if n else chunk_rows  # the store's (fewer than chunk_rows when n is)
            plan = copy_plan(counts, raw_ok, rows, SEGMENT_ROWS) if n else []
        segments = [item for item in plan if isinstance(item, Segment)]
        # a copied part is deleted by a second thread while the next is copied: removing a part's
        # pages from the page cache is kernel time (~9 ms for 1 000 LAMOST spectra, a third of the
        # assembly), and a core is free for it
        with _SegmentSource(segments, parts, grid.size, rows, workers, scratch / "segment.h5") as encoded, \
                ThreadPoolExecutor(max_workers=1) as deleter, h5py.File(tmp, "r+") as dst, \
                progress(total=n, desc="assemble", unit="spec") as bar:  # after the pool's fork: tqdm starts a thread
            deleted = []
            g = dst.create_group("meta")
            meta = _MetaCopy(g, n)
            item, n_seg = 0, 0
            row = 0
            for k, (p, c) in enumerate(zip(parts, counts)):
                with h5py.File(p, "r") as src:
                    meta.add(src["meta"], row, c)
                    # every planned run that starts in this part (a segment may reach into the next ones)
                    while item < len(plan) and _start(plan[item]) < ends[k]:
                        run = plan[item]
                        if isinstance(run, RawRun):
                            for name in ARRAYS:
                                _copy_chunks(src[name], dst[name], run.lo, run.hi, run.row)
                        else:
                            _write_segment(dst, run, encoded.get(n_seg), parts, deleter, deleted)
                            n_seg += 1
                        item += 1
                row += c
                deleted.append(deleter.submit(os.unlink, p))  # copied: free its disk space now
                bar.update(c)
            meta.flush()
            if not g.keys():
                store.create_meta(g, store.meta_columns([], 0), 0)
            store.set_store_attrs(
                dst,
                dict(attrs, n_failed=len(failures), cannonade_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S")),
            )
            for d in deleted:
                d.result()  # every copied part is gone (an error deleting one is raised here)
        # before the store appears: a finished store is never read back without its report (a kill
        # in between leaves no finished store, and the rerun writes both)
        write_error_report(error_report, failures)
    return n, failures


class _MetaCopy:
    """The parts' metadata rows into the store's ``meta`` group, a batch of parts at a time.

    The columns are the first part's, created on its first rows (a column a later part lacks
    keeps HDF5's fill value there). Rows wait until ``batch_rows`` have come, then each column is
    written once: an HDF5 write costs ~0.1 ms whatever its length, and a part has a dozen columns.
    Strings are copied as their stored UTF-8 bytes (not decoded and encoded again)."""

    def __init__(self, g, n, batch_rows=None):
        self.g, self.n = g, n
        self.batch_rows = META_BATCH_ROWS if batch_rows is None else batch_rows
        self.columns = {}  # name -> the store's dataset
        self.pending = []  # (row, count, {name: values}) of parts not written yet

    def add(self, src, row, c):
        """Part metadata group ``src``: its ``c`` rows go to store rows ``row:row + c``."""
        if not self.columns:  # (the first part with columns)
            self.columns = {name: self.g.create_dataset(name, shape=(self.n,), dtype=store.string_dtype()
                                                        if store.h5_is_string(ds) else ds.dtype)
                            for name, ds in src.items()}
        if not c:
            return
        # strings as their stored bytes: HDF5 writes bytes into the store's UTF-8 strings as they are
        self.pending.append((row, c, {name: src[name][:] for name in self.columns if name in src}))
        if sum(p[1] for p in self.pending) >= self.batch_rows:
            self.flush()

    def flush(self):
        """Write the waiting rows (each column once when every waiting part has it)."""
        if not self.pending:
            return
        row0 = self.pending[0][0]
        m = sum(c for _, c, _ in self.pending)
        for name, dst in self.columns.items():
            have = [v.get(name) for _, _, v in self.pending]
            if all(x is not None for x in have):
                dst[row0 : row0 + m] = np.concatenate(have) if len(have) > 1 else have[0]
                continue
            for (row, c, _), x in zip(self.pending, have):
                if x is not None:
                    dst[row : row + c] = x
        self.pending = []


def _start(run):
    return run.row if isinstance(run, RawRun) else run.start


def _write_segment(dst, seg, scratch, parts, deleter, deleted):
    """Store rows ``seg.start:seg.stop``: from an encoded scratch file (its chunks copied as they
    are, then deleted), or gathered from the parts and written through HDF5 (whole chunks)."""
    import h5py

    if scratch is None:
        rows = _read_rows(_with_paths(parts, seg.sources), dst[ARRAYS[0]].shape[1])
        for name in ARRAYS:
            dst[name][seg.start : seg.stop] = rows[name]
        return
    with h5py.File(scratch, "r") as src:  # made by create_arrays with the store's chunk rows: its layout
        for name in ARRAYS:
            _copy_chunks(src[name], dst[name], 0, seg.stop - seg.start, seg.start)
    deleted.append(deleter.submit(os.unlink, scratch))


def write_error_report(path, failures):
    """Write the failures ``[(file, reason), ...]`` as a CSV ``file,reason`` (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "reason"])
            w.writerows(failures)


def read_error_report(path):
    """The failures of an error report CSV as ``[(file, reason), ...]`` (empty when there is none)."""
    if path is None or not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]
