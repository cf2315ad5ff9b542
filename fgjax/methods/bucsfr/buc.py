"""BuCSFR's per-epoch BuC step for all coarse classes at once (shared/methods/bucsfr.md 5.2).

Per coarse class c (n_c points, current leaf count k[c]): k_c = min(k[c], n_c); L2 k-means
with k_c clusters (fgjax.methods.bucsfr.kmeans: 20 Lloyd iterations, 5 restarts); the single cluster
pair with the smallest positive merge ratio r (coding_length.py); if r < T the pair
(a, b) merges into local cluster 0, whose centroid is l2norm(mean of the members'
embeddings), the other clusters follow in their k-means order (ids 1.., as the original's
`run_hkmeans` numbers them) and k_c drops by one. Unmerged clusters keep their k-means
centroids, L2-normalised. Global ids are class-block offsets: sum of the previous classes'
new k plus the local id.

Classes run one batch of `class_batch` after another (`lax.map`) at a static padded shape:
each class's points gathered into an `[n_max, d]` block (host-side index plan from `coarse`),
clusters padded to `k_max` with clusters >= k_c inactive. Differences from the original
(faiss, per class in a Python loop):

- random streams: class c's k-means uses `jax.random.split(key, C)[c]` (faiss: seed 0), or
  starts from the given points `init_index` (tests pass faiss the same ones);
- an empty cluster after k-means keeps its previous centroid and its id (faiss splits a large
  cluster; the original would then divide by zero in its merge bookkeeping); an empty
  cluster never merges (its r is +inf).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.core.objectives import l2_normalize
from fgjax.methods.bucsfr.coding_length import best_merge, merge_ratios
from fgjax.methods.bucsfr.kmeans import kmeans


def class_blocks(coarse: np.ndarray, num_classes: int, n_max: int) -> np.ndarray:
    """Host-side index plan: int32 `[num_classes, n_max]`, row c = the indices of the points
    of coarse class c in order, padded with N (out of range: padding)."""
    coarse = np.asarray(coarse)
    if coarse.ndim != 1 or coarse.size and not 0 <= coarse.min() <= coarse.max() < num_classes:
        raise ValueError(f"buc: coarse must be [N] ints in [0, {num_classes})")
    sizes = np.bincount(coarse, minlength=num_classes)
    if sizes.max(initial=0) > n_max:
        raise ValueError(f"buc: n_max={n_max} < the largest coarse class ({sizes.max()} points)")
    index = np.full((num_classes, n_max), len(coarse), np.int32)
    order = np.argsort(coarse, kind="stable")
    starts = np.cumsum(sizes) - sizes
    for c in range(num_classes):
        index[c, : sizes[c]] = order[starts[c] : starts[c] + sizes[c]]
    return index


def _class_step(x, valid, k, key, init_index, threshold, k_max, pair_chunk):
    """One class's block `x [n, d]`: k-means with k active clusters of k_max (seeded from the
    rows `init_index [k_max]` when given), then at most one merge. Returns (labels [n],
    centroids [k_max, d] unit, new k, merged, best ratio)."""
    slots = jnp.arange(k_max)
    centroids, assign, _ = kmeans(
        x, k_max, key, valid=valid, active=slots < k, init_index=init_index
    )
    # Inactive clusters are empty, so their ratios are +inf: no change needed in merge_ratios.
    ratios = merge_ratios(x, assign, k_max, valid, pair_chunk=pair_chunk)
    a, b, merge, best = best_merge(ratios, threshold)
    members = valid & ((assign == a) | (assign == b))
    merged = jnp.sum(jnp.where(members[:, None], x, 0.0), axis=0)  # same direction as the mean
    # The merged pair becomes cluster 0, the others keep their order after it.
    new_id = jnp.where((slots == a) | (slots == b), 0, slots + 1 - (slots > a) - (slots > b))
    new_id = jnp.where(merge, new_id, slots)
    centroids = jnp.zeros_like(centroids).at[new_id].set(centroids)
    centroids = centroids.at[0].set(jnp.where(merge, merged, centroids[0]))
    return new_id[assign], l2_normalize(centroids), k - merge, merge, best


@functools.partial(jax.jit, static_argnames=("k_max", "class_batch", "pair_chunk"))
def buc_blocks(
    features: jax.Array,
    index: jax.Array,
    clusters_per_class: jax.Array,
    key: jax.Array,
    threshold: jax.Array,
    init_index: jax.Array | None = None,
    *,
    k_max: int,
    class_batch: int = 1,
    pair_chunk: int = 1024,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """`buc_step`'s jitted core on a ready index plan `index int32 [C, n_max]`
    (`class_blocks`); the other arguments and the result as `buc_step`'s. Public so that
    callers can lower and compile it ahead of time (benchmarks/buc_step.py)."""
    num_points = features.shape[0]
    valid = index < num_points
    k = jnp.minimum(clusters_per_class, jnp.sum(valid, axis=1)).astype(jnp.int32)
    keys = jax.random.split(key, index.shape[0])

    def one_class(args):
        idx, v, kc, kk, init = args
        x = features[jnp.minimum(idx, num_points - 1)]  # gathered per class: O(n_max d) live
        return _class_step(x, v, kc, kk, init, threshold, k_max, pair_chunk)

    # lax.map, not vmap: `class_batch` classes at a time bound the temp memory.
    labels, centroids, new_k, merged, best = jax.lax.map(
        one_class, (index, valid, k, keys, init_index), batch_size=class_batch
    )
    offsets = jnp.cumsum(new_k) - new_k
    # Scatter back: padded rows (index N) and unused slots (position C * k_max) are dropped.
    im2cluster = (
        jnp.zeros(num_points, jnp.int32).at[index].set(offsets[:, None] + labels, mode="drop")
    )
    slots = jnp.arange(k_max)
    total = index.shape[0] * k_max
    position = jnp.where(slots < new_k[:, None], offsets[:, None] + slots, total)
    out = jnp.zeros((total, features.shape[1]), features.dtype)
    out = out.at[position].set(centroids, mode="drop")
    return im2cluster, out, new_k, merged, best


def buc_step(
    features: jax.Array,
    coarse: np.ndarray,
    clusters_per_class: jax.Array,
    key: jax.Array,
    *,
    threshold: float,
    k_max: int,
    n_max: int,
    class_batch: int = 1,
    pair_chunk: int = 1024,
    init_index: np.ndarray | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """One epoch's BuC step for all C coarse classes (spec 5.2).

    `features [N, d]` unit rows (the momentum encoder's embeddings); `coarse [N]` ints in
    [0, C), concrete (a host-side gather plan is built from it); `clusters_per_class int [C]`
    the current leaf counts (the carried state); `threshold` T; `k_max` (static) >= every
    k[c], the padded cluster axis; `n_max` (static) >= every class size, the padded point
    axis (raised to k_max if smaller). Memory knobs (static; results do not depend on them):
    `class_batch` classes are processed at once (vmapped), one batch after another, and the
    merge criterion's joint log-dets run `pair_chunk` cluster pairs at a time, so the temp
    memory grows with class_batch * (n_max k_max + pair_chunk d^2), not with C k_max^2 d^2.
    `init_index` optional ints `[C, k_max]`: class c's k-means starts from its points
    init_index[c] (positions among the class's points, in dataset order; the first k[c]
    are used) instead of random ones, as faiss does with given initial centroids.

    Returns `(im2cluster int32 [N], centroids float32 [C * k_max, d], new_k int32 [C],
    merged bool [C], best_ratio float32 [C])`: global cluster ids (class offsets + local id,
    contiguous within [0, sum(new_k))), the unit centroids indexed by global id (rows >=
    sum(new_k) are zero), the new leaf counts (min(k[c], n_c) minus one where the class
    merged), and each class's smallest positive merge ratio r (merged iff r < T; +inf when
    no pair qualifies): what to look at when choosing T.
    """
    num_classes = int(np.shape(clusters_per_class)[0])
    if np.ndim(features) != 2 or np.shape(features)[0] != np.shape(coarse)[0]:
        raise ValueError(
            f"buc_step: features must be [N, d] and coarse [N], got "
            f"{np.shape(features)}, {np.shape(coarse)}"
        )
    if np.max(clusters_per_class, initial=0) > k_max:
        raise ValueError(f"buc_step: k_max={k_max} < max(clusters_per_class)")
    index = class_blocks(coarse, num_classes, max(n_max, k_max))
    return buc_blocks(
        jnp.asarray(features, jnp.float32),
        index,
        jnp.asarray(clusters_per_class, jnp.int32),
        key,
        jnp.float32(threshold),
        None if init_index is None else jnp.asarray(init_index, jnp.int32),
        k_max=k_max,
        class_batch=class_batch,
        pair_chunk=pair_chunk,
    )
