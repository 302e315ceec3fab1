"""``write_report(run_dir)``: the HTML report of a finished run, its figures and ``summary.json``.

Reads only the run directory's files (:class:`~cannonade.report.rundir.RunDirectory`), calls
the science analyses (:mod:`cannonade.science`) on the per-star catalogue, draws every figure
(:mod:`~cannonade.report.figures_model`, :mod:`~cannonade.report.figures_science`) into
``RUN_DIR/report/`` and writes ``index.html`` (:mod:`~cannonade.report.html`) and
``summary.json`` beside them. A figure whose inputs the run lacks (no dynamics, no
calibration, a Nandakumar+2022 run without per-observation spectra...) is not drawn; the page
and ``summary.json`` say which and why. See docs/report.md.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cannonade._version import __version__
from cannonade.exceptions import CannonadeError, ParameterError
from cannonade.provenance import utc_now
from cannonade.report import figures_model as fm
from cannonade.report import figures_science as fs
from cannonade.report.html import Section, esc, figure_html, fmt, mapping_table, page, table_html
from cannonade.report.inputs import ReportError
from cannonade.report.style import quantity_name
from cannonade.report.rundir import RunDirectory
from cannonade.util import atomic_path, json_default, make_dirs

log = logging.getLogger("cannonade.report")

__all__ = ["write_report", "REPORT_DIR", "SUMMARY_FILE", "INDEX_FILE"]

REPORT_DIR = "report"
INDEX_FILE = "index.html"
SUMMARY_FILE = "summary.json"
#: stars drawn in the model-versus-data figure (Wheeler+2020 Fig. 10: six)
N_SPECTRA = 6
#: bins and stars per bin of a map when the default grid leaves every bin below its minimum count
SMALL_MAP_BINS = 12
SMALL_MAP_MIN_COUNT = 3
#: calibration-table columns shown on the page (those the file has)
CALIBRATION_COLUMNS = ("label", "error_model", "noise_scale", "floor", "floor_slope", "repeat_factor", "n_repeat_pairs",
                       "precision_A", "precision_tau", "precision_C", "kde_lo", "kde_hi", "cv_rms", "n_used", "n_clipped")


@dataclass
class FigureEntry:
    """A figure written into the report folder: its file name and one-line caption."""

    file: str
    caption: str


@dataclass
class Part:
    """A section's content as it is built: HTML blocks and figures, in order."""

    blocks: list = field(default_factory=list)

    def add(self, html):
        self.blocks.append(("html", html))

    def figure(self, entry):
        self.blocks.append(("figure", entry))


