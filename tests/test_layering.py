"""The package's floors stay acyclic, for every module (sub-packages included):

    core < models, data < weights < eval < methods < config < train < bench < cli

Checked statically (every `import fgjax...` of every module, function-level imports
included) and dynamically (importing `fgjax.eval` loads nothing above it). Commands live
in `fgjax/cli/` only; the old `python -m fgjax.X` paths are shims that run a command and
hold nothing else. Method packages import each other only where `METHOD_DEPENDS` says."""

import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, "fgjax")
FLOORS = ["core", "models", "data", "weights", "eval", "methods", "config", "train", "bench", "cli"]
# What each floor may import from fgjax besides itself: the floors below it, except that
# models and data are side by side.
ALLOWED = {floor: set(FLOORS[:i]) for i, floor in enumerate(FLOORS)}
ALLOWED["data"] = {"core"}
# The shared methods (the contract and the baselines others build on) and, per method
# package, the method packages it builds on.
SHARED_METHOD_MODULES = {"__init__", "base", "moco", "byol", "supervised"}
METHOD_DEPENDS = {"leadpp": {"lcr"}}


def _modules() -> list[str]:
    """Every module of the package, as a path relative to fgjax/ ('cli/train.py')."""
    found = []
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(folder, PACKAGE)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(".py")]
    return sorted(found)


def _imports(path: str) -> set[str]:
    """The full dotted name of every fgjax module or name imported by the file."""
    tree = ast.parse(open(os.path.join(PACKAGE, path)).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fgjax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("fgjax"):
                found.add(node.module)
    return found


def _is_shim(path: str) -> bool:
    """A kept `python -m fgjax.X` path: a docstring, imports, and a `__main__` guard that
    calls one fgjax.cli function; nothing else."""
    tree = ast.parse(open(os.path.join(PACKAGE, path)).read())
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    if not body:
        return False
    *imports, guard = body
    return (
        all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in imports)
        and isinstance(guard, ast.If)
        and "__main__" in ast.unparse(guard.test)
        and all(m.startswith("fgjax.cli") for m in _imports(path))
    )


def _floor(path: str) -> str:
    top = path.split(os.sep)[0]
    return top.removesuffix(".py")


def test_the_walk_sees_every_module():
    modules = _modules()
    assert "data/datasets/cub.py" in modules and "methods/leadpp/ddt/crops.py" in modules
    assert "config.py" in modules and "cli/train.py" in modules


def test_each_module_imports_only_the_floors_below_it():
    problems = []
    for path in _modules():
        floor = _floor(path)
        if floor == "__init__" or _is_shim(path) or not _imports(path):
            continue  # the package's docstring, the shims, the shim folders' docstrings
        assert floor in ALLOWED, f"fgjax/{path}: a new floor? place it in FLOORS"
        for name in _imports(path):
            parts = name.split(".")
            used = parts[1] if len(parts) > 1 else ""
            if used not in ALLOWED[floor] | {floor}:
                problems.append(f"fgjax/{path} imports {name} (floor {floor} < {used})")
    assert not problems, "\n".join(problems)


def test_commands_live_in_cli_only():
    """A module outside fgjax/cli/ with a `__main__` guard is a shim (nothing but a call
    into fgjax.cli), and no module imports a shim."""
    shims, problems = set(), []
    for path in _modules():
        source = open(os.path.join(PACKAGE, path)).read()
        if _floor(path) != "cli" and "__main__" in source:
            if _is_shim(path):
                shims.add("fgjax." + path.removesuffix(".py").replace(os.sep, "."))
            else:
                problems.append(f"fgjax/{path} is a command outside fgjax/cli/")
    assert "fgjax.main" in shims and "fgjax.ddt.__main__" in shims
    for path in _modules():
        problems += [f"fgjax/{path} imports the shim {m}" for m in _imports(path) & shims]
    assert not problems, "\n".join(problems)


def test_method_packages_import_only_what_they_build_on():
    problems = []
    for path in _modules():
        parts = path.split(os.sep)
        if parts[0] != "methods" or len(parts) < 3:
            continue
        own = parts[1]
        for name in _imports(path):
            names = name.split(".")
            if names[:2] != ["fgjax", "methods"] or len(names) < 3:
                continue
            other = names[2]
            if other not in SHARED_METHOD_MODULES | {own} | METHOD_DEPENDS.get(own, set()):
                problems.append(f"fgjax/{path} imports {name}")
    assert not problems, "\n".join(problems)


def test_the_floor_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a core module importing fgjax.train is reported."""
    fake = tmp_path / "fgjax"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "x.py").write_text("from fgjax.train.loop import Run\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(fake))
    try:
        test_each_module_imports_only_the_floors_below_it()
    except AssertionError as err:
        assert "fgjax/core/x.py imports fgjax.train.loop" in str(err)
    else:
        raise AssertionError("an upward import went unnoticed")


def test_importing_eval_does_not_import_train_or_methods():
    code = (
        "import sys, fgjax.eval, fgjax.eval.suite, fgjax.eval.features\n"
        "bad = [m for m in sys.modules if m.startswith(('fgjax.train', 'fgjax.methods'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
