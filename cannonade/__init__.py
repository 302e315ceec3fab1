"""Cannonade: The Cannon at survey scale.

The public core::

    from cannonade import CannonModel, cross_validate
"""

from cannonade._version import __version__

from cannonade.exceptions import (  # noqa: E402
    CannonadeError,
    CatalogueError,
    ColumnError,
    ConfigError,
    LabelError,
    LineListError,
    ModelFileError,
    NotFittedError,
    ShapeError,
    SimulationWriteError,
    SpectrumFormatError,
    StoreFormatError,
    TrainingSetError,
)
from cannonade.cannon.model import CannonModel, InferenceResult  # noqa: E402
from cannonade.cannon.crossval import CVResult, cross_validate  # noqa: E402

__all__ = [
    "CannonModel",
    "InferenceResult",
    "cross_validate",
    "CVResult",
    "CannonadeError",
    "CatalogueError",
    "ColumnError",
    "ConfigError",
    "LabelError",
    "LineListError",
    "ModelFileError",
    "NotFittedError",
    "ShapeError",
    "SimulationWriteError",
    "SpectrumFormatError",
    "StoreFormatError",
    "TrainingSetError",
    "__version__",
]
