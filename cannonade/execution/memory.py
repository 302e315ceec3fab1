"""The C allocator of a worker process: keep freed arrays' memory for the next chunk's arrays.

A chunk of spectra allocates and frees the same few arrays of 1-30 MB again and again (the
batch temporaries of resampling and continuum fitting). glibc's ``malloc`` serves blocks above
its *mmap threshold* (128 KiB at start, raised only as far as blocks freed) straight from the
kernel and hands the top of its heap back above its *trim threshold*, so every such array costs
fresh, zeroed pages: measured on ingest (30 000 mock LAMOST spectra, 2 workers), the workers spent
4.2 s of 20.5 s CPU in the kernel, 20 % of the run. Raising both thresholds keeps those pages in
the process: 0.7 s in the kernel and 1.2x the spectra per second (``benchmarks/README.md``).

Applied only to processes this package starts (the process pool's workers, an embedded dask
``LocalCluster``'s workers); never at import, and never to a cluster the user runs (dask sets
its own ``MALLOC_TRIM_THRESHOLD_`` there). A worker's extra memory is bounded by the thresholds.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD", "keep_freed_memory", "keeps_freed_memory"]

#: blocks larger than this come straight from the kernel (one large array at most: a chunk's rows)
MMAP_THRESHOLD = 32 << 20
#: free memory at the top of the heap kept for reuse up to this much (more than a LAMOST chunk's
#: peak of temporaries: at 64 MB the heap still shrank and regrew, ~10 page faults per spectrum)
TRIM_THRESHOLD = 256 << 20
#: extra memory asked of the kernel each time the heap grows
TOP_PAD = 32 << 20

# mallopt's parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_APPLIED = []  # [True] once keep_freed_memory has set the thresholds in this process


def keeps_freed_memory():
    """True if :func:`keep_freed_memory` has raised the thresholds in this process."""
    return bool(_APPLIED)


def keep_freed_memory(mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD, top_pad=TOP_PAD):
    """Raise glibc's mmap and trim thresholds in this process (see the module docstring).

    Parameters
    ----------
    mmap_threshold, trim_threshold, top_pad : int
        Bytes (``mallopt``'s ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``, ``M_TOP_PAD``).

    Returns
    -------
    bool
        True if all three were set: Linux with glibc. Elsewhere (macOS, Windows, musl) nothing
        is changed and False is returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's name (find_library would run ldconfig)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl names it otherwise; its mallopt does nothing)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting it also stops glibc from moving it on its own
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    ok &= mallopt(_M_TOP_PAD, int(top_pad)) == 1
    if ok and not _APPLIED:
        _APPLIED.append(True)
    return bool(ok)
