"""CLIP image and text towers (OpenAI / open_clip layout) in Flax Linen.

Semantics follow OpenAI's `clip/model.py` and open_clip's `VisionTransformer` /
`TextTransformer` with their defaults (class-token pooling, LayerNorm eps 1e-5,
pre-LN residual blocks, causal text mask, EOT = argmax of the token ids). Parameter
names mirror the PyTorch state dict so the key map in `fgjax.weights.clip_keys` is one
rule per tensor (`.N.` becomes `_N`):

  image: conv1 (no bias), class_embedding [W], positional_embedding [1+N, W], ln_pre,
         transformer/resblocks_{i}/{ln_1, attn/{in_proj, out_proj}, ln_2, mlp/{c_fc, c_proj}},
         ln_post, proj [W, E]
  text:  token_embedding [V, W], positional_embedding [L, W], transformer/..., ln_final,
         text_projection [W, E]

`attn/in_proj` is the packed q, k, v projection (`in_proj_weight` [3W, W] in torch).
OpenAI-pretrained weights use QuickGELU (`x * sigmoid(1.702 x)`); open_clip's own
(LAION, DataComp) models use exact GELU: `act='gelu'`.

Parameters are float32; `dtype` is the compute dtype. Softmax and LayerNorm statistics
run in float32 regardless, and the returned embeddings are float32.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgjax.models.swin import LN_EPSILON  # torch.nn.LayerNorm's 1e-5, as CLIP uses

ACTS = ("quick_gelu", "gelu")


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's GELU approximation, `x * sigmoid(1.702 x)`."""
    return x * jax.nn.sigmoid(1.702 * x)


def _activation(act: str):
    if act == "quick_gelu":
        return quick_gelu
    if act == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)  # torch nn.GELU() is exact erf
    raise ValueError(f"CLIP act must be one of {ACTS}, got {act!r}")


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
    """Multi-head self-attention with a packed qkv projection, as `nn.MultiheadAttention`.

    `x: [B, T, W]` -> `[B, T, W]`; `causal` lets token t attend to tokens <= t only.
    """

    heads: int
    causal: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, width = x.shape
        if width % self.heads:
            raise ValueError(f"CLIP width {width} is not divisible by heads {self.heads}")
        head_dim = width // self.heads
        qkv = _dense(3 * width, self.dtype, "in_proj")(x).reshape(b, t, 3, self.heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k).astype(jnp.float32)
        if self.causal:
            allowed = jnp.tril(jnp.ones((t, t), bool))
            logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, width)
        return _dense(width, self.dtype, "out_proj")(out)


class MLP(nn.Module):
    """`c_proj(act(c_fc(x)))`, hidden width 4W; `[B, T, W]` -> `[B, T, W]`."""

    act: str = "quick_gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = _activation(self.act)(_dense(4 * width, self.dtype, "c_fc")(x))
        return _dense(width, self.dtype, "c_proj")(x)


class ResidualAttentionBlock(nn.Module):
    """`x + attn(ln_1(x))`, then `x + mlp(ln_2(x))` with a 4x MLP; `[B, T, W]`."""

    heads: int
    act: str = "quick_gelu"
    causal: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _layer_norm(self.dtype, "ln_1")(x)
        x = x + Attention(self.heads, self.causal, self.dtype, name="attn")(y)
        y = _layer_norm(self.dtype, "ln_2")(x)
        return x + MLP(self.act, self.dtype, name="mlp")(y)


class Transformer(nn.Module):
    """`layers` residual blocks named `resblocks_{i}`; `[B, T, W]` -> `[B, T, W]`."""

    layers: int
    heads: int
    act: str = "quick_gelu"
    causal: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.layers):
            x = ResidualAttentionBlock(
                self.heads, self.act, self.causal, self.dtype, name=f"resblocks_{i}"
            )(x)
        return x


def _scaled_normal(width: int) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=width**-0.5)  # OpenAI's `scale * randn` init


