"""Stage ``combined`` (Nandakumar+2022 §3.6, Table A1): the two combined catalogues.

``catalogue/combined_<target>_scale`` (e.g. APOGEE-scaled: ACAA for APOGEE spectra, GCAA for
GALAH spectra) and ``catalogue/combined_<reference>_scale`` (ACGS + GCGS), one row per
spectrum of either survey with a catalogue row (a common star appears once per survey;
``flag_id`` says which: 1 for the target survey's spectra — APOGEE in the paper — and 0 for
the reference survey's), in the ``nandakumar2022`` schema: the Cannon labels
(``<label>Cann``, calibrated ``e_<label>Cann``) beside the survey's own (``<label>``,
``e_<label>``), ``r_chi_sq``, ``snrCann``, ``Cannon_distance`` (Eq. 5),
``flag_Cannon_dist``, ``flag_spectra`` (the survey's spectrum flag, e.g. APOGEE STARFLAG),
``flag_sp_aspcap`` (ASPCAPFLAG / flag_sp), ``flag_survey`` (1: an invalid survey label),
``flag_training`` (0: in the training set), ``snr`` (the survey's), plus ``star_id`` (the
id the surveys share, for cluster lists) and Cannonade's ``flags`` bitmask.
"""

from __future__ import annotations

import numpy as np

from cannonade.flags import fits_header_cards
from cannonade.pipeline.inputs import column, has_column
from cannonade.pipeline.stages.common import read_common, survey_labels
from cannonade.pipeline.stages.scaled_infer import read_model_result
from cannonade.pipeline.stages.scaled_train import model_name

NAME = "combined"
CONFIG = ("catalogue", "scaling", "target.star_column",
          "target.catalogue", "reference.catalogue",
          "target.survey", "target.id_column", "target.snr_column", "target.ra_column", "target.dec_column", "target.columns",
          "reference.survey", "reference.id_column", "reference.ra_column", "reference.dec_column", "reference.columns")
INPUTS = ("target.catalogue", "reference.catalogue")


def _int_column(table, name, aliases):
    if not name or not has_column(table, name, aliases):
        return np.zeros(len(table), dtype=np.int64)
    v = column(table, name, aliases)
    return np.where(np.isfinite(v), v, 0).astype(np.int64)


def side_rows(run, side, scale_side, training_rows):
    """The catalogue rows of ``side``'s spectra, labelled on ``scale_side``'s scale, as a Table."""
    from astropy.table import Table

    cfg = run.cfg
    sec = getattr(cfg, side)
    sc = cfg.scaling
    table = run.table(side)
    with np.load(run.path("store_rows.npz"), allow_pickle=False) as d:
        srow = d[side]
    have = np.flatnonzero(srow >= 0)
    res = read_model_result(run, model_name(cfg, side, scale_side))
    idx = srow[have]
    labs = list(sc.labels)
    values, errors = survey_labels(run, side)
    t = Table()
    t["unique_id"] = column(table, sec.id_column, sec.columns, kind="text")[have]
    star_col = sec.star_column if side == "target" else sc.reference_star_column
    t["star_id"] = column(table, star_col, sec.columns, kind="text")[have] if star_col and has_column(table, star_col, sec.columns) else t["unique_id"]
    t["ra"] = column(table, sec.ra_column, sec.columns)[have]
    t["dec"] = column(table, sec.dec_column, sec.columns)[have]
    for k, lab in enumerate(labs):
        t[f"{lab}Cann"] = res["labels"][idx, k]
        t[f"e_{lab}Cann"] = res["errors"][idx, k]
    t["r_chi_sq"] = res["chi2"][idx] / np.maximum(res["dof"][idx], 1)
    t["snrCann"] = res["snr"][idx]
    t["Cannon_distance"] = res["train_distance"][idx]
    t["flag_id"] = np.full(len(have), 1 if side == "target" else 0, dtype=np.int64)
    t["flag_Cannon_dist"] = res["far_from_training"][idx].astype(np.int64)
    t["flag_spectra"] = _int_column(table, getattr(sc, f"{side}_spectra_flag"), sec.columns)[have]
    t["flag_sp_aspcap"] = _int_column(table, getattr(sc, f"{side}_survey_flag"), sec.columns)[have]
    t["flag_survey"] = (~np.all(np.isfinite(values[have]), axis=1)).astype(np.int64)
    t["flag_training"] = np.where(np.isin(have, training_rows), 0, 1).astype(np.int64)
    for k, lab in enumerate(labs):
        t[lab] = values[have, k]
        t[f"e_{lab}"] = errors[have, k]
    snr_col = cfg.target.snr_column if side == "target" else sc.reference_snr_column
    t["snr"] = column(table, snr_col, sec.columns)[have] if snr_col and has_column(table, snr_col, sec.columns) else np.full(len(have), np.nan)
    t["flags"] = res["flags"][idx]
    t["star_id"].description = "the id both surveys share (2MASS designation: APOGEE_ID, GALAH star_id), for cluster member lists"
    t["flags"].description = "bitmask of cannonade.flags (FLAGBnn header cards); recommended cut flags == 0"
    return t


def execute(run):
    from astropy.table import vstack

    cfg = run.cfg
    cs = read_common(run)
    train = np.asarray(cs["in_training"], bool)
    training_rows = {"target": np.asarray(cs["target_row"])[train], "reference": np.asarray(cs["reference_row"])[train]}
    run.path("catalogue").mkdir(exist_ok=True)
    written, info = [], {}
    from cannonade.catalogue.formats import CATALOGUE_FORMATS
    from cannonade.catalogue.writers import write_catalogue

    hashes = {}
    for scale_side in ("target", "reference"):
        survey = getattr(cfg, scale_side).survey
        parts = [side_rows(run, side, scale_side, training_rows[side]) for side in ("target", "reference")]
        table = vstack(parts)
        names = [model_name(cfg, side, scale_side) for side in ("target", "reference")]
        for n in names:
            from cannonade.cannon.model import CannonModel

            hashes[n] = CannonModel.load(run.path("models", f"{n}.npz")).training_hash_
        prov = run.provenance(training_hash={n: hashes[n] for n in names},
                              input_store=[str(run.path("target.h5")), str(run.path("reference.h5"))])
        for fmt in [f for f in cfg.catalogue.formats if f in CATALOGUE_FORMATS]:  # files ('hats': wheeler2020's per-star only)
            path = run.path("catalogue", f"combined_{survey}_scale.{fmt}")
            written.append(str(write_catalogue(table, path, schema="nandakumar2022", label_names=list(cfg.scaling.labels),
                                               header_cards=fits_header_cards(), provenance=prov)))
        info[f"combined_{survey}_scale"] = {"n_rows": len(table), "models": names,
                                            "n_flag_cannon_dist": int(np.asarray(table["flag_Cannon_dist"]).sum())}
        run.log.info("[combined] combined_%s_scale: %d rows (%s + %s)", survey, len(table), *names)
    info["files"] = written
    return info
