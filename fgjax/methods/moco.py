"""MoCo v2: InfoNCE against a momentum key encoder and a queue of past keys.

Shuffling BN, device-count independent: BatchNorm statistics are computed in
`config.moco.bn_groups` groups of the global batch (contiguous for queries), and
the key batch is randomly permuted before the key encoder and un-permuted after,
so a key never shares BN statistics with its own query. With one group this is
plain single-GPU MoCo.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgjax.methods.base import LossAux, Method, PyTree, ema, l2_normalize
from fgjax.models.factory import backbone_from_config, compute_dtype
from fgjax.models.heads import MLP


class EncoderWithHead(nn.Module):
    """Backbone -> pooled feature -> MLP head. `[B, H, W, 3] -> [B, dim]`."""

    backbone: nn.Module
    head: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.head(self.backbone(x, train)["pooled"], train)


def info_nce(q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float):
    """Loss and logits for unit queries `q` [B, D], positives `k` [B, D], negatives `queue` [K, D].

    Returns `(mean cross-entropy with the positive at index 0, logits [B, 1 + K])`.
    """
    positive = jnp.sum(q * k, axis=-1, keepdims=True)
    negatives = q @ queue.T
    logits = jnp.concatenate([positive, negatives], axis=1) / temperature
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
    return loss, logits


class MoCo(Method):
    num_views = 2

    def __init__(self, config, num_classes, total_steps):
        super().__init__(config, num_classes, total_steps)
        m = config.moco
        if m.queue_size % config.train.batch_size:
            raise ValueError(
                f"config.moco.queue_size={m.queue_size} must be a multiple of "
                f"config.train.batch_size={config.train.batch_size}"
            )
        self.net = EncoderWithHead(
            backbone=backbone_from_config(config.model, bn_groups=m.bn_groups),
            head=MLP((m.hidden_dim, m.dim), dtype=compute_dtype(config.model.dtype)),
        )

    def init_variables(self, rng, image_shape):
        variables = self.net.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)
        return variables["params"], variables["batch_stats"]

    def init_state(self, params, batch_stats, rng):
        queue = l2_normalize(
            jax.random.normal(rng, (self.config.moco.queue_size, self.config.moco.dim))
        )
        return {
            "key_params": params,
            "key_batch_stats": batch_stats,
            "queue": queue,
            "queue_ptr": jnp.zeros((), jnp.int32),
        }

    def key_embeddings(self, state: PyTree, images: jax.Array, rng: jax.Array):
        """Unit keys `[B, dim]` from the key encoder on a shuffled batch, and its new BN stats."""
        perm = jax.random.permutation(rng, images.shape[0])
        variables = {"params": state["key_params"], "batch_stats": state["key_batch_stats"]}
        out, updates = self.net.apply(variables, images[perm], train=True, mutable=["batch_stats"])
        unshuffled = jnp.zeros_like(out).at[perm].set(out)
        return l2_normalize(unshuffled), updates["batch_stats"]

    def loss(self, params, batch_stats, state, views, batch, rng):
        variables = {"params": params, "batch_stats": batch_stats}
        q, updates = self.net.apply(variables, views[0], train=True, mutable=["batch_stats"])
        q = l2_normalize(q)
        k, key_stats = self.key_embeddings(state, views[1], rng)
        k = jax.lax.stop_gradient(k)
        loss, logits = info_nce(q, k, state["queue"], self.config.moco.temperature)
        metrics = {"loss": loss, "contrastive_acc": jnp.mean(jnp.argmax(logits, -1) == 0)}
        return loss, LossAux(
            updates["batch_stats"], metrics, {"keys": k, "key_batch_stats": key_stats}
        )

    def before_step(self, params, state, step):
        # MoCo updates the key encoder before the key forward of the step.
        return {**state, "key_params": ema(state["key_params"], params, self.config.moco.momentum)}

    def after_step(self, state, state_update):
        keys = state_update["keys"]
        ptr = state["queue_ptr"]
        queue = jax.lax.dynamic_update_slice(
            state["queue"], keys.astype(state["queue"].dtype), (ptr, 0)
        )
        return {
            **state,
            "key_batch_stats": state_update["key_batch_stats"],
            "queue": queue,
            "queue_ptr": (ptr + keys.shape[0]) % state["queue"].shape[0],
        }