class ReportBuilder:
    """Builds the report of one run directory (use :func:`write_report`)."""

    def __init__(self, run, out, seed=0, max_points=4000):
        self.run = run
        self.out = Path(out)
        self.seed = int(seed)
        self.max_points = int(max_points)
        self.parts = {}
        self.not_drawn = {}
        self.summary = {"wide_binaries": {"n_pairs": None, "p_value": None},
                        "gradient": {"fe_h_per_kpc": None, "e_fe_h_per_kpc": None}}

    # ------------------------------------------------------------------ plumbing
    def part(self, key):
        return self.parts.setdefault(key, Part())

    def draw(self, section, name, caption, func, *args, **kwargs):
        """Call ``func(*args, path=..., **kwargs)`` and add the figure; a CannonadeError is noted as not drawn."""
        file = f"{name}.png"
        try:
            func(*args, path=self.out / file, **kwargs)
        except CannonadeError as exc:
            self.skip(name, exc)
            return None
        entry = FigureEntry(file, caption)
        self.part(section).figure(entry)
        return entry

    def skip(self, name, reason):
        text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        self.not_drawn[name] = text
        log.info("report: %s not drawn (%s)", name, text)

    def attempt(self, name, func, *args):
        """Run ``func(*args)``; a CannonadeError (inputs the run lacks) is noted under ``name``."""
        try:
            return func(*args)
        except CannonadeError as exc:
            self.skip(name, exc)
            return None

    # ------------------------------------------------------------------ the run summary
    def run_summary(self):
        run, p = self.run, self.part("summary")
        m = re.search(r"configuration fingerprint (\w+)", run.config_text)
        facts = {
            "run directory": str(run.path.resolve()),
            "recipe": run.recipe,
            "configuration fingerprint": m.group(1) if m else None,
            "stages finished": f"{len(run.stages)} of {len(run.stage_order())}",
            "models": ", ".join(run.model_names()) or None,
            "catalogue files": ", ".join(sorted(p_.name for p_ in run.file("catalogue").glob("*.*"))) or None,
            "report written": utc_now(),
        }
        p.add(mapping_table(facts, "", "", caption="Run"))
        missing = run.missing_stages()
        if missing:
            p.add(f'<p class="note">Stages without a marker (unfinished run): {esc(", ".join(missing))}.</p>')
        rows = []
        for name, info in run.stages.items():
            counts = {k: v for k, v in info.items() if k not in ("seconds", "fingerprint")}
            text = fmt(counts)
            rows.append((name, info.get("seconds"), text if len(text) < 400 else text[:397] + "..."))
        p.add(table_html(["stage", "seconds", "counts (stages/<stage>.json)"], rows, caption="Stages"))
        p.add(self.cuts_html())
        sets = self.attempt("label sets", run.label_sets) or {}
        p.add(table_html(["model", "labels"], [(k, ", ".join(v)) for k, v in sets.items()], caption="Label sets"))
        p.add(mapping_table(run.software_versions(), "file", "cannonade version", caption="Software"))
        p.add(f"<details><summary>Configuration (config.toml)</summary><pre>{esc(run.config_text or '(no config.toml)')}</pre>"
              "</details>")

    def cuts_html(self):
        run = self.run
        cfg_cuts = run.config.get("cuts") or {}
        rows = [(f"{side} cut", expr) for side in ("target", "reference") for expr in cfg_cuts.get(side, [])]
        clean = run.config.get("clean") or {}
        if clean.get("enabled"):
            rows.append(("windowed chi2 cleaning", f"remove stars above the {fmt(clean.get('percentile'))}th percentile "
                                                   "of any element's reduced windowed chi2"))
        out = [table_html(["cut", "expression"], rows, caption="Cuts (configuration)")] if rows else []
        counts = (run.stages.get("cuts") or {}).get("counts")
        if counts:
            out.append(table_html(["after", "reference stars left"], list(counts.items()), caption="Cuts (stars left, stages/cuts.json)"))
        for stage in ("clean", "common", "labels"):
            info = run.stages.get(stage)
            if info:
                flat = {k: v for k, v in info.items() if k not in ("seconds", "fingerprint")}
                out.append(mapping_table(flat, "count", "value", caption=f"Training-set selection: {stage}"))
        return "\n".join(out)

    # ------------------------------------------------------------------ cross-validation
    def cross_validation(self):
        run, p = self.run, self.part("cv")
        summary = run.cv_summary()
        if summary is None:
            p.add('<p class="note">No cv/cv_summary.csv in the run.</p>')
        else:
            cols = [c for c in ("model", "label", "bias", "scatter", "rms", "corr", "n", "n_train") if c in summary.colnames]
            p.add(table_html(cols, [[r[c] for c in cols] for r in summary],
                             caption="Cross-validation (cv/cv_summary.csv): bias = mean(CV − reference), "
                                     "scatter = half 84th − 16th percentile, corr = Pearson ρ"))
        precision_rows = []
        folds = (run.config.get("training") or {}).get("cv_folds", "k")
        for name in run.model_names():
            pred = run.cv_predictions(name)
            if pred is None:
                self.skip(f"cv_{name}", f"no cv/{name}_predictions.fits")
                continue
            cal = run.calibration(name)
            bounds = {}
            if cal is not None and {"kde_lo", "kde_hi"} <= set(cal.colnames):
                bounds = {str(r["label"]): (float(r["kde_lo"]), float(r["kde_hi"])) for r in cal}
            try:
                labels = run.model(name).label_names
            except CannonadeError:  # the model file is unreadable: the CV table still names the labels
                labels = [c[3:] for c in pred.colnames if c.startswith("cv_")]
            msum = run.cv_model_summary(name)
            self.draw("cv", f"cv_{name}",
                      f"{name} model: {folds}-fold cross-validated versus reference labels with bias, scatter and ρ; "
                      "dashed red lines are the Wheeler+2020 §4 KDE bounds beyond which the model is biased (Figs 7–8).",
                      fm.cv_one_to_one, pred, labels, summary=msum, bounds=bounds, title=f"{name} model: cross-validation",
                      max_points=self.max_points)
            if msum is not None and bounds:
                for r in msum:
                    lab = str(r["label"])
                    if lab in bounds and lab.endswith(("_fe", "_h")):
                        precision_rows.append((name, lab, float(r["scatter"]), *bounds[lab]))
        if summary is not None and len(run.model_names()) > 1:
            self.draw("cv", "cv_models",
                      "Cross-validated scatter (bars, half 84th − 16th percentile) and bias (red points) of each label, "
                      "the models side by side" + (" (Nandakumar+2022 §4: ACGS, ACAA, GCAA, GCGS)." if run.is_nandakumar else "."),
                      fm.cv_scatter_by_model, summary, title="cross-validation of the models")
        if precision_rows:
            from astropy.table import Table

            t = Table(rows=precision_rows, names=("model", "label", "scatter", "kde_lo", "kde_hi"))
            self.draw("cv", "precision",
                      "Precision of each abundance (twice the CV scatter) relative to the range over which the model is "
                      "unbiased (between its KDE bounds); smaller is more discriminating (Wheeler+2020 Fig. 9).",
                      fm.precision_ranges, t)
        else:
            self.skip("precision", "no calibration KDE bounds for any abundance label")

    # ------------------------------------------------------------------ calibration
    def calibration(self):
        run, p = self.run, self.part("calibration")
        for name in run.model_names():
            cal = run.calibration(name)
            if cal is None:
                p.add(f'<p class="note">{esc(name)}: no cv/{esc(name)}_calibration.csv (the model is not calibrated).</p>')
                self.skip(f"pulls_{name}", f"model {name} has no calibration")
                continue
            cols = [c for c in CALIBRATION_COLUMNS if c in cal.colnames]
            p.add(table_html(cols, [[r[c] for c in cols] for r in cal],
                             caption=f"{name} model: error calibration (cv/{name}_calibration.csv; docs/calibration.md)"))
            model = self.attempt(f"pulls_{name}", run.model, name)
            if model is None or model.calibration_ is None:
                continue
            c = model.calibration_
            diag = {"distance threshold (Eq. 5)": c.distance_threshold, "distance labels": ", ".join(c.distance_labels),
                    "low S/N limit": c.low_snr, **{k: v for k, v in (c.diagnostics or {}).items()}}
            p.add(mapping_table(diag, "", "", caption=f"{name} model: flags on its own cross-validated stars"))
            pred = run.cv_predictions(name)
            if pred is None or "snr" not in pred.colnames:
                self.skip(f"pulls_{name}", f"cv/{name}_predictions.fits lacks the S/N")
                continue
            self.attempt(f"pulls_{name}", self.pulls, name, model, pred)
        self.flag_rates()

    def pulls(self, name, model, pred):
        labels = model.label_names
        truth = np.column_stack([np.asarray(pred[lab], float) for lab in labels])
        cv = np.column_stack([np.asarray(pred[f"cv_{lab}"], float) for lab in labels])
        raw = np.column_stack([np.asarray(pred[f"e_cv_{lab}"], float) for lab in labels])
        snr = np.asarray(pred["snr"], float)
        cal = model.calibration_.errors(raw, snr)
        ref = self.run.reference_errors(name, pred)
        self.draw("calibration", f"pulls_{name}",
                  f"{name} model: width of the cross-validation pulls (CV − reference)/σ versus S/N with the formal "
                  "and with the calibrated errors (σ includes the reference labels' errors); 1 means right errors.",
                  fm.calibration_pulls, snr, cv - truth, raw, cal, labels, reference_errors=ref, title=f"{name} model")

    def main_catalogue(self, figure):
        """(name, table) of the run's per-star catalogue; (None, None), and ``figure`` skipped, without one."""
        name = self.run.main_catalogue_name()
        if name is None:
            self.skip(figure, "the run has no catalogue")
            return None, None
        return name, self.run.catalogue(name)

    def flag_rates(self):
        run = self.run
        name, cat = self.main_catalogue("flag_rates")
        if cat is None:
            return
        if "flags" not in cat.colnames:
            self.skip("flag_rates", f"catalogue {name} has no 'flags' column")
            return
        groups = None
        if "model_class" in cat.colnames:
            groups = np.asarray(cat["model_class"]).astype(str)
        elif "flag_id" in cat.colnames:
            t = str((run.config.get("target") or {}).get("survey", "target"))
            r = str((run.config.get("reference") or {}).get("survey", "reference"))
            groups = np.where(np.asarray(cat["flag_id"]) == 1, f"{t} spectra", f"{r} spectra")
        self.draw("calibration", "flag_rates",
                  f"Fraction of the stars of catalogue {name} with each quality bit set, per model (cannonade.flags; "
                  "recommended cut flags == 0).",
                  fm.flag_rates, np.asarray(cat["flags"]), groups=groups, title=f"quality flags ({name})")

    # ------------------------------------------------------------------ model diagnostics
    def model_diagnostics(self):
        run = self.run
        for name in run.model_names():
            self.attempt(f"theta_{name}", self.coefficients, name)
        if run.is_nandakumar:
            tables = run.residual_tables()
            if tables:
                self.draw("model", "residuals",
                          "Per-pixel median (line) and 16th–84th percentiles (band) of data − model over the training "
                          "stars, for each of the four models (Nandakumar+2022 Figs 5–6; tables/residuals_<model>.csv).",
                          fm.residual_percentiles, tables, title="model residuals over the training set")
            else:
                self.skip("residuals", "no tables/residuals_<model>.csv")
            for side in ("target", "reference"):
                self.attempt(f"model_vs_data_{side}", self.model_vs_data_scaled, side)
        else:
            self.attempt("model_vs_data", self.model_vs_data)
        self.attempt("kiel", self.kiel)

    def coefficients(self, name):
        model = self.run.model(name)
        if model.wavelength is None:
            self.skip(f"theta_{name}", f"model {name} has no wavelength grid")
            return
        exps = np.asarray(model.exponents)
        linear = np.full((model.theta_.shape[0], len(model.label_names)), np.nan)
        for k, row in enumerate(exps):
            if row.sum() == 1:
                linear[:, int(np.argmax(row))] = model.theta_[:, k]
        linear[~model.pixel_ok_] = np.nan
        s = np.where(model.pixel_ok_, np.sqrt(model.s2_), np.nan)
        self.draw("model", f"theta_{name}",
                  f"{name} model: linear coefficient θ of each label (per unit of scaled label) and intrinsic scatter s "
                  "versus wavelength (Wheeler+2020 Figs 18–19).",
                  fm.linear_coefficients, model.wavelength, linear, s, model.label_names, title=f"{name} model")

    def model_vs_data(self):
        from cannonade.spectra.store import SpectraStore

        run = self.run
        obs = run.catalogue("per_observation")
        store = run.store_path("target")
        if obs is None or store is None:
            self.skip("model_vs_data", "needs catalogue/per_observation and target.h5")
            return
        id_col = str((run.config.get("target") or {}).get("id_column", "obsid"))
        if id_col not in obs.colnames:
            id_col = "obsid" if "obsid" in obs.colnames else None
        if id_col is None or "model_class" not in obs.colnames:
            self.skip("model_vs_data", "per_observation lacks the observation id or model_class column")
            return
        models = {n: run.model(n) for n in run.model_names()}
        cls = np.asarray(obs["model_class"]).astype(str)
        ok = np.isin(cls, list(models))
        if "flags" in obs.colnames:
            ok &= np.asarray(obs["flags"]) == 0
        for n, m in models.items():
            sel = cls == n
            for lab in m.label_names:
                if lab in obs.colnames:
                    ok[sel] &= np.isfinite(np.asarray(obs[lab], float)[sel])
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            self.skip("model_vs_data", "no observation with flags == 0 and finite labels")
            return
        rng = np.random.default_rng(self.seed)
        pick = np.sort(rng.choice(rows, size=min(N_SPECTRA, rows.size), replace=False))
        with SpectraStore(store) as st:
            ids = st.column("obj_id")
            where = {v: i for i, v in enumerate(ids)}
            wanted = [str(v) for v in np.asarray(obs[id_col])[pick]]
            found = [(k, where[v]) for k, v in zip(pick, wanted) if v in where]
            if not found:
                self.skip("model_vs_data", f"none of the chosen {id_col} values is in target.h5")
                return
            pick = np.array([k for k, _ in found])
            flux, ivar = st.read_rows([r for _, r in found])
            wl = st.wavelength
        mflux, mscat, names = [], [], []
        for k in pick:
            m = models[cls[k]]
            lab = np.array([[float(obs[n][k]) for n in m.label_names]])
            mflux.append(m.predict(lab)[0])
            mscat.append(np.sqrt(m.s2_))
            t = {n: float(obs[n][k]) for n in ("teff", "logg", "fe_h") if n in obs.colnames}
            snr = float(obs["snr"][k]) if "snr" in obs.colnames else np.nan
            names.append(f"{id_col} {obs[id_col][k]} ({cls[k]} model): " + _label_text(t, snr))
        window = (4900.0, 5400.0) if np.nanmin(wl) <= 4900 and np.nanmax(wl) >= 5400 else None
        self.draw("model", "model_vs_data",
                  f"Best-fit model (black, ±1σ intrinsic scatter) and data (orange, ±1σ noise) of {len(pick)} random "
                  "unflagged observations across the Kiel diagram (Wheeler+2020 Fig. 10).",
                  fm.model_versus_data, wl, flux, ivar, np.array(mflux), np.array(mscat), names=names, window=window)

    def model_vs_data_scaled(self, side):
        """Nandakumar+2022 run: the model of one survey's spectra on its own labels, at a few training stars' CV labels."""
        from astropy.table import Table

        from cannonade.spectra.store import SpectraStore

        run = self.run
        survey = str((run.config.get(side) or {}).get("survey", side))
        names = [n for n in run.model_names() if n[:1].upper() == survey[:1].upper()]
        own = [n for n in names if run.label_side(n) == side] or names
        store, common = run.store_path(side), run.file("common.fits")
        if not own or store is None or not common.is_file():
            self.skip(f"model_vs_data_{side}", f"needs a model of the {survey} spectra, {side}.h5 and common.fits")
            return
        name = own[0]
        pred, model = run.cv_predictions(name), run.model(name)
        if pred is None or "common_row" not in pred.colnames:
            self.skip(f"model_vs_data_{side}", f"cv/{name}_predictions.fits lacks common_row")
            return
        cs = Table.read(common)
        cvl = np.column_stack([np.asarray(pred[f"cv_{lab}"], float) for lab in model.label_names])
        rows = np.asarray(cs[f"{side}_store_row"])[np.asarray(pred["common_row"], int)]
        ok = np.flatnonzero(np.all(np.isfinite(cvl), axis=1) & (rows >= 0) & np.asarray(pred["converged"], bool))
        if ok.size == 0:
            self.skip(f"model_vs_data_{side}", f"no converged CV star of {name} with a spectrum")
            return
        pick = np.sort(np.random.default_rng(self.seed).choice(ok, size=min(N_SPECTRA // 2, ok.size), replace=False))
        with SpectraStore(store) as st:
            flux, ivar = st.read_rows(rows[pick])
            wl = st.wavelength
        lab = cvl[pick]
        titles = [f"{survey} training star {int(pred['common_row'][k])} ({name} model): "
                  + _label_text(dict(zip(model.label_names, lab[i])), float(pred["snr"][k]) if "snr" in pred.colnames else np.nan)
                  for i, k in enumerate(pick)]
        window = fm.default_window(wl)
        self.draw("model", f"model_vs_data_{name}",
                  f"{name} model ({survey} spectra, {run.label_side(name)} survey's labels) at the cross-validated labels "
                  f"of {len(pick)} random training stars (black, ±1σ scatter) and their spectra (orange, ±1σ noise).",
                  fm.model_versus_data, wl, flux, ivar, model.predict(lab), np.sqrt(model.s2_), names=titles, window=window)

    def kiel(self):
        run = self.run
        name, cat = self.main_catalogue("kiel")
        if cat is None:
            return
        suffix = "Cann" if "teffCann" in cat.colnames else ""
        cols = [f"teff{suffix}", f"logg{suffix}", f"fe_h{suffix}"]
        missing = [c for c in cols if c not in cat.colnames]
        if missing:
            self.skip("kiel", f"catalogue {name} lacks {missing}")
            return
        good = np.ones(len(cat), bool) if "flags" not in cat.colnames else np.asarray(cat["flags"]) == 0
        if not good.any():
            good[:] = True
        training = None
        ts = run.training_set()
        if ts is not None and all(c in ts.colnames for c in ("teff", "logg", "fe_h")):
            training = tuple(np.asarray(ts[c], float) for c in ("teff", "logg", "fe_h"))
        self.draw("model", "kiel",
                  f"Kiel diagram of catalogue {name} (flags == 0), each cell coloured by the mean [Fe/H] of its stars"
                  + ("; right: the training set's reference labels (Wheeler+2020 Fig. 3)." if training else "."),
                  fm.kiel_diagram, *(np.asarray(cat[c], float)[good] for c in cols), training=training,
                  title="Kiel diagram")

    # ------------------------------------------------------------------ science
    def science(self):
        run, p = self.run, self.part("science")
        name = run.main_catalogue_name()
        cat = run.catalogue(name) if name else None
        if cat is None or not {"R", "z"} <= set(cat.colnames):
            why = "the run's catalogue has no Galactocentric coordinates (dynamics stage)"
            p.add(f'<p class="note">No science figures: {esc(why)}.</p>')
            for key in ("wide_binaries", "gradient"):
                self.summary[key]["reason"] = why
            self.skip("science", why)
            return
        from cannonade.science.selection import quality_mask

        mask = quality_mask(cat) if "chi2" in cat.colnames else None
        self.attempt("wide_binaries", self.wide_binaries, cat, mask)
        self.attempt("gradient", self.gradient, cat, mask)
        self.maps(cat, mask)
        self.planes(cat, mask)

    def _abundances(self, model, cat, defaults):
        """The [X/Fe] labels of the run's ``model`` the catalogue has with errors (else those of ``defaults``)."""
        have = set(cat.colnames)
        labels = [lab for lab in self.run.label_sets().get(model, []) if lab.endswith("_fe") and lab in have and f"e_{lab}" in have]
        return labels or [lab for lab in defaults if lab in have and f"e_{lab}" in have]

    def wide_binaries(self, cat, mask):
        from cannonade.science.wide_binaries import DWARF_ABUNDANCES, find_wide_binaries, wide_binary_test

        labels = self._abundances("dwarf", cat, DWARF_ABUNDANCES)
        info = self.summary["wide_binaries"]
        try:
            pairs = find_wide_binaries(cat, mask=mask)
            info["n_candidates"] = int(len(pairs.pairs))
            test = wide_binary_test(cat, pairs, labels, seed=self.seed, mask=mask)
        except CannonadeError as exc:
            info["reason"] = str(exc)
            raise
        info.update(n_pairs=int(len(test.pairs)), n_field=int(len(test.field_pairs)), p_value=float(test.p_value),
                    ks_p_value=float(test.ks_p_value), labels=list(test.labels),
                    median_distance_binaries=float(np.median(test.distance_binaries)),
                    median_distance_field=float(np.median(test.distance_field)))
        self.part("science").add(mapping_table(
            {k: info[k] for k in ("n_candidates", "n_pairs", "n_field", "p_value", "ks_p_value", "median_distance_binaries",
                                  "median_distance_field", "labels")},
            "wide binaries (Wheeler+2020 §5.2)", "", caption="Wide binaries versus field pairs"))
        self.draw("science", "wide_binaries",
                  f"Eq. 6 chemical distance of {len(test.pairs)} dwarf wide binaries (ΔT_eff < 250 K) and of "
                  f"{len(test.field_pairs)} random field pairs with the same Δ[Fe/H] distribution; one-sided "
                  f"Mann–Whitney p = {test.p_value:.2g} (Wheeler+2020 Fig. 12).",
                  fs.chemical_distance_histogram, test.distance_binaries, test.distance_field, p_value=test.p_value,
                  labels=test.labels, edges=test.edges)

    def gradient(self, cat, mask):
        from cannonade.science.chemical_maps import radial_gradient

        info = self.summary["gradient"]
        try:
            g = radial_gradient(cat, "fe_h", mask=mask)
        except CannonadeError as exc:
            info["reason"] = str(exc)
            raise
        info.update(fe_h_per_kpc=float(g.slope), e_fe_h_per_kpc=float(g.slope_error), intercept=float(g.intercept),
                    scatter=float(g.scatter), n=int(g.n), n_clipped=int(g.n_clipped), r_range_kpc=list(g.r_range),
                    z_max_kpc=float(g.z_max), error_method=g.error_method)
        self.part("science").add(mapping_table(
            {"d[Fe/H]/dR [dex/kpc]": g.slope, "1σ error [dex/kpc]": g.slope_error, "[Fe/H] at R = 0 [dex]": g.intercept,
             "intrinsic scatter [dex]": g.scatter, "giants in the fit": g.n, "clipped": g.n_clipped,
             "R range [kpc]": g.r_range, "|z| below [kpc]": g.z_max},
            "radial metallicity gradient", "", caption="Radial [Fe/H] gradient of giants near the plane"))

    def map_labels(self, cat):
        sets = self.run.label_sets()
        labels = sets.get("giant") or next(iter(sets.values()), [])
        return [lab for lab in labels if lab in cat.colnames and lab not in ("vmic", "vbroad")]

    def maps(self, cat, mask):
        from cannonade.science.chemical_maps import map_rvphi, map_rz, map_xy

        labels = self.map_labels(cat)
        specs = [
            ("map_rz", map_rz, "giants in the (R, z) plane summed over φ, 7.5 < R < 15 kpc and |z| < 4 kpc, the Sun's "
             "radius dotted (Wheeler+2020 Fig. 13)", "giants in (R, z)", ("R", "z")),
            ("map_xy", map_xy, "kinematic thin-disc giants (J_z < 30 kpc km/s) in the Galactic (X, Y) plane, the Sun "
             "(star) at (8, 0) kpc (Wheeler+2020 Fig. 14)", "thin-disc giants (J_z < 30 kpc km/s) in (X, Y)",
             ("R", "phi", "Jz")),
            ("map_rvphi", map_rvphi, "kinematic thin-disc giants (J_z < 30 kpc km/s) in the (R, v_φ) plane "
             "(Wheeler+2020 Fig. 15)", "thin-disc giants (J_z < 30 kpc km/s) in (R, v_φ)", ("R", "vT", "Jz")),
        ]
        for name, func, text, short, need in specs:
            if any(c not in cat.colnames for c in need):
                self.skip(name, f"the catalogue lacks {[c for c in need if c not in cat.colnames]}")
                continue
            maps, reasons = [], []
            for lab in labels:
                try:
                    m = func(cat, lab, mask=mask)
                    if m.mean.count() == 0:  # a small catalogue: coarser bins, fewer stars per bin
                        m = func(cat, lab, mask=mask, bins=SMALL_MAP_BINS, min_count=SMALL_MAP_MIN_COUNT)
                except CannonadeError as exc:
                    reasons.append(f"{lab}: {exc}")
                    continue
                if m.mean.count():
                    maps.append(m)
                else:
                    reasons.append(f"{lab}: fewer than {m.min_count} stars in every bin")
            if not maps:
                self.skip(name, "; ".join(reasons) or "no labels to map")
                continue
            self.draw("science", name, f"Mean label of {text}; bins with fewer than {maps[0].min_count} stars are blank.",
                      fs.mean_label_maps, maps, title=f"mean labels of {short}")

    def planes(self, cat, mask):
        for element, fig_no, teff_range in (("ba_fe", 16, (4800.0, 5000.0)), ("eu_fe", 17, None)):
            name = f"planes_{element}"
            if element not in cat.colnames:
                self.skip(name, f"the catalogue has no {element!r} column")
                continue
            self.attempt(name, self.plane, cat, mask, element, fig_no, teff_range)

    def plane(self, cat, mask, element, fig_no, teff_range):
        from cannonade.science.abundance_planes import abundance_planes

        cut = ""
        try:
            planes = abundance_planes(cat, element, teff_range=teff_range, mask=mask)
            if teff_range is not None:
                cut = f", {teff_range[0]:.0f} K < T_eff < {teff_range[1]:.0f} K"
        except CannonadeError:
            if teff_range is None:
                raise
            planes = abundance_planes(cat, element, mask=mask)  # too few stars in the paper's T_eff window
            cut = f" (no giant in the paper's {teff_range[0]:.0f}–{teff_range[1]:.0f} K window: every T_eff)"
        x = quantity_name(element)
        self.draw("science", f"planes_{element}",
                  f"{x} versus [Fe/H] of giants{cut}, coloured by v_φ, in bins of R and |z| (the plane at the bottom); "
                  f"at most 700 random stars per panel, the black line the running median (Wheeler+2020 Fig. {fig_no}).",
                  fs.abundance_planes_grid, planes, title=f"{x} planes of giants ({planes.n} stars)", seed=self.seed)

    # ------------------------------------------------------------------ Nandakumar tables
    def nandakumar_tables(self):
        run, p = self.run, self.part("surveys")
        sys_t = run.table("systematics")
        if sys_t is not None:
            stages = list(dict.fromkeys(str(s) for s in sys_t["stage"]))
            cell = {(str(r["label"]), str(r["sample"]), str(r["stage"])): (r["mean"], r["sigma"], r["n"]) for r in sys_t}
            keys = list(dict.fromkeys((str(r["label"]), str(r["sample"])) for r in sys_t))
            rows = []
            for lab, sample in keys:
                row = [lab, sample]
                for st in stages:
                    v = cell.get((lab, sample, st))
                    row.append("–" if v is None else f"{fmt(v[0], 3)} ± {fmt(v[1], 3)} (n={fmt(v[2])})")
                rows.append(row)
            p.add(table_html(["label", "sample", *stages], rows,
                             caption="Survey differences (target − reference survey) of the common stars: mean ± σ (half "
                                     "84th − 16th percentile); 'before' = the surveys' own values (Nandakumar+2022 Table 1), "
                                     "'after' = from the two surveys' spectra on one scale (Table 3); tables/systematics.csv"))
        else:
            p.add('<p class="note">No tables/systematics.csv.</p>')
        cl = run.table("clusters")
        if cl is not None and len(cl):
            cols = ["cluster", "catalogue", "label", "n", "median", "sigma"]
            p.add(table_html(cols, [[r[c] for c in cols] for r in cl],
                             caption="Cluster members (Nandakumar+2022 Tables 5–6): median and σ per cluster, catalogue "
                                     "and label; tables/clusters.csv"))
        else:
            p.add('<p class="note">No cluster table (tables/clusters.csv is absent or empty: no member list configured).</p>')

    # ------------------------------------------------------------------ catalogue columns
    def catalogue_columns(self):
        run, p = self.run, self.part("columns")
        files = run.catalogue_files()
        if not files:
            p.add('<p class="note">The run has no catalogue.</p>')
            return
        seen = set()
        main = run.main_catalogue_name()
        for name in sorted(files, key=lambda n: (n != main, n)):  # the per-star catalogue first
            cat = self.attempt(f"columns_{name}", run.catalogue, name)
            if cat is None:
                continue
            new = [c for c in cat.colnames if c not in seen]
            rows = [(c, str(cat[c].unit) if cat[c].unit is not None else "", cat[c].description or "", str(cat[c].dtype))
                    for c in new]
            note = "" if len(new) == len(cat.colnames) else f" — the {len(cat.colnames) - len(new)} columns listed above are left out"
            others = sorted(q.name for q in run.file("catalogue").glob(f"{name}.*"))
            p.add(f"<details{' open' if not seen else ''}><summary><b>{esc(name)}</b> ({esc(', '.join(others))}): "
                  f"{len(cat)} rows, {len(cat.colnames)} columns{esc(note)}</summary>")
            p.add(table_html(["column", "unit", "description", "type"], rows))
            p.add("</details>")
            seen.update(cat.colnames)

    # ------------------------------------------------------------------ assembly
    def build(self):
        self.run_summary()
        self.cross_validation()
        self.calibration()
        self.model_diagnostics()
        if self.run.is_nandakumar:
            self.nandakumar_tables()
            self.part("science").add('<p class="note">The science analyses (wide binaries, maps, abundance planes, '
                                     'gradient) need the Wheeler+2020 recipe\'s dynamics; not made for this run.</p>')
            for key in ("wide_binaries", "gradient"):
                self.summary[key]["reason"] = "nandakumar2022 run: no Galactocentric dynamics"
        else:
            self.science()
        self.catalogue_columns()

    def sections(self):
        titles = [("summary", "Run summary"), ("cv", "Cross-validation"), ("calibration", "Error calibration"),
                  ("model", "Model diagnostics"), ("surveys", "Survey systematics and clusters"),
                  ("science", "Science: wide binaries, maps, abundance planes"), ("columns", "Catalogue columns")]
        out, number, figures = [], 0, []
        for key, title in titles:
            part = self.parts.get(key)
            if part is None or not part.blocks:
                continue
            html_blocks = []
            for kind, item in part.blocks:
                if kind == "figure":
                    number += 1
                    html_blocks.append(figure_html(item.file, item.caption, number, f"fig-{Path(item.file).stem}"))
                    figures.append((number, item))
                else:
                    html_blocks.append(item)
            out.append(Section(key, title, "\n".join(html_blocks)))
        lines = [f'<li><a href="#fig-{esc(Path(e.file).stem)}">Figure {n}</a>: {esc(e.caption)}</li>' for n, e in figures]
        body = f"<ol class=\"figlist\">{''.join(lines)}</ol>" if lines else "<p>No figures.</p>"
        if self.not_drawn:
            body += table_html(["figure", "why not drawn"], sorted(self.not_drawn.items()), caption="Not drawn")
        body += f'<p>Numbers for scripts: <a href="{SUMMARY_FILE}">{SUMMARY_FILE}</a>.</p>'
        out.insert(1, Section("figures", "Figures", body))
        self.figures = figures
        return out

    def write(self):
        sections = self.sections()
        title = f"Cannonade run report: {self.run.path.resolve().name} ({self.run.recipe})"
        subtitle = f"{self.run.path.resolve()} · cannonade {__version__} · {utc_now()}"
        summary = {"run_dir": str(self.run.path.resolve()), "recipe": self.run.recipe, "cannonade_version": __version__,
                   "created": utc_now(), **self.summary,
                   "figures": [{"number": n, "file": e.file, "caption": e.caption} for n, e in self.figures],
                   "not_drawn": self.not_drawn}
        with atomic_path(self.out / SUMMARY_FILE) as tmp:
            tmp.write_text(json.dumps(summary, indent=1, default=json_default))
        index = self.out / INDEX_FILE
        with atomic_path(index) as tmp:
            tmp.write_text(page(title, sections, subtitle), encoding="utf-8")
        return index


def _label_text(labels, snr):
    """``"T_eff 4800 K, log g 2.50, [Fe/H] -0.20, S/N 80"`` from the labels a star has."""
    parts = []
    for key, text in (("teff", "T_eff {:.0f} K"), ("logg", "log g {:.2f}"), ("fe_h", "[Fe/H] {:+.2f}")):
        if key in labels and np.isfinite(labels[key]):
            parts.append(text.format(labels[key]))
    if np.isfinite(snr):
        parts.append(f"S/N {snr:.0f}")
    return ", ".join(parts)


def _clear(out):
    """Remove the previous report's files (PNG/SVG figures, index.html, summary.json) from ``out``."""
    for pattern in ("*.png", "*.svg", INDEX_FILE, SUMMARY_FILE):
        for p in out.glob(pattern):
            p.unlink()


def write_report(run_dir, out=None, seed=0, max_points=4000):
    """Write the HTML report of a finished run: ``RUN_DIR/report/index.html``, its figures and ``summary.json``.

    Parameters
    ----------
    run_dir : str or Path
        A run directory (``cannonade run``; either recipe).
    out : str or Path, optional
        The report folder (default ``RUN_DIR/report``); its previous figures, page and summary
        are replaced.
    seed : int
        Seed of every random choice (the stars of the model-versus-data figure, the field
        pairs of the wide-binary test, the stars drawn in the abundance planes).
    max_points : int
        At most this many stars per scatter panel (statistics use all of them).

    Returns
    -------
    Path
        ``index.html``: self-contained (relative links to the PNG files beside it), opens offline.

    Raises
    ------
    ReportError
        ``run_dir`` is not a run directory.

    Notes
    -----
    ``summary.json`` holds at least ``{"wide_binaries": {"n_pairs", "p_value"}, "gradient":
    {"fe_h_per_kpc", "e_fe_h_per_kpc"}}`` (null, with a ``reason``, where the run cannot give
    them), the list of figures with their captions and the figures not drawn with why.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 1:
        raise ParameterError(f"max_points (--max-points) must be an integer >= 1, got {max_points!r}")
    run = RunDirectory(run_dir)
    out = Path(out) if out is not None else run.file(REPORT_DIR)
    if out.exists() and not out.is_dir():
        raise ReportError(f"report folder {out} exists and is not a directory")
    make_dirs(out, "report folder")
    _clear(out)
    builder = ReportBuilder(run, out, seed=seed, max_points=max_points)
    builder.build()
    return builder.write()
