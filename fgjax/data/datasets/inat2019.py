"""iNaturalist 2019 as distributed: `train2019.json` / `val2019.json` (COCO style: images
[{id, file_name}], annotations [{image_id, category_id}], categories [{id, name, kingdom,
phylum, class, order, family, genus}]) with the images under the root (file_name is
relative to it, e.g. 'train_val2019/Plants/644/716a....jpg').

Splits 'train' (265,213) / 'val' (3,030). Fine classes: the 1,010 species in category id
order. Coarse levels: the taxonomy's ranks, ids = the sorted distinct names of a rank (as
BuCSFR's np.unique): 'phylum' (4, the default: BuCSFR's train.sh trains with it), 'genus'
(72), 'family' (57), 'order' (34), 'class' (9), 'kingdom' (3).
"""

from __future__ import annotations

import json
import os

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError, describe_folder, require_paths
from fgjax.data.sources import LabeledSource, coarse_from_names

RANKS = ("phylum", "genus", "family", "order", "class", "kingdom")
LAYOUT = "train2019.json / val2019.json with the images they list under the root"


def _entries(doc: dict, key: str, fields: dict[str, type], path: str) -> list[dict]:
    """doc[key], a list of objects each having `fields` of their types (errors name the
    entry): ids must be integers and names strings, or they would surface later as a
    TypeError naming no file."""
    entries = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise DatasetFormatError(f"{path}: expected a JSON object with a list {key!r}")
    for k, e in enumerate(entries):
        missing = [f for f in fields if not isinstance(e, dict) or f not in e]
        if missing:
            raise DatasetFormatError(f"{path}: {key}[{k}] has no field(s) {missing}: {e!r:.200}")
        wrong = [
            f"{f} ({t.__name__})"
            for f, t in fields.items()
            if not isinstance(e[f], t) or isinstance(e[f], bool)
        ]
        if wrong:
            raise DatasetFormatError(f"{path}: {key}[{k}]: wrong type of {wrong}: {e!r:.200}")
    return entries


@register_dataset("inat2019", splits=("train", "val"), coarse_levels=RANKS, layout=LAYOUT)
def inat2019(data_config, split: str) -> LabeledSource:
    root = data_config.root
    name = f"{split}2019.json"
    require_paths(root, [name], kind="inat2019", layout=LAYOUT)
    path = os.path.join(root, name)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except ValueError as e:
        raise DatasetFormatError(f"{path}: not valid JSON: {e}") from e
    images = _entries(doc, "images", {"id": int, "file_name": str}, path)
    annotations = _entries(doc, "annotations", {"image_id": int, "category_id": int}, path)
    category_fields = {"id": int, "name": str, **dict.fromkeys(RANKS, str)}
    categories = sorted(_entries(doc, "categories", category_fields, path), key=lambda c: c["id"])
    position = {c["id"]: k for k, c in enumerate(categories)}
    category_of = {}
    for k, a in enumerate(annotations):
        if a["category_id"] not in position:
            raise DatasetFormatError(
                f"{path}: annotations[{k}]: unknown category_id {a['category_id']}"
            )
        category_of[a["image_id"]] = a["category_id"]
    unlabelled = [im["id"] for im in images if im["id"] not in category_of]
    if unlabelled:
        raise DatasetFormatError(f"{path}: no annotation for image id(s) {unlabelled[:5]}")
    paths = [im["file_name"] for im in images]
    top = paths[0].split("/")[0] if paths else ""
    if top and not os.path.isdir(os.path.join(root, top)):
        raise DatasetLayoutError(
            f"config.data.kind='inat2019': {name} lists images under {top}/, which is not in "
            f"config.data.root={root!r}. Found there: {describe_folder(root)}"
        )
    return LabeledSource(
        dataset="inat2019",
        split=split,
        root=root,
        paths=paths,
        labels=np.array([position[category_of[im["id"]]] for im in images], np.int32),
        class_names=[c["name"] for c in categories],
        coarse_levels={r: coarse_from_names([c[r] for c in categories], str) for r in RANKS},
        coarse=data_config.get("coarse", ""),
    )
