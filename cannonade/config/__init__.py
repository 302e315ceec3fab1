"""The run configuration: typed sections (frozen dataclasses) loaded from TOML, and cut expressions.

::

    from cannonade.config import load_config
    cfg = load_config("run.toml")      # RunConfig; cfg.target.catalogue is a resolved Path
"""

from cannonade.config.expressions import FUNCTIONS, evaluate_cut, expression_names, resolve_column
from cannonade.config.loader import as_toml_dict, config_from_dict, load_config
from cannonade.config.sections import (
    DWARF_LABELS,
    GIANT_LABELS,
    CalibrationSection,
    CatalogueSection,
    CleanSection,
    CrossmatchSection,
    CutsSection,
    DerivedLabel,
    DynamicsSection,
    LabelsSection,
    ModelSpec,
    ReferenceSection,
    RunConfig,
    RunSection,
    ScalingSection,
    SplitSection,
    TargetSection,
    TrainingSection,
)

__all__ = [
    "load_config", "config_from_dict", "as_toml_dict", "RunConfig", "RunSection", "TargetSection",
    "ReferenceSection", "CrossmatchSection", "CutsSection", "CleanSection", "SplitSection", "DerivedLabel",
    "LabelsSection", "ModelSpec", "TrainingSection", "CalibrationSection", "DynamicsSection", "CatalogueSection", "ScalingSection",
    "DWARF_LABELS", "GIANT_LABELS", "evaluate_cut", "expression_names", "resolve_column", "FUNCTIONS",
]
