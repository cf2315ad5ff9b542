"""Reusable objectives and parameter arithmetic: pure functions that methods compose.

Everything here works on float32 arrays and is differentiable where it makes sense;
targets that must not receive gradients are stopped inside the function that says so.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """PyTorch `F.normalize`: x / max(||x||, eps)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def ema(target: PyTree, online: PyTree, decay: jax.Array | float) -> PyTree:
    """`target <- decay * target + (1 - decay) * online`, leaf by leaf."""
    return jax.tree.map(lambda t, o: decay * t + (1.0 - decay) * o, target, online)


def info_nce(
    q: jax.Array, k: jax.Array, negatives: jax.Array, temperature: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """InfoNCE of unit queries `q` [B, D] against positives `k` [B, D] and shared
    negatives `negatives` [K, D] (MoCo's queue).

    Returns `(mean cross-entropy with the positive at index 0, logits [B, 1 + K])`.
    """
    positive = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = jnp.concatenate([positive, q @ negatives.T], axis=1) / temperature
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
    return loss, logits


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
    """`-mean_b cos(p_b, sg(z_b))` for `[B, D]` inputs: BYOL's regression loss in the
    [-1, 1] scale of LCR's code (the paper's `2 - 2 cos` summed over two views is
    `4 + 4 x` the symmetric mean of this)."""
    z = jax.lax.stop_gradient(z)
    return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of `logits` [B, C] against integer `labels` [B],
    with PyTorch's label smoothing (`eps / C` on every class, `1 - eps` added to the true)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Top-1 accuracy of `logits` [B, C] against `labels` [B]."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every leaf of `tree` is finite (the non-finite guard's test)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
