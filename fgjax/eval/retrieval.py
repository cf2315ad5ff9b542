"""Retrieval metrics: Recall@K (hit@K), mAP over the full ranking and MAP@R.

Definitions (R = number of relevant gallery items of a query, rank_k = 1-based rank of
its k-th relevant item in the ranking of the whole gallery):

- Recall@K: fraction of all queries with at least one relevant item among their K
  nearest (LCR's rank-1 and hit@5 are Recall@1 and Recall@5). A K beyond the gallery
  size (Ng, or Ng - 1 in leave-one-out) is evaluated at the gallery size.
- mAP: mean over queries with R > 0 of AP = (1/R) sum_{k=1..R} k / rank_k (LCR).
- MAP@R (Musgrave et al. 2020): mean over queries with R > 0 of
  (1/R) sum_{i=1..R} P(i) rel(i) = (1/R) sum_{k: rank_k <= R} k / rank_k.
Queries with R = 0 count as misses in recall and are left out of both means (NaN when
no query has a relevant item).

Similarity: cosine (rows L2-normalised) or dot product. **Tie rule**: equal similarities
rank by gallery index, lower index first, in every metric and both backends.

Backends: "numpy" (the CPU default) computes similarity blocks with a float32 BLAS matmul
and ranks by counting (`fgjax.eval.ranking`); "jax" (the accelerator default) processes
`chunk_size` queries at a time inside one jitted function with `precision=HIGHEST`
matmuls, `top_k` for recall and a stable sort for mAP, and returns a few scalars per
chunk. Both hold one `[chunk, Ng]` block (two with mAP), never `[Nq, Ng]`.

Non-finite features are an error naming the argument, the split and the rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.core.objectives import l2_normalize as unit_rows
from fgjax.eval import ranking

ArrayLike = np.ndarray | jax.Array
METRICS = ("cosine", "dot")
BACKENDS = ("auto", "numpy", "jax")


def resolve_backend(backend: str) -> str:
    """'auto' -> 'numpy' when jax's default backend is the CPU, else 'jax'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numpy" if jax.default_backend() == "cpu" else "jax"
    return backend


def check_features(x: ArrayLike, what: str, split: str = "", dim: int | None = None) -> None:
    """Raise ValueError unless `x` is `[N, D]` (D = `dim` if given) with finite values only.

    The message names `what` (the argument), `split` and how many / which rows are bad.
    """
    where = f"{what} ({split} split)" if split else what
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[N, {dim}]" if dim is not None else "[N, D]"
        raise ValueError(f"{where} must be {want}, got shape {x.shape}")
    if isinstance(x, jax.Array):
        finite = np.asarray(jnp.all(jnp.isfinite(x), axis=1))  # reduced on the device
    else:
        finite = np.concatenate(
            [np.isfinite(x[i : i + 8192]).all(axis=1) for i in range(0, len(x), 8192)] or [[]]
        )
    bad = np.flatnonzero(~finite)
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"{where}: {bad.size} of {x.shape[0]} rows have non-finite values (NaN or inf); "
            f"rows {shown}"
        )


def check_dot_range(*feats: ArrayLike) -> None:
    """Dot products of these rows must not overflow float32 (|q.g| <= |q| |g|)."""
    norms = [float(jnp.max(jnp.linalg.norm(jnp.asarray(f, jnp.float32), axis=1))) for f in feats]
    if math.prod(norms) >= float(np.finfo(np.float32).max):
        raise ValueError(f"dot products overflow float32 (largest row norms {norms})")


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


def device_rows(x: ArrayLike, metric: str) -> jax.Array:
    """`x` on the device in float32, L2-normalised for cosine."""
    x = as_replicated(x)
    return l2_normalize(x) if metric == "cosine" else x.astype(jnp.float32)


