"""DDT's fit (spec leadpp.md 4.1): the mean and first principal direction of every
descriptor (every position of every feature map) of the fitting set.

The scatter matrix is accumulated on the device batch by batch (`add_rows`, Chan et al.'s
pairwise update: each batch is centred on its own mean, so float32 loses nothing to the
cancellation of E[xx^T] - mu mu^T); only the final C x C eigen-decomposition runs on the
host, in float64 (`principal_direction`). The first eigenvector of the covariance is
scikit-learn's `PCA(1).components_[0]` up to its sign, fixed by `sign_rule`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PCA_SIGNS = ("max_abs", "border")


class Scatter(NamedTuple):
    """Running moments of the descriptors seen so far (device arrays)."""

    count: jax.Array  # int32 [], rows
    mean: jax.Array  # float32 [C]
    m2: jax.Array  # float32 [C, C]: sum over rows of (x - mean)(x - mean)^T


def empty_scatter(dim: int) -> Scatter:
    return Scatter(
        jnp.zeros((), jnp.int32), jnp.zeros((dim,), jnp.float32), jnp.zeros((dim, dim), jnp.float32)
    )


def add_rows(s: Scatter, rows: jax.Array, keep: jax.Array) -> Scatter:
    """`s` with the rows `rows` [n, C] where `keep` bool [n] (padding rows left out)."""
    rows = rows.astype(jnp.float32)
    w = keep.astype(jnp.float32)[:, None]
    nb = jnp.sum(keep.astype(jnp.int32))
    nb_f = nb.astype(jnp.float32)
    mb = jnp.sum(rows * w, axis=0) / jnp.maximum(nb_f, 1.0)
    centred = (rows - mb) * w
    sb = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST)
    n = s.count + nb
    na_f, n_f = s.count.astype(jnp.float32), jnp.maximum(n.astype(jnp.float32), 1.0)
    delta = mb - s.mean
    mean = s.mean + delta * (nb_f / n_f)
    m2 = s.m2 + sb + jnp.outer(delta, delta) * (na_f * nb_f / n_f)
    return Scatter(n, mean, m2)


def sign_rule(v: np.ndarray) -> np.ndarray:
    """`v` with its largest-|entry| made positive (the first such entry on a tie):
    scikit-learn >= 1.5's PCA sign (`svd_flip(u_based_decision=False)`)."""
    v = np.asarray(v)
    return v if v[np.argmax(np.abs(v))] >= 0 else -v


def principal_direction(s: Scatter) -> tuple[np.ndarray, np.ndarray, float]:
    """`(mean float64 [C], v float64 [C] unit, explained variance)` of the moments `s`:
    v is the covariance's top eigenvector under `sign_rule`."""
    n = int(s.count)
    if n < 2:
        raise ValueError(f"DDT fit: {n} descriptor(s); the PCA needs at least 2")
    cov = np.asarray(s.m2, np.float64) / n
    cov = 0.5 * (cov + cov.T)
    values, vectors = np.linalg.eigh(cov)
    return np.asarray(s.mean, np.float64), sign_rule(vectors[:, -1]), float(values[-1])


def border_share(maps: np.ndarray) -> float:
    """The spec's sign check (4.1): over the maps [N, h, w] with a positive cell, the mean
    share of their positive cells that lie on the one-cell border ring. Above 0.5 the
    positive side is mostly background and `v` should be flipped."""
    positive = np.asarray(maps) > 0
    ring = np.ones(positive.shape[1:], bool)
    ring[1:-1, 1:-1] = False
    counts = positive.sum(axis=(1, 2))
    some = counts > 0
    if not some.any():
        return 0.0
    on_ring = (positive & ring).sum(axis=(1, 2))
    return float(np.mean(on_ring[some] / counts[some]))
