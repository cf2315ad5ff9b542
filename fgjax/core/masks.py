"""SCDA's foreground mask on a feature map (spec cfga.md section 3), all in JAX.

`mean_threshold_mask` keeps the positions whose channel sum exceeds its spatial mean;
`largest_component` keeps its largest 4-connected component (the ImageNet pipeline's
LCC). Both work on one map; `jax.vmap` them over a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_threshold_mask(features: jax.Array, region: jax.Array | None = None) -> jax.Array:
    """`features` [h, w, C] -> bool [h, w]: A > mean(A) with A = sum_c features (strict, so
    a constant A, e.g. an all-zero map, gives an empty mask). `region` bool [h, w]: the
    valid positions of a padded map, the only ones averaged and selected (None: all)."""
    a = jnp.sum(features.astype(jnp.float32), axis=-1)
    mask = a > jnp.mean(a, where=region)
    return mask if region is None else mask & region


def _min_neighbour(labels: jax.Array, background: int) -> jax.Array:
    """The smallest label among each position's 4 neighbours (`background` off the map)."""
    p = jnp.pad(labels, 1, constant_values=background)
    vertical = jnp.minimum(p[:-2, 1:-1], p[2:, 1:-1])
    return jnp.minimum(vertical, jnp.minimum(p[1:-1, :-2], p[1:-1, 2:]))


def component_labels(mask: jax.Array) -> jax.Array:
    """bool [h, w] -> int32 [h, w]: every foreground position labelled with the raster
    index (i * w + j) of its 4-connected component's first position, background h * w.

    Min-label propagation over the 4 neighbours until nothing changes (a `while_loop`, so
    it jits and vmaps), with pointer jumping (a position adopts its label's label: labels
    are positions of the same component) to shorten long snakes.
    """
    h, w = mask.shape
    background = h * w
    start = jnp.where(mask, jnp.arange(h * w, dtype=jnp.int32).reshape(h, w), background)

    def step(state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        labels, _ = state
        new = jnp.minimum(labels, _min_neighbour(labels, background))
        flat = jnp.append(new.ravel(), background)  # background points at itself
        new = jnp.where(mask, jnp.minimum(new, flat[new]), background)
        return new, jnp.any(new != labels)

    labels, _ = jax.lax.while_loop(lambda s: s[1], step, (start, jnp.array(True)))
    return labels


def largest_component(mask: jax.Array) -> jax.Array:
    """bool [h, w] -> bool [h, w]: the 4-connected component of `mask` with the most
    positions; on a tie the one whose first position comes first in raster order
    (scipy.ndimage.label's lowest label, skimage's too). An empty mask stays empty."""
    labels = component_labels(mask)
    sizes = jnp.zeros(mask.size + 1, jnp.int32).at[labels.ravel()].add(1)[:-1]
    # argmax takes the first maximum: the lowest label, i.e. the earliest first position.
    return mask & (labels == jnp.argmax(sizes))


def scda_mask(features: jax.Array, use_lcc: bool, region: jax.Array | None = None) -> jax.Array:
    """The mask CFGA and SCDA use (spec 3): `mean_threshold_mask`, then the largest
    component when `use_lcc` (ImageNet backbones; the metric-learned ones skip it).
    `features` [h, w, C] -> bool [h, w]; `region` as `mean_threshold_mask`'s (the mask
    lies inside it, so its components are those of the image alone)."""
    mask = mean_threshold_mask(features, region)
    return largest_component(mask) if use_lcc else mask
