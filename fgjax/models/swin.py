"""Swin Transformer (v1) in Flax Linen, NHWC, with the stage taps HERBS uses.

Semantics follow timm 0.4.12 / the Microsoft release, the version HERBS was built on
(see shared/methods/herbs.md sections 2 and 9): patch merging closes stages 0..S-2, so the
output of stage s (`layer{s+1}`) is already at the next stage's resolution and width.

Parameter names mirror that old checkpoint layout so the key map in
`fgjax.weights.swin_keys` is one rule per tensor:

  patch_embed/{proj, norm}
  layers_{s}/blocks_{j}/{norm1, attn/{qkv, proj, relative_position_bias_table}, norm2,
                        mlp/{fc1, fc2}}
  layers_{s}/downsample/{norm, reduction}      (s < num_stages - 1)
  norm                                          (final LayerNorm, used for `pooled` only)

Numerics that matter for parity with timm: LayerNorm eps 1e-5, exact-erf GELU, attention
scale head_dim^-1/2 applied to q, relative position bias added before the shifted-window
mask of -100 (not -inf), token order row-major (t = h * W + w).

Parameters are float32; `dtype` is the compute dtype (bfloat16 on accelerators). Softmax
and LayerNorm statistics run in float32 regardless.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fgjax.models.hooks import grad_cam_point

LN_EPSILON = 1e-5  # torch.nn.LayerNorm default, used by timm's Swin (flax defaults to 1e-6)
MASK_VALUE = -100.0  # what timm / Microsoft add between shifted-window regions

_dense_init = nn.initializers.truncated_normal(stddev=0.02)  # timm: trunc_normal_(std=.02)


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_dense_init,
        name=name,
    )


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


# --------------------------------------------------------------------------- constants


def stage_window(resolution: int, window: int, shift: int) -> tuple[int, int]:
    """timm's rule: a stage no larger than the window is one window, and is not shifted."""
    if resolution <= window:
        return resolution, 0
    return window, shift


def relative_position_index(window: int) -> np.ndarray:
    """`[N, N]` int32 rows of the `[(2w-1)^2, heads]` bias table, N = window^2.

    For query (yi, xi) and key (yj, xj): (yi - yj + w - 1) * (2w - 1) + (xi - xj + w - 1).
    """
    ys, xs = np.divmod(np.arange(window * window), window)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return (dy * (2 * window - 1) + dx).astype(np.int32)


