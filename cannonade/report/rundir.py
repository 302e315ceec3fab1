"""Reading a finished run directory: the report's only source of data.

A run directory (``cannonade run``, docs/pipeline.md) holds ``config.toml`` (the validated
configuration), ``stages/<stage>.json`` (each stage's counts), ``cv/`` (per model
``<model>_summary.csv``, ``<model>_calibration.csv``, ``<model>_predictions.fits``, and
``cv_summary.csv``), ``models/<model>.npz``, ``catalogue/`` (FITS and/or Parquet),
``training_set.fits`` (Wheeler+2020 recipe), ``tables/`` (Nandakumar+2022 recipe:
``systematics.csv``, ``clusters.csv``, ``residuals_<model>.csv``) and the spectra stores
(``target.h5``, ``reference.h5``). :class:`RunDirectory` reads each of them on demand (and
once); a file that is absent reads as ``None`` so the report can say what it lacks.
"""

from __future__ import annotations

import json
import tomllib
from functools import cached_property
from pathlib import Path

import numpy as np

from cannonade._version import __version__
from cannonade.exceptions import CannonadeError
from cannonade.report.inputs import ReportError

__all__ = ["RunDirectory", "read_run"]

#: the Nandakumar+2022 models in the paper's order
PAPER_MODEL_ORDER = ("ACGS", "ACAA", "GCAA", "GCGS")


def _read_csv(path):
    from astropy.table import Table

    return Table.read(path, format="ascii.csv") if path.is_file() else None


