"""Seeded fuzz of every file-reading dataset kind, the image decoder and the inspect CLI.

One tiny valid dataset per kind (the builders of tests/test_datasets_*.py); each index
file in turn is mutated (truncated, bytes flipped, lines deleted / duplicated / added,
fields dropped / added, numbers replaced by junk, invalid UTF-8, garbage, empty; for
.mat / .json / pickles / .npz also structural edits: keys removed, values of wrong types
and shapes) and the source built and its first and last records read, each case under a
5 s alarm. The contract: a source whose labels lie in its classes, or a named error
(DatasetLayoutError / DatasetFormatError / ImageDecodeError, or a ValueError / OSError
whose message names the dataset's folder or the mutated file); never a hang, never a
raw exception from inside numpy / scipy / PIL / json / pickle. The per-kind counts are
printed (`-s`).
"""

import io
import json
import os
import pickle
import re
import signal
import zlib
from collections import Counter

import numpy as np
import pytest
from conftest import REPO, data_config
from PIL import Image
from scipy.io import loadmat, savemat
from test_datasets_aircraft import mini as aircraft_mini  # noqa: F401 - fixtures
from test_datasets_cars import mini as cars_mini  # noqa: F401
from test_datasets_cifar import cifar10_root  # noqa: F401
from test_datasets_dogs import mini as dogs_mini  # noqa: F401
from test_datasets_flowers import mini as flowers_mini  # noqa: F401
from test_datasets_imagenet32 import _maskcon_files, in32_root  # noqa: F401
from test_datasets_inat2019 import inat_root  # noqa: F401
from test_datasets_nabirds import nab_root  # noqa: F401

from fgjax.data.datasets import build_source
from fgjax.data.decode import ImageDecodeError, random_crop_views, resize_center_crop
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError, load_mat
from fgjax.data.views import ViewSpec

NAMED = (DatasetLayoutError, DatasetFormatError, ImageDecodeError)
CASE_SECONDS = 5
JUNK_TOKENS = ["-1", "0", "99999999999999999999", "abc", "1.5", "nan", "²", "--5", "\x00"]
JUNK_LINES = ["x y z", "7", "-5 foo bar", "999999 name", "1 2 3 4 5 6 7", "é ü"]
WRONG_VALUES = [None, "x", -1, 1e308, [], {}, True, 2**70, [[1, 2], [3]], {"a": 1}]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer within {CASE_SECONDS} s")


# ----------------------------------------------------------------------------- mutations
def _lines_op(data: bytes, rng, op: str) -> bytes:
    lines = data.split(b"\n")
    k = int(rng.integers(len(lines)))
    words = lines[k].split()
    if op == "delete_line":
        del lines[k]
    elif op == "duplicate_line":
        lines.insert(k, lines[k])
    elif op == "junk_line":
        lines.insert(k, JUNK_LINES[int(rng.integers(len(JUNK_LINES)))].encode())
    elif op == "drop_field" and words:
        lines[k] = b" ".join(words[:-1])
    elif op == "add_field":
        lines[k] += b" extra"
    elif op == "junk_token" and words:
        words[int(rng.integers(len(words)))] = JUNK_TOKENS[int(rng.integers(len(JUNK_TOKENS)))]
        lines[k] = b" ".join(w if isinstance(w, bytes) else w.encode() for w in words)
    return b"\n".join(lines)


def _bytes_op(data: bytes, rng, op: str) -> bytes:
    if op == "truncate":
        return data[: int(rng.integers(len(data) + 1))]
    if op == "flip":
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 5))):
            if out:
                out[int(rng.integers(len(out)))] = int(rng.integers(256))
        return bytes(out)
    if op == "empty":
        return b""
    if op == "garbage":
        return rng.bytes(int(rng.integers(1, 200)))
    if op == "bad_utf8":
        k = int(rng.integers(len(data) + 1))
        return data[:k] + b"\xff\xfe\xc3" + data[k:]
    raise AssertionError(op)


