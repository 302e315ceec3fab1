"""The staged, resumable label-transfer pipeline (``cannonade run CONFIG.toml``).

- :mod:`~cannonade.pipeline.runner`: the run directory, markers, log and loop (:class:`Run`);
- :mod:`~cannonade.pipeline.recipes`: the papers' stage lists (Wheeler et al. 2020);
- :mod:`~cannonade.pipeline.stages`: one module per stage, short glue over the library's pure functions.
"""

from cannonade.pipeline.recipes import RECIPES, WHEELER2020, Recipe
from cannonade.pipeline.runner import Run, run_pipeline

STAGES = WHEELER2020.stage_names

__all__ = ["Run", "run_pipeline", "STAGES", "RECIPES", "WHEELER2020", "Recipe"]
