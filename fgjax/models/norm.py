"""BatchNorm with PyTorch semantics and optional per-group ("ghost") statistics.

Why not `flax.linen.BatchNorm`: the original methods are PyTorch code, so the
running variance must be updated with the *unbiased* batch variance, and MoCo's
shuffling BN needs statistics computed per group of examples (one group per
"GPU" of the original multi-GPU run) independently of how many devices this run
has. With `groups=G` the global batch [N, ...] is viewed as [G, N/G, ...] and each
group is normalised with its own mean/variance, exactly as G PyTorch processes
with unsynchronised BN would do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """BatchNorm over the last axis of `x: [N, ..., C]`.

    Attributes:
      momentum: Flax convention, `running = momentum * running + (1 - momentum) * batch`
        (PyTorch `momentum=0.1` is `0.9` here).
      epsilon: added to the variance.
      groups: number of independent statistics groups along the batch axis; N must be
        a multiple of it.
      scale_init: initializer of gamma (use zeros for "zero-init last BN").
      dtype: output dtype; statistics are always computed in float32.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    groups: int = 1
    scale_init: Callable[..., Any] = nn.initializers.ones
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        channels = x.shape[-1]
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32)
        )

        if not train:
            inv = scale * jnp.reciprocal(jnp.sqrt(running_var.value + self.epsilon))
            y = x.astype(jnp.float32) * inv + (bias - running_mean.value * inv)
            return y.astype(self.dtype)

        n = x.shape[0]
        if n % self.groups:
            raise ValueError(f"BatchNorm: batch size {n} is not a multiple of groups={self.groups}")
        grouped = x.astype(jnp.float32).reshape((self.groups, n // self.groups) + x.shape[1:])
        axes = tuple(range(1, grouped.ndim - 1))
        mean = grouped.mean(axes, keepdims=True)
        var = jnp.square(grouped - mean).mean(axes, keepdims=True)
        inv = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        y = (grouped * inv + (bias - mean * inv)).reshape(x.shape)

        if not self.is_initializing():
            count = grouped[0].size // channels
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            running_mean.value = m * running_mean.value + (1 - m) * mean.reshape(-1, channels).mean(
                0
            )
            running_var.value = m * running_var.value + (1 - m) * unbiased.reshape(
                -1, channels
            ).mean(0)
        return y.astype(self.dtype)
