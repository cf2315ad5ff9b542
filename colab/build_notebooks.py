"""Write each colab/NN_name.ipynb from its percent-format source colab/NN_name.py.

    python colab/build_notebooks.py            # rewrite every .ipynb
    python colab/build_notebooks.py --check    # exit 1 naming each .ipynb out of date

The `.py` is the source of truth (what review reads; jupytext opens it too): `# %%` starts
a code cell, `# %% [markdown]` a markdown cell whose lines are comments (`# text`). The
`.ipynb` is what Colab opens: the same cells without outputs, with fixed cell ids and the
notebook metadata below (a TPU runtime by default), so the conversion is deterministic and
tests/test_notebooks.py can require the committed file to equal it byte for byte.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = re.compile(r"^# %%(?: \[(markdown)\])?\s*$")

# Colab reads `accelerator` and `colab.gpuType` to pick the runtime (a v5e-1 TPU).
METADATA = {
    "accelerator": "TPU",
    "colab": {"gpuType": "V5E1", "provenance": []},
    "kernelspec": {"display_name": "Python 3", "name": "python3"},
    "language_info": {"name": "python"},
}


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def parse_cells(text: str, path: str = "<source>") -> list[tuple[str, str]]:
    """The `(cell_type, source)` cells of a percent-format script, in order."""
    cells: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = MARKER.match(line)
        if match:
            cells.append(("markdown" if match.group(1) else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"{path}:{number}: text before the first '# %%' cell marker")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            bad = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
            if bad:
                raise ValueError(f"{path}: markdown line not written as a comment: {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        out.append((kind, "\n".join(_trim(lines))))
    return out


def notebook_json(cells: list[tuple[str, str]]) -> str:
    """The .ipynb text (nbformat 4.5, no outputs) of `cells`."""
    nb_cells = []
    for i, (kind, source) in enumerate(cells):
        cell = {"cell_type": kind, "id": f"cell-{i:02d}", "metadata": {}}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cell["source"] = source.splitlines(keepends=True)
        nb_cells.append(cell)
    nb = {"cells": nb_cells, "metadata": METADATA, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def sources() -> list[str]:
    """The notebook sources, colab/NN_*.py."""
    return sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]_*.py")))


def expected(source: str) -> str:
    with open(source, encoding="utf-8") as f:
        return notebook_json(parse_cells(f.read(), source))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for source in sources():
        target = source[:-3] + ".ipynb"
        text = expected(source)
        current = open(target, encoding="utf-8").read() if os.path.exists(target) else None
        if current == text:
            continue
        if check:
            stale.append(target)
        else:
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
            print("wrote", os.path.relpath(target))
    for target in stale:
        print(f"{os.path.relpath(target)} differs from its .py: python colab/build_notebooks.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
