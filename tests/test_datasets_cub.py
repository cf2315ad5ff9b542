"""kind='cub' on the official CUB-200-2011 sample in ../shared/data (skipped when absent)
and on a miniature copy with broken index files."""

import os
import shutil

import numpy as np
import pytest
from conftest import data_config, index_table
from PIL import Image

from fgjax.data.datasets import build_source
from fgjax.data.decode import random_crop_views, resize_center_crop
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError
from fgjax.data.views import ViewSpec


def test_official_split_labels_and_family(cub_root):
    base = os.path.join(cub_root, "CUB_200_2011")
    images = index_table(os.path.join(base, "images.txt"))
    table = {
        n: index_table(os.path.join(base, f"{n}.txt"))
        for n in ("train_test_split", "image_class_labels")
    }
    split = {k: v.strip() for k, v in table["train_test_split"].items()}
    label = {k: int(v) for k, v in table["image_class_labels"].items()}
    train = build_source(data_config("cub", cub_root), "train")
    test = build_source(data_config("cub", cub_root), "test")
    # 1 = train in the official file; every id lands on exactly one side.
    want_train = sorted(images[i].strip() for i in images if split[i] == "1")
    got_train = sorted(os.path.relpath(p, os.path.join(base, "images")) for p in train.paths)
    assert got_train == want_train and len(train) + len(test) == len(images) == 202
    by_path = {images[i].strip(): label[i] - 1 for i in images}
    for p, y in zip(test.paths, test.labels, strict=True):
        assert by_path[os.path.relpath(p, os.path.join(base, "images"))] == y
    assert train.num_classes == 50 and train.class_names[0] == "001.Black_footed_Albatross"
    assert train.coarse_level == "family" and "Albatross" in train.coarse_names
    albatross = train.coarse_names.index("Albatross")
    assert set(train.coarse_labels[train.labels < 3]) == {albatross}  # classes 1-3
    assert set(np.unique(train.coarse_labels[train.labels >= 3])) != {albatross}


def test_retrieval_split_is_class_disjoint(cub_root):
    tr = build_source(data_config("cub", cub_root), "retrieval_train")
    te = build_source(data_config("cub", cub_root), "retrieval_test")
    assert set(tr.labels) == set(range(25)) and set(te.labels) == set(range(25, 50))
    assert len(tr) + len(te) == 202


def test_boxes_and_greyscale_images(cub_root):
    base = os.path.join(cub_root, "CUB_200_2011")
    boxes = index_table(os.path.join(base, "bounding_boxes.txt"))
    src = build_source(data_config("cub", cub_root, crop_to_box=True), "all")
    # image id 448 is one of the two greyscale images of these classes
    k = next(i for i, p in enumerate(src.paths) if p.endswith("Brewer_Blackbird_0028_2682.jpg"))
    assert src[k]["box"] == tuple(float(v) for v in boxes["448"].split())
    with Image.open(src.paths[k]) as im:
        assert im.mode == "L"
    out = resize_center_crop(src[k], image_size=32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 1])  # grey stays grey in RGB
    # With crop_to_box the evaluation crop is the box's centre, not the image's.
    x, y, w, h = src[k]["box"]
    with Image.open(src.paths[k]) as im:
        box = (round(x), round(y), round(x + w), round(y + h))
        box_img = np.asarray(im.convert("RGB").crop(box))
    expected = resize_center_crop({"image": box_img, "index": 0}, image_size=32)
    assert np.abs(out.astype(int) - expected).mean() < 3.0
    plain = build_source(data_config("cub", cub_root), "all")
    assert "box" not in plain[k]
    assert np.abs(resize_center_crop(plain[k], image_size=32).astype(int) - expected).mean() > 10
    rng = np.random.default_rng(0)
    views = random_crop_views(src[k], rng, [ViewSpec("v", 24, crop_scale=(0.9, 1.0))])
    assert views["v"].shape == (24, 24, 3)


@pytest.fixture
def mini_cub(tmp_path, cub_root):
    """A copy of the index files (with two images) to break one at a time."""
    src = os.path.join(cub_root, "CUB_200_2011")
    dst = tmp_path / "CUB_200_2011"
    dst.mkdir()
    for name in os.listdir(src):
        if name.endswith(".txt"):
            shutil.copy(os.path.join(src, name), dst / name)
    (dst / "images").mkdir()
    return dst


def test_wrong_root_says_what_was_expected(tmp_path, mini_cub):
    (mini_cub / "images" / "001.Albatross").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"CUB_200_2011/.*Found there: 001.Albatross/"):
        build_source(data_config("cub", mini_cub / "images"), "train")
    os.remove(mini_cub / "bounding_boxes.txt")
    with pytest.raises(DatasetLayoutError, match="missing: bounding_boxes.txt"):
        build_source(data_config("cub", tmp_path), "train")


def test_bad_index_files_name_file_and_line(tmp_path, mini_cub):
    labels = mini_cub / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines[:3] + ["4 x"] + lines[4:]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"image_class_labels.txt: line of image 4: 'x'"):
        build_source(data_config("cub", tmp_path), "train")
    labels.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"image_class_labels.txt: no row for image id"):
        build_source(data_config("cub", tmp_path), "train")


def test_unknown_split_and_coarse_level(cub_root):
    with pytest.raises(ValueError, match=r"no split 'val'.*retrieval_train"):
        build_source(data_config("cub", cub_root), "val")
    with pytest.raises(ValueError, match=r"config.data.coarse='order'.*family"):
        build_source(data_config("cub", cub_root, coarse="order"), "train")
    none = build_source(data_config("cub", cub_root, coarse="none"), "train")
    assert none.num_coarse_classes == 0 and set(none.coarse_labels) == {-1}
