"""The one fingerprint-cache reader (`fgjax.eval.cache.read_if_fingerprint`) that the
feature cache, DDT's fit and maps and `fgjax describe`'s descriptors go through."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from fgjax.eval.cache import (
    cached_features,
    fingerprint,
    load_features,
    read_if_fingerprint,
    save_features,
    save_npz_atomic,
)
from fgjax.eval.features import Features

KEY = fingerprint({"weights": "w", "step": 3})
OTHER = fingerprint({"weights": "w", "step": 4})


def _write(path, key=KEY, **extra):
    arrays = dict(maps=np.arange(12, dtype=np.float32).reshape(3, 4), labels=np.arange(3))
    save_npz_atomic(str(path), **arrays, **extra, fingerprint=np.array(key))
    return arrays


def test_a_matching_key_returns_every_array(tmp_path):
    path = tmp_path / "cache.npz"
    arrays = _write(path)
    got = read_if_fingerprint(str(path), KEY)
    assert sorted(got) == ["fingerprint", "labels", "maps"]
    for name, value in arrays.items():
        np.testing.assert_array_equal(got[name], value)
        assert got[name].dtype == value.dtype
    assert str(got["fingerprint"]) == KEY
    # readable after the file is closed and replaced: the arrays are in memory
    _write(path, OTHER)
    np.testing.assert_array_equal(got["maps"], arrays["maps"])


def test_names_reads_only_those_arrays(tmp_path):
    path = tmp_path / "cache.npz"
    arrays = _write(path)
    got = read_if_fingerprint(str(path), KEY, names=("maps",))
    assert list(got) == ["maps"]
    np.testing.assert_array_equal(got["maps"], arrays["maps"])


def test_another_key_an_absent_file_or_no_stored_key_is_a_miss(tmp_path):
    path = tmp_path / "cache.npz"
    assert read_if_fingerprint(str(path), KEY) is None  # absent
    _write(path)
    assert read_if_fingerprint(str(path), OTHER) is None
    unkeyed = tmp_path / "unkeyed.npz"
    save_npz_atomic(str(unkeyed), maps=np.zeros(2))
    assert read_if_fingerprint(str(unkeyed), KEY) is None


def test_no_key_accepts_any_fingerprint(tmp_path):
    path = tmp_path / "cache.npz"
    _write(path, OTHER)
    assert str(read_if_fingerprint(str(path), None)["fingerprint"]) == OTHER
    unkeyed = tmp_path / "unkeyed.npz"
    save_npz_atomic(str(unkeyed), maps=np.ones(2))
    np.testing.assert_array_equal(read_if_fingerprint(str(unkeyed), None)["maps"], np.ones(2))


def _damage(path) -> None:
    """Cut the file in half: the zip's central directory is gone."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_a_damaged_file_is_an_error_and_is_left_in_place(tmp_path):
    """As before the readers were one: np.load's error, nothing deleted or recomputed."""
    path = tmp_path / "cache.npz"
    _write(path)
    _damage(path)
    size = os.path.getsize(path)
    with pytest.raises(zipfile.BadZipFile):
        read_if_fingerprint(str(path), KEY)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz file at all")
    with pytest.raises(ValueError):
        read_if_fingerprint(str(garbage), KEY)
    assert os.path.getsize(path) == size and garbage.exists()


def test_the_feature_cache_reads_through_it(tmp_path):
    path = str(tmp_path / "features_test.npz")
    features = Features(
        np.arange(6, dtype=np.float32).reshape(3, 2),
        np.array([0, 1, 1], np.int32),
        np.array([0, 0, 1], np.int32),
    )
    save_features(path, features, KEY, paths=["a", "b", "c"])
    got = load_features(path, KEY)
    np.testing.assert_array_equal(got.features, features.features)
    np.testing.assert_array_equal(got.labels, features.labels)
    np.testing.assert_array_equal(got.coarse_labels, features.coarse_labels)
    assert load_features(path, OTHER) is None
    assert load_features(path) is not None  # None accepts any

    def compute():
        raise AssertionError("a hit must not compute")

    got, hit = cached_features(path, KEY, compute)
    assert hit
    np.testing.assert_array_equal(got.features, features.features)

    _damage(path)
    with pytest.raises(zipfile.BadZipFile):
        cached_features(path, KEY, compute)  # a damaged cache is not silently replaced
