"""Oxford Flowers-102 as distributed: `jpg/image_NNNNN.jpg` (8,189 images),
`imagelabels.mat` ('labels', 1-based, one per image) and `setid.mat` ('trnid', 'valid',
'tstid': 1-based image ids). torchvision's `flowers-102/` folder is this layout.

Splits: 'train' / 'val' / 'test' (1,020 / 1,020 / 6,149; 10 training and 10 validation
images per class) and 'trainval'. Labels are the official ones - 1. Class names: from
`cat_to_name.json` ({"1": name, ...}) when the root holds one, else `NAMES`. Coarse
level 'bucsfr': the 12 hand-made groups of BuCSFR (`BUCSFR_GROUPS`), assigned by label.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    dense_ids,
    load_mat,
    mat_variable,
    require_listed_files,
    require_paths,
)
from fgjax.data.sources import CoarseLevel, LabeledSource

FILES = ("imagelabels.mat", "setid.mat", "jpg")
LAYOUT = "the Oxford Flowers-102 files (jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat)"
SPLIT_IDS = {
    "train": ("trnid",),
    "val": ("valid",),
    "test": ("tstid",),
    "trainval": ("trnid", "valid"),
}

# The official category names, label order (1..102). cat_to_name.json, where present,
# has the same names except 'lotus lotus' for 'lotus'.
# fmt: off
NAMES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
    "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
    "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle",
    "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian",
    "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
    "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil",
    "sword lily", "poinsettia", "bolero deep blue", "wallflower", "marigold", "buttercup",
    "oxeye daisy", "common dandelion", "petunia", "wild pansy", "primula", "sunflower",
    "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan",
    "silverbush", "californian poppy", "osteospermum", "spring crocus", "bearded iris",
    "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple",
    "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
    "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss",
    "foxglove", "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia",
    "blanket flower", "trumpet creeper", "blackberry lily",
)

# BuCSFR's 12 groups (datasets/flowers102.py), by NAMES. Its table lists monkshood twice;
# the later entry wins there, so monkshood is in Others here.
BUCSFR_GROUPS: dict[str, tuple[str, ...]] = {
    "Orchids & Alstroemeria": (
        "hard-leaved pocket orchid", "moon orchid", "ruby-lipped cattleya", "peruvian lily",
        "cautleya spicata", "red ginger", "cape flower",
    ),
    "Lilies & Arums": (
        "tiger lily", "giant white arum lily", "fire lily", "sword lily", "canna lily",
        "hippeastrum",
    ),
    "Irises, Crocus & Allies": (
        "yellow iris", "bearded iris", "grape hyacinth", "spring crocus", "blackberry lily",
    ),
    "Daisies & Sunflowers": (
        "oxeye daisy", "barbeton daisy", "osteospermum", "gazania", "blanket flower",
        "black-eyed susan", "sunflower", "king protea",
    ),
    "Marigolds & Thistles": (
        "english marigold", "marigold", "pincushion flower", "artichoke", "globe thistle",
        "spear thistle", "alpine sea holly", "globe-flower",
    ),
    "Poppies": ("corn poppy", "californian poppy", "tree poppy"),
    "Bellflowers & Tubular": (
        "canterbury bells", "snapdragon", "foxglove", "balloon flower", "columbine",
        "toad lily", "japanese anemone", "bee balm",
    ),
    "Roses & Mallows": ("rose", "desert-rose", "hibiscus", "camellia", "mallow", "magnolia"),
    "Primroses & Phloxes": (
        "pink primrose", "primula", "colt's foot", "lenten rose", "garden phlox",
        "sweet william", "wallflower", "gaura", "carnation",
    ),
    "Aquatics & Spathes": ("water lily", "lotus", "watercress", "anthurium", "cyclamen"),
    "Tropicals & Vines": (
        "bird of paradise", "morning glory", "passion flower", "clematis", "trumpet creeper",
        "bromelia", "mexican petunia", "tree mallow", "bougainvillea", "petunia",
        "pelargonium", "geranium", "bishop of llandaff", "prince of wales feathers",
        "frangipani",
    ),
    "Others": (
        "monkshood", "fritillary", "purple coneflower", "stemless gentian", "love in the mist",
        "mexican aster", "great masterwort", "siam tulip", "daffodil", "poinsettia",
        "bolero deep blue", "buttercup", "common dandelion", "wild pansy", "orange dahlia",
        "pink-yellow dahlia", "silverbush", "azalea", "thorn apple", "ball moss", "windflower",
        "sweet pea",
    ),
}
# fmt: on


def bucsfr_level() -> CoarseLevel:
    """BUCSFR_GROUPS as a coarse level over the 102 labels (group ids in BuCSFR's order)."""
    group_of = {name: k for k, members in enumerate(BUCSFR_GROUPS.values()) for name in members}
    return CoarseLevel(list(BUCSFR_GROUPS), np.array([group_of[n] for n in NAMES], np.int32))


def read_class_names(path: str) -> list[str]:
    """cat_to_name.json: {"1": name, ..., "102": name} -> names in label order."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetFormatError(f"{path}: cannot read as JSON: {e}") from e
    want = [str(k) for k in range(1, len(NAMES) + 1)]
    if not isinstance(table, dict) or set(table) != set(want):
        keys = sorted(table) if isinstance(table, dict) else type(table).__name__
        raise DatasetFormatError(
            f"{path}: expected the keys '1'..'102' (one per label), got {keys}"
        )
    return [str(table[k]) for k in want]


@register_dataset("flowers", splits=tuple(SPLIT_IDS), coarse_levels=("bucsfr",), layout=LAYOUT)
def flowers(data_config, split: str) -> LabeledSource:
    root = os.fspath(data_config.root)
    if os.path.isdir(os.path.join(root, "flowers-102")):  # torchvision's download folder
        root = os.path.join(root, "flowers-102")
    require_paths(root, FILES, kind="flowers", layout=LAYOUT)
    labels_path, setid_path = (os.path.join(root, f) for f in FILES[:2])
    labels = dense_ids(
        mat_variable(load_mat(labels_path), "labels", labels_path), labels_path, len(NAMES)
    )
    setid = load_mat(setid_path)
    ids = np.concatenate(
        [
            dense_ids(
                mat_variable(setid, key, setid_path),
                f"{setid_path}, variable {key!r}",
                len(labels),
                unique=True,
            )
            for key in SPLIT_IDS[split]
        ]
    )
    if len(SPLIT_IDS[split]) > 1:  # an image in both parts of a merged split
        dense_ids(ids + 1, f"{setid_path}, variables {'+'.join(SPLIT_IDS[split])}", unique=True)
    paths = [os.path.join("jpg", f"image_{i + 1:05d}.jpg") for i in ids]
    require_listed_files(root, paths, index=f"setid.mat ({'+'.join(SPLIT_IDS[split])})")
    names_path = os.path.join(root, "cat_to_name.json")
    return LabeledSource(
        dataset="flowers",
        split=split,
        root=root,
        paths=paths,
        labels=labels[ids],
        class_names=read_class_names(names_path) if os.path.isfile(names_path) else NAMES,
        coarse_levels={"bucsfr": bucsfr_level()},
        coarse=data_config.get("coarse", ""),
    )
