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

LCR's protocol (lcr.md 6.1) classifies its descriptor L2norm(mean_hw(a * A)) instead:
`config.lincls.feature='lcr'` adds the rationale branch as params['rationale'], loaded with
the backbone from the LCR training workdir given as `init_from` and frozen with it
(`configs/cub_lcr_lincls.py`).

`evaluators()` adds 'lincls/top1', 'lincls/top5' and 'lincls/per_class_accuracy' of the
classifier on the test split (Resize + CenterCrop, `fgjax.eval.classification`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fgjax.core.objectives import accuracy, cross_entropy, l2_normalize
from fgjax.data.augment import no_augment_spec
from fgjax.eval.classification import classification_metrics
from fgjax.methods.base import LossAux, Method, check_same_classes, register
from fgjax.methods.lcr.method import RationaleBranch, attention_maps, descriptor, with_branch
from fgjax.models.encoder import Encoder
from fgjax.models.factory import backbone_from_config

FEATURES = ("pooled", "lcr")


@register
class LinCls(Method):
    name = "lincls"
    view_names = ("view1",)

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            dict(
                # L2-normalise the feature before the classifier (LCR's descriptor is
                # already unit-norm; MoCo classifies the raw pooled feature).
                normalize=False,
                init_std=0.01,
                # 'pooled': the backbone's pooled feature; 'lcr': LCR's descriptor
                # L2norm(mean_hw(a * A)), its branch loaded with the backbone from an
                # lcr / lcr_byol training workdir (`init_from`).
                feature="pooled",
                lcr_maps=32,  # the branch's maps (config.lcr.proj_dim of that run)
                lcr_att_norm="batch_minmax",  # config.lcr.att_norm of that run
            )
        )

    @classmethod
    def default_views(cls):
        # RandomResizedCrop (0.08, 1) + flip, no colour augmentation (MoCo's lincls).
        return {"view1": dict(crop_scale=(0.08, 1.0), photometric=no_augment_spec())}

    def __init__(self, config, run):
        super().__init__(config, run)
        s = self.section
        if s.feature not in FEATURES:
            raise ValueError(f"config.lincls.feature={s.feature!r}: choose one of {FEATURES}")
        if s.feature == "lcr":
            self.pretrained_groups = ("backbone", "rationale")
            self.rationale = RationaleBranch(
                features=s.lcr_maps,
                bn_momentum=config.model.bn_momentum,
                bn_epsilon=config.model.bn_epsilon,
            )
        missing = [g for g in self.pretrained_groups if g not in tuple(config.optim.freeze)]
        if missing:
            raise ValueError(
                "config.method='lincls' trains only the classifier: set "
                f"config.optim.freeze={self.pretrained_groups} (configs/lincls.py freezes "
                "the backbone, configs/cub_lcr_lincls.py the rationale branch too)"
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

    def init_variables(self, rng, image_shape):
        params, model_state = super().init_variables(rng, image_shape)
        if self.section.feature != "lcr":
            return params, model_state
        branch_rng = jax.random.fold_in(rng, 1)
        return with_branch(
            self.rationale, self.backbone(), params, model_state, branch_rng, image_shape
        )

    def embed(self, params: Any, model_state: Any, images: jax.Array) -> jax.Array:
        """The probed feature `[B, D]` (eval mode): pooled, or LCR's descriptor."""
        if self.section.feature != "lcr":
            return super().embed(params, model_state, images)
        return descriptor(
            *attention_maps(
                self.rationale,
                self.backbone(),
                params,
                model_state,
                images,
                self.section.lcr_att_norm,
            )
        )

    def logits(self, params: Any, model_state: Any, images: jax.Array) -> jax.Array:
        """`[B, classes]` float32 logits of normalised images; the backbone in eval mode and
        outside the gradient."""
        features = jax.lax.stop_gradient(self.embed(params, model_state, images))
        features = features.astype(jnp.float32)
        if self.section.normalize:
            features = l2_normalize(features)
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
        check_same_classes(tools.sources, self.config, "lincls")
        out = tools.extract("test", self._eval_logits, state)
        metrics = classification_metrics(out.features, out.labels, ks=(1, 5))
        return {k: metrics[k] for k in ("top1", "top5", "per_class_accuracy")}
