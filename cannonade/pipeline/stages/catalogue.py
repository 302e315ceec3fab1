"""Stage 11, ``catalogue``: per-star and per-observation catalogues, FITS and/or Parquet (Wheeler+2020 Table 1).

With ``hats`` among ``[catalogue] formats`` the per-star catalogue is also written as a HATS
catalogue, ``catalogue/per_star_hats/`` (HEALPix-partitioned Parquet that LSDB opens).

Every column has a unit (``""``: dimensionless) and a description (``docs/catalogue.md``), and
every file carries the run's provenance (version, recipe, config fingerprint, the models'
training hashes, the input store, creation time; :mod:`cannonade.provenance`). The per-star
table gets one unambiguous set of radial velocities (``rv``/``rv_err`` from the target survey,
``radial_velocity_used``/``_err`` in the dynamics, Gaia's as ``gaia_radial_velocity``/``_error``)
and its distances in kpc only (Gaia's ``r_est``, ``r_lo``, ``r_hi`` in pc are the
``distance``, ``distance_lo``, ``distance_hi`` columns, ÷ 1000).
"""

from __future__ import annotations

from cannonade.cannon.model import CannonModel
from cannonade.catalogue import (
    HATS_FORMAT,
    infer_label_names,
    schema_for,
    write_catalogue,
    write_hats,
)
from cannonade.flags import FLAG_TABLE, RECOMMENDED_CUT, fits_header_cards
from cannonade.pipeline.stages.combine import rv_columns

NAME = "catalogue"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md); models: their training
# hashes in the provenance; the target and Gaia catalogues: RV column descriptions, Gaia column names
CONFIG = ("catalogue", "models", "dynamics.rv_column", "dynamics.gaia", "target.catalogue")
INPUTS = ("target.catalogue", "dynamics.gaia")


SCHEMA = "wheeler2020"
#: Gaia's own radial velocity, renamed so that it cannot be taken for the survey's ``rv`` or the
#: dynamics' ``radial_velocity_used``
GAIA_RENAMES = {"radial_velocity": "gaia_radial_velocity", "radial_velocity_error": "gaia_radial_velocity_error"}
#: Gaia's distances in pc, left out: they are ``distance``, ``distance_lo``, ``distance_hi`` [kpc] × 1000
GAIA_DISTANCES_PC = ("r_est", "r_lo", "r_hi")


def training_hashes(run):
    """{model name: SHA-256 of its training set} of the run's models (the ``infer`` marker's, if it records them)."""
    recorded = run.stage_info("infer").get("training_hash") if run.done("infer") else None
    if isinstance(recorded, dict) and set(recorded) == set(run.cfg.models):
        return recorded
    return {name: CannonModel.load(run.path("models", f"{name}.npz")).training_hash_ for name in run.cfg.models}


def describe_rv(run, table):
    """Name the target-catalogue columns ``rv`` and ``rv_err`` come from in their descriptions (in place)."""
    rv, err = rv_columns(run.cfg, run.table("target"))
    if "rv" in table.colnames and rv:
        table["rv"].description = (f"heliocentric radial velocity from the target catalogue's column {rv!r} "
                                   "(per star: S/N-weighted mean of its visits)")
    if "rv_err" in table.colnames:
        source = f"the target catalogue's column {err!r}" if err else "NaN: the target catalogue has no RV error column"
        table["rv_err"].description = f"1-sigma uncertainty of rv ({source}; per star: propagated through the weighted mean)"


def tidy_star_table(run, star):
    """The per-star table with one set of RV columns, distances in kpc and every Gaia column described.

    Gaia's ``radial_velocity``/``radial_velocity_error`` become ``gaia_radial_velocity``/
    ``gaia_radial_velocity_error``; Gaia's ``r_est``, ``r_lo``, ``r_hi`` [pc] are left out where
    ``distance``, ``distance_lo``, ``distance_hi`` [kpc] hold them; a Gaia column the schema does not
    know gets a description naming it.
    """
    if "distance" not in star.colnames:  # no dynamics stage output: nothing from Gaia
        return star
    gaia = run.table("gaia")
    gaia_names = {n: (f"gaia_{n}" if f"gaia_{n}" in star.colnames else n) for n in gaia.colnames}
    for old, new in GAIA_RENAMES.items():
        if gaia_names.get(old) == old and old in star.colnames and new not in star.colnames:
            star.rename_column(old, new)
            gaia_names[old] = new
    star.remove_columns([n for n in GAIA_DISTANCES_PC if gaia_names.get(n) == n and n in star.colnames])
    known = {c.name for c in schema_for(infer_label_names(star.colnames, SCHEMA), SCHEMA)}
    for original, name in gaia_names.items():
        if name in star.colnames and name not in known and not star[name].description:
            star[name].description = f"Gaia column {original!r} of the matched source (dynamics.gaia)"
    return star


def execute(run):
    star = tidy_star_table(run, run.read_run_table("per_star_dynamics.fits"))
    obs = run.read_run_table("per_observation.fits")
    prov = run.provenance(training_hash=training_hashes(run), input_store=run.path("target.h5"))
    written = []
    for table in (star, obs):  # the flag bits travel with the table (Parquet metadata) and in FITS header cards
        table.meta["flag_bits"] = {name: bit for name, bit, _ in FLAG_TABLE}
        table.meta["flag_cut"] = RECOMMENDED_CUT
        describe_rv(run, table)
    for fmt in run.cfg.catalogue.formats:
        if fmt == HATS_FORMAT:  # the per-star catalogue only, a directory (docs/catalogue.md, "HATS output")
            path = run.path("catalogue", "per_star_hats")
            written.append(str(write_hats(star, path, catalog_name="per_star", schema=SCHEMA, provenance=prov, overwrite=True)))
            continue
        for name, table in (("per_star", star), ("per_observation", obs)):
            path = run.path("catalogue", f"{name}.{fmt}")
            written.append(str(write_catalogue(table, path, schema=SCHEMA, header_cards=fits_header_cards(), provenance=prov)))
    run.log.info("[catalogue] wrote %s", ", ".join(written))
    return {"files": written, "n_stars": len(star), "n_observations": len(obs)}
