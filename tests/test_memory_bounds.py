"""Small hostile files must not allocate gigabytes before any check (issue #30, item 4).

Each file is generated here (nothing binary is committed) and read in a fresh process
whose peak resident memory (VmHWM) must stay under 300 MB, ending in one named
error. Before the bounds: a 9-byte pickle took 1.25 GB, a zip bomb's storage 2.3 GB."""

import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO

from fgjax.weights.pth_reader import CheckpointFormatError, load_pth

PEAK_MB = 300
MIB = 2**20

# Reads one file the way the command named by argv[1] does; prints the error and the peak.
_READER = """
import sys
kind, path = sys.argv[1:]
try:
    if kind == "weights":
        from fgjax.weights.formats import read_checkpoint
        read_checkpoint(path)
    else:
        from fgjax.data.layout import load_array_pickle
        load_array_pickle(path, "bytes")
    print("ERROR none")
except Exception as err:
    print("ERROR", type(err).__name__, err)
# VmHWM, the peak of this process image: ru_maxrss keeps the parent's resident size from
# before the exec (a pytest worker's gigabytes), so it cannot measure a fresh process.
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print("PEAK_MB", peak_kb / 1024)
"""


def _read(kind: str, path) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _READER, kind, str(path)],
        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert "PEAK_MB" in lines, out.stdout + out.stderr
    return lines["ERROR"], float(lines["PEAK_MB"])


def _memo_bomb() -> bytes:
    """9 bytes: None, then LONG_BINPUT at memo index 2^26 (the C unpickler sized its memo
    array to it: ~16 bytes per index), then STOP."""
    return b"\x80\x02N" + b"r" + struct.pack("<I", 2**26) + b"."


def _zip_member(zf: zipfile.ZipFile, name: str, size: int, chunk: bytes = b"\0" * MIB):
    """A `size`-byte member of repeated `chunk`, deflated while streamed (little memory)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as out:
        for _ in range(size // len(chunk)):
            out.write(chunk)


def _write_zip(path, members) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, size in members:
            _zip_member(zf, name, size)


def test_a_memo_index_bomb_allocates_nothing(tmp_path):
    path = tmp_path / "bomb.pth"
    path.write_bytes(_memo_bomb())
    error, peak = _read("weights", path)
    assert error.startswith("CheckpointFormatError") and str(path) in error, error
    assert peak < PEAK_MB, peak
    batch = tmp_path / "data_batch_1"  # the CIFAR reader's unpickler (its memo a dict)
    batch.write_bytes(_memo_bomb())
    error, peak = _read("cifar", batch)
    assert error == "none" and peak < PEAK_MB, (error, peak)  # None: refused by the reader


def test_a_zip_bomb_storage_and_a_huge_object_pickle_are_refused_unread(tmp_path):
    bomb = tmp_path / "storage_bomb.pth"  # 300 MiB of zeros in ~0.3 MB
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        _zip_member(zf, "archive/data/0", 300 * MIB)
    assert bomb.stat().st_size < 2 * MIB
    error, peak = _read("weights", bomb)
    assert "'archive/data/0' would expand from" in error and peak < PEAK_MB, (error, peak)

    big_pickle = tmp_path / "pickle_bomb.pth"  # 128 MiB data.pkl in ~130 KB
    _write_zip(big_pickle, [("archive/data.pkl", 128 * MIB)])
    error, peak = _read("weights", big_pickle)
    assert "more than the 32 MiB an object pickle may" in error and peak < PEAK_MB, (error, peak)


def _npy_header(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()  # magic, version and header


def test_npz_bombs_and_lying_npy_headers_are_refused(tmp_path):
    zeros = tmp_path / "zeros.npz"  # 300 MiB of zeros, deflated
    with zipfile.ZipFile(zeros, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("w.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as out:
            out.write(_npy_header((300 * MIB // 4,)))
            for _ in range(300):
                out.write(b"\0" * MIB)
    error, peak = _read("weights", zeros)
    assert "'w.npy' would expand from" in error and peak < PEAK_MB, (error, peak)

    huge = tmp_path / "huge_shape.npz"  # a header declaring 10^12 floats, 16 bytes of data
    with zipfile.ZipFile(huge, "w") as zf:
        zf.writestr("w.npy", _npy_header((10**12,)) + b"\0" * 16)
    error, peak = _read("weights", huge)
    assert "declares shape (1000000000000,)" in error and "holds 16" in error, error
    assert peak < PEAK_MB


def test_a_deeply_nested_safetensors_header_is_one_named_error(tmp_path):
    header = json.dumps({"w": None}).replace("null", "[" * 100_000 + "]" * 100_000).encode()
    path = tmp_path / "nested.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    out = subprocess.run(
        [sys.executable, "-m", "fgjax.weights", "inspect", str(path)],
        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr  # the weights command: 2 on a bad input file
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], lines


def test_a_legacy_storage_larger_than_the_file_is_refused_before_reading(tmp_path):
    source = os.path.join(REPO, "tests", "fixtures", "resnet_small_legacy.pth")
    data = bytearray(open(source, "rb").read())
    stream = io.BytesIO(bytes(data))
    for _ in range(5):  # magic, protocol, sys info, the objects, the storage keys
        for op, _, _ in pickletools.genops(stream):
            if op.name == "STOP":
                break
    at = stream.tell()  # the first storage's element count, then its bytes
    left = len(data) - at - 8
    data[at : at + 8] = struct.pack("<q", 2**40)
    path = tmp_path / "legacy.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match=f"bytes declared, {left} left"):
        load_pth(path)
