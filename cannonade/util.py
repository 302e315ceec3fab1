"""Small shared helpers: atomic file writes (a full disk as a named error) and progress bars."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import tempfile
from pathlib import Path

from cannonade.exceptions import DiskFullError

#: errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
# how libraries that do not set errno word it (h5py: "error message = 'No space left on device'")
_DISK_FULL_TEXTS = tuple(sorted({os.strerror(e).lower() for e in DISK_FULL_ERRNOS}))
# atomic_path's temporaries: ".{stem}." + mkstemp's 8 random characters + ".tmp" + the suffix
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\..*)?")


def is_disk_full(exc):
    """True if ``exc`` is an ``OSError`` of a full disk or quota (by errno, or by its text where a
    library such as h5py or pyarrow does not set errno)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _DISK_FULL_TEXTS)


def _disk_full_error(path, exc):
    return DiskFullError(f"{path}: no space left on device (or disk quota exceeded) while writing it; any previous "
                         f"version of it is kept and no partial file was left; free some space and run the command again ({exc})")


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A crash inside the block leaves ``path`` untouched (old content or absent),
    never half written. The temporary file keeps ``path``'s suffix so writers
    that infer the format from the extension (astropy, h5py) still work. A full
    disk or quota (``ENOSPC``/``EDQUOT``) while writing raises
    :class:`~cannonade.exceptions.DiskFullError` naming ``path`` (the temporary
    file removed). A killed process leaves its temporary file behind (hidden,
    never at ``path``): :func:`remove_stale_temporaries` deletes such leftovers.

    Examples
    --------
    >>> with atomic_path("model.npz") as tmp:       # doctest: +SKIP
    ...     np.savez(tmp, theta=theta)
    """
    path = Path(path)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + suffix, dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise _disk_full_error(path, exc) from exc
        raise
    os.close(fd)
    os.unlink(tmp)  # writers create it themselves (some refuse to overwrite)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise _disk_full_error(path, exc) from exc
        raise


def stale_temporaries(directory):
    """The temporary files of :func:`atomic_path` under ``directory`` (recursively): left by a
    process killed while writing (``SIGKILL``, power loss), never a finished file.

    Returns
    -------
    list of Path
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob(".*.tmp*") if _TEMPORARY.fullmatch(p.name) and p.is_file())


def remove_stale_temporaries(directory):
    """Delete :func:`stale_temporaries` of ``directory`` (run only when no other process writes
    there); returns the paths removed."""
    removed = []
    for p in stale_temporaries(directory):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars and arrays (anything else as its str)."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def progress(iterable=None, total=None, desc=None, disable=None, **kwargs):
    """A tqdm progress bar on stderr; silenced by ``CANNONADE_QUIET=1``."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = bool(os.environ.get("CANNONADE_QUIET"))
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 10.0)
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, **kwargs)
