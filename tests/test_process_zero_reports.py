"""A run's reports come from process 0 only, also when the library is called directly
(`fgjax train` silences the other processes' stdout as a whole; a notebook or a
script calling `train_and_evaluate` on each host does not)."""

import ast
import pathlib

import jax

from fgjax.core import distributed

PACKAGE = pathlib.Path(distributed.__file__).parents[1]
# The modules every process runs while training: their messages go through `say`.
EVERY_PROCESS = ["train", "methods", "core", "data", "models"]


def _bare_prints(path: pathlib.Path) -> list[int]:
    """Lines of `print(...)` calls with no explicit `file=` (stdout, every process)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and not any(k.arg == "file" for k in node.keywords)
    ]


def test_training_modules_report_through_say_only():
    found = {
        str(path.relative_to(PACKAGE)): lines
        for folder in EVERY_PROCESS
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        if (lines := _bare_prints(path))
    }
    # progress.py prints only after checking the process index itself; say is the gate
    assert set(found) == {"core/distributed.py", "core/progress.py"}
    assert len(found["core/distributed.py"]) == len(found["core/progress.py"]) == 1


def test_say_prints_on_process_0_only(monkeypatch, capsys):
    distributed.say("on", 0)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    distributed.say("on", 1)
    assert capsys.readouterr().out == "on 0\n"
