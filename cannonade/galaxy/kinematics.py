"""Gaia cross-match, distances and orbits for a catalogue of stars (Wheeler+2020 §5.1).

The glue between the survey catalogue and :func:`cannonade.galaxy.dynamics.orbits`: it matches
each star to Gaia, takes the distance and proper motions from Gaia and the radial velocity from
the survey (Gaia's where the survey has none), and attaches the orbit columns.
"""

from __future__ import annotations

import logging

import numpy as np

from cannonade.exceptions import ColumnError
from cannonade.galaxy.crossmatch import gaia_match
from cannonade.galaxy.dynamics import DYNAMICS_COLUMNS, orbits
from cannonade.tables import as_table, float_column, is_pandas

log = logging.getLogger(__name__)

_RV_CANDIDATES = ("radial_velocity", "rv", "RV", "vrad", "rv_lamost")
_RV_ERR_SUFFIXES = ("_err", "_error")


def _rv_columns(t, rv_column):
    if rv_column is None:
        rv_column = next((c for c in _RV_CANDIDATES if c in t.colnames), None)
        if rv_column is None:
            return None, None
    elif rv_column not in t.colnames:
        raise ColumnError(f"catalogue lacks radial-velocity column {rv_column!r}; it has {t.colnames}")
    cands = [rv_column + s for s in _RV_ERR_SUFFIXES] + ["e_" + rv_column, rv_column + "_err", "rv_err", "e_rv"]
    err = next((c for c in cands if c in t.colnames), None)
    return rv_column, err


def add_dynamics(
    catalogue_table,
    gaia_table,
    n_samples=20,
    seed=0,
    chunk_size=50_000,
    radius_arcsec=1.0,
    rv_column=None,
    gaia_rv_fallback=True,
    show_progress=True,
    workers=1,
    scheduler="",
    action_method="staeckel",
):
    """Gaia cross-match, distances and orbits for a catalogue (Wheeler+2020 §5.1).

    Parameters
    ----------
    catalogue_table : astropy Table or DataFrame with ra, dec [deg] and, optionally, a
        survey radial velocity (``rv_column``; default: the first of radial_velocity,
        rv, RV, vrad, rv_lamost present) with its error (``<rv>_err``/``_error``/``e_<rv>``).
    gaia_table : Table or DataFrame with source_id, ra, dec, pmra, pmra_error, pmdec,
        pmdec_error, radial_velocity, radial_velocity_error, phot_g_mean_mag and
        r_est, r_lo, r_hi [pc] (Bailer-Jones-like distances; a unit on the column is honoured).
    n_samples, seed, chunk_size, workers, scheduler, action_method : passed to
        :func:`cannonade.galaxy.dynamics.orbits` (``workers``/``scheduler``: where its chunks run,
        docs/scale.md, the same results; ``action_method``: "staeckel" (default, Wheeler+2020) or
        "staeckel_grid", galpy's interpolated grid where it is reliable)
    radius_arcsec : float -- match radius; the brightest G source inside it is kept
    rv_column : str or None
    gaia_rv_fallback : bool -- use Gaia's RV where the survey RV is missing (Wheeler+2020
        use LAMOST RVs throughout; Gaia has RVs for ~1/5 of the stars)

    Returns
    -------
    astropy Table (DataFrame if the input is one): every input row in order, the Gaia
    columns (colliding names prefixed ``gaia_``; see :func:`cannonade.galaxy.crossmatch.gaia_match`),
    distance, distance_lo, distance_hi [kpc] (r_est, r_lo, r_hi / 1000), the
    radial_velocity_used / radial_velocity_used_err [km/s], and the orbits() columns.
    Stars without a Gaia match keep their row with NaN dynamics.
    """
    from astropy.table import Table

    was_pandas = is_pandas(catalogue_table)
    cat = as_table(catalogue_table)
    g = as_table(gaia_table)
    for need in ("ra", "dec", "pmra", "pmdec", "r_est"):
        if need not in g.colnames:
            raise ColumnError(f"gaia_table lacks column {need!r}; it has {g.colnames}")
    rv_col, rv_err_col = _rv_columns(cat, rv_column)
    t = gaia_match(cat, g, radius_arcsec=radius_arcsec, rank="phot_g_mean_mag" if "phot_g_mean_mag" in g.colnames else None)

    def gname(n):  # name a Gaia column got in the joined table
        return "gaia_" + n if n in cat.colnames else n

    def gcol(n, unit=None):
        return float_column(t, gname(n), unit) if gname(n) in t.colnames else np.full(len(t), np.nan)

    dist = gcol("r_est", "pc") / 1000.0
    dlo = gcol("r_lo", "pc") / 1000.0
    dhi = gcol("r_hi", "pc") / 1000.0
    if rv_col is not None:
        rv = float_column(t, rv_col, "km / s")
        rv_err = float_column(t, rv_err_col, "km / s") if rv_err_col else np.full(len(t), np.nan)
    else:
        rv = np.full(len(t), np.nan)
        rv_err = np.full(len(t), np.nan)
    if gaia_rv_fallback:
        grv = gcol("radial_velocity", "km / s")
        grv_err = gcol("radial_velocity_error", "km / s")
        use = ~np.isfinite(rv) & np.isfinite(grv)
        rv = np.where(use, grv, rv)
        rv_err = np.where(use, grv_err, rv_err)
    inp = Table(
        dict(
            ra=float_column(t, "ra", "deg"),
            dec=float_column(t, "dec", "deg"),
            distance=dist,
            distance_lo=dlo,
            distance_hi=dhi,
            pmra=gcol("pmra", "mas / yr"),
            pmdec=gcol("pmdec", "mas / yr"),
            pmra_error=gcol("pmra_error", "mas / yr"),
            pmdec_error=gcol("pmdec_error", "mas / yr"),
            radial_velocity=rv,
            radial_velocity_err=rv_err,
        )
    )
    if "pmra_pmdec_corr" in g.colnames:
        inp["pmra_pmdec_corr"] = gcol("pmra_pmdec_corr")
    dyn = orbits(inp, n_samples=n_samples, seed=seed, chunk_size=chunk_size, show_progress=show_progress,
                 workers=workers, scheduler=scheduler, action_method=action_method)
    for name, unit in (("distance", "kpc"), ("distance_lo", "kpc"), ("distance_hi", "kpc")):
        t[name] = dist if name == "distance" else (dlo if name == "distance_lo" else dhi)
        t[name].unit = unit
    t["radial_velocity_used"] = rv
    t["radial_velocity_used"].unit = "km / s"
    t["radial_velocity_used_err"] = rv_err
    t["radial_velocity_used_err"].unit = "km / s"
    new = list(DYNAMICS_COLUMNS) + ["e_" + k for k in DYNAMICS_COLUMNS] + ["unbound", "f_unbound"]
    clash = [k for k in new if k in t.colnames]
    if clash:  # e.g. LAMOST's redshift 'z'
        log.warning("add_dynamics: replacing existing column(s) %s with the dynamics output", clash)
    for k in new:
        if k in t.colnames:
            t.remove_column(k)
        t[k] = dyn[k]
    return t.to_pandas() if was_pandas else t
