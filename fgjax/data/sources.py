"""Random-access data sources (grain `RandomAccessDataSource` protocol).

Every source has `__len__`, `__getitem__(i) -> dict`, and the attributes
`num_classes`, `class_names`, `num_coarse_classes` (0 when there is no coarse level),
`labels` and `coarse_labels` (int32 `[N]`, so evaluation code can read the labels
without decoding a single image).

A record is a dict with
  'label': int, 'coarse_label': int (-1 when absent), 'index': int (position in the source),
and either 'path': str (an image file, decoded later in the pipeline worker) or
'image': uint8 `[H, W, 3]`. Sources of 'path' records also have `root`, the folder their
paths hang from: a training view with its own root (`ViewSpec.root`) reads the same
relative path under that root.

Sources:
  ImageFolderSource  root/<split>/<class>/*.{jpg,jpeg,png}, labels = sorted class folders
                     (the layout LCR reads with torchvision's ImageFolder).
  CsvManifestSource  a CSV with columns path,label[,coarse_label][,split].
  build_source       dispatch on `config.data.kind` ('procedural', 'image_folder', 'csv').
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _words(class_name: str) -> list[str]:
    """'001.Black_footed_Albatross' -> ['Black', 'footed', 'Albatross'] (drops a NNN. prefix)."""
    head, dot, tail = class_name.partition(".")
    name = tail if dot and head.isdigit() else class_name
    return name.replace("_", " ").split() or [class_name]


def last_word(class_name: str) -> str:
    """CUB species -> family: '001.Black_footed_Albatross' -> 'Albatross'."""
    return _words(class_name)[-1]


def first_word(class_name: str) -> str:
    """Cars model -> make: 'AM General Hummer SUV 2000' -> 'AM'."""
    return _words(class_name)[0]


# Named class-name -> coarse-name rules usable from a config (`config.data.coarse_of`).
COARSE_RULES: dict[str, Callable[[str], str]] = {"last_word": last_word, "first_word": first_word}


def _check_index(i: int, n: int, name: str) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"{name}: index {i} out of range for {n} records")
    return i


def _coarse_from_names(
    class_names: Sequence[str], coarse_of: Callable[[str], str] | None
) -> tuple[list[str], np.ndarray]:
    """Coarse names (sorted) and the coarse index of every fine class (-1 without a rule)."""
    if coarse_of is None:
        return [], np.full(len(class_names), -1, np.int32)
    per_class = [str(coarse_of(c)) for c in class_names]
    coarse_names = sorted(set(per_class))
    lookup = {c: k for k, c in enumerate(coarse_names)}
    return coarse_names, np.array([lookup[c] for c in per_class], np.int32)


class _PathSource:
    """Shared record access for sources of (path, label, coarse_label) rows."""

    paths: list[str]
    labels: np.ndarray
    coarse_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, len(self.paths), type(self).__name__)
        return {
            "path": self.paths[i],
            "label": int(self.labels[i]),
            "coarse_label": int(self.coarse_labels[i]),
            "index": i,
        }


class ImageFolderSource(_PathSource):
    """`root/<split>/<class>/*.{jpg,jpeg,png}`; labels are the sorted class folder names.

    Args:
      root: dataset root holding one folder per split (e.g. CUB200/ with train/ and test/);
        kept as the `root` attribute (paths are root/<split>/<class>/<file>).
      split: the split folder name.
      coarse_of: optional map class folder name -> coarse name; coarse labels index the
        sorted coarse names. Without it, 'coarse_label' is -1 and num_coarse_classes 0.
    """

    def __init__(self, root: str, split: str, coarse_of: Callable[[str], str] | None = None):
        self.root = os.fspath(root)
        self.split = split
        folder = os.path.join(self.root, split)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"ImageFolderSource: split folder {folder!r} does not exist "
                f"(expected {self.root}/{split}/<class>/*.jpg)"
            )
        self.class_names = sorted(
            e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
        )
        if not self.class_names:
            raise FileNotFoundError(
                f"ImageFolderSource: split folder {folder!r} has no class sub-folders"
            )
        paths, labels = [], []
        for label, name in enumerate(self.class_names):
            class_dir = os.path.join(folder, name)
            files = sorted(
                e.name
                for e in os.scandir(class_dir)
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not files:
                raise FileNotFoundError(
                    f"ImageFolderSource: class folder {class_dir!r} has no "
                    f"{'/'.join(IMAGE_EXTENSIONS)} images"
                )
            paths.extend(os.path.join(class_dir, f) for f in files)
            labels.extend([label] * len(files))
        self.paths = paths
        self.labels = np.asarray(labels, np.int32)
        self.num_classes = len(self.class_names)
        self.coarse_names, class_to_coarse = _coarse_from_names(self.class_names, coarse_of)
        self.num_coarse_classes = len(self.coarse_names)
        self.coarse_labels = class_to_coarse[self.labels]

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource(root={self.root!r}, split={self.split!r}, "
            f"num_records={len(self)}, num_classes={self.num_classes})"
        )


def _parse_labels(
    values: list[str], rows: list[int], csv_path: str, column: str
) -> tuple[np.ndarray, list[str]]:
    """Integer labels kept as they are; otherwise strings -> index into sorted names."""
    for v, r in zip(values, rows, strict=True):
        if v == "":
            raise ValueError(f"{csv_path}: row {r}, column {column!r}: empty value")
    try:
        ints = [int(v) for v in values]
    except ValueError:
        names = sorted(set(values))
        lookup = {n: k for k, n in enumerate(names)}
        return np.array([lookup[v] for v in values], np.int32), names
    for v, r in zip(ints, rows, strict=True):
        if v < 0:
            raise ValueError(f"{csv_path}: row {r}, column {column!r}: negative label {v}")
    num = max(ints) + 1 if ints else 0
    return np.array(ints, np.int32), [str(k) for k in range(num)]


class CsvManifestSource(_PathSource):
    """Images listed in a CSV manifest.

    The CSV has a header; required columns `path,label`; optional `coarse_label`, `split`.
    Relative paths resolve against `root` (default: the CSV's folder), kept as the `root`
    attribute. Labels may be
    integers (used as given; num_classes = max + 1) or strings (index into the sorted
    distinct names). Label maps are built over ALL rows before the split filter, so the
    splits of one manifest agree on label ids (a held-out-class test split keeps the
    global ids, e.g. 100..199 for CUB retrieval). If `split` is given and the CSV has a
    `split` column, only matching rows are kept; without that column every row is kept.

    Errors name the file, the row number (the header is row 1) and the column. Image
    files are checked for existence up front (`check_files=False` skips it); corrupt
    files are reported when decoded.
    """

    def __init__(
        self,
        csv_path: str,
        split: str | None = None,
        root: str | None = None,
        check_files: bool = True,
    ):
        self.csv_path = os.fspath(csv_path)
        self.split = split
        if not os.path.isfile(self.csv_path):
            raise FileNotFoundError(f"CsvManifestSource: no such CSV file {self.csv_path!r}")
        self.root = os.fspath(root) if root else os.path.dirname(os.path.abspath(self.csv_path))
        with open(self.csv_path, newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            for required in ("path", "label"):
                if required not in columns:
                    raise ValueError(
                        f"{self.csv_path}: row 1 (header): missing required column "
                        f"{required!r}; found columns {columns}"
                    )
            reader.fieldnames = columns
            rows = []
            for r, row in enumerate(reader, start=2):
                if None in row or any(row.get(c) is None for c in columns):
                    raise ValueError(
                        f"{self.csv_path}: row {r}: expected {len(columns)} columns "
                        f"({','.join(columns)})"
                    )
                rows.append((r, {k: v.strip() for k, v in row.items()}))
        if not rows:
            raise ValueError(f"{self.csv_path}: no data rows")
        row_numbers = [r for r, _ in rows]
        labels, self.class_names = _parse_labels(
            [d["label"] for _, d in rows], row_numbers, self.csv_path, "label"
        )
        if "coarse_label" in columns:
            coarse, self.coarse_names = _parse_labels(
                [d["coarse_label"] for _, d in rows], row_numbers, self.csv_path, "coarse_label"
            )
        else:
            coarse, self.coarse_names = np.full(len(rows), -1, np.int32), []
        keep = np.ones(len(rows), bool)
        if split is not None and "split" in columns:
            splits = [d["split"] for _, d in rows]
            keep = np.array([s == split for s in splits])
            if not keep.any():
                raise ValueError(
                    f"{self.csv_path}: column 'split': no row has split {split!r}; "
                    f"values present: {sorted(set(splits))}"
                )
        paths = []
        for (r, d), k in zip(rows, keep, strict=True):
            if not k:
                continue
            p = d["path"]
            if p == "":
                raise ValueError(f"{self.csv_path}: row {r}, column 'path': empty value")
            p = os.path.join(self.root, p)
            if check_files and not os.path.isfile(p):
                raise FileNotFoundError(
                    f"{self.csv_path}: row {r}, column 'path': image file {p!r} does not exist"
                )
            paths.append(p)
        self.paths = paths
        self.labels = labels[keep]
        self.coarse_labels = coarse[keep]
        self.num_classes = len(self.class_names)
        self.num_coarse_classes = len(self.coarse_names)

    def __repr__(self) -> str:
        return (
            f"CsvManifestSource(csv_path={self.csv_path!r}, split={self.split!r}, "
            f"num_records={len(self)}, num_classes={self.num_classes})"
        )


def build_source(data_config, split: str):
    """Builds the source of `split` from `config.data`.

    Fields: `kind` in {'procedural', 'image_folder', 'csv'}; `root` (the folder root, or
    the CSV path); `csv_root` ('' = the CSV's folder); `procedural` (the keyword
    arguments of `ProceduralFineGrained`); optional `coarse_of` (image_folder only: ''
    or a rule name in COARSE_RULES, e.g. 'last_word' for CUB species -> bird family).
    """
    kind = data_config.kind
    if kind == "procedural":
        from fgjax.data.procedural import ProceduralFineGrained

        kwargs = data_config.procedural
        kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
        return ProceduralFineGrained(split=split, **kwargs)
    if kind == "image_folder":
        rule = data_config.get("coarse_of", "") or ""
        if rule and rule not in COARSE_RULES:
            raise ValueError(
                f"config.data.coarse_of={rule!r} is not one of {sorted(COARSE_RULES)} or ''"
            )
        return ImageFolderSource(
            data_config.root, split, coarse_of=COARSE_RULES[rule] if rule else None
        )
    if kind == "csv":
        csv_root = data_config.get("csv_root", "") or None
        return CsvManifestSource(data_config.root, split=split, root=csv_root)
    raise ValueError(f"config.data.kind={kind!r} is not one of 'procedural', 'image_folder', 'csv'")
