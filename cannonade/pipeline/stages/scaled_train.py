"""Stage ``scaled_train`` (Nandakumar+2022 §3.3–3.5.1): four models from one training set.

Each survey's spectra with each survey's labels — for APOGEE (target) × GALAH (reference):
ACGS (APOGEE spectra, GALAH-scaled labels), ACAA (APOGEE spectra, APOGEE labels), GCAA
(GALAH spectra, APOGEE-scaled labels), GCGS (GALAH spectra, GALAH labels). Percentile label
scaling (Eq. 2), the scatter fit (Eq. 3), [α/Fe] censored to its elements' line windows in
each survey's spectra, missing reference labels imputed from the spectra while training,
12-fold CV (Figs 3–4) and the per-star error calibration. Also the model-residual
diagnostics of Figs 5–6: per pixel, the median and 16th/84th percentiles of data − model
over the training set (``tables/residuals_<model>.csv``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cannonade.cannon.crossval import cross_validate
from cannonade.cannon.model import CannonModel
from cannonade.cannon.refinement import combine_labels, deattenuate, spectral_errors
from cannonade.cannon.spectral_setup import SpectralSetup
from cannonade.exceptions import ConfigError
from cannonade.pipeline.inputs import column
from cannonade.pipeline.stages.common import read_common, store_rows
from cannonade.pipeline.stages.ingest import spectrum_files
from cannonade.spectra.linelists import load_line_windows, survey_windows, window_mask
from cannonade.spectra.store import SpectraStore
from cannonade.spectra.visits import prepare_visits

NAME = "scaled_train"
CONFIG = ("scaling", "training", "calibration.enabled", "calibration.distance_threshold", "calibration.low_snr",
          "calibration.max_missing_fraction", "calibration.error_model", "calibration.repeat_stars", "run.seed",
          "target.survey", "reference.survey", "target.spectra", "target.file_column", "reference.id_column")
INPUTS = ("scaling.target_windows", "scaling.reference_windows", "scaling.reference_visits", "target.spectra")

#: (spectra side, labels side) of the four models, in the paper's order
PAIRS = (("target", "reference"), ("target", "target"), ("reference", "target"), ("reference", "reference"))
_LETTER = {"apogee": "A", "galah": "G", "lamost": "L"}


def model_name(cfg, spectra_side, label_side):
    """The paper's name of a model: <spectra survey>C<label survey><A|S> (ACGS, ACAA, GCAA, GCGS)."""
    s = getattr(cfg, spectra_side).survey
    lab = getattr(cfg, label_side).survey
    first = _LETTER.get(s.lower(), s[:1].upper())
    second = _LETTER.get(lab.lower(), lab[:1].upper())
    # the paper: "...AA" for APOGEE-scaled (ASPCAP), "...GS" for GALAH-scaled (SME)
    return f"{first}C{second}{'A' if lab.lower() == 'apogee' else 'S'}"


def model_names(cfg):
    """{name: (spectra side, labels side)} of the four models."""
    return {model_name(cfg, s, lab): (s, lab) for s, lab in PAIRS}


def censor_masks(cfg, side, wavelength):
    """{label: (P,) bool}: where each censored label may act in ``side``'s spectra (its elements' windows)."""
    path = getattr(cfg.scaling, f"{side}_windows") or survey_windows(getattr(cfg, side).survey)
    windows = load_line_windows(path)
    out = {}
    for label, elements in cfg.scaling.censor.items():
        if label not in cfg.scaling.labels:
            continue
        missing = [e for e in elements if e not in windows]
        if missing:
            raise ConfigError(f"scaling.censor.{label}: no {side} line windows for {missing} in {path}")
        mask = np.zeros(len(wavelength), dtype=bool)
        for e in elements:
            mask |= window_mask(wavelength, windows[e], vacuum=True)
        if not mask.any():
            raise ConfigError(f"scaling.censor.{label}: none of the {side} windows of {list(elements)} falls on its grid")
        out[label] = mask
    return out


