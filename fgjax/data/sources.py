"""Random-access data sources (grain `RandomAccessDataSource` protocol).

Every source has `__len__`, `__getitem__(i) -> dict`, and the attributes
`num_classes`, `class_names`, `num_coarse_classes` (0 when there is no coarse level),
`labels` and `coarse_labels` (int32 `[N]`, so evaluation code can read the labels
without decoding a single image).

A record is a dict with
  'label': int, 'coarse_label': int (-1 when absent), 'index': int (position in the source),
either 'path': str (an image file, decoded later in the pipeline worker) or
'image': uint8 `[H, W, 3]`, and optionally 'box': (left, top, width, height) in original
pixels (crops are taken inside it) and 'trim_bottom': int (rows cut off the bottom).
Sources of 'path' records also have `root`, the folder their paths hang from: a training
view with its own root (`ViewSpec.root`) reads the same relative path under that root,
and `ParallelRootSource` reads a whole source there (evaluation under
`config.data.eval_root`).

Here: `LabeledSource` (a split as arrays; every dataset module of `fgjax.data.datasets`
builds one), `ImageFolderSource` (root/<split>/<class>/*.jpg, labels = sorted class
folders, the layout LCR reads with torchvision's ImageFolder) and `CsvManifestSource`
(a CSV with columns path,label[,coarse_label][,split]).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from fgjax.data.decode import parallel_path
from fgjax.data.layout import DatasetLayoutError, describe_folder, read_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def name_words(class_name: str) -> list[str]:
    """'001.Black_footed_Albatross' -> ['Black', 'footed', 'Albatross'] (drops a NNN. prefix)."""
    head, dot, tail = class_name.partition(".")
    name = tail if dot and head.isdigit() else class_name
    return name.replace("_", " ").split() or [class_name]


def last_word(class_name: str) -> str:
    """CUB species -> family: '001.Black_footed_Albatross' -> 'Albatross'."""
    return name_words(class_name)[-1]


def first_word(class_name: str) -> str:
    """Cars model -> make: 'AM General Hummer SUV 2000' -> 'AM'."""
    return name_words(class_name)[0]


# Named class-name -> coarse-name rules usable from a config (`config.data.coarse_of`).
COARSE_RULES: dict[str, Callable[[str], str]] = {"last_word": last_word, "first_word": first_word}


def _check_index(i: int, n: int, name: str) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"{name}: index {i} out of range for {n} records")
    return i


class CoarseLevel(NamedTuple):
    """One coarse level of a dataset: its names and the coarse id of every fine class."""

    names: list[str]
    of_class: np.ndarray  # int32 [num_classes]


def coarse_from_names(class_names: Sequence[str], coarse_of: Callable[[str], str]) -> CoarseLevel:
    """The level grouping classes by `coarse_of(class name)`, coarse names sorted."""
    per_class = [str(coarse_of(c)) for c in class_names]
    names = sorted(set(per_class))
    lookup = {c: k for k, c in enumerate(names)}
    return CoarseLevel(names, np.array([lookup[c] for c in per_class], np.int32))


class LabeledSource:
    """A dataset split held as arrays: image files (or in-memory images) and labels.

    Args:
      dataset: the `config.data.kind` (for messages and `repr`).
      split: the split name.
      labels: int32 [N] fine labels, indices into `class_names`.
      class_names: names of all fine classes of the dataset (not only this split's).
      root: the folder relative `paths` hang from (kept as `root`, see the module doc).
      paths: N file paths relative to `root` (or absolute), or None with `images`.
      images: uint8 [N, H, W, 3] (a memory map is fine), or None with `paths`.
      coarse_levels: name -> CoarseLevel, in the order the dataset documents; the first
        is the default.
      coarse: the level to use ('' = the first; 'none' = no coarse labels).
      boxes: float32 [N, 4] (left, top, width, height) in original pixels: every view and
        evaluation crop is taken inside the box (e.g. CUB's bird bounding boxes).
      trim_bottom: pixels cut off the bottom of every image (FGVC-Aircraft's banner).
      keep: bool [N_all]: `paths`, `labels` and `boxes` are given for every row of the
        dataset and this split is the rows where `keep` is True.
    """

    def __init__(
        self,
        *,
        dataset: str,
        split: str,
        labels: np.ndarray,
        class_names: Sequence[str],
        root: str | None = None,
        paths: Sequence[str] | None = None,
        images: np.ndarray | None = None,
        coarse_levels: dict[str, CoarseLevel] | None = None,
        coarse: str = "",
        boxes: np.ndarray | None = None,
        trim_bottom: int = 0,
        keep: np.ndarray | None = None,
    ):
        if (paths is None) == (images is None):
            raise ValueError(f"{dataset}/{split}: give exactly one of paths and images")
        if keep is not None:  # paths, labels and boxes of every row; this split's rows
            if images is not None:
                raise ValueError(f"{dataset}/{split}: select images before (a copy otherwise)")
            keep = np.asarray(keep, bool)
            paths = [p for p, k in zip(paths, keep, strict=True) if k]
            labels = np.asarray(labels)[keep]
            boxes = None if boxes is None else np.asarray(boxes)[keep]
        self.dataset, self.split = dataset, split
        self.root = os.fspath(root) if root is not None else None
        self.labels = np.asarray(labels, np.int32)
        n = len(self.labels)
        if paths is not None:
            self.paths = [p if self.root is None else os.path.join(self.root, p) for p in paths]
            if len(self.paths) != n:
                raise ValueError(f"{dataset}/{split}: {len(self.paths)} paths for {n} labels")
        self.images = images
        if images is not None and len(images) != n:
            raise ValueError(f"{dataset}/{split}: {len(images)} images for {n} labels")
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if n and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.num_classes:
            raise ValueError(f"{dataset}/{split}: labels outside [0, {self.num_classes})")
        self.coarse_levels = dict(coarse_levels or {})
        self.coarse_level = select_coarse_level(dataset, self.coarse_levels, coarse)
        if self.coarse_level:
            level = self.coarse_levels[self.coarse_level]
            self.coarse_names = list(level.names)
            self.coarse_labels = np.asarray(level.of_class, np.int32)[self.labels]
        else:
            self.coarse_names = []
            self.coarse_labels = np.full(n, -1, np.int32)
        self.num_coarse_classes = len(self.coarse_names)
        self.boxes = None if boxes is None else np.asarray(boxes, np.float32)
        self.trim_bottom = int(trim_bottom)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, len(self), type(self).__name__)
        record = {
            "label": int(self.labels[i]),
            "coarse_label": int(self.coarse_labels[i]),
            "index": i,
        }
        if self.images is not None:
            record["image"] = np.asarray(self.images[i])
        else:
            record["path"] = self.paths[i]
        if self.boxes is not None:
            record["box"] = tuple(float(v) for v in self.boxes[i])
        if self.trim_bottom:
            record["trim_bottom"] = self.trim_bottom
        return record

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dataset={self.dataset!r}, split={self.split!r}, "
            f"root={self.root!r}, num_records={len(self)}, num_classes={self.num_classes}, "
            f"coarse={self.coarse_level!r})"
        )


class ParallelRootSource:
    """`source` read from a parallel root: every record's file is the one at the same path
    relative to `source.root` under `root` (e.g. the DDT crops `fgjax ddt`
    writes), and its 'box' / 'trim_bottom' are dropped (that file is the region already).
    Labels, class names and every other attribute are the source's. `owner` names the
    setting in errors; the first record is mapped here, so a wrong root fails at once."""

    def __init__(self, source, root: str, owner: str):
        self.source, self.root, self.owner = source, os.fspath(root), owner
        if len(source):
            self[0]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        record = dict(self.source[i])
        record["path"] = parallel_path(record, self.root, self.source.root, self.owner)
        record.pop("box", None)
        record.pop("trim_bottom", None)
        return record

    @property
    def paths(self) -> list[str]:
        """Every record's file under `root` (not the source's own `paths`)."""
        return [self[i]["path"] for i in range(len(self))]

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "source":  # unpickling (grain workers) probes these
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"ParallelRootSource({self.source!r}, root={self.root!r})"


def summarize(source, name: str) -> str:
    """One line on any source: 'cub/train: 5994 images, 200 classes, coarse family (37)'."""
    level = getattr(source, "coarse_level", "level")
    coarse = f", coarse {level} ({source.num_coarse_classes})" if source.num_coarse_classes else ""
    present = len(np.unique(source.labels))
    return f"{name}: {len(source)} images, {present} classes{coarse}"


def select_coarse_level(dataset: str, levels: dict[str, CoarseLevel], coarse: str) -> str:
    """The level name `config.data.coarse` selects ('' when the dataset has none)."""
    if coarse == "none":
        return ""
    if not coarse:
        return next(iter(levels), "")
    if coarse not in levels:
        raise ValueError(
            f"config.data.coarse={coarse!r}: dataset {dataset!r} has coarse levels "
            f"{list(levels) or 'none'} (or 'none' / '' for its default)"
        )
    return coarse


def _subfolders(folder: str, paths: bool = False) -> list[str]:
    """The names (or paths) of `folder`'s non-hidden sub-folders."""
    found = [e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    return [e.path if paths else e.name for e in found]


class ImageFolderSource(LabeledSource):
    """`root/<split>/<class>/*.{jpg,jpeg,png}`; labels index the sorted union of the class
    folder names of every split folder under `root`, so a class has one label in every
    split (per-split indices gave train {a,b,c,d} and test {b,c,d,e} a kNN top-1 of 0). A
    class without images in this split keeps its label and has no records here.

    Args:
      root: dataset root holding one folder per split (e.g. CUB200/ with train/ and test/);
        kept as the `root` attribute (paths are root/<split>/<class>/<file>).
      split: the split folder name.
      coarse: '' (no coarse labels) or a rule of COARSE_RULES applied to the class folder
        names (e.g. 'last_word': CUB species -> bird family).
    """

    def __init__(self, root: str, split: str, coarse: str = ""):
        root = os.fspath(root)
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise DatasetLayoutError(
                f"config.data.kind='image_folder' reads <root>/<split>/<class>/*.jpg; split "
                f"folder {folder!r} does not exist. Found at {root!r}: {describe_folder(root)}"
            )
        here = _subfolders(folder)
        if not here:
            raise DatasetLayoutError(
                f"image_folder: split folder {folder!r} has no class sub-folders; found "
                f"{describe_folder(folder)}"
            )
        class_names = sorted(set().union(*(_subfolders(s) for s in _subfolders(root, True))))
        paths, labels = [], []
        for label, name in enumerate(class_names):
            if name not in here:
                continue
            class_dir = os.path.join(folder, name)
            files = sorted(
                e.name
                for e in os.scandir(class_dir)
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not files:
                raise DatasetLayoutError(
                    f"image_folder: class folder {class_dir!r} has no "
                    f"{'/'.join(IMAGE_EXTENSIONS)} images; found {describe_folder(class_dir)}"
                )
            paths.extend(os.path.join(split, name, f) for f in files)
            labels.extend([label] * len(files))
        if coarse and coarse != "none" and coarse not in COARSE_RULES:
            raise ValueError(
                f"config.data.coarse={coarse!r}: image_folder coarse levels are the rules "
                f"{sorted(COARSE_RULES)} applied to class folder names, or '' for none"
            )
        levels = (
            {coarse: coarse_from_names(class_names, COARSE_RULES[coarse])}
            if coarse in (COARSE_RULES)
            else {}
        )
        super().__init__(
            dataset="image_folder",
            split=split,
            root=root,
            paths=paths,
            labels=np.asarray(labels, np.int32),
            class_names=class_names,
            coarse_levels=levels,
        )


def _parse_labels(
    values: list[str], rows: list[int], csv_path: str, column: str
) -> tuple[np.ndarray, list[str]]:
    """Integer labels kept as they are; all-name labels -> index into the sorted names.

    A column mixing integers and names is an error naming the first odd row: '1O' typed
    for '10' must not become an extra class.
    """
    for v, r in zip(values, rows, strict=True):
        if v == "":
            raise ValueError(f"{csv_path}: row {r}, column {column!r}: empty value")
    is_int = [INT_LABEL.fullmatch(v) is not None for v in values]
    if not any(is_int):
        names = sorted(set(values))
        lookup = {n: k for k, n in enumerate(names)}
        return np.array([lookup[v] for v in values], np.int32), names
    if not all(is_int):
        r, v = next((r, v) for r, v, ok in zip(rows, values, is_int, strict=True) if not ok)
        first = next(r for r, ok in zip(rows, is_int, strict=True) if ok)
        raise ValueError(
            f"{csv_path}: row {r}, column {column!r}: {v!r} is not an integer, but the column "
            f"holds integer labels (row {first}); use integers throughout or names throughout"
        )
    ints = [int(v) for v in values]
    for v, r in zip(ints, rows, strict=True):
        if not 0 <= v < MAX_INT_LABEL:  # labels are class ids: max + 1 classes get names
            raise ValueError(
                f"{csv_path}: row {r}, column {column!r}: integer label {v} is outside "
                f"0..{MAX_INT_LABEL - 1}"
            )
    return np.array(ints, np.int32), [str(k) for k in range(max(ints) + 1)]


CSV_COLUMNS = ("path", "label", "coarse_label", "split")
INT_LABEL = re.compile(r"-?[0-9]+")  # not str.isdigit: '²' and '--5' are not labels
MAX_INT_LABEL = 1_000_000  # integer labels make max + 1 classes; a typo must not make 10^12


class CsvManifestSource(LabeledSource):
    """Images listed in a CSV manifest.

    The CSV has a header; required columns `path,label`; optional `coarse_label`, `split`
    (any other column is an error naming it). Relative paths resolve against `root`
    (default: the CSV's folder), kept as the `root` attribute. Labels may be integers
    (used as given; num_classes = max + 1) or names (index into the sorted distinct
    names), not a mix. Label maps are built over ALL rows before the split filter, so the
    splits of one manifest agree on label ids (a held-out-class test split keeps the
    global ids, e.g. 100..199 for CUB retrieval). If `split` is given and the CSV has a
    `split` column, only matching rows are kept; without that column every row is kept.
    `coarse`: '' or 'coarse_label' (the column's level, when present) or 'none'.

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
        coarse: str = "",
    ):
        self.csv_path = os.fspath(csv_path)
        if not os.path.isfile(self.csv_path):
            raise FileNotFoundError(f"CsvManifestSource: no such CSV file {self.csv_path!r}")
        root = os.fspath(root) if root else os.path.dirname(os.path.abspath(self.csv_path))
        with io.StringIO(read_text(self.csv_path), newline="") as f:
            reader = csv.DictReader(f)
            try:
                columns = [c.strip() for c in (reader.fieldnames or [])]
                for required in ("path", "label"):
                    if required not in columns:
                        raise ValueError(
                            f"{self.csv_path}: row 1 (header): missing required column "
                            f"{required!r}; found columns {columns}"
                        )
                unknown = [c for c in columns if c not in CSV_COLUMNS]
                if unknown:
                    raise ValueError(
                        f"{self.csv_path}: row 1 (header): unknown column(s) {unknown}; the "
                        f"columns are {list(CSV_COLUMNS)} (path and label required)"
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
            except csv.Error as e:  # e.g. a field over csv.field_size_limit(): names no file
                raise ValueError(f"{self.csv_path}: {e} (after line {reader.line_num})") from None
        if not rows:
            raise ValueError(f"{self.csv_path}: no data rows")
        row_numbers = [r for r, _ in rows]
        labels, class_names = _parse_labels(
            [d["label"] for _, d in rows], row_numbers, self.csv_path, "label"
        )
        levels = {}
        if "coarse_label" in columns:
            coarse_ids, coarse_names = _parse_labels(
                [d["coarse_label"] for _, d in rows], row_numbers, self.csv_path, "coarse_label"
            )
            levels["coarse_label"] = coarse_of_classes(
                labels,
                coarse_ids,
                coarse_names,
                lambda k: f"{self.csv_path}: row {row_numbers[k]}, column 'coarse_label'",
            )
        keep = np.ones(len(rows), bool)
        if split is not None and "split" in columns:
            splits = [d["split"] for _, d in rows]
            keep = np.array([s == split for s in splits])
            if not keep.any():
                raise ValueError(
                    f"{self.csv_path}: column 'split': no row has split {split!r}; "
                    f"values present: {sorted(set(splits))}"
                )
        _refuse_repeated_paths(rows, keep, self.csv_path)
        paths = []
        for (r, d), k in zip(rows, keep, strict=True):
            if not k:
                continue
            p = d["path"]
            if p == "":
                raise ValueError(f"{self.csv_path}: row {r}, column 'path': empty value")
            if check_files and not os.path.isfile(os.path.join(root, p)):
                raise FileNotFoundError(
                    f"{self.csv_path}: row {r}, column 'path': image file "
                    f"{os.path.join(root, p)!r} does not exist"
                )
            paths.append(p)
        super().__init__(
            dataset="csv",
            split=split or "all",
            root=root,
            paths=paths,
            labels=labels[keep],
            class_names=class_names,
            coarse_levels=levels,
            coarse=coarse,
        )


def _refuse_repeated_paths(rows: list[tuple[int, dict]], keep: np.ndarray, csv_path: str):
    """A path with two labels anywhere in the manifest, or listed twice in the kept split,
    is an error naming both rows (it would be trained or evaluated twice, or both ways)."""
    first: dict[str, tuple[int, str, bool]] = {}
    for (r, d), kept in zip(rows, keep, strict=True):
        path, label = os.path.normpath(d["path"]), d["label"]
        if path not in first:
            first[path] = (r, label, kept)
            continue
        r0, label0, kept0 = first[path]
        if label0 != label:
            raise ValueError(
                f"{csv_path}: rows {r0} and {r}: {d['path']!r} has two labels "
                f"({label0!r} and {label!r})"
            )
        if kept and kept0:
            raise ValueError(f"{csv_path}: rows {r0} and {r}: {d['path']!r} is listed twice")


def coarse_of_classes(
    labels: np.ndarray,
    coarse: np.ndarray,
    coarse_names: Sequence[str],
    where: Callable[[int], str],
    num_classes: int | None = None,
) -> CoarseLevel:
    """A per-record coarse column as a per-class level; a class with two coarse labels is an
    error citing both records (`where(k)`: 'file: row 7', say, for record k).

    labels, coarse: int [N]; classes without records get coarse id -1.
    """
    labels, coarse = np.asarray(labels), np.asarray(coarse)
    n = num_classes if num_classes is not None else int(labels.max()) + 1
    of_class = np.full(n, -1, np.int32)
    first: dict[int, int] = {}
    for k, (label, c) in enumerate(zip(labels.tolist(), coarse.tolist(), strict=True)):
        if of_class[label] == -1:
            of_class[label], first[label] = c, k
        elif of_class[label] != c:
            raise ValueError(
                f"{where(k)}: class {label} has coarse label {coarse_names[c]!r} here but "
                f"{coarse_names[of_class[label]]!r} at {where(first[label])}"
            )
    return CoarseLevel(list(coarse_names), of_class)
