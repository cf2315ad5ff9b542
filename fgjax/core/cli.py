"""How every `python -m fgjax.*` command meets a user error: one line, exit status 1.

A user error (a missing dataset root, a bad file, a bad config value, a checkpoint that
cannot be read) is a `USER_ERRORS` exception whose message names the file or field; the
command prints `error: <message>` instead of a traceback through the library. `--debug`
anywhere on the command line (or FGJAX_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

# ValueError: bad values and formats (config fields, CSV / .mat / JSON contents, weights);
# OSError: missing or unreadable files and folders, undecodable images, a full disk;
# FloatingPointError: a run stopped by non-finite steps (its checkpoint is intact);
# UnpicklingError: a checkpoint refused by the safe reader.
USER_ERRORS = (ValueError, OSError, FloatingPointError, pickle.UnpicklingError)
DEBUG_FLAG = "--debug"

T = TypeVar("T")


def debugging(argv: Sequence[str] = ()) -> bool:
    """Whether tracebacks are wanted: `--debug` in `argv`, or FGJAX_DEBUG set (not 0)."""
    return DEBUG_FLAG in argv or os.environ.get("FGJAX_DEBUG", "0") not in ("", "0")


def user_error_exit(err: BaseException) -> SystemExit:
    """The SystemExit that prints `err` as one `error:` line (exit status 1)."""
    return SystemExit(f"error: {err} ({DEBUG_FLAG} shows the traceback)")


def command(run: Callable[[list[str]], T]) -> Callable[[Sequence[str] | None], T]:
    """`main(argv=None)` of a command whose work is `run(argv)`: `--debug` is taken out of
    argv; a `USER_ERRORS` exception becomes one `error:` line and exit status 1 unless
    debugging."""

    @functools.wraps(run)
    def main(argv: Sequence[str] | None = None) -> T:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = debugging(argv)
        try:
            return run([a for a in argv if a != DEBUG_FLAG])
        except USER_ERRORS as err:
            if debug:
                raise
            raise user_error_exit(err) from None

    return main
