"""Cannonade: The Cannon at survey scale.

The public core::

    from cannonade import CannonModel, cross_validate
"""

__version__ = "0.1.0"

from .exceptions import (  # noqa: E402
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
from .model import CannonModel, InferenceResult  # noqa: E402
from .validation import CVResult, cross_validate  # noqa: E402

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
