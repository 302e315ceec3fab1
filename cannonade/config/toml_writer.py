"""A TOML writer for plain configuration data (the inverse of :mod:`tomllib` for it).

Python reads TOML (:mod:`tomllib`) but does not write it; :func:`toml_text` writes the plain
types of :func:`cannonade.config.as_toml_dict` (str, int, float, bool, lists, nested tables),
e.g. for the copy of a run's configuration kept in its run directory.
"""

from __future__ import annotations

import json
import math
import re

from cannonade.exceptions import ConfigError

__all__ = ["toml_text"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key):
    return key if _BARE_KEY.match(key) else _toml_value(key, key)


def _toml_value(v, where):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):  # a JSON string is a TOML basic string once DEL is escaped too
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, where) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x, where)}" for k, x in v.items()) + "}"
    raise ConfigError(f"{where}: cannot write {v!r} ({type(v).__name__}) as TOML")


def toml_text(data, header=""):
    """TOML text of plain data (str, int, float, bool, lists, nested tables), e.g. :func:`as_toml_dict`.

    ``tomllib.loads(toml_text(d)) == d`` for such data (tuples come back as lists).
    """
    lines = [f"# {ln}" for ln in header.splitlines()]

    def table(d, prefix):
        if prefix:
            lines.extend(["", "[" + ".".join(_toml_key(str(k)) for k in prefix) + "]"])
        subtables = []
        for k, v in d.items():
            if isinstance(v, dict):
                subtables.append((k, v))
            else:
                lines.append(f"{_toml_key(str(k))} = {_toml_value(v, '.'.join(map(str, [*prefix, k])))}")
        for k, v in subtables:
            table(v, [*prefix, k])

    if not isinstance(data, dict):
        raise ConfigError(f"a TOML document is a table, got {type(data).__name__}")
    table(data, [])
    return "\n".join(lines).lstrip("\n") + "\n"
