"""Every command, on one floor: `fgjax <command> [arguments]` (the console script), also
`python -m fgjax.cli <command>` and `python -m fgjax.cli.<command>`.

Each command is a thin layer over public library functions; the library below never
imports a command (tests/test_layering.py). `COMMANDS` maps a command to its module;
`METHOD_COMMANDS` names the method package a method's own command needs.
"""

from __future__ import annotations

import importlib
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
}
METHOD_COMMANDS = {
    "describe": "cfga",
    "ddt": "leadpp",
    "text": "leadpp",
    "rationale": "lcr",
    "heatmap": "herbs",
    "report": "herbs",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {SUMMARIES[name]}" for name in COMMANDS)
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
    module = importlib.import_module(COMMANDS[name])
    if name == "train":  # absl's flags read the program name first
        module.run([f"fgjax {name}", *rest])
        return 0
    result = module.main(rest)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
