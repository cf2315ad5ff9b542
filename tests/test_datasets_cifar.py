"""kinds 'cifar10' / 'cifar100' on miniature copies of the extracted python archives
(pickles with bytes keys, as the originals load in Python 3)."""

import os
import pickle

import numpy as np
import pytest
from conftest import data_config

from fgjax.data.datasets import build_source
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError

# CIFAR-100 superclasses with their fine classes (official alphabetical index), bucsfr.md §6.2.
SUPERCLASSES = {
    "aquatic_mammals": {"beaver": 4, "dolphin": 30, "otter": 55, "seal": 72, "whale": 95},
    "fish": {"aquarium_fish": 1, "flatfish": 32, "ray": 67, "shark": 73, "trout": 91},
    "flowers": {"orchid": 54, "poppy": 62, "rose": 70, "sunflower": 82, "tulip": 92},
    "food_containers": {"bottle": 9, "bowl": 10, "can": 16, "cup": 28, "plate": 61},
    "fruit_and_vegetables": {"apple": 0, "mushroom": 51, "orange": 53, "pear": 57,
                             "sweet_pepper": 83},
    "household_electrical_devices": {"clock": 22, "keyboard": 39, "lamp": 40, "telephone": 86,
                                     "television": 87},
    "household_furniture": {"bed": 5, "chair": 20, "couch": 25, "table": 84, "wardrobe": 94},
    "insects": {"bee": 6, "beetle": 7, "butterfly": 14, "caterpillar": 18, "cockroach": 24},
    "large_carnivores": {"bear": 3, "leopard": 42, "lion": 43, "tiger": 88, "wolf": 97},
    "large_man-made_outdoor_things": {"bridge": 12, "castle": 17, "house": 37, "road": 68,
                                      "skyscraper": 76},
    "large_natural_outdoor_scenes": {"cloud": 23, "forest": 33, "mountain": 49, "plain": 60,
                                     "sea": 71},
    "large_omnivores_and_herbivores": {"camel": 15, "cattle": 19, "chimpanzee": 21,
                                       "elephant": 31, "kangaroo": 38},
    "medium_mammals": {"fox": 34, "porcupine": 63, "possum": 64, "raccoon": 66, "skunk": 75},
    "non-insect_invertebrates": {"crab": 26, "lobster": 45, "snail": 77, "spider": 79,
                                 "worm": 99},
    "people": {"baby": 2, "boy": 11, "girl": 35, "man": 46, "woman": 98},
    "reptiles": {"crocodile": 27, "dinosaur": 29, "lizard": 44, "snake": 78, "turtle": 93},
    "small_mammals": {"hamster": 36, "mouse": 50, "rabbit": 65, "shrew": 74, "squirrel": 80},
    "trees": {"maple_tree": 47, "oak_tree": 52, "palm_tree": 56, "pine_tree": 59,
              "willow_tree": 96},
    "vehicles_1": {"bicycle": 8, "bus": 13, "motorcycle": 48, "pickup_truck": 58, "train": 90},
    "vehicles_2": {"lawn_mower": 41, "rocket": 69, "streetcar": 81, "tank": 85, "tractor": 89},
}  # fmt: skip
FINE_NAMES = sorted(n for group in SUPERCLASSES.values() for n in group)
COARSE_NAMES = list(SUPERCLASSES)  # official coarse order = alphabetical
COARSE_OF = {i: c for c, (_, g) in enumerate(SUPERCLASSES.items()) for i in g.values()}


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng, n, **labels):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {b"data": data, **{k.encode(): v for k, v in labels.items()}}


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]  # fmt: skip
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    for k in range(1, 6):
        _dump(folder / f"data_batch_{k}", _batch(rng, 3, labels=rng.integers(0, 10, 3).tolist()))
    _dump(folder / "test_batch", _batch(rng, 4, labels=[9, 0, 3, 3]))
    return tmp_path


def _pickles(folder, names):
    out = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            out.append(pickle.load(f, encoding="bytes"))
    return out


