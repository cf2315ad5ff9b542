"""Reusable objectives and parameter arithmetic: pure functions that methods compose.

Everything here works on float32 arrays and is differentiable where it makes sense;
targets that must not receive gradients are stopped inside the function that says so.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """PyTorch `F.normalize`: x / max(||x||, eps), with a finite gradient at x = 0.

    max(sqrt(s), eps) is written sqrt(max(s, eps^2)): the same value, but the square root
    is never differentiated at 0 (sqrt'(0) = inf times ds/dx = 0 made NaN for all-zero
    features)."""
    squares = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squares, jnp.square(jnp.asarray(eps, squares.dtype))))


def _picked(x: jax.Array, axis: int | tuple[int, ...] | None, keepdims: bool, pick) -> jax.Array:
    """The element `pick` (jnp.argmax / jnp.argmin) chooses along `axis`, read from `x`."""
    axes = tuple(range(x.ndim)) if axis is None else tuple(np.atleast_1d(axis) % x.ndim)
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = jnp.transpose(x, kept + list(axes))
    flat = moved.reshape(*moved.shape[: len(kept)], -1)  # [kept..., reduced]
    index = pick(flat, axis=-1, keepdims=True)
    value = jnp.take_along_axis(flat, index, axis=-1)[..., 0]
    if keepdims:
        value = jnp.expand_dims(value, axes)
    return value


def max_at_argmax(
    x: jax.Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
) -> jax.Array:
    """`jnp.max(x, axis, keepdims=keepdims)`, differentiated through the one element argmax
    picks (PyTorch's `max(dim)` rule; the first on ties).

    Why not `jnp.max`: JAX's gradient of a max divides by the count of elements equal to
    the result, and XLA may recompute the operand in the backward pass with other
    rounding (it does at XLA CPU optimisation level 0 in LCR's branch), so the count can
    be 0 and the gradient 0/0 = NaN while the loss is finite. Reading the value at an
    index leaves nothing to divide."""
    return _picked(x, axis, keepdims, jnp.argmax)


def min_at_argmin(
    x: jax.Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
) -> jax.Array:
    """`jnp.min`, differentiated through the one element argmin picks (see `max_at_argmax`)."""
    return _picked(x, axis, keepdims, jnp.argmin)


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
