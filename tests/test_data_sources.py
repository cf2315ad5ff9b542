"""Sources: image folders, CSV manifests, build_source, and the procedural dataset."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from fgjax.config import data_config
from fgjax.data import procedural
from fgjax.data.datasets import build_source
from fgjax.data.decode import sample_crop
from fgjax.data.procedural import ProceduralFineGrained
from fgjax.data.sources import COARSE_RULES, CsvManifestSource, ImageFolderSource


def _write_image(path, value=0, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "birds"
    # Deliberately created out of order; labels must follow sorted folder names.
    for cls, files in {
        "003.Cape_May_Warbler": ["b.png", "a.jpg"],
        "001.Black_footed_Albatross": ["x.jpeg"],
        "002.Laysan_Albatross": ["y.PNG", "z.jpg"],
    }.items():
        for f in files:
            _write_image(root / "train" / cls / f)
    (root / "train" / "001.Black_footed_Albatross" / "notes.txt").write_text("not an image")
    _write_image(root / "test" / "001.Black_footed_Albatross" / "t.jpg")
    return root


def test_image_folder_labels_are_sorted_class_folders(folder_root):
    src = ImageFolderSource(str(folder_root), "train")
    assert src.class_names == [
        "001.Black_footed_Albatross",
        "002.Laysan_Albatross",
        "003.Cape_May_Warbler",
    ]
    assert src.num_classes == 3 and src.num_coarse_classes == 0
    assert len(src) == 5  # notes.txt ignored, .PNG accepted
    recs = [src[i] for i in range(len(src))]
    assert [r["label"] for r in recs] == [0, 1, 1, 2, 2]
    assert [r["index"] for r in recs] == list(range(5))
    assert all(r["coarse_label"] == -1 for r in recs)
    assert recs[3]["path"].endswith("003.Cape_May_Warbler/a.jpg")  # files sorted too
    assert src.root == str(folder_root)  # the folder the paths hang from (parallel views)
    assert recs[3]["path"] == str(folder_root / "train" / "003.Cape_May_Warbler" / "a.jpg")
    assert ImageFolderSource(folder_root, "train").root == str(folder_root)  # a Path is fine
    np.testing.assert_array_equal(src.labels, [0, 1, 1, 2, 2])
    assert src[-1]["index"] == 4
    with pytest.raises(IndexError):
        src[5]


def test_image_folder_coarse_labels(folder_root):
    src = ImageFolderSource(str(folder_root), "train", coarse="last_word")
    assert src.coarse_names == ["Albatross", "Warbler"]
    assert src.num_coarse_classes == 2
    assert [src[i]["coarse_label"] for i in range(5)] == [0, 0, 0, 1, 1]


def test_coarse_rules():
    assert COARSE_RULES["last_word"]("001.Black_footed_Albatross") == "Albatross"
    assert COARSE_RULES["last_word"]("Cape_May_Warbler") == "Warbler"
    assert COARSE_RULES["first_word"]("AM General Hummer SUV 2000") == "AM"
    assert COARSE_RULES["first_word"]("Aston Martin V8 Vantage Convertible 2012") == "Aston"


def test_image_folder_errors_name_the_folder(folder_root):
    with pytest.raises(FileNotFoundError, match="val"):
        ImageFolderSource(str(folder_root), "val")
    (folder_root / "train" / "004.Empty").mkdir()
    with pytest.raises(FileNotFoundError, match="004.Empty"):
        ImageFolderSource(str(folder_root), "train")
    (folder_root / "empty_split").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_split"):
        ImageFolderSource(str(folder_root), "empty_split")


def _write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_csv_manifest_int_labels_split_and_relative_paths(tmp_path):
    for name in ["a.png", "b.png", "c.png", "sub/d.png"]:
        _write_image(tmp_path / name)
    csv_path = _write_csv(
        tmp_path / "m.csv",
        "path,label,coarse_label,split\n"
        "a.png,2,0,train\n"
        "b.png,0,1,test\n"
        "c.png,1,1,train\n"
        f"{tmp_path / 'sub/d.png'},4,0,train\n",
    )
    train = CsvManifestSource(csv_path, split="train")
    assert len(train) == 3
    assert [train[i]["label"] for i in range(3)] == [2, 1, 4]
    assert [train[i]["coarse_label"] for i in range(3)] == [0, 1, 0]
    assert train[0]["path"] == str(tmp_path / "a.png")  # relative to the CSV's folder
    assert train.root == str(tmp_path)
    assert train[2]["path"] == str(tmp_path / "sub/d.png")  # absolute kept
    assert train.num_classes == 5 and train.num_coarse_classes == 2
    test = CsvManifestSource(csv_path, split="test")
    assert len(test) == 1 and test[0]["label"] == 0 and test.num_classes == 5
    everything = CsvManifestSource(csv_path)
    assert len(everything) == 4
    # config.data.coarse reaches the CSV kind: 'none' drops the column's level.
    config = data_config("csv", csv_path, coarse="none")
    without = build_source(config, "train")
    assert without.num_coarse_classes == 0 and without[0]["coarse_label"] == -1
    assert build_source(data_config("csv", csv_path), "train").num_coarse_classes == 2


def test_csv_manifest_string_labels_root_and_no_split_column(tmp_path):
    images = tmp_path / "imgs"
    for name in ["a.png", "b.png", "c.png"]:
        _write_image(images / name)
    (tmp_path / "lists").mkdir()
    csv_path = _write_csv(
        tmp_path / "lists" / "m.csv",
        "label,path\nWren,a.png\nAlbatross,b.png\nWren,c.png\n",
    )
    src = CsvManifestSource(csv_path, split="train", root=str(images))
    assert src.class_names == ["Albatross", "Wren"]
    assert [src[i]["label"] for i in range(3)] == [1, 0, 1]
    assert src[0]["coarse_label"] == -1 and src.num_coarse_classes == 0
    assert src[1]["path"] == str(images / "b.png")
    assert src.root == str(images)


def test_csv_manifest_errors_name_file_row_and_column(tmp_path):
    _write_image(tmp_path / "a.png")
    bad = _write_csv(tmp_path / "nolabel.csv", "path,split\na.png,train\n")
    with pytest.raises(ValueError, match=r"nolabel\.csv: row 1.*'label'"):
        CsvManifestSource(bad)
    missing = _write_csv(tmp_path / "missing.csv", "path,label\na.png,0\nnope.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv: row 3, column 'path'.*nope\.png"):
        CsvManifestSource(missing)
    assert len(CsvManifestSource(missing, check_files=False)) == 2
    empty = _write_csv(tmp_path / "empty.csv", "path,label\na.png,0\na.png,\n")
    with pytest.raises(ValueError, match=r"empty\.csv: row 3, column 'label'"):
        CsvManifestSource(empty)
    ragged = _write_csv(tmp_path / "ragged.csv", "path,label\na.png,0,extra\n")
    with pytest.raises(ValueError, match=r"ragged\.csv: row 2"):
        CsvManifestSource(ragged)
    negative = _write_csv(tmp_path / "neg.csv", "path,label\na.png,-1\n")
    with pytest.raises(ValueError, match=r"neg\.csv: row 2, column 'label'"):
        CsvManifestSource(negative)
    split = _write_csv(tmp_path / "split.csv", "path,label,split\na.png,0,train\n")
    with pytest.raises(ValueError, match=r"split\.csv.*'split'.*'val'"):
        CsvManifestSource(split, split="val")
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        CsvManifestSource(str(tmp_path / "absent.csv"))
    # '1O' typed for '10' is not a 12th class: the row is named.
    typo = _write_csv(tmp_path / "typo.csv", "path,label\na.png,0\na.png,1O\na.png,10\n")
    with pytest.raises(ValueError, match=r"typo\.csv: row 3, column 'label': '1O' is not an int"):
        CsvManifestSource(typo)
    extra = _write_csv(tmp_path / "extra.csv", "path,label,weight\na.png,0,1\n")
    with pytest.raises(ValueError, match=r"extra\.csv: row 1 \(header\): unknown column.*weight"):
        CsvManifestSource(extra)
    two = _write_csv(tmp_path / "two.csv", "path,label,coarse_label\na.png,0,0\na.png,0,1\n")
    with pytest.raises(ValueError, match=r"two\.csv: row 3, column 'coarse_label': class 0"):
        CsvManifestSource(two)
    # One image twice in a split, or with two labels anywhere, was accepted silently.
    _write_image(tmp_path / "b.png")
    twice = _write_csv(tmp_path / "twice.csv", "path,label,split\na.png,0,train\n./a.png,0,train\n")
    with pytest.raises(ValueError, match=r"twice\.csv: rows 2 and 3: './a.png' is listed twice"):
        CsvManifestSource(twice, split="train")
    apart = _write_csv(tmp_path / "apart.csv", "path,label,split\na.png,0,train\na.png,0,test\n")
    assert len(CsvManifestSource(apart, split="train")) == 1  # one per split: allowed
    labels = "path,label,split\nb.png,0,train\na.png,1,train\na.png,0,test\n"
    with pytest.raises(ValueError, match=r"rows 3 and 4: 'a.png' has two labels \('1' and '0'\)"):
        CsvManifestSource(_write_csv(tmp_path / "labels.csv", labels), split="train")


def test_csv_manifest_with_a_byte_order_mark_reads_its_header(tmp_path):
    _write_image(tmp_path / "a.png")
    path = tmp_path / "bom.csv"  # as spreadsheet programs export UTF-8
    path.write_bytes("\ufeffpath,label\na.png,7\n".encode())
    source = CsvManifestSource(str(path))
    assert len(source) == 1 and source.labels.tolist() == [7]


def test_build_source_dispatch(folder_root, tmp_path):
    cfg = ml_collections.ConfigDict(
        {
            "kind": "image_folder",
            "root": str(folder_root),
            "csv_root": "",
            "coarse": "last_word",
            "procedural": {"num_coarse": 2, "fine_per_coarse": 4, "images_per_class": 3},
        }
    )
    src = build_source(cfg, "train")
    assert isinstance(src, ImageFolderSource) and src.num_coarse_classes == 2

    cfg.kind = "procedural"
    proc = build_source(cfg, "test")
    assert isinstance(proc, ProceduralFineGrained)
    assert proc.num_classes == 4 and len(proc) == 12

    _write_image(tmp_path / "imgs" / "a.png")
    cfg.kind, cfg.coarse = "csv", ""  # a CSV's only level is its coarse_label column
    cfg.root = _write_csv(tmp_path / "m.csv", "path,label,split\na.png,0,train\n")
    cfg.csv_root = str(tmp_path / "imgs")
    csv_src = build_source(cfg, "train")
    assert isinstance(csv_src, CsvManifestSource) and csv_src[0]["path"].endswith("imgs/a.png")

    cfg.kind = "no_such_dataset"
    with pytest.raises(ValueError, match=r"config\.data\.kind"):
        build_source(cfg, "train")


# ------------------------------------------------------------------------- procedural


def test_procedural_records_and_splits():
    kw = dict(num_coarse=3, fine_per_coarse=6, images_per_class=5, image_size=24, seed=3)
    train = ProceduralFineGrained("train", **kw)
    test = ProceduralFineGrained("test", **kw)
    assert train.num_classes == 9 and test.num_classes == 9 and len(train) == 45
    assert train.num_coarse_classes == 3
    assert not set(train.class_names) & set(test.class_names)  # disjoint fine classes
    # Within a coarse class, every fine class has its own detail code.
    all_ = ProceduralFineGrained("all", **kw)
    assert len(set(all_.class_names)) == 18
    assert set(all_.class_names) == set(train.class_names) | set(test.class_names)
    rec = train[7]
    assert rec["image"].shape == (24, 24, 3) and rec["image"].dtype == np.uint8
    assert rec["label"] == 1 and rec["index"] == 7 and rec["coarse_label"] == 0
    assert [test[i]["coarse_label"] for i in (0, 15, 44)] == [0, 1, 2]
    assert sorted({test[i]["label"] for i in range(len(test))}) == list(range(9))
    # Deterministic, seed-dependent, distinct images.
    again = ProceduralFineGrained("train", **kw)
    np.testing.assert_array_equal(again[7]["image"], rec["image"])
    other = ProceduralFineGrained("train", **{**kw, "seed": 4})
    assert not np.array_equal(other[7]["image"], rec["image"])
    assert not np.array_equal(train[8]["image"], rec["image"])
    with pytest.raises(ValueError):
        ProceduralFineGrained("val")
    with pytest.raises(ValueError):
        ProceduralFineGrained("test", holdout_fraction=0.0)


def test_procedural_fine_classes_differ_only_in_small_details():
    """Same nuisances, different fine code: pixels differ only where the markings are."""
    s = 32
    a, det_a = procedural.render("square", ("disc", 1, "none"), s, np.random.default_rng(5))
    b, det_b = procedural.render("square", ("ring", 3, "low"), s, np.random.default_rng(5))
    c, _ = procedural.render("triangle", ("disc", 1, "none"), s, np.random.default_rng(5))
    changed = np.abs(a.astype(int) - b.astype(int)).max(-1) > 0
    assert changed.any()
    assert not (changed & (np.maximum(det_a, det_b) == 0)).any()
    assert changed.mean() < 0.1  # a small detail
    assert (np.abs(a.astype(int) - c.astype(int)).max(-1) > 0).mean() > 2 * changed.mean()


def _recall_at_1(features, labels):
    f = features - features.mean(0)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(labels[sim.argmax(1)] == labels))


def test_procedural_fine_detail_is_not_the_dominant_pixel_statistic():
    ds = ProceduralFineGrained("test", images_per_class=20)
    x = np.stack([ds[i]["image"] for i in range(len(ds))]).astype(np.float32) / 255
    # Raw pixels (a stand-in for an untrained network) and per-image colour statistics.
    r1_pixels = _recall_at_1(x.reshape(len(x), -1), ds.labels)
    r1_colour = _recall_at_1(np.concatenate([x.mean((1, 2)), x.std((1, 2))], 1), ds.labels)
    assert r1_pixels < 0.6, r1_pixels
    assert r1_colour < 0.3, r1_colour
    # The coarse level (gross shape) is easier than the fine level.
    assert _recall_at_1(x.reshape(len(x), -1), ds.coarse_labels) > r1_pixels


def test_procedural_detail_survives_random_resized_crop():
    ds = ProceduralFineGrained("train", images_per_class=10)
    rng = np.random.default_rng(0)
    visible = []
    for i in range(0, len(ds), 3):
        _, detail = ds.render(i)
        for _ in range(5):
            top, left, h, w = sample_crop(rng, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3))
            inside = detail[top : top + h, left : left + w].sum()
            visible.append(inside / detail.sum() >= 0.75)
    assert np.mean(visible) > 0.6, np.mean(visible)


def test_procedural_nuisance_scale_shrinks_within_class_variation():
    def within_class_std(nuisance):
        ds = ProceduralFineGrained("train", images_per_class=12, nuisance=nuisance)
        x = np.stack([ds[i]["image"] for i in range(len(ds))]).astype(np.float32)
        return x.reshape(ds.num_classes, 12, -1).std(axis=1).mean()

    assert within_class_std(0.0) < 0.8 * within_class_std(1.0)
    with pytest.raises(ValueError, match="nuisance"):
        ProceduralFineGrained("train", nuisance=1.5)


def test_image_folder_labels_follow_class_names_across_splits(tmp_path):
    for split, classes in (("train", "abcd"), ("test", "bcde")):
        for name in classes:
            _write_image(tmp_path / split / name / "0.png")
    train = ImageFolderSource(str(tmp_path), "train")
    test = ImageFolderSource(str(tmp_path), "test")
    assert train.class_names == test.class_names == list("abcde")
    assert train.labels.tolist() == [0, 1, 2, 3] and test.labels.tolist() == [1, 2, 3, 4]
