"""kind='flowers' on the real sample in ../shared/data (the 1,020 training images and
the official .mat files; skipped when absent) and on miniature layouts in tmp_path."""

import json
import os

import numpy as np
import pytest
from conftest import data_config, shared_path
from PIL import Image
from scipy.io import loadmat, savemat

from fgjax.data.datasets import build_source
from fgjax.data.datasets.flowers import BUCSFR_GROUPS, NAMES, bucsfr_level
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError


@pytest.fixture(scope="module")
def sample():
    return shared_path("flowers102")


def test_real_train_split(sample):
    src = build_source(data_config("flowers", sample), "train")
    labels = loadmat(os.path.join(sample, "imagelabels.mat"))["labels"][0]
    trnid = loadmat(os.path.join(sample, "setid.mat"))["trnid"][0]
    assert len(labels) == 8189 and len(src) == len(trnid) == 1020
    assert np.bincount(src.labels).tolist() == [10] * 102
    for path, y in zip(src.paths, src.labels, strict=True):
        image_id = int(os.path.basename(path)[6:11])  # image_NNNNN.jpg
        assert labels[image_id - 1] - 1 == y and image_id in trnid
    with open(os.path.join(sample, "cat_to_name.json")) as f:
        names = json.load(f)
    assert src.class_names == [names[str(k)] for k in range(1, 103)]
    assert [k for k in range(102) if src.class_names[k] != NAMES[k]] == [77]  # 'lotus lotus'
    assert src.coarse_level == "bucsfr" and src.num_coarse_classes == 12


def test_real_val_and_test_report_missing_images(sample):
    with pytest.raises(DatasetLayoutError, match=r"1020 of the 1020 .*setid.mat \(valid\)"):
        build_source(data_config("flowers", sample), "val")
    with pytest.raises(DatasetLayoutError, match=r"6149 of the 6149 .*setid.mat \(tstid\)"):
        build_source(data_config("flowers", sample), "test")
    with pytest.raises(DatasetLayoutError, match=r"1020 of the 2040 .*\(trnid\+valid\)"):
        build_source(data_config("flowers", sample), "trainval")


def test_bucsfr_groups_cover_every_class_once():
    members = [n for group in BUCSFR_GROUPS.values() for n in group]
    assert sorted(members) == sorted(NAMES) and len(members) == 102
    sizes = [len(g) for g in BUCSFR_GROUPS.values()]
    assert sizes == [7, 6, 5, 8, 8, 3, 8, 6, 9, 5, 15, 22]
    level = bucsfr_level()
    assert level.names[level.of_class[NAMES.index("monkshood")]] == "Others"
    assert level.names[level.of_class[1]] == "Orchids & Alstroemeria"  # label 2: pocket orchid


@pytest.fixture
def mini(tmp_path):
    """12 images, labels 1,2,3 repeating; trnid 1-3, valid 4-6, tstid 7-12 (image 12 absent
    from jpg/ only when a test removes it)."""
    labels = np.array([[1, 2, 3] * 4], np.uint8)
    savemat(tmp_path / "imagelabels.mat", {"labels": labels})
    ids = {"trnid": [1, 2, 3], "valid": [6, 5, 4], "tstid": [7, 8, 9, 10, 11, 12]}
    savemat(tmp_path / "setid.mat", {k: np.array([v], np.uint16) for k, v in ids.items()})
    (tmp_path / "jpg").mkdir()
    for i in range(1, 13):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(tmp_path / "jpg" / f"image_{i:05d}.jpg")
    return tmp_path


def test_mini_splits(mini):
    got = {
        s: build_source(data_config("flowers", mini), s)
        for s in ("train", "val", "test", "trainval")
    }
    assert [len(got[s]) for s in ("train", "val", "test", "trainval")] == [3, 3, 6, 6]
    assert got["val"].labels.tolist() == [2, 1, 0]  # setid order: images 6, 5, 4
    assert os.path.basename(got["val"].paths[0]) == "image_00006.jpg"
    assert got["test"].labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert got["trainval"].paths == got["train"].paths + got["val"].paths
    assert got["train"].class_names == list(NAMES)  # no cat_to_name.json
    assert got["train"].coarse_names[got["train"].coarse_labels[0]] == "Primroses & Phloxes"
    none = build_source(data_config("flowers", mini, coarse="none"), "train")
    assert none.num_coarse_classes == 0


def test_mini_bad_inputs(mini):
    os.remove(mini / "jpg" / "image_00012.jpg")
    with pytest.raises(DatasetLayoutError, match=r"1 of the 6 .*jpg/image_00012.jpg"):
        build_source(data_config("flowers", mini), "test")
    savemat(mini / "setid.mat", {"trnid": np.array([[1, 13]]), "valid": [[1]], "tstid": [[2]]})
    bad_id = r"setid.mat, variable 'trnid': entry 2: id 13 is outside 1..12"
    with pytest.raises(DatasetFormatError, match=bad_id):
        build_source(data_config("flowers", mini), "train")
    # An image listed twice (in one variable, or in both halves of trainval) was accepted.
    savemat(mini / "setid.mat", {"trnid": np.array([[1, 3, 1]]), "valid": [[2]], "tstid": [[4]]})
    with pytest.raises(DatasetFormatError, match=r"'trnid': entries 1 and 3 both list id 1"):
        build_source(data_config("flowers", mini), "train")
    savemat(mini / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": [[2, 3]], "tstid": [[4]]})
    with pytest.raises(DatasetFormatError, match=r"trnid\+valid: entries 2 and 4 both list id 3"):
        build_source(data_config("flowers", mini), "trainval")
    savemat(mini / "setid.mat", {"trnid": np.array([[1]])})
    with pytest.raises(DatasetFormatError, match=r"setid.mat: no variable 'valid'"):
        build_source(data_config("flowers", mini), "val")
    (mini / "cat_to_name.json").write_text(json.dumps({"1": "a", "2": "b"}))
    with pytest.raises(DatasetFormatError, match=r"cat_to_name.json: expected the keys '1'..'102'"):
        build_source(data_config("flowers", mini), "train")
    os.remove(mini / "imagelabels.mat")
    with pytest.raises(DatasetLayoutError, match=r"missing: imagelabels.mat. Found there: "):
        build_source(data_config("flowers", mini), "train")
