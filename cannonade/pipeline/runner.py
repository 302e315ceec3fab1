"""One pipeline run: a validated config, a run directory, stage markers, a log, and the loop.

Every stage writes its outputs atomically into the run directory and then a marker file
``stages/<stage>.json`` with its counts; a rerun skips stages with a marker. ``from_stage``
removes the markers of that stage and all after it (and their unfinished chunk parts).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cannonade.config import RunConfig, config_from_dict, load_config
from cannonade.exceptions import ConfigError
from cannonade.pipeline.inputs import check_columns
from cannonade.pipeline.recipes import recipe_for
from cannonade.tables import read_table
from cannonade.util import atomic_path

log = logging.getLogger("cannonade.pipeline")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _short(info):
    return ", ".join(f"{k}={v}" for k, v in info.items() if not isinstance(v, dict))[:200]


def as_config(config):
    """A RunConfig from a RunConfig, a TOML path or a dict (validated like a file, paths relative to '.')."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config, ".")
    return load_config(config)


class Run:
    """A pipeline run over one configuration.

    Parameters
    ----------
    config : RunConfig, path to a TOML file, or dict
        A dict is validated exactly as a file would be.
    stop_after_chunks : int, optional
        Test hook: chunked stages raise :class:`cannonade.execution.StopRequested` after this many
        chunks have finished in this call (deterministic interruption; the rerun resumes).
    chunk_hook : callable(k, result), optional
        Called in this process after each finished chunk of a chunked stage (test hook).
    """

    def __init__(self, config, stop_after_chunks=None, chunk_hook=None):
        self.cfg = as_config(config)
        self.recipe = recipe_for(self.cfg)
        self.out = Path(self.cfg.run.out)
        self.stop_after_chunks = stop_after_chunks
        self.chunk_hook = chunk_hook
        self.log = log
        self._tables = {}
        self.target_rows_cache = None
        # every configured column must exist before anything is written
        gaia = self.table("gaia") if (self.cfg.dynamics.enabled and self.cfg.dynamics.gaia) else None
        check_columns(self.cfg, self.table("target"), self.table("reference"), gaia)
        self.path("stages").mkdir(parents=True, exist_ok=True)

    @property
    def stages(self):
        """Stage names of this run's recipe, in order."""
        return [s.NAME for s in self.recipe.stages]

    # ---- files of the run directory
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

    def write_table(self, table, name):
        """Write an astropy Table into the run directory (FITS or CSV by suffix), atomically."""
        path = self.path(name)
        with atomic_path(path) as tmp:
            table.write(tmp, format="fits" if path.suffix == ".fits" else "ascii.csv", overwrite=True)
        return path

    def read_run_table(self, name):
        from astropy.table import Table

        return Table.read(self.path(name))

    def write_arrays(self, name, **arrays):
        """Write named arrays into an ``.npz`` of the run directory (no pickle), atomically."""
        with atomic_path(self.path(name)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def table(self, key):
        """The input catalogues, read once: 'target', 'reference', 'gaia'."""
        if key not in self._tables:
            path = {"target": self.cfg.target.catalogue, "reference": self.cfg.reference.catalogue, "gaia": self.cfg.dynamics.gaia}[key]
            try:
                self._tables[key] = read_table(path)
            except Exception as exc:
                raise ConfigError(f"{key} catalogue: {exc}") from None
        return self._tables[key]

    # ---- the loop
    def reset_from(self, from_stage):
        """Forget ``from_stage`` and every stage after it (markers and unfinished chunk parts)."""
        if from_stage not in self.stages:
            raise ConfigError(f"--from {from_stage!r}: unknown stage; stages are {self.stages}")
        for stage in self.recipe.stages[self.stages.index(from_stage):]:
            if self.done(stage.NAME):
                self.marker(stage.NAME).unlink()
            for work in getattr(stage, "WORK_DIRS", ()):
                if self.path(work).exists():
                    shutil.rmtree(self.path(work))

    def run(self, from_stage=None):
        """Run every unfinished stage in order; returns self."""
        if from_stage is not None:
            self.reset_from(from_stage)
        handlers = self._attach_log()
        try:
            t_run = time.perf_counter()
            self.log.info("cannonade run (%s recipe): %s -> %s", self.recipe.name, self.cfg.source or "<dict>", self.out)
            for stage in self.recipe.stages:
                if self.done(stage.NAME):
                    self.log.info("[%s] already done, skipped (%s)", stage.NAME, _short(self.stage_info(stage.NAME)))
                    continue
                t0 = time.perf_counter()
                info = stage.execute(self)
                info["seconds"] = round(time.perf_counter() - t0, 2)
                self.mark(stage.NAME, info)
                self.log.info("[%s] %s", stage.NAME, _short(info))
            self.log.info("run finished in %.1f s; catalogue in %s", time.perf_counter() - t_run, self.path("catalogue"))
        finally:
            self._detach_log(handlers)
        return self

    def _attach_log(self):
        """The run log (run.log) and the terminal get the package's messages while the run lasts."""
        pkg = logging.getLogger("cannonade")
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        fh = logging.FileHandler(self.path("run.log"))
        sh = logging.StreamHandler()
        sh.setLevel(logging.WARNING if os.environ.get("CANNONADE_QUIET") else logging.INFO)
        for h in (fh, sh):
            h.setFormatter(fmt)
            pkg.addHandler(h)
        old_level = pkg.level
        pkg.setLevel(logging.INFO)
        return fh, sh, old_level

    @staticmethod
    def _detach_log(handlers):
        pkg = logging.getLogger("cannonade")
        *hs, old_level = handlers
        for h in hs:
            pkg.removeHandler(h)
            h.close()
        pkg.setLevel(old_level)


def run_pipeline(config, from_stage=None, **hooks):
    """Run (or resume) the pipeline described by a config file, dict or RunConfig; returns the Run."""
    return Run(config, **hooks).run(from_stage=from_stage)
