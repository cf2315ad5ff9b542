"""The fast linear probe: L2-regularised multinomial logistic regression on frozen, cached
features, fitted to convergence with L-BFGS (optax), weight decay chosen on a validation
split carved from the training features.

Protocol (the SimCLR / Kornblith et al. "L-BFGS on frozen features" evaluation):
  1. Preprocess: 'standardize' (default; per-dimension mean and standard deviation of the
     training features, constant dimensions left at 0), 'l2' (each row to unit norm) or
     'none'. Test features use the training statistics.
  2. Hold out a stratified `val_fraction` of every class of the training features
     (deterministic in `seed`; classes with one example stay in the fit part).
  3. For each weight decay of `weight_decays`, strongest first, each fit warm-started from
     the previous one (a regularisation path), minimise over W [D, C], b [C]

         mean_i CE(x_i W + b, y_i) + wd / 2 * ||W||^2      (the bias is not decayed)

     on the fit part; keep the weight decay with the best validation top-1 (ties: the
     stronger decay).
  4. Refit on all training features with that weight decay; report top-1 / top-5 on the
     test features (`fgjax.eval.classification`, ties to the lower class index).

scikit-learn's `LogisticRegression(C=C)` (multinomial, lbfgs, intercept not penalised)
minimises `0.5 ||W||^2 + C sum_i CE_i`, i.e. N*C times the objective above with
`wd = 1 / (N * C)`: the same solution for `C = 1 / (N * wd)`, N the number of fitted rows.

Memory: the features, one `[N, C]` logit block and L-BFGS's 10 pairs of `[D, C]` vectors
(10k x 2048 features with 200 classes: ~80 MB + 8 MB + 33 MB). All fits share one compiled
solver: rows are excluded with 0/1 weights instead of slicing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from fgjax.eval.classification import classification_metrics

DEFAULT_WEIGHT_DECAYS = tuple(float(w) for w in np.logspace(-6, -1, 11))  # half decades


class LinearProbeResult(NamedTuple):
    top1: float  # test accuracy, fraction in [0, 1]
    top5: float
    weight_decay: float  # the chosen one
    val_top1: dict[float, float]  # validation top-1 of every weight decay tried
    test_logits: np.ndarray  # [N_test, C] float32, for further metrics
    loss: float  # the objective at the end of the final fit
    iterations: int  # L-BFGS iterations of the final fit
    converged: bool  # the final fit met the tolerance before max_iter


def preprocess(
    train: np.ndarray, test: np.ndarray, mode: str = "standardize"
) -> tuple[np.ndarray, np.ndarray]:
    """`(train [N, D], test [M, D])` float32 after `mode` (see the module docstring)."""
    train, test = np.asarray(train, np.float32), np.asarray(test, np.float32)
    if mode == "standardize":
        mean = train.mean(axis=0, dtype=np.float64)
        std = train.std(axis=0, dtype=np.float64)
        scale = np.where(std > 1e-12, 1.0 / np.maximum(std, 1e-12), 0.0)  # constant dims -> 0
        return ((train - mean) * scale).astype(np.float32), ((test - mean) * scale).astype(
            np.float32
        )
    if mode == "l2":

        def unit(x):
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        return unit(train), unit(test)
    if mode == "none":
        return train, test
    raise ValueError(f"preprocess must be 'standardize', 'l2' or 'none', got {mode!r}")


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean `[N]` validation mask: `round(fraction * n_c)` random rows of every class c
    (at most `n_c - 1`, so each class keeps a row to fit), deterministic in `seed`."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = min(int(round(fraction * len(rows))), len(rows) - 1)
        val[rng.permutation(rows)[:take]] = True
    return val


def objective(
    params: dict[str, jax.Array],
    x: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    wd: jax.Array,
) -> jax.Array:
    """Weighted mean cross-entropy of `x [N, D] @ W + b` plus `wd / 2 ||W||^2` (traced)."""
    logits = jnp.dot(x, params["W"], precision=jax.lax.Precision.HIGHEST) + params["b"]
    true = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    ce = jax.nn.logsumexp(logits, axis=1) - true
    return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * wd * jnp.sum(params["W"] ** 2)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit(params, x, labels, weights, wd, *, max_iter: int, tol: float):
    """L-BFGS from `params` until max |gradient| <= tol or `max_iter` iterations.
    Returns `(params, loss, iterations, max |gradient|)`."""
    fun = functools.partial(objective, x=x, labels=labels, weights=weights, wd=wd)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def grad_max(state):
        return otu.tree_max(jax.tree.map(jnp.abs, otu.tree_get(state, "grad")))

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        return (count == 0) | ((count < max_iter) & (grad_max(state) > tol))

    params, state = jax.lax.while_loop(keep_going, step, (params, solver.init(params)))
    return params, otu.tree_get(state, "value"), otu.tree_get(state, "count"), grad_max(state)


@jax.jit
def _logits(params, x):
    return jnp.dot(x, params["W"], precision=jax.lax.Precision.HIGHEST) + params["b"]


def fit_logistic(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    weight_decay: float,
    weights: np.ndarray | None = None,
    init: dict[str, jax.Array] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[dict[str, jax.Array], float, int, bool]:
    """Minimise `objective` over `{'W': [D, C], 'b': [C]}` (zeros, or `init`) on rows with
    `weights` 1 (all by default). Returns `(params, loss, iterations, converged)`."""
    x = jnp.asarray(x, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    if weights is None:
        weights = np.ones(x.shape[0], np.float32)
    if init is None:
        init = {
            "W": jnp.zeros((x.shape[1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32),
        }
    params, loss, count, gmax = _fit(
        init,
        x,
        labels,
        jnp.asarray(weights, jnp.float32),
        jnp.float32(weight_decay),
        max_iter=int(max_iter),
        tol=float(tol),
    )
    return params, float(loss), int(count), bool(float(gmax) <= tol)


def _check_features(feats: np.ndarray, labels: np.ndarray, split: str) -> None:
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"{split}: features must be [N, D] with labels [N], got {feats.shape} and "
            f"{labels.shape}"
        )
    bad = ~np.all(np.isfinite(feats), axis=1)
    if bad.any():
        raise ValueError(f"{split} features: {int(bad.sum())} of {len(bad)} rows are not finite")


def linear_probe(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    preprocessing: str = "standardize",
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> LinearProbeResult:
    """The fast linear probe of the module docstring.

    Args:
      train_feats, train_labels: `[N, D]` features and `[N]` labels the classifier fits.
      test_feats, test_labels: `[M, D]`, `[M]`, scored once at the end.
      num_classes: C (default: 1 + the largest label of either split).
      weight_decays: the grid; a single value skips validation.
      val_fraction: stratified share of the training rows used to choose the weight decay.
      preprocessing: 'standardize' | 'l2' | 'none'.
      seed: the validation split.
      max_iter, tol: L-BFGS stops at max |gradient| <= tol or after max_iter iterations.
    """
    train_feats, test_feats = np.asarray(train_feats), np.asarray(test_feats)
    train_labels = np.asarray(train_labels, np.int32)
    test_labels = np.asarray(test_labels, np.int32)
    _check_features(train_feats, train_labels, "train")
    _check_features(test_feats, test_labels, "test")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    grid = sorted({float(w) for w in weight_decays}, reverse=True)  # strongest first
    if not grid or min(grid) < 0:
        raise ValueError(f"weight_decays must be non-negative and non-empty, got {weight_decays}")
    x, x_test = preprocess(train_feats, test_feats, preprocessing)
    fit = functools.partial(fit_logistic, x, train_labels, num_classes, max_iter=max_iter, tol=tol)

    val_top1: dict[float, float] = {}
    init = None
    if len(grid) > 1:
        val = stratified_split(train_labels, val_fraction, seed)
        if not val.any():
            raise ValueError("the validation split is empty: too few training rows per class")
        best, best_params = None, None
        for wd in grid:
            init, *_ = fit(wd, weights=(~val).astype(np.float32), init=init)
            val_logits = np.asarray(_logits(init, jnp.asarray(x[val])))
            val_top1[wd] = classification_metrics(val_logits, train_labels[val], ks=(1,))["top1"]
            if best is None or val_top1[wd] > val_top1[best]:
                best, best_params = wd, init
        init = best_params
    else:
        best = grid[0]
    params, loss, count, converged = fit(best, init=init)
    logits = np.asarray(_logits(params, jnp.asarray(x_test)))
    metrics = classification_metrics(logits, test_labels, ks=(1, 5))
    return LinearProbeResult(
        top1=metrics["top1"],
        top5=metrics["top5"],
        weight_decay=best,
        val_top1=val_top1,
        test_logits=logits,
        loss=loss,
        iterations=count,
        converged=converged,
    )
