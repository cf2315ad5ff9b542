"""Build the backbone a config names (through `fgjax.models.registry`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fgjax.models.registry import arch_family, build_backbone

# Module fields that have their own `config.model` entry, per architecture family;
# they are applied only to that family (a ResNet has no drop path, a Swin no BN).
FAMILY_FIELDS = {
    "resnet": ("stem_maxpool", "bn_momentum", "bn_epsilon", "zero_init_last_bn"),
    "swin": ("drop_path_rate", "remat"),
}


def compute_dtype(name: str) -> jnp.dtype:
    """'auto' is bfloat16 on GPU/TPU and float32 on CPU (where bf16 is slow)."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"config.model.dtype must be auto/float32/bfloat16/float16, got {name!r}")
    return jnp.dtype(name)


def backbone_from_config(model: ml_collections.ConfigDict, bn_groups: int = 1) -> nn.Module:
    """The backbone of `config.model`; `bn_groups` is the method's BatchNorm grouping.

    Reads `model.arch` (a `fgjax.models.registry` name), `model.dtype` (see
    `compute_dtype`), `model.overrides` (module field overrides, e.g. `stage_sizes` and
    `width` of a tiny ResNet; possibly empty) and the fields of the arch's family in
    `FAMILY_FIELDS` (ResNet: `stem_maxpool, bn_momentum, bn_epsilon, zero_init_last_bn`;
    Swin: `drop_path_rate, remat`). An override of a field that has its own config entry
    (those, `dtype`, `bn_groups`) is a ValueError: set the entry instead.
    """
    own = FAMILY_FIELDS.get(arch_family(model.arch), ())
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in model.overrides.items()}
    clash = sorted(set(overrides) & {*own, "dtype", "bn_groups"})
    if clash:
        raise ValueError(
            f"config.model.overrides sets {clash}: use config.model.<field> (or the method's "
            "bn_groups) for these"
        )
    return build_backbone(
        model.arch,
        dtype=compute_dtype(model.dtype),
        bn_groups=bn_groups,
        **{name: model[name] for name in own},
        **overrides,
    )
