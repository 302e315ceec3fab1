"""Recipes: the ordered stage lists of the papers' pipelines.

A recipe is a name and a tuple of stage modules; each stage module has ``NAME`` and
``execute(run) -> dict`` (the counts written to its marker), and optionally ``WORK_DIRS``
(run-directory folders of unfinished chunked work, removed when the stage is forced again).

Each stage module also declares what its outputs depend on, for its fingerprint
(:func:`cannonade.pipeline.fingerprints.stage_fingerprint`): ``CONFIG``, the configuration keys it
reads — a whole section (``"cuts"``) or one field (``"run.seed"``) — and ``INPUTS``, the keys
of the paths it reads from outside the run directory (catalogues, spectra, line windows). A
stage without ``CONFIG`` depends on the whole configuration (less ``run.out`` and
``run.workers``). The order of the stages matters: a stage's fingerprint includes the previous
one's, so a change redoes the first stage it touches and every stage after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cannonade.exceptions import ConfigError
from cannonade.pipeline.stages import (
    catalogue,
    clean,
    combine,
    crossmatch,
    cuts,
    dynamics,
    infer,
    ingest,
    labels,
    split,
    train,
)


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple

    @property
    def stage_names(self):
        return [s.NAME for s in self.stages]


# Wheeler et al. 2020 §2–§5.1: LAMOST spectra labelled with GALAH, dwarf and giant models.
WHEELER2020 = Recipe(
    "wheeler2020",
    (ingest, crossmatch, cuts, clean, split, labels, train, infer, combine, dynamics, catalogue),
)

RECIPES = {r.name: r for r in (WHEELER2020,)}


def recipe_for(cfg):
    """The recipe a config asks for (Wheeler 2020 is the default and, for now, the only one)."""
    name = getattr(cfg, "recipe", "wheeler2020")
    if name not in RECIPES:
        raise ConfigError(f"recipe {name!r} is unknown; recipes are {sorted(RECIPES)}")
    return RECIPES[name]
