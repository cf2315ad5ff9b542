"""Stanford Dogs (120 breeds) as distributed: `Images/<wnid>-<Breed>/*.jpg` and the lists
`train_list.mat` / `test_list.mat` (from lists.tar; at the root or in `lists/`), each with
'file_list' (paths under Images/, e.g. 'n02085620-Chihuahua/n02085620_5927.jpg') and
'labels' (1-based).

Splits: 'train' / 'test' (12,000 / 8,580; 100 training images per breed). Labels are the
lists' labels - 1; class names are the breed part of the folder names ('Chihuahua',
'Japanese_spaniel', ...). No coarse level. `config.data.crop_to_box` reads the boxes of
`Annotation/<wnid>-<Breed>/<image stem>` (PASCAL VOC XML, 1-based inclusive corners): the
box of an image with several dogs is the one enclosing them all. This reads one small
file per image when the split is built (about a second for the train split).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    corner_boxes,
    dense_ids,
    load_mat,
    mat_ints,
    mat_strings,
    mat_variable,
    require_listed_files,
    require_paths,
)
from fgjax.data.sources import LabeledSource

LISTS = ("train_list.mat", "test_list.mat")
LAYOUT = (
    "the Stanford Dogs files (Images/<wnid>-<Breed>/*.jpg; train_list.mat and test_list.mat "
    "at the root or in lists/)"
)
NUM_CLASSES = 120


def read_list(path: str) -> tuple[list[str], np.ndarray]:
    """A *_list.mat: its file_list (paths under Images/) and 0-based labels int32 [N]."""
    mat = load_mat(path)
    files = mat_strings(mat_variable(mat, "file_list", path), path, "file_list")
    labels = mat_ints(mat_variable(mat, "labels", path), path, "labels")
    if len(files) != len(labels):
        raise DatasetFormatError(f"{path}: {len(files)} file_list entries but {len(labels)} labels")
    return files, dense_ids(labels, path, NUM_CLASSES)


def class_names_of(lists: dict[str, tuple[list[str], np.ndarray]]) -> list[str]:
    """Breed names by label from the folders of the listed files ({path: read_list(path)});
    a label whose files lie in two folders is an error."""
    folder_of: dict[int, tuple[str, str]] = {}
    for path, (files, labels) in lists.items():
        for k, (f, y) in enumerate(zip(files, labels.tolist(), strict=True)):
            folder = f.split("/", 1)[0]
            if folder_of.setdefault(y, (folder, path))[0] != folder:
                raise DatasetFormatError(
                    f"{path}: entry {k + 1}: label {y + 1} is folder {folder!r} here but "
                    f"{folder_of[y][0]!r} in {folder_of[y][1]}"
                )
    missing = sorted(set(range(NUM_CLASSES)) - set(folder_of))
    if missing:
        raise DatasetFormatError(
            f"{', '.join(lists)}: no file of label(s) {[m + 1 for m in missing[:5]]}"
        )
    return [folder_of[y][0].split("-", 1)[-1] for y in range(NUM_CLASSES)]


def read_box(path: str) -> np.ndarray:
    """The 1-based [1, 4] (xmin, ymin, xmax, ymax) enclosing every object of a VOC XML file."""
    try:
        boxes = [
            [int(float(b.findtext(t))) for t in ("xmin", "ymin", "xmax", "ymax")]
            for b in ET.parse(path).getroot().iter("bndbox")
        ]
    except (OSError, ET.ParseError, TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: cannot read a VOC bndbox: {e}") from e
    if not boxes:
        raise DatasetFormatError(f"{path}: no <bndbox>")
    b = np.array(boxes)
    return np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)])[None]


@register_dataset("dogs", splits=("train", "test"), layout=LAYOUT)
def dogs(data_config, split: str) -> LabeledSource:
    root = os.fspath(data_config.root)
    lists_dir = next(
        (d for d in ("lists", "") if os.path.isfile(os.path.join(root, d, LISTS[0]))), ""
    )
    require_paths(
        root, ["Images", *(os.path.join(lists_dir, n) for n in LISTS)], kind="dogs", layout=LAYOUT
    )
    lists = {p: read_list(p) for p in (os.path.join(root, lists_dir, n) for n in LISTS)}
    list_path = os.path.join(root, lists_dir, f"{split}_list.mat")
    files, labels = lists[list_path]
    paths = [os.path.join("Images", f) for f in files]
    require_listed_files(root, paths, index=list_path)
    boxes = None
    if data_config.get("crop_to_box", False):
        xml = [os.path.join("Annotation", os.path.splitext(f)[0]) for f in files]
        require_listed_files(root, xml, index=f"{list_path} (its Annotation/ files)")
        boxes = np.concatenate([corner_boxes(read_box(os.path.join(root, p)), p) for p in xml])
    return LabeledSource(
        dataset="dogs",
        split=split,
        root=root,
        paths=paths,
        labels=labels,
        class_names=class_names_of(lists),
        boxes=boxes,
    )
