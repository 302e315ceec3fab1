"""Stage 9, ``combine``: the per-observation table and S/N-weighted repeat visits per star (Wheeler+2020 §5.1).

A star's visits are combined within the model of its best-S/N visit (see
:mod:`cannonade.catalogue.visits`); radial velocities and their errors are carried, so the
dynamics stage resamples the RV in its Monte Carlo.
"""

from __future__ import annotations

import numpy as np

from cannonade.catalogue.visits import argmax_per_group, combine_errors, combine_visits
from cannonade.pipeline.inputs import column
from cannonade.pipeline.stages.infer import read_parts
from cannonade.pipeline.stages.ingest import target_rows
from cannonade.tables import colnames

NAME = "combine"


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


def star_table(obs, label_names):
    """One row per star: S/N-weighted means of its visits inferred with its best visit's model."""
    from astropy.table import Table

    value_cols = label_names + ["chi2"] + [c for c in obs.colnames if c.startswith("chi2_")]
    error_cols = [f"e_{n}" for n in label_names]
    if "rv" in obs.colnames:
        value_cols.append("rv")
        error_cols.append("rv_err")
    snr = np.asarray(obs["snrz"], dtype=float)
    ids, inv, mean, n_used, used = combine_visits(
        np.asarray(obs["designation"]).astype(str), snr,
        np.column_stack([np.asarray(obs[c], float) for c in value_cols]), model=np.asarray(obs["model_class"]))
    errors = combine_errors(inv, snr, np.column_stack([np.asarray(obs[c], float) for c in error_cols]), used, len(ids))
    best = argmax_per_group(inv, np.nan_to_num(snr, nan=-1.0), len(ids))
    star = Table()
    star["designation"] = ids
    for c in ("obsid", "model_class", "giantmodel"):
        star[c] = np.asarray(obs[c])[best]
    for j, c in enumerate(value_cols):
        star[c] = mean[:, j]
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
    return star


def execute(run):
    res, label_names = read_parts(run)
    obs = observation_table(run, res, label_names)
    run.write_table(obs, "per_observation.fits")
    star = star_table(obs, label_names)
    run.write_table(star, "per_star.fits")
    n_rep = int((star["n_obs"] > 1).sum())
    n_other = int((star["n_obs_other_model"] > 0).sum())
    run.log.info("[combine] %d observations of %d stars (%d with repeat visits; %d with visits of another model left out)",
                 len(obs), len(star), n_rep, n_other)
    return {"n_observations": len(obs), "n_stars": len(star), "n_repeat_stars": n_rep, "n_stars_mixed_models": n_other}