BYTE_OPS = ("truncate", "flip", "empty", "garbage", "bad_utf8")
LINE_OPS = ("delete_line", "duplicate_line", "junk_line", "drop_field", "add_field", "junk_token")


def _mutate_text(path, rng):
    ops = BYTE_OPS + LINE_OPS * 2  # line edits are the likelier mistakes in a text index
    op = ops[int(rng.integers(len(ops)))]
    data = path.read_bytes()
    path.write_bytes(_bytes_op(data, rng, op) if op in BYTE_OPS else _lines_op(data, rng, op))
    return op


def _wrong(rng, value):
    """A replacement of `value` of a wrong type, shape or range."""
    choices = [
        np.array("text"),
        np.zeros((0,)),
        np.full((3, 3), np.nan),
        np.array([[-5]], np.int16),
        np.array([[1e30]]),
        np.array([[0]], np.uint8),
    ]
    return choices[int(rng.integers(len(choices)))]


def _mutate_mat(path, rng):
    ops = ("truncate", "flip", "empty", "garbage", "drop_var", "wrong_var", "drop_field")
    op = ops[int(rng.integers(len(ops)))]
    if op in BYTE_OPS:
        path.write_bytes(_bytes_op(path.read_bytes(), rng, op))
        return op
    mat = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    name = sorted(mat)[int(rng.integers(len(mat)))]
    value = mat[name]
    if op == "drop_var":
        del mat[name]
    elif op == "wrong_var" or not value.dtype.names:
        mat[name] = _wrong(rng, value)
    else:  # a struct array: drop one field, or give one entry a wrong value
        fields = list(value.dtype.names)
        field = fields[int(rng.integers(len(fields)))]
        if rng.random() < 0.5:
            keep = [f for f in fields if f != field]
            new = np.zeros(value.shape, dtype=[(f, "O") for f in keep])
            for f in keep:
                new[f] = value[f]
        else:
            new = value.copy()
            new[field].flat[int(rng.integers(new.size))] = _wrong(rng, None)
        mat[name] = new
    savemat(path, mat)
    return f"{op}:{name}"


def _walk(doc, rng):
    """A random (container, key) inside a JSON document."""
    parent, key = None, None
    node = doc
    for _ in range(4):
        if isinstance(node, dict) and node:
            keys = list(node)
            parent, key = node, keys[int(rng.integers(len(keys)))]
        elif isinstance(node, list) and node:
            parent, key = node, int(rng.integers(len(node)))
        else:
            break
        node = parent[key]
        if rng.random() < 0.3:
            break
    return parent, key


def _mutate_json(path, rng):
    ops = (*BYTE_OPS, "wrong_value", "wrong_value", "drop_key", "not_object")
    op = ops[int(rng.integers(len(ops)))]
    if op in BYTE_OPS:
        path.write_bytes(_bytes_op(path.read_bytes(), rng, op))
        return op
    doc = json.loads(path.read_text())
    if op == "not_object":
        doc = list(doc.values()) if isinstance(doc, dict) else {"x": doc}
    else:
        parent, key = _walk(doc, rng)
        if parent is not None:
            if op == "drop_key" or isinstance(parent, dict) and rng.random() < 0.2:
                del parent[key]
            else:
                parent[key] = WRONG_VALUES[int(rng.integers(len(WRONG_VALUES)))]
    path.write_text(json.dumps(doc))
    return op


