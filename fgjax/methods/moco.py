"""MoCo v2: InfoNCE against a momentum key encoder and a queue of past keys.

Views: 'view1' (queries, online encoder) and 'view2' (keys, momentum encoder).
Shuffling BN, device-count independent: BatchNorm statistics are computed in
`config.moco.bn_groups` groups of the global batch (contiguous for queries), and
the key batch is randomly permuted before the key encoder and un-permuted after,
so a key never shares BN statistics with its own query. With one group this is
plain single-GPU MoCo.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from fgjax.core.objectives import ema, info_nce, l2_normalize
from fgjax.methods.base import LossAux, Method, PyTree, apply_train, register
from fgjax.models.encoder import Encoder
from fgjax.models.factory import backbone_from_config, compute_dtype
from fgjax.models.heads import MLP


def enqueue(queue: jax.Array, ptr: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FIFO write: `(queue [K, ...] with rows [B, ...] written at rows ptr.., next pointer)`;
    K must be a multiple of B (checked where the queue is built)."""
    start = (ptr,) + (0,) * (queue.ndim - 1)
    queue = jax.lax.dynamic_update_slice(queue, rows.astype(queue.dtype), start)
    return queue, (ptr + rows.shape[0]) % queue.shape[0]


def unshuffled_keys(proj: jax.Array, perm: jax.Array) -> jax.Array:
    """Unit keys `[B, dim]` in the batch's order from projections of the batch `[perm]`."""
    return l2_normalize(jnp.zeros_like(proj).at[perm].set(proj))


@register
class MoCo(Method):
    name = "moco"
    view_names = ("view1", "view2")

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            dict(
                hidden_dim=2048,
                dim=128,
                queue_size=65536,
                momentum=0.999,
                temperature=0.2,
                # BatchNorm statistics in this many groups of the global batch (one per
                # "GPU" of the original recipe); keys are permuted across groups.
                bn_groups=8,
            )
        )

    def __init__(self, config, run):
        super().__init__(config, run)
        m = self.section
        if m.queue_size % run.batch_size:
            raise ValueError(
                f"config.moco.queue_size={m.queue_size} must be a multiple of "
                f"config.train.batch_size={run.batch_size}"
            )
        self.net = Encoder(
            backbone=backbone_from_config(config.model, bn_groups=m.bn_groups),
            projector=MLP((m.hidden_dim, m.dim), dtype=compute_dtype(config.model.dtype)),
        )

    def init_state(self, params, model_state, rng):
        queue = l2_normalize(jax.random.normal(rng, (self.section.queue_size, self.section.dim)))
        return {
            "key_params": params,
            "key_model_state": model_state,
            "queue": queue,
            "queue_ptr": jnp.zeros((), jnp.int32),
        }

    def key_permutation(self, method_state: PyTree, rng: jax.Array, size: int) -> jax.Array:
        """The shuffle-BN permutation `[size]` of the key batch (the original's `randperm`;
        a parity test replaces it with the original run's)."""
        return jax.random.permutation(rng, size)

    def shuffled_key_forward(self, method_state: PyTree, images: jax.Array, rng: jax.Array):
        """The key encoder's train-mode outputs on the shuffled batch (in shuffled order),
        the permutation `[B]` and the key encoder's new state."""
        perm = self.key_permutation(method_state, rng, images.shape[0])
        out, key_model_state = apply_train(
            self.net, method_state["key_params"], method_state["key_model_state"], images[perm]
        )
        return out, perm, key_model_state

    def key_embeddings(self, method_state: PyTree, images: jax.Array, rng: jax.Array):
        """Unit keys `[B, dim]` from the key encoder on a shuffled batch, and its new state."""
        out, perm, key_model_state = self.shuffled_key_forward(method_state, images, rng)
        return unshuffled_keys(out["proj"], perm), key_model_state

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        out, model_state = apply_train(self.net, params, model_state, views["view1"])
        q = l2_normalize(out["proj"])
        k, key_model_state = self.key_embeddings(method_state, views["view2"], rng)
        k = jax.lax.stop_gradient(k)
        loss, logits = info_nce(q, k, method_state["queue"], self.section.temperature)
        metrics = {"loss": loss, "contrastive_acc": jnp.mean(jnp.argmax(logits, -1) == 0)}
        return loss, LossAux(model_state, metrics, {"keys": k, "key_model_state": key_model_state})

    def before_step(self, params, method_state, ctx):
        # MoCo updates the key encoder before the key forward of the step.
        key_params = ema(method_state["key_params"], params, self.section.momentum)
        return {**method_state, "key_params": key_params}

    def after_step(self, method_state, state_update, ctx):
        queue, ptr = enqueue(method_state["queue"], method_state["queue_ptr"], state_update["keys"])
        return {
            **method_state,
            "key_model_state": state_update["key_model_state"],
            "queue": queue,
            "queue_ptr": ptr,
        }
