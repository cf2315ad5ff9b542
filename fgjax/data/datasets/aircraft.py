"""FGVC-Aircraft 2013b as distributed: the `data/` folder of `fgvc-aircraft-2013b/`
(config.data.root may be the folder holding fgvc-aircraft-2013b/, that folder, or data/
itself) with `images/NNNNNNN.jpg`, the class lists `variants.txt`, `families.txt`,
`manufacturers.txt`, and per split `images_{variant,family,manufacturer}_<split>.txt`
('image_id name with spaces' lines).

Splits: 'train' / 'val' / 'test' (3,334 / 3,333 / 3,333), 'trainval' (6,667), and the
retrieval protocol 'retrieval_train' / 'retrieval_test': the first 50 variants of
variants.txt against the last 50, every image (trainval and test) of a variant on its side.
Labels: line of the variant in variants.txt. Coarse levels: 'manufacturer' (30; the
default, the level BuCSFR trains with) and 'family' (70), ids = line order of their
lists; a variant found with two families (or manufacturers) is an error. Every image has
its 20-pixel copyright banner cut off the bottom (`trim_bottom`);
`config.data.crop_to_box` crops to `images_box.txt` ('id xmin ymin xmax ymax', 1-based
inclusive per the dataset's README).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    corner_boxes,
    read_table,
    require_listed_files,
    require_paths,
    text_lines,
)
from fgjax.data.sources import CoarseLevel, LabeledSource

DATA_FOLDERS = (os.path.join("fgvc-aircraft-2013b", "data"), "data", "")
LEVEL_FILES = {
    "variant": "variants.txt",
    "manufacturer": "manufacturers.txt",
    "family": "families.txt",
}
ALL_PARTS = ("trainval", "test")  # together, every image once
LAYOUT = (
    "fgvc-aircraft-2013b/data/ (images/, variants.txt, families.txt, manufacturers.txt, "
    "images_{variant,family,manufacturer}_{trainval,test}.txt, images_box.txt)"
)
SPLITS = ("train", "val", "trainval", "test", "retrieval_train", "retrieval_test")
TRIM_BOTTOM = 20  # rows of the copyright banner at the bottom of every image


def read_names(path: str) -> list[str]:
    """A class list (one name per line, blank lines skipped); names must be unique."""
    with text_lines(path) as f:
        names = [line.strip() for line in f if line.strip()]
    seen: set[str] = set()
    for k, name in enumerate(names, start=1):
        if name in seen:
            raise DatasetFormatError(f"{path}: name {k} {name!r} appears twice")
        seen.add(name)
    return names


def read_labels(path: str, names: list[str], names_path: str) -> tuple[list[str], np.ndarray]:
    """An images_<level>_<split>.txt file: image ids and int32 [N] positions in `names`."""
    position = {n: k for k, n in enumerate(names)}
    ids, labels = [], []
    for line, (image_id, name) in enumerate(read_table(path, 2, max_split=1), start=1):
        if name not in position:
            raise DatasetFormatError(f"{path}: line {line}: {name!r} is not in {names_path}")
        ids.append(image_id)
        labels.append(position[name])
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DatasetFormatError(f"{path}: image id(s) listed twice: {repeated[:5]}")
    return ids, np.array(labels, np.int32)


def coarse_level(
    base: str, level: str, variants: list[str], fine: dict[str, tuple[list[str], np.ndarray]]
) -> CoarseLevel:
    """The `level` ('family' / 'manufacturer') of every variant, from the image lists.

    fine: {part: (image ids, variant labels)} of the parts in ALL_PARTS.
    """
    names_path = os.path.join(base, LEVEL_FILES[level])
    names = read_names(names_path)
    of_class = np.full(len(variants), -1, np.int32)
    seen_in: dict[int, str] = {}
    for part in ALL_PARTS:
        path = _split_file(base, level, part)
        coarse_of = dict(zip(*read_labels(path, names, names_path), strict=True))
        for image_id, v in zip(fine[part][0], fine[part][1].tolist(), strict=True):
            if image_id not in coarse_of:
                raise DatasetFormatError(f"{path}: no line for image {image_id}")
            c = int(coarse_of[image_id])
            if of_class[v] == -1:
                of_class[v], seen_in[v] = c, f"{path} (image {image_id})"
            elif of_class[v] != c:
                raise DatasetFormatError(
                    f"{path}: image {image_id}: variant {variants[v]!r} has {level} "
                    f"{names[c]!r}, but {names[of_class[v]]!r} in {seen_in[v]}"
                )
    if (of_class < 0).any():
        missing = [variants[v] for v in np.flatnonzero(of_class < 0)[:5]]
        raise DatasetFormatError(f"{base}: no image of variant(s) {missing} in {ALL_PARTS}")
    return CoarseLevel(names, of_class)


def _split_file(base: str, level: str, part: str) -> str:
    return os.path.join(base, f"images_{level}_{part}.txt")


def data_folder(root: str) -> str:
    """The folder holding variants.txt: root/fgvc-aircraft-2013b/data, root/data or root."""
    for folder in DATA_FOLDERS:
        if os.path.isfile(os.path.join(root, folder, LEVEL_FILES["variant"])):
            return os.path.join(root, folder)
    return root  # require_paths says what is missing


@register_dataset(
    "aircraft", splits=SPLITS, coarse_levels=("manufacturer", "family"), layout=LAYOUT
)
def aircraft(data_config, split: str) -> LabeledSource:
    base = data_folder(os.fspath(data_config.root))
    parts = ALL_PARTS if split.startswith("retrieval") else (split,)
    needed = dict.fromkeys((*ALL_PARTS, *parts))  # ordered, unique
    index_files = [f"images_{lv}_{p}.txt" for lv in LEVEL_FILES for p in needed]
    require_paths(
        base, [*LEVEL_FILES.values(), *index_files, "images"], kind="aircraft", layout=LAYOUT
    )
    variants_path = os.path.join(base, LEVEL_FILES["variant"])
    variants = read_names(variants_path)
    fine = {
        p: read_labels(_split_file(base, "variant", p), variants, variants_path) for p in needed
    }
    ids = [i for p in parts for i in fine[p][0]]
    labels = np.concatenate([fine[p][1] for p in parts])
    half = len(variants) // 2  # retrieval: variants 1-50 / 51-100
    keep = {"retrieval_train": labels < half, "retrieval_test": labels >= half}.get(
        split, np.ones(len(labels), bool)
    )
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    paths = [os.path.join("images", f"{i}.jpg") for i in ids]
    index = ", ".join(_split_file(base, "variant", p) for p in parts)
    require_listed_files(base, paths, index=index)
    boxes = None
    if data_config.get("crop_to_box", False):
        boxes = read_boxes(os.path.join(base, "images_box.txt"), ids)
    levels = {lv: coarse_level(base, lv, variants, fine) for lv in ("manufacturer", "family")}
    return LabeledSource(
        dataset="aircraft",
        split=split,
        root=base,
        paths=paths,
        labels=labels[keep],
        class_names=variants,
        coarse_levels=levels,
        coarse=data_config.get("coarse", ""),
        boxes=boxes,
        trim_bottom=TRIM_BOTTOM,
    )


def read_boxes(path: str, ids: list[str]) -> np.ndarray:
    """images_box.txt rows of `ids` as float32 [N, 4] (left, top, width, height)."""
    require_paths(os.path.dirname(path), [os.path.basename(path)], kind="aircraft", layout=LAYOUT)
    corners: dict[str, tuple[int, ...]] = {}
    for line, row in enumerate(read_table(path, 5), start=1):
        try:
            corners[row[0]] = tuple(int(v) for v in row[1:])
        except ValueError:
            raise DatasetFormatError(f"{path}: line {line}: {row[1:]} are not 4 integers") from None
    missing = [i for i in ids if i not in corners]
    if missing:
        raise DatasetFormatError(f"{path}: no box for image(s) {missing[:5]}")
    return corner_boxes(np.array([corners[i] for i in ids]), path)
