"""NABirds (Van Horn et al. 2015) as distributed: `nabirds/` with images.txt ('id relpath',
ids are UUIDs), image_class_labels.txt ('id class_id'), train_test_split.txt ('id 1|0',
1 = train), classes.txt ('class_id name with spaces'), hierarchy.txt ('child parent'),
images/ and, for `config.data.crop_to_box`, bounding_boxes.txt ('id x y w h').

Splits 'train' / 'test' (official, 23,929 / 24,633) and 'all'. classes.txt lists every
node of the taxonomy tree (1,011); the fine classes are the ones images are labelled with
(the 555 leaves), in class id order.

Coarse levels come from hierarchy.txt, by depth below the root node ('Birds'):
  'order' (default): the ancestor just below the root. BuCSFR trains NABirds with its
      "22 orders" and lists the label columns [555 categories, 495 species, 228
      genus/family, 22 orders]; the tree's 1,011 nodes = 1 root + 22 + 228 + 495 + 265
      leaf variants (sex / age / morph of a species), which is what a tree whose leaves sit
      at depth 3 (a species) or 4 (a variant of one) gives. Not checked on the real files
      here; training (and `fgjax inspect`) prints the count.
  'family': the ancestor at depth 2 (BuCSFR's 228 "genus/family").
  'species': the ancestor at depth 3, i.e. the species a variant belongs to (495).
  'parent': the leaf's immediate parent, whatever its depth.
A leaf shallower than a level's depth is its own ancestor at that level.
"""

from __future__ import annotations

import os

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    dataset_folder,
    keyed_values,
    parse_boxes,
    parse_int,
    read_keyed,
    require_paths,
    train_flags,
)
from fgjax.data.sources import CoarseLevel, LabeledSource

FOLDER = "nabirds"
INDEX_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "classes.txt",
    "hierarchy.txt",
)
LAYOUT = (
    f"the official {FOLDER}/ folder ({', '.join(INDEX_FILES)}, images/; bounding_boxes.txt "
    "for crop_to_box)"
)
SPLITS = ("train", "test", "all")
DEPTHS = {"order": 1, "family": 2, "species": 3}


def _lineage(node: int, parent: dict[int, int], path: str) -> list[int]:
    """The nodes from the root down to `node` (a cycle in hierarchy.txt is an error)."""
    chain = [node]
    while chain[-1] in parent:
        chain.append(parent[chain[-1]])
        if len(chain) > len(parent) + 1:
            raise DatasetFormatError(f"{path}: the parents of class {node} form a cycle")
    return chain[::-1]


def _level(ancestors: list[int], names: dict[int, str]) -> CoarseLevel:
    """Ancestor node per fine class -> a level whose ids follow the node ids."""
    nodes = sorted(set(ancestors))
    position = {n: k for k, n in enumerate(nodes)}
    return CoarseLevel(
        [names[n] for n in nodes], np.array([position[a] for a in ancestors], np.int32)
    )


@register_dataset("nabirds", splits=SPLITS, coarse_levels=(*DEPTHS, "parent"), layout=LAYOUT)
def nabirds(data_config, split: str) -> LabeledSource:
    base = dataset_folder(data_config.root, FOLDER)
    require_paths(base, [*INDEX_FILES, "images"], kind="nabirds", layout=LAYOUT)
    files = {name: os.path.join(base, name) for name in (*INDEX_FILES, "bounding_boxes.txt")}
    images = read_keyed(files["images.txt"], 1, key=str)
    if not images:
        raise DatasetFormatError(f"{files['images.txt']}: lists no images")
    ids = list(images)
    names = {c: v[0] for c, v in read_keyed(files["classes.txt"], 1, max_split=1).items()}
    hierarchy = files["hierarchy.txt"]
    parent = {
        c: parse_int(v[0], hierarchy, f"of class {c}") for c, v in read_keyed(hierarchy, 1).items()
    }
    unknown = sorted((set(parent) | set(parent.values())) - set(names))
    if unknown:
        raise DatasetFormatError(f"{hierarchy}: class id(s) {unknown[:5]} not in classes.txt")
    labels_file = files["image_class_labels.txt"]
    class_of = [
        parse_int(v[0], labels_file, f"of image {i}")
        for i, v in zip(ids, keyed_values(labels_file, ids, key=str), strict=True)
    ]
    fine = sorted(set(class_of))
    unknown = sorted(set(fine) - set(names))
    if unknown:
        raise DatasetFormatError(f"{labels_file}: class id(s) {unknown[:5]} not in classes.txt")
    position = {c: k for k, c in enumerate(fine)}
    labels = np.array([position[c] for c in class_of], np.int32)
    lineages = [_lineage(c, parent, hierarchy) for c in fine]
    levels = {
        level: _level([chain[min(depth, len(chain) - 1)] for chain in lineages], names)
        for level, depth in DEPTHS.items()
    }
    levels["parent"] = _level([chain[max(len(chain) - 2, 0)] for chain in lineages], names)
    split_path = files["train_test_split.txt"]
    is_train = train_flags(keyed_values(split_path, ids, key=str), ids, split_path)
    keep = {"train": is_train, "test": ~is_train, "all": np.ones(len(ids), bool)}[split]
    boxes = None
    if data_config.get("crop_to_box", False):
        require_paths(base, ["bounding_boxes.txt"], kind="nabirds", layout=LAYOUT)
        boxes_path = files["bounding_boxes.txt"]
        boxes = parse_boxes(keyed_values(boxes_path, ids, num_values=4, key=str), ids, boxes_path)
    paths = [os.path.join("images", images[i][0]) for i in ids]
    return LabeledSource(
        dataset="nabirds",
        split=split,
        root=base,
        paths=paths,
        labels=labels,
        keep=keep,
        class_names=[names[c] for c in fine],
        coarse_levels=levels,
        coarse=data_config.get("coarse", ""),
        boxes=boxes,
    )
