"""The torch-free .pth reader/writer: real torch.save files, round trips, malformed files.

Attack pickles against the reader's allowlist: tests/test_pth_allowlist.py."""

import io
import os
import pickletools
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest

from fgjax.weights.pth_reader import (
    CheckpointFormatError,
    load_pth,
)
from fgjax.weights.pth_writer import _PickleWriter, save_pth

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _expected():
    with np.load(os.path.join(FIXTURES, "resnet_misc.npz")) as data:
        names = [k.split("/", 1)[1] for k in data.files if k.startswith("expected/")]
        return {n: (data[f"expected/{n}"], str(data[f"dtype/{n}"])) for n in names}


@pytest.mark.parametrize("name", ["resnet_misc.pth", "resnet_misc_legacy.pth"])
def test_reads_torch_save_views_dtypes_and_containers(name):
    """Offsets, transposes, steps, stride-0 expands and shared storages come back as the
    torch values; half/bfloat16/uint16 (rebuild_v3)/Parameter/bool/int keep their dtype."""
    ckpt = load_pth(os.path.join(FIXTURES, name))
    assert ckpt["epoch"] == 3 and ckpt["arch"] == "resnet50"
    assert ckpt["extra"]["pair"] == (1, "a") and ckpt["extra"]["set"] == {1, 2}
    np.testing.assert_array_equal(ckpt["extra"]["list"][0], [True, False, True])
    assert ckpt["extra"]["list"][1] == 2.5
    expected = _expected()
    assert list(ckpt["state_dict"]) == list(expected)
    for key, (want, dtype) in expected.items():
        got = ckpt["state_dict"][key]
        assert isinstance(got, np.ndarray) and got.flags.writeable, key
        assert got.dtype == np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype), key
        np.testing.assert_array_equal(np.asarray(got, want.dtype), want, err_msg=key)


def test_writer_round_trip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "bf16": rng.standard_normal((4,)).astype(ml_dtypes.bfloat16),
        "i64_scalar": np.array(2**40, np.int64),
        "i32": np.arange(-5, 5, dtype=np.int32),
        "u8": np.arange(256, dtype=np.uint8),
        "bool": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
        "big_endian": np.arange(4, dtype=">f4"),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2)).astype(np.float32)),
        "unicode ключ": np.ones(1, np.float32),
    }
    path = tmp_path / "w.pth"
    save_pth(path, tensors)
    back = load_pth(path)
    assert isinstance(back, OrderedDict) and list(back) == list(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype.newbyteorder("="), key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_writer_layout_is_a_torch_zip_checkpoint(tmp_path):
    path = tmp_path / "w.pth"
    save_pth(path, {"a": np.ones((2, 3), np.float32), "b": np.zeros(5, np.int64)})
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert set(infos) == {
            "archive/data.pkl",
            "archive/byteorder",
            "archive/version",
            "archive/data/0",
            "archive/data/1",
        }
        assert zf.read("archive/byteorder") == b"little"
        for info in infos.values():
            assert info.compress_type == zipfile.ZIP_STORED
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % 64 == 0, info.filename  # torch.load(mmap=True) wants alignment
        globals_used = {
            arg
            for op, arg, _ in pickletools.genops(zf.read("archive/data.pkl"))
            if op.name == "GLOBAL"
        }
    assert globals_used == {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch FloatStorage",
        "torch LongStorage",
    }


# --------------------------------------------------------------------------- safety


def _torch_zip(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    writer = _PickleWriter()
    writer.tensor("FloatStorage", "0", np.zeros(100, np.float32))  # claims 100 elements
    writer.out += b"."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", bytes(writer.out))
        zf.writestr("archive/data/0", np.zeros(2, np.float32).tobytes())  # holds 2
    path = tmp_path / "oob.pth"
    path.write_bytes(buf.getvalue())
    declared = "storage .0. declares 400 bytes, its record .archive/data/0. holds 8"
    with pytest.raises(CheckpointFormatError, match=declared):
        load_pth(path)


def test_pickle_cannot_rewrite_a_validated_tensor(tmp_path):
    writer = _PickleWriter()
    writer.tensor("FloatStorage", "0", np.zeros(4, np.float32))
    writer.out += b"N}"  # BUILD state (None, {'stride': (-1000,)}) on the tensor
    writer.value("stride")
    writer.value((-1000,))
    writer.out += b"s\x86b."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", bytes(writer.out))
        zf.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    path = tmp_path / "build.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointFormatError, match="refusing pickle BUILD on _TensorRef"):
        load_pth(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint", b"\x80\x02K\x05.", _torch_zip(b"\x80\x02garbage")],
    ids=["empty", "text", "wrong-magic", "corrupt-pickle"],
)
def test_bad_files_raise_errors_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match="bad.pth"):
        load_pth(path)