def prepare_queries(
    feats: ArrayLike, chunk_size: int, metric: str = "cosine"
) -> tuple[jax.Array, int, int]:
    """Normalise (cosine) `feats: [N, D]` and zero-pad it to a multiple of the chunk.

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
    padded = _normalize_and_pad(as_replicated(feats), n_chunks * chunk - n, metric == "cosine")
    return padded, chunk, n_chunks


@functools.partial(jax.jit, static_argnames=("pad", "normalize"))
def _normalize_and_pad(x: jax.Array, pad: int, normalize: bool) -> jax.Array:
    x = l2_normalize(x) if normalize else x.astype(jnp.float32)
    return jnp.pad(x, ((0, pad), (0, 0)))


def chunk_similarity(
    queries: jax.Array, start: jax.Array, chunk: int, gallery: jax.Array, exclude_self: bool
) -> tuple[jax.Array, jax.Array]:
    """Similarities of one query chunk against the whole gallery (traced code).

    Args:
      queries: prepared (normalised for cosine), padded queries `[Nq_pad, D]`.
      start: int32 scalar, first row of the chunk.
      chunk: static chunk length.
      gallery: prepared gallery `[Ng, D]`.
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


def check_labels(labels: ArrayLike, n: int, name: str) -> np.ndarray:
    """`labels` as an int64 numpy `[n]` array (TypeError/ValueError naming `name`)."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


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
    """Per-chunk sums: hits at every rank 1..kmax, sums of AP and MAP@R, number of APs."""
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
        ranks = jnp.arange(1, sims.shape[1] + 1, dtype=jnp.int32)
        precision_at = jnp.cumsum(rel_sorted, axis=1).astype(jnp.float32) / ranks
        terms = rel_sorted * precision_at
        denom = jnp.maximum(num_rel, 1)
        ap = jnp.sum(terms, axis=1) / denom
        map_r = jnp.sum(jnp.where(ranks[None, :] <= num_rel[:, None], terms, 0.0), axis=1) / denom
        has_rel = valid & (num_rel > 0)
        out["ap_sum"] = jnp.sum(jnp.where(has_rel, ap, 0.0))
        out["map_r_sum"] = jnp.sum(jnp.where(has_rel, map_r, 0.0))
        out["ap_count"] = jnp.sum(has_rel, dtype=jnp.int32)
    return out


def _retrieval_jax(q, ql, g, gl, kmax, chunk_size, compute_map, metric):
    """Per-query-set sums on the jitted path: (hits [kmax], ap_sum, map_r_sum, ap_count)."""
    nq = q.shape[0]
    queries, chunk, n_chunks = prepare_queries(q, chunk_size, metric)
    qlab = jnp.pad(jnp.asarray(ql, jnp.int32), (0, n_chunks * chunk - nq), constant_values=-1)
    exclude_self = g is None
    if exclude_self:
        gallery, glab = queries[:nq], qlab[:nq]
    else:
        gallery, glab = device_rows(g, metric), jnp.asarray(gl, jnp.int32)
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
    if not compute_map:
        return hits, 0.0, 0.0, 0
    return (
        hits,
        sum(float(p["ap_sum"]) for p in parts),
        sum(float(p["map_r_sum"]) for p in parts),
        sum(int(p["ap_count"]) for p in parts),
    )


def _retrieval_numpy(q, ql, g, gl, kmax, chunk_size, compute_map, metric):
    """Same sums as `_retrieval_jax`, on the host with BLAS (see `fgjax.eval.ranking`)."""
    exclude_self = g is None
    queries = ranking.host_rows(q, metric)
    gallery, gl = (queries, ql) if exclude_self else (ranking.host_rows(g, metric), gl)
    index = ranking.LabelIndex(gl)
    rows = ranking.block_rows(gallery.shape[0], chunk_size)
    sorted_buf = (
        np.empty((min(rows, len(queries)), len(gallery)), np.float32) if compute_map else None
    )
    best, ap, map_r = [], [], []
    for start, sims in ranking.similarity_blocks(queries, gallery, exclude_self, rows):
        p = index.positives(ql[start : start + sims.shape[0]], start, exclude_self)
        if compute_map:
            rank = ranking.positive_ranks(sims, p, sorted_buf)
            first = np.full(sims.shape[0], -1, np.int64)
            has = p.count > 0
            if has.any():
                first[has] = np.minimum.reduceat(rank, p.start[has])
            best.append(first)
            a, m = ranking.average_precisions(rank, p)
            ap.append(a[has])
            map_r.append(m[has])
        else:
            best.append(ranking.best_positive_rank(sims, p))
    best = np.concatenate(best)
    found = best[best >= 0]
    hits = np.cumsum(np.bincount(np.minimum(found, kmax), minlength=kmax + 1)[:kmax])
    if not compute_map:
        return hits, 0.0, 0.0, 0
    ap, map_r = np.concatenate(ap), np.concatenate(map_r)
    return hits, float(ap.sum()), float(map_r.sum()), len(ap)


def retrieval_metrics(
    query_feats: ArrayLike,
    query_labels: ArrayLike,
    gallery_feats: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    chunk_size: int = 1024,
    compute_map: bool = True,
    metric: str = "cosine",
    backend: str = "auto",
    split: str = "",
) -> dict[str, float]:
    """Recall@K for every K in `ks`, and with `compute_map` mAP and MAP@R (module docstring).

    Args:
      query_feats: `[Nq, D]` descriptors (numpy or jax, any float dtype).
      query_labels: `[Nq]` integer class labels (fine or coarse: any integers).
      gallery_feats: `[Ng, D]`, or None for leave-one-out on the query set (the
        CUB/Cars protocol: query = gallery = test split, each query excluded from
        its own gallery). A jax array may be sharded.
      gallery_labels: `[Ng]`; given iff `gallery_feats` is.
      ks: ranks for `recall@k` (any positive integers).
      chunk_size: queries per block. Memory is about `chunk * Ng * 4` bytes for recall
        and twice that with mAP on the numpy backend (which also caps a block at 256 MB);
        the jax path's full sort needs a few times that, e.g. 1024 x 100k ~2 GB with mAP.
      compute_map: also compute mAP and MAP@R (about 1.2x the recall time on the numpy
        backend, 3-4x on the jax path).
      metric: 'cosine' (rows L2-normalised) or 'dot'.
      backend: 'auto' (numpy when jax's default backend is the CPU, else jax), 'numpy', 'jax'.
      split: named in error messages (e.g. 'test').

    Returns:
      `{"recall@k": ..., "map": ..., "map@r": ...}` (the last two only with `compute_map`).
    """
    if (gallery_feats is None) != (gallery_labels is None):
        raise ValueError("give both gallery_feats and gallery_labels, or neither")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    backend = resolve_backend(backend)
    check_features(query_feats, "query_feats", split)
    nq = query_feats.shape[0]
    ql = check_labels(query_labels, nq, "query_labels")
    if gallery_feats is None:
        gl, ng_eff = None, nq - 1
    else:
        check_features(gallery_feats, "gallery_feats", split, dim=query_feats.shape[1])
        gl, ng_eff = check_labels(gallery_labels, gallery_feats.shape[0], "gallery_labels"), 0
        ng_eff = gallery_feats.shape[0]
    if ng_eff < 1:
        raise ValueError("the gallery is empty (leave-one-out needs at least two queries)")
    if metric == "dot":
        check_dot_range(query_feats, *([] if gallery_feats is None else [gallery_feats]))
    kmax = min(max(ks), ng_eff)

    run = _retrieval_numpy if backend == "numpy" else _retrieval_jax
    hits, ap_sum, map_r_sum, count = run(
        query_feats, ql, gallery_feats, gl, kmax, chunk_size, compute_map, metric
    )
    out = {f"recall@{k}": float(hits[min(k, kmax) - 1] / nq) for k in ks}
    if compute_map:
        out["map"] = ap_sum / count if count else float("nan")
        out["map@r"] = map_r_sum / count if count else float("nan")
    return out
