"""Named exceptions raised by Cannonade.

Every error a user can trigger with bad input derives from :class:`CannonadeError`,
so callers can catch them all, and each message names the file, star, label or
column at fault.
"""


class CannonadeError(Exception):
    """Base class of every Cannonade error."""


class ShapeError(CannonadeError, ValueError):
    """Arrays whose shapes do not agree (the message states the shapes)."""


class LabelError(CannonadeError, ValueError):
    """Training labels that are non-finite, missing or unknown (names the label/star)."""


class TrainingSetError(CannonadeError, ValueError):
    """A training set too small or empty for the model asked for, or one that leaves the model
    no usable pixel (names the cause)."""


class ParameterError(CannonadeError, ValueError):
    """A parameter outside its allowed values (names the parameter, the value and what is
    allowed), e.g. a negative regularisation or ``k < 2`` folds."""


class NotFittedError(CannonadeError, RuntimeError):
    """A model used (infer, predict, save) before ``fit``."""


class ModelFileError(CannonadeError, IOError):
    """A saved model file that is truncated, corrupt or from an unknown version."""


class SpectrumFormatError(CannonadeError, IOError):
    """A spectrum file that cannot be read: corrupt, truncated or of unknown layout."""


class ConfigError(CannonadeError, ValueError):
    """A run configuration with a bad key, value or column (names the key)."""


class ColumnError(CannonadeError, KeyError):
    """A catalogue column that does not exist (names it and the columns that do)."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CatalogueError(CannonadeError, ValueError):
    """A catalogue that cannot be written or read (names the file or column)."""


class LineListError(CannonadeError, ValueError):
    """A line-window file that is missing, malformed or has an empty/inverted window."""


class StoreFormatError(CannonadeError, IOError):
    """A spectra store that is missing, corrupt, or not in the cannonade layout (names the file)."""


class SimulationWriteError(CannonadeError, IOError):
    """A mock-survey file that cannot be written (names the file and the reason)."""


class DiskFullError(CannonadeError, OSError):
    """A write that ran out of disk space or quota (``ENOSPC``/``EDQUOT``). Names the file; the file
    it would have replaced is unchanged and no partial file is left in its place: free space and
    rerun (a pipeline run resumes)."""


class SpectraMismatchError(CannonadeError, ValueError):
    """Spectra prepared differently from a model's training spectra (wavelength grid,
    continuum normalisation or survey); the message names every difference."""


class DeviceError(CannonadeError, RuntimeError):
    """A device that cannot be used: ``device="gpu"`` without CuPy or without a visible CUDA
    device (the message says to ``pip install 'cannonade[gpu]'``)."""


class SelectionError(CannonadeError, ValueError):
    """A cut, bin or pair sample that leaves too few stars for an analysis (names the cut and
    the count), e.g. no wide binaries left after the dwarf and ΔT_eff cuts."""


class OutputError(CannonadeError, OSError):
    """An output that cannot be written where it was asked for: a directory where a file is to
    be written, a file where a folder is needed (or on the way to it), a folder without write
    permission. Names the path and what is wrong with it; nothing is written."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file that exists and may not be replaced (``overwrite=False``); names the file.
    Also a ``FileExistsError``, so ``except FileExistsError`` still catches it."""


class UnknownReaderError(CannonadeError, KeyError):
    """A spectrum reader name that is not registered (names it and the registered readers).
    Also a ``KeyError``, as raised before."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class WorkerDiedError(CannonadeError, RuntimeError):
    """A worker process running a chunk died (killed, out of memory, ``os._exit``) more often than
    the backend retries it. Names the chunk; the finished chunks are kept, a rerun resumes."""
