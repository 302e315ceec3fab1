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
    """A training set too small or empty for the model asked for."""


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


class SpectraMismatchError(CannonadeError, ValueError):
    """Spectra prepared differently from a model's training spectra (wavelength grid,
    continuum normalisation or survey); the message names every difference."""
