"""Execution backends: where the chunks of a :class:`~cannonade.execution.ChunkedMap` run.

A backend is a context manager with one method::

    with get_backend("process", workers=4, initializer=init, initargs=(cfg,)) as be:
        for k, result in be.imap_unordered(fn, ((k, args_k) for k in todo)):
            ...

``imap_unordered(fn, tasks)`` takes an iterable of ``(k, args)`` pairs, calls
``fn(k, *args)`` for each, and yields ``(k, result)`` as the calls finish (in any
order). Tasks are pulled from the iterable lazily, so a backend never holds more
than ``max_in_flight`` (``2 * workers``) submitted calls: memory stays bounded for
any number of chunks. When the consumer stops iterating (an exception, a
:class:`~cannonade.execution.StopRequested`), leaving the ``with`` block lets
the calls already running finish and cancels the queued ones.

Backends
--------
``serial``
    Calls ``fn`` in this process, one task per ``next()``: nothing runs ahead of
    the consumer, so stopping after N results leaves exactly N calls done.
``process``
    A :class:`concurrent.futures.ProcessPoolExecutor` (``fork`` start method where
    the platform has it, else ``spawn``), created on ``__enter__`` and shut down on
    ``__exit__``; never module-global. ``fn``, the ``args`` and the initializer
    must be picklable (top-level functions, ``functools.partial`` of them). Each
    worker limits its native thread pools (BLAS/OpenMP) to ``threads_per_worker``
    through the usual environment variables, set inside the worker only (not
    overriding values the user set), so ``workers`` processes do not oversubscribe
    the cores.

Adding a backend (e.g. Dask)
----------------------------
Write one more class here with the same four members -- ``__init__(workers=1,
initializer=None, initargs=(), **options)``, ``__enter__``, ``__exit__`` and
``imap_unordered(fn, tasks)`` -- and add it to :data:`BACKENDS`. A Dask version
would take ``client=`` in ``__init__`` (or create a ``LocalCluster`` on enter),
run the initializer on every worker (``client.register_worker_callbacks``),
submit ``client.submit(fn, k, *args, pure=False)`` keeping at most
``2 * workers`` futures (``distributed.as_completed`` plus ``.add``) and cancel
the rest on exit. Nothing in :class:`~cannonade.execution.ChunkedMap` or its
callers changes: they pass ``backend="dask"``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from cannonade.exceptions import ConfigError

__all__ = ["SerialBackend", "ProcessBackend", "BACKENDS", "get_backend", "mp_context", "validate_workers"]

#: environment variables that size the native thread pools of numpy/scipy's BLAS and OpenMP
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def mp_context():
    """The multiprocessing context of the process backend: ``fork`` where available, else ``spawn``."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def validate_workers(workers):
    """``workers`` as an int >= 1 (ConfigError otherwise)."""
    try:
        workers = int(workers)
    except (TypeError, ValueError):
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}") from None
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    return workers


class SerialBackend:
    """Run every task in this process, lazily, in the order given.

    Parameters
    ----------
    workers : int
        Ignored beyond validation (one task at a time).
    initializer : callable, optional
        Called once, as ``initializer(*initargs)``, on ``__enter__``.
    initargs : tuple
    """

    name = "serial"

    def __init__(self, workers=1, initializer=None, initargs=()):
        self.workers = 1
        validate_workers(workers)
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.max_in_flight = 1

    def __enter__(self):
        if self.initializer is not None:
            self.initializer(*self.initargs)
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, tasks):
        """Yield ``(k, fn(k, *args))`` for each ``(k, args)`` of ``tasks``, one call per ``next()``."""
        for k, args in tasks:
            yield k, fn(k, *args)


def _worker_bootstrap(threads, initializer, initargs):
    """Process-pool worker initializer: size the native thread pools, then the user's initializer."""
    for var in THREAD_ENV_VARS:
        os.environ.setdefault(var, str(threads))  # inside the worker process only
    try:  # libraries already loaded (e.g. BLAS inherited through fork) ignore the variables
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(threads)
    if initializer is not None:
        initializer(*initargs)


def _noop():
    return None


class ProcessBackend:
    """Run tasks in a pool of worker processes (``ProcessPoolExecutor``).

    Parameters
    ----------
    workers : int
        Worker processes.
    initializer : callable, optional
        Run once in each worker (picklable), as ``initializer(*initargs)``.
    initargs : tuple
    threads_per_worker : int
        Native (BLAS/OpenMP) threads per worker; default 1.
    max_in_flight : int, optional
        Submitted but unfinished tasks at most; default ``2 * workers``.
    """

    name = "process"

    def __init__(self, workers=1, initializer=None, initargs=(), threads_per_worker=1, max_in_flight=None):
        self.workers = validate_workers(workers)
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.threads_per_worker = max(1, int(threads_per_worker))
        self.max_in_flight = int(max_in_flight) if max_in_flight else 2 * self.workers
        self._pool = None

    def __enter__(self):
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp_context(),
            initializer=_worker_bootstrap,
            initargs=(self.threads_per_worker, self.initializer, self.initargs),
        )
        try:
            # start the workers now: with 'fork' every worker is forked at the first submit,
            # before the caller starts any thread of its own (a progress bar's monitor)
            self._pool.submit(_noop).result()
        except BaseException:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            raise
        return self

    def __exit__(self, *exc):
        pool, self._pool = self._pool, None
        if pool is not None:
            # running calls finish (their parts are written), queued ones are dropped
            pool.shutdown(wait=True, cancel_futures=True)
        return False

    def imap_unordered(self, fn, tasks):
        """Yield ``(k, fn(k, *args))`` as the calls finish, keeping at most ``max_in_flight`` submitted.

        An exception raised by a call is re-raised here (the other running calls go on
        until the backend's ``with`` block is left).
        """
        if self._pool is None:
            raise RuntimeError("ProcessBackend.imap_unordered used outside its 'with' block")
        tasks = iter(tasks)
        pending = {}

        def top_up():
            while len(pending) < self.max_in_flight:
                try:
                    k, args = next(tasks)
                except StopIteration:
                    return
                pending[self._pool.submit(fn, k, *args)] = k

        top_up()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                k = pending.pop(fut)
                yield k, fut.result()
            top_up()


#: backend name -> class; one more entry (e.g. ``"dask"``) adds a backend
BACKENDS = {"serial": SerialBackend, "process": ProcessBackend}


def get_backend(name="serial", workers=1, initializer=None, initargs=(), **options):
    """A backend by name.

    Parameters
    ----------
    name : {'serial', 'process'}
        A key of :data:`BACKENDS`.
    workers : int
        Parallel workers (>= 1).
    initializer : callable, optional
        Run once per worker (in this process for ``serial``) as ``initializer(*initargs)``.
    initargs : tuple
    **options
        Backend-specific (``threads_per_worker``, ``max_in_flight`` for ``process``).

    Returns
    -------
    SerialBackend or ProcessBackend
        Use it as a context manager; see the module docstring.

    Raises
    ------
    ConfigError
        Unknown backend name or bad ``workers``.
    """
    try:
        cls = BACKENDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown execution backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    return cls(workers=workers, initializer=initializer, initargs=initargs, **options)
