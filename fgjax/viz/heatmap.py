"""HERBS heat maps (spec section 6.3, `vis_swin_l.py`): `python -m fgjax.viz.heatmap`.

    python -m fgjax.viz.heatmap --workdir runs/cub_herbs [--step N] [--num 8]
        [--split test] [--label C] [--out FILE.png] [--config.a.b=value ...]

For `--num` images of the split (spread evenly over it; the evaluation crop) one row
each: the crop and its heat map overlaid (alpha 0.5, HERBS' jet-like colormap). The map
is HERBS' Grad-CAM variant: with s the sum of the 9 voting softmaxes (token-averaged
`layer1..4`, `FPN1_layer1..4`, and `comb_outs`) and c = argmax s (or `--label C`), the
gradient of s[c] is read at 3L places (L = 4 for Swin: the Swin taps `layer1..4`, the
`fpn_down` projections F'_k before the top-down add, the `fpn_up` projections Q_k before
the bottom-up add). At each place, with activation A `[L_tokens, C]` and gradient G,
map = sum_c ReLU(mean_tokens(G)_c * A_c) (ReLU per channel, then the sum), divided by its
max and bilinearly resized to the crop; the picture is the product of the 3L maps over
its max. Default output: `DIR/heatmap.png`, with the maps in `DIR/heatmap.npz` (`final`
`[N, S, S]`, `maps` `[N, 3L, S, S]`, `places`, `target`, `label`, `index`). Needs a
`config.method='herbs'` run; `--config.model.dtype=float32` computes a bfloat16 run's
maps in float32.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.colors import LinearSegmentedColormap

from fgjax.core.cli import command
from fgjax.data.eval_loader import eval_crops, spread
from fgjax.eval.features import normalize_images
from fgjax.evaluate import restore_checkpoint
from fgjax.methods.herbs import Herbs, HerbsNet, head_probabilities
from fgjax.viz.common import (
    draw_overlays,
    picture_parser,
    run_command,
)

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


def _parser() -> argparse.ArgumentParser:
    p = picture_parser(
        "python -m fgjax.viz.heatmap",
        __doc__.split("\n")[0],
        runs="herbs",
        out="PNG path (default WORKDIR/heatmap.png; maps in .npz beside)",
    )
    p.add_argument("--label", type=int, help="class to explain (default: each prediction)")
    return p


@command
def main(argv: Sequence[str] | None = None) -> str:
    a, config, run = run_command(
        argv,
        _parser(),
        accepts=lambda method: isinstance(method, Herbs),
        refusal="not a HERBS run: the heat maps need config.method='herbs'",
    )
    classes = run.info.num_classes
    if a.label is not None and not 0 <= a.label < classes:
        raise ValueError(f"--label must be a class id in [0, {classes}), got {a.label}")
    state, step = restore_checkpoint(run, config.seed, a.workdir, a.step)
    source = run.sources[a.split]
    picks = spread(len(source), a.num)
    images = eval_crops(source, picks, config.data)
    labels = np.asarray([int(source[int(i)]["label"]) for i in picks], np.int32)
    target = np.full(len(picks), -1 if a.label is None else a.label, np.int32)
    net = run.method.net
    variables = {"params": state.params, **state.model_state}
    maps = explain(net, variables, images, target, run.extractor.mean, run.extractor.std)
    maps = jax.device_get(maps)
    out = a.out or os.path.join(a.workdir, "heatmap.png")
    np.savez(
        os.path.splitext(out)[0] + ".npz",
        final=maps.final,
        maps=maps.maps,
        places=np.asarray(place_names(len(net.head.num_selects))),
        target=maps.target,
        label=labels,
        index=picks,
    )
    # The model's classes are the training split's (a split may have its own class list).
    trained = run.sources["train"].class_names
    names = [
        f"{source.class_names[y]}\nmap of {trained[c]}"
        for y, c in zip(labels, maps.target, strict=True)
    ]
    what = "predicted class" if a.label is None else f"class {a.label}"
    title = f"herbs step {step}, {config.data.kind}/{config.data[a.split + '_split']}"
    columns = [("image", None), (f"heat map ({what})", maps.final)]
    draw_overlays(out, images, columns, names, title=title, cmap=HERBS_CMAP)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
