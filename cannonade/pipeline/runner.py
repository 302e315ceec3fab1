"""One pipeline run: a validated config, a run directory, stage markers, a log, and the loop.

Every stage writes its outputs atomically into the run directory and then a marker file
``stages/<stage>.json`` with its counts and its fingerprint (:func:`stage_fingerprint`): a hash
of the configuration keys the stage reads (its module's ``CONFIG``), of the files it reads from
outside the run directory (``INPUTS``, by size and modification time, never by content) and of
the previous stage's fingerprint. A rerun skips a stage whose marker matches; the first stage
whose marker is missing or differs is redone with every stage after it, and the log says why.
``from_stage`` forces that stage and all after it. Each run keeps a copy of its validated
configuration in ``config.toml``. See docs/pipeline.md, "Reruns and stale stages".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cannonade.config import RunConfig, as_toml_dict, config_from_dict, load_config
from cannonade.exceptions import ConfigError
from cannonade.config.toml_writer import toml_text
from cannonade.pipeline.inputs import check_grids
from cannonade.pipeline.fingerprints import stage_fingerprint, stage_inputs, unavailable
from cannonade.pipeline.recipes import recipe_for
from cannonade.provenance import fingerprint, provenance
from cannonade.tables import read_table
from cannonade.util import atomic_path, check_output_dir, json_default, make_dirs, remove_stale_temporaries

log = logging.getLogger("cannonade.pipeline")

#: the copy of the validated configuration kept in the run directory
CONFIG_COPY = "config.toml"


def _short(info):
    return ", ".join(f"{k}={v}" for k, v in info.items() if not isinstance(v, dict) and k != "fingerprint")[:200]


def as_config(config):
    """A RunConfig from a RunConfig, a TOML path or a dict (validated like a file, paths relative to '.')."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config, ".")
    return load_config(config)


