"""The run's inputs: which catalogue columns a config needs, read as plain arrays, checked up front."""

from __future__ import annotations

import numpy as np

from cannonade.config import expression_names, resolve_column
from cannonade.exceptions import ColumnError, ConfigError
from cannonade.tables import colnames, float_column, text_column

GAIA_COLUMNS = ("ra", "dec", "pmra", "pmdec", "r_est")


def column(table, name, aliases=None, what="catalogue", kind="float"):
    """A catalogue column as a new plain array.

    Parameters
    ----------
    table : astropy Table
    name : str
        Column name, or an alias of one.
    aliases : dict, optional
    kind : {'float', 'text', 'raw'}
        float: masked cells and survey sentinels (≤ −9998, e.g. LASP's −9999 Teff) -> NaN;
        text: decoded, stripped str; raw: the column's own values.
    """
    real = resolve_column(name, colnames(table), aliases, what)
    if kind == "float":
        return float_column(table, real)
    if kind == "text":
        return text_column(table, real)
    return np.asarray(table[real])


def has_column(table, name, aliases=None):
    """Whether ``name`` (or the column its alias points to) exists in ``table``."""
    try:
        resolve_column(name, colnames(table), aliases)
    except ColumnError:
        return False
    return True


def derived_components(cfg, label):
    """Component labels of a derived label (the label itself if it is not derived)."""
    spec = cfg.labels.derived.get(label)
    return list(spec.mean_of) if spec else [label]


def base_labels(cfg):
    """Reference-catalogue labels a run needs (model labels, derived components) and their error columns."""
    names, errors = [], []
    for labels in cfg.model_labels.values():
        for lab in labels:
            spec = cfg.labels.derived.get(lab)
            if spec is None:
                names.append(lab)
                continue
            names += list(spec.mean_of)
            if spec.weights == "error":
                errors += [cfg.reference.error_prefix + c for c in spec.mean_of]
    if cfg.clean.enabled and cfg.reference.spectra:
        names += list(cfg.clean.labels)
    return list(dict.fromkeys(names)), list(dict.fromkeys(errors))


def all_model_labels(cfg):
    """The union of every model's labels, in first-seen order."""
    return list(dict.fromkeys(n for labs in cfg.model_labels.values() for n in labs))


def check_scaling_columns(cfg, target, reference, gaia=None):
    """The nandakumar2022 recipe's columns: ids, positions, cuts, every scaling label in both catalogues."""
    t, r = cfg.target, cfg.reference
    on = {"target": (colnames(target), t.columns, f"target catalogue ({t.catalogue})"),
          "reference": (colnames(reference), r.columns, f"reference catalogue ({r.catalogue})")}
    needs = [("target.id_column", t.id_column, on["target"]), ("target.file_column", t.file_column, on["target"]),
             ("reference.id_column", r.id_column, on["reference"])]
    for side, sec in (("target", t), ("reference", r)):
        needs += [(f"{side}.{k}", getattr(sec, k), on[side]) for k in ("ra_column", "dec_column")]
        needs += [(f"cuts.{side} {expr!r}", n, on[side]) for expr in getattr(cfg.cuts, side) for n in expression_names(expr)]
        needs += [(f"scaling.labels ({side})", lab, on[side]) for lab in cfg.scaling.labels]
    if cfg.crossmatch.method == "id":
        needs.append(("crossmatch.target_id_column", cfg.crossmatch.target_id_column, on["target"]))
        needs.append(("crossmatch.reference_id_column", cfg.crossmatch.reference_id_column or r.id_column, on["reference"]))
    for where, name, (columns, aliases, what) in needs:
        try:
            resolve_column(name, columns, aliases, what)
        except ColumnError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def check_columns(cfg, target, reference, gaia=None):
    """Fail before any work if a configured column does not exist (names it and the closest column)."""
    t, r = cfg.target, cfg.reference
    on_target = (colnames(target), None, f"target catalogue ({t.catalogue})")
    on_reference = (colnames(reference), r.columns, f"reference catalogue ({r.catalogue})")
    needs = [(f"target.{k}", getattr(t, k), on_target) for k in
             ("id_column", "star_column", "file_column", "snr_column", "teff_column", "logg_column", "ra_column", "dec_column")]
    if t.redshift_column:
        needs.append(("target.redshift_column", t.redshift_column, on_target))
    needs += [(f"reference.{k}", getattr(r, k), on_reference) for k in ("id_column", "ra_column", "dec_column")]
    for side, on in (("target", on_target), ("reference", on_reference)):
        needs += [(f"cuts.{side} {expr!r}", n, on) for expr in getattr(cfg.cuts, side) for n in expression_names(expr)]
    names, errors = base_labels(cfg)
    needs += [("labels", n, on_reference) for n in names + errors]
    if cfg.crossmatch.method == "id":
        needs.append(("crossmatch.target_id_column", cfg.crossmatch.target_id_column, on_target))
    for where, name, (columns, aliases, what) in needs:
        try:
            resolve_column(name, columns, aliases, what)
        except ColumnError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if gaia is not None:
        missing = [c for c in GAIA_COLUMNS if c not in colnames(gaia)]
        if missing:
            raise ConfigError(f"dynamics.gaia: Gaia catalogue lacks column(s) {missing}; columns are {sorted(colnames(gaia))}")


def check_grids(cfg):
    """Fail before any work if ``target.grid`` (or, recipe nandakumar2022, ``reference.grid``) is not
    a grid :func:`cannonade.spectra.surveys.common_grid` knows (names the key)."""
    from cannonade.spectra.surveys import common_grid

    keys = [("target.grid", cfg.target.grid)]
    if cfg.recipe == "nandakumar2022":
        keys.append(("reference.grid", cfg.reference.grid))
    for key, grid in keys:
        try:
            common_grid(grid)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
