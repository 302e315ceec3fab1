"""The Wheeler+2020 label-transfer pipeline: staged, resumable, from survey files to catalogue.

``cannonade run CONFIG.toml`` runs, in order (Wheeler+2020 §2–§5.1):

1. ``ingest``      target spectra -> HDF5 store on the common grid (resumable per chunk)
2. ``crossmatch``  reference x target, 1″ sky match (or by id); best visit per reference star
3. ``cuts``        quality cuts (expressions over catalogue columns)
4. ``clean``       windowed-χ² cleaning of the reference set on its own spectra
5. ``split``       dwarf / giant by Wheeler+2020 Eq. 1 on the target survey's Teff, log g
6. ``labels``      training labels per model, derived (error-weighted mean) labels
7. ``train``       a Cannon model per class + k-fold cross-validation
8. ``infer``       labels of every target spectrum, chunk by chunk (resumable per chunk)
9. ``combine``     S/N-weighted combination of repeat visits
10. ``dynamics``   Gaia cross-match, Galactocentric coordinates, actions (if configured)
11. ``catalogue``  per-star and per-observation catalogues (FITS + Parquet)

Every stage writes its outputs atomically into the run directory and then a marker file
``stages/<stage>.json`` with its counts; a rerun skips stages with a marker. ``--from STAGE``
removes the markers of that stage and all after it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from cannonade.config import evaluate_cut, expression_names, load_config, resolve_column
from cannonade.exceptions import ColumnError, ConfigError, TrainingSetError
from cannonade.cannon.training import scatter_weights
from cannonade.util import atomic_path, progress

STAGES = [
    "ingest",
    "crossmatch",
    "cuts",
    "clean",
    "split",
    "labels",
    "train",
    "infer",
    "combine",
    "dynamics",
    "catalogue",
]

log = logging.getLogger("cannonade.pipeline")


# --------------------------------------------------------------------------- small pure helpers
def is_giant(teff, logg):
    """Wheeler+2020 Eq. 1: giant if log g is below 4.18 (Teff < 5200 K) or below −6e-4 Teff + 7.3.

    teff, logg : (n,) float -> (n,) bool; NaN inputs give False (see :func:`split_classes`).
    """
    teff = np.asarray(teff, dtype=float)
    logg = np.asarray(logg, dtype=float)
    boundary = np.where(teff < 5200.0, 4.18, -6e-4 * teff + 7.3)
    with np.errstate(invalid="ignore"):
        return logg < boundary


def weighted_mean_label(values, errors=None):
    """Error-weighted mean over components (Wheeler+2020 §2.2 mean α, mean s-process).

    values, errors : (n, c) float; NaN components are skipped. errors None -> equal weights.
    Returns (mean (n,), error (n,)); NaN where no component is finite.
    """
    values = np.asarray(values, dtype=float)
    if errors is None:
        w = np.where(np.isfinite(values), 1.0, 0.0)
    else:
        errors = np.asarray(errors, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(values) & np.isfinite(errors) & (errors > 0), 1.0 / errors**2, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sw > 0, (w * np.nan_to_num(values)).sum(axis=1) / sw, np.nan)
        err = np.where(sw > 0, 1.0 / np.sqrt(sw), np.nan) if errors is not None else np.full(len(values), np.nan)
    return mean, err


def combine_visits(star_ids, snr, values):
    """S/N-weighted mean of per-observation values for each star (Wheeler+2020 §5.1).

    Parameters
    ----------
    star_ids : (n_obs,) array
    snr : (n_obs,) float
        Weights (z-band S/N); non-finite or non-positive S/N gets weight 0 unless it is the
        only observation of its star.
    values : (n_obs, k) float
        NaN values are skipped.

    Returns
    -------
    unique_ids : (n_star,) ; inverse : (n_obs,) int ; mean : (n_star, k) ; n_obs : (n_star,) int
    """
    uniq, inv = np.unique(np.asarray(star_ids), return_inverse=True)
    w = np.where(np.isfinite(snr) & (snr > 0), snr, 0.0)
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    ok = np.isfinite(values)
    wv = np.where(ok, w[:, None], 0.0)
    n_star, k = len(uniq), values.shape[1]
    sum_w = np.zeros((n_star, k))
    sum_wv = np.zeros((n_star, k))
    np.add.at(sum_w, inv, wv)
    np.add.at(sum_wv, inv, wv * np.nan_to_num(values))
    # a star whose finite values all have zero weight: fall back to equal weights
    eq = np.zeros((n_star, k))
    eqv = np.zeros((n_star, k))
    np.add.at(eq, inv, ok.astype(float))
    np.add.at(eqv, inv, np.nan_to_num(values))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sum_w > 0, sum_wv / sum_w, np.where(eq > 0, eqv / eq, np.nan))
    return uniq, inv, mean, np.bincount(inv, minlength=n_star)


def label_element(label):
    """Element symbol of a label name: 'mg_fe' -> 'Mg', 'fe_h' -> 'Fe'; None for teff/logg/vmic."""
    if label == "fe_h":
        return "Fe"
    if label.endswith("_fe"):
        el = label[: -len("_fe")]
        return el[:1].upper() + el[1:].lower()
    return None


def window_masks(wavelength, label_names, windows, derived=None, resolution=None):
    """Per-label pixel masks of the element line windows on a grid.

    Derived labels use the union of their components' windows. At low resolution each window
    is widened by half a resolution element λ/R on each side, so it covers the pixels the
    line's light falls on. Returns dict label -> (P,) bool (only labels with windows).
    """
    from cannonade.spectra.linelists import window_mask

    derived = derived or {}
    out = {}
    for name in label_names:
        comps = derived.get(name, {}).get("mean_of", [name])
        mask = np.zeros(len(wavelength), dtype=bool)
        for comp in comps:
            el = label_element(comp)
            if el is None or el not in windows:
                continue
            w = np.asarray(windows[el], dtype=float)
            if resolution:
                half = 0.5 * w.mean(axis=1, keepdims=True) / resolution
                w = np.hstack([w[:, :1] - half, w[:, 1:] + half])
            mask |= window_mask(wavelength, w, vacuum=True)
        if mask.any():
            out[name] = mask
    return out


def read_table(path):
    """Read a catalogue (FITS, CSV, Parquet) into an astropy Table."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"catalogue {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        from cannonade.catalogue.schemas import read_catalogue

        return read_catalogue(path)
    try:
        if suffix == ".csv":
            return Table.read(path, format="ascii.csv")
        return Table.read(path)
    except Exception as exc:  # astropy raises many kinds
        raise ConfigError(f"catalogue {path} could not be read: {exc}") from None


def _col(table, name, aliases=None, what="catalogue", dtype=float):
    """A catalogue column as a plain array (masked -> NaN; byte strings -> str)."""
    c = table[resolve_column(name, table.colnames, aliases, what)]
    if hasattr(c, "filled"):
        c = c.filled(np.nan if np.dtype(c.dtype).kind == "f" else c.fill_value)
    c = np.asarray(c)
    if c.dtype.kind == "S":
        c = np.char.decode(c, "utf-8")
    return c.astype(dtype) if dtype is not None else c


# --------------------------------------------------------------------------- the run
class Run:
    """One pipeline run: a validated config, a run directory, stage markers and a log."""

    def __init__(self, config):
        self.cfg = load_config(config) if not isinstance(config, dict) else config
        self.out = Path(self.cfg["run"]["out"])
        self._tables = {}
        self._target_rows = None
        # every configured column must exist before anything is written
        self.check_columns()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "stages").mkdir(exist_ok=True)
        self.log = self._logger()

    # ---- infrastructure
    def _logger(self):
        logger = logging.getLogger(f"cannonade.run.{self.out}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not logger.handlers:
            fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
            fh = logging.FileHandler(self.out / "run.log")
            fh.setFormatter(fmt)
            sh = logging.StreamHandler()
            sh.setFormatter(fmt)
            if os.environ.get("CANNONADE_QUIET"):
                sh.setLevel(logging.WARNING)
            logger.addHandler(fh)
            logger.addHandler(sh)
        return logger

    def path(self, *parts):
        return self.out.joinpath(*parts)

    def marker(self, stage):
        return self.path("stages", f"{stage}.json")

    def done(self, stage):
        return self.marker(stage).is_file()

    def mark(self, stage, info):
        with atomic_path(self.marker(stage)) as tmp:
            tmp.write_text(json.dumps(info, indent=1, default=_json_default))

    def stage_info(self, stage):
        return json.loads(self.marker(stage).read_text())

    def table(self, key):
        """Catalogues, read once: 'target', 'reference', 'gaia'."""
        if key not in self._tables:
            path = {"target": self.cfg["target"]["catalogue"], "reference": self.cfg["reference"]["catalogue"], "gaia": self.cfg["dynamics"]["gaia"]}[key]
            self._tables[key] = read_table(path)
        return self._tables[key]

    def write_table(self, table, name):
        path = self.path(name)
        with atomic_path(path) as tmp:
            table.write(tmp, format="fits" if path.suffix == ".fits" else "ascii.csv", overwrite=True)
        return path

    def read_run_table(self, name):
        from astropy.table import Table

        return Table.read(self.path(name))

    # ---- the labels the run needs from the reference catalogue
    def base_labels(self):
        """Reference-catalogue labels needed: model labels, derived components (and their errors)."""
        derived = self.cfg["labels"]["derived"]
        names, errors = [], []
        for spec in self.cfg["models"].values():
            for lab in spec["labels"]:
                if lab in derived:
                    for comp in derived[lab]["mean_of"]:
                        names.append(comp)
                        if derived[lab].get("weights", "error") == "error":
                            errors.append(self.cfg["reference"]["error_prefix"] + comp)
                else:
                    names.append(lab)
        if self.cfg["clean"]["enabled"] and self.cfg["reference"]["spectra"]:
            names += self.cfg["clean"]["labels"]
        return list(dict.fromkeys(names)), list(dict.fromkeys(errors))

    def model_labels(self):
        return {name: list(spec["labels"]) for name, spec in self.cfg["models"].items()}

    def check_columns(self):
        """Fail before any work if a configured column does not exist (names it and the columns that exist)."""
        t, r = self.cfg["target"], self.cfg["reference"]
        tgt, ref = self.table("target"), self.table("reference")
        on_target = (tgt.colnames, None, f"target catalogue ({t['catalogue']})")
        on_reference = (ref.colnames, r["columns"], f"reference catalogue ({r['catalogue']})")
        needs = [(f"target.{k}", t[k], on_target) for k in
                 ("id_column", "star_column", "file_column", "snr_column", "teff_column", "logg_column", "ra_column", "dec_column")]
        if t["redshift_column"]:
            needs.append(("target.redshift_column", t["redshift_column"], on_target))
        needs += [(f"reference.{k}", r[k], on_reference) for k in ("id_column", "ra_column", "dec_column")]
        for side, on in (("target", on_target), ("reference", on_reference)):
            needs += [(f"cuts.{side} {expr!r}", n, on) for expr in self.cfg["cuts"][side] for n in expression_names(expr)]
        names, errors = self.base_labels()
        needs += [("labels", n, on_reference) for n in names + errors]
        if self.cfg["crossmatch"]["method"] == "id":
            needs.append(("crossmatch.target_id_column", self.cfg["crossmatch"]["target_id_column"], on_target))
        for where, name, (columns, aliases, what) in needs:
            try:
                resolve_column(name, columns, aliases, what)
            except ColumnError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if self.cfg["dynamics"]["enabled"] and self.cfg["dynamics"]["gaia"]:
            g = self.table("gaia")
            for need in ("ra", "dec", "pmra", "pmdec", "r_est"):
                if need not in g.colnames:
                    raise ConfigError(f"dynamics.gaia: Gaia catalogue lacks column {need!r}; columns are {sorted(g.colnames)}")

    # ---- driver
    def run(self, from_stage=None):
        if from_stage is not None:
            if from_stage not in STAGES:
                raise ConfigError(f"--from {from_stage!r}: unknown stage; stages are {STAGES}")
            for s in STAGES[STAGES.index(from_stage):]:
                if self.done(s):
                    self.marker(s).unlink()
            if STAGES.index(from_stage) <= STAGES.index("infer"):
                _remove_tree(self.path("infer", "parts"))
        t_run = time.perf_counter()
        self.log.info("cannonade run: %s -> %s", self.cfg.get("_path", "<dict>"), self.out)
        for stage in STAGES:
            if self.done(stage):
                self.log.info("[%s] already done, skipped (%s)", stage, _short(self.stage_info(stage)))
                continue
            t0 = time.perf_counter()
            info = getattr(self, f"stage_{stage}")()
            info["seconds"] = round(time.perf_counter() - t0, 2)
            self.mark(stage, info)
            self.log.info("[%s] %s", stage, _short(info))
        self.log.info("run finished in %.1f s; catalogue in %s", time.perf_counter() - t_run, self.path("catalogue"))
        return self

    # ---- 1. ingest
    def stage_ingest(self):
        from cannonade.spectra.store import ingest

        self._target_rows = None
        t = self.cfg["target"]
        tgt = self.table("target")
        files = [str(f).strip() for f in _col(tgt, t["file_column"], dtype=None)]
        spectra = Path(t["spectra"])
        listing = self.path("target_files.txt")
        with atomic_path(listing) as tmp:
            tmp.write_text("\n".join(str(spectra / f) for f in files) + "\n")
        redshifts = None
        if t["redshift_column"]:
            z = _col(tgt, t["redshift_column"])
            redshifts = {f: float(v) for f, v in zip(files, z) if np.isfinite(v)}
        rep = ingest(
            [f"@{listing}"],
            self.path("target.h5"),
            grid=t["grid"],
            normalise=t["normalise"],
            redshifts=redshifts,
            workers=self.cfg["run"]["workers"],
            chunk_size=max(200, min(2000, self.cfg["run"]["chunk_size"])),
        )
        self.log.info("[ingest] %d target spectra stored, %d unreadable (report: %s)", rep.n_ok, rep.n_failed, getattr(rep, "error_report", ""))
        if rep.n_ok == 0:
            raise ConfigError(f"no target spectrum could be read from {spectra} (see {getattr(rep, 'error_report', 'the error report')})")
        return {"n_catalogue": len(tgt), "n_stored": rep.n_ok, "n_failed": rep.n_failed}

    def target_rows(self):
        """Store row of every target-catalogue row (-1 where its spectrum could not be read).

        Read from the store once per run (several stages need it; ingest resets it)."""
        if self._target_rows is not None:
            return self._target_rows
        from cannonade.spectra.store import SpectraStore

        tgt = self.table("target")
        files = [os.path.basename(str(f).strip()) for f in _col(tgt, self.cfg["target"]["file_column"], dtype=None)]
        with SpectraStore(self.path("target.h5")) as st:
            src = [os.path.basename(str(s)) for s in st.meta()["source_file"]]
        index = {s: i for i, s in enumerate(src)}
        self._target_rows = np.array([index.get(f, -1) for f in files], dtype=int)
        return self._target_rows

    # ---- 2. crossmatch
    def stage_crossmatch(self):
        from astropy.table import Table

        from cannonade.galaxy.crossmatch import best_match, sky_match

        t, r = self.cfg["target"], self.cfg["reference"]
        tgt, ref = self.table("target"), self.table("reference")
        snr = _col(tgt, t["snr_column"])
        al = r["columns"]
        if self.cfg["crossmatch"]["method"] == "sky":
            ra_r, dec_r = _col(ref, r["ra_column"], al), _col(ref, r["dec_column"], al)
            ra_t, dec_t = _col(tgt, t["ra_column"]), _col(tgt, t["dec_column"])
            # every target visit of a reference star lies within the radius: take the best S/N one
            bm = best_match(ra_r, dec_r, ra_t, dec_t, self.cfg["crossmatch"]["radius_arcsec"], rank=-snr, prefer="min")
            index, n_matches, dup = bm.index, bm.n_matches, bm.duplicated
            sep = bm.sep_arcsec
            pairs = sky_match(ra_r, dec_r, ra_t, dec_t, self.cfg["crossmatch"]["radius_arcsec"])
            # a target observation claimed by several reference stars is ambiguous: drop those references
            n_refs_per_target = np.bincount(np.asarray(pairs[1], dtype=int), minlength=len(tgt)) if len(pairs[1]) else np.zeros(len(tgt), int)
        else:
            ids_ref = _col(ref, r["id_column"], al, dtype=None)
            ids_tgt = _col(tgt, self.cfg["crossmatch"]["target_id_column"], dtype=None)
            index = np.full(len(ref), -1)
            n_matches = np.zeros(len(ref), dtype=int)
            order = np.argsort(-np.nan_to_num(snr, nan=-np.inf), kind="stable")
            pos = {}
            for j in order:
                pos.setdefault(str(ids_tgt[j]).strip(), []).append(j)
            for i, rid in enumerate(ids_ref):
                js = pos.get(str(rid).strip(), [])
                n_matches[i] = len(js)
                if js:
                    index[i] = js[0]
            dup = np.zeros(len(ref), dtype=bool)
            sep = np.full(len(ref), np.nan)
            n_refs_per_target = np.bincount(index[index >= 0], minlength=len(tgt))
        ambiguous = (index >= 0) & (n_refs_per_target[np.maximum(index, 0)] > 1)
        index = np.where(ambiguous, -1, index)
        out = Table(
            dict(ref_row=np.arange(len(ref)), target_row=index, sep_arcsec=sep, n_target_matches=n_matches, ambiguous=ambiguous | dup)
        )
        self.write_table(out, "crossmatch.fits")
        info = {
            "n_reference": len(ref),
            "n_matched": int((index >= 0).sum()),
            "n_with_repeat_visits": int((n_matches > 1).sum()),
            "n_ambiguous_dropped": int(ambiguous.sum()),
        }
        self.log.info(
            "[crossmatch] %d of %d reference stars matched; %d have several target visits (best S/N kept); %d ambiguous dropped",
            info["n_matched"], len(ref), info["n_with_repeat_visits"], info["n_ambiguous_dropped"],
        )
        return info

    # ---- 3. cuts
    def stage_cuts(self):
        xm = self.read_run_table("crossmatch.fits")
        tgt, ref = self.table("target"), self.table("reference")
        al = self.cfg["reference"]["columns"]
        rows_t = self.target_rows()
        keep = np.asarray(xm["target_row"]) >= 0
        counts = {"matched": int(keep.sum())}
        trow = np.maximum(np.asarray(xm["target_row"]), 0)
        has_spec = rows_t[trow] >= 0
        keep &= has_spec
        counts["with_spectrum"] = int(keep.sum())
        for expr in self.cfg["cuts"]["target"]:
            ok = evaluate_cut(expr, tgt, None, "target catalogue")[trow]
            self.log.info("[cuts] target %-28s removes %d", expr, int((keep & ~ok).sum()))
            keep &= ok
            counts[f"target: {expr}"] = int(keep.sum())
        for expr in self.cfg["cuts"]["reference"]:
            ok = evaluate_cut(expr, ref, al, "reference catalogue")
            self.log.info("[cuts] reference %-25s removes %d", expr, int((keep & ~ok).sum()))
            keep &= ok
            counts[f"reference: {expr}"] = int(keep.sum())
        xm["pass_cuts"] = keep
        self.write_table(xm, "training_candidates.fits")
        return {"n_in": counts["matched"], "n_kept": int(keep.sum()), "counts": counts}

    # ---- 4. windowed-chi2 cleaning
    def stage_clean(self):
        from cannonade.spectra.linelists import load_line_windows

        cand = self.read_run_table("training_candidates.fits")
        keep = np.asarray(cand["pass_cuts"]).copy()
        cand["windowed_chi2_ok"] = np.ones(len(cand), dtype=bool)
        if not (self.cfg["clean"]["enabled"] and self.cfg["reference"]["spectra"]):
            self.write_table(cand, "training_clean.fits")
            return {"n_in": int(keep.sum()), "n_kept": int(keep.sum()), "skipped": True}
        windows = load_line_windows(self.cfg["clean"]["windows"] or None)
        chi2, elements = self._reference_window_chi2(cand, keep, windows)
        pct = self.cfg["clean"]["percentile"]
        bad = np.zeros(len(cand), dtype=bool)
        removed = {}
        for j, el in enumerate(elements):
            c = chi2[:, j]
            ok = keep & np.isfinite(c)
            if ok.sum() < 10:
                continue
            thresh = np.percentile(c[ok], pct)
            above = ok & (c > thresh)
            removed[el] = int(above.sum())
            bad |= above
            cand[f"chi2_window_{el}"] = c
        ok = keep & ~bad
        cand["windowed_chi2_ok"] = ~bad
        self.write_table(cand, "training_clean.fits")
        self.log.info("[clean] windowed chi2 > %gth percentile for any of %d elements removes %d of %d stars", pct, len(elements), int((keep & bad).sum()), int(keep.sum()))
        return {"n_in": int(keep.sum()), "n_kept": int(ok.sum()), "removed_per_element": removed}

    def _reference_window_chi2(self, cand, keep, windows):
        """χ² of each candidate's reference spectrum in each element's windows, under a Cannon
        model of the reference survey trained on its own labels (Wheeler+2020 §2.1)."""
        from cannonade.cannon.model import CannonModel
        from cannonade.spectra.surveys import common_grid
        from cannonade.cannon.vectorizer import mixed_terms

        r = self.cfg["reference"]
        ref = self.table("reference")
        al = r["columns"]
        base, _ = self.base_labels()
        elements = [label_element(n) for n in base]
        elements = [e for e in dict.fromkeys(elements) if e and e in windows]
        clean_labels = list(dict.fromkeys(self.cfg["clean"]["labels"] + [n for n in base if label_element(n) in elements]))
        grid = common_grid("galah" if r["survey"] == "galah" else r["survey"])
        # only pixels in some window are needed (and they keep the model small)
        any_window = np.zeros(len(grid), dtype=bool)
        from cannonade.spectra.linelists import window_mask

        el_masks = {}
        for el in elements:
            el_masks[el] = window_mask(grid, windows[el], vacuum=True)
            any_window |= el_masks[el]
        wl = grid[any_window]
        el_masks = {el: m[any_window] for el, m in el_masks.items()}
        rows = np.flatnonzero(keep)
        ids = _col(ref, r["id_column"], al, dtype=str)[np.asarray(cand["ref_row"])[rows]]
        flux, ivar, readable, failures = read_reference_spectra(ids, r["spectra"], wl, self.cfg["run"]["workers"])
        for sid, why in failures:
            self.log.info("[clean] reference spectrum of %s unreadable: %s", sid, why)
        labels = np.column_stack([_col(ref, n, al)[np.asarray(cand["ref_row"])[rows]] for n in clean_labels])
        train = readable & np.all(np.isfinite(labels), axis=1)
        chi2 = np.full((len(cand), len(elements)), np.nan)
        if train.sum() < 2 * (len(clean_labels) + 1) * (len(clean_labels) + 2) // 2:
            self.log.info("[clean] only %d reference spectra usable; windowed-chi2 cleaning skipped", int(train.sum()))
            return chi2, elements
        # quadratic in the stellar labels, linear in each abundance plus abundance x Teff: the
        # abundances scale their own lines; a full quadratic in ~16 labels (153 terms) is not needed
        n_stellar = len(self.cfg["clean"]["labels"])
        terms = mixed_terms(n_stellar, len(clean_labels) - n_stellar, order=self.cfg["clean"]["order"])
        m = CannonModel(clean_labels, terms=terms).fit(labels[train], flux[train], ivar[train])
        model = m.predict(np.where(np.isfinite(labels), labels, m.scaler_.offset_))
        w = scatter_weights(ivar, m.s2_)
        resid2 = np.where(np.isfinite(model), w * (flux - np.nan_to_num(model)) ** 2, 0.0)
        for j, el in enumerate(elements):
            c = resid2[:, el_masks[el]].sum(axis=1)
            c[~readable] = np.nan
            chi2[rows, j] = c
        return chi2, elements

    # ---- 5. split
    def stage_split(self):
        t = self.cfg["target"]
        tgt = self.table("target")
        teff, logg = _col(tgt, t["teff_column"]), _col(tgt, t["logg_column"])
        if self.cfg["split"]["method"] == "none":
            name = next(iter(self.cfg["models"]))
            cls = np.array([name] * len(tgt))
        else:
            cls = np.where(is_giant(teff, logg), "giant", "dwarf")
            cls = np.where(np.isfinite(teff) & np.isfinite(logg), cls, "either")
        with atomic_path(self.path("split.npz")) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, model_class=cls.astype("U8"))
        counts = {str(c): int((cls == c).sum()) for c in np.unique(cls)}
        self.log.info("[split] target observations per model (Wheeler+2020 Eq. 1): %s", counts)
        return {"counts": counts}

    def target_classes(self):
        with np.load(self.path("split.npz"), allow_pickle=False) as d:
            return d["model_class"]

    # ---- 6. labels
    def stage_labels(self):
        from astropy.table import Table

        cand = self.read_run_table("training_clean.fits")
        ref = self.table("reference")
        al = self.cfg["reference"]["columns"]
        ep = self.cfg["reference"]["error_prefix"]
        derived = self.cfg["labels"]["derived"]
        keep = np.asarray(cand["pass_cuts"]) & np.asarray(cand["windowed_chi2_ok"])
        ref_rows = np.asarray(cand["ref_row"])
        target_rows = np.asarray(cand["target_row"])
        cls_all = self.target_classes()
        out = Table(dict(ref_row=ref_rows[keep], target_row=target_rows[keep]))
        out["model_class"] = cls_all[target_rows[keep]]
        names = list(dict.fromkeys(n for labs in self.model_labels().values() for n in labs))
        for n in names:
            if n in derived:
                comps = derived[n]["mean_of"]
                vals = np.column_stack([_col(ref, c, al)[ref_rows[keep]] for c in comps])
                errs = None
                if derived[n].get("weights", "error") == "error":
                    errs = np.column_stack([_col(ref, ep + c, al)[ref_rows[keep]] for c in comps])
                out[n], out[ep + n] = weighted_mean_label(vals, errs)
            else:
                out[n] = _col(ref, n, al)[ref_rows[keep]]
        self.write_table(out, "training_set.fits")
        counts = {}
        for model, labs in self.model_labels().items():
            in_class = _col(out, "model_class", dtype=str) == model
            finite = np.all(np.column_stack([np.isfinite(np.asarray(out[n])) for n in labs]), axis=1)
            counts[model] = {"in_class": int(in_class.sum()), "complete_labels": int((in_class & finite).sum())}
        self.log.info("[labels] training stars per model: %s", counts)
        return {"n_training": len(out), "per_model": counts}

    # ---- 7. train + CV
    def stage_train(self):
        from cannonade.cannon.model import CannonModel
        from cannonade.spectra.store import SpectraStore
        from cannonade.cannon.crossval import cross_validate

        ts = self.read_run_table("training_set.fits")
        rows_t = self.target_rows()
        tcfg = self.cfg["training"]
        info = {}
        (self.path("models")).mkdir(exist_ok=True)
        (self.path("cv")).mkdir(exist_ok=True)
        with SpectraStore(self.path("target.h5")) as st:
            wavelength = st.wavelength
            for name, labs in self.model_labels().items():
                sel = (_col(ts, "model_class", dtype=str) == name) & np.all(
                    np.column_stack([np.isfinite(np.asarray(ts[n])) for n in labs]), axis=1
                )
                n = int(sel.sum())
                if n < tcfg["min_stars"]:
                    raise TrainingSetError(f"model {name!r}: only {n} training stars pass the cuts (training.min_stars = {tcfg['min_stars']})")
                store_rows = rows_t[np.asarray(ts["target_row"])[sel]]
                flux, ivar = _read_rows(st, store_rows)
                labels = np.column_stack([np.asarray(ts[l], dtype=float)[sel] for l in labs])
                m = CannonModel(labs, order=tcfg["order"], scale=tcfg["scale"], scatter=tcfg["scatter"], regularization=tcfg["regularization"])
                self.log.info("[train] %s model: %d stars x %d pixels, %d labels, %d terms", name, n, flux.shape[1], len(labs), m.n_terms)
                m.fit(labels, flux, ivar, wavelength=wavelength)
                m.save(self.path("models", f"{name}.npz"))
                cv = cross_validate(m, labels, flux, ivar, k=tcfg["cv_folds"], seed=self.cfg["run"]["seed"])
                summary = cv.table()
                summary["model"] = name
                summary["n_train"] = n
                self.write_table(summary, f"cv/{name}_summary.csv")
                pt = cv.predictions_table()
                pt["ref_row"] = np.asarray(ts["ref_row"])[sel]
                self.write_table(pt, f"cv/{name}_predictions.fits")
                for row in summary:
                    self.log.info("[train]   CV %-14s bias %+9.4f  scatter %8.4f  corr %.3f", row["label"], row["bias"], row["scatter"], row["corr"])
                info[name] = {"n_train": n, "scatter": dict(zip(summary["label"], np.round(summary["scatter"], 5))), "bias": dict(zip(summary["label"], np.round(summary["bias"], 5)))}
        from astropy.table import Table, vstack

        allcv = vstack([Table.read(self.path("cv", f"{n}_summary.csv"), format="ascii.csv") for n in self.model_labels()])
        self.write_table(allcv, "cv/cv_summary.csv")
        return info

    def models(self):
        from cannonade.cannon.model import CannonModel

        models = {name: CannonModel.load(self.path("models", f"{name}.npz")) for name in self.model_labels()}
        for m in models.values():
            m.show_progress = False  # the stage has its own bar
        return models

    # ---- 8. infer (chunked, resumable)
    def stage_infer(self):
        from cannonade.spectra.linelists import load_line_windows
        from cannonade.spectra.store import SpectraStore

        models = self.models()
        classes_cat = self.target_classes()
        rows_t = self.target_rows()
        with SpectraStore(self.path("target.h5")) as st:
            n_store = st.n_spectra
            wavelength = st.wavelength
        # class of each store row
        cls = np.full(n_store, "", dtype="U8")
        ok = rows_t >= 0
        cls[rows_t[ok]] = classes_cat[ok]
        all_labels = list(dict.fromkeys(n for labs in self.model_labels().values() for n in labs))
        windows = load_line_windows(self.cfg["clean"]["windows"] or None)
        masks = window_masks(wavelength, all_labels, windows, self.cfg["labels"]["derived"], resolution=1800.0 if self.cfg["target"]["survey"] == "lamost" else None)
        parts = self.path("infer", "parts")
        # finished chunks are reused only if they came from these very models
        fingerprint = {name: m.training_hash_ for name, m in models.items()}
        fp_file = parts / "models.json"
        if parts.exists() and (not fp_file.is_file() or json.loads(fp_file.read_text()) != fingerprint):
            self.log.info("[infer] the models changed since the unfinished inference: starting it afresh")
            _remove_tree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        if not fp_file.is_file():
            with atomic_path(fp_file) as tmp:
                tmp.write_text(json.dumps(fingerprint))
        chunk = self.cfg["run"]["chunk_size"]
        starts = list(range(0, n_store, chunk))
        n_done_before = sum(1 for s in starts if (parts / f"part_{s // chunk:06d}.npz").is_file())
        if n_done_before:
            self.log.info("[infer] resuming: %d of %d chunks already finished", n_done_before, len(starts))
        with SpectraStore(self.path("target.h5")) as st:
            for s0 in progress(starts, desc="infer", total=len(starts)):
                part = parts / f"part_{s0 // chunk:06d}.npz"
                if part.is_file():
                    continue
                s1 = min(n_store, s0 + chunk)
                flux, ivar = st.read(s0, s1)
                res = infer_observations(models, cls[s0:s1], flux, ivar, all_labels, masks)
                res["store_row"] = np.arange(s0, s1)
                with atomic_path(part) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, **res)
        return {"n_spectra": int(n_store), "n_chunks": len(starts), "resumed_chunks": n_done_before}

    # ---- 9. combine
    def stage_combine(self):
        from astropy.table import Table

        t = self.cfg["target"]
        tgt = self.table("target")
        parts = sorted(self.path("infer", "parts").glob("part_*.npz"))
        arrays, labels = {}, []
        for p in parts:
            with np.load(p, allow_pickle=False) as d:
                labels = [str(n) for n in d["label_names"]]  # the same in every part
                for k in d.files:
                    if k != "label_names":
                        arrays.setdefault(k, []).append(d[k])
        res = {k: np.concatenate(v) for k, v in arrays.items()}
        rows_t = self.target_rows()
        store_to_cat = np.full(int(res["store_row"].max()) + 1 if len(parts) else 0, -1)
        store_to_cat[rows_t[rows_t >= 0]] = np.flatnonzero(rows_t >= 0)
        cat_rows = store_to_cat[res["store_row"]]
        obs = Table()
        obs["obsid"] = _col(tgt, t["id_column"], dtype=None)[cat_rows]
        obs["designation"] = _col(tgt, t["star_column"], dtype=None)[cat_rows]
        obs["giantmodel"] = res["model_class"] == "giant"
        for j, n in enumerate(labels):
            obs[n] = res["labels"][:, j]
            obs[f"e_{n}"] = res["errors"][:, j]
        obs["chi2"] = res["chi2"]
        obs["dof"] = res["dof"]
        for j, n in enumerate(labels):
            c = res["chi2_windows"][:, j]
            if np.any(np.isfinite(c)):
                obs[f"chi2_{n}"] = c
        obs["converged"] = res["converged"].astype(bool)
        obs["outside_training"] = res["outside_training"].astype(bool)
        obs["snrz"] = _col(tgt, t["snr_column"])[cat_rows]
        obs["ra"] = _col(tgt, t["ra_column"])[cat_rows]
        obs["dec"] = _col(tgt, t["dec_column"])[cat_rows]
        rv_name = self.cfg["dynamics"]["rv_column"]
        if rv_name and rv_name in tgt.colnames:
            obs["rv"] = _col(tgt, rv_name)[cat_rows]
        order = np.argsort(cat_rows, kind="stable")
        obs = obs[order]
        self.write_table(obs, "per_observation.fits")
        # S/N-weighted combination of repeat visits (Wheeler+2020 §5.1)
        value_cols = labels + [f"e_{n}" for n in labels] + ["chi2"] + [c for c in obs.colnames if c.startswith("chi2_")]
        if "rv" in obs.colnames:
            value_cols.append("rv")
        snr = np.asarray(obs["snrz"], dtype=float)
        ids, inv, mean, n_obs = combine_visits(np.asarray(obs["designation"]).astype(str), snr, np.column_stack([np.asarray(obs[c], float) for c in value_cols]))
        star = Table()
        star["designation"] = ids
        best = _argmax_per_group(inv, np.nan_to_num(snr, nan=-1.0), len(ids))
        star["obsid"] = np.asarray(obs["obsid"])[best]
        star["giantmodel"] = np.asarray(obs["giantmodel"])[best]
        for j, c in enumerate(value_cols):
            star[c] = mean[:, j]
        # errors of an S/N-weighted mean of independent visits
        w = np.where(np.isfinite(snr) & (snr > 0), snr, 0.0)
        for n in labels:
            e = np.asarray(obs[f"e_{n}"], float)
            okv = np.isfinite(e)
            num = np.zeros(len(ids))
            den = np.zeros(len(ids))
            np.add.at(num, inv, np.where(okv, (w * e) ** 2, 0.0))
            np.add.at(den, inv, np.where(okv, w, 0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                star[f"e_{n}"] = np.where(den > 0, np.sqrt(num) / den, star[f"e_{n}"])
        conv = np.zeros(len(ids), dtype=int)
        np.add.at(conv, inv, np.asarray(obs["converged"], int))
        star["converged"] = conv == n_obs
        outside = np.zeros(len(ids), dtype=int)
        np.add.at(outside, inv, np.asarray(obs["outside_training"], int))
        star["outside_training"] = outside > 0
        star["snrz"] = np.asarray(obs["snrz"])[best]
        star["ra"] = np.asarray(obs["ra"])[best]
        star["dec"] = np.asarray(obs["dec"])[best]
        star["n_obs"] = n_obs
        self.write_table(star, "per_star.fits")
        self.log.info("[combine] %d observations of %d stars (%d with repeat visits)", len(obs), len(star), int((n_obs > 1).sum()))
        return {"n_observations": len(obs), "n_stars": len(star), "n_repeat_stars": int((n_obs > 1).sum())}

    # ---- 10. dynamics
    def stage_dynamics(self):
        d = self.cfg["dynamics"]
        star = self.read_run_table("per_star.fits")
        if not (d["enabled"] and d["gaia"]):
            self.write_table(star, "per_star_dynamics.fits")
            return {"skipped": True}
        from cannonade.galaxy.kinematics import add_dynamics

        gaia = self.table("gaia")
        out = add_dynamics(
            star, gaia, n_samples=d["n_samples"], seed=self.cfg["run"]["seed"], radius_arcsec=d["radius_arcsec"],
            rv_column="rv" if "rv" in star.colnames else None,
        )
        self.write_table(out, "per_star_dynamics.fits")
        n_match = int(np.isfinite(np.asarray(out["gaia_sep_arcsec"], float)).sum()) if "gaia_sep_arcsec" in out.colnames else 0
        n_unbound = int(np.asarray(out["unbound"]).sum()) if "unbound" in out.colnames else 0
        self.log.info("[dynamics] %d of %d stars matched to Gaia; %d unbound", n_match, len(out), n_unbound)
        return {"n_stars": len(out), "n_gaia_matched": n_match, "n_unbound": n_unbound}

    # ---- 11. catalogue
    def stage_catalogue(self):
        from cannonade.catalogue.schemas import write_catalogue

        star = self.read_run_table("per_star_dynamics.fits")
        obs = self.read_run_table("per_observation.fits")
        written = []
        for fmt in self.cfg["catalogue"]["formats"]:
            suffix = "fits" if fmt == "fits" else "parquet"
            written.append(str(write_catalogue(star, self.path("catalogue", f"per_star.{suffix}"), schema="wheeler2020")))
            written.append(str(write_catalogue(obs, self.path("catalogue", f"per_observation.{suffix}"), schema="wheeler2020")))
        self.log.info("[catalogue] wrote %s", ", ".join(written))
        return {"files": written, "n_stars": len(star), "n_observations": len(obs)}


def infer_observations(models, classes, flux, ivar, label_names, masks):
    """Infer one chunk of target spectra with the model of each one's class.

    ``classes`` entries are model names, '' (no catalogue row: skipped) or 'either'
    (no target-pipeline Teff/log g: every model is tried and the lowest χ²/dof wins).

    Returns a dict of arrays (one row per spectrum): labels/errors (n, n_labels) on the union
    ``label_names`` (NaN where the model lacks the label), chi2, dof, converged,
    outside_training, model_class, chi2_windows (n, n_labels) and label_names.
    """
    n, L = flux.shape[0], len(label_names)
    out = dict(
        labels=np.full((n, L), np.nan),
        errors=np.full((n, L), np.nan),
        chi2=np.full(n, np.nan),
        dof=np.zeros(n, dtype=int),
        converged=np.zeros(n, dtype=bool),
        outside_training=np.zeros(n, dtype=bool),
        model_class=np.array(classes, dtype="U8"),
        chi2_windows=np.full((n, L), np.nan),
        label_names=np.array(label_names),
    )
    best_rchi2 = np.full(n, np.inf)
    for name, m in models.items():
        sel = np.flatnonzero((classes == name) | (classes == "either"))
        if sel.size == 0:
            continue
        r = m.infer(flux[sel], ivar[sel])
        rchi2 = np.where(np.isfinite(r.chi2), r.chi2 / np.maximum(r.dof, 1), np.inf)
        take = rchi2 < best_rchi2[sel]
        take |= ~np.isfinite(best_rchi2[sel]) & (classes[sel] == name)
        rows = sel[take]
        best_rchi2[rows] = rchi2[take]
        cols = [label_names.index(l) for l in m.label_names]
        out["labels"][np.ix_(rows, cols)] = r.labels[take]
        out["errors"][np.ix_(rows, cols)] = r.errors[take]
        out["chi2"][rows] = r.chi2[take]
        out["dof"][rows] = r.dof[take]
        out["converged"][rows] = r.converged[take]
        out["outside_training"][rows] = r.outside_training[take].any(axis=1)
        out["model_class"][rows] = name
        # χ² in each label's line windows (Wheeler+2020 Table 1 chi2_x_fe)
        model_flux = m.predict(np.nan_to_num(r.labels[take], nan=0.0))
        f, iv = flux[rows], ivar[rows]
        good = np.isfinite(f) & np.isfinite(iv) & (iv > 0) & np.isfinite(model_flux)
        w = np.where(good, scatter_weights(iv, m.s2_), 0.0)
        resid2 = w * np.where(good, f - model_flux, 0.0) ** 2
        for lab in m.label_names:
            if lab in masks:
                out["chi2_windows"][rows, label_names.index(lab)] = resid2[:, masks[lab]].sum(axis=1)
    return out


def _read_reference_chunk(args):
    """Worker: read GALAH stars (4 CCDs, the reduction's normalised flux) onto a grid."""
    from cannonade.spectra.readers import read_galah_star
    from cannonade.spectra.preprocessing import resample

    ids, directory, wl = args
    flux = np.zeros((len(ids), len(wl)))
    ivar = np.zeros((len(ids), len(wl)))
    ok = np.zeros(len(ids), dtype=bool)
    failures = []
    for k, sid in enumerate(ids):
        try:
            s = read_galah_star(str(sid), directory=directory, normalised=True)
        except Exception as exc:  # reported by the caller; the star is just not cleaned by spectrum
            failures.append((str(sid), str(exc)))
            continue
        z = s.meta.get("redshift", np.nan)
        wave = s.wavelength / (1.0 + z) if np.isfinite(z) else s.wavelength
        flux[k], ivar[k] = resample(wave, s.flux, s.ivar, wl)
        ok[k] = True
    return flux, ivar, ok, failures


def read_reference_spectra(ids, directory, wavelength, workers=2, chunk=100):
    """Reference-survey (GALAH) spectra of many stars on ``wavelength``, read in parallel.

    Returns flux, ivar (n, P), readable (n,) bool and a list of (id, reason) failures.
    """
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(ids[i : i + chunk], directory, wavelength) for i in range(0, len(ids), chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            results = list(progress(ex.map(_read_reference_chunk, jobs), desc="reference spectra", total=len(jobs)))
    else:
        results = [_read_reference_chunk(j) for j in progress(jobs, desc="reference spectra", total=len(jobs))]
    if not results:
        P = len(wavelength)
        return np.zeros((0, P)), np.zeros((0, P)), np.zeros(0, dtype=bool), []
    flux = np.concatenate([r[0] for r in results])
    ivar = np.concatenate([r[1] for r in results])
    ok = np.concatenate([r[2] for r in results])
    failures = [f for r in results for f in r[3]]
    return flux, ivar, ok, failures


def _read_rows(store, rows):
    """flux, ivar of arbitrary store rows, read in sorted order (HDF5 fancy indexing wants it)."""
    rows = np.asarray(rows, dtype=int)
    order = np.argsort(rows)
    flux = np.empty((len(rows), len(store.wavelength)))
    ivar = np.empty_like(flux)
    # read contiguous blocks covering the sorted rows, bounded in size
    srt = rows[order]
    i = 0
    while i < len(srt):
        j = i
        while j + 1 < len(srt) and srt[j + 1] - srt[i] < 2000:
            j += 1
        f, iv = store.read(int(srt[i]), int(srt[j]) + 1)
        flux[order[i : j + 1]] = f[srt[i : j + 1] - srt[i]]
        ivar[order[i : j + 1]] = iv[srt[i : j + 1] - srt[i]]
        i = j + 1
    return flux, ivar


def _argmax_per_group(inv, values, n_groups):
    """Index of the largest value within each group."""
    order = np.lexsort((-values, inv))
    first = np.ones(len(order), dtype=bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    best = np.empty(n_groups, dtype=int)
    best[inv[order][first]] = order[first]
    return best


def _remove_tree(path):
    import shutil

    if Path(path).exists():
        shutil.rmtree(path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _short(info):
    return ", ".join(f"{k}={v}" for k, v in info.items() if not isinstance(v, dict))[:200]


def run_pipeline(config, from_stage=None):
    """Run (or resume) the pipeline described by a config file or dict; returns the Run."""
    return Run(config).run(from_stage=from_stage)


def cli_run(args):
    run = run_pipeline(args.config, from_stage=args.from_stage)
    print(f"catalogue:  {run.path('catalogue')}")
    print(f"CV summary: {run.path('cv', 'cv_summary.csv')}")
    print(f"run log:    {run.path('run.log')}")
    return 0
