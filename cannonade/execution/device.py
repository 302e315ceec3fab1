"""Where the arrays of the Cannon's maths live: the host (NumPy) or a CUDA GPU (CuPy).

The training and the χ² reduction are written once, against an *array namespace* ``xp``:
``xp = array_namespace(X, flux)`` is ``numpy`` for NumPy arrays and ``cupy`` as soon as one
input is a CuPy array, and the code calls ``xp.einsum``, ``xp.linalg.solve``... CuPy mirrors
NumPy's API, so one function runs on either; a model's ``device`` (``"cpu"`` or ``"gpu"``)
only decides where its inputs are put (:func:`to_device`) and results come back from
(:func:`to_host`).

CuPy is optional (``pip install 'cannonade[gpu]'``) and never imported when this module is:
:func:`array_namespace` only looks for it among the modules already loaded (no CuPy array
can exist without it), and :func:`get_namespace` imports it the first time a GPU is asked for.
"""

from __future__ import annotations

import sys

import numpy as np

from cannonade.exceptions import DeviceError, ParameterError

__all__ = ["DEVICES", "GPU_EXTRA", "array_namespace", "get_namespace", "to_device", "to_host", "gpu_available",
           "check_device"]

#: the devices a model or a run can compute on
DEVICES = ("cpu", "gpu")
#: how to install what the GPU needs
GPU_EXTRA = "pip install 'cannonade[gpu]'"


def check_device(device, what="device"):
    """``device`` if it is one of :data:`DEVICES`, else ParameterError naming ``what``."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ParameterError(f"{what} must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    return device


def array_namespace(*arrays):
    """The module whose functions apply to ``arrays``: ``cupy`` if any is a CuPy array, else ``numpy``.

    Parameters
    ----------
    *arrays : array-like or None
        None and non-arrays (scalars) are ignored.

    Returns
    -------
    module
        ``numpy`` or ``cupy``.
    """
    cp = sys.modules.get("cupy")  # not imported: no array can be a CuPy array
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return np


def _import_cupy():
    """``cupy``, with a CUDA device visible; DeviceError (one line, naming the extra) otherwise."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CuPy built for another CUDA failing on import
        raise DeviceError(f"device 'gpu' needs CuPy, which is not importable ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); {GPU_EXTRA}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or the driver finds no device
        raise DeviceError(f"device 'gpu': CuPy sees no CUDA device ({type(exc).__name__}); check the driver and "
                          f"CUDA_VISIBLE_DEVICES, and that CuPy matches the CUDA version ({GPU_EXTRA})") from None
    if n < 1:
        raise DeviceError(f"device 'gpu': no CUDA device is visible (CUDA_VISIBLE_DEVICES?); {GPU_EXTRA}")
    return cupy


def get_namespace(device):
    """The array namespace of ``device``: ``numpy`` for ``"cpu"``, ``cupy`` for ``"gpu"``.

    Raises
    ------
    DeviceError
        ``"gpu"`` without CuPy or without a visible CUDA device (one line saying to
        ``pip install 'cannonade[gpu]'``).
    ParameterError
        Any other device.
    """
    if check_device(device) == "cpu":
        return np
    return _import_cupy()


def gpu_available():
    """True when ``device="gpu"`` can be used here: CuPy imports and sees a CUDA device."""
    try:
        get_namespace("gpu")
    except DeviceError:
        return False
    return True


def to_device(array, device):
    """``array`` on ``device``: a NumPy array for ``"cpu"`` (a CuPy array is copied back), a CuPy
    array for ``"gpu"`` (copied there once; an array already there is returned as it is).
    None stays None; dtypes are kept (float64 stays float64)."""
    if array is None:
        return None
    if get_namespace(device) is np:
        return to_host(array)
    return _import_cupy().asarray(array)


def to_host(array):
    """``array`` as a NumPy array: ``cupy.asnumpy`` of a CuPy array; anything else passes through
    unchanged (a NumPy array is not copied)."""
    if array_namespace(array) is np:
        return array
    return sys.modules["cupy"].asnumpy(array)
