"""Every command, on one floor: `fgjax <command> [arguments]` (the console script), also
`python -m fgjax.cli <command>` and `python -m fgjax.cli.<command>`.

Each command is a thin layer over public library functions; the library below never
imports a command (tests/test_layering.py). `COMMANDS` maps a command to its module;
`METHOD_COMMANDS` names the method package a method's own command needs. An install
without that package (its folder `fgjax/methods/<package>/` removed, and with it the
command's module) still runs every other command; the dispatcher answers for the missing
ones with one line instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from collections.abc import Sequence

COMMANDS = {
    "train": "fgjax.cli.train",
    "eval": "fgjax.cli.eval",
    "describe": "fgjax.cli.describe",
    "plot": "fgjax.cli.plot",
    "inspect": "fgjax.cli.inspect",
    "weights": "fgjax.cli.weights",
    "ddt": "fgjax.cli.ddt",
    "text": "fgjax.cli.text",
    "rationale": "fgjax.cli.rationale",
    "heatmap": "fgjax.cli.heatmap",
    "report": "fgjax.cli.report",
    "table": "fgjax.cli.table",
}
SUMMARIES = {
    "train": "train a recipe: --config configs/<recipe>.py --workdir DIR (resumes)",
    "eval": "evaluate a checkpoint or a weights file (retrieval, kNN, probe, clustering)",
    "describe": "training-free descriptors (GAP, SCDA, CFGA+) and their retrieval",
    "plot": "training curves of a workdir",
    "inspect": "a dataset before training: counts, sizes, contact sheets, --verify",
    "weights": "convert and inspect weights files (.pth, .safetensors, .npz)",
    "ddt": "LEAD++'s DDT object crops of a dataset",
    "text": "LEAD++'s CLIP text prototypes",
    "rationale": "LCR's rationale maps of a run",
    "heatmap": "HERBS' Grad-CAM heat maps of a run",
    "report": "HERBS' test-split report (9-head vote, per class, confusion)",
    "table": "every method on the same splits and protocol: one table, CSV and figure",
}
METHOD_COMMANDS = {
    "describe": "cfga",
    "ddt": "leadpp",
    "text": "leadpp",
    "rationale": "lcr",
    "heatmap": "herbs",
    "report": "herbs",
}


def missing_package(name: str) -> str | None:
    """The method package command `name` needs when this install lacks it, else None."""
    package = METHOD_COMMANDS.get(name)
    if package is None or has_method_package(package):
        return None
    return package


def has_method_package(package: str) -> bool:
    """Whether this install has `fgjax/methods/<package>/`, found without importing
    anything (`fgjax.methods` imports jax)."""
    folders = [os.path.join(os.path.dirname(path), "methods") for path in __path__]
    return importlib.machinery.PathFinder.find_spec(package, folders) is not None


def usage() -> str:
    width = max(map(len, COMMANDS))

    def summary(name: str) -> str:
        package = missing_package(name)
        if package is None:
            return SUMMARIES[name]
        return f"{SUMMARIES[name]} [needs the {package} package: not installed]"

    rows = "\n".join(f"  {name:<{width}}  {summary(name)}" for name in COMMANDS)
    return (
        "usage: fgjax <command> [arguments]   (fgjax <command> --help for its arguments)\n\n"
        f"commands:\n{rows}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `argv[0]`'s command with the rest of `argv` (`sys.argv[1:]` when None); the
    command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    package = missing_package(name)
    if package is not None:
        print(
            f"error: command {name!r} needs the {package} package (fgjax/methods/{package}/), "
            "which this install does not have",
            file=sys.stderr,
        )
        return 2
    try:
        module = importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as err:
        if err.name != COMMANDS[name]:
            raise
        print(f"error: command {name!r}: its module {err.name} is not installed", file=sys.stderr)
        return 2
    if name == "train":  # absl's flags read the program name first
        module.run([f"fgjax {name}", *rest])
        return 0
    result = module.main(rest)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
