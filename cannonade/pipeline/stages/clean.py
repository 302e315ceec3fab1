"""Stage 4, ``clean``: windowed-χ² cleaning of the reference set on its own spectra (Wheeler+2020 §2.1).

A Cannon model of the reference survey, trained on its own labels, predicts each candidate's
reference spectrum; a star whose reduced χ² (per valid pixel) within any element's line windows
is above the configured percentile of that element is dropped.
"""

from __future__ import annotations

import numpy as np

from cannonade.cannon.model import CannonModel
from cannonade.cannon.vectorizer import mixed_terms
from cannonade.execution import get_backend
from cannonade.pipeline.inputs import base_labels, column
from cannonade.pipeline.windows import label_element, reduced_window_chi2
from cannonade.spectra.linelists import load_line_windows, window_mask
from cannonade.spectra.resampling import resample
from cannonade.spectra.readers import read_galah_star
from cannonade.spectra.surveys import common_grid
from cannonade.util import progress

NAME = "clean"
# what the outputs depend on (the stage's fingerprint, docs/pipeline.md); models and labels: the
# elements cleaned are those of the models' labels
CONFIG = ("clean", "reference.catalogue", "reference.spectra", "reference.survey", "reference.id_column",
          "reference.columns", "models", "labels")
INPUTS = ("reference.catalogue", "reference.spectra", "clean.windows")


def read_reference_chunk(k, ids, directory, wavelength):
    """Read reference (GALAH) stars, 4 CCDs in the reduction's normalised flux, onto ``wavelength``.

    Returns flux, ivar (n, P), readable (n,) bool and failures [(id, reason)].
    """
    flux = np.zeros((len(ids), len(wavelength)))
    ivar = np.zeros((len(ids), len(wavelength)))
    ok = np.zeros(len(ids), dtype=bool)
    failures = []
    for i, sid in enumerate(ids):
        try:
            s = read_galah_star(str(sid), directory=directory, normalised=True)
        except Exception as exc:  # reported by the caller; the star is just not cleaned by spectrum
            failures.append((str(sid), str(exc)))
            continue
        z = s.meta.get("redshift", np.nan)
        wave = s.wavelength / (1.0 + z) if np.isfinite(z) else s.wavelength
        flux[i], ivar[i] = resample(wave, s.flux, s.ivar, wavelength)
        ok[i] = True
    return flux, ivar, ok, failures


def read_reference_spectra(ids, directory, wavelength, workers=2, chunk=100):
    """Reference-survey spectra of many stars on ``wavelength``, read in parallel.

    Returns flux, ivar (n, P), readable (n,) bool and a list of (id, reason) failures.
    """
    starts = list(range(0, len(ids), chunk))
    results = [None] * len(starts)
    tasks = [(k, (ids[s : s + chunk], directory, wavelength)) for k, s in enumerate(starts)]
    with get_backend("process" if workers > 1 and len(tasks) > 1 else "serial", workers=workers) as backend:
        for k, res in progress(backend.imap_unordered(read_reference_chunk, tasks), desc="reference spectra", total=len(tasks)):
            results[k] = res
    P = len(wavelength)
    if not results:
        return np.zeros((0, P)), np.zeros((0, P)), np.zeros(0, dtype=bool), []
    return (np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]),
            np.concatenate([r[2] for r in results]), [f for r in results for f in r[3]])


def reference_window_chi2(run, cand, keep, windows):
    """Reduced χ² of each candidate's reference spectrum in each element's windows.

    Returns chi2 (n_cand, n_elements) (NaN where not computed) and the element names.
    """
    cfg = run.cfg
    r = cfg.reference
    ref = run.table("reference")
    base, _ = base_labels(cfg)
    elements = [e for e in dict.fromkeys(label_element(n) for n in base) if e and e in windows]
    clean_labels = list(dict.fromkeys(list(cfg.clean.labels) + [n for n in base if label_element(n) in elements]))
    grid = common_grid(r.survey)
    # only pixels in some window are needed (and they keep the model small)
    el_masks = {el: window_mask(grid, windows[el], vacuum=True) for el in elements}
    any_window = np.logical_or.reduce(list(el_masks.values())) if el_masks else np.zeros(len(grid), bool)
    el_masks = {el: m[any_window] for el, m in el_masks.items()}
    rows = np.flatnonzero(keep)
    ref_rows = np.asarray(cand["ref_row"])[rows]
    ids = column(ref, r.id_column, r.columns, kind="text")[ref_rows]
    flux, ivar, readable, failures = read_reference_spectra(ids, r.spectra, grid[any_window], cfg.run.workers)
    for sid, why in failures:
        run.log.info("[clean] reference spectrum of %s unreadable: %s", sid, why)
    labels = np.column_stack([column(ref, n, r.columns)[ref_rows] for n in clean_labels])
    train = readable & np.all(np.isfinite(labels), axis=1)
    chi2 = np.full((len(cand), len(elements)), np.nan)
    if train.sum() < 2 * (len(clean_labels) + 1) * (len(clean_labels) + 2) // 2:
        run.log.info("[clean] only %d reference spectra usable; windowed-chi2 cleaning skipped", int(train.sum()))
        return chi2, elements
    # quadratic in the stellar labels, linear in each abundance plus abundance x Teff: the
    # abundances scale their own lines; a full quadratic in ~16 labels (153 terms) is not needed
    n_stellar = len(cfg.clean.labels)
    terms = mixed_terms(n_stellar, len(clean_labels) - n_stellar, order=cfg.clean.order)
    m = CannonModel(clean_labels, terms=terms, device=run.cfg.run.device).fit(labels[train], flux[train], ivar[train])
    # stars with a missing label get NaN (never a prediction at made-up labels)
    pix = m.pixel_chi2(labels, flux, ivar)
    pix = np.where((ivar > 0) & np.isfinite(flux) & m.pixel_ok_[None, :], pix, np.nan)
    for j, el in enumerate(elements):
        c = reduced_window_chi2(pix, el_masks[el])
        c[~readable] = np.nan
        chi2[rows, j] = c
    return chi2, elements


def execute(run):
    cand = run.read_run_table("training_candidates.fits")
    keep = np.asarray(cand["pass_cuts"]).copy()
    cand["windowed_chi2_ok"] = np.ones(len(cand), dtype=bool)
    if not (run.cfg.clean.enabled and run.cfg.reference.spectra):
        run.write_table(cand, "training_clean.fits")
        return {"n_in": int(keep.sum()), "n_kept": int(keep.sum()), "skipped": True}
    windows = load_line_windows(run.cfg.clean.windows)
    chi2, elements = reference_window_chi2(run, cand, keep, windows)
    pct = run.cfg.clean.percentile
    bad = np.zeros(len(cand), dtype=bool)
    removed = {}
    for j, el in enumerate(elements):
        c = chi2[:, j]
        ok = keep & np.isfinite(c)
        if ok.sum() < 10:
            continue
        above = ok & (c > np.percentile(c[ok], pct))
        removed[el] = int(above.sum())
        bad |= above
        cand[f"chi2_window_{el}"] = c
    cand["windowed_chi2_ok"] = ~bad
    run.write_table(cand, "training_clean.fits")
    run.log.info("[clean] reduced windowed chi2 > %gth percentile for any of %d elements removes %d of %d stars",
                 pct, len(elements), int((keep & bad).sum()), int(keep.sum()))
    return {"n_in": int(keep.sum()), "n_kept": int((keep & ~bad).sum()), "removed_per_element": removed}
