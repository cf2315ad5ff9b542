"""The one table of backbone architectures: name -> Flax module.

Training (`backbone_from_config`), evaluation and `fgjax.weights` all build backbones
here. An architecture is registered once, by exact name or by a regular expression the
whole name must match, with a builder `builder(arch) -> nn.Module` that returns the
module of that name with its default fields; `build_backbone` then overrides fields on
it (`Module.clone`). Adding an architecture is one `register(...)` call, e.g.

    register("vit_{size}_patch{P}_{IMG}", vit_from_name, family="vit", pattern=VIT_NAME)

Registered here: resnet18/34 (BasicBlock), resnet50/101/152 (Bottleneck), torchvision
layout; every timm Swin v1 name `swin_from_name` accepts; CLIP image towers
`clip_vit_{b,l}{14,16,32}[_IMG]` (`clip_vision_from_name`, e.g. `clip_vit_b16`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fgjax.models.clip import CLIP_NAME, clip_vision_from_name
from fgjax.models.resnet import ResNet
from fgjax.models.swin import SWIN_NAME, swin_from_name

Builder = Callable[[str], nn.Module]


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str  # the exact name, or how `arch_names` lists a pattern
    builder: Builder
    family: str
    pattern: re.Pattern | None

    def matches(self, arch: str) -> bool:
        return arch == self.name if self.pattern is None else bool(self.pattern.fullmatch(arch))


_ENTRIES: list[_Entry] = []


def register(
    name: str, builder: Builder, *, family: str, pattern: str | re.Pattern | None = None
) -> None:
    """Add an architecture.

    Args:
      name: the architecture name (`resnet50`); with `pattern`, how `arch_names` lists
        the names the pattern accepts (`swin_{tiny,...}_patch{P}_window{W}_{IMG}`).
      builder: `builder(arch)` returns the Flax module named `arch` with its default
        fields (it must have a `dtype` field; a `bn_groups` field marks BatchNorm archs).
      family: the key-map family (`resnet`, `swin`, ...), see `arch_family`.
      pattern: a regular expression (str or compiled) the whole name must match; exact
        names are looked up first, then patterns in registration order.
    """
    if any(e.name == name for e in _ENTRIES):
        raise ValueError(f"architecture {name!r} is already registered")
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    _ENTRIES.append(_Entry(name, builder, family, compiled))


def arch_names() -> list[str]:
    """Every registered name, patterns as their listing name, in registration order."""
    return [e.name for e in _ENTRIES]


def _entry(arch: str) -> _Entry:
    for exact in (True, False):
        for e in _ENTRIES:
            if (e.pattern is None) == exact and e.matches(arch):
                return e
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(arch_names())}")


def arch_family(arch: str) -> str:
    """'resnet' | 'swin' | 'clip' (the weight key-map family of `arch`); ValueError if unknown."""
    return _entry(arch).family


def _fields(module: nn.Module) -> dict[str, Any]:
    return {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name")
    }


def arch_fields(arch: str) -> dict[str, Any]:
    """`{field: default}` of the module named `arch` (what `build_backbone` may override)."""
    return _fields(_entry(arch).builder(arch))


def build_backbone(
    arch: str, *, dtype: Any = jnp.float32, bn_groups: int = 1, **fields: Any
) -> nn.Module:
    """The backbone module named `arch`, compute dtype `dtype`.

    Args:
      arch: a registered name (`arch_names()`), e.g. `resnet50`,
        `swin_large_patch4_window12_384`.
      dtype: compute dtype (parameters stay float32).
      bn_groups: BatchNorm statistics groups (MoCo's shuffling BN); only for archs with
        BatchNorm, ignored for the others (Swin).
      **fields: module field overrides, e.g. `stage_sizes=(1, 1), width=4` for a tiny
        ResNet or `embed_dim=12, depths=(1, 1), num_heads=(1, 2), window_size=4,
        img_size=16` for a tiny Swin.
    Raises:
      ValueError: unknown `arch`, or a field the module does not have.
    """
    module = _entry(arch).builder(arch)
    known = set(_fields(module))
    updates = {"dtype": dtype, **fields}
    if "bn_groups" in known:
        updates["bn_groups"] = bn_groups
    unknown = sorted(set(updates) - known)
    if unknown:
        raise ValueError(
            f"{arch}: {type(module).__name__} has no field(s) {unknown}; fields: {sorted(known)}"
        )
    return module.clone(**updates)


# --------------------------------------------------------------------------- registrations


def _resnet(block: str, stage_sizes: tuple[int, ...]) -> Builder:
    return lambda arch: ResNet(stage_sizes=stage_sizes, block=block)


register("resnet18", _resnet("basic", (2, 2, 2, 2)), family="resnet")
register("resnet34", _resnet("basic", (3, 4, 6, 3)), family="resnet")
register("resnet50", _resnet("bottleneck", (3, 4, 6, 3)), family="resnet")
register("resnet101", _resnet("bottleneck", (3, 4, 23, 3)), family="resnet")
register("resnet152", _resnet("bottleneck", (3, 8, 36, 3)), family="resnet")
register(
    "swin_{tiny,small,base,large}_patch{P}_window{W}_{IMG}[_in22k][.tag]",
    swin_from_name,
    family="swin",
    pattern=SWIN_NAME,
)
register("clip_vit_{b,l}{14,16,32}[_IMG]", clip_vision_from_name, family="clip", pattern=CLIP_NAME)
