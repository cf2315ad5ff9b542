"""The contract between a method (an objective) and the generic trainer.

The trainer owns the loop, sharding, optimiser and checkpoints; a method owns its
modules, its loss and its extra state. One step of training is

    method_state = method.before_step(params, method_state, step)       # e.g. EMA
    loss, aux    = method.loss(params, batch_stats, method_state, views, batch, rng)
    params       = optimiser update from d loss / d params
    method_state = method.after_step(method_state, aux)                  # e.g. enqueue

All methods keep the backbone under `params['backbone']` / `batch_stats['backbone']`
so weight import, feature extraction and export work the same for every method.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from fgjax.models.factory import backbone_from_config

PyTree = Any


class LossAux(NamedTuple):
    """What `Method.loss` returns beside the scalar loss."""

    batch_stats: PyTree  # the online network's updated BatchNorm statistics
    metrics: dict[str, jax.Array]  # scalars, averaged over the global batch
    state_update: PyTree  # whatever `after_step` needs (keys to enqueue, target stats)


class Method(abc.ABC):
    """Base class: subclasses define `num_views` and the abstract methods."""

    num_views: int = 2

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, total_steps: int):
        self.config = config
        self.num_classes = num_classes
        self.total_steps = total_steps

    @abc.abstractmethod
    def init_variables(self, rng: jax.Array, image_shape: tuple[int, ...]) -> tuple[PyTree, PyTree]:
        """Online `(params, batch_stats)` for images of `image_shape` = [B, H, W, 3]."""

    def init_state(self, params: PyTree, batch_stats: PyTree, rng: jax.Array) -> PyTree:
        """Extra state (target network, queue), built after pretrained weights are loaded."""
        return {}

    @abc.abstractmethod
    def loss(
        self,
        params: PyTree,
        batch_stats: PyTree,
        state: PyTree,
        views: list[jax.Array],
        batch: dict[str, jax.Array],
        rng: jax.Array,
    ) -> tuple[jax.Array, LossAux]:
        """Scalar loss to minimise over `params`; `views[i]` is [B, H, W, 3] float."""

    def before_step(self, params: PyTree, state: PyTree, step: jax.Array) -> PyTree:
        return state

    def after_step(self, state: PyTree, state_update: PyTree) -> PyTree:
        return state

    def backbone(self):
        """The backbone module in inference form (used by evaluation)."""
        return backbone_from_config(self.config.model)

    def embed(self, params: PyTree, batch_stats: PyTree, images: jax.Array) -> jax.Array:
        """Eval-mode pooled backbone features `[B, D]` (float32) of normalised images."""
        variables = {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}
        return self.backbone().apply(variables, images, train=False)["pooled"]


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """PyTorch `F.normalize`: x / max(||x||, eps)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def ema(target: PyTree, online: PyTree, decay: jax.Array | float) -> PyTree:
    """`target <- decay * target + (1 - decay) * online`, leaf by leaf."""
    return jax.tree.map(lambda t, o: decay * t + (1.0 - decay) * o, target, online)
