"""Retrieval metrics (Recall@K / hit@k and mAP) with chunked on-device cosine similarity.

Queries are processed `chunk_size` at a time inside one jitted function; on the
device each chunk holds a `[chunk, Ng]` similarity block, never the full
`[Nq, Ng]` matrix, and only a handful of scalars per chunk come back to the host.
The query set is zero-padded to a multiple of the chunk, so one shape compiles
per (Nq, Ng, D, chunk) whatever the number of chunks.

Ties (equal cosine similarity) are broken by gallery index, lower index first, in
both the top-k used for recall (`jax.lax.top_k`) and the stable sort used for
mAP, so the two always see the same ranking and results are deterministic. This
differs from `sklearn.metrics.average_precision_score`, which groups tied scores
into one threshold; with continuous features exact ties are rare. LCR's original
code breaks ties arbitrarily (numpy's unstable argsort, reversed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.core.objectives import l2_normalize as unit_rows

ArrayLike = np.ndarray | jax.Array


def as_replicated(x: ArrayLike) -> jax.Array:
    """`x` as a jax array that every device holding it holds whole.

    numpy input goes to the default device. A sharded jax array (for example
    features gathered from a data-parallel extraction) is all-gathered device to
    device, not through the host: `top_k` and the sort run along the gallery axis,
    which must not be sharded (explicit-sharding meshes reject it), and a 100k x
    2048 float32 gallery is 800 MB, small next to accelerator memory. Each device
    then computes every chunk redundantly; splitting chunk rows across devices is
    the next step if evaluation on many devices ever becomes the bottleneck.
    """
    if not isinstance(x, jax.Array):
        return jnp.asarray(x)
    sharding = x.sharding
    named_split = isinstance(sharding, jax.sharding.NamedSharding) and any(
        axis is not None for axis in sharding.spec
    )  # explicit meshes carry the split in the type even on one device
    if sharding.is_fully_replicated and not named_split:
        return x
    if isinstance(sharding, jax.sharding.NamedSharding):
        mesh = sharding.mesh  # stay on the caller's mesh (it may be the context mesh)
    else:
        mesh = jax.sharding.Mesh(np.array(list(sharding.device_set)), ("replica",))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def l2_normalize(x: ArrayLike) -> jax.Array:
    """Rows of `x: [N, D]` scaled to unit L2 norm, in float32 (all-zero rows stay zero)."""
    return unit_rows(jnp.asarray(x, jnp.float32))


def prepare_queries(feats: ArrayLike, chunk_size: int) -> tuple[jax.Array, int, int]:
    """Normalise `feats: [N, D]` and zero-pad it to a multiple of the chunk.

    Returns `(padded [n_chunks * chunk, D], chunk, n_chunks)`. The chunk is
    `min(chunk_size, N)` so small query sets do not compile a needlessly large block.
    """
    n = feats.shape[0]
    if n == 0:
        raise ValueError("empty query set")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk = min(int(chunk_size), n)
    n_chunks = math.ceil(n / chunk)
    padded = _normalize_and_pad(as_replicated(feats), n_chunks * chunk - n)
    return padded, chunk, n_chunks


@functools.partial(jax.jit, static_argnames="pad")
def _normalize_and_pad(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(l2_normalize(x), ((0, pad), (0, 0)))


def chunk_similarity(
    queries: jax.Array, start: jax.Array, chunk: int, gallery: jax.Array, exclude_self: bool
) -> tuple[jax.Array, jax.Array]:
    """Cosine similarities of one query chunk against the whole gallery (traced code).

    Args:
      queries: normalised, padded queries `[Nq_pad, D]`.
      start: int32 scalar, first row of the chunk.
      chunk: static chunk length.
      gallery: normalised gallery `[Ng, D]` (may be sharded along Ng).
      exclude_self: leave-one-out; query row `i` is gallery row `i`, whose
        similarity is set to `-inf` so it ranks last.
    Returns:
      `(sims [chunk, Ng] float32, query_index [chunk] int32)`.
    """
    q = jax.lax.dynamic_slice_in_dim(queries, start, chunk)
    # HIGHEST: TF32/bf16 matmul passes reorder near neighbours and move the metrics.
    sims = jnp.dot(q, gallery.T, precision=jax.lax.Precision.HIGHEST)
    qidx = start + jnp.arange(chunk, dtype=jnp.int32)
    if exclude_self:
        gidx = jnp.arange(gallery.shape[0], dtype=jnp.int32)
        sims = jnp.where(gidx[None, :] == qidx[:, None], -jnp.inf, sims)
    return sims, qidx


def _labels(labels: ArrayLike, n: int, name: str) -> jax.Array:
    labels = as_replicated(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name} must be integers, got {labels.dtype}")
    return labels.astype(jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("chunk", "n_valid", "exclude_self", "kmax", "compute_map")
)
def _retrieval_chunk(
    queries: jax.Array,
    query_labels: jax.Array,
    start: jax.Array,
    gallery: jax.Array,
    gallery_labels: jax.Array,
    *,
    chunk: int,
    n_valid: int,
    exclude_self: bool,
    kmax: int,
    compute_map: bool,
) -> dict[str, jax.Array]:
    """Per-chunk sums: hits at every rank 1..kmax, sum of AP, number of APs."""
    sims, qidx = chunk_similarity(queries, start, chunk, gallery, exclude_self)
    qlab = jax.lax.dynamic_slice_in_dim(query_labels, start, chunk)
    valid = qidx < n_valid  # padded rows contribute nothing

    _, nn_idx = jax.lax.top_k(sims, kmax)  # ties: lower gallery index first
    match = gallery_labels[nn_idx] == qlab[:, None]  # [chunk, kmax]
    hit_at = jnp.cumsum(match, axis=1) > 0  # hit_at[:, j]: a match within the first j+1
    out = {"hits": jnp.sum(hit_at & valid[:, None], axis=0, dtype=jnp.int32)}

    if compute_map:
        relevant = gallery_labels[None, :] == qlab[:, None]  # [chunk, Ng]
        if exclude_self:
            gidx = jnp.arange(gallery.shape[0], dtype=jnp.int32)
            relevant &= gidx[None, :] != qidx[:, None]
        num_rel = jnp.sum(relevant, axis=1)
        # Stable sort on -sim carries relevance along: same tie order as top_k.
        _, rel_sorted = jax.lax.sort(
            (-sims, relevant.astype(jnp.int32)), dimension=1, is_stable=True, num_keys=1
        )
        # AP = (1/R) sum_k k / rank_k = (1/R) sum_j rel_j * (#relevant in 1..j) / j
        ranks = jnp.arange(1, sims.shape[1] + 1, dtype=jnp.float32)
        precision_at = jnp.cumsum(rel_sorted, axis=1).astype(jnp.float32) / ranks
        ap = jnp.sum(rel_sorted * precision_at, axis=1) / jnp.maximum(num_rel, 1)
        has_rel = valid & (num_rel > 0)
        out["ap_sum"] = jnp.sum(jnp.where(has_rel, ap, 0.0))
        out["ap_count"] = jnp.sum(has_rel, dtype=jnp.int32)
    return out


def retrieval_metrics(
    query_feats: ArrayLike,
    query_labels: ArrayLike,
    gallery_feats: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    chunk_size: int = 1024,
    compute_map: bool = True,
) -> dict[str, float]:
    """Cosine-similarity retrieval: Recall@K (hit@k) and mAP.

    Args:
      query_feats: `[Nq, D]` descriptors (numpy or jax, any float dtype); L2-normalised here.
      query_labels: `[Nq]` integer class labels.
      gallery_feats: `[Ng, D]`, or None for leave-one-out on the query set (the
        CUB/Cars protocol: query = gallery = test split, each query excluded from
        its own gallery). May be a jax array sharded along Ng.
      gallery_labels: `[Ng]`; given iff `gallery_feats` is.
      ks: ranks for `recall@k`. A k beyond the gallery size (Ng, or Ng - 1 in
        leave-one-out) is evaluated at the gallery size.
      chunk_size: queries per on-device block. Device memory is about
        `chunk * Ng * 4` bytes for recall and a few times that with `compute_map`
        (full sort of each row), e.g. 1024 x 100k needs ~2 GB with mAP.
      compute_map: also compute mAP (needs the full ranking; off is much cheaper).

    Returns:
      `{"recall@k": fraction of all queries with at least one same-label item
      among their k nearest, for each k; "map": mean over queries with at least
      one relevant gallery item of AP = (1/R) sum_{k=1..R} k / rank_k}` (R =
      number of relevant gallery items, rank_k = 1-based rank of the k-th of
      them). Queries with R = 0 count as misses in recall and are left out of
      mAP; `map` is NaN if no query has a relevant item. Recall@1 is LCR's rank-1
      and recall@5 its rank-5.
    """
    if (gallery_feats is None) != (gallery_labels is None):
        raise ValueError("give both gallery_feats and gallery_labels, or neither")
    query_feats = as_replicated(query_feats)
    if query_feats.ndim != 2:
        raise ValueError(f"query_feats must be [N, D], got shape {query_feats.shape}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")

    nq = query_feats.shape[0]
    qlab = _labels(query_labels, nq, "query_labels")
    queries, chunk, n_chunks = prepare_queries(query_feats, chunk_size)
    pad = n_chunks * chunk - nq
    qlab = jnp.pad(qlab, (0, pad), constant_values=-1)

    exclude_self = gallery_feats is None
    if exclude_self:
        gallery, glab, ng_eff = queries[:nq], qlab[:nq], nq - 1
    else:
        gallery_feats = as_replicated(gallery_feats)
        if gallery_feats.ndim != 2 or gallery_feats.shape[1] != query_feats.shape[1]:
            raise ValueError(
                f"gallery_feats must be [Ng, {query_feats.shape[1]}], got {gallery_feats.shape}"
            )
        gallery = l2_normalize(gallery_feats)
        glab = _labels(gallery_labels, gallery.shape[0], "gallery_labels")
        ng_eff = gallery.shape[0]
    if ng_eff < 1:
        raise ValueError("the gallery is empty (leave-one-out needs at least two queries)")
    kmax = min(max(ks), ng_eff)

    kernel = functools.partial(
        _retrieval_chunk,
        chunk=chunk,
        n_valid=nq,
        exclude_self=exclude_self,
        kmax=kmax,
        compute_map=compute_map,
    )
    # Dispatch every chunk before reading any result back (asynchronous execution).
    parts = [kernel(queries, qlab, jnp.int32(i * chunk), gallery, glab) for i in range(n_chunks)]
    parts = jax.device_get(parts)

    hits = np.sum([p["hits"] for p in parts], axis=0, dtype=np.int64)
    out = {f"recall@{k}": float(hits[min(k, kmax) - 1] / nq) for k in ks}
    if compute_map:
        count = sum(int(p["ap_count"]) for p in parts)
        total = sum(float(p["ap_sum"]) for p in parts)
        out["map"] = total / count if count else float("nan")
    return out
