"""Stage 9, ``combine``: the per-observation table and S/N-weighted repeat visits per star (Wheeler+2020 §5.1).

A star's visits are combined within the model of its best-S/N visit (see
:mod:`cannonade.catalogue.visits`); radial velocities and their errors are carried, so the
dynamics stage resamples the RV in its Monte Carlo.

Errors: the noise parts of the visits' calibrated errors (``Calibration.scaled_noise``) combine
like independent measurements; the model-mismatch part does not average down over visits of one
star, so it is added once, at the best visit's S/N (``Calibration.total``). Flags: bits about a
visit's fit (not converged, singular, missing pixels, high χ², outside the training box,
uncalibrated) are OR-ed over the combined visits; the bits about the labels (extrapolated — of a
stellar parameter; each abundance has its own ``<x>_fe_extrap`` —, Kiel, far from training),
LOW_SNR and HIGH_WINDOW_CHI2 are recomputed for the combined star.
"""

from __future__ import annotations

import numpy as np

from cannonade.cannon.extrapolation import parameter_mask
from cannonade.catalogue.visits import argmax_per_group, combine_errors, combine_visits
from cannonade.flags import Flag, compose
from cannonade.pipeline.inputs import column
from cannonade.pipeline.stages.infer import load_models, read_parts
from cannonade.pipeline.stages.ingest import target_rows
from cannonade.tables import colnames

NAME = "combine"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md)
CONFIG = ("models", "calibration.window_chi2_factor", "dynamics.rv_column", "target.catalogue", "target.file_column",
          "target.id_column", "target.star_column", "target.snr_column", "target.ra_column", "target.dec_column")
INPUTS = ("target.catalogue",)


def rv_columns(cfg, table):
    """(rv column, rv error column) of the target catalogue; None where absent."""
    rv = cfg.dynamics.rv_column
    if not rv or rv not in colnames(table):
        return None, None
    err = next((c for c in (f"{rv}_err", f"{rv}_error", f"e_{rv}") if c in colnames(table)), None)
    return rv, err


def observation_table(run, res, label_names):
    """One row per inferred spectrum that has a catalogue row, in catalogue order."""
    from astropy.table import Table

    t = run.cfg.target
    tgt = run.table("target")
    rows_t = target_rows(run)
    store_to_cat = np.full(len(res["store_row"]) and int(res["store_row"].max()) + 1, -1)
    store_to_cat[rows_t[rows_t >= 0]] = np.flatnonzero(rows_t >= 0)
    cat_rows = store_to_cat[res["store_row"]]
    has_row = cat_rows >= 0
    res = {k: v[has_row] for k, v in res.items()}
    cat_rows = cat_rows[has_row]
    obs = Table()
    obs["obsid"] = column(tgt, t.id_column, kind="raw")[cat_rows]
    obs["designation"] = column(tgt, t.star_column, kind="text")[cat_rows]
    obs["model_class"] = res["model_class"]
    obs["giantmodel"] = res["model_class"] == "giant"
    for j, n in enumerate(label_names):
        obs[n] = res["labels"][:, j]
        obs[f"e_{n}"] = res["errors"][:, j]
    obs["chi2"] = res["chi2"]
    obs["dof"] = res["dof"]
    for j, n in enumerate(label_names):
        if np.any(np.isfinite(res["chi2_windows"][:, j])):
            obs[f"chi2_{n}"] = res["chi2_windows"][:, j]
    for j, n in enumerate(label_names):
        obs[f"raw_e_{n}"] = res["raw_errors"][:, j]
        obs[f"{n}_extrap"] = res["extrapolated"][:, j]
    obs["kiel_extrap"] = res["kiel_extrap"].astype(bool)
    obs["train_distance"] = res["train_distance"]
    obs["flag_cannon_dist"] = res["far_from_training"].astype(bool)
    obs["flags"] = res["flags"].astype(np.int64)
    obs["snr"] = res["snr"]
    obs["converged"] = res["converged"].astype(bool)
    obs["outside_training"] = res["outside_training"].astype(bool)
    obs["snrz"] = column(tgt, t.snr_column)[cat_rows]
    obs["ra"] = column(tgt, t.ra_column)[cat_rows]
    obs["dec"] = column(tgt, t.dec_column)[cat_rows]
    rv, rv_err = rv_columns(run.cfg, tgt)
    if rv:
        obs["rv"] = column(tgt, rv)[cat_rows]
        obs["rv_err"] = column(tgt, rv_err)[cat_rows] if rv_err else np.full(len(cat_rows), np.nan)
    return obs[np.argsort(cat_rows, kind="stable")]


