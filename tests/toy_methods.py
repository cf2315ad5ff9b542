"""Toy methods, each a few dozen lines, that prove the method contract carries what the
five published methods need. Registered on import (tests and recipe files import this).

- `toy_teacher`: four views (two of them from a parallel image root, as LEAD++'s DDT
  crops) distilled towards a frozen "teacher" loaded from an .npz file: the teacher is
  read by the step, never trained and never checkpointed.
- `toy_cluster`: at the start of every epoch, embeds the training split, clusters it
  (k-means, deterministic) and writes per-example targets into the method state; the
  loss classifies each example into its cluster (BuCSFR's per-epoch pseudo-labels).
- `toy_nan`: the supervised objective, multiplied by NaN at the steps listed in
  `config.toy_nan.bad_steps` (the non-finite guard's test).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fgjax.core.objectives import cross_entropy, l2_normalize
from fgjax.methods import EpochUpdate, LossAux, Method, apply_train, register
from fgjax.methods.supervised import Supervised
from fgjax.models.encoder import Encoder
from fgjax.models.factory import backbone_from_config
from fgjax.models.heads import MLP


def teacher_targets(teacher: jax.Array, images: jax.Array) -> jax.Array:
    """The frozen teacher: unit rows of `mean-pooled pixels [B, 3] @ W [3, D]`."""
    return l2_normalize(jnp.mean(images, axis=(1, 2)) @ teacher)


@register
class ToyTeacher(Method):
    name = "toy_teacher"
    view_names = ("global1", "global2", "ddt1", "ddt2")

    @classmethod
    def config_section(cls):
        return ml_collections.ConfigDict(dict(teacher_path="", dim=4))

    @classmethod
    def default_views(cls):
        return {name: {} for name in cls.view_names}

    def __init__(self, config, run):
        super().__init__(config, run)
        self.net = Encoder(
            backbone=backbone_from_config(config.model), projector=MLP((8, self.section.dim))
        )

    def init_frozen(self):
        with np.load(self.section.teacher_path) as f:
            return {"teacher": jnp.asarray(f["W"])}

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        total = 0.0
        for name in self.view_names:
            out, model_state = apply_train(self.net, params, model_state, views[name])
            target = teacher_targets(frozen["teacher"], views[name])
            total += jnp.mean(jnp.sum((l2_normalize(out["proj"]) - target) ** 2, axis=-1))
        loss = total / len(self.view_names)
        return loss, LossAux(model_state, {"loss": loss}, {})


def kmeans(features: np.ndarray, k: int, seed: int, iterations: int = 10) -> np.ndarray:
    """Plain Lloyd's k-means on unit rows from a seeded choice of centres; labels [N]."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    centres = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    for _ in range(iterations):
        labels = np.argmax(x @ centres.T, axis=1)
        for c in range(k):
            if np.any(labels == c):
                centres[c] = x[labels == c].mean(0)
    return np.argmax(x @ centres.T, axis=1).astype(np.int32)


@register
class ToyCluster(Method):
    name = "toy_cluster"
    view_names = ("view1",)

    @classmethod
    def config_section(cls):
        return ml_collections.ConfigDict(dict(num_clusters=3))

    @classmethod
    def default_views(cls):
        return {"view1": {}}

    def __init__(self, config, run):
        super().__init__(config, run)
        self.net = Encoder(
            backbone=backbone_from_config(config.model),
            classifier=nn.Dense(self.section.num_clusters, name="classifier"),
        )

    def init_state(self, params, model_state, rng):
        n = self.run.num_train_examples
        return {"targets": jnp.zeros((n,), jnp.int32), "epochs_seen": jnp.zeros((), jnp.int32)}

    def on_epoch_start(self, epoch, state, tools):
        feats = tools.extract("train", self.embed_state, state).features
        targets = kmeans(feats, self.section.num_clusters, seed=epoch)
        state = {"targets": targets, "epochs_seen": np.asarray(epoch + 1, np.int32)}
        return EpochUpdate(state, {"cluster_sizes": np.bincount(targets, minlength=3)})

    def embed_state(self, state, images):
        return self.embed(state.params, state.model_state, images)

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        out, model_state = apply_train(self.net, params, model_state, views["view1"])
        targets = method_state["targets"][batch["index"]]
        loss = cross_entropy(out["logits"], targets)
        return loss, LossAux(model_state, {"loss": loss}, {})

    def evaluators(self):
        def cluster_sizes(state, tools):
            targets = np.asarray(state.method_state["targets"])
            return {"largest_cluster": float(np.bincount(targets).max() / len(targets))}

        return {"clusters": cluster_sizes}


@register
class ToyNaN(Supervised):
    name = "toy_nan"
    resumable_fields = ("bad_steps",)  # the tests' stand-in for data fixed before a resume

    @classmethod
    def config_section(cls):
        section = Supervised.config_section()
        section.bad_steps = (-1,)
        return section

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        loss, aux = super().loss(params, model_state, method_state, frozen, views, batch, ctx, rng)
        bad = jnp.any(ctx.step == jnp.asarray(self.section.bad_steps))
        return loss * jnp.where(bad, jnp.nan, 1.0), aux