class _Payload:
    """Unpickling this calls builtins.open(marker, 'w'): it must be refused, not run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _mutate_pickle(path, rng):
    ops = ("truncate", "flip", "empty", "garbage", "wrong_value", "drop_key", "list", "payload")
    op = ops[int(rng.integers(len(ops)))]
    if op in BYTE_OPS:
        path.write_bytes(_bytes_op(path.read_bytes(), rng, op))
        return op
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")  # the test's own valid file
    key = sorted(d)[int(rng.integers(len(d)))]
    if op == "wrong_value":
        d[key] = [*WRONG_VALUES, np.zeros((2, 5))][int(rng.integers(len(WRONG_VALUES) + 1))]
    elif op == "drop_key":
        del d[key]
    elif op == "list":
        d = list(d.values())
    else:
        d[key] = _Payload(str(path.parent / "PAYLOAD_RAN"))
    path.write_bytes(pickle.dumps(d, protocol=2))
    return op


def _mutate_npz(path, rng):
    ops = ("truncate", "flip", "empty", "garbage", "wrong_value", "drop_key", "object")
    op = ops[int(rng.integers(len(ops)))]
    if op in BYTE_OPS:
        path.write_bytes(_bytes_op(path.read_bytes(), rng, op))
        return op
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    key = sorted(d)[int(rng.integers(len(d)))]
    if op == "drop_key":
        del d[key]
    elif op == "object":
        d[key] = np.array([None, "x"], object)
    else:
        d[key] = _wrong(rng, d[key])
    with open(path, "wb") as f:
        np.savez(f, **d)
    return op


MUTATORS = {".mat": _mutate_mat, ".json": _mutate_json, ".npz": _mutate_npz}


def _mutator(path):
    if path.suffix in MUTATORS:
        return MUTATORS[path.suffix]
    if path.suffix in (".txt", ".csv"):
        return _mutate_text
    return _mutate_pickle  # CIFAR's extension-less batches


# ----------------------------------------------------------------------------- the contract
def _check_source(source) -> None:
    """A built source is consistent: labels in its classes, first and last records read."""
    n = len(source)
    labels = np.asarray(source.labels)
    assert labels.shape == (n,)
    assert not n or 0 <= labels.min() <= labels.max() < source.num_classes
    for i in (0, -1) if n else ():
        record = source[i]
        assert record["label"] == labels[i]
        assert isinstance(record.get("path", ""), str)


def _outcome(run, root, path) -> str:
    """'ok' / 'named' for one case (`run()` reads the mutated `path` under `root`); raises
    AssertionError for anything else."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        run()
        return "ok"
    except NAMED:
        return "named"
    except (ValueError, OSError) as e:
        if str(root) in str(e) or path.name in str(e):
            return "named"
        raise AssertionError(f"{type(e).__name__} naming no file: {e}") from e
    except Hang:
        raise AssertionError(f"hang: no answer within {CASE_SECONDS} s") from None
    except Exception as e:  # noqa: BLE001 - every other kind is the finding
        raise AssertionError(f"raw {type(e).__name__}: {e}") from e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _cub_root(tmp_path):
    """A 4-class, 6-image CUB_200_2011/ (index files only; images are not read)."""
    base = tmp_path / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Crested_Auklet",
               "004.Least_Auklet"]  # fmt: skip
    rows = [(k + 1, 1 + k % 4, k % 2) for k in range(6)]
    write = lambda name, lines: (base / name).write_text("".join(f"{x}\n" for x in lines))  # noqa: E731
    write("classes.txt", [f"{k + 1} {c}" for k, c in enumerate(classes)])
    write("images.txt", [f"{i} {classes[c - 1]}/{i}.jpg" for i, c, _ in rows])
    write("image_class_labels.txt", [f"{i} {c}" for i, c, _ in rows])
    write("train_test_split.txt", [f"{i} {t}" for i, _, t in rows])
    write("bounding_boxes.txt", [f"{i} 1.0 2.0 {10 + i}.0 8.0" for i, _, _ in rows])
    return tmp_path


def _csv_root(tmp_path):
    for k in range(4):
        Image.new("RGB", (8, 6)).save(tmp_path / f"{k}.png")
    (tmp_path / "data.csv").write_text(
        "path,label,coarse_label,split\n0.png,0,0,train\n1.png,1,0,train\n"
        "2.png,2,1,test\n3.png,1,0,test\n"
    )
    return tmp_path


