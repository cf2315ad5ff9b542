"""Flax variable trees as flat '/'-joined paths, and filling them from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fgjax.weights.load_report import LoadReport

Path = tuple[str, ...]


@dataclass
class ImportReport(LoadReport):
    """`LoadReport` plus what was deliberately left out.

    `ignored` holds checkpoint keys that are recognised but not part of the backbone
    (classifier/projection heads, the momentum encoder, queues, `num_batches_tracked`);
    they do not make `ok` false. `notes` says, in words, which prefix was stripped, which
    wrapper key the state dict came from and why each ignored group was dropped.
    """

    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [super().__str__()]
        lines += [f"note: {n}" for n in self.notes]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} checkpoint tensors (see notes)")
        return "\n".join(lines)


def as_import_report(report: LoadReport) -> ImportReport:
    """An `ImportReport` with the fields of `report` (itself if it already is one)."""
    if isinstance(report, ImportReport):
        return report
    return ImportReport(
        loaded=list(report.loaded),
        missing=list(report.missing),
        unexpected=list(report.unexpected),
        mismatched=list(report.mismatched),
    )


# --------------------------------------------------- torch <-> flax layouts of one tensor
# One rule for every converter (ResNet, Swin, CLIP): the leaf name says what a tensor is.


def torch_module_path(key: str) -> Path:
    """A torch state-dict key as a flax path, list indices joined to their module:
    `layers.0.blocks.1.attn.qkv.weight` -> (`layers_0`, `blocks_1`, `attn`, `qkv`, `weight`)."""
    parts: list[str] = []
    for part in key.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return tuple(parts)


def torch_to_flax(path: Path, array: np.ndarray) -> np.ndarray:
    """A torch tensor in the flax layout of the variable at `path` (a `fill` converter):
    a `kernel` from a Linear `[out, in]` becomes a Dense `[in, out]`, from a Conv2d
    `[O, I, kh, kw]` a Conv `[kh, kw, I, O]`; anything else is returned as it is."""
    if path[-1] == "kernel" and array.ndim == 2:
        return array.T
    if path[-1] == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array


def flax_to_torch(path: Path, array: np.ndarray) -> np.ndarray:
    """The inverse of `torch_to_flax`, C-contiguous (as a torch state dict stores it)."""
    if path[-1] == "kernel" and array.ndim == 2:
        array = array.T
    elif path[-1] == "kernel" and array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    return np.ascontiguousarray(array)


def torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the variable at `path` in torch's layout (a `fill` `source_shape`):
    what `torch_to_flax` would have had to receive for a flax `shape`."""
    if path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    if path[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    """`{'params': {'conv1': {'kernel': x}}}` -> `{('params', 'conv1', 'kernel'): x}`."""
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
    """Inverse of `flatten` (plain nested dicts)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def flatten_to_strings(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`{'params/conv1/kernel': array, 'batch_stats/bn1/mean': array, ...}` (fgjax .npz)."""
    return {"/".join(path): np.asarray(value) for path, value in flatten(tree).items()}


def unflatten_strings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_to_strings`."""
    return unflatten({tuple(key.split("/")): value for key, value in flat.items()})


def fill(
    target: Mapping[str, Any],
    sources: Mapping[Path, tuple[str, np.ndarray]],
    report: LoadReport,
    convert: Callable[[Path, np.ndarray], np.ndarray] | None = None,
    source_shape: Callable[[Path, tuple[int, ...]], tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Copy of `target` with every path in `sources` replaced by its float32 array.

    `sources[path] = (checkpoint key, array as stored in the checkpoint)`;
    `convert(path, array)` turns it into the flax layout and `source_shape(path, shape)`
    expresses a target shape in the checkpoint's layout (both identity by default).
    `report.loaded` gets the checkpoint keys; a shape mismatch keeps the target value and
    is reported as `(checkpoint key, checkpoint shape, target shape)`, both in the
    checkpoint's layout; target paths absent from `sources` are reported missing
    ('/'-joined). Target leaves may be arrays or `jax.ShapeDtypeStruct`s.
    """
    out: dict[Path, Any] = {}
    for path, leaf in flatten(target).items():
        if path not in sources:
            out[path] = leaf
            report.missing.append("/".join(path))
            continue
        key, array = sources[path]
        array = np.asarray(array)
        value = convert(path, array) if convert else array
        if tuple(value.shape) != tuple(leaf.shape):
            wanted = source_shape(path, tuple(leaf.shape)) if source_shape else tuple(leaf.shape)
            report.mismatched.append((key, tuple(array.shape), wanted))
            out[path] = leaf
            continue
        out[path] = np.asarray(value, dtype=np.float32)
        report.loaded.append(key)
    return unflatten(out)
