"""Stage 2, ``crossmatch``: reference x target, 1″ on the sky or by id; the best-S/N visit per reference star.

Wheeler+2020 §2.1. A target observation claimed by several reference stars is ambiguous and
those reference stars are dropped.
"""

from __future__ import annotations

import numpy as np

from cannonade.galaxy.crossmatch import best_match, sky_match
from cannonade.pipeline.inputs import column

NAME = "crossmatch"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md)
CONFIG = ("crossmatch", "target.catalogue", "target.snr_column", "target.ra_column", "target.dec_column",
          "reference.catalogue", "reference.id_column", "reference.ra_column", "reference.dec_column", "reference.columns")
INPUTS = ("target.catalogue", "reference.catalogue")


def match_by_id(ids_ref, ids_tgt, snr):
    """Best-S/N target row of each reference id (-1 if none) and the number of target rows per id."""
    order = np.argsort(-np.nan_to_num(snr, nan=-np.inf), kind="stable")
    pos = {}
    for j in order:
        pos.setdefault(str(ids_tgt[j]).strip(), []).append(j)
    index = np.full(len(ids_ref), -1)
    n_matches = np.zeros(len(ids_ref), dtype=int)
    for i, rid in enumerate(ids_ref):
        js = pos.get(str(rid).strip(), [])
        n_matches[i] = len(js)
        if js:
            index[i] = js[0]
    return index, n_matches


def execute(run):
    from astropy.table import Table

    t, r, xm = run.cfg.target, run.cfg.reference, run.cfg.crossmatch
    tgt, ref = run.table("target"), run.table("reference")
    snr = column(tgt, t.snr_column)
    al = r.columns
    if xm.method == "sky":
        ra_r, dec_r = column(ref, r.ra_column, al), column(ref, r.dec_column, al)
        ra_t, dec_t = column(tgt, t.ra_column), column(tgt, t.dec_column)
        # every target visit of a reference star lies within the radius: take the best S/N one
        bm = best_match(ra_r, dec_r, ra_t, dec_t, xm.radius_arcsec, rank=-snr, prefer="min")
        index, n_matches, dup, sep = bm.index, bm.n_matches, bm.duplicated, bm.sep_arcsec
        pairs = sky_match(ra_r, dec_r, ra_t, dec_t, xm.radius_arcsec)
        n_refs_per_target = np.bincount(np.asarray(pairs[1], dtype=int), minlength=len(tgt))
    else:
        ids_ref = column(ref, r.id_column, al, kind="text")
        ids_tgt = column(tgt, xm.target_id_column, kind="text")
        index, n_matches = match_by_id(ids_ref, ids_tgt, snr)
        dup = np.zeros(len(ref), dtype=bool)
        sep = np.full(len(ref), np.nan)
        n_refs_per_target = np.bincount(index[index >= 0], minlength=len(tgt))
    ambiguous = (index >= 0) & (n_refs_per_target[np.maximum(index, 0)] > 1)
    index = np.where(ambiguous, -1, index)
    out = Table(dict(ref_row=np.arange(len(ref)), target_row=index, sep_arcsec=sep, n_target_matches=n_matches, ambiguous=ambiguous | dup))
    run.write_table(out, "crossmatch.fits")
    info = {
        "n_reference": len(ref),
        "n_matched": int((index >= 0).sum()),
        "n_with_repeat_visits": int((n_matches > 1).sum()),
        "n_ambiguous_dropped": int(ambiguous.sum()),
    }
    run.log.info(
        "[crossmatch] %d of %d reference stars matched; %d have several target visits (best S/N kept); %d ambiguous dropped",
        info["n_matched"], len(ref), info["n_with_repeat_visits"], info["n_ambiguous_dropped"],
    )
    return info
