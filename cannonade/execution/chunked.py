"""A chunked, resumable, atomic map: one part file per chunk, reused after a kill.

Layout of a parts directory::

    parts_dir/state.json          {"format", "version", "n_chunks", "suffix", "fingerprint"}
    parts_dir/part_000000.npz     chunk 0's result, written atomically by the chunk function
    parts_dir/part_000001.npz     ...

A chunk is done when its part file exists and passes ``is_complete``; a rerun
(after a kill, a crash, a :class:`StopRequested`) runs only the other chunks. The
fingerprint -- a JSON-able dict of everything the parts depend on (input files,
settings, model hashes) -- is stored in ``state.json``; parts written under a
different fingerprint are never reused: the directory is wiped and the map
starts afresh.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cannonade.exceptions import CannonadeError, ConfigError
from cannonade.execution.backends import get_backend, validate_workers
from cannonade.util import atomic_path, make_dirs, progress

__all__ = ["ChunkedMap", "StopRequested"]

STATE_FORMAT = "cannonade-chunked-map"
STATE_VERSION = 1
STATE_FILE = "state.json"
PART_PREFIX = "part_"


class StopRequested(CannonadeError):
    """A run stopped on purpose (``stop_after``) with chunks left; finished parts are kept.

    Attributes
    ----------
    n_done : int
        Chunks finished in the call that stopped.
    n_left : int
        Chunks of that call not (known to be) finished.
    """

    def __init__(self, message, n_done=0, n_left=0):
        super().__init__(message)
        self.n_done = n_done
        self.n_left = n_left


def _default_complete(path):
    return path.is_file()


def _no_args(k):
    return ()


def _unit_weight(k):
    return 1


class ChunkedMap:
    """Run a function over ``n_chunks`` chunks, each writing its own part file; resumable.

    Parameters
    ----------
    parts_dir : str or Path
        Directory of the part files and ``state.json``. Created if needed. If it
        exists with a different fingerprint (or ``n_chunks`` / ``suffix``), or
        without ``state.json``, it is wiped and the map starts afresh. A directory
        without ``state.json`` that holds anything but part files is refused
        (``CannonadeError``) rather than deleted.
    fingerprint : dict
        JSON-able description of the inputs and settings the parts depend on (no NaN).
    n_chunks : int
        Number of chunks (>= 0); chunk ``k`` writes :meth:`part` ``(k)``.
    suffix : str
        Part file suffix (``'.npz'``, ``'.h5'``, ...).
    is_complete : callable, optional
        ``is_complete(path) -> bool`` validating a finished part (default: the file exists).

    Examples
    --------
    >>> def square(k, part, n):                       # doctest: +SKIP
    ...     with atomic_path(part) as tmp:
    ...         np.save(tmp, np.arange(n) ** 2 + k)
    >>> cm = ChunkedMap(out / "parts", {"n": 10}, n_chunks=4, suffix=".npy")  # doctest: +SKIP
    >>> cm.run(square, args=lambda k: (10,), backend="process", workers=2)    # doctest: +SKIP
    4
    >>> arrays = [np.load(p) for p in cm.parts()]; cm.cleanup()               # doctest: +SKIP
    """

    def __init__(self, parts_dir, fingerprint, n_chunks, suffix=".npz", is_complete=None):
        self.parts_dir = Path(parts_dir)
        self.n_chunks = int(n_chunks)
        if self.n_chunks < 0:
            raise ConfigError(f"{self.parts_dir}: n_chunks must be >= 0, got {n_chunks}")
        self.suffix = str(suffix)
        self._is_complete = is_complete or _default_complete
        try:
            # round trip: tuples become lists, as they will read back from state.json
            # (NaN is refused: it never compares equal, so the parts would never be reused)
            self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.parts_dir}: fingerprint is not JSON-serialisable ({exc})") from None
        self._state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "n_chunks": self.n_chunks,
            "suffix": self.suffix,
            "fingerprint": self.fingerprint,
        }
        self._prepare()

    def __repr__(self):
        return f"ChunkedMap({str(self.parts_dir)!r}, n_chunks={self.n_chunks}, n_done={self.n_done})"

    # ---- state
    @property
    def state_path(self):
        """``parts_dir / 'state.json'``."""
        return self.parts_dir / STATE_FILE

    def _read_state(self):
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _looks_like_parts(self):
        """True if every entry is a part file or an atomic-write leftover (safe to delete)."""
        for entry in self.parts_dir.iterdir():
            name = entry.name
            if not entry.is_file() or not (name.startswith(PART_PREFIX) or name.startswith(f".{PART_PREFIX}") or name.startswith(".state")):
                return False
        return True

    def _prepare(self):
        """Wipe a parts directory of other inputs/settings; create it and its state.json."""
        d = self.parts_dir
        if d.exists() and not d.is_dir():
            raise CannonadeError(f"{d}: exists and is not a directory (wanted for the part files)")
        if d.is_dir():
            state = self._read_state()
            if state != self._state:
                if state is None and not self.state_path.exists() and not self._looks_like_parts():
                    raise CannonadeError(
                        f"{d}: exists without {STATE_FILE} and holds files that are not parts; "
                        "refusing to delete it (remove it or choose another parts directory)"
                    )
                shutil.rmtree(d)
        make_dirs(d, "parts directory")
        if not self.state_path.is_file():
            with atomic_path(self.state_path) as tmp:
                tmp.write_text(json.dumps(self._state, indent=1, sort_keys=True), encoding="utf-8")

    # ---- parts
    def part(self, k):
        """Path of chunk ``k``'s part file: ``parts_dir / f'part_{k:06d}{suffix}'``."""
        k = int(k)
        if not 0 <= k < self.n_chunks:
            raise IndexError(f"{self.parts_dir}: chunk {k} out of range (n_chunks={self.n_chunks})")
        return self.parts_dir / f"{PART_PREFIX}{k:06d}{self.suffix}"

    def is_done(self, k):
        """True if chunk ``k`` has a complete part."""
        p = self.part(k)
        try:
            return p.is_file() and bool(self._is_complete(p))
        except Exception:  # a validator that chokes on a damaged part: not done
            return False

    def pending(self):
        """Chunks without a complete part, in order.

        Returns
        -------
        list of int
        """
        return [k for k in range(self.n_chunks) if not self.is_done(k)]

    @property
    def n_done(self):
        """Number of chunks with a complete part."""
        return self.n_chunks - len(self.pending())

    def parts(self):
        """All part paths in chunk order.

        Raises
        ------
        CannonadeError
            A chunk has no complete part yet (names the first missing ones).
        """
        missing = self.pending()
        if missing:
            raise CannonadeError(
                f"{self.parts_dir}: {len(missing)} of {self.n_chunks} chunk(s) not finished "
                f"(first: {missing[:5]}); run the map again to finish them"
            )
        return [self.part(k) for k in range(self.n_chunks)]

    def cleanup(self):
        """Remove the parts directory (after the parts have been assembled)."""
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    # ---- running
    def run(self, func, args=None, backend="serial", workers=1, initializer=None, initargs=(),
            desc=None, total=None, unit="chunk", weight=None, stop_after=None, on_done=None, **backend_options):
        """Run ``func`` on every pending chunk.

        Parameters
        ----------
        func : callable
            ``func(k, part_path, *args(k))`` -> small picklable result. It runs in the
            backend (picklable for ``'process'``) and must write ``part_path`` (a str)
            atomically, e.g. through :func:`cannonade.util.atomic_path`.
        args : callable, optional
            ``args(k) -> tuple`` of extra arguments of chunk ``k``; evaluated in this
            process, lazily (at most the backend's in-flight bound ahead).
        backend : str or backend object
            ``'serial'``, ``'process'``, ``'dask'`` (see :func:`~cannonade.execution.get_backend`),
            or an unentered backend instance (then ``workers``/``initializer`` are its own).
        workers : int
            Parallel workers; the process and dask backends use ``min(workers, pending)``.
        initializer, initargs
            Run once per worker (in this process for ``'serial'``).
        desc, unit : str
            Progress-bar label and unit.
        total : float, optional
            Progress-bar total; default the sum of ``weight(k)`` over all chunks.
        weight : callable, optional
            ``weight(k)`` by which the bar advances when chunk ``k`` finishes (default 1).
        stop_after : int, optional
            Test hook: once this many chunks have finished in this call and chunks are
            left, raise :class:`StopRequested`. Finished parts stay; with a process
            backend, chunks already running finish too, queued ones are cancelled.
        on_done : callable, optional
            ``on_done(k, result)`` in this process after each finished chunk.
        **backend_options
            Passed to :func:`~cannonade.execution.get_backend` when ``backend`` is a name, e.g.
            ``scheduler='tcp://host:8786'`` for ``'dask'`` (see
            :func:`~cannonade.execution.choose_backend`).

        Returns
        -------
        int
            Chunks run (finished) in this call; 0 when everything was already done.

        Raises
        ------
        StopRequested
            ``stop_after`` reached with chunks left.
        Exception
            Whatever a chunk raised; the run stops, finished parts are kept.
        """
        args = args or _no_args
        weight = weight or _unit_weight
        todo = self.pending()
        if stop_after is not None and int(stop_after) < 0:
            raise ConfigError(f"stop_after must be >= 0, got {stop_after}")
        if not todo:
            return 0
        if stop_after is not None and int(stop_after) == 0:
            raise StopRequested(f"{self.parts_dir}: stopped before any chunk (stop_after=0)", 0, len(todo))
        if isinstance(backend, str):
            n_workers = min(validate_workers(workers), len(todo))
            backend = get_backend(backend, workers=n_workers, initializer=initializer, initargs=initargs, **backend_options)
        total = sum(weight(k) for k in range(self.n_chunks)) if total is None else total
        initial = total - sum(weight(k) for k in todo)
        tasks = ((k, (str(self.part(k)),) + tuple(args(k))) for k in todo)
        n_run = 0
        with backend:
            bar = progress(total=total, desc=desc, unit=unit, initial=max(0, initial))
            results = backend.imap_unordered(func, tasks)
            try:
                for k, result in results:
                    if not self.is_done(k):
                        raise CannonadeError(f"{self.part(k)}: chunk {k} returned without writing a complete part file")
                    n_run += 1
                    bar.update(weight(k))
                    if on_done is not None:
                        on_done(k, result)
                    if stop_after is not None and n_run >= int(stop_after) and n_run < len(todo):
                        raise StopRequested(
                            f"{self.parts_dir}: stopped after {n_run} chunk(s) (stop_after={stop_after}); "
                            f"{len(todo) - n_run} left for the rerun",
                            n_run,
                            len(todo) - n_run,
                        )
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()  # a generator backend stops submitting
                bar.close()
        return n_run
