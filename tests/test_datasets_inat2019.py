"""kind 'inat2019' on a miniature copy of the COCO-style iNaturalist 2019 files."""

import json
import os

import numpy as np
import pytest
from conftest import data_config
from PIL import Image

from fgjax.data.datasets import build_source
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")
# listed out of id order on purpose: fine labels follow the ids
CATEGORIES = [
    (3, "Larus occidentalis", "Animalia", "Chordata", "Aves", "Charadriif.", "Laridae", "Larus"),
    (0, "Quercus alba", "Plantae", "Tracheophyta", "Magnoliops.", "Fagales", "Fagaceae", "Quercus"),
    (2, "Larus argentatus", "Animalia", "Chordata", "Aves", "Charadriif.", "Laridae", "Larus"),
    (1, "Quercus rub.", "Plantae", "Tracheophyta", "Magnoliops.", "Fagales", "Fagaceae", "Quercus"),
    (4, "Apis mellifera", "Animalia", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Apis"),
]  # fmt: skip
SPLITS = {
    "train": [(10, 3), (11, 0), (12, 4), (13, 2), (14, 3), (15, 1)],
    "val": [(20, 4), (21, 0)],
}


@pytest.fixture
def inat_root(tmp_path):
    rng = np.random.default_rng(0)
    cats = [dict(zip(("id", "name", *RANKS), c, strict=True)) for c in CATEGORIES]
    for split, items in SPLITS.items():
        images, annotations = [], []
        for image_id, cid in items:
            rel = f"train_val2019/Group/{cid}/{image_id:032x}.jpg"
            os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(tmp_path / rel)
            images.append({"id": image_id, "file_name": rel, "width": 7, "height": 9})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": cid})
        doc = {"info": {}, "images": images, "annotations": annotations, "categories": cats}
        (tmp_path / f"{split}2019.json").write_text(json.dumps(doc))
    return tmp_path


def test_labels_paths_and_ranks(inat_root):
    src = build_source(data_config("inat2019", inat_root), "train")
    by_id = sorted(CATEGORIES)
    assert src.class_names == [c[1] for c in by_id] and len(src) == 6
    assert src.labels.tolist() == [cid for _, cid in SPLITS["train"]]  # ids 0..4 = positions
    assert [os.path.relpath(p, inat_root) for p in src.paths][
        2
    ] == f"train_val2019/Group/4/{12:032x}.jpg"
    assert all(os.path.isfile(p) for p in src.paths)
    assert src.coarse_level == "phylum"  # BuCSFR's train.sh level is the default
    for r, rank in enumerate(RANKS):
        level = build_source(data_config("inat2019", inat_root, coarse=rank), "train")
        names, inverse = np.unique([c[2 + r] for c in by_id], return_inverse=True)
        assert level.coarse_names == names.tolist()
        np.testing.assert_array_equal(level.coarse_labels, inverse[level.labels])
    val = build_source(data_config("inat2019", inat_root, coarse="genus"), "val")
    assert val.labels.tolist() == [4, 0] and [val.coarse_names[c] for c in val.coarse_labels] == [
        "Apis",
        "Quercus",
    ]


def test_wrong_root_and_malformed_json(inat_root):
    with pytest.raises(
        DatasetLayoutError, match=r"train2019.json.*missing: train2019.json. Found there: Group/"
    ):
        build_source(data_config("inat2019", inat_root / "train_val2019"), "train")
    os.rename(inat_root / "train_val2019", inat_root / "elsewhere")
    with pytest.raises(
        DatasetLayoutError, match=r"lists images under train_val2019/, which is not"
    ):
        build_source(data_config("inat2019", inat_root), "val")
    os.rename(inat_root / "elsewhere", inat_root / "train_val2019")
    path = inat_root / "val2019.json"
    doc = json.loads(path.read_text())
    path.write_text(path.read_text()[:-10])
    with pytest.raises(DatasetFormatError, match=r"val2019.json: not valid JSON"):
        build_source(data_config("inat2019", inat_root), "val")
    del doc["categories"][2]["genus"]
    path.write_text(json.dumps(doc))
    with pytest.raises(
        DatasetFormatError, match=r"val2019.json: categories\[2\] has no field\(s\) \['genus'\]"
    ):
        build_source(data_config("inat2019", inat_root), "val")
    doc["categories"][2]["genus"] = "Larus"
    doc["annotations"] = doc["annotations"][:1]
    path.write_text(json.dumps(doc))
    with pytest.raises(
        DatasetFormatError, match=r"val2019.json: no annotation for image id\(s\) \[21\]"
    ):
        build_source(data_config("inat2019", inat_root), "val")
    doc["annotations"][0]["category_id"] = 77
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetFormatError, match=r"annotations\[0\]: unknown category_id 77"):
        build_source(data_config("inat2019", inat_root), "val")
