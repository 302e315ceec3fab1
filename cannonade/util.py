"""Small shared helpers: atomic file writes (a full disk as a named error) and progress bars."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from cannonade.exceptions import DiskFullError, OutputError

#: errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
# how libraries that do not set errno word it (h5py: "error message = 'No space left on device'")
_DISK_FULL_TEXTS = tuple(sorted({os.strerror(e).lower() for e in DISK_FULL_ERRNOS}))
# atomic_path's temporaries: ".{stem}." + mkstemp's 8 random characters + ".tmp" + the suffix
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\..*)?")
# atomic_dir's: ".{name}." + mkdtemp's 8 random characters + ".tmp" (the directory being written)
# or ".old" (the directory it replaces, moved aside for the swap)
_TEMPORARY_DIR = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)")


def is_disk_full(exc):
    """True if ``exc`` is an ``OSError`` of a full disk or quota (by errno, or by its text where a
    library such as h5py or pyarrow does not set errno)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _DISK_FULL_TEXTS)


def disk_full_error(path, exc):
    """The :class:`~cannonade.exceptions.DiskFullError` naming ``path`` of a full-disk ``exc``
    (:func:`is_disk_full`), for a writer that converts it itself (raise it ``from exc``)."""
    return DiskFullError(f"{path}: no space left on device (or disk quota exceeded) while writing it; any previous "
                         f"version of it is kept and no partial file was left; free some space and run the command again ({exc})")


def _nearest_existing(path):
    """``path`` or its nearest ancestor that exists (as given: relative paths stay relative)."""
    p = Path(path)
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable_folder(folder, path, what):
    """OutputError unless the existing ``folder`` (on the way to ``path``) is a directory this
    process may create files in."""
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: the directory {folder} is not writable (permission denied)")


def check_output_file(path, what="output file"):
    """Fail early, before any work, if a file cannot be written at ``path``.

    Raises :class:`~cannonade.exceptions.OutputError` naming ``path`` when it is an existing
    directory, when a file stands where one of its folders should be, or when the folder it
    would be created in is not writable. Nothing is created. Returns ``Path(path)``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    _writable_folder(_nearest_existing(path.parent if str(path.parent) else Path(".")), path, what)
    return path


def check_output_dir(path, what="output directory"):
    """Fail early, before any work, if ``path`` cannot be (or be created as) a writable directory.

    Raises :class:`~cannonade.exceptions.OutputError` naming ``path`` when it, or one of its
    folders, is an existing file, or when the directory (or the one it would be created in) is
    not writable. Nothing is created. Returns ``Path(path)``.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a directory")
    _writable_folder(_nearest_existing(path), path, what)
    return path


