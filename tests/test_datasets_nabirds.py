"""kind 'nabirds' on a miniature copy of the official layout: a 12-node taxonomy whose
leaves sit at depth 3 (a species) and 4 (variants of a species), UUID image ids."""

import os
import uuid

import numpy as np
import pytest
from conftest import data_config
from PIL import Image

from fgjax.data.datasets import build_source
from fgjax.data.decode import resize_center_crop
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError

CLASSES = {
    0: "Birds",
    1: "Ducks, Geese, and Swans",
    2: "Perching Birds",
    3: "Dabbling Ducks",
    4: "Wrens",
    5: "Mallard",
    6: "Gadwall",
    7: "Mallard (Breeding male)",
    8: "Mallard (Female/Eclipse male)",
    9: "House Wren",
    10: "Carolina Wren",  # a leaf without images: not a fine class
    11: "Nightjars",
}
PARENT = {1: 0, 2: 0, 11: 0, 3: 1, 4: 2, 5: 3, 6: 3, 7: 5, 8: 5, 9: 4, 10: 4}
# (class, is_train) of every image
IMAGES = [(7, 1), (7, 0), (8, 1), (6, 1), (6, 0), (9, 1), (9, 0), (9, 0)]


@pytest.fixture
def nab_root(tmp_path):
    base = tmp_path / "nabirds"
    (base / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for k, (c, train) in enumerate(IMAGES):
        image_id = str(uuid.UUID(int=int(rng.integers(1 << 62)) + k))
        rel = f"{c:04d}/{image_id.replace('-', '')}.jpg"
        (base / "images" / f"{c:04d}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            base / "images" / rel
        )
        rows.append((image_id, rel, c, train, (2 + k, 3, 10, 12)))
    write = lambda name, lines: (base / name).write_text("\n".join(lines) + "\n")  # noqa: E731
    write("images.txt", [f"{i} {rel}" for i, rel, *_ in rows])
    write("image_class_labels.txt", [f"{i} {c}" for i, _, c, *_ in rows])
    write("train_test_split.txt", [f"{i} {t}" for i, _, _, t, _ in rows])
    write("bounding_boxes.txt", [f"{i} {' '.join(map(str, b))}" for i, *_, b in rows])
    write("classes.txt", [f"{c} {n}" for c, n in CLASSES.items()])
    write("hierarchy.txt", [f"{c} {p}" for c, p in PARENT.items()])
    return tmp_path, rows


def test_splits_labels_and_paths(nab_root):
    root, rows = nab_root
    fine = [6, 7, 8, 9]  # the classes images are labelled with, in id order
    train = build_source(data_config("nabirds", root), "train")
    test = build_source(data_config("nabirds", root / "nabirds"), "test")
    assert len(train) == 4 and len(test) == 4
    assert train.num_classes == 4 and train.class_names == [CLASSES[c] for c in fine]
    for src, flag in ((train, 1), (test, 0)):
        want = [
            (os.path.join("images", rel), fine.index(c)) for _, rel, c, t, _ in rows if t == flag
        ]
        got = [
            (os.path.relpath(p, root / "nabirds"), int(y))
            for p, y in zip(src.paths, src.labels, strict=True)
        ]
        assert got == want
    assert all(os.path.isfile(p) for p in train.paths)
    assert len(build_source(data_config("nabirds", root), "all")) == len(IMAGES)


@pytest.mark.parametrize(
    "level, want",
    [  # coarse name of the fine classes Gadwall, Mallard (m), Mallard (f), House Wren
        ("order", ["Ducks, Geese, and Swans"] * 3 + ["Perching Birds"]),
        ("family", ["Dabbling Ducks"] * 3 + ["Wrens"]),
        ("species", ["Gadwall", "Mallard", "Mallard", "House Wren"]),
        ("parent", ["Dabbling Ducks", "Mallard", "Mallard", "Wrens"]),
    ],
)
def test_coarse_levels_by_depth(nab_root, level, want):
    root, _ = nab_root
    src = build_source(data_config("nabirds", root, coarse=level), "all")
    assert src.coarse_level == level and src.num_coarse_classes == len(set(want))
    for k in range(len(src)):
        assert src.coarse_names[src[k]["coarse_label"]] == want[src[k]["label"]]


def test_default_level_is_order_and_boxes(nab_root):
    root, rows = nab_root
    src = build_source(data_config("nabirds", root, crop_to_box=True), "test")
    assert src.coarse_level == "order" and src.num_coarse_classes == 2
    test_rows = [r for r in rows if r[3] == 0]
    assert [src[k]["box"] for k in range(len(src))] == [tuple(map(float, r[4])) for r in test_rows]
    assert resize_center_crop(src[0], image_size=8).shape == (8, 8, 3)
    assert "box" not in build_source(data_config("nabirds", root), "test")[0]


def test_wrong_root_and_malformed_files(nab_root):
    root, rows = nab_root
    base = root / "nabirds"
    with pytest.raises(DatasetLayoutError, match=r"nabirds/ folder.*Found there: 0006/, 0007/"):
        build_source(data_config("nabirds", base / "images"), "train")
    hierarchy = (base / "hierarchy.txt").read_text()
    (base / "hierarchy.txt").write_text(hierarchy + "12 0 extra\n")
    with pytest.raises(DatasetFormatError, match=r"hierarchy.txt: line 12: expected 2 fields"):
        build_source(data_config("nabirds", root), "train")
    (base / "hierarchy.txt").write_text(hierarchy + "12 0\n")
    with pytest.raises(DatasetFormatError, match=r"hierarchy.txt: class id\(s\) \[12\] not in"):
        build_source(data_config("nabirds", root), "train")
    (base / "hierarchy.txt").write_text(hierarchy.replace("1 0\n", "1 5\n", 1))  # 1 -> 5 -> 3 -> 1
    with pytest.raises(DatasetFormatError, match=r"hierarchy.txt: the parents of class 6 form a"):
        build_source(data_config("nabirds", root), "train")
    (base / "hierarchy.txt").write_text(hierarchy)
    labels = (base / "image_class_labels.txt").read_text().splitlines()
    (base / "image_class_labels.txt").write_text("\n".join(labels[:-1]) + "\n")
    with pytest.raises(
        DatasetFormatError,
        match=rf"image_class_labels.txt: no row for image id\(s\) \['{rows[-1][0]}'\]",
    ):
        build_source(data_config("nabirds", root), "train")
    (base / "image_class_labels.txt").write_text("\n".join(labels[:-1] + [f"{rows[-1][0]} 99"]))
    with pytest.raises(DatasetFormatError, match=r"image_class_labels.txt: class id\(s\) \[99\]"):
        build_source(data_config("nabirds", root), "train")
    os.remove(base / "classes.txt")
    with pytest.raises(DatasetLayoutError, match="missing: classes.txt"):
        build_source(data_config("nabirds", root), "train")
