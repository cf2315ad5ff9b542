"""CUB-200-2011 as distributed: `CUB_200_2011/` with images.txt, image_class_labels.txt,
train_test_split.txt (1 = train), bounding_boxes.txt (x y w h) and classes.txt.

Splits: 'train' / 'test' (official, 5,994 / 5,794), 'all', and the metric-learning
retrieval protocol 'retrieval_train' / 'retrieval_test': the first half of the classes
(1-100) against the second (101-200), every image of a class on its side. Labels are
positions in classes.txt (official id - 1); coarse level 'family' is the last word of the
species name (Albatross, Warbler, ...). `config.data.crop_to_box` crops every image to
its bird box first.
"""

from __future__ import annotations

import os

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    dataset_folder,
    keyed_values,
    parse_int,
    read_keyed,
    require_paths,
)
from fgjax.data.sources import LabeledSource, coarse_from_names, last_word

FOLDER = "CUB_200_2011"
INDEX_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)
LAYOUT = f"the official {FOLDER}/ folder ({', '.join(INDEX_FILES)}, images/)"
SPLITS = ("train", "test", "all", "retrieval_train", "retrieval_test")


@register_dataset("cub", splits=SPLITS, coarse_levels=("family",), layout=LAYOUT)
def cub(data_config, split: str) -> LabeledSource:
    base = dataset_folder(data_config.root, FOLDER)
    require_paths(base, [*INDEX_FILES, "images"], kind="cub", layout=LAYOUT)
    files = {name: os.path.join(base, name) for name in INDEX_FILES}
    images = read_keyed(files["images.txt"], 1)
    ids = sorted(images)
    class_rows = read_keyed(files["classes.txt"], 1)
    class_names = [class_rows[c][0] for c in sorted(class_rows)]
    position = {c: k for k, c in enumerate(sorted(class_rows))}
    class_of = [
        parse_int(v[0], files["image_class_labels.txt"], f"of image {i}")
        for i, v in zip(ids, keyed_values(files["image_class_labels.txt"], ids), strict=True)
    ]
    unknown = sorted(set(class_of) - set(position))
    if unknown:
        raise DatasetFormatError(
            f"{files['image_class_labels.txt']}: class id(s) {unknown[:5]} not in classes.txt"
        )
    labels = np.array([position[c] for c in class_of], np.int32)
    is_train = np.array([v[0] == "1" for v in keyed_values(files["train_test_split.txt"], ids)])
    half = len(class_names) // 2  # retrieval: classes 1-100 / 101-200
    keep = {
        "train": is_train,
        "test": ~is_train,
        "all": np.ones(len(ids), bool),
        "retrieval_train": labels < half,
        "retrieval_test": labels >= half,
    }[split]
    boxes = None
    if data_config.get("crop_to_box", False):
        rows = keyed_values(files["bounding_boxes.txt"], ids, num_values=4)
        boxes = np.array([[float(x) for x in v] for v in rows], np.float32)
    paths = [os.path.join("images", images[i][0]) for i in ids]
    return LabeledSource(
        dataset="cub",
        split=split,
        root=base,
        paths=paths,
        labels=labels,
        keep=keep,
        class_names=class_names,
        coarse_levels={"family": coarse_from_names(class_names, last_word)},
        coarse=data_config.get("coarse", ""),
        boxes=boxes,
    )
