"""Pretrained weights into fgjax variables (`config.model.init_from`) and back out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fgjax.weights.formats import read_checkpoint, write_state_dict
from fgjax.weights.resnet_keys import (
    infer_resnet_config,
    resnet_variables_from_torch,
    resnet_variables_to_torch,
    torch_key,
)
from fgjax.weights.variables import (
    ImportReport,
    as_import_report,
    fill,
    flatten,
    flatten_to_strings,
    flax_to_torch,
    unflatten,
)

PathLike = str | os.PathLike

COLLECTIONS = ("params", "batch_stats")
# `--arch resnet`: a torchvision ResNet whose block, depth and width are read from the
# checkpoint; every other arch is a `fgjax.models.registry` name.
ANY_RESNET = "resnet"


def _family(arch: str) -> str:
    """The key-map family of `arch` ('resnet', 'swin', 'clip'): `registry.arch_family`,
    plus the bare `resnet`. ValueError for an unknown arch."""
    if arch == ANY_RESNET:
        return "resnet"
    from fgjax.models.registry import arch_family  # imports jax

    return arch_family(arch)


def is_fgjax_file(tensors: Mapping[str, Any]) -> bool:
    """True for fgjax's own `.npz` layout (`params/conv1/kernel`, `batch_stats/bn1/mean`)."""
    return bool(tensors) and all(k.split("/", 1)[0] in COLLECTIONS and "/" in k for k in tensors)


def variables_from_fgjax(
    tensors: Mapping[str, np.ndarray], target: Mapping[str, Any]
) -> tuple[dict[str, Any], ImportReport]:
    """Fill `target` from '/'-joined fgjax paths (no key map, no layout change)."""
    report = ImportReport(notes=["fgjax variables file: paths used as they are"])
    sources = {tuple(k.split("/")): (k, np.asarray(v)) for k, v in tensors.items()}
    wanted = set(flatten(target))
    report.unexpected += [key for path, (key, _) in sources.items() if path not in wanted]
    return fill(target, sources, report), report


def variables_from_torch(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    arch: str,
    prefix: str | None = None,
) -> tuple[dict[str, Any], ImportReport]:
    """Dispatch a torch-keyed state dict to the key map of `arch`'s family."""
    family = _family(arch)
    if family == "resnet":
        return resnet_variables_from_torch(state_dict, target, prefix=prefix)
    if family == "swin":
        from fgjax.weights.swin_keys import swin_variables_from_torch

        notes = []
        if prefix:
            state_dict = {
                k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)
            }
            notes.append(f"backbone read from keys under prefix {prefix!r} (prefix stripped)")
        variables, report = swin_variables_from_torch(dict(state_dict), target)
        report = as_import_report(report)
        report.notes[:0] = notes
        return variables, report
    if family == "clip":
        from fgjax.weights.clip_keys import clip_variables_from_torch

        return clip_variables_from_torch(state_dict, target, prefix)
    raise ValueError(f"architecture {arch!r} ({family}) has no torch key map")


def variables_to_torch(variables: Mapping[str, Any], arch: str) -> dict[str, np.ndarray]:
    """fgjax variables -> the torchvision (ResNet) / timm (Swin) / OpenAI (CLIP) state dict."""
    family = _family(arch)
    if family == "resnet":
        return resnet_variables_to_torch(variables)
    if family == "swin":
        from fgjax.weights.swin_keys import swin_variables_to_torch

        return swin_variables_to_torch(variables)
    if family == "clip":
        from fgjax.weights.clip_keys import clip_variables_to_torch

        return clip_variables_to_torch(variables)
    raise ValueError(f"architecture {arch!r} ({family}) has no torch key map")


def variables_from_tensors(
    tensors: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    arch: str,
    prefix: str | None = None,
) -> tuple[dict[str, Any], ImportReport]:
    """The backbone variables `target` filled from a file's `tensors` (`read_checkpoint`):
    fgjax's own paths as they are, torch keys through `arch`'s key map."""
    if is_fgjax_file(tensors):
        return variables_from_fgjax(tensors, target)
    return variables_from_torch(tensors, target, arch, prefix)


