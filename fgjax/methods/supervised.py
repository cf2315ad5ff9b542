"""Supervised classification: backbone + linear classifier, cross-entropy on fine labels."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fgjax.methods.base import LossAux, Method
from fgjax.models.factory import backbone_from_config


class Classifier(nn.Module):
    """`[B, H, W, 3] -> [B, num_classes]` float32 logits."""

    backbone: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pooled = self.backbone(x, train)["pooled"]
        return nn.Dense(self.num_classes, name="classifier")(pooled)


class Supervised(Method):
    num_views = 1

    def __init__(self, config, num_classes, total_steps):
        super().__init__(config, num_classes, total_steps)
        self.net = Classifier(backbone=backbone_from_config(config.model), num_classes=num_classes)

    def init_variables(self, rng, image_shape):
        variables = self.net.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)
        return variables["params"], variables["batch_stats"]

    def loss(self, params, batch_stats, state, views, batch, rng):
        logits, updates = self.net.apply(
            {"params": params, "batch_stats": batch_stats},
            views[0],
            train=True,
            mutable=["batch_stats"],
        )
        labels = batch["label"]
        targets = optax.smooth_labels(
            jax.nn.one_hot(labels, self.num_classes), self.config.supervised.label_smoothing
        )
        loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, LossAux(updates["batch_stats"], {"loss": loss, "accuracy": accuracy}, {})
