"""kind='dogs' on miniature Stanford Dogs layouts in tmp_path: .mat lists written in the
official structure (file_list: N x 1 cell of char arrays; labels: N x 1 uint8)."""

import os

import numpy as np
import pytest
from conftest import data_config
from PIL import Image
from scipy.io import loadmat, savemat

from fgjax.data.datasets import build_source
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError

FOLDERS = [f"n{2085620 + k:08d}-Breed_{k}" for k in range(120)]

VOC = """<annotation><filename>{stem}</filename><size><width>40</width><height>30</height>
<depth>3</depth></size>{objects}</annotation>"""
OBJECT = """<object><name>dog</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax>
<ymax>{}</ymax></bndbox></object>"""


def _write_list(path, files, labels):
    cells = np.empty((len(files), 1), object)
    cells[:, 0] = [np.array([f]) for f in files]
    stems = np.empty((len(files), 1), object)
    stems[:, 0] = [np.array([os.path.splitext(f)[0]]) for f in files]
    labels = np.array(labels, np.uint8).reshape(-1, 1)
    savemat(path, {"file_list": cells, "annotation_list": stems, "labels": labels})


@pytest.fixture
def mini(tmp_path):
    """Every breed: 2 train images and 1 test image; lists in lists/."""
    data = np.full((30, 40, 3), 90, np.uint8)
    split_files = {"train": [], "test": []}
    for k, folder in enumerate(FOLDERS):
        (tmp_path / "Images" / folder).mkdir(parents=True)
        for j, split in enumerate(("train", "train", "test")):
            name = f"{folder}/{folder[:9]}_{j}.jpg"
            Image.fromarray(data).save(tmp_path / "Images" / name)
            split_files[split].append((name, k + 1))
    (tmp_path / "lists").mkdir()
    for split, rows in split_files.items():
        _write_list(tmp_path / "lists" / f"{split}_list.mat", *zip(*rows, strict=True))
    return tmp_path


def test_mini_lists_have_the_official_structure(mini):
    mat = loadmat(mini / "lists" / "train_list.mat")
    assert mat["file_list"].shape == (240, 1) and mat["labels"].shape == (240, 1)
    assert mat["file_list"][0][0][0] == "n02085620-Breed_0/n02085620_0.jpg"


def test_mini_splits(mini):
    train = build_source(data_config("dogs", mini), "train")
    test = build_source(data_config("dogs", mini), "test")
    assert len(train) == 240 and len(test) == 120 and train.num_classes == 120
    assert train.labels.tolist() == [k for k in range(120) for _ in range(2)]
    assert test.labels.tolist() == list(range(120))
    assert train.class_names[:2] == ["Breed_0", "Breed_1"] and train.class_names == test.class_names
    assert os.path.relpath(test.paths[5], mini) == os.path.join(
        "Images", FOLDERS[5], "n02085625_2.jpg"
    )
    assert train.num_coarse_classes == 0 and "box" not in train[0]
    for name in ("train_list.mat", "test_list.mat"):  # lists.tar extracted at the root
        os.replace(mini / "lists" / name, mini / name)
    assert build_source(data_config("dogs", mini), "test").labels.tolist() == list(range(120))


def test_mini_boxes(mini):
    (mini / "Annotation").mkdir()
    for k, folder in enumerate(FOLDERS):
        (mini / "Annotation" / folder).mkdir()
        objects = OBJECT.format(3, 4, 20, 25) + (OBJECT.format(10, 2, 35, 12) if k == 0 else "")
        for j in range(3):
            stem = f"{folder[:9]}_{j}"
            (mini / "Annotation" / folder / stem).write_text(VOC.format(stem=stem, objects=objects))
    test = build_source(data_config("dogs", mini, crop_to_box=True), "test")
    # image 0 has two dogs: the box encloses both, 1-based corners (3, 2)..(35, 25)
    assert test[0]["box"] == (2.0, 1.0, 33.0, 24.0) and test[1]["box"] == (2.0, 3.0, 18.0, 22.0)
    os.remove(mini / "Annotation" / FOLDERS[7] / "n02085627_2")
    with pytest.raises(DatasetLayoutError, match=r"1 of the 120 .*Annotation/.*n02085627_2"):
        build_source(data_config("dogs", mini, crop_to_box=True), "test")
    (mini / "Annotation" / FOLDERS[7] / "n02085627_2").write_text("<annotation>")
    with pytest.raises(DatasetFormatError, match=r"n02085627_2: cannot read a VOC bndbox"):
        build_source(data_config("dogs", mini, crop_to_box=True), "test")


def test_mini_bad_inputs(mini):
    os.remove(mini / "Images" / FOLDERS[3] / "n02085623_1.jpg")
    with pytest.raises(DatasetLayoutError, match=r"1 of the 240 .*train_list.mat.*n02085623_1.jpg"):
        build_source(data_config("dogs", mini), "train")
    files = [f"{f}/{f[:9]}_2.jpg" for f in FOLDERS]
    _write_list(mini / "lists" / "test_list.mat", files, [*range(1, 120), 121])
    with pytest.raises(DatasetFormatError, match=r"test_list.mat: entry 120: id 121 .*1..120"):
        build_source(data_config("dogs", mini), "test")
    _write_list(mini / "lists" / "test_list.mat", files, [2, *range(2, 121)])
    with pytest.raises(
        DatasetFormatError,
        match=r"test_list.mat: entry 1: label 2 is folder .*Breed_0' here but .*Breed_1",
    ):
        build_source(data_config("dogs", mini), "test")
    with pytest.raises(
        DatasetLayoutError,
        match=r"lists/\).*missing: Images, train_list.mat, test_list.mat. Found there: n0208",
    ):
        build_source(data_config("dogs", mini / "Images"), "test")
