"""kNN classification (weighted: the InstDisc / MoCo kNN monitor; or majority vote) and
cosine kNN search.

Same backends and chunking as `fgjax.eval.retrieval`: `chunk_size` queries at a time, one
`[chunk, N_bank]` similarity block; 'jax' keeps it on the device (`jax.lax.top_k` there,
only `[chunk, k]` or `[len(ks), chunk]` back), 'numpy' (the CPU default) uses a BLAS matmul
and `fgjax.eval.ranking.top_k`. Several k (`knn_classify_multi`, BuCSFR's kNN@{1, ..., 200})
share one top-max(k) search; a single k is the special case.

Ties: among equally similar bank items the lower bank index is taken first; a
tie in the class vote goes to the lower class id (`argmax`; `torch.mode` in practice).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

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
    bank_feats: ArrayLike, query_feats: ArrayLike | None, ks: Sequence[int], split: str
) -> tuple[int, bool, tuple[int, ...]]:
    """Checks; returns (number of queries, leave-one-out flag, each k clamped to the bank)."""
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
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be positive, got {tuple(ks)}")
    return n_query, exclude_self, tuple(min(int(k), n_eff) for k in ks)


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
    nq, loo, (k,) = _setup(bank_feats, query_feats, (k,), split)
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


def _prefix_votes(top_sims, top_labels, ks, num_classes, temperature, vote, xp):
    """Predictions `[len(ks), b]` of the vote over the first k neighbours for each k of the
    ascending `ks`, from one top-max(ks) search (`top_sims`, `top_labels`: `[b, max(ks)]`,
    nearest first). The vote vector grows by the columns between consecutive ks, so each
    neighbour is added once whatever the number of ks; argmax: ties to the lower class."""
    weights = _vote_weights(top_sims, temperature, vote, xp)
    b = top_labels.shape[0]
    flat = top_labels + num_classes * xp.arange(b)[:, None]  # index into [b * C] votes
    votes = xp.zeros(b * num_classes, weights.dtype)
    preds, done = [], 0
    for k in ks:
        idx, w = flat[:, done:k].ravel(), weights[:, done:k].ravel()
        if xp is np:
            votes += np.bincount(idx, w, minlength=votes.size)
        else:  # a scatter-add, not a [b, k, C] one-hot
            votes = votes.at[idx].add(w)
        preds.append(xp.argmax(votes.reshape(b, num_classes), axis=1))
        done = k
    return xp.stack(preds).astype(xp.int32)


@functools.partial(
    jax.jit, static_argnames=("chunk", "ks", "exclude_self", "num_classes", "temperature", "vote")
)
def _knn_chunk(
    queries, start, bank, bank_labels, *, chunk, ks, exclude_self, num_classes, temperature, vote
):
    sims, _ = chunk_similarity(queries, start, chunk, bank, exclude_self)
    top_sims, top_idx = jax.lax.top_k(sims, ks[-1])  # [chunk, max k], descending
    return _prefix_votes(
        top_sims, bank_labels[top_idx], ks, num_classes, temperature, vote, jnp
    )  # [len(ks), chunk]


def knn_classify_multi(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike | None,
    num_classes: int,
    ks: Sequence[int],
    temperature: float = 0.1,
    chunk_size: int = 1024,
    leave_one_out: bool = False,
    *,
    vote: str = "weighted",
    backend: str = "auto",
    split: str = "",
) -> np.ndarray:
    """`knn_classify` at every k of `ks` from ONE top-max(ks) neighbour search: the vote
    over the first k neighbours for each k (BuCSFR's kNN@{1, 2, 5, ..., 200}).

    Args: as `knn_classify`, with `ks` (positive ints, any order, each clamped to the bank
      like `k`) in place of `k`.
    Returns:
      `[len(ks), Nq]` int32 predicted classes (numpy), row i for `ks[i]`.
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
    nq, loo, clamped = _setup(train_feats, test_feats, ks, split)
    bank_labels = check_labels(train_labels, train_feats.shape[0], "train_labels")
    lo, hi = int(bank_labels.min()), int(bank_labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{lo}, {hi}]")
    distinct = tuple(sorted(set(clamped)))  # ascending: the vote grows k by k
    if resolve_backend(backend) == "numpy":
        parts = [
            _prefix_votes(
                top_sims.astype(np.float64),
                bank_labels[top_idx],
                distinct,
                num_classes,
                temperature,
                vote,
                np,
            )
            for _, top_sims, top_idx in _host_top_k(
                train_feats, test_feats, distinct[-1], chunk_size
            )
        ]
    else:
        queries, bank, chunk, n_chunks = _device_setup(train_feats, test_feats, chunk_size)
        kernel = functools.partial(
            _knn_chunk,
            chunk=chunk,
            ks=distinct,
            exclude_self=loo,
            num_classes=int(num_classes),
            temperature=float(temperature),
            vote=vote,
        )
        labels = jnp.asarray(bank_labels, jnp.int32)
        parts = jax.device_get(
            [kernel(queries, jnp.int32(i * chunk), bank, labels) for i in range(n_chunks)]
        )
    preds = np.concatenate(parts, axis=1)[:, :nq]
    return preds[[distinct.index(k) for k in clamped]]


def knn_classify(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike | None,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    leave_one_out: bool = False,
    **kwargs,
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
      kwargs: `vote` ('weighted' or 'majority'), `backend` ('auto' | 'numpy' | 'jax', see
        `fgjax.eval.retrieval`), `split` (named in error messages).
    Returns:
      `[Nq]` int32 predicted classes (numpy).
    """
    return knn_classify_multi(
        train_feats,
        train_labels,
        test_feats,
        num_classes,
        (k,),
        temperature,
        chunk_size,
        leave_one_out,
        **kwargs,
    )[0]


def knn_top1_multi(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike | None,
    test_labels: ArrayLike | None,
    num_classes: int,
    ks: Sequence[int],
    temperature: float = 0.1,
    chunk_size: int = 1024,
    leave_one_out: bool = False,
    **kwargs,
) -> dict[int, float]:
    """`{k: top-1 accuracy}` of `knn_classify_multi` (one neighbour search) against
    `test_labels [Nq]`, fractions in [0, 1], keyed by the requested (unclamped) ks.

    With `leave_one_out=True`, `test_feats`/`test_labels` may be None: the bank's
    own labels are the targets. `kwargs` (vote, backend, split) go to `knn_classify_multi`.
    """
    preds = knn_classify_multi(
        train_feats,
        train_labels,
        test_feats,
        num_classes,
        ks,
        temperature,
        chunk_size,
        leave_one_out,
        **kwargs,
    )
    targets = np.asarray(train_labels if test_labels is None and leave_one_out else test_labels)
    if targets.shape != preds.shape[1:]:
        raise ValueError(f"test_labels must have shape {preds.shape[1:]}, got {targets.shape}")
    return {int(k): float(np.mean(p == targets)) for k, p in zip(ks, preds, strict=True)}


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
    return knn_top1_multi(
        train_feats,
        train_labels,
        test_feats,
        test_labels,
        num_classes,
        (k,),
        temperature,
        chunk_size,
        leave_one_out,
        **kwargs,
    )[int(k)]
