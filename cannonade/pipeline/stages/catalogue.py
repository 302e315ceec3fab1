"""Stage 11, ``catalogue``: per-star and per-observation catalogues, FITS and/or Parquet (Wheeler+2020 Table 1)."""

from __future__ import annotations

from cannonade.catalogue import write_catalogue
from cannonade.flags import FLAG_TABLE, RECOMMENDED_CUT, fits_header_cards

NAME = "catalogue"


def execute(run):
    star = run.read_run_table("per_star_dynamics.fits")
    obs = run.read_run_table("per_observation.fits")
    written = []
    for table in (star, obs):  # the flag bits travel with the table (Parquet metadata) and in FITS header cards
        table.meta["flag_bits"] = {name: bit for name, bit, _ in FLAG_TABLE}
        table.meta["flag_cut"] = RECOMMENDED_CUT
    for fmt in run.cfg.catalogue.formats:
        for name, table in (("per_star", star), ("per_observation", obs)):
            path = run.path("catalogue", f"{name}.{fmt}")
            written.append(str(write_catalogue(table, path, schema="wheeler2020", header_cards=fits_header_cards())))
    run.log.info("[catalogue] wrote %s", ", ".join(written))
    return {"files": written, "n_stars": len(star), "n_observations": len(obs)}
