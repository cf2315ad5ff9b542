"""BuCSFR's merge criterion: lossy coding lengths of clusters (shared/methods/bucsfr.md 5.3).

The original (`utils/utils.py`, `new_new_entropy_counter`) codes a set Z of n rows of
dimension d = 128 with the Ma et al. (TPAMI 2007) lossy coding length

    L(Z) = ((n + d) / 2) * log2 det(I + (d / (eps2 * n)) * Z^T Z),   eps2 = 16,

and for a cluster pair (a, b) the bits saved by coding them together,
I(a, b) = L_a + L_b - L_{a u b}, and the ratio r = L_small / I. It uses the n x n Gram when
n <= 128 and the d x d one otherwise; both have the same determinant (Sylvester), so here
every length comes from the d x d Gram, and G_{a u b} = G_a + G_b. Pure jittable `jnp`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

EPS2 = 16.0  # the original's "exiu": squared distortion


def coding_length(gram: jax.Array, count: jax.Array) -> jax.Array:
    """L = ((n + d) / 2) log2 det(I + d / (eps2 n) G) of sets with Grams `gram [..., d, d]`
    (G = Z^T Z) and sizes `count [...]` (n); 0 where n = 0."""
    d = gram.shape[-1]
    n = jnp.asarray(count, gram.dtype)
    scale = d / (EPS2 * jnp.maximum(n, 1.0))  # guard n = 0 (G = 0 there, so det = 1)
    _, logdet = jnp.linalg.slogdet(jnp.eye(d, dtype=gram.dtype) + scale[..., None, None] * gram)
    return (n + d) / 2 * logdet / math.log(2.0)


def merge_ratios(
    x: jax.Array, assignment: jax.Array, k: int, valid: jax.Array | None = None
) -> jax.Array:
    """Merge ratios `r [k, k]` of the clusters of `x [n, d]` given `assignment int [n]`
    (ids in [0, k), `k` static) and an optional bool `valid [n]` (padding rows ignored).

    r[a, b] = L_small / I(a, b), small = the cluster with fewer points (ties -> b, as the
    original's `counter_j >= counter_k` picks its second cluster); +inf where I <= 0, a == b
    or either cluster is empty.
    """
    if x.ndim != 2 or assignment.shape != x.shape[:1]:
        raise ValueError(
            f"merge_ratios: x must be [n, d] and assignment [n], got {x.shape}, {assignment.shape}"
        )
    if valid is None:
        valid = jnp.ones(x.shape[0], bool)
    # Per-cluster segment sums of the outer products x x^T, as one masked matmul per cluster.
    member = jax.nn.one_hot(assignment, k, dtype=x.dtype) * valid[:, None].astype(x.dtype)
    grams = jnp.einsum("nk,nd,ne->kde", member, x, x)
    counts = jnp.sum(member, axis=0)
    length = coding_length(grams, counts)  # [k]
    joint = coding_length(grams[:, None] + grams[None, :], counts[:, None] + counts[None, :])
    info = length[:, None] + length[None, :] - joint
    small = jnp.where(counts[:, None] < counts[None, :], length[:, None], length[None, :])
    ok = (info > 0) & ~jnp.eye(k, dtype=bool) & (counts[:, None] > 0) & (counts[None, :] > 0)
    return jnp.where(ok, small / jnp.where(ok, info, 1.0), jnp.inf)


def best_merge(r: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The pair a < b (the original fills only the upper triangle) with the smallest
    positive `r [k, k]`, and whether to merge it: r < `threshold` (T = 1.1 FGVC, 2.0
    CIFAR-100, 1.5 iNat, 5 ImageNet32). Returns `(a, b, merge)`, int32, int32, bool;
    merge is False when no pair is positive and finite."""
    k = r.shape[-1]
    upper = jnp.triu(jnp.ones((k, k), bool), 1)
    masked = jnp.where(upper & (r > 0), r, jnp.inf)
    flat = jnp.argmin(masked)  # first in row-major order on ties, like the original's loop
    a, b = jnp.divmod(flat, k)
    return a.astype(jnp.int32), b.astype(jnp.int32), masked.reshape(-1)[flat] < threshold
