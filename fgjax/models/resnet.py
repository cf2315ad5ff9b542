"""ResNet v1.5 (torchvision layout) in Flax Linen, NHWC: BasicBlock and Bottleneck.

Parameter names mirror torchvision so that key maps stay one line per tensor:
`conv1`, `bn1`, then blocks `layer{s}_{b}` (stage s = 1..4, block b = 0..) holding
`conv1/bn1/conv2/bn2` (BasicBlock) or `conv1/bn1/conv2/bn2/conv3/bn3` (Bottleneck) and,
for a block that changes resolution or width, `downsample_conv/downsample_bn` (every
first Bottleneck block; a first BasicBlock block only from stage 2 on, as in
torchvision). The stride-2 sits in the 3x3 conv (v1.5), as in torchvision and every
method this library reimplements.

Parameters are float32; `dtype` is the compute dtype (bfloat16 on accelerators).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fgjax.models.norm import BatchNorm

# torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu") (jax "normal"
# is untruncated).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _last_bn_init(zero: bool) -> Any:
    return nn.initializers.zeros if zero else nn.initializers.ones


class BasicBlock(nn.Module):
    """3x3 (stride) -> 3x3, residual add, ReLU; `width` output channels (expansion 1)."""

    width: int
    stride: int
    conv: Any
    norm: Any
    zero_init_last_bn: bool

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out = self.conv(
            self.width, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)), name="conv1"
        )(x)
        out = nn.relu(self.norm(name="bn1")(out, train))
        out = self.conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(out)
        out = self.norm(name="bn2", scale_init=_last_bn_init(self.zero_init_last_bn))(out, train)
        return nn.relu(out + _shortcut(self, x, self.width, train))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), residual add, ReLU."""

    width: int
    stride: int
    conv: Any
    norm: Any
    zero_init_last_bn: bool

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out = self.conv(self.width, (1, 1), name="conv1")(x)
        out = nn.relu(self.norm(name="bn1")(out, train))
        out = self.conv(
            self.width, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)), name="conv2"
        )(out)
        out = nn.relu(self.norm(name="bn2")(out, train))
        out = self.conv(self.width * 4, (1, 1), name="conv3")(out)
        out = self.norm(name="bn3", scale_init=_last_bn_init(self.zero_init_last_bn))(out, train)
        return nn.relu(out + _shortcut(self, x, self.width * 4, train))


def _shortcut(block: BasicBlock | Bottleneck, x: jnp.ndarray, out: int, train: bool) -> jnp.ndarray:
    """Identity, or torchvision's 1x1 conv (stride) + BN when resolution or width change.

    Called inside the block's compact `__call__`, so the layers belong to the block."""
    if block.stride == 1 and x.shape[-1] == out:
        return x
    x = block.conv(out, (1, 1), strides=block.stride, name="downsample_conv")(x)
    return block.norm(name="downsample_bn")(x, train)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet backbone (no classifier). `x: [B, H, W, 3]` float, returns a dict of features.

    With C_s = width * 2^(s-1) * expansion (expansion 1 for `block='basic'`, 4 for
    `'bottleneck'`) and S = len(stage_sizes):
      `pooled`: `[B, C_S]` global-average-pooled last-stage output, float32 (512-d for
        ResNet-18/34, 2048-d for ResNet-50/101/152);
      `stage{s}` for s = 1..S: `[B, H/2^(s+1), W/2^(s+1), C_s]` output of stage s, compute
        dtype (stage4 of ResNet-50 at 224: `[B, 7, 7, 2048]`); without the stem max-pool
        (`stem_maxpool=False`, LCR's BYOL backbone) every map is twice as large.
    Unused maps cost nothing under `jax.jit` (XLA drops dead outputs).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    block: str = "bottleneck"
    width: int = 64
    stem_maxpool: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> dict[str, jnp.ndarray]:
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet block {self.block!r}: expected one of {sorted(BLOCKS)}")
        block = BLOCKS[self.block]
        conv = partial(
            nn.Conv,
            use_bias=False,
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=_conv_init,
        )
        norm = partial(
            BatchNorm,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            groups=self.bn_groups,
            dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        x = conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x, train))
        if self.stem_maxpool:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        out = {}
        for stage, num_blocks in enumerate(self.stage_sizes):
            for b in range(num_blocks):
                x = block(
                    width=self.width * 2**stage,
                    stride=2 if (stage > 0 and b == 0) else 1,
                    conv=conv,
                    norm=norm,
                    zero_init_last_bn=self.zero_init_last_bn,
                    name=f"layer{stage + 1}_{b}",
                )(x, train)
            out[f"stage{stage + 1}"] = x
        return {"pooled": jnp.mean(x.astype(jnp.float32), axis=(1, 2)), **out}
