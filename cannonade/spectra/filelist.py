"""A survey's ``@list`` of spectrum files, read from the list file on demand instead of held in memory.

``cannonade ingest @dr10.txt`` names 11.1 million files. Held as Python strings (and a set to
drop repeats) they cost the ingest's parent ~0.12 KB each, 1.3 GB for DR10, growing with the
survey while every worker stays flat. :class:`ListedFiles` holds none of them: a first pass over
the list file hashes each path (8 bytes each, freed after the pass) to find the repeated ones, and
keeps the byte offset of every ``stride``-th path; a chunk's paths are then read from the file when
the chunk is handed out. It is a sequence of the same paths, in the same order, as
:func:`cannonade.spectra.ingest.expand_inputs` gives for the list (blank lines and ``#`` comments
skipped, relative paths resolved as there, repeats dropped), so an ingest's fingerprint and chunks
are the same either way.

The file is read in blocks of ~64 kB: a block whose every line is a plain absolute path
(:func:`plain_block`, a few byte scans) gives its lines as they are; any other block is read line
by line through :func:`list_entry`. A 100 000-line list: 0.06 s to open (0.10 s line by line).

The list file must not change while the ingest runs: each read checks its size and modification
time against the first pass (:class:`~cannonade.exceptions.ConfigError` naming the file otherwise).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cannonade.exceptions import ConfigError

__all__ = ["ListedFiles", "list_entry", "plain_block", "read_list_file"]


def plain_absolute(line):
    """True for an absolute POSIX path that ``Path`` leaves as it is (no ``//``, ``/./``, trailing
    ``/`` or ``/.``); a survey's list of millions of files is mostly such lines."""
    return (os.sep == "/" and line.startswith("/") and not line.startswith("//") and "//" not in line
            and "/./" not in line and not line.endswith(("/", "/.")))