class RunDirectory:
    """The files of one run directory, read on demand.

    Parameters
    ----------
    path : str or Path
        The run directory (``run.out`` of its configuration).

    Raises
    ------
    ReportError
        ``path`` is not a directory, or holds neither ``config.toml`` nor ``stages/``.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ReportError(f"run directory {self.path} does not exist")
        if not (self.path / "config.toml").is_file() and not (self.path / "stages").is_dir():
            raise ReportError(f"{self.path} is not a cannonade run directory: it has neither config.toml nor stages/")
        self._catalogues = {}
        self._models = {}

    def __repr__(self):
        return f"RunDirectory({str(self.path)!r}, recipe={self.recipe!r})"

    def file(self, *parts):
        """A path inside the run directory."""
        return self.path.joinpath(*parts)

    # ------------------------------------------------------------------ configuration and stages
    @cached_property
    def config_text(self):
        """The text of ``config.toml`` ('' when absent)."""
        p = self.file("config.toml")
        return p.read_text() if p.is_file() else ""

    @cached_property
    def config(self):
        """``config.toml`` as a dict ({} when absent)."""
        try:
            return tomllib.loads(self.config_text)
        except tomllib.TOMLDecodeError as exc:
            raise ReportError(f"{self.file('config.toml')}: not valid TOML ({exc})") from None

    @property
    def recipe(self):
        """The run's recipe name (``wheeler2020`` when the configuration does not say)."""
        return str(self.config.get("recipe", "wheeler2020"))

    @property
    def is_nandakumar(self):
        return self.recipe == "nandakumar2022"

    def stage_order(self):
        """The recipe's stage names in order (those of the markers when the recipe is unknown)."""
        from cannonade.pipeline.recipes import RECIPES

        recipe = RECIPES.get(self.recipe)
        names = [p.stem for p in sorted(self.file("stages").glob("*.json"))]
        if recipe is None:
            return names
        return list(recipe.stage_names) + [n for n in names if n not in recipe.stage_names]

    @cached_property
    def stages(self):
        """{stage: marker dict} of the finished stages, in recipe order (fingerprint records left out)."""
        out = {}
        for name in self.stage_order():
            p = self.file("stages", f"{name}.json")
            if not p.is_file():
                continue
            try:
                info = json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                raise ReportError(f"{p}: not valid JSON ({exc})") from None
            out[name] = {k: v for k, v in info.items() if k not in ("fingerprint_of",)}
        return out

    def missing_stages(self):
        """Stages of the recipe without a marker (an unfinished run)."""
        return [s for s in self.stage_order() if s not in self.stages]

    def label_sets(self):
        """{model: [labels]} of the run's models (configuration; the model files where it does not say)."""
        models = self.config.get("models") or {}
        sets = {name: list(spec.get("labels", [])) for name, spec in models.items() if isinstance(spec, dict)}
        if self.is_nandakumar or not sets:
            labels = list((self.config.get("scaling") or {}).get("labels", []))
            sets = {name: labels for name in self.model_names()} if labels else {}
            for name in self.model_names():
                if not sets.get(name):
                    sets[name] = list(self.model(name).label_names)
        return sets

    # ------------------------------------------------------------------ models and cross-validation
    def model_names(self):
        """The run's model names: the CV summary's order, else the model files' (paper order for Nandakumar+2022)."""
        names = []
        summary = self.cv_summary()
        if summary is not None and "model" in summary.colnames:
            for m in summary["model"]:
                if str(m) not in names:
                    names.append(str(m))
        files = sorted(p.stem for p in self.file("models").glob("*.npz"))
        names += [n for n in files if n not in names]
        order = {n: i for i, n in enumerate(PAPER_MODEL_ORDER)}
        if all(n in order for n in names):
            names.sort(key=order.get)
        return names

    def model(self, name):
        """The trained :class:`~cannonade.cannon.model.CannonModel` ``models/<name>.npz`` (ModelFileError when absent)."""
        if name not in self._models:
            from cannonade.cannon.model import CannonModel

            self._models[name] = CannonModel.load(self.file("models", f"{name}.npz"))
        return self._models[name]

    def cv_summary(self):
        """``cv/cv_summary.csv`` (label, bias, scatter, rms, corr, n, model, ...) or None."""
        return _read_csv(self.file("cv", "cv_summary.csv"))

    def cv_model_summary(self, name):
        """``cv/<name>_summary.csv`` or None."""
        return _read_csv(self.file("cv", f"{name}_summary.csv"))

    def calibration(self, name):
        """``cv/<name>_calibration.csv`` (the per-label calibration table) or None."""
        return _read_csv(self.file("cv", f"{name}_calibration.csv"))

    def cv_predictions(self, name):
        """``cv/<name>_predictions.fits`` (``<label>``, ``cv_<label>``, ``e_cv_<label>``, ``snr``, ...) or None."""
        from astropy.table import Table

        p = self.file("cv", f"{name}_predictions.fits")
        return Table.read(p) if p.is_file() else None

    def reference_errors(self, name, predictions):
        """(N, L) 1σ errors of the reference labels of the CV's stars, or None where the run has none.

        Wheeler+2020 recipe: ``training_set.fits`` rows matched on ``ref_row`` (``e_<label>``;
        NaN where a label has no error column). Nandakumar+2022: ``common.fits`` rows
        (``common_row``), ``<label side>_e_<label>`` of the model's label survey.
        """
        from astropy.table import Table

        labels = self.model(name).label_names
        if "ref_row" in predictions.colnames and self.file("training_set.fits").is_file():
            ts = Table.read(self.file("training_set.fits"))
            if "ref_row" not in ts.colnames:
                return None
            index = {int(r): i for i, r in enumerate(np.asarray(ts["ref_row"]))}
            rows = np.array([index.get(int(r), -1) for r in np.asarray(predictions["ref_row"])])
            out = np.full((len(rows), len(labels)), np.nan)
            for j, lab in enumerate(labels):
                if f"e_{lab}" in ts.colnames:
                    col = np.asarray(ts[f"e_{lab}"], float)
                    out[rows >= 0, j] = col[rows[rows >= 0]]
            return out
        if "common_row" in predictions.colnames and self.file("common.fits").is_file():
            side = self.label_side(name)
            cs = Table.read(self.file("common.fits"))
            rows = np.asarray(predictions["common_row"], int)
            cols = [f"{side}_e_{lab}" for lab in labels]
            if side is None or any(c not in cs.colnames for c in cols):
                return None
            return np.column_stack([np.asarray(cs[c], float)[rows] for c in cols])
        return None

    def label_side(self, name):
        """'target' or 'reference': the survey whose labels a Nandakumar+2022 model was trained on."""
        surveys = {side: str((self.config.get(side) or {}).get("survey", "")).lower() for side in ("target", "reference")}
        letter = name[2:3].upper() if len(name) >= 3 else ""
        for side, survey in surveys.items():
            if survey[:1].upper() == letter:
                return side
        return None

    # ------------------------------------------------------------------ catalogues and tables
    def catalogue_files(self):
        """{name: path} of the catalogue's files, one per stem (Parquet preferred: it reads faster)."""
        out = {}
        for suffix in (".parquet", ".fits"):
            for p in sorted(self.file("catalogue").glob(f"*{suffix}")):
                out.setdefault(p.name[: -len(suffix)], p)
        return out

    def catalogue(self, name):
        """The catalogue ``name`` (e.g. ``per_star``, ``combined_apogee_scale``) as an astropy Table, or None."""
        if name not in self._catalogues:
            from cannonade.catalogue.readers import read_catalogue

            path = self.catalogue_files().get(name)
            self._catalogues[name] = read_catalogue(path) if path is not None else None
        return self._catalogues[name]

    def main_catalogue_name(self):
        """The per-star catalogue the science figures use (``per_star``; Nandakumar: the target survey's scale)."""
        files = self.catalogue_files()
        if "per_star" in files:
            return "per_star"
        target = str((self.config.get("target") or {}).get("survey", "")).lower()
        for name in (f"combined_{target}_scale", *sorted(files)):
            if name in files:
                return name
        return None

    def table(self, name):
        """``tables/<name>.csv`` (Nandakumar+2022 recipe) or None."""
        return _read_csv(self.file("tables", f"{name}.csv"))

    def residual_tables(self):
        """{model: ``tables/residuals_<model>.csv``} in model order."""
        out = {}
        names = self.model_names()
        found = {p.stem[len("residuals_"):]: p for p in self.file("tables").glob("residuals_*.csv")}
        for name in names + sorted(n for n in found if n not in names):
            if name in found:
                out[name] = _read_csv(found[name])
        return out

    def training_set(self):
        """``training_set.fits`` (Wheeler+2020 recipe) or None."""
        from astropy.table import Table

        p = self.file("training_set.fits")
        return Table.read(p) if p.is_file() else None

    def store_path(self, side="target"):
        """The spectra store ``<side>.h5`` of the run, or None."""
        p = self.file(f"{side}.h5")
        return p if p.is_file() else None

    # ------------------------------------------------------------------ provenance
    def software_versions(self):
        """{what: version}: the report's cannonade and the versions the run's files record."""
        out = {"report (this cannonade)": __version__}
        for name in self.model_names():
            try:
                prov = self.model(name).provenance_ or {}
            except CannonadeError:  # an unreadable model is reported where it is used
                continue
            if prov.get("version"):
                out[f"model {name}"] = str(prov["version"])
        for name in self.catalogue_files():
            try:
                prov = (self.catalogue(name).meta or {}).get("provenance") or {}
            except CannonadeError:  # an unreadable catalogue is reported where it is used
                continue
            if prov.get("version"):
                out[f"catalogue {name}"] = str(prov["version"])
        return out


def read_run(path):
    """A :class:`RunDirectory` for ``path`` (ReportError when it is not a run directory)."""
    return RunDirectory(path)