VISIT_BITS = int(Flag.NOT_CONVERGED | Flag.SINGULAR | Flag.MISSING_PIXELS | Flag.HIGH_CHI2 | Flag.OUTSIDE_TRAINING | Flag.UNCALIBRATED)


def window_chi2_limits(table, label_names, factor):
    """Per model and label: ``factor`` × the median windowed reduced χ² of that model's rows."""
    limits = {}
    classes = np.asarray(table["model_class"]).astype(str)
    for model in np.unique(classes):
        for n in label_names:
            c = f"chi2_{n}"
            if c in table.colnames:
                v = np.asarray(table[c], float)[classes == model]
                if np.isfinite(v).any():
                    limits[(model, n)] = factor * np.nanmedian(v)
    return limits


def high_window_chi2(table, label_names, limits):
    """(n,) bool: some label's windowed χ² above its model's limit."""
    classes = np.asarray(table["model_class"]).astype(str)
    out = np.zeros(len(table), dtype=bool)
    for (model, n), limit in limits.items():
        with np.errstate(invalid="ignore"):
            out |= (classes == model) & (np.asarray(table[f"chi2_{n}"], float) > limit)
    return out


def calibrate_stars(star, obs, inv, used, label_names, models):
    """Calibrated errors, label flags and flag bits of combined stars, model by model (in place)."""
    snr_obs = np.asarray(obs["snr"], float)
    # the combination's S/N: independent visits add in quadrature
    snr2 = np.zeros(len(star))
    np.add.at(snr2, inv, np.where(used & np.isfinite(snr_obs), snr_obs**2, 0.0))
    star["snr"] = np.where(snr2 > 0, np.sqrt(snr2), np.nan)
    # the mismatch part of the error is the same in every visit: it is taken at the best visit's S/N
    snr_best = np.full(len(star), -np.inf)
    np.maximum.at(snr_best, inv, np.where(used & np.isfinite(snr_obs), snr_obs, -np.inf))
    snr_best[~np.isfinite(snr_best)] = np.nan
    flag_bits = np.zeros(len(star), dtype=np.int64)
    np.bitwise_or.at(flag_bits, inv, np.where(used, np.asarray(obs["flags"], np.int64) & VISIT_BITS, 0))
    extrap = np.zeros((len(star), len(label_names)), dtype=bool)
    extrap_bit = np.zeros(len(star), dtype=bool)
    distance = np.full(len(star), np.nan)
    far = np.zeros(len(star), dtype=bool)
    kiel = np.zeros(len(star), dtype=bool)
    low = np.zeros(len(star), dtype=bool)
    classes = np.asarray(star["model_class"]).astype(str)
    snr_w = np.asarray(obs["snrz"], float)
    for name, m in models.items():
        rows = np.flatnonzero(classes == name)
        cal = m.calibration_
        if cal is None or rows.size == 0:
            continue
        cols = [label_names.index(n) for n in m.label_names]
        raw = np.column_stack([np.asarray(obs[f"raw_e_{n}"], float) for n in m.label_names])
        noise = combine_errors(inv, snr_w, cal.scaled_noise(raw), used & (np.asarray(obs["model_class"]).astype(str) == name), len(star))
        labels = np.column_stack([np.asarray(star[n], float) for n in m.label_names])[rows]
        total = cal.total(noise[rows], snr_best[rows])
        for j, n in enumerate(m.label_names):
            star[f"e_{n}"][rows] = total[:, j]
        ex = cal.extrapolated(labels)
        extrap[np.ix_(rows, cols)] = ex
        extrap_bit[rows] = ex[:, parameter_mask(m.label_names)].any(axis=1)  # abundances flag themselves
        kiel[rows] = cal.kiel_extrap(ex)
        distance[rows] = cal.train_distance(labels)
        far[rows] = cal.far_from_training(distance[rows])
        with np.errstate(invalid="ignore"):
            low[rows] = ~(np.asarray(star["snr"], float)[rows] >= cal.low_snr)
    for j, n in enumerate(label_names):
        star[f"{n}_extrap"] = extrap[:, j]
    star["kiel_extrap"] = kiel
    star["train_distance"] = distance
    star["flag_cannon_dist"] = far
    return flag_bits | compose(extrapolated=extrap_bit, kiel_extrap=kiel, far_from_training=far, low_snr=low)


