"""safetensors reader/writer, format sniffing, wrapped training checkpoints, writers by suffix."""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from fgjax.weights import (
    CheckpointFormatError,
    load_safetensors,
    read_checkpoint,
    save_pth,
    save_safetensors,
    write_state_dict,
)
from fgjax.weights.formats import sniff
from fgjax.weights.safetensors_io import SafetensorsError, read_header

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "f64": rng.standard_normal(3),
        "f16": rng.standard_normal(5).astype(np.float16),
        "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "count": np.array(7, np.int64),
        "mask": np.array([True, False, True]),
        "u8": np.arange(10, dtype=np.uint8),
        "empty": np.zeros((0,), np.float32),
    }


def test_safetensors_round_trip_and_header(tmp_path):
    tensors = _tensors()
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors, metadata={"format": "pt"})
    header, start = read_header(path)
    assert (start - 8) % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    assert header["bf16"] == {"dtype": "BF16", "shape": [2, 3], "data_offsets": [466, 478]}
    back = load_safetensors(path)
    assert list(back) == list(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def _raw_safetensors(path, header, data):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "out of order"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "holds 4 bytes"),
        ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "bad entry"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "trailing"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "out of order",
        ),
    ],
    ids=["past-end", "size", "dtype", "trailing", "overlap"],
)
def test_malformed_safetensors_are_refused(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    _raw_safetensors(path, header, data)
    with pytest.raises(SafetensorsError, match=message) as err:
        load_safetensors(path)
    assert "bad.safetensors" in str(err.value)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors", ".npz"])
def test_write_then_read_any_format(tmp_path, suffix):
    tensors = {k: v for k, v in _tensors().items() if k != "bf16" or suffix != ".npz"}
    path = tmp_path / f"w{suffix}"
    write_state_dict(path, tensors)
    assert sniff(path) == {".pth": "torch", ".pt": "torch"}.get(suffix, suffix[1:])
    back = read_checkpoint(path)
    assert list(back) == list(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_wrapped_training_checkpoint_is_unwrapped_with_a_note():
    notes = []
    tensors = read_checkpoint(os.path.join(FIXTURES, "resnet_misc.pth"), notes)
    assert "view_offset" in tensors and "epoch" not in tensors
    assert notes == ["weights read from checkpoint['state_dict'] (also held: arch, epoch, extra)"]


def test_unknown_and_missing_files_name_the_path(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not weights")
    with pytest.raises(CheckpointFormatError, match="junk.bin"):
        read_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown output format"):
        write_state_dict(tmp_path / "w.h5", {"a": np.zeros(1)})
    # A zip whose end record is intact but whose central directory is not: zipfile's own
    # BadZipFile would name no file.
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    data = (tmp_path / "w.npz").read_bytes()
    (tmp_path / "damaged.npz").write_bytes(data.replace(b"PK\x01\x02", b"PK\x09\x09", 1))
    with pytest.raises(CheckpointFormatError, match=r"damaged.npz: damaged zip archive"):
        sniff(tmp_path / "damaged.npz")


def test_torch_file_without_tensors_is_an_error(tmp_path):
    path = tmp_path / "empty.pth"
    save_pth(path, {})
    with pytest.raises(CheckpointFormatError, match="no tensors found"):
        read_checkpoint(path)
