"""Reading a dataset's own index files, with errors that say which layout was expected
and what was found instead.

Every reader names the file (and the line, for text tables) it failed on, so a user who
points `config.data.root` at the wrong folder, or at a partly extracted archive, learns
what to fix without reading the source.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

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


def read_text(path: str, encoding: str = "utf-8") -> str:
    """The text of an index file; bytes that are not `encoding` are a DatasetFormatError
    naming the line (a raw UnicodeDecodeError names neither the file nor the line). A UTF-8
    byte-order mark (spreadsheet exports) is dropped: it would glue itself to the first
    column's name."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetFormatError(
            f"{path}: line {line}: not {encoding} text ({e.reason} at byte {e.start})"
        ) from None


def text_lines(path: str) -> io.StringIO:
    """The lines of `read_text(path)`, newlines translated as `open` does."""
    return io.StringIO(read_text(path), newline=None)


def read_table(path: str, num_columns: int, *, max_split: int | None = None) -> list[list[str]]:
    """Rows of a whitespace-separated text file (blank lines skipped).

    `max_split`: split at most this many times, so the last column may hold spaces
    (e.g. 'id name with spaces'). Every row must have exactly `num_columns` fields.
    """
    rows = []
    with text_lines(path) as f:
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


def parse_boxes(rows: Sequence[Sequence[str]], ids: Sequence, path: str) -> np.ndarray:
    """'x y w h' values of `keyed_values` rows -> float32 [N, 4]; a value that is not a
    finite number is an error naming the image id."""
    boxes = np.empty((len(rows), 4), np.float32)
    for k, (i, row) in enumerate(zip(ids, rows, strict=True)):
        try:
            boxes[k] = [float(v) for v in row]
        except ValueError:
            boxes[k] = np.nan
        if not np.isfinite(boxes[k]).all():
            raise DatasetFormatError(f"{path}: line of image {i}: {list(row)} are not 4 numbers")
    return boxes


def train_flags(rows: Sequence[Sequence[str]], ids: Sequence, path: str) -> np.ndarray:
    """bool [N] of a train_test_split.txt's 'id 1|0' values (1 = train)."""
    for i, row in zip(ids, rows, strict=True):
        if row[0] not in ("0", "1"):
            raise DatasetFormatError(f"{path}: line of image {i}: {row[0]!r} is not 1 or 0")
    return np.array([row[0] == "1" for row in rows], bool)


# MAT v5 data element types (the MAT-File Format reference, table 1-1): numeric and
# text codes, miMATRIX (14) and miCOMPRESSED (15).
MAT5_TYPES = frozenset((1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18))


