"""PyTorch checkpoints (`.pth`) written without torch.

`save_pth` writes a flat `{name: array}` dict as a zip checkpoint that
`torch.load(path, weights_only=True)` accepts: the pickle is emitted opcode by opcode
(an `OrderedDict` of `_rebuild_tensor_v2(storage, 0, shape, stride, False,
OrderedDict())` calls, storages as persistent ids), one little-endian record per tensor,
64-byte aligned so `torch.load(..., mmap=True)` works too.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from fgjax.weights.pth_storage import STORAGE_DTYPES

PathLike = str | os.PathLike


def _storage_name(dtype: np.dtype) -> str:
    dtype = dtype.newbyteorder("=") if dtype.kind in "biufc" else dtype
    for name, candidate in STORAGE_DTYPES.items():
        if candidate == dtype and name != "UntypedStorage":
            return name
    raise ValueError(f"dtype {dtype} has no torch storage type")


class _PickleWriter:
    """Protocol-2 opcodes for the handful of values a state dict pickle needs."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")

    def value(self, v: Any) -> None:
        if v is True or v is False:
            self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            if 0 <= v < 256:
                self.out += b"K" + bytes([v])
            elif 0 <= v < 65536:
                self.out += b"M" + struct.pack("<H", v)
            elif -(2**31) <= v < 2**31:
                self.out += b"J" + struct.pack("<i", v)
            else:
                raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
                self.out += b"\x8a" + bytes([len(raw)]) + raw
        elif isinstance(v, str):
            raw = v.encode("utf-8")
            self.out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(v, tuple):
            if not v:
                self.out += b")"
                return
            self.out += b"("
            for item in v:
                self.value(item)
            self.out += b"t"
        else:
            raise TypeError(f"cannot write {type(v).__name__}")

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"

    def tensor(self, storage_name: str, key: str, array: np.ndarray) -> None:
        """`_rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())`."""
        strides = np.zeros(array.ndim, np.int64)
        running = 1
        for axis in range(array.ndim - 1, -1, -1):
            strides[axis] = running
            running *= array.shape[axis]
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"("  # args tuple
        self.out += b"("  # persistent id tuple
        self.value("storage")
        self.global_("torch", storage_name)
        self.value(key)
        self.value("cpu")
        self.value(int(array.size))
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.value(0)
        self.value(tuple(int(d) for d in array.shape))
        self.value(tuple(int(s) for s in strides))
        self.value(False)
        self.empty_ordered_dict()
        self.out += b"tR"  # TUPLE, REDUCE


def _aligned_info(zf: zipfile.ZipFile, name: str, alignment: int = 64) -> zipfile.ZipInfo:
    """ZipInfo whose data starts on an `alignment` boundary (padding in the extra field)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode("utf-8")) + 4
    pad = (-(zf.fp.tell() + header)) % alignment
    info.extra = struct.pack("<HH", 0x4650, pad) + b"\0" * pad
    return info


def save_pth(path: PathLike, tensors: Mapping[str, np.ndarray], root: str = "archive") -> None:
    """Write `{name: array}` as a torch zip checkpoint (an `OrderedDict` of tensors).

    Arrays keep their dtype (float32/64/16, bfloat16, ints, bool) and shape; data is
    stored little-endian and C-contiguous, one storage per tensor.
    """
    writer = _PickleWriter()
    writer.global_("collections", "OrderedDict")
    writer.out += b")R"
    records: list[tuple[str, np.ndarray]] = []
    if tensors:
        writer.out += b"("
        for i, (name, value) in enumerate(tensors.items()):
            array = np.asarray(value)
            if array.dtype.kind in "biufc":  # stored little-endian whatever the host
                array = array.astype(array.dtype.newbyteorder("<"), copy=False)
            if not isinstance(name, str):
                raise TypeError(f"state dict keys must be str, got {name!r}")
            key = str(i)
            writer.value(name)
            writer.tensor(_storage_name(array.dtype), key, array)
            records.append((key, array))
        writer.out += b"u"  # SETITEMS
    writer.out += b"."
    with zipfile.ZipFile(os.fspath(path), "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(_aligned_info(zf, f"{root}/data.pkl"), bytes(writer.out))
        zf.writestr(_aligned_info(zf, f"{root}/byteorder"), b"little")
        for key, array in records:
            data = np.ascontiguousarray(array)
            zf.writestr(_aligned_info(zf, f"{root}/data/{key}"), data.tobytes())
        zf.writestr(_aligned_info(zf, f"{root}/version"), b"3\n")