def test_cifar10_labels_and_pixels(cifar10_root):
    folder = cifar10_root / "cifar-10-batches-py"
    batches = _pickles(folder, [f"data_batch_{k}" for k in range(1, 6)])
    train = build_source(data_config("cifar10", cifar10_root), "train")
    assert len(train) == 15 and train.num_classes == 10 and train.class_names[9] == "truck"
    np.testing.assert_array_equal(train.labels, sum((b[b"labels"] for b in batches), []))
    assert train.num_coarse_classes == 0 and set(train.coarse_labels) == {-1}
    # record 7 = batch 3, row 1; pixel (y, x) channel c sits at c*1024 + y*32 + x
    rec, row = train[7], batches[2][b"data"][1]
    assert rec["image"].shape == (32, 32, 3) and rec["image"].dtype == np.uint8
    for y, x, c in [(0, 0, 0), (5, 17, 1), (31, 2, 2), (31, 31, 0)]:
        assert rec["image"][y, x, c] == row[c * 1024 + y * 32 + x]
    assert rec["label"] == batches[2][b"labels"][1] and rec["index"] == 7
    # the extracted folder itself is a root too
    test = build_source(data_config("cifar10", folder), "test")
    assert test.labels.tolist() == [9, 0, 3, 3] and len(test) == 4


def test_cache_is_shared_and_pickles_cheaply(cifar10_root, tmp_path, monkeypatch):
    cfg = data_config("cifar10", cifar10_root)
    src = build_source(cfg, "train")
    cache = src.images.path
    assert os.path.dirname(cache) == str(cifar10_root / "cifar-10-batches-py" / "fgjax_cache")
    mtime = os.stat(cache).st_mtime_ns
    assert build_source(cfg, "train").images.path == cache and os.stat(cache).st_mtime_ns == mtime
    blob = pickle.dumps(src)
    assert len(blob) < 4000  # the path and the labels, not 15 x 3072 pixels
    np.testing.assert_array_equal(pickle.loads(blob)[7]["image"], src[7]["image"])
    monkeypatch.setenv("FGJAX_DATA_CACHE", str(tmp_path / "elsewhere"))
    other = build_source(cfg, "train")
    assert other.images.path.startswith(str(tmp_path / "elsewhere"))
    assert not [n for n in os.listdir(tmp_path / "elsewhere") if n.endswith(".tmp")]


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in FINE_NAMES],
                            b"coarse_label_names": [n.encode() for n in COARSE_NAMES]})  # fmt: skip
    fine = [4, 30, 54, 0, 99, 4, 88]
    _dump(folder / "train", _batch(rng, 7, fine_labels=fine,
                                   coarse_labels=[COARSE_OF[f] for f in fine]))  # fmt: skip
    _dump(folder / "test", _batch(rng, 2, fine_labels=[95, 1], coarse_labels=[0, 1]))
    return tmp_path


def test_cifar100_superclasses_follow_the_official_mapping(cifar100_root):
    src = build_source(data_config("cifar100", cifar100_root), "train")
    assert src.num_classes == 100 and src.class_names[4] == "beaver"
    assert src.class_names[99] == "worm" and src.class_names[0] == "apple"
    assert src.coarse_level == "superclass" and src.num_coarse_classes == 20
    assert src.coarse_names[0] == "aquatic_mammals"
    for k in range(len(src)):
        fine = src.class_names[src.labels[k]]
        want = next(c for c, group in SUPERCLASSES.items() if fine in group)
        assert src.coarse_names[src[k]["coarse_label"]] == want
    assert [src.coarse_names[c] for c in src.coarse_labels[:5]] == [
        "aquatic_mammals", "aquatic_mammals", "flowers", "fruit_and_vegetables",
        "non-insect_invertebrates"]  # fmt: skip
    test = build_source(data_config("cifar100", cifar100_root / "cifar-100-python"), "test")
    assert test.coarse_labels.tolist() == [0, 1]
    none = build_source(data_config("cifar100", cifar100_root, coarse="none"), "test")
    assert none.num_coarse_classes == 0


def test_fine_class_with_two_superclasses_is_an_error(cifar100_root):
    folder = cifar100_root / "cifar-100-python"
    (batch,) = _pickles(folder, ["train"])
    batch[b"coarse_labels"][5] = 3  # beaver again, now food_containers
    _dump(folder / "train", batch)
    with pytest.raises(ValueError, match=r"train: record 5.*class 4 has coarse label "
                       r"'food_containers' here but 'aquatic_mammals' at .*record 0"):  # fmt: skip
        build_source(data_config("cifar100", cifar100_root), "train")