# kind -> (fixture, how to get the root, {split: overrides}, the files to mutate (globs))
KINDS = {
    "cub": (None, _cub_root, {"train": {}, "all": {"crop_to_box": True}}, ["CUB_200_2011/*.txt"]),
    "nabirds": ("nab_root", lambda r: r[0], {"train": {}, "all": {"crop_to_box": True}},
                ["nabirds/*.txt"]),
    "aircraft": ("aircraft_mini", None, {"test": {}, "trainval": {"crop_to_box": True}},
                 ["fgvc-aircraft-2013b/data/*.txt"]),
    "cars": ("cars_mini", None, {"retrieval_train": {"crop_to_box": True}},
             ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat",
              "cars_test_annos_withlabels.mat"]),
    "dogs": ("dogs_mini", None, {"train": {}}, ["lists/*.mat"]),
    "flowers": ("flowers_mini", None, {"trainval": {}}, ["*.mat", "cat_to_name.json"]),
    "inat2019": ("inat_root", None, {"train": {}}, ["train2019.json"]),
    "imagenet32": ("in32_root", lambda r: r[0], {"val": {"coarse": "maskcon"}},
                   ["Imagenet32_val_npz/val_data.npz", "*.json"]),
    "cifar10": ("cifar10_root", None, {"test": {}},
                ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"]),
    "csv": (None, _csv_root, {"train": {}, "test": {}}, ["data.csv"]),
}  # fmt: skip
MUTATIONS_PER_KIND = 40  # spread over its files, at least 6 each


def _json_edit(edit):
    """bytes -> bytes applying `edit(doc)` (in place) to a JSON document."""

    def apply(data: bytes) -> bytes:
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc).encode()

    return apply


def _mat_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    savemat(buf, arrays)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


# What the fuzz found, pinned: (file, bytes -> bytes, the message some build must raise).
# Each raised a raw exception (or ran code, or took any value) before its reader was fixed.
FOUND = {
    "cub": [
        ("CUB_200_2011/images.txt", lambda d: d.replace(b"\n", b"\n\xff", 1),
         r"images.txt: line 2: not utf-8 text"),  # UnicodeDecodeError
        ("CUB_200_2011/images.txt", lambda d: b"", r"images.txt: lists no images"),  # TypeError
        ("CUB_200_2011/bounding_boxes.txt", lambda d: d.replace(b"1.0", b"1,0", 1),
         r"bounding_boxes.txt: line of image 1: .* are not 4 numbers"),  # ValueError, no file
        ("CUB_200_2011/train_test_split.txt", lambda d: d.replace(b" 0\n", b" x\n", 1),
         r"train_test_split.txt: line of image 1: 'x' is not 1 or 0"),  # silently 'test'
    ],
    "aircraft": [
        ("fgvc-aircraft-2013b/data/variants.txt", lambda d: d + b"\xff\n",
         r"variants.txt: line 5: not utf-8 text"),  # UnicodeDecodeError
    ],
    "flowers": [
        ("imagelabels.mat", lambda d: _mat_bytes(labels=np.zeros(0)),
         r"setid.mat, variable 'trnid': entry 1: id 1 is outside 1..0"),  # IndexError
        ("setid.mat", lambda d: _mat_bytes(trnid="text", valid=[[4]], tstid=[[7]]),
         r"setid.mat, variable 'trnid': expected a list of integer ids"),  # ValueError
    ],
    "inat2019": [
        ("train2019.json", _json_edit(lambda doc: doc["images"][0].update(id=[10])),
         r"train2019.json: images\[0\]: wrong type of \['id \(int\)'\]"),  # TypeError
    ],
    "imagenet32": [
        ("imagenet32_to_fine.json", _json_edit(lambda doc: doc.update({"0": 2**70})),
         r"imagenet32_to_fine.json: expected a JSON object .*OverflowError"),  # OverflowError
        ("Imagenet32_val_npz/val_data.npz",
         lambda d: _npz_bytes(data=np.zeros((3, 3072), np.uint8), labels=[1.5, 2, 3]),
         r"val_data.npz: 'labels' must be integers"),  # silently label 0
    ],
    "cifar10": [
        ("cifar-10-batches-py/test_batch",
         lambda d: _pickled({b"data": np.zeros((4, 3072), np.uint8),
                             b"labels": _Payload(os.devnull)}),
         r"test_batch: cannot read as a CIFAR pickle: refusing global \w+\.open"),  # ran it
        ("cifar-10-batches-py/batches.meta", lambda d: _pickled({b"label_names": 1.5}),
         r"batches.meta: 'label_names' must be a list of names"),  # TypeError
        ("cifar-10-batches-py/test_batch",
         lambda d: _pickled({b"data": [[1, 2], [3]], b"labels": [0, 1]}),
         r"test_batch: 'data' is not an array"),  # ValueError naming no file
    ],
    "csv": [
        ("data.csv", lambda d: d.replace(b"0.png,0,", b"0.png,99999999999999999999,"),
         r"data.csv: row 2, column 'label': integer label \d+ is outside 0..999999"),  # hang
        ("data.csv", lambda d: d.replace(b"0.png,0,", b"0.png,--5,"),
         r"data.csv: row 2, column 'label': '--5' is not an integer"),  # ValueError, no file
        ("data.csv", lambda d: d.replace(b"1.png", b"1\xff.png"),
         r"data.csv: line 3: not utf-8 text"),  # UnicodeDecodeError
        ("data.csv", lambda d: d.replace(b"0.png", b'"' + b"x" * 200_000 + b'"'),
         r"data.csv: field larger than field limit"),  # csv.Error (not a user error)
    ],
}  # fmt: skip


