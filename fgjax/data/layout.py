"""Reading a dataset's own index files, with errors that say which layout was expected
and what was found instead.

Every reader names the file (and the line, for text tables) it failed on, so a user who
points `config.data.root` at the wrong folder, or at a partly extracted archive, learns
what to fix without reading the source.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np


class DatasetLayoutError(FileNotFoundError):
    """A dataset root does not hold the layout its kind reads (the message says which)."""


class DatasetFormatError(ValueError):
    """An index file of a dataset is malformed; the message names the file and line."""


def describe_folder(path: str, limit: int = 12) -> str:
    """What is at `path`, for error messages: its first entries, or why there are none."""
    if not os.path.exists(path):
        return "nothing (the path does not exist)"
    if not os.path.isdir(path):
        return "a file, not a folder"
    names = sorted(os.listdir(path))
    if not names:
        return "an empty folder"
    shown = [n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in names[:limit]]
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def require_paths(root: str, relpaths: Sequence[str], *, kind: str, layout: str) -> None:
    """Raises DatasetLayoutError unless every `root/relpath` exists.

    `layout` is one line describing what `kind` reads, e.g. "CUB_200_2011/ with images.txt,
    ...": the error quotes it next to what `root` actually holds.
    """
    missing = [p for p in relpaths if not os.path.exists(os.path.join(root, p))]
    if missing:
        raise DatasetLayoutError(
            f"config.data.kind={kind!r} reads {layout}; at config.data.root={root!r} "
            f"{'it is' if len(missing) == 1 else 'they are'} missing: {', '.join(missing)}. "
            f"Found there: {describe_folder(root)}"
        )


def read_table(path: str, num_columns: int, *, max_split: int | None = None) -> list[list[str]]:
    """Rows of a whitespace-separated text file (blank lines skipped).

    `max_split`: split at most this many times, so the last column may hold spaces
    (e.g. 'id name with spaces'). Every row must have exactly `num_columns` fields.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            fields = line.split(None, max_split) if max_split is not None else line.split()
            if len(fields) != num_columns:
                raise DatasetFormatError(
                    f"{path}: line {line_number}: expected {num_columns} fields, got "
                    f"{len(fields)}: {line!r}"
                )
            rows.append(fields)
    return rows


def dataset_folder(root: str, folder: str) -> str:
    """`root` itself when it is the dataset folder, else `root/folder` when that exists."""
    return os.path.join(root, folder) if os.path.isdir(os.path.join(root, folder)) else root


def read_keyed(
    path: str, num_values: int, key: Callable = int, max_split: int | None = None
) -> dict:
    """'id value...' rows of an index file as {id: [values]}; ids must be unique.

    `key`: how ids are read: `int` (CUB's 1, 2, ...) or `str` (NABirds' UUIDs).
    `max_split`: as `read_table` (1 for 'id name with spaces').
    """
    out: dict = {}
    for line, row in enumerate(read_table(path, 1 + num_values, max_split=max_split), start=1):
        k = parse_int(row[0], path, line) if key is int else key(row[0])
        if k in out:
            raise DatasetFormatError(f"{path}: line {line}: id {k} appears twice")
        out[k] = row[1:]
    return out


def keyed_values(
    path: str,
    ids: Sequence,
    num_values: int = 1,
    key: Callable = int,
    listed_in: str = "images.txt",
) -> list[list[str]]:
    """The values of every id in `ids` (those of `listed_in`) from an 'id value...' file."""
    table = read_keyed(path, num_values, key)
    missing = [i for i in ids if i not in table]
    if missing:
        raise DatasetFormatError(
            f"{path}: no row for image id(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            f" listed in {listed_in}"
        )
    return [table[i] for i in ids]


def parse_int(value: str, path: str, line: int | str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetFormatError(f"{path}: line {line}: {value!r} is not an integer") from None


def load_mat(path: str) -> dict:
    """A MATLAB .mat file as scipy reads it (structs as record arrays, 1-D squeezed)."""
    from scipy.io import loadmat  # scipy is slow to import; only .mat datasets need it

    try:
        return loadmat(path, squeeze_me=True)
    except Exception as e:  # noqa: BLE001 - scipy raises several kinds for bad files
        raise DatasetFormatError(f"{path}: cannot read as a MATLAB file: {e}") from e


def dense_ids(values: np.ndarray, path: str, expected: int | None = None) -> np.ndarray:
    """1-based ids -> 0-based int32, checked to lie in [1, expected] when given."""
    values = np.asarray(values, np.int64)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (1, 0)
    if values.size and lo < 1 or (expected is not None and hi > expected):
        raise DatasetFormatError(
            f"{path}: ids must lie in 1..{expected if expected is not None else 'N'}, "
            f"found {lo}..{hi}"
        )
    return (values - 1).astype(np.int32)
