"""Stage 11, ``catalogue``: per-star and per-observation catalogues, FITS and/or Parquet (Wheeler+2020 Table 1)."""

from __future__ import annotations

from cannonade.catalogue import write_catalogue

NAME = "catalogue"


def execute(run):
    star = run.read_run_table("per_star_dynamics.fits")
    obs = run.read_run_table("per_observation.fits")
    written = []
    for fmt in run.cfg.catalogue.formats:
        for name, table in (("per_star", star), ("per_observation", obs)):
            written.append(str(write_catalogue(table, run.path("catalogue", f"{name}.{fmt}"), schema="wheeler2020")))
    run.log.info("[catalogue] wrote %s", ", ".join(written))
    return {"files": written, "n_stars": len(star), "n_observations": len(obs)}
