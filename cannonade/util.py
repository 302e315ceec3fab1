"""Small shared helpers: atomic file writes and progress bars."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A crash inside the block leaves ``path`` untouched (old content or absent),
    never half written. The temporary file keeps ``path``'s suffix so writers
    that infer the format from the extension (astropy, h5py) still work.

    Examples
    --------
    >>> with atomic_path("model.npz") as tmp:       # doctest: +SKIP
    ...     np.savez(tmp, theta=theta)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers create it themselves (some refuse to overwrite)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def progress(iterable=None, total=None, desc=None, disable=None, **kwargs):
    """A tqdm progress bar on stderr; silenced by ``CANNONADE_QUIET=1``."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = bool(os.environ.get("CANNONADE_QUIET"))
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 10.0)
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, **kwargs)
