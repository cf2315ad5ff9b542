"""Projector / predictor MLPs of the self-supervised methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fgjax.models.norm import BatchNorm


class MLP(nn.Module):
    """`Linear -> [BN] -> ReLU -> ... -> Linear`, PyTorch-initialised.

    `features=(2048, 128), use_bn=False` is MoCo v2's head; `features=(4096, 256),
    use_bn=True` is BYOL's projector and predictor. Input `[N, D]`, output
    `[N, features[-1]]` in float32 (losses are computed in float32).
    """

    features: Sequence[int]
    use_bn: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        for i, width in enumerate(self.features):
            last = i == len(self.features) - 1
            x = nn.Dense(
                width,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                name=f"fc{i}",
            )(x)
            if not last:
                if self.use_bn:
                    x = BatchNorm(
                        momentum=self.bn_momentum,
                        epsilon=self.bn_epsilon,
                        groups=self.bn_groups,
                        dtype=self.dtype,
                        name=f"bn{i}",
                    )(x, train)
                x = nn.relu(x)
        return x.astype(jnp.float32)
