"""The user documentation: README.md and the mkdocs site under docs/.

- the site builds with `mkdocs build --strict` (broken links and anchors fail it);
- README.md stays a front page (at most 250 lines);
- no developer-only paths (`../shared`) and no issue numbers;
- every command shown exists: each `python -m fgjax.X` module, each `fgjax <command>` of
  the console script (a key of `fgjax.cli.COMMANDS`) and each `configs/*.py` recipe;
- every page under docs/ is in mkdocs.yml's nav.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
README = os.path.join(REPO, "README.md")
MKDOCS_YML = os.path.join(REPO, "mkdocs.yml")
MAX_README_LINES = 250


def doc_files() -> list[str]:
    pages = sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
    return [README, *pages]


def rel(path: str) -> str:
    return os.path.relpath(path, REPO)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_docs_exist():
    assert os.path.isfile(MKDOCS_YML), "mkdocs.yml is missing at the repository root"
    assert len(doc_files()) > 1, "docs/ holds no pages"


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]")')
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed (status {result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}"
    )


def test_readme_is_short():
    lines = read(README).splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move detail into docs/"
    )


FORBIDDEN = [
    (re.compile(r"\.\./shared"), "a developer-only ../shared path"),
    (re.compile(r"issue\s*#", re.IGNORECASE), "an issue number"),
    (re.compile(r"(?<![\w/#&])#\d+\b"), "an issue number"),
]


def test_no_internal_references():
    problems = []
    for path in doc_files():
        for number, line in enumerate(read(path).splitlines(), 1):
            for pattern, what in FORBIDDEN:
                for m in pattern.finditer(line):
                    problems.append(f"{rel(path)}:{number}: {what}: {m.group(0)!r} in {line!r}")
    assert not problems, "\n".join(problems)


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every line of a fenced code block."""
    lines, fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
        elif fence:
            lines.append((number, line))
    return lines


def inline_code(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every inline code span outside fenced blocks."""
    spans, fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            spans.extend((number, m.group(1)) for m in re.finditer(r"`([^`\n]+)`", line))
    return spans


PYTHON_M = re.compile(r"python -m (fgjax(?:\.\w+)*)")
# The console script where a shell command starts: the line's start, after a prompt
# `$ `, or after `&&`, `;`, `|`.
CONSOLE = re.compile(r"(?:^|\$ |&&\s*|;\s*|\|\s*)fgjax\s+([A-Za-z_<][\w<>-]*)")
RECIPE = re.compile(r"configs/[\w{},<>*.-]+?\.py")


def commands_shown(path: str):
    """(line, kind, text) for every `python -m fgjax...`, `fgjax <command>` and
    `configs/...py` the file shows."""
    text = read(path)
    for number, line in enumerate(text.splitlines(), 1):
        for m in PYTHON_M.finditer(line):
            yield number, "module", m.group(1)
        for m in RECIPE.finditer(line):
            yield number, "recipe", m.group(0)
    shell = code_lines(text) + inline_code(text)
    for number, line in shell:
        for m in CONSOLE.finditer(line.strip()):
            yield number, "command", m.group(1)


def expand_braces(pattern: str) -> list[str]:
    """`a{b,c}d` -> [abd, acd] (several groups, no nesting)."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def recipe_exists(pattern: str) -> bool:
    for path in expand_braces(pattern):
        path = re.sub(r"<[^<>]*>", "*", path)
        if not glob.glob(os.path.join(REPO, path)):
            return False
    return True


def test_commands_exist():
    from fgjax.cli import COMMANDS

    problems = []
    for path in doc_files():
        for number, kind, text in commands_shown(path):
            where = f"{rel(path)}:{number}"
            if kind == "module":
                try:
                    found = importlib.util.find_spec(text) is not None
                except ImportError:
                    found = False
                if not found:
                    problems.append(f"{where}: `python -m {text}`: no module {text}")
            elif kind == "command":
                if not text.startswith("<") and text not in COMMANDS:
                    problems.append(
                        f"{where}: `fgjax {text}`: not a command (fgjax.cli.COMMANDS: "
                        f"{', '.join(sorted(COMMANDS))})"
                    )
            elif not recipe_exists(text):
                problems.append(f"{where}: {text}: no such recipe file")
    assert not problems, "\n".join(problems)


def test_every_page_in_nav():
    nav = set(re.findall(r"[\w./-]+\.md", read(MKDOCS_YML)))
    pages = sorted(rel(p)[len("docs/") :] for p in doc_files() if p != README)
    missing = [p for p in pages if p not in nav]
    assert not missing, f"docs pages not in mkdocs.yml's nav: {', '.join(missing)}"
    absent = sorted(p for p in nav if not os.path.isfile(os.path.join(DOCS, p)))
    assert not absent, f"mkdocs.yml names pages that do not exist: {', '.join(absent)}"