def residual_table(model, labels, flux, ivar, wavelength):
    """Per pixel: median and 16th/84th percentiles of data − model over the training stars (Figs 5–6)."""
    from astropy.table import Table

    filled = np.where(getattr(model, "imputed_", np.zeros(labels.shape, bool)), model.imputed_values_, labels) \
        if getattr(model, "imputed_", None) is not None else labels
    resid = flux - model.predict(filled)
    resid[~((ivar > 0) & np.isfinite(flux))] = np.nan
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"All-NaN slice encountered", RuntimeWarning)
            p16, p50, p84 = np.nanpercentile(resid, [16, 50, 84], axis=0)
    t = Table(dict(wavelength=wavelength, median=p50, p16=p16, p84=p84, n=np.isfinite(resid).sum(axis=0)))
    t["wavelength"].unit = "Angstrom"
    return t


def target_repeats(run):
    """Visits inside the target's files (APOGEE apStar) of up to ``calibration.repeat_stars`` stars.

    A seeded random subset of the target stars with a stored spectrum; their visits are
    prepared as the store's spectra (``spectra.visits.prepare_visits``). Returns
    ``(flux (R, P), ivar (R, P), star_id (R,))`` of the stars with at least two visits, or None.
    """
    cfg = run.cfg
    t = cfg.target
    n_max = cfg.calibration.repeat_stars
    if not cfg.scaling.target_visits or n_max == 0 or not t.spectra:
        return None
    tgt = run.table("target")
    rows = np.flatnonzero(store_rows(run, "target") >= 0)
    if len(rows) > n_max:
        rows = np.sort(np.random.default_rng(cfg.run.seed).choice(rows, n_max, replace=False))
    files = spectrum_files(t.spectra, column(tgt, t.file_column, kind="text")[rows])
    with SpectraStore(run.path("target.h5")) as st:
        setup = SpectralSetup.from_store(st)
    flux, ivar, src, failures = prepare_visits(files, setup.wavelength, setup.normalise, setup.norm_params)
    if failures:
        run.log.warning("[scaled_train] %d target files without readable visits (first: %s)", len(failures), failures[0][1])
    ids = column(tgt, t.star_column or t.id_column, kind="text")[rows][src]
    return _with_repeats(flux, ivar, ids)


def reference_repeats(run):
    """Repeat exposures of one star in the reference store (GALAH: another sobject_id, same star_id).

    ``scaling.reference_visits`` lists every exposure (``reference.id_column``) with its star
    (``scaling.reference_star_column``); at most ``calibration.repeat_stars`` stars (seeded).
    Returns ``(flux, ivar, star_id)`` or None.
    """
    from cannonade.tables import read_table

    cfg = run.cfg
    path = cfg.scaling.reference_visits
    if not path or cfg.calibration.repeat_stars == 0:
        return None
    visits = read_table(path)
    exposure = column(visits, cfg.reference.id_column, kind="text")
    star = column(visits, cfg.scaling.reference_star_column, kind="text")
    star_of = dict(zip(exposure.tolist(), star.tolist()))
    with SpectraStore(run.path("reference.h5")) as st:
        obj = st.column("obj_id")
        ids = np.array([star_of.get(o, "") for o in obj.tolist()])
        uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
        multi = np.flatnonzero((counts > 1) & (uniq != ""))
        if len(multi) > cfg.calibration.repeat_stars:
            multi = np.random.default_rng(cfg.run.seed).choice(multi, cfg.calibration.repeat_stars, replace=False)
        rows = np.flatnonzero(np.isin(inv, multi))
        if len(rows) == 0:
            return None
        flux, ivar = st.read_rows(rows)
    return np.asarray(flux, float), np.asarray(ivar, float), ids[rows]


def _with_repeats(flux, ivar, ids):
    """Only the spectra of stars with at least two of them (None when there are none)."""
    ids = np.asarray(ids).astype(str)
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    keep = counts[inv] > 1
    if not keep.any():
        return None
    return flux[keep], ivar[keep], ids[keep]


