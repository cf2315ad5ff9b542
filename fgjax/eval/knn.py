"""kNN classification (weighted: the InstDisc / MoCo kNN monitor; or majority vote) and
cosine kNN search.

Same backends and chunking as `fgjax.eval.retrieval`: `chunk_size` queries at a time, one
`[chunk, N_bank]` similarity block; 'jax' keeps it on the device (`jax.lax.top_k` there,
only `[chunk, k]` or `[chunk]` back), 'numpy' (the CPU default) uses a BLAS matmul and
`fgjax.eval.ranking.top_k`.

Ties: among equally similar bank items the lower bank index is taken first; a
tie in the class vote goes to the lower class id (`argmax`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.eval import ranking
from fgjax.eval.retrieval import (
    ArrayLike,
    check_features,
    check_labels,
    chunk_similarity,
    device_rows,
    prepare_queries,
    resolve_backend,
)

VOTES = ("weighted", "majority")


def _setup(
    bank_feats: ArrayLike, query_feats: ArrayLike | None, k: int, split: str
) -> tuple[int, bool, int]:
    """Checks; returns (number of queries, leave-one-out flag, k clamped to the bank)."""
    check_features(bank_feats, "bank features", split)
    exclude_self = query_feats is None
    if not exclude_self:
        check_features(query_feats, "query features", split, dim=bank_feats.shape[1])
    n_query = bank_feats.shape[0] if exclude_self else query_feats.shape[0]
    if n_query == 0:
        raise ValueError("empty query set")
    n_eff = bank_feats.shape[0] - int(exclude_self)
    if n_eff < 1:
        raise ValueError("the bank is empty (leave-one-out needs at least two items)")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return n_query, exclude_self, min(int(k), n_eff)


def _device_setup(bank_feats, query_feats, chunk_size):
    """Padded normalised queries, normalised bank, chunk geometry (jax path)."""
    exclude_self = query_feats is None
    queries, chunk, n_chunks = prepare_queries(
        bank_feats if exclude_self else query_feats, chunk_size
    )
    bank = queries[: bank_feats.shape[0]] if exclude_self else device_rows(bank_feats, "cosine")
    return queries, bank, chunk, n_chunks


def _host_top_k(bank_feats, query_feats, k, chunk_size):
    """`(start, sims [b, k], idx [b, k])` per query block (numpy path)."""
    exclude_self = query_feats is None
    queries = ranking.host_rows(bank_feats if exclude_self else query_feats, "cosine")
    bank = queries if exclude_self else ranking.host_rows(bank_feats, "cosine")
    rows = ranking.block_rows(bank.shape[0], chunk_size)
    for start, sims in ranking.similarity_blocks(queries, bank, exclude_self, rows):
        yield (start, *ranking.top_k(sims, k))


@functools.partial(jax.jit, static_argnames=("chunk", "k", "exclude_self"))
def _search_chunk(queries, start, bank, *, chunk, k, exclude_self):
    sims, _ = chunk_similarity(queries, start, chunk, bank, exclude_self)
    return jax.lax.top_k(sims, k)


def nearest_neighbors(
    query_feats: ArrayLike | None,
    bank_feats: ArrayLike,
    k: int,
    chunk_size: int = 1024,
    *,
    backend: str = "auto",
    split: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-nearest neighbours of each query in the bank.

    Args:
      query_feats: `[Nq, D]`, or None for leave-one-out on the bank (query i is
        bank item i, excluded from its own neighbours).
      bank_feats: `[Nb, D]` (may be a sharded jax array).
      k: neighbours per query; clamped to Nb (Nb - 1 in leave-one-out).
      chunk_size: queries per block.
      backend: 'auto' | 'numpy' | 'jax' (see `fgjax.eval.retrieval`).
      split: named in error messages.
    Returns:
      `(sims [Nq, k] float32 descending, indices [Nq, k] int32 into the bank)`.
    """
    nq, loo, k = _setup(bank_feats, query_feats, k, split)
    if resolve_backend(backend) == "numpy":
        parts = [(s, i) for _, s, i in _host_top_k(bank_feats, query_feats, k, chunk_size)]
    else:
        queries, bank, chunk, n_chunks = _device_setup(bank_feats, query_feats, chunk_size)
        kernel = functools.partial(_search_chunk, chunk=chunk, k=k, exclude_self=loo)
        parts = jax.device_get(
            [kernel(queries, jnp.int32(i * chunk), bank) for i in range(n_chunks)]
        )
    sims = np.concatenate([s for s, _ in parts])[:nq].astype(np.float32)
    idx = np.concatenate([i for _, i in parts])[:nq].astype(np.int32)
    return sims, idx


