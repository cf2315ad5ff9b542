"""Any supported weight file <-> a flat `{name: np.ndarray}` dict.

Formats are recognised by content, not extension: torch zip (`.pth`/`.pt`/`.tar`),
torch legacy pickle stream, safetensors, numpy `.npz`. Training checkpoints that wrap
the weights (`{'epoch': .., 'state_dict': {...}, 'optimizer': ...}`) are unwrapped.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from fgjax.weights.pth_reader import CheckpointFormatError, check_zip_entries, load_pth
from fgjax.weights.pth_writer import save_pth
from fgjax.weights.safetensors_io import MAX_HEADER_BYTES, load_safetensors, save_safetensors

PathLike = str | os.PathLike

# Where training scripts put the model weights, most specific first.
WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "online_network_state_dict",
    "network",
    "net",
    "params",
)


def sniff(path: PathLike) -> str:
    """'torch', 'npz', 'safetensors' or raises `CheckpointFormatError` naming the file."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name}: no such checkpoint file")
    if zipfile.is_zipfile(name):
        try:
            with zipfile.ZipFile(name) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:  # a damaged central directory
            raise CheckpointFormatError(f"{name}: damaged zip archive ({e})") from None
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "torch"
    with open(name, "rb") as f:
        head = f.read(9)
    if head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < MAX_HEADER_BYTES:
        return "safetensors"
    raise CheckpointFormatError(
        f"{name}: not a recognised weight file (expected a torch .pth/.pt, .safetensors or .npz)"
    )


def _arrays(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """Array leaves of nested dicts, keys '.'-joined; other leaves are skipped."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(_arrays(value, name + "."))
    return out


def select_state_dict(
    obj: Any, source: str = "checkpoint"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The weights inside an unpickled checkpoint, and notes on where they were found."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"{source}: holds a {type(obj).__name__}, not a dict of tensors"
        )
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _arrays(inner):
            skipped = sorted(str(k) for k in obj if k != key)
            note = f"weights read from checkpoint[{key!r}]"
            if skipped:
                note += f" (also held: {', '.join(skipped)})"
            return _arrays(inner), [note]
    tensors = _arrays(obj)
    if not tensors:
        raise CheckpointFormatError(
            f"{source}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    return tensors, []


def check_npz(name: str) -> None:
    """Refuse an .npz whose members expand out of proportion (`check_zip_entries`) or whose
    `.npy` header declares more bytes than the member holds (a shape of (10^12,) in a small
    file), before numpy allocates anything."""
    with zipfile.ZipFile(name) as zf:
        check_zip_entries(zf)
        for info in zf.infolist():
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise CheckpointFormatError(f"member {info.filename!r}: .npy {version}")
                shape, _, dtype = read_header(member)
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if dtype.hasobject or declared != info.file_size - member.tell():
                    raise CheckpointFormatError(
                        f"member {info.filename!r} declares shape {shape} of {dtype} "
                        f"({declared} bytes) but holds {info.file_size - member.tell()}"
                    )


def read_checkpoint(path: PathLike, notes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Flat `{key: array}` of a torch / safetensors / npz file (unwrapped, see module doc).

    `notes`, when given, receives a line on how the state dict was located.
    """
    name = os.fspath(path)
    kind = sniff(name)
    if kind == "npz":
        try:
            check_npz(name)
            with np.load(name, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            message = str(e) if isinstance(e, CheckpointFormatError) else f"unreadable .npz ({e})"
            raise CheckpointFormatError(f"{name}: {message}") from None
    if kind == "safetensors":
        return load_safetensors(name)
    tensors, found = select_state_dict(load_pth(name), name)
    if notes is not None:
        notes += found
    return tensors


def write_state_dict(path: PathLike, tensors: Mapping[str, np.ndarray]) -> None:
    """Write `{key: array}` as `.pth`/`.pt`/`.bin` (torch zip), `.safetensors` or `.npz`."""
    name = os.fspath(path)
    suffix = os.path.splitext(name)[1].lower()
    if suffix in (".pth", ".pt", ".bin", ".tar"):
        save_pth(name, tensors)
    elif suffix == ".safetensors":
        save_safetensors(name, tensors)
    elif suffix == ".npz":
        np.savez(name, **{k: np.asarray(v) for k, v in tensors.items()})
    else:
        raise ValueError(f"{name}: unknown output format (use .pth, .pt, .safetensors or .npz)")
