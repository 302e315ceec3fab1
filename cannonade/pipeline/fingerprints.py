"""Stage fingerprints: what a finished stage's results depend on, hashed, to detect stale stages.

A stage's fingerprint (:func:`stage_fingerprint`) hashes the configuration keys the stage
reads (its module's ``CONFIG``: a section such as ``"cuts"`` or one field such as
``"run.seed"``), the files it reads from outside the run directory (``INPUTS``: by path,
size and modification time, never by content; a directory by its file count, total size and
newest modification) and the previous stage's fingerprint, so a change upstream reaches every
stage after it. The runner (:mod:`cannonade.pipeline.runner`) compares it with the one in a
stage's marker. See docs/pipeline.md, "Reruns and stale stages".
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cannonade.config import as_toml_dict
from cannonade.exceptions import CannonadeError
from cannonade.provenance import fingerprint

#: configuration keys no stage's results depend on: where the run is written, how many processes, on
#: which cluster, on which device (a GPU agrees with the CPU to rounding, docs/scale.md)
UNTRACKED = ("run.out", "run.workers", "run.scheduler", "run.device")

def config_value(data, key):
    """The value of a dotted key (``"cuts"``, ``"run.seed"``) in a configuration's TOML form.

    Raises
    ------
    KeyError
        When the configuration has no such key.
    """
    value = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def tracked_keys(data):
    """Every configuration key a stage may depend on: each section, with ``run`` split into its
    fields less :data:`UNTRACKED`. The default ``CONFIG`` of a stage module that declares none."""
    keys = []
    for section, value in data.items():
        if section == "run" and isinstance(value, dict):
            keys += [f"run.{k}" for k in value if f"run.{k}" not in UNTRACKED]
        else:
            keys.append(section)
    return keys


def input_stats(path):
    """A cheap identity of an input file or directory: sizes and modification times, never content.

    Parameters
    ----------
    path : str, Path or None

    Returns
    -------
    dict or None
        None when the input is not configured (None or ''). A file: ``path``, ``size``,
        ``mtime_ns``. A directory (of spectra): ``path``, ``n_files``, ``bytes`` (their total
        size) and ``mtime_ns`` (the newest one's), over every file below it (one ``stat`` per
        file; symbolic links to directories are not followed). A path that does not exist:
        ``path`` and ``missing = True``.
    """
    if path is None or str(path) == "":
        return None
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return {"path": str(p), "missing": True}
    if not stat.S_ISDIR(st.st_mode):
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    n = size = newest = 0
    todo = [str(p)]
    while todo:
        try:
            entries = os.scandir(todo.pop())
        except FileNotFoundError:  # removed while we walk
            continue
        with entries:
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                    elif e.is_file():
                        s = e.stat()
                        n, size, newest = n + 1, size + s.st_size, max(newest, s.st_mtime_ns)
                except FileNotFoundError:
                    continue
    return {"path": str(p), "n_files": n, "bytes": size, "mtime_ns": newest}


def unavailable(stats):
    """Whether :func:`input_stats` describes an input that is gone: missing, or a directory with no file."""
    return stats is not None and bool(stats.get("missing") or stats.get("n_files", 1) == 0)


def stage_config_keys(stage, data):
    """The configuration keys a stage module declares (``CONFIG``; every tracked key if it declares none)."""
    keys = getattr(stage, "CONFIG", None)
    return list(keys) if keys is not None else tracked_keys(data)


def stage_inputs(stage, cfg):
    """:func:`input_stats` of each input a stage module declares (``INPUTS``: dotted config keys of paths).

    Returns
    -------
    dict key -> dict or None
    """
    data = as_toml_dict(cfg)
    out = {}
    for key in getattr(stage, "INPUTS", ()):
        try:
            out[key] = input_stats(config_value(data, key))
        except KeyError:
            raise CannonadeError(f"stage {stage.NAME!r} declares the input {key!r}, which is no configuration key") from None
    return out


@dataclass(frozen=True)
class StageFingerprint:
    """What a stage's outputs depend on, and its hash (kept in the stage's marker).

    Attributes
    ----------
    stage : str
    config : dict
        Each configuration key the stage reads (its module's ``CONFIG``) -> its value, TOML form.
    inputs : dict
        Each input the stage reads from outside the run directory (``INPUTS``) -> :func:`input_stats`.
    previous : str or None
        The previous stage's fingerprint (None for the first stage), so that a change upstream
        changes every fingerprint downstream.
    """

    stage: str
    config: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    previous: str | None = None

    @property
    def value(self):
        """:func:`cannonade.provenance.fingerprint` of all of the above (str)."""
        return fingerprint({"stage": self.stage, "config": self.config, "inputs": self.inputs, "previous": self.previous})

    def record(self):
        """The parts as plain data, for the marker (``info["fingerprint_of"]``)."""
        return {"config": self.config, "inputs": self.inputs, "previous": self.previous}

    def changes(self, recorded):
        """Why this fingerprint differs from a marker's, in words (None when it does not differ).

        Parameters
        ----------
        recorded : dict
            The marker (``stage_info``): ``fingerprint`` and ``fingerprint_of``.
        """
        if recorded.get("fingerprint") == self.value:
            return None
        old = recorded.get("fingerprint_of") or {}
        old_config, old_inputs = old.get("config") or {}, old.get("inputs") or {}
        config = []
        for key in dict.fromkeys([*self.config, *old_config]):
            if key not in self.config or key not in old_config:
                config.append(key)
            else:
                config += _differing_keys(old_config[key], self.config[key], key)
        inputs = [k for k in dict.fromkeys([*self.inputs, *old_inputs]) if self.inputs.get(k) != old_inputs.get(k)]
        why = []
        if config:
            why.append(f"configuration changed ({', '.join(config)})")
        if inputs:
            why.append(f"input changed ({', '.join(inputs)})")
        if not why:
            why.append("an earlier stage changed" if self.previous != old.get("previous") else "its fingerprint changed")
        return " and ".join(why)


def _differing_keys(old, new, key):
    """Dotted keys, down to the leaves, where two TOML values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in dict.fromkeys([*old, *new]):
            if k not in old or k not in new:
                out.append(f"{key}.{k}")
            else:
                out += _differing_keys(old[k], new[k], f"{key}.{k}")
        return out
    return [] if old == new else [key]


def stage_fingerprint(stage, cfg, previous=None, inputs=None):
    """The fingerprint of a stage: its configuration keys, its inputs and the previous stage's fingerprint.

    Parameters
    ----------
    stage : module
        A stage module (``NAME``; ``CONFIG``: the dotted configuration keys it reads, a whole
        section such as ``"cuts"`` or one field such as ``"run.seed"``; ``INPUTS``: the keys of
        the paths it reads outside the run directory).
    cfg : RunConfig
    previous : str, optional
        The previous stage's fingerprint.
    inputs : dict, optional
        :func:`stage_inputs` already taken (the runner keeps a vanished input's recorded stats).

    Returns
    -------
    StageFingerprint
        Its ``value`` is what the marker records.
    """
    data = as_toml_dict(cfg)
    config = {}
    for key in stage_config_keys(stage, data):
        try:
            config[key] = config_value(data, key)
        except KeyError:
            raise CannonadeError(f"stage {stage.NAME!r} declares the configuration key {key!r}, which does not exist") from None
    if inputs is None:
        inputs = stage_inputs(stage, cfg)
    return StageFingerprint(stage.NAME, config, dict(inputs), previous)
