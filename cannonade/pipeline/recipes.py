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
from cannonade.pipeline.inputs import check_columns, check_scaling_columns
from cannonade.pipeline.stages import (
    catalogue,
    clean,
    clusters,
    combine,
    combined,
    common,
    crossmatch,
    cuts,
    dynamics,
    infer,
    ingest,
    ingest_reference,
    labels,
    scaled_infer,
    scaled_train,
    split,
    systematics,
    train,
)


@dataclass(frozen=True)
class Recipe:
    """A pipeline: its stage modules in order and the check of its configured columns
    (``check(cfg, target, reference, gaia)``, run before any work)."""

    name: str
    stages: tuple
    check: object = check_columns

    @property
    def stage_names(self):
        return [s.NAME for s in self.stages]


# Wheeler et al. 2020 §2–§5.1: LAMOST spectra labelled with GALAH, dwarf and giant models.
WHEELER2020 = Recipe(
    "wheeler2020",
    (ingest, crossmatch, cuts, clean, split, labels, train, infer, combine, dynamics, catalogue),
)

# Nandakumar et al. 2022 §3: APOGEE and GALAH on each other's scale, four models from one
# training set of common stars, two combined catalogues, systematics and cluster tables.
NANDAKUMAR2022 = Recipe(
    "nandakumar2022",
    (ingest, ingest_reference, common, scaled_train, scaled_infer, systematics, combined, clusters),
    check_scaling_columns,
)

RECIPES = {r.name: r for r in (WHEELER2020, NANDAKUMAR2022)}


def recipe_for(cfg):
    """The recipe a config asks for (``recipe = "..."``; Wheeler 2020 by default)."""
    name = cfg.recipe
    if name not in RECIPES:
        raise ConfigError(f"recipe {name!r} is unknown; recipes are {sorted(RECIPES)}")
    return RECIPES[name]
