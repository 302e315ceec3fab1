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

Every backend runs the calls with the native thread pools (BLAS/OpenMP) limited to
``threads_per_worker`` (default 1; through ``threadpoolctl``): besides not
oversubscribing the cores, this keeps the results the same whichever backend runs
them -- a multi-threaded BLAS sums in another order, and an iterative fit (the
Cannon's label inference) then stops a rounding error elsewhere, ~1e-5 of a label's
scale.

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
    the cores. A worker that dies (killed, out of memory, ``os._exit``) breaks the
    pool: the calls that were running are rerun one at a time in a fresh pool, and a
    call whose worker dies again (``dead_worker_retries`` times) stops the map with
    :class:`~cannonade.exceptions.WorkerDiedError` naming its chunk.

``dask``
    :class:`DaskBackend`: the tasks run on a ``dask.distributed`` cluster -- an
    embedded ``LocalCluster`` of ``workers`` single-threaded worker processes
    (``scheduler=None`` or ``'local'``), or an existing cluster reached by its
    scheduler's address (``'tcp://host:8786'``) or scheduler file. The initializer
    runs on every worker, also on workers that join or are restarted later; at most
    ``2 x`` the cluster's threads are in flight; a worker that dies loses only its
    running task, which the scheduler reruns elsewhere. The dashboard's address is
    logged (logger ``cannonade.execution.backends``) and kept as ``dashboard_link``.
    See docs/scale.md.

Choosing a backend from the user's settings: :func:`choose_backend` (a ``scheduler``
setting, ``run.scheduler`` or ``--scheduler``: ``''`` = the default backend,
``'local'`` or an address = ``'dask'``).

