"""Stanford Cars (196 car models) as distributed, in either of two layouts:

- the official devkit: `devkit/cars_meta.mat` (class_names), `devkit/cars_train_annos.mat`,
  images in `cars_train/` and `cars_test/`, and for the test images the labelled
  annotations `cars_test_annos_withlabels.mat` (released separately; read from `devkit/` or
  the root; the devkit's own `cars_test_annos.mat` has no classes). torchvision's
  `stanford_cars/` folder is this layout.
- image folders `train/<class>/*.jpg` and `test/<class>/*.jpg` (as in several method repos):
  labels are the sorted folder names, as kind 'image_folder' reads them.

Splits: 'train' / 'test' (8,144 / 8,041) and the retrieval protocol 'retrieval_train' /
'retrieval_test': classes 1-98 against 99-196, every image of a class (train and test) on
its side. Labels are devkit positions (class - 1). Coarse levels: 'type', the 8 body types
MaskCon and BuCSFR train with (the default; `BODY_TYPES`), and 'make', the 49
manufacturers (`make_of`). The folder layout has no devkit order, so only 'make'.
`config.data.crop_to_box` crops to the devkit boxes, which are 1-based inclusive pixel
corners (x1, y1, x2, y2; the smallest x1 in the train annotations is 1), converted by
`layout.corner_boxes`.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    DatasetLayoutError,
    corner_boxes,
    dense_ids,
    describe_folder,
    load_mat,
    mat_field,
    mat_ints,
    mat_strings,
    mat_variable,
    require_listed_files,
    require_paths,
)
from fgjax.data.sources import CoarseLevel, ImageFolderSource, LabeledSource, coarse_from_names

META = os.path.join("devkit", "cars_meta.mat")
TRAIN_ANNOS = os.path.join("devkit", "cars_train_annos.mat")
TEST_ANNOS = "cars_test_annos_withlabels.mat"
IMAGE_FOLDERS = {"train": "cars_train", "test": "cars_test"}
LAYOUT = (
    "the Stanford Cars devkit (devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
    f"cars_train/; for test images {TEST_ANNOS} and cars_test/) or image folders "
    "train/<class>/*.jpg and test/<class>/*.jpg"
)
SPLITS = ("train", "test", "retrieval_train", "retrieval_test")
COARSE_LEVELS = ("type", "make")
NUM_CLASSES = 196

# MaskCon's / BuCSFR's body type of every devkit class (0-based), from their cars196.py.
# fmt: off
BODY_TYPES: dict[str, tuple[int, ...]] = {
    "Cab": (52, 53, 64, 68, 69, 73, 74, 85, 86, 89, 90, 105, 110, 112, 113, 121, 123, 124),
    "Sedan": (
        1, 2, 3, 4, 15, 16, 19, 22, 23, 25, 28, 34, 39, 40, 43, 46, 48, 50, 60, 62, 66, 72,
        78, 95, 96, 104, 114, 116, 128, 133, 134, 135, 136, 137, 139, 155, 161, 163, 164,
        166, 172, 175, 176, 180, 181, 183, 184, 186, 187, 193,
    ),
    "SUV": (
        0, 31, 32, 36, 47, 49, 51, 57, 59, 61, 67, 75, 88, 93, 94, 108, 109, 117, 119, 120,
        130, 131, 132, 141, 142, 144, 145, 146, 147, 148, 153, 154, 158, 185, 188, 194,
    ),
    "Convertible": (
        7, 9, 11, 20, 26, 30, 35, 37, 38, 44, 54, 55, 56, 58, 76, 79, 80, 99, 101, 102, 106,
        122, 143, 151, 156, 157, 160, 174, 178, 195,
    ),
    "Coupe": (
        5, 8, 10, 12, 13, 14, 21, 24, 27, 33, 41, 42, 45, 65, 71, 92, 100, 103, 111, 127,
        140, 149, 150, 152, 159, 162, 170, 171, 179,
    ),
    "Hatchback": (6, 18, 97, 98, 129, 138, 167, 169, 177, 182, 189, 190, 191, 192),
    "Wagon": (17, 29, 81, 82, 83, 91),
    "Van": (63, 70, 77, 84, 87, 107, 115, 118, 125, 126, 165, 168, 173),
}
# fmt: on

# Makes of more than one word in cars_meta.mat (Mercedes-Benz, Rolls-Royce are one word).
MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")


def make_of(class_name: str) -> str:
    """'AM General Hummer SUV 2000' -> 'AM General'; 'Acura RL Sedan 2012' -> 'Acura'."""
    name = class_name.replace("_", " ")  # folder names may use underscores
    for make in MULTI_WORD_MAKES:
        if name.startswith(make + " "):
            return make
    return name.split()[0]


def body_type_level() -> CoarseLevel:
    """BODY_TYPES as a coarse level (names in MaskCon's coarse-id order)."""
    of_class = np.full(NUM_CLASSES, -1, np.int32)
    for k, members in enumerate(BODY_TYPES.values()):
        of_class[list(members)] = k
    return CoarseLevel(list(BODY_TYPES), of_class)


class Annotations(NamedTuple):
    """One devkit annotation file: image file names, 0-based labels int32 [N] and boxes
    float32 [N, 4] (left, top, width, height)."""

    fnames: list[str]
    labels: np.ndarray
    boxes: np.ndarray


class Devkit(NamedTuple):
    """The parsed devkit; `test` is None when no labelled test annotations are present."""

    class_names: list[str]
    train: Annotations
    test: Annotations | None


def read_annotations(path: str, num_classes: int) -> Annotations:
    """A cars_*_annos*.mat file: struct array 'annotations' with bbox_x1, bbox_y1,
    bbox_x2, bbox_y2, class (1-based) and fname."""
    annos = mat_variable(load_mat(path), "annotations", path)
    if "class" not in (annos.dtype.names or ()):
        raise DatasetFormatError(
            f"{path}: the annotations have no 'class' field (found {list(annos.dtype.names or ())}"
            f"), so they give no labels; the test images need the labelled {TEST_ANNOS}"
        )
    corners = np.stack(
        [
            mat_ints(mat_field(annos, f, path), path, f)
            for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
        ],
        1,
    )
    labels = dense_ids(mat_ints(mat_field(annos, "class", path), path, "class"), path, num_classes)
    fnames = mat_strings(mat_field(annos, "fname", path), path, "fname")
    return Annotations(fnames, labels, corner_boxes(corners, path))


def read_devkit(root: str) -> Devkit:
    """Class names and annotations of the devkit at `root` (no image is looked at)."""
    require_paths(root, [META, TRAIN_ANNOS], kind="cars", layout=LAYOUT)
    meta = os.path.join(root, META)
    class_names = mat_strings(
        mat_variable(load_mat(meta), "class_names", meta), meta, "class_names"
    )
    if len(class_names) != NUM_CLASSES:  # BODY_TYPES indexes the 196 devkit classes
        raise DatasetFormatError(
            f"{meta}: {len(class_names)} class names; Stanford Cars has {NUM_CLASSES}"
        )
    train = read_annotations(os.path.join(root, TRAIN_ANNOS), NUM_CLASSES)
    candidates = (os.path.join(root, "devkit", TEST_ANNOS), os.path.join(root, TEST_ANNOS))
    test_path = next((p for p in candidates if os.path.isfile(p)), None)
    test = read_annotations(test_path, NUM_CLASSES) if test_path else None
    return Devkit(class_names, train, test)


def _from_devkit(data_config, root: str, split: str) -> LabeledSource:
    kit = read_devkit(root)
    parts = ("train", "test") if split.startswith("retrieval") else (split,)
    if "test" in parts and kit.test is None:
        raise DatasetLayoutError(
            f"cars: split {split!r} needs the labelled test annotations {TEST_ANNOS} in "
            f"{os.path.join(root, 'devkit')!r} or {root!r} (the devkit's cars_test_annos.mat "
            f"has no classes); found in devkit/: {describe_folder(os.path.join(root, 'devkit'))}"
        )
    paths, labels, boxes, missing = [], [], [], []
    allow_missing = data_config.get("allow_missing", False)
    for part in parts:
        annos = kit.train if part == "train" else kit.test
        rel = [os.path.join(IMAGE_FOLDERS[part], f) for f in annos.fnames]
        index = TRAIN_ANNOS if part == "train" else TEST_ANNOS
        missing += require_listed_files(root, rel, index=index, allow_missing=allow_missing)
        paths += rel
        labels.append(annos.labels)
        boxes.append(annos.boxes)
    labels, boxes = np.concatenate(labels), np.concatenate(boxes)
    keep = _retrieval_keep(split, labels, len(kit.class_names))
    absent = set(missing)  # config.data.allow_missing: the listed images that are present
    split_missing = [p for p, k in zip(paths, keep, strict=True) if k and p in absent]
    keep &= np.array([p not in absent for p in paths])
    source = LabeledSource(
        dataset="cars",
        split=split,
        root=root,
        paths=paths,
        labels=labels,
        keep=keep,
        class_names=kit.class_names,
        coarse_levels={
            "type": body_type_level(),
            "make": coarse_from_names(kit.class_names, make_of),
        },
        coarse=data_config.get("coarse", ""),
        boxes=boxes if data_config.get("crop_to_box", False) else None,
    )
    source.missing = split_missing  # written to <workdir>/missing_images.txt
    return source


def _retrieval_keep(split: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Retrieval: the first half of the classes against the second; else everything."""
    half = num_classes // 2
    if split == "retrieval_train":
        return labels < half
    if split == "retrieval_test":
        return labels >= half
    return np.ones(len(labels), bool)


def _from_folders(data_config, root: str, split: str) -> LabeledSource:
    coarse = data_config.get("coarse", "")
    if coarse == "type":
        raise ValueError(
            "config.data.coarse='type': the body types are defined on the devkit's class order; "
            f"the image-folder layout at {root!r} has only 'make' (or 'none')"
        )
    if data_config.get("crop_to_box", False):
        raise ValueError(
            f"config.data.crop_to_box: the image-folder layout at {root!r} has no boxes"
        )
    parts = ("train", "test") if split.startswith("retrieval") else (split,)
    folders = [ImageFolderSource(root, part) for part in parts]
    class_names = folders[0].class_names
    for f in folders[1:]:
        if f.class_names != class_names:
            raise DatasetLayoutError(
                f"cars: {os.path.join(root, 'train')!r} and {os.path.join(root, 'test')!r} "
                "hold different class folders"
            )
    labels = np.concatenate([f.labels for f in folders])
    paths = [os.path.relpath(p, root) for f in folders for p in f.paths]
    keep = _retrieval_keep(split, labels, len(class_names))
    return LabeledSource(
        dataset="cars",
        split=split,
        root=root,
        paths=paths,
        labels=labels,
        keep=keep,
        class_names=class_names,
        coarse_levels={"make": coarse_from_names(class_names, make_of)},
        coarse=coarse,
    )


@register_dataset("cars", splits=SPLITS, coarse_levels=COARSE_LEVELS, layout=LAYOUT)
def cars(data_config, split: str) -> LabeledSource:
    root = os.fspath(data_config.root)
    if os.path.isdir(os.path.join(root, "stanford_cars")):  # torchvision's download folder
        root = os.path.join(root, "stanford_cars")
    if os.path.exists(os.path.join(root, META)):
        return _from_devkit(data_config, root, split)
    if all(os.path.isdir(os.path.join(root, p)) for p in ("train", "test")):
        return _from_folders(data_config, root, split)
    raise DatasetLayoutError(
        f"config.data.kind='cars' reads {LAYOUT}; at config.data.root={root!r} there is "
        f"neither {META} nor train/ and test/. Found there: {describe_folder(root)}"
    )
