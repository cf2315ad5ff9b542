"""P x K class-balanced batch order: every batch holds P distinct classes x K images each.

The identity sampler of the metric-learning baselines (CFGA spec 7.1; CFGA_CARS196_train's
`about_msloss/PK_sample.py`, itself from msight-tech/research-ms-loss), pure numpy:

* a pass shuffles each class's images and cuts them into chunks of K; a class with fewer
  than K images is first filled up to K by drawing its own images with replacement; a
  last chunk smaller than K is dropped for this pass (as the original does);
* each batch draws P distinct classes uniformly among those with chunks left, and takes
  each one's next chunk; a class leaves the pass when its chunks run out;
* a new pass starts when fewer than P classes have chunks left.

K = 1 gives P distinct classes with one image each (the CosFace / ArcFace loaders).
"""

from __future__ import annotations

import numpy as np


def _class_members(labels: np.ndarray) -> list[np.ndarray]:
    """int64 indices of each class present in `labels` [N], classes in increasing order."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    _, counts = np.unique(labels[order], return_counts=True)
    return np.split(order.astype(np.int64), np.cumsum(counts)[:-1])


def _pass_chunks(members: list[np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass: per class, int64 [num_chunks, k] of its shuffled (filled) images."""
    chunks = []
    for idxs in members:
        if len(idxs) < k:
            idxs = np.concatenate([idxs, rng.choice(idxs, k - len(idxs), replace=True)])
        idxs = rng.permutation(idxs)
        n = len(idxs) // k
        chunks.append(idxs[: n * k].reshape(n, k))
    return chunks


def pk_order(
    labels: np.ndarray, p: int, k: int, rng: np.random.Generator, num_batches: int
) -> np.ndarray:
    """int64 [num_batches * p * k]: indices into `labels` [N], batch after batch (each p
    classes x k images, a class's k images adjacent), drawn from `rng` (see the module
    docstring). Each call starts a fresh pass."""
    if p < 1 or k < 1:
        raise ValueError(f"P x K sampling needs P >= 1 and K >= 1, got P={p}, K={k}")
    members = _class_members(labels)
    if len(members) < p:
        raise ValueError(
            f"P x K sampling draws P={p} distinct classes per batch, but the labels hold "
            f"only {len(members)} classes"
        )
    out = np.empty((num_batches, p, k), np.int64)
    available: list[int] = []
    for b in range(num_batches):
        if len(available) < p:  # a new pass
            chunks = _pass_chunks(members, k, rng)
            taken = [0] * len(chunks)
            available = list(range(len(chunks)))
        picks = rng.choice(len(available), p, replace=False)
        selected = [available[i] for i in picks]
        for slot, c in enumerate(selected):
            out[b, slot] = chunks[c][taken[c]]
            taken[c] += 1
        done = {c for c in selected if taken[c] == len(chunks[c])}
        if done:
            available = [c for c in available if c not in done]
    return out.reshape(-1)
