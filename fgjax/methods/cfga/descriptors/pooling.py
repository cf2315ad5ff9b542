"""Pooled descriptors of the last feature map (spec cfga.md 4.5 "Pooling", 6.2 SCDA).

Every function takes `features` [B, h, w, C] (post-ReLU, so >= 0) and returns float32
[B, D]; L2 normalisation is zero-safe (`fgjax.core.objectives.l2_normalize`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fgjax.core.objectives import l2_normalize, max_at_argmax


def masked_avg_max(features: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Average and max of `features * mask` over the positions, `mask` bool [B, h, w].

    The average divides by |M| (the selected positions), not h * w; an empty mask gives
    zeros for both (its count is clamped to 1). The max includes the masked-out zeros,
    as the reference's max pool of M * F does (the same as the max over M for F >= 0); it
    is differentiated as the reference's max pool, through its one argmax (CFGA's
    objective: JAX's own rule divides by a count of ties that XLA's rounding can change).
    Returns `(avg [B, C], max [B, C])`, float32.
    """
    m = mask.astype(jnp.float32)[..., None]
    g = features.astype(jnp.float32) * m
    count = jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)
    return jnp.sum(g, axis=(1, 2)) / count, max_at_argmax(g, axis=(1, 2))


def _avg(features: jax.Array, region: jax.Array | None) -> jax.Array:
    """GAP [B, C] float32, over `region` bool [B, h, w] (a padded map's valid positions)."""
    where = None if region is None else region[..., None]
    return jnp.mean(features.astype(jnp.float32), axis=(1, 2), where=where)


def gap(features: jax.Array, region: jax.Array | None = None) -> jax.Array:
    """L2(GAP(F)) [B, C], GAP over `region` when given."""
    return l2_normalize(_avg(features, region))


def pooling(features: jax.Array, region: jax.Array | None = None) -> jax.Array:
    """The paper's "Pooling" (DGPCRL's embedding): L2(concat[GAP(F), GMP(F)]) [B, 2C],
    unmasked (GAP over `region` when given; the GMP of F >= 0 is that of the region when
    the padding is 0, as the backbone's `valid` makes it)."""
    f = features.astype(jnp.float32)
    return l2_normalize(jnp.concatenate([_avg(f, region), jnp.max(f, axis=(1, 2))], -1))


def scda(features: jax.Array, mask: jax.Array) -> jax.Array:
    """concat[L2(masked avg), L2(masked max)] [B, 2C]: normalise, then concatenate
    (`scda_norm_max_avg.json`, original SCDA's order of operations); norm sqrt 2."""
    avg, mx = masked_avg_max(features, mask)
    return jnp.concatenate([l2_normalize(avg), l2_normalize(mx)], axis=-1)


def scda_concat(features: jax.Array, mask: jax.Array) -> jax.Array:
    """L2(concat[masked avg, masked max]) [B, 2C]: concatenate, then normalise
    (`scda_max_avg_norm.json`)."""
    return l2_normalize(jnp.concatenate(masked_avg_max(features, mask), axis=-1))


def pooled_descriptors(
    features: jax.Array, mask: jax.Array, region: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Every pooled descriptor by name (unused ones cost nothing under jit); `region` bool
    [B, h, w] the valid positions of a padded map (the SCDA `mask` lies inside them)."""
    return {
        "gap": gap(features, region),
        "pooling": pooling(features, region),
        "scda": scda(features, mask),
        "scda_concat": scda_concat(features, mask),
    }
