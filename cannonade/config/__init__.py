"""The run configuration: a TOML file, validated on load, every error naming its key.

The schema below is the single source of truth: defaults, types and documentation of every
key. Paths are resolved relative to the config file. See
``cannonade/data/example_lamost_galah.toml`` for a documented example.
"""

from __future__ import annotations

import ast
import copy
import difflib
import tomllib
from pathlib import Path

import numpy as np

from cannonade.exceptions import ColumnError, ConfigError

# Wheeler+2020 §2.2 label sets (defaults). "mean_alpha_fe" and "mean_s_fe" are derived labels.
DWARF_LABELS = ["teff", "logg", "vmic", "fe_h", "o_fe", "eu_fe", "mean_alpha_fe", "sc_fe", "mean_s_fe"]
GIANT_LABELS = ["teff", "logg", "vmic", "fe_h", "o_fe", "eu_fe", "mg_fe", "al_fe", "mn_fe", "ba_fe"]

_REQUIRED = object()

# key -> (default, type or tuple of types, description). Nested dicts are sections.
SCHEMA = {
    "run": {
        "out": ("run", str, "run directory (relative to the config file)"),
        "seed": (0, int, "seed for cross-validation folds and Monte-Carlo resamples"),
        "chunk_size": (2000, int, "spectra per inference chunk (resume granularity)"),
        "workers": (2, int, "processes for ingest"),
    },
    "target": {
        "survey": ("lamost", str, "survey whose spectra get labels"),
        "spectra": (_REQUIRED, str, "directory (or @list file) of target spectra"),
        "catalogue": (_REQUIRED, str, "target survey catalogue (FITS/CSV/Parquet)"),
        "id_column": ("obsid", str, "unique id of one observation"),
        "star_column": ("designation", str, "id shared by repeat observations of one star"),
        "file_column": ("filename", str, "spectrum file name of each observation"),
        "redshift_column": ("z", str, "redshift used for the rest-frame correction ('' to use the file's)"),
        "snr_column": ("snrz", str, "S/N used for cuts and to weight repeat visits"),
        "teff_column": ("teff", str, "target-pipeline Teff for the dwarf/giant split"),
        "logg_column": ("logg", str, "target-pipeline log g for the dwarf/giant split"),
        "ra_column": ("ra", str, ""),
        "dec_column": ("dec", str, ""),
        "grid": ("lamost", str, "common wavelength grid: lamost | apogee | galah | WMIN:WMAX:NPIX"),
        "normalise": ("gaussian", str, "continuum normalisation: gaussian | chebyshev"),
    },
    "reference": {
        "survey": ("galah", str, "survey providing the training labels"),
        "catalogue": (_REQUIRED, str, "reference survey catalogue"),
        "spectra": ("", str, "reference survey spectra (for windowed-chi2 cleaning); '' to skip cleaning"),
        "id_column": ("sobject_id", str, ""),
        "ra_column": ("ra", str, ""),
        "dec_column": ("dec", str, ""),
        "error_prefix": ("e_", str, "label error columns are <error_prefix><label>"),
        "columns": ({}, dict, "aliases: name used in cuts/labels -> this catalogue's column"),
    },
    "crossmatch": {
        "method": ("sky", str, "sky | id"),
        "radius_arcsec": (1.0, (int, float), "sky-match radius"),
        "target_id_column": ("", str, "for method = id: target column holding the reference id"),
    },
    "cuts": {
        "target": (["snrz >= 30"], list, "expressions over target-catalogue columns (Wheeler+2020 §2.1)"),
        "reference": (
            ["snr_c1 >= 30", "chi2_cannon < 4", "flag_cannon == 0"],
            list,
            "expressions over reference-catalogue columns (names may be aliases)",
        ),
    },
    "clean": {
        "enabled": (True, bool, "windowed-chi2 cleaning of the reference set (Wheeler+2020 §2.1)"),
        "percentile": (85.0, (int, float), "drop stars above this percentile for any element"),
        "windows": ("", str, "CSV of element line windows ('' = shipped Wheeler+2020 Table 2)"),
        "labels": (["teff", "logg", "vmic", "fe_h"], list, "stellar labels of the reference-spectra model"),
        "order": (2, int, ""),
        "normalise": ("gaussian", str, ""),
    },
    "split": {
        "method": ("wheeler2020", str, "wheeler2020 (Eq. 1) | none"),
    },
    "labels": {
        "derived": (
            {
                "mean_alpha_fe": {"mean_of": ["mg_fe", "si_fe", "ca_fe", "ti_fe"], "weights": "error"},
                "mean_s_fe": {"mean_of": ["ba_fe", "y_fe"], "weights": "error"},
            },
            dict,
            "derived labels: name -> {mean_of = [...], weights = 'error' | 'equal'}",
        ),
    },
    # one table per model, [models.NAME] labels = [...]; with split.method = "wheeler2020" the
    # names are dwarf and giant, with "none" any one model is trained and applied to every star
    "models": (
        {"dwarf": {"labels": DWARF_LABELS}, "giant": {"labels": GIANT_LABELS}},
        dict,
        "labels of each model: [models.NAME] labels = [...]",
    ),
    "training": {
        "order": (2, int, "polynomial order"),
        "scale": ("standard", str, "standard | percentile"),
        "scatter": ("reml", str, "reml | ml (Wheeler+2020 Eq. 5 as written)"),
        "regularization": (0.0, (int, float), "L1 strength"),
        "cv_folds": (12, int, "cross-validation folds"),
        "min_stars": (50, int, "refuse to train a model on fewer stars"),
    },
    "dynamics": {
        "enabled": (True, bool, "Gaia cross-match, Galactocentric coordinates and actions"),
        "gaia": ("", str, "Gaia catalogue ('' disables the stage)"),
        "radius_arcsec": (1.0, (int, float), ""),
        "n_samples": (20, int, "Monte-Carlo resamples (Wheeler+2020 §5.1)"),
        "rv_column": ("rv", str, "target-catalogue RV used when Gaia has none"),
    },
    "catalogue": {
        "formats": (["fits", "parquet"], list, "fits and/or parquet"),
    },
}


