"""Supervised classification: backbone + linear classifier, cross-entropy on fine labels."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from fgjax.core.objectives import accuracy, cross_entropy
from fgjax.data.augment import no_augment_spec
from fgjax.methods.base import LossAux, Method, apply_train, register
from fgjax.models.encoder import Encoder
from fgjax.models.factory import backbone_from_config


@register
class Supervised(Method):
    name = "supervised"
    view_names = ("view1",)
    partial_batches_ok = True

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(label_smoothing=0.0))

    @classmethod
    def default_views(cls):
        # RandomResizedCrop + flip, no colour augmentation: the standard FGVR recipe.
        return {"view1": dict(crop_scale=(0.08, 1.0), photometric=no_augment_spec())}

    def __init__(self, config, run):
        super().__init__(config, run)
        self.net = Encoder(
            backbone=backbone_from_config(config.model),
            classifier=nn.Dense(run.num_classes, name="classifier"),
        )

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        out, model_state = apply_train(
            self.net, params, model_state, views["view1"], rngs={"dropout": rng}
        )
        labels = batch["label"]
        loss = cross_entropy(out["logits"], labels, self.section.label_smoothing)
        metrics = {"loss": loss, "accuracy": accuracy(out["logits"], labels)}
        return loss, LossAux(model_state, metrics, {})
