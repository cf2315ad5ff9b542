"""safetensors files, read and written with numpy only.

Layout: an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}` (space-padded to a multiple of 8), then the tensors' little-endian,
C-contiguous bytes; offsets count from the first byte after the header and must tile
the data region exactly.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

PathLike = str | os.PathLike

MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
    "C64": np.dtype("<c8"),
}


class SafetensorsError(ValueError):
    """Malformed safetensors file."""


def _code(dtype: np.dtype) -> str:
    native = dtype.newbyteorder("<") if dtype.kind in "biufc" else dtype
    for code, candidate in DTYPES.items():
        if candidate == native:
            return code
    raise ValueError(f"dtype {dtype} has no safetensors code")


def read_header(path: PathLike) -> tuple[dict, int]:
    """(JSON header, byte offset of the data region)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise SafetensorsError(f"{os.fspath(path)}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{os.fspath(path)}: header of {n} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SafetensorsError(f"{os.fspath(path)}: bad JSON header ({e!r})") from None
    if not isinstance(header, dict) or len(raw) != n:
        raise SafetensorsError(f"{os.fspath(path)}: bad header")
    return header, 8 + n


def load_safetensors(path: PathLike) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as numpy arrays (file order of offsets)."""
    name = os.fspath(path)
    header, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    entries = sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"),
        key=lambda kv: tuple(kv[1].get("data_offsets", (0, 0))) if isinstance(kv[1], dict) else (),
    )
    out: dict[str, np.ndarray] = {}
    expected_begin = 0
    for key, info in entries:
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{name}: bad entry for {key!r} ({e!r})") from None
        if begin != expected_begin or end < begin or end > len(data) or min(shape, default=0) < 0:
            raise SafetensorsError(f"{name}: {key!r} has offsets {begin}..{end} out of order")
        if (end - begin) != int(np.prod(shape)) * dtype.itemsize:
            raise SafetensorsError(f"{name}: {key!r} holds {end - begin} bytes for {shape}")
        array = np.frombuffer(data, dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        out[key] = array.reshape(shape).astype(
            dtype.newbyteorder("=") if dtype.kind in "biufc" else dtype
        )
        expected_begin = end
    if expected_begin != len(data):
        raise SafetensorsError(f"{name}: {len(data) - expected_begin} trailing bytes")
    return out


def save_safetensors(
    path: PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Write `{name: array}` (any shapes, dtypes in `DTYPES`) as a safetensors file."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs: list[bytes] = []
    offset = 0
    for key, value in tensors.items():
        array = np.asarray(value)
        code = _code(array.dtype)
        blob = np.ascontiguousarray(array.astype(DTYPES[code], copy=False)).tobytes()
        header[key] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
