"""On-device L2 k-means (Lloyd) in pure `jnp`, jittable and vmappable over padded blocks.

BuCSFR's BuC step (shared/methods/bucsfr.md 5.2, 9) clusters each coarse class with faiss
k-means (L2, niter=20, nredo=5); this is its JAX counterpart, so the per-class clustering can
be vmapped over coarse classes at a fixed padded shape. Differences from faiss, by design:

- init: each restart starts from k distinct points drawn uniformly at random among the valid
  rows (faiss also picks k random training points; the random streams differ);
- an empty cluster keeps its previous centroid (faiss instead splits a big cluster into two
  perturbed copies);
- the restart kept is the one with the lowest objective of the returned (final) centroids and
  assignment (faiss compares the objective of its last iteration's assignment).

The host-side numpy k-means used for evaluation (k-means++ init) is fgjax/eval/clustering.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Squared L2 distances `[n, k]` by the expanded form (one matmul)."""
    x_sq = jnp.sum(x * x, axis=1, keepdims=True)
    c_sq = jnp.sum(centroids * centroids, axis=1)
    return x_sq - 2.0 * x @ centroids.T + c_sq


def _lloyd(
    x: jax.Array,
    valid: jax.Array,
    key: jax.Array,
    k: int,
    iterations: int,
    active: jax.Array,
    init_index: jax.Array | None = None,
):
    """One restart: random distinct valid points (or the rows `init_index`), `iterations`
    Lloyd updates, then the final nearest-centroid assignment and its objective."""
    if init_index is None:
        # Distinct uniform draw among valid rows: the top-k of iid Gumbel noise (invalid rows
        # -inf). top_k is sorted, so the first m seeds are those a call with k = m draws.
        noise = jnp.where(valid, jax.random.gumbel(key, valid.shape), -jnp.inf)
        init_index = jax.lax.top_k(noise, k)[1]
    centroids = x[init_index]
    weight = valid.astype(x.dtype)
    unused = jnp.where(active, 0.0, jnp.inf).astype(x.dtype)  # inactive: never nearest

    def nearest(c):
        return jnp.argmin(_sq_distances(x, c) + unused, axis=1)

    def step(_, c):
        onehot = jax.nn.one_hot(nearest(c), k, dtype=x.dtype)
        onehot = onehot * weight[:, None]  # padded rows count nowhere
        counts = jnp.sum(onehot, axis=0)
        sums = onehot.T @ x
        # An empty cluster keeps its previous centroid.
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)

    centroids = jax.lax.fori_loop(0, iterations, step, centroids)
    assignment = nearest(centroids).astype(jnp.int32)
    # The objective from the differences (not the expanded form) for accuracy.
    residual = jnp.sum((x - centroids[assignment]) ** 2, axis=1)
    return centroids, assignment, jnp.sum(residual * weight)


def kmeans(
    x: jax.Array,
    k: int,
    key: jax.Array,
    *,
    iterations: int = 20,
    restarts: int = 5,
    valid: jax.Array | None = None,
    active: jax.Array | None = None,
    init_index: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """L2 k-means of `x [n, d]`: the best of `restarts` Lloyd runs of `iterations` steps.

    `k` (static) clusters; `valid` an optional bool `[n]` mask: rows marked False (padding)
    neither seed, move nor count towards any centroid or the objective, so a padded block
    gives the same result as its valid rows alone. `active` an optional bool `[k]` mask:
    inactive clusters get no rows (their centroids are meaningless), so a traced cluster count
    m fits a static k; with the prefix `arange(k) < m` the result is the call with k = m on the
    same key. Needs at least as many valid rows as active clusters. `init_index` an optional
    int `[k]`: every restart starts from these rows (faiss' given initial centroids; the
    restarts then agree) instead of random ones.

    Returns `(centroids [k, d], assignment int32 [n], objective)`: each row's nearest
    centroid (padded rows get one too; ignore them) and the sum of squared distances of the
    valid rows to their centroids, the lowest over restarts.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be [n, d], got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: k must be in [1, {x.shape[0]}], got {k}")
    if valid is None:
        valid = jnp.ones(x.shape[0], bool)
    elif valid.shape != x.shape[:1]:
        raise ValueError(f"kmeans: valid must be [{x.shape[0]}], got shape {valid.shape}")
    if active is None:
        active = jnp.ones(k, bool)
    elif active.shape != (k,):
        raise ValueError(f"kmeans: active must be [{k}], got shape {active.shape}")
    if init_index is not None and init_index.shape != (k,):
        raise ValueError(f"kmeans: init_index must be [{k}], got shape {init_index.shape}")
    runs = jax.vmap(lambda kk: _lloyd(x, valid, kk, k, iterations, active, init_index))(
        jax.random.split(key, restarts)
    )
    best = jnp.argmin(runs[2])
    return jax.tree.map(lambda r: r[best], runs)