def window_partition(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """`[B, H, W, C]` -> `[B, nW, window^2, C]`; windows row-major, tokens row-major inside."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(x: jnp.ndarray, window: int, height: int, width: int) -> jnp.ndarray:
    """Inverse of `window_partition`: `[B, nW, window^2, C]` -> `[B, H, W, C]`."""
    b, _, _, c = x.shape
    x = x.reshape(b, height // window, width // window, window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def window_attention_mask(resolution: int, window: int, shift: int) -> np.ndarray | None:
    """Additive mask `[nW, N, N]` (0 or -100) for a cyclically shifted square grid.

    After rolling by -shift, the last row band and column band of windows hold tokens
    that came from opposite image borders. Each axis splits into three bands,
    [0, R-w), [R-w, R-s), [R-s, R); tokens of one window may attend to each other only
    when both lie in the same (row band, column band) region. None when shift == 0.
    """
    if shift == 0:
        return None
    coords = np.arange(resolution)
    band = (coords >= resolution - window).astype(np.int32) + (coords >= resolution - shift)
    region = 3 * band[:, None] + band[None, :]  # [R, R]
    windows = np.asarray(window_partition(region[None, :, :, None], window))[0, ..., 0]
    same = windows[:, :, None] == windows[:, None, :]
    return np.where(same, 0.0, MASK_VALUE).astype(np.float32)


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to `rate` over all blocks (timm's schedule)."""
    flat = np.linspace(0.0, rate, sum(depths)).tolist()
    bounds = np.cumsum([0, *depths])
    return [flat[bounds[s] : bounds[s + 1]] for s in range(len(depths))]


# --------------------------------------------------------------------------- modules


class DropPath(nn.Module):
    """Per-sample stochastic depth: zero a whole residual branch with probability `rate`
    and scale survivors by 1/(1-rate). Identity when not training. RNG stream 'dropout'."""

    rate: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if not train or self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape)
        return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with relative position bias.

    `x: [B, nW, N, C]`, `mask: [nW, N, N]` or None; returns `[B, nW, N, C]`.
    """

    num_heads: int
    window: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: np.ndarray | None) -> jnp.ndarray:
        b, nw, n, c = x.shape
        head_dim = c // self.num_heads
        table = self.param(
            "relative_position_bias_table",
            _dense_init,
            ((2 * self.window - 1) ** 2, self.num_heads),
            jnp.float32,
        )
        # The 3C outputs are laid out [q|k|v] x [heads] x [head_dim] (torch layout).
        qkv = _dense(3 * c, self.dtype, "qkv")(x).reshape(b, nw, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q * head_dim**-0.5, k)
        logits = logits.astype(jnp.float32)
        bias = table[relative_position_index(self.window)]  # [N, N, heads]
        logits = logits + bias.transpose(2, 0, 1)
        if mask is not None:
            logits = logits + jnp.asarray(mask)[None, :, None]
        attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, nw, n, c)
        return _dense(c, self.dtype, "proj")(out)


class Mlp(nn.Module):
    """Linear(C, hidden) -> exact-erf GELU -> Linear(hidden, C); `[..., C]` -> `[..., C]`."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = nn.gelu(_dense(self.hidden, self.dtype, "fc1")(x), approximate=False)
        return _dense(x.shape[-1], self.dtype, "fc2")(y)


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention + MLP, both residual. `[B, R, R, C]` in and out."""

    num_heads: int
    window: int
    shift: int
    mlp_ratio: float
    drop_path: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        _, res, _, c = x.shape
        y = _layer_norm(self.dtype, "norm1")(x)
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
        y = window_partition(y, self.window)
        mask = window_attention_mask(res, self.window, self.shift)
        y = WindowAttention(self.num_heads, self.window, self.dtype, name="attn")(y, mask)
        y = window_merge(y, self.window, res, res)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        x = x + DropPath(self.drop_path)(y, train)
        y = _layer_norm(self.dtype, "norm2")(x)
        y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x + DropPath(self.drop_path)(y, train)


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: `[B, R, R, C]` -> `[B, R/2, R/2, 2C]`.

    Channel order of the 4C concat is the one both timm layouts share (herbs.md 2.3):
    (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        x = _layer_norm(self.dtype, "norm")(x)
        return _dense(2 * c, self.dtype, "reduction", use_bias=False)(x)


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv, then LayerNorm: `[B, H, W, 3]` -> `[B, H/p, W/p, C]`."""

    embed_dim: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.patch_size
        x = nn.Conv(
            self.embed_dim,
            (p, p),
            strides=p,
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="proj",
        )(x)
        return _layer_norm(self.dtype, "norm")(x)