class CLIPVisionTower(nn.Module):
    """CLIP's ViT image encoder (`encode_image`). `x: [B, img_size, img_size, 3]`, NHWC.

    Returns a dict:
      `pooled`: `[B, embed_dim]` the projected class token, `ln_post(cls) @ proj`, NOT
        L2-normalised (what `model.encode_image` returns), float32.
      `tokens`: `[B, 1 + (img_size/patch_size)^2, width]` every token after `ln_post`,
        class token first, patches row-major; `tokens[:, 0] @ proj == pooled`. Compute dtype.

    No dropout: `train` is accepted for the backbone contract and ignored. The input
    must be `img_size` square (the positional embedding is learnt for that grid); it is
    normalised by the caller (CLIP's own mean/std, or ImageNet's for LEAD++'s teacher).
    """

    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    embed_dim: int = 512
    act: str = "quick_gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} not divisible by patch {self.patch_size}")
        if x.ndim != 4 or x.shape[1:] != (self.img_size, self.img_size, 3):
            raise ValueError(f"expected [B, {self.img_size}, {self.img_size}, 3], got {x.shape}")
        grid = self.img_size // self.patch_size
        x = nn.Conv(
            self.width,
            (self.patch_size, self.patch_size),
            strides=self.patch_size,
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="conv1",
        )(x.astype(self.dtype))
        x = x.reshape(x.shape[0], grid * grid, self.width)
        init = _scaled_normal(self.width)
        cls = self.param("class_embedding", init, (self.width,), jnp.float32)
        pos = self.param("positional_embedding", init, (1 + grid * grid, self.width), jnp.float32)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
        x = _layer_norm(self.dtype, "ln_pre")(x)
        x = Transformer(self.layers, self.heads, self.act, False, self.dtype, name="transformer")(x)
        tokens = _layer_norm(self.dtype, "ln_post")(x)
        proj = self.param("proj", init, (self.width, self.embed_dim), jnp.float32)
        pooled = tokens[:, 0].astype(jnp.float32) @ proj
        return {"pooled": pooled, "tokens": tokens}


class CLIPTextTower(nn.Module):
    """CLIP's causal text encoder (`encode_text`). `tokens: int32 [N, L]` BPE ids with
    `L <= context_length` (OpenAI pads to 77 with zeros after the EOT token).

    Returns `[N, embed_dim]` float32: `ln_final` of the EOT token's feature (the position
    of the largest id, as OpenAI: EOT 49407 is the largest id) `@ text_projection`, NOT
    L2-normalised. A shorter `L` gives the same result as padding to `context_length`
    (the mask is causal, so no token sees the padding after it).
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    embed_dim: int = 512
    act: str = "quick_gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"expected token ids [N, L <= {self.context_length}], got {tokens.shape}"
            )
        embed = nn.Embed(
            self.vocab_size,
            self.width,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(stddev=0.02),
            name="token_embedding",
        )
        pos = self.param(
            "positional_embedding",
            nn.initializers.normal(stddev=0.01),
            (self.context_length, self.width),
            jnp.float32,
        )
        x = embed(tokens) + pos[: tokens.shape[1]].astype(self.dtype)
        x = Transformer(self.layers, self.heads, self.act, True, self.dtype, name="transformer")(x)
        x = _layer_norm(self.dtype, "ln_final")(x)
        eot = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)].astype(jnp.float32)
        projection = self.param(
            "text_projection", _scaled_normal(self.width), (self.width, self.embed_dim), jnp.float32
        )
        return eot @ projection


# --------------------------------------------------------------------------- names

# OpenAI / open_clip sizes: (width, layers, heads) of the image tower, text tower and the
# shared embedding width. Heads are width / 64 throughout.
_SIZES = {
    "b": dict(vision=(768, 12, 12), text=(512, 12, 8), embed_dim=512),
    "l": dict(vision=(1024, 24, 16), text=(768, 12, 12), embed_dim=768),
}
# `clip_vit_b16`, `clip_vit_b32`, `clip_vit_l14`, `clip_vit_l14_336` (OpenAI's models) and
# the other size/patch combinations open_clip has; groups: size, patch, image size.
CLIP_NAME = re.compile(r"clip_vit_(b|l)(14|16|32)(?:_(\d+))?")


def _parse(arch: str) -> tuple[dict, int, int]:
    match = CLIP_NAME.fullmatch(arch)
    if match is None:
        raise ValueError(
            f"unknown CLIP architecture {arch!r} (e.g. clip_vit_b16, clip_vit_l14_336)"
        )
    size, patch, img = match.groups()
    return _SIZES[size], int(patch), int(img or 224)


def clip_vision_from_name(arch: str, **fields: Any) -> CLIPVisionTower:
    """The image tower of `arch`, e.g. `clip_vit_b16` (ViT-B/16 at 224, QuickGELU);
    `fields` override (`act='gelu'` for open_clip's non-OpenAI weights, `dtype`)."""
    size, patch, img = _parse(arch)
    width, layers, heads = size["vision"]
    defaults = dict(
        img_size=img,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=heads,
        embed_dim=size["embed_dim"],
    )
    return CLIPVisionTower(**{**defaults, **fields})


def clip_text_from_name(arch: str, **fields: Any) -> CLIPTextTower:
    """The text tower paired with `arch`'s image tower (context 77, vocab 49408)."""
    size, _, _ = _parse(arch)
    width, layers, heads = size["text"]
    defaults = dict(width=width, layers=layers, heads=heads, embed_dim=size["embed_dim"])
    return CLIPTextTower(**{**defaults, **fields})
