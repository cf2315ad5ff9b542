"""HERBS' Grad-CAM heat maps (the original's `heat.py`), per image and feature level.

The command: `fgjax heatmap` (fgjax/cli/heatmap.py).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from matplotlib.colors import LinearSegmentedColormap

from fgjax.eval.features import normalize_images
from fgjax.methods.herbs.method import HerbsNet, head_probabilities

# HERBS' display colormap (`vis_utils.get_cdict`): jet with a darker blue end, an orange
# shoulder and a dark red top; (position, value) breakpoints per channel.
HERBS_CMAP = LinearSegmentedColormap(
    "herbs_jet",
    {
        channel: [(x, v, v) for x, v in points]
        for channel, points in {
            "red": [(0.0, 0.0), (0.35, 0.5), (0.66, 1.0), (0.89, 1.0), (1.0, 0.8)],
            "green": [(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.3), (1.0, 0.0)],
            "blue": [(0.0, 0.3), (0.25, 0.8), (0.34, 0.8), (0.65, 0.0), (1.0, 0.0)],
        }.items()
    },
)


class HeatMaps(NamedTuple):
    """`herbs_heatmaps` of B images of side S, with P = 3L places (`place_names` order)."""

    final: jax.Array  # [B, S, S] float32 product of the place maps over its max, in [0, 1]
    maps: jax.Array  # [B, P, S, S] float32 every place's map over its max, resized
    target: jax.Array  # [B] int32 the class c whose score s[c] was back-propagated
    scores: jax.Array  # [B, N] float32 s, the sum of the voting softmaxes


def place_names(num_levels: int) -> list[str]:
    """The 3L Grad-CAM places, as the PyTorch modules HERBS hooks: `layer{k}` (Swin
    stage outputs), `fpn_down.Proj_layer{k}`, `fpn_up.Proj_layer{k}`."""
    levels = range(1, num_levels + 1)
    return [
        *(f"layer{k}" for k in levels),
        *(f"fpn_down.Proj_layer{k}" for k in levels),
        *(f"fpn_up.Proj_layer{k}" for k in levels),
    ]


def _place(tree: Any, name: str) -> jax.Array:
    """A place's entry in a perturbations/intermediates tree of `HerbsNet`."""
    if name.startswith("layer"):
        return tree["backbone"][name]
    path, proj = name.split(".")
    return tree["head"][path][f"{proj}_out"]


def grad_cam_map(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """HERBS' map of one place: `[B, T, C]` activation and gradient -> `[B, T]`
    sum_c ReLU(w_c A_c) with w = the token mean of the gradient, over its max per image
    (a map that is zero everywhere stays zero)."""
    a, g = activation.astype(jnp.float32), gradient.astype(jnp.float32)
    w = jnp.mean(g, axis=1, keepdims=True)  # [B, 1, C]
    m = jnp.sum(jax.nn.relu(w * a), axis=-1)
    return _over_max(m)


def _over_max(x: jax.Array) -> jax.Array:
    """`x [B, ...]` over its per-image max; zero where the max is not positive."""
    top = jnp.max(x.reshape(x.shape[0], -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(top > 0, x / jnp.where(top > 0, top, 1.0), 0.0)


def herbs_heatmaps(net: HerbsNet, variables: Any, images: jax.Array, target: jax.Array) -> HeatMaps:
    """HERBS heat maps (spec 6.3) of normalised `images [B, S, S, 3]`; jittable.

    `variables`: `{'params', 'batch_stats'}` of `net` (eval mode). `target [B]` int32:
    the class to explain per image, or -1 for its predicted class argmax s. Images are
    independent (eval mode), so one backward pass of sum_b s_b[c_b] serves the batch. A
    place's gradient is the total one: a Swin tap's also flows through the later stages.
    """
    num_levels = len(net.head.num_selects)

    def apply(perturbations: Any, mutable: list[str]) -> tuple[dict, Any]:
        return net.apply({**variables, **perturbations}, images, train=False, mutable=mutable)

    shapes = jax.eval_shape(lambda: apply({}, ["perturbations"])[1])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def score(perturbations: Any) -> tuple[jax.Array, tuple]:
        out, inter = apply(perturbations, ["intermediates"])
        s = jnp.sum(head_probabilities(out, num_levels), axis=1)  # [B, N]
        c = jnp.where(target < 0, jnp.argmax(s, axis=-1), target).astype(jnp.int32)
        picked = jnp.take_along_axis(s, c[:, None], axis=1)
        return jnp.sum(picked), (s, c, inter["intermediates"])

    grads, (s, c, inter) = jax.grad(score, has_aux=True)(zeros)
    b, size = images.shape[0], images.shape[1]
    maps = []
    for name in place_names(num_levels):
        (a,) = _place(inter, name)
        g = _place(grads["perturbations"], name)
        m = grad_cam_map(a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1]))
        side = int(round(m.shape[1] ** 0.5))
        if side * side != m.shape[1]:
            raise ValueError(f"place {name}: {m.shape[1]} tokens are not a square grid")
        grid = m.reshape(b, side, side)
        maps.append(jax.image.resize(grid, (b, size, size), "bilinear"))
    maps = jnp.stack(maps, axis=1)
    final = _over_max(jnp.prod(maps, axis=1))
    return HeatMaps(final=final, maps=maps, target=c, scores=s)


@functools.partial(jax.jit, static_argnames=("net", "mean", "std"))
def explain(
    net: HerbsNet,
    variables: Any,
    images: jax.Array,
    target: jax.Array,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> HeatMaps:
    """`herbs_heatmaps` of uint8 crops `[B, S, S, 3]` normalised by `mean`/`std` as
    evaluation does; compiled once per network, normalisation and batch shape."""
    return herbs_heatmaps(net, variables, normalize_images(images, mean, std), target)