class SwinStage(nn.Module):
    """`depth` blocks (even ones plain, odd ones shifted by window//2), then optional merging.

    `[B, R, R, C]` -> `[B, R, R, C]`, or `[B, R/2, R/2, 2C]` with `downsample`.
    """

    depth: int
    num_heads: int
    window: int
    mlp_ratio: float
    drop_paths: Sequence[float]
    downsample: bool
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        res = x.shape[1]
        # Rematerialised blocks keep their parameter names; `train` (arg 2 counting self)
        # is a Python bool and must stay static.
        block = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
        for j in range(self.depth):
            window, shift = stage_window(res, self.window, self.window // 2 if j % 2 else 0)
            x = block(
                num_heads=self.num_heads,
                window=window,
                shift=shift,
                mlp_ratio=self.mlp_ratio,
                drop_path=self.drop_paths[j],
                dtype=self.dtype,
                name=f"blocks_{j}",
            )(x, train)
        if self.downsample:
            x = PatchMerging(self.dtype, name="downsample")(x)
        return x


class Swin(nn.Module):
    """Swin Transformer backbone (no classifier head). `x: [B, img, img, 3]`, NHWC.

    Returns a dict:
      `layer1..layer{S}`: the HERBS taps, `[B, tokens, C]` token sequences in row-major
        order (t = h * w_grid + w; `reshape(B, h, w, C)` gives the map). Tap k is stage k-1
        INCLUDING its trailing patch merging (timm 0.4.12 semantics), the last one has no
        merging and no final norm. Swin-L/384: [B,2304,384], [B,576,768], [B,144,1536],
        [B,144,1536]. Compute dtype.
      `pooled`: `[B, embed_dim * 2^(S-1)]` final LayerNorm then mean over tokens (timm's
        pre-logits feature, 1536-d for Swin-L), float32.

    The input must be `img_size` square: per-stage windows (clamped to the stage
    resolution, shift off, when resolution <= window) and bias-table shapes depend on it.
    `train=True` with `drop_path_rate > 0` needs `rngs={'dropout': key}` (stochastic
    depth, linear over blocks from 0 to `drop_path_rate`). `remat=True` recomputes each
    block in the backward pass (Swin-L/384 training memory; same parameters).
    """

    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    img_size: int = 224
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    dtype: Any = jnp.float32
    remat: bool = False

    def stage_resolutions(self) -> list[int]:
        """Token grid side of every stage, e.g. [96, 48, 24, 12] for 384 / patch 4."""
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} not divisible by patch {self.patch_size}")
        res = [self.img_size // self.patch_size // 2**s for s in range(len(self.depths))]
        for s, r in enumerate(res):
            window, _ = stage_window(r, self.window_size, 0)
            last = s == len(res) - 1
            if r % window or (not last and r % 2):
                # timm >= 0.9 pads such grids; the Microsoft code (and HERBS) cannot run them.
                raise ValueError(
                    f"stage {s} grid {r} does not tile into windows of {window}"
                    " or cannot be 2x2 merged"
                )
        return res

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        if x.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f"expected [B, {self.img_size}, {self.img_size}, 3], got {x.shape}")
        self.stage_resolutions()  # validates the geometry
        rates = drop_path_rates(self.depths, self.drop_path_rate)
        x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(
            x.astype(self.dtype)
        )
        out = {}
        for s, depth in enumerate(self.depths):
            x = SwinStage(
                depth=depth,
                num_heads=self.num_heads[s],
                window=self.window_size,
                mlp_ratio=self.mlp_ratio,
                drop_paths=rates[s],
                downsample=s < len(self.depths) - 1,
                dtype=self.dtype,
                remat=self.remat,
                name=f"layers_{s}",
            )(x, train)
            # The tap feeds the head and the next stage: one Grad-CAM place for both.
            x = grad_cam_point(self, f"layer{s + 1}", x)
            out[f"layer{s + 1}"] = x.reshape(x.shape[0], -1, x.shape[-1])
        x = _layer_norm(self.dtype, "norm")(x)
        out["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return out


# --------------------------------------------------------------------------- timm names

# Sizes from the Swin paper / timm model cards (herbs.md table 2.2).
_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
# A timm architecture name, with the timm 0.4.12 `_in22k` suffix or a new-timm pretrained
# tag (`.ms_in22k`) allowed; groups: size, patch, window, image size.
SWIN_NAME = re.compile(
    r"swin_(tiny|small|base|large)_patch(\d+)_window(\d+)_(\d+)(?:_in22k)?(?:\..+)?"
)


def swin_from_name(arch: str, **kwargs: Any) -> Swin:
    """`Swin` for a timm architecture name, e.g. `swin_large_patch4_window12_384`.

    Accepts the timm 0.4.12 `_in22k` names and new-timm pretrained tags
    (`swin_large_patch4_window12_384.ms_in22k`); `kwargs` override fields (e.g. `dtype`,
    `drop_path_rate`).
    """
    match = SWIN_NAME.fullmatch(arch)
    if match is None:
        raise ValueError(f"unknown Swin architecture {arch!r}")
    size, patch, window, img = match.groups()
    fields = dict(_SIZES[size], patch_size=int(patch), window_size=int(window), img_size=int(img))
    fields.update(kwargs)
    return Swin(**fields)