def training_spectra(run, spectra_side, cs):
    """The training stars' spectra in ``spectra_side``'s store: (flux, ivar, setup, wavelength, censors)."""
    train = np.asarray(cs["in_training"], bool)
    with SpectraStore(run.path(f"{spectra_side}.h5")) as st:
        flux, ivar = st.read_rows(np.asarray(cs[f"{spectra_side}_store_row"])[train])
        setup, wavelength = SpectralSetup.from_store(st), st.wavelength
    return flux, ivar, setup, wavelength, censor_masks(run.cfg, spectra_side, wavelength)


def training_labels(cfg, cs, label_side):
    """The training stars' catalogue labels and errors of ``label_side``: (N, L) each."""
    train = np.asarray(cs["in_training"], bool)
    labs = list(cfg.scaling.labels)
    labels = np.column_stack([np.asarray(cs[f"{label_side}_{lab}"], float)[train] for lab in labs])
    errors = np.column_stack([np.asarray(cs[f"{label_side}_e_{lab}"], float)[train] for lab in labs])
    return labels, errors


def _missing_mode(cfg, labels):
    return "impute" if cfg.scaling.missing_labels == "impute" and not np.isfinite(labels).all() else "refuse"


def _new_model(cfg, censors, name=None, show_progress=True):
    t = cfg.training
    return CannonModel(list(cfg.scaling.labels), order=t.order, scale=t.scale, scatter=t.scatter,
                       regularization=t.regularization, censors=censors, name=name, device=cfg.run.device,
                       show_progress=show_progress)


def refine_training_labels(run, cs, label_side, labels, errors, spectra):
    """``labels`` refined by the training spectra of both surveys (:mod:`cannonade.cannon.refinement`).

    ``scaling.refine_labels`` rounds: in each, a model per survey's spectra is cross-validated
    (``scaling.refine_folds`` folds) on the current labels, and each star's catalogue label is
    combined with both out-of-sample predictions. ``spectra``: side -> :func:`training_spectra`.
    Returns the refined labels; ``cv/<survey>_refined_labels.fits`` keeps them with their errors.
    """
    from astropy.table import Table

    cfg = run.cfg
    current = labels
    for k in range(cfg.scaling.refine_labels):
        preds, errs = [], []
        for side in ("target", "reference"):
            flux, ivar, _, _, censors = spectra(side)
            cv = cross_validate(_new_model(cfg, censors, show_progress=False), current, flux, ivar, k=cfg.scaling.refine_folds,
                                seed=cfg.run.seed, missing=_missing_mode(cfg, current))
            pred = deattenuate(cv.predicted, labels, errors)
            preds.append(pred)
            errs.append(spectral_errors(pred, labels, errors))
        current, refined_errors = combine_labels(labels, errors, preds, errs)
        survey = getattr(cfg, label_side).survey
        run.log.info("[scaled_train] %s labels refined by the training spectra, round %d of %d: prediction errors %s; "
                     "label errors %s -> %s (medians)", survey, k + 1, cfg.scaling.refine_labels,
                     " / ".join(", ".join(f"{x:.3g}" for x in e) for e in errs),
                     ", ".join(f"{x:.3g}" for x in np.nanmedian(errors, axis=0)),
                     ", ".join(f"{x:.3g}" for x in np.nanmedian(refined_errors, axis=0)))
    t = Table({"common_row": np.flatnonzero(np.asarray(cs["in_training"], bool))})
    for j, lab in enumerate(cfg.scaling.labels):
        t[lab] = labels[:, j]
        t[f"{lab}_refined"] = current[:, j]
        t[f"e_{lab}_refined"] = refined_errors[:, j]
    run.write_table(t, f"cv/{getattr(cfg, label_side).survey}_refined_labels.fits")
    return current


