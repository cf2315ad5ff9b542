"""kind='aircraft' on miniature FGVC-Aircraft 2013b layouts in tmp_path (4 variants,
3 families, 2 manufacturers; one image per variant in each of train / val / test)."""

import os

import numpy as np
import pytest
from conftest import data_config
from PIL import Image

from fgjax.data.datasets import build_source
from fgjax.data.decode import resize_center_crop
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError

VARIANTS = ["707-320", "727-200", "A318", "A319"]
FAMILY = {"707-320": "Boeing 707", "727-200": "Boeing 727", "A318": "A320", "A319": "A320"}
MAKER = {"707-320": "Boeing", "727-200": "Boeing", "A318": "Airbus", "A319": "Airbus"}
FAMILIES = ["Boeing 707", "Boeing 727", "A320"]
MAKERS = ["Airbus", "Boeing"]  # file order, not alphabetical
PARTS = {"train": 0, "val": 1, "test": 2}


def _image_id(part, v):
    return f"{1000000 + 10 * PARTS[part] + v:07d}"


def _write_lists(data, level, lookup):
    parts = {p: [(_image_id(p, v), lookup(name)) for v, name in enumerate(VARIANTS)] for p in PARTS}
    parts["trainval"] = parts["train"] + parts["val"]
    for part, rows in parts.items():
        (data / f"images_{level}_{part}.txt").write_text("".join(f"{i} {n}\n" for i, n in rows))


@pytest.fixture
def mini(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(VARIANTS) + "\n")
    (data / "families.txt").write_text("\n".join(FAMILIES) + "\n")
    (data / "manufacturers.txt").write_text("\n".join(MAKERS) + "\n")
    _write_lists(data, "variant", lambda n: n)
    _write_lists(data, "family", FAMILY.get)
    _write_lists(data, "manufacturer", MAKER.get)
    # 40x52: dark above, a white 20-row banner at the bottom (from row 32, an MCU edge)
    img = np.full((52, 40, 3), 40, np.uint8)
    img[32:] = 255
    boxes = []
    for part in PARTS:
        for v in range(4):
            Image.fromarray(img).save(data / "images" / f"{_image_id(part, v)}.jpg", quality=95)
            boxes.append(f"{_image_id(part, v)} {v + 1} 2 {v + 30} 25\n")
    (data / "images_box.txt").write_text("".join(boxes))
    return tmp_path


