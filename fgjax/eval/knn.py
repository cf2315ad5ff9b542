"""Weighted kNN classification (the InstDisc / MoCo kNN monitor) and cosine kNN search.

Same chunking as `fgjax.eval.retrieval`: `chunk_size` queries at a time, one
`[chunk, N_bank]` similarity block on the device, `jax.lax.top_k` there, and only
`[chunk, k]` (search) or `[chunk]` (predictions) per chunk back to the host.

Ties: among equally similar bank items the lower bank index is taken first; a
tie in the class vote goes to the lower class id (`argmax`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.eval.retrieval import (
    ArrayLike,
    as_replicated,
    chunk_similarity,
    l2_normalize,
    prepare_queries,
)


def _setup(
    bank_feats: ArrayLike, query_feats: ArrayLike | None, k: int, chunk_size: int
) -> tuple[jax.Array, jax.Array, int, int, int, bool, int]:
    """Normalised bank, padded queries, chunk geometry, leave-one-out flag, clamped k."""
    bank_feats = as_replicated(bank_feats)
    if bank_feats.ndim != 2:
        raise ValueError(f"bank features must be [N, D], got shape {bank_feats.shape}")
    exclude_self = query_feats is None
    if exclude_self:
        query_feats = bank_feats
    else:
        query_feats = as_replicated(query_feats)
        if query_feats.ndim != 2 or query_feats.shape[1] != bank_feats.shape[1]:
            raise ValueError(
                f"query features must be [Nq, {bank_feats.shape[1]}], got {query_feats.shape}"
            )
    queries, chunk, n_chunks = prepare_queries(query_feats, chunk_size)
    n_query = query_feats.shape[0]
    bank = queries[:n_query] if exclude_self else l2_normalize(bank_feats)
    n_eff = bank.shape[0] - int(exclude_self)
    if n_eff < 1:
        raise ValueError("the bank is empty (leave-one-out needs at least two items)")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return queries, bank, n_query, chunk, n_chunks, exclude_self, min(int(k), n_eff)


@functools.partial(jax.jit, static_argnames=("chunk", "k", "exclude_self"))
def _search_chunk(queries, start, bank, *, chunk, k, exclude_self):
    sims, _ = chunk_similarity(queries, start, chunk, bank, exclude_self)
    return jax.lax.top_k(sims, k)


def nearest_neighbors(
    query_feats: ArrayLike | None,
    bank_feats: ArrayLike,
    k: int,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-nearest neighbours of each query in the bank.

    Args:
      query_feats: `[Nq, D]`, or None for leave-one-out on the bank (query i is
        bank item i, excluded from its own neighbours).
      bank_feats: `[Nb, D]` (may be a sharded jax array).
      k: neighbours per query; clamped to Nb (Nb - 1 in leave-one-out).
      chunk_size: queries per on-device block.
    Returns:
      `(sims [Nq, k] float32 descending, indices [Nq, k] int32 into the bank)`.
    """
    queries, bank, nq, chunk, n_chunks, loo, k = _setup(bank_feats, query_feats, k, chunk_size)
    kernel = functools.partial(_search_chunk, chunk=chunk, k=k, exclude_self=loo)
    parts = [kernel(queries, jnp.int32(i * chunk), bank) for i in range(n_chunks)]
    sims = np.concatenate([np.asarray(s) for s, _ in parts])[:nq]
    idx = np.concatenate([np.asarray(i) for _, i in parts])[:nq]
    return sims, idx


@functools.partial(
    jax.jit, static_argnames=("chunk", "k", "exclude_self", "num_classes", "temperature")
)
def _knn_chunk(
    queries, start, bank, bank_labels, *, chunk, k, exclude_self, num_classes, temperature
):
    sims, _ = chunk_similarity(queries, start, chunk, bank, exclude_self)
    top_sims, top_idx = jax.lax.top_k(sims, k)  # [chunk, k], descending
    # exp(sim / T) up to a per-row factor exp(-max / T): same argmax, no overflow for small T.
    weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
    votes = jax.vmap(lambda lab, w: jnp.zeros(num_classes, jnp.float32).at[lab].add(w))(
        bank_labels[top_idx], weights
    )  # scatter-add instead of a [chunk, k, C] one-hot
    return jnp.argmax(votes, axis=1).astype(jnp.int32)


def knn_classify(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike | None,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    leave_one_out: bool = False,
) -> np.ndarray:
    """Weighted cosine kNN vote: each of the k nearest bank items votes exp(sim / T) for its class.

    Args:
      train_feats: bank features `[Nb, D]` (numpy or jax; may be sharded along Nb).
      train_labels: bank labels `[Nb]` in `[0, num_classes)`.
      test_feats: query features `[Nq, D]`. With `leave_one_out=True` pass None
        (or the bank itself): the bank is classified against itself, each item
        excluded from its own neighbours, which is the protocol when the test
        classes are disjoint from the training classes (call it with the test
        features and labels as the "train" arguments).
      num_classes: size of the vote vector.
      k: neighbours (200 in the MoCo/BYOL monitors); clamped to the bank size.
      temperature: T in exp(sim / T) (0.1 in the monitors).
      chunk_size: queries per on-device block.
      leave_one_out: see `test_feats`.
    Returns:
      `[Nq]` int32 predicted classes (numpy).
    """
    if leave_one_out:
        if test_feats is not None and test_feats is not train_feats:
            if np.shape(test_feats) != np.shape(train_feats):
                raise ValueError("leave_one_out=True: test_feats must be None or the bank itself")
        test_feats = None
    elif test_feats is None:
        raise ValueError("test_feats is None; pass leave_one_out=True to classify the bank")
    queries, bank, nq, chunk, n_chunks, loo, k = _setup(train_feats, test_feats, k, chunk_size)
    bank_labels = as_replicated(train_labels)
    if bank_labels.shape != (bank.shape[0],) or not jnp.issubdtype(bank_labels.dtype, jnp.integer):
        raise ValueError(
            f"train_labels must be [{bank.shape[0]}] integers, got {bank_labels.shape}"
        )
    lo, hi = int(jnp.min(bank_labels)), int(jnp.max(bank_labels))
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{lo}, {hi}]")
    kernel = functools.partial(
        _knn_chunk,
        chunk=chunk,
        k=k,
        exclude_self=loo,
        num_classes=int(num_classes),
        temperature=float(temperature),
    )
    bank_labels = bank_labels.astype(jnp.int32)
    parts = [kernel(queries, jnp.int32(i * chunk), bank, bank_labels) for i in range(n_chunks)]
    return np.concatenate(jax.device_get(parts))[:nq]


def knn_top1(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike | None,
    test_labels: ArrayLike | None,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    leave_one_out: bool = False,
) -> float:
    """Top-1 accuracy of `knn_classify` against `test_labels [Nq]` (a fraction in [0, 1]).

    With `leave_one_out=True`, `test_feats`/`test_labels` may be None: the bank's
    own labels are the targets.
    """
    preds = knn_classify(
        train_feats,
        train_labels,
        test_feats,
        num_classes,
        k,
        temperature,
        chunk_size,
        leave_one_out,
    )
    targets = np.asarray(train_labels if test_labels is None and leave_one_out else test_labels)
    if targets.shape != preds.shape:
        raise ValueError(f"test_labels must have shape {preds.shape}, got {targets.shape}")
    return float(np.mean(preds == targets))