def test_wrong_root_and_malformed_files(cifar10_root, tmp_path):
    expected = r"archive cifar-100-python/.*missing: train, meta. Found there: cifar-10-batches-py/"
    with pytest.raises(DatasetLayoutError, match=expected):
        build_source(data_config("cifar100", cifar10_root), "train")
    folder = cifar10_root / "cifar-10-batches-py"
    os.remove(folder / "data_batch_4")
    with pytest.raises(DatasetLayoutError, match="missing: data_batch_4"):
        build_source(data_config("cifar10", cifar10_root), "train")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00")  # truncated pickle
    with pytest.raises(DatasetFormatError, match=r"test_batch: cannot read as a CIFAR pickle"):
        build_source(data_config("cifar10", cifar10_root), "test")
    _dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetFormatError, match=r"test_batch: missing key\(s\) \['labels'\]"):
        build_source(data_config("cifar10", cifar10_root), "test")
    _dump(folder / "test_batch", {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetFormatError, match=r"test_batch: 'data' must be uint8 \[N, 3072\]"):
        build_source(data_config("cifar10", cifar10_root), "test")
    _dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(DatasetFormatError, match=r"test_batch: 'labels' must be 2 labels in"):
        build_source(data_config("cifar10", cifar10_root), "test")


# --------------------------------------------------- hostile dtypes in a data pickle (#30)
class _Dtype:
    """Pickles as `numpy.dtype(name)` followed by BUILD with `state`."""

    def __init__(self, name, state):
        self.name, self.state = name, state

    def __reduce__(self):
        return np.dtype, (self.name, False, True), self.state


class _Array:
    """Pickles as numpy's own array reconstruction, with `dtype` in its state."""

    def __init__(self, dtype, shape, data):
        self.dtype, self.shape, self.data = dtype, shape, data

    def __reduce__(self):
        reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct
        return reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.data)


PLAIN_I8 = (3, "<", None, None, None, -1, -1, 0)  # numpy's own state of dtype('<i8')
HOSTILE_STATES = {
    # field name in the error: the state with that field changed
    "subarray": (3, "<", (np.dtype("u1"), (4,)), None, None, -1, -1, 0),
    "names": (3, "<", None, ("x",), None, -1, -1, 0),
    "fields": (3, "<", None, None, {"x": (np.dtype("<i8"), 64)}, -1, -1, 0),  # offset 64
    "elsize": (3, "<", None, None, None, 1 << 30, -1, 0),
    "alignment": (3, "<", None, None, None, -1, 1 << 20, 0),
    "flags": (3, "<", None, None, None, -1, -1, 63),  # object refcounting on raw bytes
    "version": (4, "<", None, None, None, -1, -1, 0),
}


@pytest.mark.parametrize("field", sorted(HOSTILE_STATES))
def test_a_dtype_state_that_is_not_plain_is_refused_naming_its_field(cifar10_root, tmp_path, field):
    from fgjax.data.layout import load_array_pickle

    dtype = _Dtype("i8", HOSTILE_STATES[field])
    path = tmp_path / "batch"
    labels = _Array(dtype, (2,), np.arange(2, dtype="<i8").tobytes())
    _dump(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels})
    with pytest.raises(pickle.UnpicklingError, match=f"refusing numpy.dtype.*with {field}="):
        load_array_pickle(str(path), encoding="bytes")
    # Through the reader: one named error for the file.
    folder = cifar10_root / "cifar-10-batches-py"
    os.replace(path, folder / "test_batch")
    with pytest.raises(DatasetFormatError, match=f"test_batch: cannot read.*with {field}="):
        build_source(data_config("cifar10", cifar10_root), "test")


def test_only_plain_dtype_names_are_built_and_a_plain_state_loads(tmp_path):
    from fgjax.data.layout import load_array_pickle

    path = tmp_path / "batch"
    for name in ("O8", "V8", "M8[s]"):
        _dump(path, _Array(_Dtype(name, PLAIN_I8), (1,), b"\0" * 8))
        with pytest.raises(pickle.UnpicklingError, match=r"refusing numpy.dtype\("):
            load_array_pickle(str(path), encoding="bytes")
    # numpy's own pickles of plain arrays load as pickle.load reads them; a state in the
    # other byte order is applied.
    arrays = {
        "i8": np.arange(3, dtype="<i8"),
        "f4": np.linspace(0, 1, 4, dtype=">f4"),
        "s": np.array([b"ab", b"c"]),
        "u": np.array(["xy", "z"]),
    }
    _dump(
        path,
        {**arrays, "big": _Array(_Dtype("i8", (3, ">", *PLAIN_I8[2:])), (1,), b"\0" * 7 + b"\1")},
    )
    got = load_array_pickle(str(path), encoding="bytes")
    for key, want in arrays.items():
        np.testing.assert_array_equal(got[key], want)
        assert got[key].dtype == pickle.loads(pickle.dumps(want, protocol=2)).dtype
    assert got["big"].tolist() == [1]
