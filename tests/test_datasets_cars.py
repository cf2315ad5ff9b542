"""kind='cars': the devkit of the real sample in ../shared/data (skipped when absent) and
miniature copies of both layouts built in tmp_path."""

import os

import numpy as np
import pytest
from conftest import data_config, shared_path
from PIL import Image
from scipy.io import loadmat, savemat

from fgjax.data.datasets import build_source
from fgjax.data.datasets.cars import BODY_TYPES, body_type_level, make_of, read_devkit
from fgjax.data.decode import resize_center_crop
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError

CORNERS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


@pytest.fixture(scope="module")
def sample():
    return shared_path("cars196_sample")


def test_devkit_parse_on_real_sample(sample):
    kit = read_devkit(sample)
    raw = loadmat(os.path.join(sample, "devkit", "cars_train_annos.mat"))["annotations"][0]
    assert len(kit.class_names) == 196 and kit.class_names[0] == "AM General Hummer SUV 2000"
    assert kit.class_names[195] == "smart fortwo Convertible 2012"
    assert len(kit.train.fnames) == len(raw) == 8144 and kit.test is None  # no labelled test
    want = np.array([int(r["class"][0, 0]) - 1 for r in raw])
    np.testing.assert_array_equal(kit.train.labels, want)
    assert np.bincount(kit.train.labels).min() > 0 and kit.train.labels.max() == 195
    assert kit.train.fnames[:2] == ["00001.jpg", "00002.jpg"]
    x1, y1, x2, y2 = (int(raw[0][c][0, 0]) for c in CORNERS)  # 39 116 569 375
    np.testing.assert_array_equal(kit.train.boxes[0], [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1])


def test_body_types_and_makes_on_real_names(sample):
    names = read_devkit(sample).class_names
    level = body_type_level()
    assert level.names == [
        "Cab",
        "Sedan",
        "SUV",
        "Convertible",
        "Coupe",
        "Hatchback",
        "Wagon",
        "Van",
    ]
    assert np.bincount(level.of_class).tolist() == [18, 50, 36, 30, 29, 14, 6, 13]
    assert sorted(c for m in BODY_TYPES.values() for c in m) == list(range(196))
    # Independent check: every name that states a body word agrees with the table.
    words = [("Convertible",), ("Van", "Minivan"), ("Cab", "SuperCab"), ("Wagon",),
             ("Hatchback",), ("Coupe",), ("Sedan",), ("SUV",)]  # fmt: skip
    checked = 0
    for k, name in enumerate(names):
        for group in words:
            if set(group) & set(name.split()):
                assert level.names[level.of_class[k]] == group[0], name
                checked += 1
                break
    assert checked == 182
    makes = [make_of(n) for n in names]
    assert len(set(makes)) == 49
    assert makes[0] == "AM General" and makes[7:11] == ["Aston Martin"] * 4
    assert makes[153:155] == ["Land Rover"] * 2 and makes[174:177] == ["Rolls-Royce"] * 3
    assert makes[160] == "Mercedes-Benz" and makes[173] == "Ram" and makes[195] == "smart"


def test_real_sample_train_split_reports_missing_images(sample):
    present = len(os.listdir(os.path.join(sample, "cars_train")))
    msg = rf"{8144 - present} of the 8144 image files listed in devkit/cars_train_annos.mat"
    with pytest.raises(DatasetLayoutError, match=msg + r".*cars_train/00017.jpg"):
        build_source(data_config("cars", sample), "train")
    # A subset on purpose: the listed images that are present, the others counted and named.
    subset = build_source(data_config("cars", sample, allow_missing=True), "train")
    assert len(subset) == present and len(subset.missing) == 8144 - present
    assert "cars_train/00017.jpg" in subset.missing
    assert all(os.path.isfile(os.path.join(sample, p)) for p in subset.paths)
    with pytest.raises(DatasetLayoutError, match=r"needs the labelled test annotations"):
        build_source(data_config("cars", sample), "test")


NAMES = [f"Make{k % 5} Model{k} Sedan 2012" for k in range(196)]


def _write_annos(path, rows, labelled=True):
    """A cars_*_annos.mat struct array in the devkit's own field layout and types."""
    fields = [*CORNERS, *(["class"] if labelled else []), "fname"]
    annos = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for k, row in enumerate(rows):
        for f in fields:
            annos[f][0, k] = np.array([row[f]]) if f == "fname" else np.array([[row[f]]], np.uint16)
    savemat(path, {"annotations": annos})


