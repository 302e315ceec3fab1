"""Stage ``clusters`` (Nandakumar+2022 §4.1, Tables 5–6): cluster members in each catalogue.

Given a member list (``scaling.clusters``: the format of APOGEE's cluster lists, ``ID logg
cluster`` per line, or any table with an id column and a cluster column), the members are
found in each combined catalogue (by ``star_id``; APOGEE's "2M" prefix of the 2MASS designation
is ignored, as GALAH's star_id has none) and, as the paper selects them, kept with
``flag_Cannon_dist``, ``flag_spectra`` and ``flag_survey`` all 0; per cluster, catalogue and
label ([Fe/H] and [α/Fe]: the labels named ``fe_h``/``feh`` and ``alpha*``) the median and σ
(half of 84th − 16th percentile). The two surveys' own values are listed too (catalogue
``<survey>_survey``). Writes ``tables/clusters.csv`` (``cluster, catalogue, label, n, median, sigma``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cannonade.exceptions import ConfigError

NAME = "clusters"
CONFIG = ("scaling.clusters", "scaling.labels", "target.survey", "reference.survey")
INPUTS = ("scaling.clusters",)
ID_COLUMNS = ("apogee_id", "id", "star_id", "2mass_id")
CLUSTER_COLUMNS = ("cluster", "cl", "name")


def read_members(path):
    """(ids, clusters) of a member list: whitespace ``ID logg cluster`` lines, or a table with id + cluster columns."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"scaling.clusters: member list {path} not found")
    try:
        t = Table.read(path, format="ascii.basic" if path.suffix not in (".fits", ".csv") else None)
        cols = {c.lower(): c for c in t.colnames}
        idc = next((cols[c] for c in ID_COLUMNS if c in cols), None)
        clc = next((cols[c] for c in CLUSTER_COLUMNS if c in cols), None)
        if idc and clc:
            return np.asarray(t[idc]).astype(str), np.asarray(t[clc]).astype(str)
    except Exception:  # not a table with a header: the plain "ID logg cluster" format
        pass
    ids, cls = [], []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 3:
            raise ConfigError(f"{path}, line {i}: expected 'ID logg cluster', got {line!r}")
        ids.append(parts[0])
        cls.append(parts[-1])
    return np.array(ids), np.array(cls)


def twomass_key(star_id):
    """A 2MASS designation without APOGEE's "2M" prefix (GALAH's star_id has none): how ids compare."""
    s = str(star_id).strip()
    return s[2:] if s.startswith("2M") and len(s) > 10 else s


def cluster_labels(labels):
    """The metallicity and α labels of a label set (the paper's Tables 5–6)."""
    return [lab for lab in labels if lab.lower() in ("fe_h", "feh", "m_h") or lab.lower().startswith("alpha")]


def execute(run):
    from astropy.table import Table

    from cannonade.catalogue.formats import CATALOGUE_FORMATS
    from cannonade.catalogue.readers import read_catalogue

    cfg = run.cfg
    if not cfg.scaling.clusters:
        run.log.info("[clusters] no member list (scaling.clusters): skipped")
        return {"n_clusters": 0}
    ids, cls = read_members(cfg.scaling.clusters)
    member = dict(zip((twomass_key(i) for i in ids.tolist()), cls.tolist()))
    labs = cluster_labels(cfg.scaling.labels)
    fmt = next(f for f in cfg.catalogue.formats if f in CATALOGUE_FORMATS)  # a file format ('hats' is a directory)
    rows = []
    for scale_side in ("target", "reference"):
        survey = getattr(cfg, scale_side).survey
        cat = read_catalogue(run.path("catalogue", f"combined_{survey}_scale.{fmt}"))
        sid = np.asarray(cat["star_id"]).astype(str)
        clus = np.array([member.get(twomass_key(s), "") for s in sid.tolist()])
        good = (clus != "") & (np.asarray(cat["flag_Cannon_dist"]) == 0) & (np.asarray(cat["flag_spectra"]) == 0) & \
            (np.asarray(cat["flag_survey"]) == 0)
        for name in sorted(set(clus[good].tolist())):
            sel = good & (clus == name)
            for lab in labs:
                rows.append(_stats(name, f"combined_{survey}_scale", lab, np.asarray(cat[f"{lab}Cann"], float)[sel]))
                if scale_side == "target":  # each survey's own values, once
                    for flag_id, s in ((1, cfg.target.survey), (0, cfg.reference.survey)):
                        own = sel & (np.asarray(cat["flag_id"]) == flag_id)
                        rows.append(_stats(name, f"{s}_survey", lab, np.asarray(cat[lab], float)[own]))
    t = Table(rows=rows, names=("cluster", "catalogue", "label", "n", "median", "sigma"),
              dtype=("U32", "U40", "U16", "i8", "f8", "f8")) if rows else Table(names=("cluster", "catalogue", "label", "n", "median", "sigma"))
    run.path("tables").mkdir(exist_ok=True)
    run.write_table(t, "tables/clusters.csv")
    n_cl = len(set(t["cluster"])) if len(t) else 0
    run.log.info("[clusters] %d clusters with members in the catalogues (tables/clusters.csv)", n_cl)
    return {"n_clusters": n_cl, "n_members": int(sum(1 for i in ids if i))}


def _stats(cluster, catalogue, label, values):
    v = values[np.isfinite(values)]
    if v.size == 0:
        return (cluster, catalogue, label, 0, np.nan, np.nan)
    p16, p50, p84 = np.percentile(v, [16, 50, 84])
    return (cluster, catalogue, label, int(v.size), float(p50), float(0.5 * (p84 - p16)))
