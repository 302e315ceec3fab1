"""Stage ``common`` (Nandakumar+2022 §3.2): the stars both surveys observed, their labels, the training set.

Common stars are matched by id (APOGEE_ID ↔ GALAH star_id, the 2MASS designation) or on
the sky; each survey's quality cuts (§3.2: GALAH snr_c2_iraf > 25, chi2_sp < 4, flag_sp = 0;
APOGEE SNR > 80, ASPCAPFLAG without bits 16–20, 23, STARFLAG without bits 0, 3, 4, 9–13, 17)
are expressions of ``cuts.target`` / ``cuts.reference``. A training star also needs a stored
spectrum in both surveys. Writes ``common.fits``: one row per common star, the store row
of its spectrum in each survey, both surveys' labels and errors, and ``in_training``; and
``store_rows.npz``: the store row of every catalogue row of each survey (−1: none).
"""

from __future__ import annotations

import numpy as np

from cannonade.config import evaluate_cut
from cannonade.exceptions import TrainingSetError
from cannonade.galaxy.crossmatch import best_match
from cannonade.pipeline.inputs import column, has_column
from cannonade.spectra.store import SpectraStore

NAME = "common"
CONFIG = ("crossmatch", "cuts", "scaling.labels", "scaling.missing_labels", "training.min_stars",
          "target.catalogue", "target.columns", "target.id_column", "target.ra_column", "target.dec_column",
          "target.error_prefix", "target.file_column",
          "reference.catalogue", "reference.columns", "reference.id_column", "reference.ra_column",
          "reference.dec_column", "reference.error_prefix")
INPUTS = ("target.catalogue", "reference.catalogue")
SIDES = ("target", "reference")


def match_common(run):
    """(target row, reference row) of every common star: by id or within the sky radius."""
    cfg = run.cfg
    t, r, xm = cfg.target, cfg.reference, cfg.crossmatch
    tgt, ref = run.table("target"), run.table("reference")
    if xm.method == "id":
        ids_t = column(tgt, xm.target_id_column, t.columns, kind="text")
        ids_r = column(ref, xm.reference_id_column or r.id_column, r.columns, kind="text")
        first_r = {}
        for j, i in enumerate(ids_r.tolist()):
            if i:
                first_r.setdefault(i, j)
        first_t = {}
        for j, i in enumerate(ids_t.tolist()):
            if i:
                first_t.setdefault(i, j)
        both = sorted(set(first_t) & set(first_r))
        return np.array([first_t[i] for i in both], dtype=int), np.array([first_r[i] for i in both], dtype=int)
    bm = best_match(column(ref, r.ra_column, r.columns), column(ref, r.dec_column, r.columns),
                    column(tgt, t.ra_column, t.columns), column(tgt, t.dec_column, t.columns), xm.radius_arcsec,
                    one_to_one=True)
    ok = bm.index >= 0
    return bm.index[ok].astype(int), np.flatnonzero(ok)


def store_rows(run, side):
    """Store row of every catalogue row of ``side`` (−1: no stored spectrum), by id (obj_id)."""
    cfg = run.cfg
    sec = getattr(cfg, side)
    table = run.table(side)
    path = run.path(f"{side}.h5")
    with SpectraStore(path) as st:
        obj = st.column("obj_id")
    index = {}
    for i, o in enumerate(obj.tolist()):
        index.setdefault(o, i)
    ids = column(table, sec.id_column, sec.columns, kind="text")
    rows = np.array([index.get(i, -1) for i in ids.tolist()], dtype=int)
    if side == "target" and (rows < 0).all() and has_column(table, sec.file_column, sec.columns):
        # a store keyed by file name (obj_id not in the catalogue): match on the file's name
        from cannonade.pipeline.stages.ingest import target_rows

        rows = target_rows(run)
    return rows


def survey_labels(run, side):
    """(n, L) labels and (n, L) errors of every catalogue row of ``side`` (errors 0 where absent)."""
    cfg = run.cfg
    sec = getattr(cfg, side)
    table = run.table(side)
    labs = cfg.scaling.labels
    values = np.column_stack([column(table, lab, sec.columns) for lab in labs])
    errors = np.column_stack([
        np.nan_to_num(column(table, sec.error_prefix + lab, sec.columns), nan=0.0)
        if has_column(table, sec.error_prefix + lab, sec.columns) else np.zeros(len(table)) for lab in labs])
    return values, errors


def passes_cuts(run, side):
    sec = getattr(run.cfg, side)
    table = run.table(side)
    keep = np.ones(len(table), dtype=bool)
    for expr in getattr(run.cfg.cuts, side):
        keep &= evaluate_cut(expr, table, sec.columns, f"{side} catalogue")
    return keep


def execute(run):
    from astropy.table import Table

    cfg = run.cfg
    it, ir = match_common(run)
    rows = {side: store_rows(run, side) for side in SIDES}
    run.write_arrays("store_rows.npz", target=rows["target"], reference=rows["reference"])
    lab = {side: survey_labels(run, side) for side in SIDES}
    cut = {side: passes_cuts(run, side) for side in SIDES}
    out = Table()
    out["target_row"], out["reference_row"] = it, ir
    out["target_store_row"], out["reference_store_row"] = rows["target"][it], rows["reference"][ir]
    for side, idx in (("target", it), ("reference", ir)):
        values, errors = lab[side]
        for k, name in enumerate(cfg.scaling.labels):
            out[f"{side}_{name}"] = values[idx, k]
            out[f"{side}_e_{name}"] = errors[idx, k]
    t_ok = np.all(np.isfinite(lab["target"][0][it]), axis=1)
    r_vals = lab["reference"][0][ir]
    # GALAH flags single abundances: a star keeps its other labels (imputed while training) or is dropped
    r_ok = np.any(np.isfinite(r_vals), axis=1) if cfg.scaling.missing_labels == "impute" else np.all(np.isfinite(r_vals), axis=1)
    train = cut["target"][it] & cut["reference"][ir] & (out["target_store_row"] >= 0) & (out["reference_store_row"] >= 0) & t_ok & r_ok
    out["in_training"] = train
    n = int(train.sum())
    if n < cfg.training.min_stars:
        raise TrainingSetError(f"only {n} common stars pass both surveys' cuts with spectra in both stores "
                               f"(training.min_stars = {cfg.training.min_stars}); {len(it)} common stars before the cuts")
    run.write_table(out, "common.fits")
    info = {"n_common": len(it), "n_pass_target_cuts": int(cut["target"][it].sum()),
            "n_pass_reference_cuts": int(cut["reference"][ir].sum()), "n_training": n,
            "n_with_missing_reference_labels": int((train & ~np.all(np.isfinite(r_vals), axis=1)).sum())}
    run.log.info("[common] %d common stars, %d pass both surveys' cuts with both spectra: the training set "
                 "(%d with a missing %s label, imputed)", len(it), n, info["n_with_missing_reference_labels"], cfg.reference.survey)
    return info


def read_common(run):
    """The common stars table written by this stage."""
    return run.read_run_table("common.fits")
