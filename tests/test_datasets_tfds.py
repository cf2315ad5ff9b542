"""kind 'tfds' on tiny real TFDS datasets built offline in tmp_path (array_record files,
PNG-encoded images; TensorFlow is not needed to prepare or read them)."""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, data_config
from PIL import Image

from fgjax.data.datasets import build_source
from fgjax.data.layout import DatasetLayoutError

tfds = pytest.importorskip("tensorflow_datasets")

FINE = ["gull", "tern", "oak", "elm", "bee"]
COARSE = ["bird", "tree", "insect"]
COARSE_OF = [0, 0, 1, 1, 2]
SIZES = {"train": 7, "test": 3}


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def _example(i, channels):
    """Image i: 6x5 with pixel (0, 0) = i (records come back shuffled); label i % 5."""
    image = np.full((6, 5, channels), 200, np.uint8)
    image[0, 0], image[1, 2] = i, 37 + i
    return image.squeeze(-1) if channels == 1 else image, i % 5


class FgjaxTinyRgb(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    CHANNELS = 3

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(None, None, self.CHANNELS)),
            "label": tfds.features.ClassLabel(names=FINE),
        }
        if self.CHANNELS == 3:
            features["coarse_label"] = tfds.features.ClassLabel(names=COARSE)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SIZES}

    def _generate_examples(self, split):
        offset = 0 if split == "train" else 100
        for i in range(offset, offset + SIZES[split]):
            image, label = _example(i, self.CHANNELS)
            record = {"image": _png(image), "label": label}
            if self.CHANNELS == 3:
                record["coarse_label"] = COARSE_OF[label]
            yield i, record


class FgjaxTinyGrey(FgjaxTinyRgb):
    CHANNELS = 1


@pytest.fixture(scope="module")
def tfds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    for cls in (FgjaxTinyRgb, FgjaxTinyGrey):
        cls(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_labels_images_and_coarse(tfds_root):
    src = build_source(data_config("tfds", tfds_root, tfds_name="fgjax_tiny_rgb"), "train")
    assert len(src) == 7 and src.class_names == FINE and src.num_classes == 5
    assert src.coarse_level == "coarse_label" and src.coarse_names == COARSE
    seen = []
    for k in range(len(src)):
        rec = src[k]
        i = int(rec["image"][0, 0, 0])
        want, _ = _example(i, 3)
        np.testing.assert_array_equal(rec["image"], want)
        assert rec["label"] == src.labels[k] == i % 5 and rec["index"] == k
        assert rec["coarse_label"] == COARSE_OF[i % 5]
        seen.append(i)
    assert sorted(seen) == list(range(7))
    clone = pickle.loads(pickle.dumps(src))  # grain workers receive the source pickled
    np.testing.assert_array_equal(clone[3]["image"], src[3]["image"])
    half = build_source(data_config("tfds", tfds_root, tfds_name="fgjax_tiny_rgb"), "test[:2]")
    assert len(half) == 2 and all(100 <= half[k]["image"][0, 0, 0] < 103 for k in range(2))


def test_greyscale_becomes_three_channels(tfds_root):
    src = build_source(data_config("tfds", tfds_root, tfds_name="fgjax_tiny_grey"), "test")
    assert src.num_coarse_classes == 0 and len(src) == 3
    image = src[0]["image"]
    assert image.shape == (6, 5, 3) and image.dtype == np.uint8
    i = int(image[0, 0, 0])
    assert 100 <= i < 103 and (image[1, 2] == 37 + i).all() and src.labels[0] == i % 5


def test_bad_name_split_and_config(tfds_root, tmp_path):
    cfg = data_config("tfds", tfds_root, tfds_name="fgjax_tiny_rgb")
    with pytest.raises(ValueError, match=r"no split 'val'.*\['train', 'test'\]"):
        build_source(cfg, "val")
    with pytest.raises(DatasetLayoutError, match=r"no prepared dataset 'fgjax_tiny_rgb'.*Found "
                       r"there: an empty folder"):  # fmt: skip
        build_source(data_config("tfds", tmp_path, tfds_name="fgjax_tiny_rgb"), "train")
    with pytest.raises(ValueError, match="needs config.data.tfds_name"):
        build_source(data_config("tfds", tfds_root), "train")
    with pytest.raises(ValueError, match=r"coarse='order'.*\['coarse_label'\]"):
        build_source(
            data_config("tfds", tfds_root, tfds_name="fgjax_tiny_rgb", coarse="order"), "train"
        )


def test_fgjax_imports_without_tensorflow_datasets():
    code = (
        "import sys; from fgjax.data.datasets import dataset_kinds; "
        "assert 'tfds' in dataset_kinds(); assert 'tensorflow_datasets' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