def _vote_weights(top_sims, temperature, vote, xp):
    """Per-neighbour vote: exp(sim / T) (up to a per-row factor exp(-max / T): same argmax,
    no overflow for small T), or 1 for the majority vote."""
    if vote == "majority":
        return xp.ones_like(top_sims)
    return xp.exp((top_sims - top_sims[:, :1]) / temperature)


@functools.partial(
    jax.jit, static_argnames=("chunk", "k", "exclude_self", "num_classes", "temperature", "vote")
)
def _knn_chunk(
    queries, start, bank, bank_labels, *, chunk, k, exclude_self, num_classes, temperature, vote
):
    sims, _ = chunk_similarity(queries, start, chunk, bank, exclude_self)
    top_sims, top_idx = jax.lax.top_k(sims, k)  # [chunk, k], descending
    weights = _vote_weights(top_sims, temperature, vote, jnp)
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
    *,
    vote: str = "weighted",
    backend: str = "auto",
    split: str = "",
) -> np.ndarray:
    """kNN vote over cosine neighbours: each of the k nearest bank items votes for its class,
    with weight exp(sim / T) ('weighted', the InstDisc/MoCo monitor) or 1 ('majority').

    Args:
      train_feats: bank features `[Nb, D]` (numpy or jax; may be sharded along Nb).
      train_labels: bank labels `[Nb]` in `[0, num_classes)`: fine labels, or coarse
        labels (e.g. `Features.coarse_labels`) with the number of coarse classes.
      test_feats: query features `[Nq, D]`. With `leave_one_out=True` pass None
        (or the bank itself): the bank is classified against itself, each item
        excluded from its own neighbours, which is the protocol when the test
        classes are disjoint from the training classes (call it with the test
        features and labels as the "train" arguments).
      num_classes: size of the vote vector.
      k: neighbours (200 in the MoCo/BYOL monitors); clamped to the bank size.
      temperature: T in exp(sim / T) (0.1 in the monitors).
      chunk_size: queries per block.
      leave_one_out: see `test_feats`.
      vote: 'weighted' or 'majority'.
      backend: 'auto' | 'numpy' | 'jax' (see `fgjax.eval.retrieval`).
      split: named in error messages.
    Returns:
      `[Nq]` int32 predicted classes (numpy).
    """
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
    if leave_one_out:
        if test_feats is not None and test_feats is not train_feats:
            if np.shape(test_feats) != np.shape(train_feats):
                raise ValueError("leave_one_out=True: test_feats must be None or the bank itself")
        test_feats = None
    elif test_feats is None:
        raise ValueError("test_feats is None; pass leave_one_out=True to classify the bank")
    nq, loo, k = _setup(train_feats, test_feats, k, split)
    bank_labels = check_labels(train_labels, train_feats.shape[0], "train_labels")
    lo, hi = int(bank_labels.min()), int(bank_labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{lo}, {hi}]")
    if resolve_backend(backend) == "numpy":
        preds = []
        for _, top_sims, top_idx in _host_top_k(train_feats, test_feats, k, chunk_size):
            weights = _vote_weights(top_sims.astype(np.float64), temperature, vote, np)
            rows = np.repeat(np.arange(len(top_idx)), k)
            flat = rows * num_classes + bank_labels[top_idx].ravel()
            votes = np.bincount(flat, weights.ravel(), minlength=len(top_idx) * num_classes)
            preds.append(np.argmax(votes.reshape(-1, num_classes), axis=1))
        return np.concatenate(preds).astype(np.int32)
    queries, bank, chunk, n_chunks = _device_setup(train_feats, test_feats, chunk_size)
    kernel = functools.partial(
        _knn_chunk,
        chunk=chunk,
        k=k,
        exclude_self=loo,
        num_classes=int(num_classes),
        temperature=float(temperature),
        vote=vote,
    )
    labels = jnp.asarray(bank_labels, jnp.int32)
    parts = [kernel(queries, jnp.int32(i * chunk), bank, labels) for i in range(n_chunks)]
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
    **kwargs,
) -> float:
    """Top-1 accuracy of `knn_classify` against `test_labels [Nq]` (a fraction in [0, 1]).

    With `leave_one_out=True`, `test_feats`/`test_labels` may be None: the bank's
    own labels are the targets. `kwargs` (vote, backend, split) go to `knn_classify`.
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
        **kwargs,
    )
    targets = np.asarray(train_labels if test_labels is None and leave_one_out else test_labels)
    if targets.shape != preds.shape:
        raise ValueError(f"test_labels must have shape {preds.shape}, got {targets.shape}")
    return float(np.mean(preds == targets))