def _jpeg(path, box=None):
    """A 40x30 dark JPEG; white inside `box` (0-based left, top, right, bottom)."""
    img = np.full((30, 40, 3), 20, np.uint8)
    if box is not None:
        img[box[1] : box[3], box[0] : box[2]] = 255
    Image.fromarray(img).save(path, quality=95)


def _rows(labels, start=1):
    box = {"bbox_x1": 11, "bbox_y1": 6, "bbox_x2": 30, "bbox_y2": 25}
    return [{**box, "class": c, "fname": f"{k:05d}.jpg"} for k, c in enumerate(labels, start)]


@pytest.fixture
def mini(tmp_path):
    """Train: 2 images each of classes 1, 2, 98, 99, 196; test: 1 image each of 1, 99, 150."""
    (tmp_path / "devkit").mkdir()
    names = np.empty((1, 196), object)
    names[0, :] = [np.array([n]) for n in NAMES]
    savemat(tmp_path / "devkit" / "cars_meta.mat", {"class_names": names})
    train, test = _rows([1, 1, 2, 2, 98, 98, 99, 99, 196, 196]), _rows([1, 99, 150])
    _write_annos(tmp_path / "devkit" / "cars_train_annos.mat", train)
    _write_annos(tmp_path / "devkit" / "cars_test_annos.mat", test, labelled=False)
    _write_annos(tmp_path / "cars_test_annos_withlabels.mat", test)
    for folder, rows in (("cars_train", train), ("cars_test", test)):
        (tmp_path / folder).mkdir()
        for row in rows:
            _jpeg(tmp_path / folder / row["fname"], box=(10, 5, 30, 25))
    return tmp_path


def test_mini_devkit_matches_real_structure(sample, mini):
    real = loadmat(os.path.join(sample, "devkit", "cars_train_annos.mat"))["annotations"]
    ours = loadmat(mini / "devkit" / "cars_train_annos.mat")["annotations"]
    assert real.dtype.names == ours.dtype.names and real.shape[0] == ours.shape[0] == 1
    meta = loadmat(os.path.join(sample, "devkit", "cars_meta.mat"))["class_names"]
    assert loadmat(mini / "devkit" / "cars_meta.mat")["class_names"].shape == meta.shape


def test_mini_splits_end_to_end(mini):
    train = build_source(data_config("cars", mini), "train")
    test = build_source(data_config("cars", mini), "test")
    assert train.labels.tolist() == [0, 0, 1, 1, 97, 97, 98, 98, 195, 195]
    assert test.labels.tolist() == [0, 98, 149]
    assert [os.path.relpath(p, mini) for p in test.paths] == [
        os.path.join("cars_test", f"{k:05d}.jpg") for k in (1, 2, 3)
    ]
    assert train.class_names == NAMES and train.coarse_level == "type"
    types = [train.coarse_names[c] for c in train.coarse_labels]  # 0: the Hummer
    assert types == ["SUV"] * 2 + ["Sedan"] * 2 + ["Hatchback"] * 4 + ["Convertible"] * 2
    make = build_source(data_config("cars", mini, coarse="make"), "train")
    assert make.num_coarse_classes == 5 and make.coarse_names[make.coarse_labels[0]] == "Make0"
    rtr = build_source(data_config("cars", mini), "retrieval_train")
    rte = build_source(data_config("cars", mini), "retrieval_test")
    assert sorted(rtr.labels.tolist()) == [0, 0, 0, 1, 1, 97, 97]  # classes 1-98, both parts
    assert sorted(rte.labels.tolist()) == [98, 98, 98, 149, 195, 195]
    assert rtr.num_classes == rte.num_classes == 196


def test_mini_boxes_crop_the_evaluation_image(mini):
    boxed = build_source(data_config("cars", mini, crop_to_box=True), "train")
    # devkit corners (11, 6, 30, 25) are 1-based inclusive: pixels 10..29 x 5..24
    assert boxed[0]["box"] == (10.0, 5.0, 20.0, 20.0)
    inside = resize_center_crop(boxed[0], image_size=16)
    assert inside.mean() > 235  # all white box
    plain = build_source(data_config("cars", mini), "train")
    assert "box" not in plain[0] and resize_center_crop(plain[0], image_size=16).mean() < 200