def test_mini_splits_and_coarse_levels(mini):
    data = mini / "fgvc-aircraft-2013b" / "data"
    got = {
        s: build_source(data_config("aircraft", mini), s)
        for s in ("train", "val", "trainval", "test")
    }
    assert [len(got[s]) for s in ("train", "val", "trainval", "test")] == [4, 4, 8, 4]
    assert got["test"].labels.tolist() == [0, 1, 2, 3] and got["test"].class_names == VARIANTS
    assert got["trainval"].labels.tolist() == [0, 1, 2, 3] * 2
    assert os.path.relpath(got["val"].paths[2], data) == os.path.join("images", "1000012.jpg")
    train = got["train"]
    assert train.coarse_level == "manufacturer" and train.coarse_names == MAKERS
    assert [MAKERS[c] for c in train.coarse_labels] == [MAKER[v] for v in VARIANTS]
    family = build_source(data_config("aircraft", mini, coarse="family"), "test")
    assert family.coarse_names == FAMILIES
    assert [FAMILIES[c] for c in family.coarse_labels] == [FAMILY[v] for v in VARIANTS]
    rtr = build_source(data_config("aircraft", mini), "retrieval_train")
    rte = build_source(data_config("aircraft", mini), "retrieval_test")
    assert sorted(rtr.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # every image of variants 1-2
    assert sorted(rte.labels.tolist()) == [2, 2, 2, 3, 3, 3]
    for root in (mini / "fgvc-aircraft-2013b", data):  # the other accepted roots
        assert build_source(data_config("aircraft", root), "test").paths == got["test"].paths


def test_mini_banner_is_trimmed_and_boxes(mini):
    src = build_source(data_config("aircraft", mini), "test")
    assert src[0]["trim_bottom"] == 20 and "box" not in src[0]
    assert resize_center_crop(src[0], image_size=16).max() < 100  # no banner pixel
    untrimmed = {k: v for k, v in src[0].items() if k != "trim_bottom"}
    assert resize_center_crop(untrimmed, image_size=16).max() > 200
    boxed = build_source(data_config("aircraft", mini, crop_to_box=True), "test")
    # image of variant 2 (index 1): corners (2, 2, 31, 25), 1-based inclusive
    assert boxed[1]["box"] == (1.0, 1.0, 30.0, 24.0) and boxed[1]["trim_bottom"] == 20
    box_file = mini / "fgvc-aircraft-2013b" / "data" / "images_box.txt"
    box_file.write_text("".join(box_file.read_text().splitlines(True)[:9]))
    with pytest.raises(
        DatasetFormatError, match=r"images_box.txt: no box for image\(s\) \['1000021', "
    ):
        build_source(data_config("aircraft", mini, crop_to_box=True), "test")


def test_mini_bad_inputs(mini):
    data = mini / "fgvc-aircraft-2013b" / "data"
    os.remove(data / "images" / "1000003.jpg")
    with pytest.raises(
        DatasetLayoutError, match=r"1 of the 4 .*images_variant_train.txt.*1000003.jpg"
    ):
        build_source(data_config("aircraft", mini), "train")
    family_test = data / "images_family_test.txt"
    family_test.write_text(family_test.read_text().replace("1000023 A320", "1000023 Boeing 727"))
    with pytest.raises(
        DatasetFormatError,
        match=r"family_test.txt: image 1000023: variant 'A319' has family 'Boeing 727', but 'A320'",
    ):
        build_source(data_config("aircraft", mini), "test")
    (data / "images_variant_val.txt").write_text("1000010 707-320\n1000011 757-200\n")
    with pytest.raises(
        DatasetFormatError, match=r"variant_val.txt: line 2: '757-200' is not in .*variants.txt"
    ):
        build_source(data_config("aircraft", mini), "val")
    (data / "images_variant_val.txt").write_text("1000010\n")
    with pytest.raises(
        DatasetFormatError, match=r"variant_val.txt: line 1: expected 2 fields, got 1"
    ):
        build_source(data_config("aircraft", mini), "val")
    os.remove(data / "families.txt")
    with pytest.raises(
        DatasetLayoutError, match=r"fgvc-aircraft-2013b/data/ .*missing: families.txt"
    ):
        build_source(data_config("aircraft", mini), "test")
    with pytest.raises(
        DatasetLayoutError, match=r"missing: variants.txt.*Found there: 1000000.jpg"
    ):
        build_source(data_config("aircraft", data / "images"), "test")


def test_data_prep_writes_the_original_repos_layout(mini, tmp_path):
    """data_prep/aircraft_to_image_folder.py: trainval -> train/, test -> test/, one folder
    per variant, read back by kind image_folder with the same images; --trim-banner cuts
    the 20 px banner off the written files."""
    from data_prep.aircraft_to_image_folder import main

    out = tmp_path / "folders"
    assert main(["--root", str(mini), "--out", str(out)]) == {"train": 8, "test": 4}
    back = build_source(data_config("image_folder", out), "train")
    assert back.class_names == sorted(VARIANTS) and np.bincount(back.labels).tolist() == [2] * 4
    with Image.open(back.paths[0]) as im:
        assert im.size == (40, 52)
    trimmed = tmp_path / "trimmed"
    main(["--root", str(mini), "--out", str(trimmed), "--trim-banner"])
    test = build_source(data_config("image_folder", trimmed), "test")
    with Image.open(test.paths[0]) as im:
        assert im.size == (40, 32) and np.asarray(im).mean() < 60  # no white banner
