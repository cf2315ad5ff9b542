"""A method package is removable: copy fgjax/ and configs/, delete one method's folder
(with the method packages built on it, tests/test_layering.py's METHOD_DEPENDS), the
commands `fgjax.cli.METHOD_COMMANDS` gives it and the recipes of its methods; what is
left imports module by module, has every other method, loads every other recipe, and
its command line lists its commands and answers for the missing ones in one line."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO
from test_layering import METHOD_DEPENDS

from fgjax.cli import COMMANDS, METHOD_COMMANDS
from fgjax.config import load_config_file
from fgjax.methods import method_class, registered_methods

METHODS_DIR = os.path.join(REPO, "fgjax", "methods")
PACKAGES = sorted(
    name
    for name in os.listdir(METHODS_DIR)
    if os.path.isfile(os.path.join(METHODS_DIR, name, "__init__.py"))
)

# Run in the copy, with the copy first on sys.path: every module, the registry, the recipes.
PROBE = r"""
import glob, importlib, json, os, pkgutil, sys, traceback

root = sys.argv[1]
import fgjax

assert os.path.dirname(fgjax.__file__) == os.path.join(root, "fgjax"), fgjax.__file__
failed = {}


def walk_error(name):
    failed[name] = traceback.format_exc()


names = [m.name for m in pkgutil.walk_packages(fgjax.__path__, "fgjax.", onerror=walk_error)]
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc()

from fgjax.config import load_config_file
from fgjax.methods import registered_methods

recipes = {}
for path in sorted(glob.glob(os.path.join(root, "configs", "*.py"))):
    try:
        recipes[os.path.basename(path)] = load_config_file(path).method
    except Exception:
        failed[path] = traceback.format_exc()
print(json.dumps(dict(modules=len(names), failed=failed, methods=registered_methods(),
                      recipes=recipes)))
"""


def _removed_with(package: str) -> set[str]:
    """`package` and every method package that builds on it, transitively."""
    removed = {package}
    while True:
        more = {p for p, needs in METHOD_DEPENDS.items() if needs & removed} - removed
        if not more:
            return removed
        removed |= more


@pytest.fixture(scope="module")
def full_install():
    """Which package registers each method, and each recipe's method, in the repository."""
    owner = {}
    for name in registered_methods():
        parts = method_class(name).__module__.split(".")
        if parts[:2] == ["fgjax", "methods"] and parts[2] in PACKAGES:
            owner[name] = parts[2]
        elif parts[:2] == ["fgjax", "methods"]:
            owner[name] = ""  # a shared module (base, moco, byol, supervised)
    recipes = {
        os.path.basename(path): load_config_file(path).method
        for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
    }
    return owner, recipes


def test_every_method_package_is_listed_and_its_commands_exist():
    assert set(PACKAGES) >= {"lcr", "herbs", "bucsfr", "leadpp", "cfga"}
    assert set(METHOD_COMMANDS.values()) <= set(PACKAGES)
    assert set(METHOD_COMMANDS) <= set(COMMANDS)
    for needs in METHOD_DEPENDS.values():
        assert needs <= set(PACKAGES)


@pytest.mark.slow
@pytest.mark.parametrize("package", PACKAGES)
def test_the_rest_works_without_a_method_package(package, full_install, tmp_path):
    owner, recipes = full_install
    removed = _removed_with(package)
    copy = tmp_path / "install"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(REPO, "fgjax"), copy / "fgjax", ignore=ignore)
    shutil.copytree(os.path.join(REPO, "configs"), copy / "configs", ignore=ignore)
    for name in removed:
        shutil.rmtree(copy / "fgjax" / "methods" / name)
    gone_commands = sorted(c for c, p in METHOD_COMMANDS.items() if p in removed)
    for command in gone_commands:
        os.remove(copy / "fgjax" / "cli" / f"{command}.py")
    gone_methods = {m for m, p in owner.items() if p in removed}
    gone_recipes = {r for r, m in recipes.items() if m in gone_methods}
    for recipe in gone_recipes:
        os.remove(copy / "configs" / recipe)
    assert gone_methods and gone_recipes, (package, gone_methods, gone_recipes)

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(copy))
    env.pop("FGJAX_METHODS", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], env=env, cwd=copy, capture_output=True, text=True, timeout=300
        )

    probe = run("-c", PROBE, str(copy))
    assert probe.returncode == 0, probe.stdout + probe.stderr
    found = json.loads(probe.stdout.splitlines()[-1])
    assert not found["failed"], "\n".join(f"{k}:\n{v}" for k, v in found["failed"].items())
    assert found["modules"] > 50
    assert set(found["methods"]) == set(owner) - gone_methods  # toy methods of other tests aside
    assert found["recipes"] == {r: m for r, m in recipes.items() if r not in gone_recipes}

    usage = run("-m", "fgjax.cli", "--help")
    assert usage.returncode == 0, usage.stderr
    for command in COMMANDS:
        assert f"  {command} " in usage.stdout
    for command in gone_commands:
        answer = run("-m", "fgjax.cli", command, "--help")
        assert answer.returncode == 2 and "Traceback" not in answer.stderr, answer.stderr
        expected = f"command {command!r} needs the {METHOD_COMMANDS[command]} package"
        assert expected in answer.stderr and "this install does not have" in answer.stderr
