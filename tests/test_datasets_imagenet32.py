"""kind 'imagenet32' on a miniature copy of the downsampled-ImageNet npz batches, with and
without MaskCon's two JSON mapping files."""

import json
import os
import pickle

import numpy as np
import pytest
from conftest import data_config

from fgjax.data.datasets import build_source
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError


def _write_npz(path, rng, n):
    labels = rng.integers(1, 1001, n)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    np.savez(path, data=data, labels=labels.tolist(), mean=np.zeros(3072))
    return data, labels


@pytest.fixture
def in32_root(tmp_path):
    """The official two zips extracted side by side: 10 x 2 train images, 3 val images."""
    rng = np.random.default_rng(0)
    (tmp_path / "Imagenet32_train_npz").mkdir()
    (tmp_path / "Imagenet32_val_npz").mkdir()
    train = [
        _write_npz(tmp_path / "Imagenet32_train_npz" / f"train_data_batch_{k}.npz", rng, 2)
        for k in range(1, 11)
    ]
    val = _write_npz(tmp_path / "Imagenet32_val_npz" / "val_data.npz", rng, 3)
    return tmp_path, train, val


def _maskcon_files(root, seed=1):
    rng = np.random.default_rng(seed)
    to_fine = rng.permutation(1000)
    to_coarse = rng.integers(0, 12, 1000)
    (root / "imagenet32_to_fine.json").write_text(
        json.dumps({str(k): int(v) for k, v in enumerate(to_fine)})
    )
    (root / "imagenet_fine_to_coarse.json").write_text(
        json.dumps({str(k): int(v) for k, v in enumerate(to_coarse)})
    )
    return to_fine, to_coarse


def test_labels_pixels_and_splits_without_coarse(in32_root):
    root, train, val = in32_root
    src = build_source(data_config("imagenet32", root), "train")
    assert len(src) == 20 and src.num_classes == 1000
    want = np.concatenate([labels for _, labels in train]) - 1
    np.testing.assert_array_equal(src.labels, want)
    assert src.num_coarse_classes == 0 and set(src.coarse_labels) == {-1}
    # record 13 = batch 7, row 1; pixel (y, x) channel c sits at c*1024 + y*32 + x
    img, row = src[13]["image"], train[6][0][1]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    for y, x, c in [(0, 0, 0), (9, 30, 1), (31, 31, 2)]:
        assert img[y, x, c] == row[c * 1024 + y * 32 + x]
    assert src.class_names[src.labels[13]] == str(train[6][1][1])  # names: labels in the files
    for split in ("val", "test"):  # 'test' reads the val set
        v = build_source(data_config("imagenet32", root), split)
        np.testing.assert_array_equal(v.labels, val[1] - 1)
        np.testing.assert_array_equal(
            v[2]["image"][4, 5], val[0][2][[4 * 32 + 5 + c * 1024 for c in range(3)]]
        )
    with pytest.raises(DatasetLayoutError, match=r"coarse='maskcon' needs imagenet32_to_fine"):
        build_source(data_config("imagenet32", root, coarse="maskcon"), "train")


def test_maskcon_remaps_fine_labels_and_adds_12_coarse(in32_root):
    root, train, _ = in32_root
    to_fine, to_coarse = _maskcon_files(root)
    src = build_source(data_config("imagenet32", root), "train")
    raw = np.concatenate([labels for _, labels in train]) - 1
    np.testing.assert_array_equal(src.labels, to_fine[raw])  # as MaskCon / BuCSFR
    np.testing.assert_array_equal(src.coarse_labels, to_coarse[to_fine[raw]])
    assert src.coarse_level == "maskcon" and src.num_coarse_classes == 12
    assert src.coarse_names[0] == "Invertebrate" and src.coarse_names[11] == "Others"
    # the name of a remapped class is still the label number in the files
    assert [src.class_names[y] for y in src.labels] == [str(r + 1) for r in raw]
    assert (
        build_source(data_config("imagenet32", root, coarse="none"), "train").num_coarse_classes
        == 0
    )


def test_cache_and_pickled_batches(tmp_path, in32_root):
    root, train, _ = in32_root
    src = build_source(data_config("imagenet32", root), "train")
    assert os.path.dirname(src.images.path) == str(root / "Imagenet32_train_npz" / "fgjax_cache")
    assert len(pickle.dumps(src)) < src.images.array.nbytes / 5  # no pixels in the pickle
    # MaskCon reads the older pickled batches (same names, no extension) from the root itself
    flat = tmp_path / "pickled"
    flat.mkdir()
    for k, (data, labels) in enumerate(train, start=1):
        with open(flat / f"train_data_batch_{k}", "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    again = build_source(data_config("imagenet32", flat), "train")
    np.testing.assert_array_equal(again.labels, src.labels)
    np.testing.assert_array_equal(again[19]["image"], src[19]["image"])


def test_wrong_root_and_malformed_files(in32_root):
    root, _, _ = in32_root
    expected = r"reads Imagenet32 npz.*missing: train_data_batch_1.npz. Found there: val_data.npz"
    with pytest.raises(DatasetLayoutError, match=expected):
        build_source(data_config("imagenet32", root / "Imagenet32_val_npz"), "train")
    os.remove(root / "Imagenet32_train_npz" / "train_data_batch_9.npz")
    with pytest.raises(DatasetLayoutError, match="missing: train_data_batch_9.npz"):
        build_source(data_config("imagenet32", root), "train")
    val = root / "Imagenet32_val_npz" / "val_data.npz"
    val.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetFormatError, match=r"val_data.npz: cannot read as an Imagenet32"):
        build_source(data_config("imagenet32", root), "val")
    np.savez(val, data=np.zeros((2, 3072), np.uint8), labels=[0, 5])
    with pytest.raises(DatasetFormatError, match=r"val_data.npz: 'labels' must lie in 1..1000"):
        build_source(data_config("imagenet32", root), "val")
    np.savez(val, data=np.zeros((2, 3072), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"val_data.npz: no 'labels' array"):
        build_source(data_config("imagenet32", root), "val")
    np.savez(val, data=np.zeros((3, 3072), np.uint8), labels=[1, 5])
    with pytest.raises(DatasetFormatError, match=r"val_data.npz: 3 images but 2 labels"):
        build_source(data_config("imagenet32", root), "val")
    np.savez(val, data=np.zeros((2, 3072), np.uint8), labels=[1, 5])
    _maskcon_files(root)
    os.remove(root / "imagenet_fine_to_coarse.json")
    with pytest.raises(DatasetLayoutError, match="missing: imagenet_fine_to_coarse.json"):
        build_source(data_config("imagenet32", root), "val")
    (root / "imagenet_fine_to_coarse.json").write_text('{"0": 1}')
    with pytest.raises(DatasetFormatError, match=r"imagenet_fine_to_coarse.json: expected a JSON"):
        build_source(data_config("imagenet32", root), "val")
    (root / "imagenet32_to_fine.json").write_text(json.dumps({str(k): 0 for k in range(1000)}))
    with pytest.raises(DatasetFormatError, match=r"imagenet32_to_fine.json: not a permutation"):
        build_source(data_config("imagenet32", root), "val")