def train_pair(run, name, spectra_side, label_side, cs, spectra, labels, catalogue, repeats=None):
    """Train, cross-validate, calibrate and save one model; ``spectra``: :func:`training_spectra`
    of ``spectra_side``.

    ``labels``: the training labels, the catalogue's or refined ones (:func:`refine_training_labels`);
    ``catalogue``: (labels, errors) of the catalogue. The model and its CV folds are trained on
    ``labels``; the CV is scored, and the model calibrated and its distance flag scaled, against
    the catalogue's labels and quoted errors: the survey's scale, with or without refinement."""
    cfg, tcfg = run.cfg, run.cfg.training
    train = np.asarray(cs["in_training"], bool)
    flux, ivar, setup, wavelength, censors = spectra
    missing = _missing_mode(cfg, labels)
    m = _new_model(cfg, censors, name=name)
    run.log.info("[scaled_train] %s: %s spectra x %s labels, %d stars x %d pixels, %d terms%s", name, getattr(cfg, spectra_side).survey,
                 getattr(cfg, label_side).survey, len(labels), flux.shape[1], m.n_terms,
                 f"; {int((~np.isfinite(labels)).sum())} missing labels imputed" if missing == "impute" else "")
    m.fit(labels, flux, ivar, setup=setup, missing=missing,
          provenance=run.provenance(input_store=run.path(f"{spectra_side}.h5"), command=f"cannonade run: model {name!r}"))
    cv = cross_validate(m, labels, flux, ivar, k=tcfg.cv_folds, seed=cfg.run.seed, missing=missing)
    cat_labels, errors = catalogue
    if cat_labels is not labels:  # refined training labels: scored against the catalogue's
        cv = dataclasses.replace(cv, truth=np.asarray(cat_labels, float))
    if cfg.calibration.enabled:
        c = cfg.calibration
        run.log.info("[scaled_train] %s: calibrating from %d CV stars and %d repeat spectra of %d stars", name, len(cv.truth),
                     0 if repeats is None else len(repeats[2]), 0 if repeats is None else len(np.unique(repeats[2])))
        if repeats is None and c.error_model == "nandakumar":
            raise ConfigError(f"model {name!r}: calibration.error_model = 'nandakumar' needs repeat spectra of the "
                              f"{getattr(cfg, spectra_side).survey} survey (scaling.target_visits / scaling.reference_visits)")
        m.calibrate(cv, label_errors=errors, repeats=repeats, error_model=c.error_model,
                    distance_threshold=c.distance_threshold or None, low_snr=c.low_snr,
                    max_missing_fraction=c.max_missing_fraction)
        t = m.calibration_.table()
        t["model"] = name
        run.write_table(t, f"cv/{name}_calibration.csv")
    m.save(run.path("models", f"{name}.npz"))
    summary = cv.table()
    summary["model"] = name
    run.write_table(summary, f"cv/{name}_summary.csv")
    pt = cv.predictions_table()
    pt["common_row"] = np.flatnonzero(train)
    run.write_table(pt, f"cv/{name}_predictions.fits")
    run.write_table(residual_table(m, labels, flux, ivar, wavelength), f"tables/residuals_{name}.csv")
    for row in summary:
        run.log.info("[scaled_train]   %s CV %-9s bias %+9.4f  scatter %8.4f", name, row["label"], row["bias"], row["scatter"])
    return summary


def execute(run):
    from astropy.table import vstack

    for d in ("models", "cv", "tables"):
        run.path(d).mkdir(exist_ok=True)
    cs = read_common(run)
    cfg = run.cfg
    cache = {}

    def spectra(side):  # each store's training spectra, read once for its two models
        if side not in cache:
            cache[side] = training_spectra(run, side, cs)
        return cache[side]

    labels, catalogue = {}, {}
    for side in ("target", "reference"):
        lab, err = catalogue[side] = training_labels(cfg, cs, side)
        labels[side] = refine_training_labels(run, cs, side, lab, err, spectra) if cfg.scaling.refine_labels else lab
    summaries, info = [], {}
    repeats = {}
    if cfg.calibration.enabled:  # each survey's repeat spectra, read once for its two models
        repeats = {"target": target_repeats(run), "reference": reference_repeats(run)}
    for name, (s, lab) in model_names(cfg).items():
        sm = train_pair(run, name, s, lab, cs, spectra(s), labels[lab], catalogue[lab], repeats=repeats.get(s))
        summaries.append(sm)
        info[name] = {"scatter": dict(zip(sm["label"], np.round(sm["scatter"], 5)))}
    run.write_table(vstack(summaries), "cv/cv_summary.csv")
    return info