Adding a backend
----------------
Write one more class here with the same four members -- ``__init__(workers=1,
initializer=None, initargs=(), **options)``, ``__enter__``, ``__exit__`` and
``imap_unordered(fn, tasks)`` -- and add it to :data:`BACKENDS`. Nothing in
:class:`~cannonade.execution.ChunkedMap` or its callers changes: they pass
``backend=NAME`` (and the backend's options as keywords of ``ChunkedMap.run``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing as mp
import os
import time
import uuid
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from cannonade.exceptions import ConfigError, WorkerDiedError
from cannonade.execution.memory import keep_freed_memory

__all__ = ["SerialBackend", "ProcessBackend", "DaskBackend", "BACKENDS", "get_backend", "choose_backend", "mp_context",
           "validate_workers", "native_threads", "LOCAL_SCHEDULER", "shared_cluster"]

log = logging.getLogger(__name__)

#: the ``scheduler`` value (``run.scheduler``, ``--scheduler``) asking for an embedded dask LocalCluster
LOCAL_SCHEDULER = "local"

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


@contextlib.contextmanager
def native_threads(threads):
    """Limit the native thread pools (BLAS/OpenMP) of this process to ``threads`` inside the block
    (``threadpoolctl``; nothing without it)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=int(threads)):
        yield


def _call_with_threads(threads, fn, k, *args):
    """``fn(k, *args)`` with the native thread pools limited to ``threads`` (a dask task)."""
    with native_threads(threads):
        return fn(k, *args)


class SerialBackend:
    """Run every task in this process, lazily, in the order given.

    Parameters
    ----------
    workers : int
        Ignored beyond validation (one task at a time).
    initializer : callable, optional
        Called once, as ``initializer(*initargs)``, on ``__enter__``.
    initargs : tuple
    threads_per_worker : int
        Native (BLAS/OpenMP) threads of each call (the rest of this process is left alone); default 1.
    """

    name = "serial"

    def __init__(self, workers=1, initializer=None, initargs=(), threads_per_worker=1):
        self.workers = 1
        validate_workers(workers)
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.threads_per_worker = max(1, int(threads_per_worker))
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
            with native_threads(self.threads_per_worker):
                result = fn(k, *args)
            yield k, result


def _worker_bootstrap(threads, initializer, initargs, own_process=True):
    """Worker initializer: size the native thread pools, keep freed memory for reuse in a worker
    process this package started (``own_process``; :mod:`cannonade.execution.memory`), then the
    user's initializer."""
    if own_process:
        keep_freed_memory()
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
    dead_worker_retries : int
        Times a call is rerun alone, in a fresh pool, after a worker died while it ran
        (default 1). A worker's death breaks the whole pool and fails every call in it, so
        every call that was running then is a suspect: each is rerun by itself, and one whose
        worker dies in every rerun raises :class:`~cannonade.exceptions.WorkerDiedError` naming
        its chunk (the calls that finished keep their results; a
        :class:`~cannonade.execution.ChunkedMap` rerun resumes). 0: no rerun, the error names
        every chunk that was running.
    """

    name = "process"

    def __init__(self, workers=1, initializer=None, initargs=(), threads_per_worker=1, max_in_flight=None, dead_worker_retries=1):
        self.workers = validate_workers(workers)
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.threads_per_worker = max(1, int(threads_per_worker))
        self.max_in_flight = int(max_in_flight) if max_in_flight else 2 * self.workers
        self.dead_worker_retries = int(dead_worker_retries)
        if self.dead_worker_retries < 0:
            raise ConfigError(f"dead_worker_retries must be >= 0, got {dead_worker_retries}")
        self._pool = None

    def _start_pool(self):
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp_context(),
            initializer=_worker_bootstrap,
            initargs=(self.threads_per_worker, self.initializer, self.initargs),
        )
        try:
            # start the workers now: with 'fork' every worker is forked at the first submit,
            # before the caller starts any thread of its own (a progress bar's monitor)
            pool.submit(_noop).result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return pool

    def _restart_pool(self):
        """A fresh pool in place of a broken one (a worker died)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start_pool()

    def __enter__(self):
        self._pool = self._start_pool()
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
        until the backend's ``with`` block is left). A worker process that dies breaks the
        pool: the calls that finished are yielded, every call that was pending is rerun by
        itself in a fresh pool (see ``dead_worker_retries``), then the map goes on.
        """
        if self._pool is None:
            raise RuntimeError("ProcessBackend.imap_unordered used outside its 'with' block")
        tasks = iter(tasks)
        pending = {}  # future -> (k, args)
        refused = []  # (k, args) the pool refused: a worker died after the last wait, before submit

        def top_up():
            while not refused and len(pending) < self.max_in_flight:
                try:
                    k, args = next(tasks)
                except StopIteration:
                    return
                try:
                    pending[self._pool.submit(fn, k, *args)] = (k, args)
                except BrokenProcessPool:  # never started: rerun with the pool's broken calls
                    refused.append((k, args))

        top_up()
        while pending or refused:
            done, _ = wait(pending, return_when=FIRST_COMPLETED) if pending else (set(), set())
            broken, refused[:] = list(refused), []
            for fut in done:
                k, args = pending.pop(fut)
                if isinstance(fut.exception(), BrokenProcessPool):
                    broken.append((k, args))
                    continue
                yield k, fut.result()
            if broken:
                # the pool is broken: every other call in it ends at once, finished or failed alike
                wait(pending, return_when=ALL_COMPLETED)
                for fut, (k, args) in list(pending.items()):
                    del pending[fut]
                    if isinstance(fut.exception(), BrokenProcessPool):
                        broken.append((k, args))
                    else:
                        yield k, fut.result()
                yield from self._rerun_alone(fn, sorted(broken, key=lambda task: task[0]))
            top_up()

    def _rerun_alone(self, fn, tasks):
        """Rerun the calls of a broken pool one at a time in fresh pools: a death is then the call's own."""
        if self.dead_worker_retries == 0:
            raise WorkerDiedError(f"a worker process died (killed by a signal or os._exit, or out of memory?) while chunk(s) "
                                  f"{', '.join(str(k) for k, _ in tasks)} ran; finished chunks are kept, a rerun resumes")
        log.warning("a worker process died (killed, out of memory?) while chunk(s) %s ran; rerunning each alone",
                    ", ".join(str(k) for k, _ in tasks))
        broken = True
        for k, args in tasks:
            deaths = 0
            while True:
                if broken:
                    self._restart_pool()
                fut = self._pool.submit(fn, k, *args)
                broken = isinstance(fut.exception(), BrokenProcessPool)
                if not broken:
                    break
                deaths += 1
                if deaths >= self.dead_worker_retries:
                    raise WorkerDiedError(
                        f"chunk {k}: the worker process running it died, and again when it was rerun alone "
                        f"({deaths} time{'s' if deaths > 1 else ''}): killed by a signal or os._exit, or out of memory? "
                        f"(lower the chunk size or the workers); finished chunks are kept, a rerun resumes")
            yield k, fut.result()


def _worker_setup_plugin(name, threads, initializer, initargs, own_process=False):
    """A ``distributed.WorkerPlugin`` running :func:`_worker_bootstrap` on every worker (current,
    joining or restarted); ``own_process`` for an embedded cluster's workers. Built here so that
    ``distributed`` is imported only when used."""
    from distributed import WorkerPlugin

    class CannonadeWorkerSetup(WorkerPlugin):
        def __init__(self):
            self.name = name
            self.idempotent = False

        def setup(self, worker):
            _worker_bootstrap(threads, initializer, initargs, own_process)

    return CannonadeWorkerSetup()


def _task_prefix(fn):
    """A readable task-name prefix for the dashboard: the chunk function's name, without dashes."""
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__name__", "chunk")).replace("-", "_") or "chunk"


class DaskBackend:
    """Run tasks on a ``dask.distributed`` cluster: an embedded ``LocalCluster``, or an existing one.

    Parameters
    ----------
    workers : int
        Worker processes of the embedded ``LocalCluster`` (one thread each); with an existing
        cluster, the least number of tasks kept in flight is ``2 * workers`` (the cluster's own
        thread count when larger).
    initializer : callable, optional
        Run once in every worker process, as ``initializer(*initargs)``: the workers there are
        now and any that join or are restarted later (a ``distributed.WorkerPlugin``).
    initargs : tuple
    scheduler : str, optional
        ``None``, ``''`` or ``'local'``: start a ``LocalCluster`` on ``__enter__`` (closed on
        ``__exit__``). Else the address of a running scheduler (``'tcp://host:8786'``) or the
        path of its scheduler file (``dask scheduler --scheduler-file``, dask-jobqueue); the
        cluster is left running on ``__exit__``.
    threads_per_worker : int
        Native (BLAS/OpenMP) threads of each task; default 1. Each worker runs one task at a
        time whatever this is.
    client : distributed.Client, optional
        Use this client (and its cluster) instead; neither is closed on ``__exit__``.
    retries : int
        Times a task that *raised* is resubmitted before its exception reaches the caller
        (default 0: the original exception at once). A task whose worker *died* is rerun by the
        scheduler on another worker regardless; once its workers died more than
        ``distributed.scheduler.allowed-failures`` times (default 3), a
        :class:`~cannonade.exceptions.WorkerDiedError` naming the chunk stops the run.
    max_in_flight : int, optional
        Submitted but unfinished tasks at most; default ``2 x`` the cluster's threads (at least
        ``2 * workers``), re-read every few seconds as workers come and go.
    dashboard : bool
        Report the dashboard's link (False: none). The embedded cluster serves it on a free port;
        its pages need ``bokeh`` (without it, no link is reported).
    **options
        More keywords of ``distributed.LocalCluster`` (e.g. ``memory_limit='4GiB'``,
        ``local_directory``).

    Attributes
    ----------
    client : distributed.Client or None
        While inside the ``with`` block.
    dashboard_link : str or None
        The cluster dashboard's URL (also logged at INFO), None without a dashboard.
    """

    name = "dask"

    def __init__(self, workers=1, initializer=None, initargs=(), scheduler=None, threads_per_worker=1, client=None,
                 retries=0, max_in_flight=None, dashboard=True, **options):
        self.workers = validate_workers(workers)
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.scheduler = None if scheduler is None else str(scheduler).strip()
        self.threads_per_worker = max(1, int(threads_per_worker))
        self.retries = int(retries)
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {retries}")
        self._fixed_in_flight = int(max_in_flight) if max_in_flight else None
        self.dashboard = bool(dashboard)
        self.options = options
        self.client = None
        self.dashboard_link = None
        self._given_client = client
        self._cluster = None  # the LocalCluster this backend started (closed on exit)
        self._own_client = False
        self._plugin = None
        self._pending = {}
        self._threads = 0
        self._threads_checked = -float("inf")

    @property
    def local(self):
        """True if this backend starts its own ``LocalCluster``."""
        return self._given_client is None and self.scheduler in (None, "", LOCAL_SCHEDULER)

    @property
    def max_in_flight(self):
        """Submitted but unfinished tasks at most (see the class docstring)."""
        if self._fixed_in_flight:
            return self._fixed_in_flight
        if self.client is not None and time.monotonic() - self._threads_checked > 5.0:
            try:
                self._threads = int(sum(self.client.nthreads().values()))
            except Exception:  # a scheduler that does not answer now: keep the last count
                pass
            self._threads_checked = time.monotonic()
        return 2 * max(self.workers, self._threads)

    def __enter__(self):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError("the dask backend needs the 'distributed' package (pip install distributed)") from None
        try:
            self._connect()
            if self.initializer is not None:
                self._plugin = f"cannonade-setup-{uuid.uuid4().hex[:12]}"
                self.client.register_plugin(
                    _worker_setup_plugin(self._plugin, self.threads_per_worker, self.initializer, self.initargs,
                                         own_process=self._cluster is not None),
                    name=self._plugin,
                )
        except BaseException:
            self._close()
            raise
        return self

    def _connect(self):
        from distributed import Client, LocalCluster

        if self._given_client is not None:
            self.client = self._given_client
            where = f"the given client's cluster ({self.client.scheduler.address})"
        elif self.local:
            options = dict(self.options)
            options.setdefault("env", {var: str(self.threads_per_worker) for var in THREAD_ENV_VARS})
            # the dashboard on a free port (never a clash with another cluster on this machine)
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=":0", **options)
            self.client = Client(self._cluster)
            self._own_client = True
            where = f"a local dask cluster of {self.workers} worker process(es)"
        else:
            target = self.scheduler
            try:
                if "://" not in target and Path(target).is_file():
                    self.client = Client(scheduler_file=target)
                else:
                    self.client = Client(target)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(f"cannot reach the dask scheduler {target!r} (run.scheduler / --scheduler: "
                                  f"'local', a scheduler address tcp://HOST:PORT or a scheduler file): {exc}") from None
            self._own_client = True
            where = f"the dask scheduler at {self.client.scheduler.address}"
        self.dashboard_link = self._dashboard()
        self._threads_checked = -float("inf")
        log.info("running chunks on %s; dashboard: %s", where,
                 self.dashboard_link or "none (pip install bokeh for the dask dashboard)")

    def _dashboard(self):
        if not self.dashboard or (self.local and importlib.util.find_spec("bokeh") is None):
            return None  # the dashboard's pages need bokeh
        try:
            if "dashboard" not in self.client.scheduler_info().get("services", {}):
                return None  # no dashboard service on this scheduler (bokeh missing, or switched off)
            link = self.client.dashboard_link
        except Exception:
            return None
        return link or None

    def __exit__(self, *exc):
        self._close()
        return False

    def _close(self):
        client, self.client = self.client, None
        pending, self._pending = list(self._pending), {}
        try:
            if client is not None and pending:
                # queued tasks are dropped; a running one may finish (its part is written atomically)
                client.cancel(pending)
            if client is not None and self._plugin is not None and self._cluster is None:
                try:  # leave a cluster we only connected to as we found it
                    client.unregister_worker_plugin(self._plugin)
                except Exception:
                    pass
        finally:
            self._plugin = None
            if client is not None and self._own_client:
                client.close()
            self._own_client = False
            cluster, self._cluster = self._cluster, None
            if cluster is not None:
                cluster.close()

    def imap_unordered(self, fn, tasks):
        """Yield ``(k, fn(k, *args))`` as the calls finish, keeping at most ``max_in_flight`` submitted.

        An exception raised by a call is re-raised here as it was raised (after ``retries``
        resubmissions); the other calls are cancelled when the ``with`` block is left.
        """
        if self.client is None:
            raise RuntimeError("DaskBackend.imap_unordered used outside its 'with' block")
        from distributed import KilledWorker, as_completed

        client = self.client
        tasks = iter(tasks)
        pending = self._pending
        prefix = f"{_task_prefix(fn)}-{uuid.uuid4().hex[:8]}"
        done_iter = as_completed()

        def top_up():
            while len(pending) < self.max_in_flight:
                try:
                    k, args = next(tasks)
                except StopIteration:
                    return
                fut = client.submit(_call_with_threads, self.threads_per_worker, fn, k, *args, key=f"{prefix}-{k}",
                                    pure=False, retries=self.retries)
                pending[fut] = k
                done_iter.add(fut)

        try:
            top_up()
            for fut in done_iter:
                k = pending.pop(fut)
                try:
                    result = fut.result()  # the task's own exception, re-raised here
                except KilledWorker as exc:
                    raise WorkerDiedError(
                        f"chunk {k}: every dask worker that ran it died (out of memory? lower the chunk size or "
                        f"give the workers more memory); finished chunks are kept, a rerun resumes ({exc})") from None
                fut.release()
                yield k, result
                top_up()
        finally:
            if pending and self.client is not None:
                self.client.cancel(list(pending))
                pending.clear()