def star_table(obs, label_names, models=None):
    """One row per star: S/N-weighted means of its visits inferred with its best visit's model.

    ``models`` (name -> CannonModel): calibrated errors and flags of the combination.
    """
    from astropy.table import Table

    value_cols = label_names + ["chi2", "dof"] + [c for c in obs.colnames if c.startswith("chi2_")]
    error_cols = [f"e_{n}" for n in label_names] + [f"raw_e_{n}" for n in label_names]
    if "rv" in obs.colnames:
        value_cols.append("rv")
        error_cols.append("rv_err")
    snr = np.asarray(obs["snrz"], dtype=float)
    values = np.column_stack([np.asarray(obs[c], float) for c in value_cols])
    values[~np.isfinite(values[:, value_cols.index("chi2")]), value_cols.index("dof")] = np.nan  # dof of the visits chi2 averages
    ids, inv, mean, n_used, used = combine_visits(
        np.asarray(obs["designation"]).astype(str), snr, values, model=np.asarray(obs["model_class"]))
    errors = combine_errors(inv, snr, np.column_stack([np.asarray(obs[c], float) for c in error_cols]), used, len(ids))
    best = argmax_per_group(inv, np.nan_to_num(snr, nan=-1.0), len(ids))
    star = Table()
    star["designation"] = ids
    for c in ("obsid", "model_class", "giantmodel"):
        star[c] = np.asarray(obs[c])[best]
    for j, c in enumerate(value_cols):
        star[c] = mean[:, j]
    # chi2's degrees of freedom, weighted like chi2 (0 where no visit has a chi2, as for a visit)
    star["dof"] = np.rint(np.nan_to_num(mean[:, value_cols.index("dof")])).astype(np.int64)
    for j, c in enumerate(error_cols):
        star[c] = errors[:, j]
    counts = {}
    for c in ("converged", "outside_training"):
        counts[c] = np.zeros(len(ids), dtype=int)
        np.add.at(counts[c], inv, np.asarray(obs[c], int) & used)
    star["converged"] = counts["converged"] == n_used
    star["outside_training"] = counts["outside_training"] > 0
    for c in ("snrz", "ra", "dec"):
        star[c] = np.asarray(obs[c])[best]
    star["n_obs"] = n_used
    star["n_obs_other_model"] = np.bincount(inv, weights=~used, minlength=len(ids)).astype(int)
    if models is not None:
        star["flags"] = calibrate_stars(star, obs, inv, used, label_names, models)
    return star


def execute(run):
    res, label_names = read_parts(run)
    obs = observation_table(run, res, label_names)
    limits = window_chi2_limits(obs, label_names, run.cfg.calibration.window_chi2_factor)
    obs["flags"] |= compose(high_window_chi2=high_window_chi2(obs, label_names, limits))
    run.write_table(obs, "per_observation.fits")
    star = star_table(obs, label_names, load_models(run))
    star["flags"] |= compose(high_window_chi2=high_window_chi2(star, label_names, limits))
    run.write_table(star, "per_star.fits")
    n_rep = int((star["n_obs"] > 1).sum())
    n_other = int((star["n_obs_other_model"] > 0).sum())
    run.log.info("[combine] %d observations of %d stars (%d with repeat visits; %d with visits of another model left out)",
                 len(obs), len(star), n_rep, n_other)
    return {"n_observations": len(obs), "n_stars": len(star), "n_repeat_stars": n_rep, "n_stars_mixed_models": n_other}