def make_dirs(path, what="output directory"):
    """``mkdir -p path``, an unusable place as :class:`~cannonade.exceptions.OutputError` (a full
    disk as :class:`~cannonade.exceptions.DiskFullError`), naming it. Returns ``Path(path)``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        check_output_dir(path, what)  # says which part of the path is wrong
        raise OutputError(f"{what} {path} cannot be created: {exc.strerror or exc}") from exc
    return path


def _output_error(path, exc):
    """The OutputError of an OSError met while creating or renaming ``path``'s temporary."""
    if isinstance(exc, IsADirectoryError) or Path(path).is_dir():
        return OutputError(f"{path} is a directory; give a file name")
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return OutputError(f"{path}: a file stands where one of its folders should be ({exc.filename})")
    if isinstance(exc, PermissionError):
        return OutputError(f"{path} cannot be written: permission denied ({exc.filename})")
    return OutputError(f"{path} cannot be written: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A crash inside the block leaves ``path`` untouched (old content or absent),
    never half written. The temporary file keeps ``path``'s suffix so writers
    that infer the format from the extension (astropy, h5py) still work. A full
    disk or quota (``ENOSPC``/``EDQUOT``) while writing raises
    :class:`~cannonade.exceptions.DiskFullError` naming ``path`` (the temporary
    file removed). A place where no file can be written -- ``path`` an existing
    directory, a file standing where one of its folders should be, a folder
    without write permission -- raises :class:`~cannonade.exceptions.OutputError`
    naming ``path``, before the block runs. A killed process leaves its temporary
    file behind (hidden, never at ``path``): :func:`remove_stale_temporaries`
    deletes such leftovers.

    Examples
    --------
    >>> with atomic_path("model.npz") as tmp:       # doctest: +SKIP
    ...     np.savez(tmp, theta=theta)
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name")
    tmp = temporary_beside(path, suffix)
    try:
        yield Path(tmp)
        try:
            os.replace(tmp, path)
        except IsADirectoryError as exc:  # a directory appeared at path meanwhile
            raise _output_error(path, exc) from exc
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise disk_full_error(path, exc) from exc
        raise


def temporary_beside(path, suffix=None):
    """A new, unique, hidden temporary file name beside ``path`` (not created).

    The name is ``.{stem}.XXXXXXXX.tmp{suffixes}`` (``suffix`` in place of ``path``'s suffixes
    when given): a file written there and left behind by a killed process is one of
    :func:`stale_temporaries`. Used by :func:`atomic_path`, and by writers of scratch files
    that are read and deleted, never renamed. Creates ``path``'s folder; a full disk raises
    :class:`~cannonade.exceptions.DiskFullError`, a place where nothing can be written
    :class:`~cannonade.exceptions.OutputError`, both naming ``path``.

    Returns
    -------
    Path
    """
    path = Path(path)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + suffix, dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        raise _output_error(path, exc) from exc
    os.close(fd)
    os.unlink(tmp)  # writers create it themselves (some refuse to overwrite)
    return Path(tmp)


def _is_temporary(entry):
    """True for a temporary of :func:`atomic_path` (a file) or :func:`atomic_dir` (a directory)."""
    if entry.is_dir() and not entry.is_symlink():
        return bool(_TEMPORARY_DIR.fullmatch(entry.name))
    return entry.is_file() and bool(_TEMPORARY.fullmatch(entry.name))


def stale_temporaries(directory):
    """The temporaries of :func:`atomic_path` (files) and :func:`atomic_dir` (directories) under
    ``directory`` (recursively; not inside a temporary directory): left by a process killed while
    writing (``SIGKILL``, power loss), never a finished file.

    Returns
    -------
    list of Path
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for root, dirs, files in os.walk(directory):
        root = Path(root)
        for name in list(dirs):
            if _is_temporary(root / name):
                found.append(root / name)
                dirs.remove(name)  # its contents are part of it
        found.extend(root / name for name in files if name.startswith(".") and _is_temporary(root / name))
    return sorted(found)


def temporaries_of(path):
    """The temporaries a killed write of ``path`` itself left beside it (not recursive): the
    hidden files of :func:`atomic_path` (``.{stem}.XXXXXXXX.tmp{suffixes}``) and the directories of
    :func:`atomic_dir` (``.{name}.XXXXXXXX.tmp`` / ``.old``).

    Returns
    -------
    list of Path
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    names = re.compile(re.escape(f".{path.stem}.") + r"[a-z0-9_]{8}\.tmp" + re.escape("".join(path.suffixes))
                       + "|" + re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.(tmp|old)")
    return sorted(p for p in path.parent.iterdir() if names.fullmatch(p.name) and _is_temporary(p))


def _remove_temporaries(found):
    removed = []
    for p in found:
        m = _TEMPORARY_DIR.fullmatch(p.name) if p.is_dir() else None
        try:
            if m is not None and m["kind"] == "old" and not os.path.lexists(p.with_name(m["name"])):
                os.replace(p, p.with_name(m["name"]))  # killed in the swap: the previous version goes back
            elif m is not None:
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        removed.append(p)
    return removed


def remove_stale_temporaries(directory):
    """Delete :func:`stale_temporaries` of ``directory`` (run only when no other process writes
    there); returns the paths removed. A directory :func:`atomic_dir` had moved aside (``.old``)
    whose replacement never arrived (killed between the two renames) is put back instead."""
    return _remove_temporaries(stale_temporaries(directory))


def remove_temporaries_of(path):
    """Delete :func:`temporaries_of` ``path`` (run only when no other process writes it), as
    :func:`remove_stale_temporaries` does; returns the paths removed."""
    return _remove_temporaries(temporaries_of(path))


@contextlib.contextmanager
def atomic_dir(path, what="output directory"):
    """Yield a new, empty temporary directory beside ``path``; swap it onto ``path`` on success.

    The directory version of :func:`atomic_path`: the temporary is hidden,
    ``.{name}.XXXXXXXX.tmp``. On success an existing ``path`` (a directory; the caller checks it
    may be replaced) is moved aside to ``.{name}.XXXXXXXX.old``, the temporary renamed onto
    ``path`` and the old one deleted. Any failure removes the temporary and leaves ``path`` as it
    was; a full disk or quota raises :class:`~cannonade.exceptions.DiskFullError` naming ``path``.
    A killed process leaves its temporaries: :func:`remove_stale_temporaries` and
    :func:`remove_temporaries_of` delete them (and put back a directory moved aside whose
    replacement never arrived).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        check_output_dir(path.parent, what)  # says which part of the path is wrong
        raise OutputError(f"{what} {path} cannot be written: {exc.strerror or exc}") from exc
    old = None
    try:
        yield tmp
        if os.path.lexists(path):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(path):
            with contextlib.suppress(OSError):  # failing that, it stays as .old: remove_temporaries_of puts it back
                os.replace(old, path)  # put the previous version back
        old = None
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise disk_full_error(path, exc) from exc
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


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