# ---- stage fingerprints


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
        self.recipe.check(self.cfg, self.table("target"), self.table("reference"), gaia)
        check_grids(self.cfg)
        check_output_dir(self.out, "run.out")
        make_dirs(self.path("stages"), "run.out")

    @property
    def config_fingerprint(self):
        """:func:`cannonade.provenance.fingerprint` of the whole configuration (its TOML form)."""
        return fingerprint(as_toml_dict(self.cfg))

    def provenance(self, **extra):
        """The provenance record of a file this run writes (:func:`cannonade.provenance.provenance`)."""
        return provenance(recipe=self.recipe.name, config_fingerprint=self.config_fingerprint, **extra)

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
            tmp.write_text(json.dumps(info, indent=1, default=json_default))

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

    def keep_config(self):
        """Write the validated configuration into ``config.toml`` of the run directory (atomically).

        Paths are absolute and every default is filled in, so :func:`cannonade.config.load_config`
        of the copy gives this configuration back from anywhere.
        """
        header = (f"The configuration of the last `cannonade run` in this directory, as validated (paths absolute,\n"
                  f"defaults filled in); configuration fingerprint {self.config_fingerprint}.")
        with atomic_path(self.path(CONFIG_COPY)) as tmp:
            tmp.write_text(toml_text(as_toml_dict(self.cfg), header=header))
        return self.path(CONFIG_COPY)

    # ---- the loop
    def reset_from(self, from_stage):
        """Forget ``from_stage`` and every stage after it (markers and unfinished chunk parts)."""
        if from_stage not in self.stages:
            raise ConfigError(f"--from {from_stage!r}: unknown stage; stages are {self.stages}")
        self._forget(self.recipe.stages[self.stages.index(from_stage):])

    def _forget(self, stages):
        for stage in stages:
            if self.done(stage.NAME):
                self.marker(stage.NAME).unlink()
            for work in getattr(stage, "WORK_DIRS", ()):
                if self.path(work).exists():
                    shutil.rmtree(self.path(work))

    def _redoing(self, stage):
        n = len(self.stages) - 1 - self.stages.index(stage)
        return f"redoing {stage}" + (f" and the {n} stage{'s' if n != 1 else ''} after it" if n else "")

    def _recorded_inputs(self, stage, inputs, info):
        """``inputs``, where one is gone (missing, or an empty directory) since the finished stage
        read it from the same path, with the stats recorded then (logged): a deleted input does
        not make a finished stage stale (e.g. the demo removes its mock spectra once ingested)."""
        recorded = (info.get("fingerprint_of") or {}).get("inputs") or {}
        out = dict(inputs)
        for key, stats in inputs.items():
            old = recorded.get(key)
            if unavailable(stats) and old is not None and not unavailable(old) and old.get("path") == stats["path"]:
                self.log.info("[%s] input %s (%s) is missing or empty now; the finished stage is kept, unchecked against it",
                              stage.NAME, key, stats["path"])
                out[key] = old
        return out

    def run(self, from_stage=None):
        """Run every stage that is not finished with this configuration and these inputs, in order; returns self.

        A stage whose marker records the fingerprint it has now is skipped. The first stage whose
        marker is missing or records another fingerprint is redone with every stage after it
        (their markers and unfinished chunk parts are removed; a stage without a marker keeps its
        own chunk parts, so a killed run resumes). Markers written before fingerprints existed
        are kept unchecked, and get this configuration's fingerprint (logged once).
        """
        if from_stage is not None and from_stage not in self.stages:
            raise ConfigError(f"--from {from_stage!r}: unknown stage; stages are {self.stages}")
        handlers = self._attach_log()
        try:
            t_run = time.perf_counter()
            self.log.info("cannonade run (%s recipe): %s -> %s", self.recipe.name, self.cfg.source or "<dict>", self.out)
            stale = remove_stale_temporaries(self.out)  # half-written files of a killed run (never a finished one)
            if stale:
                self.log.info("removed %d temporary file(s) left by an interrupted run (%s%s)", len(stale), stale[0].name,
                              ", ..." if len(stale) > 1 else "")
            self.keep_config()
            self.log.info("configuration fingerprint %s (copy in %s)", self.config_fingerprint, self.path(CONFIG_COPY))
            if from_stage is not None:
                self.reset_from(from_stage)
                self.log.info("[%s] --from %s: %s", from_stage, from_stage, self._redoing(from_stage))
            previous, unchecked = None, False
            for i, stage in enumerate(self.recipe.stages):
                name = stage.NAME
                inputs = stage_inputs(stage, self.cfg)
                if self.done(name):
                    info = self.stage_info(name)
                    fp = stage_fingerprint(stage, self.cfg, previous, self._recorded_inputs(stage, inputs, info))
                    if "fingerprint" not in info:
                        if not unchecked:
                            self.log.info("stage markers without a fingerprint (written before cannonade kept one) cannot be "
                                          "checked against the configuration: those stages are kept as they are, and from now on "
                                          "carry this configuration's fingerprint (--from STAGE redoes a stage)")
                            unchecked = True
                        self.mark(name, {**info, "fingerprint": fp.value, "fingerprint_of": fp.record()})
                        self.log.info("[%s] already done, skipped unchecked (%s)", name, _short(info))
                        previous = fp.value
                        continue
                    why = fp.changes(info)
                    if why is None:
                        self.log.info("[%s] already done, skipped (%s)", name, _short(info))
                        previous = fp.value
                        continue
                    self.log.info("[%s] %s; %s", name, why, self._redoing(name))
                    self.reset_from(name)
                    fp = stage_fingerprint(stage, self.cfg, previous, inputs)  # what it reads now, vanished inputs too
                else:
                    fp = stage_fingerprint(stage, self.cfg, previous, inputs)
                    later = self.recipe.stages[i + 1:]
                    if any(self.done(s.NAME) for s in later):
                        self.log.info("[%s] not finished; %s", name, self._redoing(name))
                        self._forget(later)  # this stage's own chunk parts stay: it resumes
                t0 = time.perf_counter()
                info = stage.execute(self)
                info["seconds"] = round(time.perf_counter() - t0, 2)
                info["fingerprint"] = fp.value
                info["fingerprint_of"] = fp.record()
                self.mark(name, info)
                self.log.info("[%s] done in %.2f s (%s)", name, info["seconds"], _short({k: v for k, v in info.items() if k != "seconds"}))
                previous = fp.value
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
