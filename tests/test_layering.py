"""The package's layers stay acyclic: core < models, data, weights < eval < methods < train.

Checked statically (every `import fgjax...` of every module, including function-level
imports) and dynamically (importing `fgjax.eval` loads nothing of `fgjax.train`)."""

import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, "fgjax")
# What each layer may import from fgjax (besides itself).
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "weights": {"core", "models"},
    "descriptors": {"core", "models"},
    "text": {"core", "models", "weights"},
    "ddt": {"core", "models", "data", "weights", "descriptors", "eval"},
    "eval": {"core", "models", "data"},
    "methods": {"core", "models", "data", "weights", "eval", "text"},
    "train": {"core", "models", "data", "weights", "eval", "methods", "config"},
}


# Command-line entry points (`python -m fgjax.data.inspect`, `python -m fgjax.eval`,
# `python -m fgjax.weights`, `python -m fgjax.viz.{rationale,heatmap,report}`) read configs,
# checkpoints and whole runs, so they may import any layer; they stay leaves (nothing
# imports them), which keeps the layers acyclic.
ENTRY_POINTS = {
    "data/inspect.py",
    "eval/__main__.py",
    "weights/__main__.py",
    "viz/rationale.py",
    "viz/heatmap.py",
    "viz/report.py",
    "ddt/__main__.py",
    "text/__main__.py",
}


def _fgjax_imports(path: str) -> set[str]:
    """The first component after `fgjax.` of every import in the file."""
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "fgjax" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_each_layer_imports_only_the_layers_below_it():
    problems = []
    for layer, allowed in ALLOWED.items():
        folder = os.path.join(PACKAGE, layer)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                used = _fgjax_imports(os.path.join(folder, name)) - {layer}
                if f"{layer}/{name}" not in ENTRY_POINTS:
                    problems += [f"fgjax/{layer}/{name} imports fgjax.{u}" for u in used - allowed]
    assert not problems, "\n".join(problems)


def _full_imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_entry_points_are_leaves():
    modules = {"fgjax." + p.removesuffix(".py").replace("/", ".") for p in ENTRY_POINTS}
    importers = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                importers += [f"{path} imports {m}" for m in _full_imports(path) & modules]
    assert not importers, "\n".join(importers)


def test_importing_eval_does_not_import_train_or_methods():
    code = (
        "import sys, fgjax.eval, fgjax.eval.evaluate, fgjax.eval.features\n"
        "bad = [m for m in sys.modules if m.startswith(('fgjax.train', 'fgjax.methods'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
