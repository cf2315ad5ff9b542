"""Linear classification on a frozen backbone: the papers' linear-probe protocol.

MoCo v2's `main_lincls.py` (and LCR's MoCo path, ../shared/methods/lcr.md section 6.1):
the pretrained backbone (`config.model.init_from`) is frozen and runs in eval mode
(BatchNorm uses its running statistics, which never change); only a linear classifier
on the pooled feature is trained, with N(0, 0.01) weights and zero bias, by SGD on
augmented images (RandomResizedCrop (0.08, 1) + flip). `configs/lincls.py` is the recipe
(lr 30, momentum 0.9, no weight decay, batch 256, 100 epochs, lr x0.1 at 60 and 80).

How the backbone stays frozen: it lives in `params['backbone']` like every method's (so
`init_from` loads it, `embed` and checkpoints read it), its features pass through
`stop_gradient` (no backward pass through it), and the recipe sets
`config.optim.freeze = ('backbone',)` so the optimiser gives it a zero update and keeps
no state for it (weight decay or momentum cannot move it either); the method refuses a
config without that. The `frozen` input of the contract is not used: it is not visible
to `embed` or to evaluators, and would need its own copy of the `init_from` loading.

`evaluators()` adds 'lincls/top1', 'lincls/top5' and 'lincls/per_class_accuracy' of the
classifier on the test split (Resize + CenterCrop, `fgjax.eval.classification`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fgjax.core.objectives import accuracy, cross_entropy
from fgjax.data.augment import no_augment_spec
from fgjax.eval.classification import classification_metrics
from fgjax.methods.base import LossAux, Method, register
from fgjax.models.encoder import Encoder
from fgjax.models.factory import backbone_from_config


@register
class LinCls(Method):
    name = "lincls"
    view_names = ("view1",)

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        # normalize: L2-normalise the feature before the classifier (LCR classifies its
        # unit-norm descriptor; MoCo the raw pooled feature).
        return ml_collections.ConfigDict(dict(normalize=False, init_std=0.01))

    @classmethod
    def default_views(cls):
        # RandomResizedCrop (0.08, 1) + flip, no colour augmentation (MoCo's lincls).
        return {"view1": dict(crop_scale=(0.08, 1.0), photometric=no_augment_spec())}

    def __init__(self, config, run):
        super().__init__(config, run)
        if "backbone" not in tuple(config.optim.freeze):
            raise ValueError(
                "config.method='lincls' trains only the classifier: set "
                "config.optim.freeze=('backbone',) (configs/lincls.py does)"
            )
        # The Encoder gives the params the standard layout {'backbone', 'classifier'}.
        self.net = Encoder(
            backbone=backbone_from_config(config.model),
            classifier=nn.Dense(
                run.num_classes,
                kernel_init=nn.initializers.normal(self.section.init_std),
                bias_init=nn.initializers.zeros,
                name="classifier",
            ),
        )
        # One function object, so the feature extractor compiles it once.
        self._eval_logits = lambda state, images: self.logits(
            state.params, state.model_state, images
        )

    def logits(self, params: Any, model_state: Any, images: jax.Array) -> jax.Array:
        """`[B, classes]` float32 logits of normalised images; the backbone in eval mode and
        outside the gradient."""
        features = jax.lax.stop_gradient(self.embed(params, model_state, images))
        features = features.astype(jnp.float32)
        if self.section.normalize:
            features = features / jnp.maximum(
                jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12
            )
        return self.net.classifier.apply({"params": params["classifier"]}, features)

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        logits = self.logits(params, model_state, views["view1"])
        labels = batch["label"]
        loss = cross_entropy(logits, labels)
        metrics = {"loss": loss, "accuracy": accuracy(logits, labels)}
        return loss, LossAux(model_state, metrics, {})  # BN statistics unchanged

    def evaluators(self):
        return {"lincls": self._evaluate}

    def _evaluate(self, state: Any, tools: Any) -> dict[str, float]:
        train, test = tools.sources["train"], tools.sources["test"]
        if list(train.class_names) != list(test.class_names):
            raise ValueError(
                f"lincls: the test split ({self.config.data.test_split}) must have the "
                f"classes of the train split ({self.config.data.train_split}) in the same "
                f"order; they differ ({test.num_classes} vs {train.num_classes} classes)"
            )
        out = tools.extract("test", self._eval_logits, state)
        metrics = classification_metrics(out.features, out.labels, ks=(1, 5))
        return {k: metrics[k] for k in ("top1", "top5", "per_class_accuracy")}
