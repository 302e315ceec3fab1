"""Load a TOML run configuration into :class:`~cannonade.config.sections.RunConfig`.

The dataclasses are the schema: every key is checked against a field (a typo gets a
did-you-mean), every value against the field's type, ``Path`` fields are resolved against the
config file's folder, and the cross-field rules of the pipeline are checked here, before any work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import tomllib
import types
import typing
from pathlib import Path

from cannonade.config.expressions import expression_names
from cannonade.config.sections import RunConfig
from cannonade.exceptions import ConfigError
from cannonade.tables import suggest

_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool"}
# config values that become file names in the run directory (models/NAME.npz, cv/NAME_summary.csv,
# catalogue/combined_SURVEY_scale.fits): no path separator, no '..', so no write lands outside run.out
# (and model names fit the 32-character model_class column of the inference)
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,31}")


def _type_name(tp):
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, where, base):
    """Check and convert one TOML value to the field type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None: '' or absent means None
        inner = [a for a in args if a is not type(None)][0]
        if value == "" or value is None:
            return None
        return _convert(value, inner, where, base)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}{suggest(value, args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{where}[{i}]", base) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return {str(k): _convert(v, args[1], f"{where}.{k}", base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table [{where}], got {type(value).__name__}")
        return _build(tp, value, f"{where}.", base)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a path (string), got {value!r}")
        return (base / value.removeprefix("@")).resolve()
    if isinstance(value, bool) and tp is not bool:
        raise ConfigError(f"{where} must be {_type_name(tp)}, got a boolean")
    if tp is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, tp):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    return value


def _check_bounds(value, meta, where):
    if "minimum" in meta and value < meta["minimum"]:
        raise ConfigError(f"{where} must be >= {meta['minimum']}, got {value!r}")
    if meta.get("positive") and not value > 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")


def _build(cls, given, where, base):
    """A ``cls`` instance from a TOML table, every key checked."""
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in given:
        if key not in fields:
            raise ConfigError(f"unknown key {where}{key!r}{suggest(key, fields)}; expected one of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in given:
            if f.metadata.get("required"):
                raise ConfigError(f"missing required key {where}{name}")
            continue
        kwargs[name] = _convert(given[name], hints[name], f"{where}{name}", base)
        if kwargs[name] is not None and not isinstance(kwargs[name], (tuple, dict)):
            _check_bounds(kwargs[name], f.metadata, f"{where}{name}")
    return cls(**kwargs)


def _check_rules(cfg):
    """Rules that tie several keys together."""
    if cfg.crossmatch.method == "id" and not cfg.crossmatch.target_id_column:
        raise ConfigError("crossmatch.target_id_column is required when crossmatch.method = 'id'")
    if not 0 < cfg.clean.percentile <= 100:
        raise ConfigError(f"clean.percentile must be in (0, 100], got {cfg.clean.percentile}")
    if not cfg.models:
        raise ConfigError("at least one [models.NAME] table is needed")
    for key, value in [(f"[models.{name!r}]", name) for name in cfg.models] + [
            (f"target.survey = {cfg.target.survey!r}", cfg.target.survey),
            (f"reference.survey = {cfg.reference.survey!r}", cfg.reference.survey)]:
        if not _FILE_NAME.fullmatch(value):
            raise ConfigError(f"{key}: this name becomes file names in the run directory; use 1 to 32 letters, "
                              "digits, '_' or '-' (no path separator, no '..', no leading '-')")
    for name, spec in cfg.models.items():
        if not spec.labels:
            raise ConfigError(f"models.{name}.labels must not be empty")
        if len(set(spec.labels)) != len(spec.labels):
            raise ConfigError(f"models.{name}.labels lists a label twice: {list(spec.labels)}")
    if cfg.recipe == "nandakumar2022":
        if not cfg.scaling.labels or len(set(cfg.scaling.labels)) != len(cfg.scaling.labels):
            raise ConfigError(f"scaling.labels must list distinct labels, got {list(cfg.scaling.labels)}")
        if cfg.target.survey == cfg.reference.survey:
            raise ConfigError("recipe nandakumar2022 puts two different surveys on each other's scale; "
                              f"target.survey and reference.survey are both {cfg.target.survey!r}")
    if cfg.split.method == "wheeler2020" and set(cfg.models) != {"dwarf", "giant"}:
        raise ConfigError(f"split.method = 'wheeler2020' needs exactly models.dwarf and models.giant, got {sorted(cfg.models)}")
    if cfg.split.method == "none" and len(cfg.models) != 1:
        raise ConfigError(f"split.method = 'none' needs exactly one [models.NAME] table, got {sorted(cfg.models)}")
    for name, spec in cfg.labels.derived.items():
        if not spec.mean_of:
            raise ConfigError(f"labels.derived.{name}.mean_of must not be empty")
    for side in ("target", "reference"):
        for expr in getattr(cfg.cuts, side):
            expression_names(expr, f"cuts.{side}")
    formats = cfg.catalogue.formats
    if "hats" in formats:
        if not {"fits", "parquet"} & set(formats):
            raise ConfigError(f"catalogue.formats = {list(formats)}: 'hats' writes the per-star catalogue only, beside "
                              "a FITS or Parquet catalogue (the later stages and the report read those); add 'fits' or 'parquet'")
        if not _installed("hats"):
            raise ConfigError("catalogue.formats lists 'hats', but the optional hats package is not installed: "
                              "pip install cannonade[hats]")


def _installed(module):
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def config_from_dict(raw, base_dir=".", source=None):
    """Validate a config given as a dict (as TOML would give it); paths relative to ``base_dir``.

    Returns
    -------
    RunConfig
    """
    if isinstance(raw, RunConfig):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"a run configuration must be a table (dict), got {type(raw).__name__}")
    cfg = _build(RunConfig, raw, "", Path(base_dir).resolve())
    _check_rules(cfg)
    return dataclasses.replace(cfg, source=Path(source).resolve() if source else None)


def load_config(path):
    """Read and validate a TOML run configuration (paths relative to the file).

    Raises
    ------
    ConfigError
        Naming the file and the key (with a did-you-mean for typos).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return config_from_dict(raw, path.parent, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def as_toml_dict(cfg):
    """The config as plain TOML-able data (paths as strings, None as ''), e.g. to keep a copy of it."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if not f.metadata.get("internal")}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return "" if v is None else v

    return plain(cfg)
