"""ResNet v1.5 (torchvision layout) in Flax Linen, NHWC: BasicBlock and Bottleneck.

Parameter names mirror torchvision so that key maps stay one line per tensor:
`conv1`, `bn1`, then blocks `layer{s}_{b}` (stage s = 1..4, block b = 0..) holding
`conv1/bn1/conv2/bn2` (BasicBlock) or `conv1/bn1/conv2/bn2/conv3/bn3` (Bottleneck) and,
for a block that changes resolution or width, `downsample_conv/downsample_bn` (every
first Bottleneck block; a first BasicBlock block only from stage 2 on, as in
torchvision). The stride-2 sits in the 3x3 conv (v1.5), as in torchvision and every
method this library reimplements.

Parameters are float32; `dtype` is the compute dtype (bfloat16 on accelerators).

Padded batches (`valid`): images of different sizes zero-padded at the bottom and right
into one batch give, on their real content, what each image alone gives (up to float
rounding). Every map is zeroed beyond its valid region before an op whose window reaches
past a position (the stem conv and max-pool, each 3x3 conv) and at each block's output,
so a window at the real border sees zeros, exactly like torch's zero padding there.
Every stride-2 layer here (7x7/2 pad 3, max-pool 3x3/2 pad 1, 3x3/2 pad 1, 1x1/2 pad 0)
maps a size n to floor((n - 1) / 2) + 1 = ceil(n / 2) (torch's output-size formula), the
valid size and the padded size alike, and valid content stays at the top left.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgjax.models.norm import BatchNorm

# torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu") (jax "normal"
# is untruncated).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _last_bn_init(zero: bool) -> Any:
    return nn.initializers.zeros if zero else nn.initializers.ones


def _downsize(valid: jax.Array | None, stride: int) -> jax.Array | None:
    """Valid sizes [B, 2] after a layer of `stride`: ceil(n / stride) (module doc)."""
    return valid if valid is None or stride == 1 else -(-valid // stride)


def stage_valid(valid: jax.Array, stage: int, stem_maxpool: bool = True) -> jax.Array:
    """The valid sizes [B, 2] of a ResNet's `stage{stage}` map for input sizes `valid`
    [B, 2]: ceil(n / 2^(stage + 1)), 2^stage without the stem max-pool (the stride-2
    layers' ceilings compose: ceil(ceil(n / a) / b) = ceil(n / (a b)))."""
    return _downsize(valid, 2 ** (stage + int(stem_maxpool)))


def valid_region(valid: jax.Array, height: int, width: int) -> jax.Array:
    """bool [B, height, width]: True on each image's top-left `valid` [B, 2] (height,
    width) region of a padded map."""
    rows = jnp.arange(height) < valid[:, :1]  # [B, height]
    cols = jnp.arange(width) < valid[:, 1:]  # [B, width]
    return rows[:, :, None] & cols[:, None, :]


def _mask(x: jnp.ndarray, valid: jax.Array | None) -> jnp.ndarray:
    """`x` [B, h, w, C] zeroed outside `valid_region(valid)`; `x` itself when `valid` is
    None (an unpadded batch)."""
    if valid is None:
        return x
    region = valid_region(valid, x.shape[1], x.shape[2])
    return jnp.where(region[..., None], x, 0).astype(x.dtype)


class BasicBlock(nn.Module):
    """3x3 (stride) -> 3x3, residual add, ReLU; `width` output channels (expansion 1)."""

    width: int
    stride: int
    conv: Any
    norm: Any
    zero_init_last_bn: bool

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, valid: jax.Array | None = None) -> jnp.ndarray:
        """`x` zero outside `valid` (its valid sizes, or None); the output is too."""
        valid_out = _downsize(valid, self.stride)
        out = self.conv(
            self.width, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)), name="conv1"
        )(x)
        out = _mask(nn.relu(self.norm(name="bn1")(out, train)), valid_out)
        out = self.conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(out)
        out = self.norm(name="bn2", scale_init=_last_bn_init(self.zero_init_last_bn))(out, train)
        return _mask(nn.relu(out + _shortcut(self, x, self.width, train)), valid_out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), residual add, ReLU."""

    width: int
    stride: int
    conv: Any
    norm: Any
    zero_init_last_bn: bool

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, valid: jax.Array | None = None) -> jnp.ndarray:
        """`x` zero outside `valid` (its valid sizes, or None); the output is too."""
        out = self.conv(self.width, (1, 1), name="conv1")(x)
        # BN's shift makes the padding non-zero: re-zero it before the 3x3 window.
        out = _mask(nn.relu(self.norm(name="bn1")(out, train)), valid)
        out = self.conv(
            self.width, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)), name="conv2"
        )(out)
        out = nn.relu(self.norm(name="bn2")(out, train))
        out = self.conv(self.width * 4, (1, 1), name="conv3")(out)
        out = self.norm(name="bn3", scale_init=_last_bn_init(self.zero_init_last_bn))(out, train)
        out = nn.relu(out + _shortcut(self, x, self.width * 4, train))
        return _mask(out, _downsize(valid, self.stride))


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

    `valid`: optional int32 `[B, 2]`, the (height, width) of each image's real content at
    the top left of a padded batch `x` (whatever the padding holds: it is zeroed). Then
    every `stage{s}` map is zero outside its valid region, `valid{s}` int32 `[B, 2]` gives
    that region's size, and `pooled` averages over it: on the real content the outputs
    are those of each image alone (module doc); eval mode only. Without it nothing is
    masked.
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
    def __call__(
        self, x: jnp.ndarray, train: bool, valid: jax.Array | None = None
    ) -> dict[str, jnp.ndarray]:
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet block {self.block!r}: expected one of {sorted(BLOCKS)}")
        if valid is not None and (train or valid.shape != (x.shape[0], 2)):
            raise ValueError(
                f"ResNet valid: int [B, 2] = [{x.shape[0]}, 2] in eval mode (train=False; "
                f"batch statistics would count the padding), got {valid.shape}, train={train}"
            )
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
        x = _mask(x.astype(self.dtype), valid)
        x = conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="conv1")(x)
        valid = _downsize(valid, 2)
        x = _mask(nn.relu(norm(name="bn1")(x, train)), valid)
        if self.stem_maxpool:
            # At the real border torch's window meets its -inf padding, ours the masked
            # zeros: the same max, as each window of a valid position holds a real
            # activation and activations are >= 0 after the ReLU.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            valid = _downsize(valid, 2)
            x = _mask(x, valid)  # windows past the content took real values: re-zero them

        out = {}
        for stage, num_blocks in enumerate(self.stage_sizes):
            for b in range(num_blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                x = block(
                    width=self.width * 2**stage,
                    stride=stride,
                    conv=conv,
                    norm=norm,
                    zero_init_last_bn=self.zero_init_last_bn,
                    name=f"layer{stage + 1}_{b}",
                )(x, train, valid)
                valid = _downsize(valid, stride)
            out[f"stage{stage + 1}"] = x
            if valid is not None:
                out[f"valid{stage + 1}"] = valid
        x = x.astype(jnp.float32)
        if valid is None:
            return {"pooled": jnp.mean(x, axis=(1, 2)), **out}
        # x is zero outside the valid region: sum everything, divide by the valid area.
        area = jnp.prod(valid, axis=-1, keepdims=True).astype(jnp.float32)
        return {"pooled": jnp.sum(x, axis=(1, 2)) / area, **out}
