"""kind='cub' on the official CUB-200-2011 sample in ../shared/data (skipped when absent)
and on a miniature copy with broken index files; BuCSFR's 24 groups against the official
200 class names (../shared/data/cub200_classes.txt)."""

import dataclasses
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, data_config, index_table, shared_path
from PIL import Image

from fgjax.config import load_config_file, photometric_spec
from fgjax.data.augment import moco_v2_spec
from fgjax.data.datasets import build_source
from fgjax.data.datasets.cub import BUCSFR_GROUPS, bucsfr_level
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


# Spec (../shared/methods/bucsfr.md section 6.2): the groups in BuCSFR's order, their sizes.
BUCSFR_SIZES = {
    "Waterbird": 43, "Icterid": 13, "Finch": 4, "Grosbeak/Cardinal": 5, "Bunting": 3,
    "Sparrow": 25, "Warbler/Chat": 31, "Flycatcher": 11, "Vireo": 7, "Wren": 7,
    "Thrasher/Mimid": 5, "Nightjar": 3, "Hummingbird": 4, "Woodpecker": 7, "Corvid": 8,
    "Cuculidae": 5, "Swallow": 4, "Tanager": 2, "Pipit": 1, "Bark_Forager": 2, "Shrike": 2,
    "Kingfisher": 5, "Starling": 1, "Waxwing": 2,
}  # fmt: skip
SPOT_CHECKS = {  # the spec's prose
    "Sparrow": ("Dark_eyed_Junco", "Horned_Lark", "Eastern_Towhee", "Green_tailed_Towhee"),
    "Bark_Forager": ("White_breasted_Nuthatch", "Brown_Creeper"),
    "Warbler/Chat": (
        "Northern_Waterthrush", "Louisiana_Waterthrush", "Common_Yellowthroat",
        "American_Redstart", "Ovenbird", "Yellow_breasted_Chat",
    ),
    "Flycatcher": ("Western_Wood_Pewee", "Sayornis", "Tropical_Kingbird", "Gray_Kingbird"),
    "Cuculidae": ("Geococcyx", "Groove_billed_Ani", "Mangrove_Cuckoo"),
    "Thrasher/Mimid": ("Spotted_Catbird", "Gray_Catbird", "Mockingbird"),
    "Corvid": ("Clark_Nutcracker", "Green_Jay", "White_necked_Raven"),
}  # fmt: skip


def official_names() -> list[str]:
    """The 200 classes.txt names in id order, e.g. '001.Black_footed_Albatross'."""
    with open(shared_path("cub200_classes.txt"), encoding="utf-8") as f:
        rows = [line.split() for line in f if line.strip()]
    assert [int(i) for i, _ in rows] == list(range(1, 201))
    return [name for _, name in rows]


def test_bucsfr_groups_cover_the_200_classes_once():
    names = official_names()
    bare = [n.split(".", 1)[1] for n in names]
    members = [m for group in BUCSFR_GROUPS.values() for m in group]
    assert sorted(members) == sorted(bare)  # each official name exactly once, same spelling
    assert {g: len(m) for g, m in BUCSFR_GROUPS.items()} == BUCSFR_SIZES
    assert list(BUCSFR_GROUPS) == list(BUCSFR_SIZES)  # order = coarse ids
    level = bucsfr_level(names)
    assert level.names == list(BUCSFR_SIZES)
    np.testing.assert_array_equal(np.bincount(level.of_class), list(BUCSFR_SIZES.values()))
    for group, species in SPOT_CHECKS.items():
        assert {level.names[level.of_class[bare.index(s)]] for s in species} == {group}
    # Without the 'NNN.' prefix, and in the original's every-word-capitalised spelling.
    capitalised = ["_".join(w.capitalize() for w in n.split("_")) for n in bare]
    for other in (bare, capitalised):
        np.testing.assert_array_equal(bucsfr_level(other).of_class, level.of_class)
    with pytest.raises(DatasetFormatError, match=r"my.txt: .*'201.Dodo'.*none of BuCSFR"):
        bucsfr_level([*names, "201.Dodo"], "my.txt")


def test_bucsfr_coarse_labels_on_the_images(tmp_path, mini_cub, cub_root):
    """coarse='bucsfr' on the sample: its own 50-class classes.txt and the full 200 list."""
    names = official_names()
    group_of = {m: k for k, group in enumerate(BUCSFR_GROUPS.values()) for m in group}
    sample = build_source(data_config("cub", cub_root, coarse="bucsfr"), "all")
    shutil.copy(shared_path("cub200_classes.txt"), mini_cub / "classes.txt")
    full = build_source(data_config("cub", tmp_path, coarse="bucsfr"), "all")
    assert sample.num_classes == 50 and full.num_classes == 200
    for src in (sample, full):
        assert src.coarse_level == "bucsfr" and src.coarse_names == list(BUCSFR_SIZES)
        want = [group_of[names[y].split(".", 1)[1]] for y in src.labels]
        np.testing.assert_array_equal(src.coarse_labels, want)
        k = next(i for i, p in enumerate(src.paths) if "Brewer_Blackbird_0028" in p)
        assert src.coarse_names[src[k]["coarse_label"]] == "Icterid"
    np.testing.assert_array_equal(full.coarse_labels, sample.coarse_labels)  # same classes
    assert build_source(data_config("cub", tmp_path), "all").coarse_level == "family"
    # A renamed class: 'family' still reads, 'bucsfr' names the file and the class.
    lines = (mini_cub / "classes.txt").read_text().splitlines()
    (mini_cub / "classes.txt").write_text("\n".join(["1 001.Dodo", *lines[1:]]) + "\n")
    assert build_source(data_config("cub", tmp_path), "all").coarse_level == "family"
    with pytest.raises(DatasetFormatError, match=r"classes.txt: .*'001.Dodo'"):
        build_source(data_config("cub", tmp_path, coarse="bucsfr"), "all")


def test_cub_bucsfr_recipe_reads_the_sample_with_both_views_strong(cub_root):
    """configs/cub_bucsfr.py: spec 6.1/6.3 data and views; its data section on the sample."""
    c = load_config_file(os.path.join(REPO, "configs", "cub_bucsfr.py"))
    strong = dataclasses.replace(
        moco_v2_spec(), mean=(0.486, 0.499, 0.432), std=(0.232, 0.228, 0.267)
    )
    assert sorted(c.views) == ["view1", "view2"]
    for view in c.views:
        assert photometric_spec(c, view) == strong and tuple(c.views[view].crop_scale) == (0.2, 1)
    assert c.train.checkpoint_every_steps == 5994 // 256 and not c.data.get("crop_to_box")
    c.data.root = cub_root
    train = build_source(c.data, "train")
    assert train.coarse_level == "bucsfr" and train.num_coarse_classes == 24