def check_mat5_tags(data: bytes, path: str) -> None:
    """Walks the data element tags of a MAT v5 file (inside matrices and compressed
    elements too); an unknown type code or an element running past its container is a
    DatasetFormatError. scipy's reader trusts both and crashes the process (a
    segmentation fault, not an exception) on some corrupt files: it is not hardened
    against bad input (see `scipy.io.loadmat`'s docstring).
    """
    import zlib

    tag = struct.Struct("<II" if data[126:128] == b"IM" else ">II")
    stack = [(data, 128, len(data))]  # (buffer, position, end) of every open container
    while stack:
        buf, pos, end = stack.pop()
        while pos < end:
            if end - pos < 8:
                raise DatasetFormatError(f"{path}: truncated MATLAB data element at byte {pos}")
            mdtype, nbytes = tag.unpack_from(buf, pos)
            if mdtype >> 16:  # a small data element: type and size in 4 bytes, data in 4 more
                mdtype, nbytes, size, room = mdtype & 0xFFFF, mdtype >> 16, 8, 4
            else:  # data padded to 8 bytes, except compressed data
                size, room = 8 + (nbytes if mdtype == 15 else -(-nbytes // 8) * 8), end - pos - 8
            if mdtype not in MAT5_TYPES or nbytes > room:
                raise DatasetFormatError(
                    f"{path}: corrupt MATLAB data element at byte {pos} (type {mdtype}, "
                    f"{nbytes} bytes, {room} left)"
                )
            if mdtype == 14:
                stack.append((buf, pos + 8, pos + 8 + nbytes))
            elif mdtype == 15:
                try:
                    inner = zlib.decompress(buf[pos + 8 : pos + 8 + nbytes])
                except zlib.error as e:
                    raise DatasetFormatError(f"{path}: corrupt compressed element: {e}") from None
                stack.append((inner, 0, len(inner)))
            pos += size


def load_mat(path: str) -> dict:
    """A MATLAB .mat file as scipy reads it (structs as record arrays, 1-D squeezed).

    A v5 file's element tags are checked first (`check_mat5_tags`)."""
    from scipy.io import loadmat  # scipy is slow to import; only .mat datasets need it

    with open(path, "rb") as f:
        data = f.read()
    if data[124:126] == b"\x00\x01" or data[124:126] == b"\x01\x00":  # v5 (v4 has no header)
        check_mat5_tags(data, path)
    try:
        return loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as e:  # noqa: BLE001 - scipy raises several kinds for bad files
        raise DatasetFormatError(f"{path}: cannot read as a MATLAB file: {e}") from e


def mat_variable(mat: dict, name: str, path: str) -> np.ndarray:
    """Variable `name` of a `load_mat` result as a 1-D array (a 1-entry variable stays 1-D)."""
    if name not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFormatError(f"{path}: no variable {name!r}; found {found}")
    return np.atleast_1d(mat[name])


def mat_field(records: np.ndarray, field: str, path: str) -> np.ndarray:
    """Field `field` of a MATLAB struct array read by `load_mat`, one entry per struct."""
    names = records.dtype.names or ()
    if field not in names:
        raise DatasetFormatError(
            f"{path}: the structs have no field {field!r}; found {list(names)}"
        )
    return records[field]


def mat_ints(values: np.ndarray, path: str, field: str) -> np.ndarray:
    """int64 [N] from a MATLAB column or cell array of scalars; names the first bad entry."""
    out = np.empty(len(values), np.int64)
    for k, v in enumerate(values):
        try:
            out[k] = int(np.asarray(v).item())
        except (TypeError, ValueError, OverflowError):
            raise DatasetFormatError(
                f"{path}: {field!r} entry {k + 1}: {v!r} is not one integer"
            ) from None
    return out


def mat_strings(values: np.ndarray, path: str, field: str) -> list[str]:
    """The strings of a MATLAB cell array of char arrays; names the first bad entry."""
    out = []
    for k, v in enumerate(values):
        v = np.asarray(v)
        if v.size != 1 or not isinstance(v.item(), str) or not v.item():
            raise DatasetFormatError(f"{path}: {field!r} entry {k + 1}: {v!r} is not one string")
        out.append(v.item())
    return out


def dense_ids(
    values: np.ndarray, path: str, expected: int | None = None, unique: bool = False
) -> np.ndarray:
    """1-based ids -> 0-based int32, checked to lie in [1, expected] when given and, with
    `unique`, to list no id twice (a split's image listed twice is read twice).

    `path` names the source (e.g. "setid.mat, variable 'valid'"); the error names the
    first offending entry (1-based position in `values`).
    """
    values = np.asarray(values)
    integral = values.dtype.kind in "iu" or (
        values.dtype.kind == "f" and np.isfinite(values).all() and (values % 1 == 0).all()
    )  # MATLAB saves ids as doubles as often as as integers
    if values.ndim != 1 or not integral:
        raise DatasetFormatError(
            f"{path}: expected a list of integer ids, got {values.dtype} {values.shape}"
        )
    limit = expected if expected is not None else np.iinfo(np.int32).max
    bad = np.flatnonzero((values < 1) | (values > limit))
    if bad.size:
        k = int(bad[0])
        raise DatasetFormatError(
            f"{path}: entry {k + 1}: id {int(values[k])} is outside "
            f"1..{expected if expected is not None else 'N'}"
        )
    if unique:
        _, first, counts = np.unique(values, return_index=True, return_counts=True)
        if (counts > 1).any():
            k = int(first[np.argmax(counts > 1)])
            again = k + 1 + int(np.flatnonzero(values[k + 1 :] == values[k])[0])
            raise DatasetFormatError(
                f"{path}: entries {k + 1} and {again + 1} both list id {int(values[k])}"
            )
    return (values.astype(np.int64) - 1).astype(np.int32)


def require_listed_files(
    base: str, relpaths: Sequence[str], *, index: str, allow_missing: bool = False
) -> list[str]:
    """Raises DatasetLayoutError unless every file `base/relpath` listed in `index` exists;
    with `allow_missing`, returns the missing ones instead (a warning counts them).

    One directory listing per folder (set membership, not a stat per file), so checking
    the 8,144 images of a split up front costs milliseconds. The error says how many are
    missing and names the first few: a partly extracted archive is caught before training.
    """
    listings: dict[str, set[str]] = {}
    missing = []
    for rel in relpaths:
        folder, name = os.path.split(rel)
        if folder not in listings:
            path = os.path.join(base, folder)
            listings[folder] = {e.name for e in os.scandir(path)} if os.path.isdir(path) else set()
        if name not in listings[folder]:
            missing.append(rel)
    if missing and not allow_missing:
        raise DatasetLayoutError(
            f"{len(missing)} of the {len(relpaths)} image files listed in {index} are missing "
            f"under {base!r}, e.g. {', '.join(missing[:5])} (config.data.allow_missing=True "
            "reads the ones present)"
        )
    if missing:
        print(
            f"warning: {len(missing)} of the {len(relpaths)} image files listed in {index} are "
            f"missing under {base!r} and left out (config.data.allow_missing), e.g. "
            f"{', '.join(missing[:3])}",
            file=sys.stderr,
        )
    return missing


def corner_boxes(corners: np.ndarray, path: str) -> np.ndarray:
    """1-based inclusive pixel corners -> boxes in the records' geometry.

    corners: [N, 4] (x1, y1, x2, y2), the first and last pixel column/row of the object
    counted from (1, 1) (MATLAB-style, as in the Stanford Cars devkit and FGVC-Aircraft's
    images_box.txt). Returns float32 [N, 4] (left, top, width, height) in 0-based
    continuous coordinates: (x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1).
    """
    c = np.asarray(corners, np.float64).reshape(-1, 4)
    bad = np.flatnonzero((c[:, 2] < c[:, 0]) | (c[:, 3] < c[:, 1]))
    if bad.size:
        k = int(bad[0])
        raise DatasetFormatError(
            f"{path}: entry {k + 1}: box corners (x1, y1, x2, y2) = {c[k].tolist()} have "
            "x2 < x1 or y2 < y1"
        )
    return np.stack(
        [c[:, 0] - 1, c[:, 1] - 1, c[:, 2] - c[:, 0] + 1, c[:, 3] - c[:, 1] + 1], 1
    ).astype(np.float32)


# The globals a pickle of plain numpy arrays (CIFAR's and Imagenet32's batches) refers to:
# numpy's (1 and 2 module names) and `_codecs.encode`, which protocol 2 uses for bytes.
# Anything else is refused before it is imported or called: unpickling a data file must
# not run code from it.
ARRAY_PICKLE_GLOBALS = frozenset(
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{prefix}.multiarray", "_reconstruct"),
        (f"{prefix}.multiarray", "scalar"),
        (f"{prefix}.numeric", "_frombuffer"),
    )
) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


# The dtypes a data pickle may build: numbers, booleans, fixed-size bytes and strings. Not
# objects (their raw bytes would be read as pointers) nor structured or void types.
_PLAIN_DTYPE_KINDS = "biufcSU"
_DTYPE_STATE_FIELDS = (
    "version", "byteorder", "subarray", "names", "fields", "elsize", "alignment", "flags"
)  # fmt: skip


def _plain_dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """A new `numpy.dtype(name)` for a pickle (`align` ignored: a plain dtype has no
    fields to align), refused unless `name` is a plain dtype's name."""
    if not isinstance(name, str):
        raise pickle.UnpicklingError(f"refusing numpy.dtype({name!r}): not a dtype name")
    try:
        dtype = np.dtype(name, copy=True)  # as numpy's own pickles: BUILD sets a copy's state
    except TypeError as e:
        raise pickle.UnpicklingError(f"refusing numpy.dtype({name!r}): {e}") from None
    if dtype.kind not in _PLAIN_DTYPE_KINDS:
        raise pickle.UnpicklingError(
            f"refusing numpy.dtype({name!r}): a data pickle may hold only numbers, booleans, "
            "bytes and strings"
        )
    return dtype


def _check_dtype_state(dtype: np.dtype, state: Any) -> None:
    """The pickled state of a plain dtype must be the one numpy writes for it (any byte
    order): another field offset, item size or flag set makes numpy read out of bounds."""
    expected = dtype.__reduce__()[2]
    if not isinstance(state, tuple) or len(state) != len(expected):
        raise pickle.UnpicklingError(f"refusing the state {state!r} of numpy.dtype({dtype.str!r})")
    for field, got, want in zip(_DTYPE_STATE_FIELDS, state, expected, strict=True):
        same = got in ("<", ">", "=", "|") if field == "byteorder" else got == want
        if not same or type(got) is not type(want):
            raise pickle.UnpicklingError(
                f"refusing numpy.dtype({dtype.str!r}) with {field}={got!r} (a plain dtype has "
                f"{want!r})"
            )


class ArrayUnpickler(pickle._Unpickler):
    """Unpickles dicts / lists / strings / numbers and numpy arrays of plain dtypes only.

    The pure-Python unpickler, so that BUILD can be checked: a dtype's pickled state sets
    its fields, item size and flags, and the C unpickler would hand any of them to numpy
    (a field offset past the item size read heap memory into the labels, or crashed)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: a data pickle may hold only numpy arrays, "
                "lists, dicts, strings and numbers"
            )
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        return super().find_class(module, name)

    def load_build(self) -> None:
        if len(self.stack) >= 2 and isinstance(self.stack[-2], np.dtype):
            _check_dtype_state(self.stack[-2], self.stack[-1])
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def load_array_pickle(path: str, encoding: str) -> Any:
    """A pickled data batch read with `ArrayUnpickler` (`encoding` as `pickle.load`'s)."""
    with open(path, "rb") as f:
        return ArrayUnpickler(f, encoding=encoding).load()
