"""ResNet v1.5 (torchvision layout) in Flax Linen, NHWC.

Parameter names mirror torchvision so that key maps stay one line per tensor:
`conv1`, `bn1`, then blocks `layer{s}_{b}` (stage s = 1..4, block b = 0..) holding
`conv1/bn1/conv2/bn2/conv3/bn3` and, for the first block of a stage,
`downsample_conv/downsample_bn`. The stride-2 sits in the 3x3 conv (v1.5), as in
torchvision and every method this library reimplements.

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


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), residual add, ReLU."""

    width: int
    stride: int
    downsample: bool
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
        last_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
        out = self.norm(name="bn3", scale_init=last_init)(out, train)
        if self.downsample:
            x = self.conv(self.width * 4, (1, 1), strides=self.stride, name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x, train)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """Bottleneck ResNet. `x: [B, H, W, 3]` float, returns a dict of features.

    Returns:
      `pooled`: `[B, 8*width*4]` global-average-pooled stage-4 output, float32
        (2048-d for ResNet-50);
      with `return_maps=True` also `stage3`: `[B, H/16, W/16, 4*width*4]` and
        `stage4`: `[B, H/32, W/32, 8*width*4]` (strides halve without the stem
        max-pool, as in LCR's BYOL backbone).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    stem_maxpool: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool, return_maps: bool = False
    ) -> dict[str, jnp.ndarray]:
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

        maps = {}
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                x = Bottleneck(
                    width=self.width * 2**stage,
                    stride=2 if (stage > 0 and block == 0) else 1,
                    downsample=block == 0,
                    conv=conv,
                    norm=norm,
                    zero_init_last_bn=self.zero_init_last_bn,
                    name=f"layer{stage + 1}_{block}",
                )(x, train)
            maps[f"stage{stage + 1}"] = x

        out = {"pooled": jnp.mean(x.astype(jnp.float32), axis=(1, 2))}
        if return_maps:
            out["stage3"] = maps["stage3"]
            out["stage4"] = maps["stage4"]
        return out


def resnet50(**kwargs: Any) -> ResNet:
    """The torchvision ResNet-50 (2048-d pooled feature)."""
    return ResNet(stage_sizes=(3, 4, 6, 3), width=64, **kwargs)