def _check_found(kind, root, builds) -> None:
    for relpath, corrupt, pattern in FOUND.get(kind, []):
        path = root / relpath
        original = path.read_bytes()
        path.write_bytes(corrupt(original))
        messages = []
        for build in builds:
            try:
                build()
            except (ValueError, OSError) as e:
                messages.append(str(e))
        path.write_bytes(original)
        assert any(re.search(pattern, m, re.IGNORECASE) for m in messages), (pattern, messages)


@pytest.mark.parametrize("kind", list(KINDS))
def test_fuzz_dataset_readers(kind, request, tmp_path):
    fixture, get_root, splits, globs = KINDS[kind]
    if fixture is None:
        root = get_root(tmp_path)
    else:
        root = request.getfixturevalue(fixture)
        root = get_root(root) if get_root else root
    if kind == "flowers":
        (root / "cat_to_name.json").write_text(json.dumps({str(k): f"c{k}" for k in range(1, 103)}))
    if kind == "imagenet32":
        _maskcon_files(root)
    config_root = root / "data.csv" if kind == "csv" else root
    builds = [
        lambda s=s, o=o: _check_source(build_source(data_config(kind, config_root, **o), s))
        for s, o in splits.items()
    ]
    for build in builds:  # the valid dataset builds
        assert _outcome(build, root, root) == "ok"
    _check_found(kind, root, builds)
    rng = np.random.default_rng(0)
    files = sorted(p for g in globs for p in root.glob(g))
    assert files, globs
    counts: Counter = Counter()
    raw = []
    for path in files:
        original = path.read_bytes()
        for _ in range(max(6, -(-MUTATIONS_PER_KIND // len(files)))):
            op = _mutator(path)(path, rng)
            for build in builds:
                try:
                    counts[_outcome(build, root, path)] += 1
                except AssertionError as e:
                    raw.append(f"{path.relative_to(root)} [{op}]: {e}")
            assert not (path.parent / "PAYLOAD_RAN").exists(), "a pickle ran code on load"
            path.write_bytes(original)
    print(f"\nfuzz {kind}: {len(files)} files, {sum(counts.values())} cases, {dict(counts)}")
    assert not raw, f"{len(raw)} raw exception(s):\n" + "\n".join(raw[:20])
    assert counts["named"] > 0  # the mutations do reach the checks


def test_mat_type_codes_that_crash_scipy_are_refused(tmp_path):
    """A .mat data element with an unknown type code made scipy's loadmat crash the process
    (segmentation fault; found by the fuzz on cars_test_annos_withlabels.mat): the tags are
    checked first. Also an element longer than its matrix, and a truncated file."""
    data = _mat_bytes(a=np.array([[7, 8, 9]], np.uint16))
    # header 128 + matrix tag 8 + flags 16 + dims 16 + name 8: the uint16 data tag at 176
    assert int.from_bytes(data[176:180], "little") == 4  # miUINT16
    path = tmp_path / "a.mat"
    for offset, value, pattern in (
        (176, 8, r"byte 176 \(type 8,"),
        (176, 123, r"byte 176 \(type 123,"),
        (180, 123, r"byte 176 \(type 4, 123 bytes, 8 left\)"),
    ):
        path.write_bytes(data[:offset] + value.to_bytes(4, "little") + data[offset + 4 :])
        with pytest.raises(
            DatasetFormatError, match=f"a.mat: corrupt MATLAB data element at {pattern}"
        ):
            load_mat(str(path))
    path.write_bytes(data[:150])
    with pytest.raises(DatasetFormatError, match="a.mat: corrupt MATLAB data element at byte 128"):
        load_mat(str(path))
    path.write_bytes(data)
    assert load_mat(str(path))["a"].tolist() == [7, 8, 9]


def _png_with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` (a PNG) with its IHDR claiming width x height (CRC fixed, so PIL opens it)."""
    ihdr = data[12:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:29]
    return data[:16] + ihdr[4:] + zlib.crc32(ihdr).to_bytes(4, "big") + data[33:]


def test_fuzz_image_decoding(tmp_path):
    """Corrupt JPEG / PNG files through both decode paths: a uint8 crop or an
    ImageDecodeError naming the file; with skip_bad the eval loader counts them instead."""
    rng = np.random.default_rng(0)
    pixels = np.linspace(0, 255, 40 * 30 * 3).reshape(30, 40, 3).astype(np.uint8)
    valid = {}
    for ext, fmt in ((".jpg", "JPEG"), (".png", "PNG")):
        Image.fromarray(pixels).save(tmp_path / f"valid{ext}", fmt)
        valid[ext] = (tmp_path / f"valid{ext}").read_bytes()
    cases = [("png_named_jpg", ".jpg", valid[".png"]), ("empty", ".jpg", b"")]
    cases.append(("huge_header", ".png", _png_with_size(valid[".png"], 100_000, 100_000)))
    for ext, data in valid.items():
        for op in ("truncate", "flip", "garbage") * 6:
            cases.append((op, ext, _bytes_op(data, rng, op)))
    views = [ViewSpec("v", 8), ViewSpec("w", 6, crop="squash_random_crop", squash_size=10)]
    counts: Counter = Counter()
    raw, bad_files = [], []
    for k, (op, ext, data) in enumerate(cases):
        path = tmp_path / f"case{k}{ext}"
        path.write_bytes(data)
        record = {"path": str(path), "index": k, "label": 0}
        outcomes = []
        for decode in (
            lambda r=record: [resize_center_crop(r, image_size=8)],
            lambda r=record: list(random_crop_views(r, rng, views).values()),
        ):
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(CASE_SECONDS)
            try:
                crops = decode()
                assert all(c.dtype == np.uint8 and c.shape[-1] == 3 for c in crops)
                outcomes.append("ok")
            except ImageDecodeError as e:
                assert str(path) in str(e), e
                outcomes.append("named")
            except Exception as e:  # noqa: BLE001 - the finding
                raw.append(f"{op} {ext}: {type(e).__name__}: {e}")
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
        counts.update(outcomes)
        if "named" in outcomes:
            bad_files.append(str(path))
    print(f"\nfuzz images: {len(cases)} files, {dict(counts)}")
    assert not raw, "\n".join(raw)
    assert counts["named"] >= len(cases) // 2  # most corruptions are caught, not decoded

    from fgjax.data.eval_loader import make_eval_loader
    from fgjax.data.sources import LabeledSource

    paths = [str(tmp_path / f"case{k}{ext}") for k, (_, ext, _) in enumerate(cases)]
    source = LabeledSource(
        dataset="fuzz", split="all", paths=paths, labels=np.zeros(len(paths)), class_names=["a"]
    )
    loader = make_eval_loader(source, batch_size=16, image_size=8, skip_bad=True)
    batches = list(loader)
    listed = [b for batch in batches for b in batch["bad_images"]]
    assert sum(int(batch["mask"].sum()) for batch in batches) == len(paths)
    assert len(listed) == len(bad_files)  # every file a decoder refused, counted once
    assert all(any(f in line for line in listed) for f in bad_files)


def _fixture(name: str) -> bytes:
    with open(os.path.join(REPO, "tests", "fixtures", name), "rb") as f:
        return f.read()


def test_fuzz_checkpoint_description_and_prototype_files(tmp_path):
    """Torch checkpoints (`load_pth`), class description CSVs and prototype arrays."""
    from fgjax.methods.leadpp.text.prototypes import load_prototypes, read_descriptions
    from fgjax.weights.pth_reader import load_pth

    rng = np.random.default_rng(0)
    csv_path = tmp_path / "descriptions.csv"
    csv_text = 'class name,description\nA,"a bird, small"\nB,a large bird\n'
    npy_path, npz_path = tmp_path / "p.npy", tmp_path / "p.npz"
    protos = rng.normal(size=(3, 4)).astype(np.float32)
    np.save(npy_path, protos)
    np.savez(npz_path, prototypes=protos)
    readers = {
        tmp_path / "r.pth": (_fixture("resnet_small.pth"), load_pth),  # zip format
        tmp_path / "r_legacy.pth": (_fixture("resnet_small_legacy.pth"), load_pth),
        csv_path: (csv_text.encode(), read_descriptions),
        npy_path: (npy_path.read_bytes(), lambda p: load_prototypes(p, normalize=True)),
        npz_path: (npz_path.read_bytes(), lambda p: load_prototypes(p, normalize=True)),
    }
    counts: Counter = Counter()
    raw = []
    for path, (original, read) in readers.items():
        for _ in range(12):
            op = BYTE_OPS[int(rng.integers(len(BYTE_OPS)))]
            path.write_bytes(_bytes_op(original, rng, op))
            try:
                counts[_outcome(lambda p=path, r=read: r(p), tmp_path, path)] += 1
            except AssertionError as e:
                raw.append(f"{path.name} [{op}]: {e}")
        path.write_bytes(original)
    print(f"\nfuzz checkpoints / descriptions / prototypes: {dict(counts)}")
    assert not raw, "\n".join(raw)


def test_inspect_cli_on_fuzzed_cub_ends_in_one_error_line(tmp_path):
    """`python -m fgjax.cli.inspect` on broken CUB index files: SystemExit('error: ...')
    naming the file, never a traceback."""
    from fgjax.cli.inspect import main

    root = _cub_root(tmp_path)
    rng = np.random.default_rng(0)
    base = root / "CUB_200_2011"
    broken = {
        "images.txt": lambda d: d.replace(b"\n", b"\xff\n", 1),  # not UTF-8
        "image_class_labels.txt": lambda d: d + b"7 1 extra\n",
        "train_test_split.txt": lambda d: d.replace(b" 0\n", b" x\n", 1),
        "classes.txt": lambda d: _bytes_op(d, rng, "truncate")[:5],
    }
    for name, corrupt in broken.items():
        original = (base / name).read_bytes()
        (base / name).write_bytes(corrupt(original))
        argv = ["--config", os.path.join(REPO, "configs", "cub_moco.py"),
                f"--config.data.root={root}", "--out", str(tmp_path / "out")]  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and name in message, message
        (base / name).write_bytes(original)
