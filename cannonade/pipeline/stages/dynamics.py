"""Stage 10, ``dynamics``: Gaia cross-match, Galactocentric coordinates and actions (Wheeler+2020 §5.1)."""

from __future__ import annotations

import numpy as np

from cannonade.galaxy.kinematics import add_dynamics

NAME = "dynamics"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md)
CONFIG = ("dynamics", "run.seed")
INPUTS = ("dynamics.gaia",)


def execute(run):
    d = run.cfg.dynamics
    star = run.read_run_table("per_star.fits")
    if not (d.enabled and d.gaia):
        run.write_table(star, "per_star_dynamics.fits")
        return {"skipped": True}
    # with run.scheduler, the orbit chunks run on the dask cluster (docs/scale.md); the same results
    out = add_dynamics(star, run.table("gaia"), n_samples=d.n_samples, seed=run.cfg.run.seed, radius_arcsec=d.radius_arcsec,
                       rv_column="rv" if "rv" in star.colnames else None, workers=run.cfg.run.workers,
                       scheduler=run.cfg.run.scheduler, action_method=d.action_method)
    run.write_table(out, "per_star_dynamics.fits")
    n_match = int(np.isfinite(np.asarray(out["gaia_sep_arcsec"], float)).sum()) if "gaia_sep_arcsec" in out.colnames else 0
    n_unbound = int(np.asarray(out["unbound"]).sum()) if "unbound" in out.colnames else 0
    run.log.info("[dynamics] %d of %d stars matched to Gaia; %d unbound", n_match, len(out), n_unbound)
    return {"n_stars": len(out), "n_gaia_matched": n_match, "n_unbound": n_unbound}
