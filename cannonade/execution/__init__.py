"""Execution: one chunked, resumable, atomic map over chunks, on pluggable backends.

Every long job of the package (``cannonade ingest``, the pipeline's ``infer``
stage) is the same shape: cut the work into chunks, let each chunk write its own
part file atomically, skip the finished parts on a rerun, and assemble the parts
when all exist. :class:`ChunkedMap` is that shape, once::

    from cannonade.execution import ChunkedMap, StopRequested, get_backend

    cm = ChunkedMap(parts_dir, fingerprint, n_chunks, suffix=".npz")
    cm.run(func, args=lambda k: (...,), backend="process", workers=4,
           desc="infer", unit="spec", weight=lambda k: rows_in(k))
    for part in cm.parts():
        ...                                  # assemble, in chunk order
    cm.cleanup()

``func(k, part_path, *args(k))`` writes chunk ``k``'s part through
:func:`cannonade.util.atomic_path`, so a kill never leaves half a part. Where the
chunks run is a backend (:mod:`cannonade.execution.backends`): ``'serial'`` (this
process), ``'process'`` (a process pool created per run) or ``'dask'`` (a
``dask.distributed`` cluster: an embedded ``LocalCluster`` or a running scheduler;
docs/scale.md). :func:`choose_backend` turns a ``scheduler`` setting
(``run.scheduler``, ``--scheduler``) into a backend name and its options.

Where the Cannon's arrays live is :mod:`cannonade.execution.device`: ``array_namespace``
(``numpy`` or ``cupy`` for given arrays), ``get_namespace(device)``, ``to_device``,
``to_host`` and ``gpu_available`` (CuPy is optional and imported only when a GPU is asked for).

The process pool's workers (and an embedded ``LocalCluster``'s) keep freed memory for reuse
(:mod:`cannonade.execution.memory`: glibc's mmap and trim thresholds raised; a chunk's batch arrays
are then not page-faulted anew).

Layering: this package imports only the base modules (``cannonade.exceptions``,
``cannonade.util``); it knows nothing about spectra, models or catalogues.
"""

from cannonade.execution.backends import (
    BACKENDS,
    LOCAL_SCHEDULER,
    DaskBackend,
    ProcessBackend,
    SerialBackend,
    choose_backend,
    get_backend,
    mp_context,
    shared_cluster,
)
from cannonade.execution.chunked import ChunkedMap, StopRequested
from cannonade.execution.device import DEVICES, array_namespace, get_namespace, gpu_available, to_device, to_host

__all__ = [
    "ChunkedMap",
    "StopRequested",
    "get_backend",
    "SerialBackend",
    "ProcessBackend",
    "DaskBackend",
    "BACKENDS",
    "LOCAL_SCHEDULER",
    "choose_backend",
    "mp_context",
    "shared_cluster",
    "DEVICES",
    "array_namespace",
    "get_namespace",
    "to_device",
    "to_host",
    "gpu_available",
]