def load_pretrained(
    path: PathLike,
    target: Mapping[str, Any],
    arch: str,
    strict: bool = False,
    *,
    prefix: str | None = None,
) -> tuple[dict[str, Any], ImportReport]:
    """Weights from `path` into the backbone variables `target`.

    Args:
      path: torch `.pth`/`.pt` (zip or legacy; training checkpoints are unwrapped),
        `.safetensors`, a torch-keyed `.npz`, or fgjax's own `.npz`.
      target: `{'params': ..., 'batch_stats': ...}` of the backbone module (arrays or
        `jax.ShapeDtypeStruct`s).
      arch: a `fgjax.models.registry` name or `resnet`; its family picks the key map
        (not needed for fgjax's own `.npz`).
      strict: raise `ValueError` on any missing, unexpected or mismatched tensor
        (ignored heads, momentum encoders and BN counters are not errors).
      prefix: backbone key prefix, found automatically when None.
    Returns:
      (variables, report): `target` with every mapped tensor replaced by a float32
      numpy array of the target's shape; unmapped entries keep the target's value.
    """
    notes: list[str] = []
    tensors = read_checkpoint(path, notes)
    variables, report = variables_from_tensors(tensors, target, arch, prefix)
    report.notes[:0] = notes
    if strict:
        report.raise_if_incomplete(os.fspath(path))
    return variables, report


def require_complete(variables: Mapping[str, Any], source: str, arch: str) -> None:
    """Raise unless every leaf of `variables` was filled: leaves still `ShapeDtypeStruct`
    (from an `eval_shape` target) are variables `source` had no weights for."""
    absent = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if absent:
        raise ValueError(
            f"{source} has no weights for {len(absent)} backbone variables, e.g. "
            f"{absent[:3]} (config.model.arch={arch!r})"
        )


def save_variables(path: PathLike, variables: Mapping[str, Any]) -> int:
    """Write the array leaves of `variables` as fgjax `.npz` ('/'-joined paths).

    Leaves that are not arrays (`jax.ShapeDtypeStruct`s left by a partial import) are
    skipped; returns how many arrays were written.
    """
    flat = {p: v for p, v in flatten(variables).items() if hasattr(v, "__array__")}
    arrays = flatten_to_strings(unflatten(flat))
    np.savez(os.fspath(path), **arrays)
    return len(arrays)


def export_torch(path: PathLike, variables: Mapping[str, Any], arch: str) -> dict[str, np.ndarray]:
    """Write fgjax variables as a torch-keyed `.pth` / `.safetensors` / `.npz`."""
    flat = {p: v for p, v in flatten(variables).items() if hasattr(v, "__array__")}
    state_dict = variables_to_torch(unflatten(flat), arch)
    write_state_dict(path, state_dict)
    return state_dict


def backbone_for_arch(arch: str, tensors: Mapping[str, np.ndarray] | None = None) -> Any:
    """The fgjax backbone module named by `arch` (`fgjax.models.build_backbone`).

    `arch` is a registry name (`resnet18` ... `resnet152`, `swin_*` timm names) or the
    bare `resnet`, whose block, stage sizes and width are read from `tensors` (a torch-
    or fgjax-keyed state dict).
    """
    from fgjax.models.registry import build_backbone  # imports jax

    if arch != ANY_RESNET:
        return build_backbone(arch)
    if tensors is None:
        raise ValueError("arch 'resnet' reads its layout from a checkpoint: pass its tensors")
    if is_fgjax_file(tensors):
        flat = {tuple(k.split("/")): np.asarray(v) for k, v in tensors.items()}
        tensors = {torch_key(p) or "/".join(p): flax_to_torch(p, v) for p, v in flat.items()}
    # Any registered ResNet: the inferred fields (block included) replace its own.
    return build_backbone("resnet50", **infer_resnet_config(tensors))


def target_for_arch(arch: str, tensors: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Abstract variables (`jax.ShapeDtypeStruct` leaves) of `backbone_for_arch(arch)`."""
    import jax
    import jax.numpy as jnp

    model = backbone_for_arch(arch, tensors)
    size = int(getattr(model, "img_size", 224))  # Swin fixes its input size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return {k: v for k, v in variables.items() if k in COLLECTIONS}
