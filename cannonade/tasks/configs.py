"""``cannonade config init``: write a recipe's documented example configuration."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cannonade.exceptions import ConfigError
from cannonade.util import atomic_path, check_output_file

__all__ = ["EXAMPLES", "write_example_config"]

#: the shipped example configuration of each recipe (cannonade/data/)
EXAMPLES = {"wheeler2020": "example_lamost_galah.toml", "nandakumar2022": "example_apogee_galah.toml"}


def example_text(recipe="wheeler2020"):
    """The documented example configuration of ``recipe`` as text."""
    if recipe not in EXAMPLES:
        raise ConfigError(f"--recipe {recipe!r}: recipes with an example are {', '.join(EXAMPLES)}")
    return resources.files("cannonade").joinpath("data", EXAMPLES[recipe]).read_text(encoding="utf-8")


def write_example_config(path, recipe="wheeler2020", overwrite=False):
    """Write the example configuration of ``recipe`` to ``path`` (a .toml file); returns the path.

    Raises
    ------
    ConfigError
        Unknown recipe, a path not ending in .toml, or an existing file without ``overwrite``.
    """
    path = Path(path)
    if path.suffix != ".toml":
        raise ConfigError(f"{path}: a configuration file ends in .toml")
    check_output_file(path, "configuration file")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    text = example_text(recipe)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