def list_entry(line, listfile):
    """The path one line of ``listfile`` names, as a str, or None for a blank or ``#`` comment line.

    A relative path that does not exist from the working directory but does from the list's
    folder is taken relative to the list."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if plain_absolute(line):  # str(Path(line)) == line: no Path needed (~5x faster per line)
        return line
    p = Path(line)
    if not p.is_absolute() and not p.exists() and (listfile.parent / p).exists():
        p = listfile.parent / p
    return str(p)


_BLOCK_BYTES = 64 << 10  # a chunk's paths (~75 kB for 1 000) cost one or two blocks
# bytes a plain block may hold: printable ASCII but the space, and the newline
_PLAIN_BYTES = bytes(range(0x21, 0x7F)) + b"\n"


def plain_block(data):
    """True when every line of ``data`` (whole lines) is a :func:`plain_absolute` path with
    nothing to strip: :func:`list_entry` of each is the line itself. Checked on the whole block
    with a few byte scans (a survey's list of millions of such lines is read at ~10x the speed
    of line by line)."""
    if os.sep != "/" or not data.startswith(b"/") or data.translate(None, _PLAIN_BYTES):
        return False  # a relative first line, whitespace or a control character, non-ASCII
    body = data[:-1] if data.endswith(b"\n") else data
    if body.count(b"\n") != body.count(b"\n/"):  # a line not starting with '/' (blank, comment, relative)
        return False
    return not (b"//" in data or b"/./" in data or b"/\n" in data or b"/.\n" in data or body.endswith((b"/", b"/.")))


def _line_blocks(fh, size=_BLOCK_BYTES):
    """The rest of a binary file in blocks of whole lines (split after a newline; the last block
    may end without one), about ``size`` bytes each (a longer line is one block, read in linear
    time)."""
    pending = []  # the pieces of a line not finished yet
    while True:
        data = fh.read(size)
        if not data:
            if pending:
                yield b"".join(pending)
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            pending.append(data)
            continue
        pending.append(data[:cut])
        yield b"".join(pending) if len(pending) > 1 else pending[0]
        pending = [data[cut:]] if cut < len(data) else []


def _split_lines(data):
    """The lines of ``data`` as iterating the binary file gives them (split after each newline)."""
    lines = data.split(b"\n")
    last = lines.pop()
    out = [line + b"\n" for line in lines]
    if last:
        out.append(last)
    return out


def _check_exists(listfile):
    if not listfile.is_file():
        raise ConfigError(f"list file {listfile} not found")


def read_list_file(listfile):
    """The paths of a list file (:func:`list_entry` of each line), one ``str`` at a time, repeats
    included (a survey's list holds millions: no Path object outlives its line)."""
    listfile = Path(listfile)
    _check_exists(listfile)
    with open(listfile, encoding="utf-8") as fh:
        for line in fh:
            entry = list_entry(line, listfile)
            if entry is not None:
                yield entry


class ListedFiles(Sequence):
    """The paths of one ``@list`` file, repeats dropped, read from the file when asked for.

    Parameters
    ----------
    listfile : str or Path
    stride : int
        A byte offset is kept every ``stride`` paths: reading any slice reads at most ``stride``
        paths before it.

    Raises
    ------
    ConfigError
        The list file does not exist or is not UTF-8 (names the byte).
    """

    def __init__(self, listfile, stride=1024):
        self.path = Path(listfile)
        self.stride = max(1, int(stride))
        _check_exists(self.path)
        st = self.path.stat()
        self._stamp = (st.st_size, st.st_mtime_ns)
        hashes = array("q")
        offsets, pieces = array("q"), array("q")  # where every stride-th entry is (entries: repeats included)
        for k, (offset, piece, entry) in enumerate(self._entries()):
            if k % self.stride == 0:
                offsets.append(offset)
                pieces.append(piece)
            hashes.append(hash(entry))  # this process's str hash: only compared within this process
        self._n_entries = len(hashes)
        self._offsets = np.frombuffer(offsets, dtype=np.int64).copy()
        self._pieces = np.frombuffer(pieces, dtype=np.int64).copy()
        self._repeats = self._find_repeats(np.frombuffer(hashes, dtype=np.int64))
        del hashes
        self._len = self._n_entries - self._repeats.size
        # each checkpoint's entry index and the paths (repeats dropped) before it
        self._checkpoint_entry = np.arange(self._offsets.size, dtype=np.int64) * self.stride
        self._checkpoint_before = self._checkpoint_entry - np.searchsorted(self._repeats, self._checkpoint_entry)

    def _entries(self, offset=0, piece=0, check=False):
        """(byte offset of its line, its piece of that line, path) of every entry from the line at
        ``offset`` (its pieces from ``piece`` on) onwards. A line is also split at bare carriage
        returns, as text files are read elsewhere (universal newlines); nearly always one piece."""
        if check:
            st = self.path.stat() if self.path.exists() else None
            if st is None or (st.st_size, st.st_mtime_ns) != self._stamp:
                raise ConfigError(f"list file {self.path} changed while its files were being read; run again")
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            pos = offset
            for data in _line_blocks(fh):
                if plain_block(data):  # every line its own path (a survey's list): no per-line checks
                    lines = data.decode("ascii").split("\n")
                    if not lines[-1]:
                        lines.pop()
                    for line in lines:
                        yield pos, 0, line
                        pos += len(line) + 1
                    continue
                for raw in _split_lines(data):
                    start, pos = pos, pos + len(raw)
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise ConfigError(f"list file {self.path}: not UTF-8 text at byte {start + exc.start}") from None
                    pieces = text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if "\r" in text else (text,)
                    for j in range(piece if start == offset else 0, len(pieces)):
                        entry = list_entry(pieces[j], self.path)
                        if entry is not None:
                            yield start, j, entry

    def _find_repeats(self, hashes):
        """Sorted entry indices whose path appeared earlier in the list (the hashes find the
        candidates; their paths are then compared, so a hash collision is never a repeat)."""
        if hashes.size < 2:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(hashes, kind="stable")
        h = hashes[order]
        same = h[1:] == h[:-1]
        if not same.any():
            return np.zeros(0, dtype=np.int64)
        in_group = np.zeros(h.size, dtype=bool)
        in_group[1:] |= same
        in_group[:-1] |= same
        candidates = np.zeros(hashes.size, dtype=bool)
        candidates[order[in_group]] = True
        del order, h, same, in_group
        first, repeats = set(), []
        for k, (_, _, entry) in enumerate(self._entries(check=True)):
            if candidates[k]:
                if entry in first:
                    repeats.append(k)
                else:
                    first.add(entry)
        return np.asarray(repeats, dtype=np.int64)

    def __len__(self):
        return self._len

    def _read(self, start, stop):
        """Paths ``start:stop`` (indices without repeats), read from the list file."""
        if start >= stop:
            return []
        # the last checkpoint at or before `start`: its entry index k, the paths before it u
        c = int(np.searchsorted(self._checkpoint_before, start, side="right")) - 1
        k, u = int(self._checkpoint_entry[c]), int(self._checkpoint_before[c])
        r = int(np.searchsorted(self._repeats, k))  # the next repeat at or after entry k
        out = []
        for _, _, entry in self._entries(int(self._offsets[c]), int(self._pieces[c]), check=True):
            repeat = r < self._repeats.size and self._repeats[r] == k
            k += 1
            if repeat:
                r += 1
                continue
            if u >= start:
                out.append(entry)
                if len(out) == stop - start:
                    break
            u += 1
        return out

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            if step != 1:
                return self._read(0, self._len)[index]
            return self._read(start, stop)
        k = int(index)
        if k < 0:
            k += self._len
        if not 0 <= k < self._len:
            raise IndexError(f"list file {self.path}: path {index} out of range ({self._len} paths)")
        return self._read(k, k + 1)[0]

    def __iter__(self):
        r, rep = 0, self._repeats
        for k, (_, _, entry) in enumerate(self._entries(check=True)):
            if r < rep.size and rep[r] == k:
                r += 1
                continue
            yield entry

    def __repr__(self):
        return f"ListedFiles({str(self.path)!r}, {self._len} paths)"