def test_mini_missing_image_and_unlabelled_test_annos(mini):
    os.remove(mini / "cars_train" / "00003.jpg")
    with pytest.raises(DatasetLayoutError, match=r"1 of the 10 .*cars_train_annos.mat.*00003"):
        build_source(data_config("cars", mini), "train")
    subset = build_source(data_config("cars", mini, allow_missing=True), "train")
    whole = build_source(data_config("cars", mini, allow_missing=True), "test")
    assert len(subset) == 9 and subset.missing == [os.path.join("cars_train", "00003.jpg")]
    assert whole.missing == [] and "cars_train/00003.jpg" not in "".join(subset.paths)
    from types import SimpleNamespace

    from fgjax.train.loop import _record_missing

    _record_missing(str(mini), SimpleNamespace(sources={"train": subset, "test": whole}))
    assert (mini / "missing_images.txt").read_text() == "train: cars_train/00003.jpg\n"
    os.replace(mini / "devkit" / "cars_test_annos.mat", mini / "cars_test_annos_withlabels.mat")
    with pytest.raises(DatasetFormatError, match=r"withlabels.mat: .*no 'class' field.*labelled"):
        build_source(data_config("cars", mini), "test")
    os.remove(mini / "cars_test_annos_withlabels.mat")
    with pytest.raises(DatasetLayoutError, match=r"needs the labelled .*withlabels.mat"):
        build_source(data_config("cars", mini), "retrieval_test")


def test_mini_malformed_annotations_name_file_and_entry(mini):
    path = mini / "devkit" / "cars_train_annos.mat"
    rows = _rows([1, 2, 197])
    _write_annos(path, rows)
    with pytest.raises(DatasetFormatError, match=r"cars_train_annos.mat: entry 3: id 197 .*1..196"):
        build_source(data_config("cars", mini), "train")
    rows[2].update({"class": 3, "bbox_x2": 5})
    _write_annos(path, rows)
    with pytest.raises(DatasetFormatError, match=r"cars_train_annos.mat: entry 3: box corners"):
        build_source(data_config("cars", mini), "train")
    savemat(path, {"annos": np.zeros(3)})
    with pytest.raises(DatasetFormatError, match=r"no variable 'annotations'; found \['annos'\]"):
        build_source(data_config("cars", mini), "train")


def test_wrong_root_names_both_layouts(tmp_path, mini):
    with pytest.raises(
        DatasetLayoutError, match=r"devkit/cars_meta.mat.*train/<class>.*Found there: 00001.jpg"
    ):
        build_source(data_config("cars", mini / "cars_train"), "train")


def test_image_folder_layout(tmp_path):
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Aston Martin Virage Coupe 2012"]
    for split, count in (("train", 2), ("test", 1)):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(count):
                _jpeg(tmp_path / split / name / f"{k}.jpg")
    train = build_source(data_config("cars", tmp_path), "train")
    assert len(train) == 6 and train.class_names == sorted(names) and train.root == str(tmp_path)
    assert train.coarse_level == "make" and train.coarse_names == [
        "AM General",
        "Acura",
        "Aston Martin",
    ]
    assert os.path.relpath(train.paths[0], tmp_path) == os.path.join(
        "train", sorted(names)[0], "0.jpg"
    )
    rte = build_source(data_config("cars", tmp_path), "retrieval_test")  # classes 2-3 of 3
    assert sorted(rte.labels.tolist()) == [1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match=r"coarse='type'.*devkit's class order"):
        build_source(data_config("cars", tmp_path, coarse="type"), "train")


def test_data_prep_writes_the_original_repos_layout(mini, tmp_path):
    """data_prep/cars_to_image_folder.py: official train/test -> class-name folders that
    kind image_folder reads back with the same labels; --crop-to-box writes the boxes."""
    from data_prep.cars_to_image_folder import main
    from fgjax.data.export import folder_name

    out = tmp_path / "folders"
    assert main(["--root", str(mini), "--out", str(out)]) == {"train": 10, "test": 3}
    back = build_source(data_config("image_folder", out), "train")
    # labels index the classes of both splits; the train images hold these five
    assert {back.class_names[label] for label in back.labels} == {
        folder_name(NAMES[c]) for c in (0, 1, 97, 98, 195)
    }
    assert sorted(np.unique(back.labels, return_counts=True)[1].tolist()) == [2] * 5
    boxed = tmp_path / "boxed"
    main(["--root", str(mini), "--out", str(boxed), "--crop-to-box"])
    with Image.open(build_source(data_config("image_folder", boxed), "test").paths[0]) as im:
        assert im.size == (20, 20) and np.asarray(im).mean() > 235
