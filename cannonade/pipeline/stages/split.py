"""Stage 5, ``split``: dwarf or giant model for every target observation (Wheeler+2020 Eq. 1).

The split uses the target pipeline's Teff and log g. An observation without them (missing, NaN,
or a survey sentinel such as LASP's −9999) is 'either': every model is tried and the lowest
χ²/dof wins at inference.
"""

from __future__ import annotations

import numpy as np

from cannonade.pipeline.inputs import column

NAME = "split"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md)
CONFIG = ("split", "models", "target.catalogue", "target.teff_column", "target.logg_column")
INPUTS = ("target.catalogue",)
EITHER = "either"


def is_giant(teff, logg):
    """Wheeler+2020 Eq. 1: giant if log g is below 4.18 (Teff < 5200 K) or below −6e-4 Teff + 7.3.

    teff, logg : (n,) float -> (n,) bool; NaN inputs give False (see :func:`classify`).
    """
    teff = np.asarray(teff, dtype=float)
    logg = np.asarray(logg, dtype=float)
    boundary = np.where(teff < 5200.0, 4.18, -6e-4 * teff + 7.3)
    with np.errstate(invalid="ignore"):
        return logg < boundary


def classify(teff, logg):
    """'giant', 'dwarf', or 'either' where Teff or log g is not finite. (n,) str."""
    cls = np.where(is_giant(teff, logg), "giant", "dwarf")
    return np.where(np.isfinite(teff) & np.isfinite(logg), cls, EITHER).astype("U8")


def execute(run):
    t = run.cfg.target
    tgt = run.table("target")
    if run.cfg.split.method == "none":
        cls = np.full(len(tgt), next(iter(run.cfg.models)), dtype="U32")
    else:
        cls = classify(column(tgt, t.teff_column), column(tgt, t.logg_column))
    run.write_arrays("split.npz", model_class=cls)
    counts = {str(c): int((cls == c).sum()) for c in np.unique(cls)}
    run.log.info("[split] target observations per model (Wheeler+2020 Eq. 1): %s", counts)
    return {"counts": counts}


def read_classes(run):
    """Model class of every target-catalogue row, as written by this stage."""
    with np.load(run.path("split.npz"), allow_pickle=False) as d:
        return d["model_class"]
