"""Cannonade: The Cannon at survey scale.

The public core::

    from cannonade import CannonModel, cross_validate

    m = CannonModel(label_names, order=2).fit(labels, flux, ivar)
    m.calibrate(cross_validate(m, labels, flux, ivar))   # calibrated errors and flags (docs/calibration.md)
    r = m.infer(flux, ivar)                              # r.errors, r.flags (cannonade.flags)
"""

from cannonade._version import __version__

from cannonade.exceptions import (  # noqa: E402
    CannonadeError,
    CatalogueError,
    ColumnError,
    ConfigError,
    DeviceError,
    DiskFullError,
    LabelError,
    LineListError,
    ModelFileError,
    NotFittedError,
    OutputError,
    OutputExistsError,
    ParameterError,
    ShapeError,
    SimulationWriteError,
    SpectrumFormatError,
    StoreFormatError,
    TrainingSetError,
)
from cannonade.cannon.model import CannonModel, InferenceResult  # noqa: E402
from cannonade.cannon.crossval import CVResult, cross_validate  # noqa: E402
from cannonade.cannon.calibration import Calibration, CalibrationError, UncalibratedWarning  # noqa: E402
from cannonade.flags import Flag, FlagError  # noqa: E402

__all__ = [
    "CannonModel",
    "InferenceResult",
    "cross_validate",
    "CVResult",
    "Calibration",
    "CalibrationError",
    "UncalibratedWarning",
    "Flag",
    "FlagError",
    "CannonadeError",
    "CatalogueError",
    "ColumnError",
    "ConfigError",
    "DeviceError",
    "DiskFullError",
    "LabelError",
    "LineListError",
    "ModelFileError",
    "NotFittedError",
    "OutputError",
    "OutputExistsError",
    "ParameterError",
    "ShapeError",
    "SimulationWriteError",
    "SpectrumFormatError",
    "StoreFormatError",
    "TrainingSetError",
    "__version__",
]
