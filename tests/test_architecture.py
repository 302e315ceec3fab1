"""The house rules, read from the code: layers, private names, import-time side effects.

Layers (lower never imports higher; siblings of one layer never import each other):

0. base: ``exceptions``, ``_version``, ``util``, ``tables``, ``flags``, ``provenance``
1. ``execution`` (chunked, resumable maps; backends)
2. ``spectra``, ``cannon``, ``galaxy``, ``catalogue``, ``config`` (siblings)
3. ``pipeline``, ``simulate`` (siblings)
4. ``science`` (analyses of a catalogue), ``tasks`` (the one-shot train / cv / infer commands)
5. ``report`` (figures and the HTML page, from a run directory's files)
6. ``demo``
7. ``cli``, ``__main__``

The pinned facades (``cannonade/__init__``, ``cannonade.io``, ``cannonade.dynamics``) re-export
for users; no module of the package imports them.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cannonade"
LAYERS = {
    "exceptions": 0, "_version": 0, "util": 0, "tables": 0, "flags": 0, "provenance": 0,
    "execution": 1,
    "spectra": 2, "cannon": 2, "galaxy": 2, "catalogue": 2, "config": 2,
    "pipeline": 3, "simulate": 3,
    "science": 4, "tasks": 4,
    "report": 5,
    "demo": 6,
    "cli": 7, "__main__": 7,
}
FACADES = {"cannonade", "cannonade.io", "cannonade.dynamics"}


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(path, name):
    """(imported module, imported names) for every import of a cannonade module."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cannonade"):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if mod.startswith("cannonade"):
                yield mod, [a.name for a in node.names]


def layer_of(mod):
    parts = mod.split(".")
    if len(parts) == 1:
        return None
    return parts[1], LAYERS.get(parts[1])


MODULES = [m for m in modules() if m[0] not in FACADES]


@pytest.mark.parametrize("name,path", MODULES, ids=[m[0] for m in MODULES])
def test_layers_and_private_names(name, path):
    top, mine = layer_of(name)
    assert mine is not None, f"{name}: top-level module {top!r} has no layer; add it to the table above"
    for mod, names in imports(path, name):
        assert mod not in FACADES or name.startswith("cannonade.cli"), f"{name} imports the user facade {mod}"
        if mod in FACADES:
            continue
        other, theirs = layer_of(mod)
        if other == top:
            continue
        assert theirs is not None, f"{name} imports {mod}, which has no layer"
        same_ok = theirs == mine and mine in (0, 7)  # base modules build on each other; so do entry points
        assert theirs < mine or same_ok, f"{name} (layer {mine}) imports {mod} (layer {theirs})"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{name} imports private names {private} from {mod}"


def test_no_pools_environment_changes_or_silenced_warnings_at_module_level():
    bad = []
    for name, path in modules():
        text = path.read_text()
        tree = ast.parse(text)
        for node in tree.body:  # module level statements only
            src = ast.get_source_segment(text, node) or ""
            if any(s in src for s in ("ProcessPoolExecutor(", "ThreadPoolExecutor(", "os.environ[", "os.environ.setdefault(", "os.environ.update(")):
                if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                    bad.append(f"{name}: {src.splitlines()[0]}")
        if 'simplefilter("ignore")' in text or "simplefilter('ignore')" in text:
            bad.append(f"{name}: blanket warnings.simplefilter('ignore')")
    assert not bad, bad


def test_one_module_per_pipeline_stage():
    from cannonade.pipeline import WHEELER2020

    for stage in WHEELER2020.stages:
        assert stage.__name__ == f"cannonade.pipeline.stages.{stage.NAME}"
        assert callable(stage.execute)