def _suggest(key, options):
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _validate(section_schema, given, where):
    out = {}
    for key in given:
        if key not in section_schema:
            raise ConfigError(
                f"unknown key {where}{key!r}{_suggest(key, section_schema)}; "
                f"expected one of {sorted(section_schema)}"
            )
    for key, spec in section_schema.items():
        if isinstance(spec, dict):
            sub = given.get(key, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{where}{key} must be a table [{where}{key}], got {type(sub).__name__}")
            out[key] = _validate(spec, sub, f"{where}{key}.")
            continue
        default, typ, _ = spec
        if key not in given:
            if default is _REQUIRED:
                raise ConfigError(f"missing required key {where}{key}")
            out[key] = copy.deepcopy(default)
            continue
        value = given[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{where}{key} must be {'/'.join(t.__name__ for t in types)}, got a boolean")
        if not isinstance(value, types):
            raise ConfigError(f"{where}{key} must be {'/'.join(t.__name__ for t in types)}, got {value!r}")
        out[key] = value
    return out


def validate_config(raw, base_dir="."):
    """Check a config dict against SCHEMA, fill defaults, resolve paths. Returns a new dict."""
    cfg = _validate(SCHEMA, raw, "")
    base = Path(base_dir)
    cfg["_base_dir"] = str(base.resolve())

    def resolve(p):
        if not p:
            return ""
        if p.startswith("@"):
            return "@" + str((base / p[1:]).resolve())
        return str((base / p).resolve())

    cfg["run"]["out"] = resolve(cfg["run"]["out"])
    for sec, keys in (("target", ["spectra", "catalogue"]), ("reference", ["catalogue", "spectra"]), ("dynamics", ["gaia"]), ("clean", ["windows"])):
        for k in keys:
            cfg[sec][k] = resolve(cfg[sec][k])
    if cfg["crossmatch"]["method"] not in ("sky", "id"):
        raise ConfigError(f"crossmatch.method must be 'sky' or 'id', got {cfg['crossmatch']['method']!r}")
    if cfg["crossmatch"]["method"] == "id" and not cfg["crossmatch"]["target_id_column"]:
        raise ConfigError("crossmatch.target_id_column is required when crossmatch.method = 'id'")
    if cfg["split"]["method"] not in ("wheeler2020", "none"):
        raise ConfigError(f"split.method must be 'wheeler2020' or 'none', got {cfg['split']['method']!r}")
    if cfg["training"]["scale"] not in ("standard", "percentile"):
        raise ConfigError(f"training.scale must be 'standard' or 'percentile', got {cfg['training']['scale']!r}")
    if cfg["training"]["scatter"] not in ("reml", "ml"):
        raise ConfigError(f"training.scatter must be 'reml' or 'ml', got {cfg['training']['scatter']!r}")
    if not 0 < cfg["clean"]["percentile"] <= 100:
        raise ConfigError(f"clean.percentile must be in (0, 100], got {cfg['clean']['percentile']}")
    for f in cfg["catalogue"]["formats"]:
        if f not in ("fits", "parquet"):
            raise ConfigError(f"catalogue.formats entries must be 'fits' or 'parquet', got {f!r}")
    for name, spec in cfg["models"].items():
        if not isinstance(spec, dict) or set(spec) - {"labels"} or not isinstance(spec.get("labels"), list) or not spec["labels"]:
            raise ConfigError(f"models.{name} must be a table with one key, labels = [..] (non-empty), got {spec!r}")
    if cfg["split"]["method"] == "wheeler2020" and set(cfg["models"]) != {"dwarf", "giant"}:
        raise ConfigError(f"split.method = 'wheeler2020' needs exactly models.dwarf and models.giant, got {sorted(cfg['models'])}")
    if cfg["split"]["method"] == "none" and len(cfg["models"]) != 1:
        raise ConfigError(f"split.method = 'none' needs exactly one [models.NAME] table, got {sorted(cfg['models'])}")
    for name, spec in cfg["labels"]["derived"].items():
        if not isinstance(spec, dict) or set(spec) - {"mean_of", "weights"} or not spec.get("mean_of"):
            raise ConfigError(f"labels.derived.{name} must be {{mean_of = [...], weights = 'error'|'equal'}}, got {spec!r}")
        if spec.get("weights", "error") not in ("error", "equal"):
            raise ConfigError(f"labels.derived.{name}.weights must be 'error' or 'equal'")
    for side in ("target", "reference"):
        for expr in cfg["cuts"][side]:
            if not isinstance(expr, str):
                raise ConfigError(f"cuts.{side} entries must be strings, got {expr!r}")
            expression_names(expr, f"cuts.{side}")
    return cfg


def load_config(path):
    """Read and validate a TOML run configuration (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        cfg = validate_config(raw, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg["_path"] = str(path.resolve())
    return cfg


# --------------------------------------------------------------------------- cut expressions
_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Load, ast.Constant,
    ast.And, ast.Or, ast.Not, ast.BitAnd, ast.BitOr, ast.Invert, ast.USub, ast.UAdd,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Call,
)
_FUNCTIONS = {"abs": np.abs, "log10": np.log10, "sqrt": np.sqrt, "isfinite": np.isfinite}


def expression_names(expr, where="expression"):
    """Column names used by a cut expression (checks the syntax is a safe subset of Python)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{where}: cannot parse {expr!r}: {exc.msg}") from None
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ConfigError(f"{where}: {expr!r} uses {type(node).__name__}, which cuts may not use")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
                raise ConfigError(f"{where}: {expr!r} calls an unknown function; allowed: {sorted(_FUNCTIONS)}")
        elif isinstance(node, ast.Name):
            names.add(node.id)
    return names - set(_FUNCTIONS)


def resolve_column(name, columns, aliases=None, what="catalogue"):
    """The catalogue column a name refers to (directly or through an alias); ColumnError if none."""
    aliases = aliases or {}
    if name in aliases:
        target = aliases[name]
        if target in columns:
            return target
        raise ColumnError(f"alias {name!r} -> {target!r}: no column {target!r} in the {what}; columns are {sorted(columns)}")
    if name in columns:
        return name
    raise ColumnError(f"unknown column {name!r} in the {what}{_suggest(name, columns)}; columns are {sorted(columns)}")


def evaluate_cut(expr, table, aliases=None, what="catalogue"):
    """Evaluate a cut expression over table columns -> (n_rows,) bool (NaN comparisons are False)."""
    columns = list(table.colnames) if hasattr(table, "colnames") else list(table.columns)
    names = expression_names(expr, what)
    env = {n: np.asarray(table[resolve_column(n, columns, aliases, what)]) for n in names}

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.BoolOp):
            vals = [np.asarray(ev(v), dtype=bool) for v in node.values]
            out = vals[0]
            for v in vals[1:]:
                out = (out & v) if isinstance(node.op, ast.And) else (out | v)
            return out
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            return {ast.Not: np.logical_not, ast.Invert: np.invert, ast.USub: np.negative, ast.UAdd: np.positive}[type(node.op)](v)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            ops = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide, ast.Pow: np.power,
                   ast.Mod: np.mod, ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
            return ops[type(node.op)](a, b)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            out = None
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                ops = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
                       ast.Eq: np.equal, ast.NotEq: np.not_equal}
                r = ops[type(op)](left, right)
                out = r if out is None else (out & r)
                left = right
            return out
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.id](*[ev(a) for a in node.args])
        raise ConfigError(f"{what}: unsupported expression {expr!r}")  # pragma: no cover

    with np.errstate(invalid="ignore"):
        result = np.asarray(ev(ast.parse(expr, mode="eval")), dtype=bool)
    n = len(table)
    return np.broadcast_to(result, (n,)).copy()
