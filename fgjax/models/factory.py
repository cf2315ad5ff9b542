"""Build the backbone a config names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from fgjax.models.resnet import ResNet


def compute_dtype(name: str) -> jnp.dtype:
    """'auto' is bfloat16 on GPU/TPU and float32 on CPU (where bf16 is slow)."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"config.model.dtype must be auto/float32/bfloat16/float16, got {name!r}")
    return jnp.dtype(name)


def backbone_from_config(model: ml_collections.ConfigDict, bn_groups: int = 1) -> ResNet:
    """The ResNet of `config.model`; `bn_groups` is the method's BatchNorm grouping."""
    if not model.arch.startswith("resnet"):
        raise ValueError(f"config.model.arch={model.arch!r}: only ResNet backbones train today")
    return ResNet(
        stage_sizes=tuple(model.stage_sizes),
        width=model.width,
        stem_maxpool=model.stem_maxpool,
        bn_momentum=model.bn_momentum,
        bn_epsilon=model.bn_epsilon,
        bn_groups=bn_groups,
        zero_init_last_bn=model.zero_init_last_bn,
        dtype=compute_dtype(model.dtype),
    )