def choose_backend(scheduler="", default="serial"):
    """The backend for a ``scheduler`` setting (``run.scheduler``, ``--scheduler``).

    Parameters
    ----------
    scheduler : str or None
        ``''``/None: ``default``; ``'local'``: an embedded dask ``LocalCluster``; anything else: the
        address (or scheduler file) of a running dask scheduler.
    default : str
        The backend used without a scheduler (``'serial'`` or ``'process'``).

    Returns
    -------
    name : str
    options : dict
        Keywords for :func:`get_backend` / :meth:`ChunkedMap.run` (``{'scheduler': ...}`` for dask).
    """
    scheduler = str(scheduler or "").strip()
    if not scheduler:
        return default, {}
    return "dask", {"scheduler": scheduler}


@contextlib.contextmanager
def shared_cluster(name, options, workers=1):
    """Backend options under which several maps share one dask cluster.

    For ``name == 'dask'`` the cluster (an embedded ``LocalCluster``, or the connection to a running
    scheduler) is opened once here and every map run with the yielded options (``{'client': ...}``)
    uses it; it is closed when the ``with`` block ends. Any other backend: ``options`` unchanged.

    >>> name, options = choose_backend(run.cfg.run.scheduler)              # doctest: +SKIP
    >>> with shared_cluster(name, options, workers=2) as options:          # doctest: +SKIP
    ...     for model in models:
    ...         ChunkedMap(...).run(func, backend=name, workers=2, **options)
    """
    if name != "dask":
        yield dict(options)
        return
    with DaskBackend(workers=validate_workers(workers), **options) as backend:
        yield {"client": backend.client}


#: backend name -> class; one more entry (e.g. ``"dask"``) adds a backend
BACKENDS = {"serial": SerialBackend, "process": ProcessBackend, "dask": DaskBackend}


def get_backend(name="serial", workers=1, initializer=None, initargs=(), **options):
    """A backend by name.

    Parameters
    ----------
    name : {'serial', 'process', 'dask'}
        A key of :data:`BACKENDS`.
    workers : int
        Parallel workers (>= 1).
    initializer : callable, optional
        Run once per worker (in this process for ``serial``) as ``initializer(*initargs)``.
    initargs : tuple
    **options
        Backend-specific: ``threads_per_worker``, ``max_in_flight`` (``process``, ``dask``);
        ``dead_worker_retries`` (``process``); ``scheduler``, ``client``, ``retries``, ``dashboard``
        and ``LocalCluster`` keywords (``dask``).

    Returns
    -------
    SerialBackend, ProcessBackend or DaskBackend
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
