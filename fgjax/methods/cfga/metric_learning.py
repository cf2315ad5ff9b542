"""Deep-metric-learning baselines of CFGA (../shared/methods/cfga.md section 7): MS loss,
CosFace, ArcFace, Proxy-Anchor and DGPCRL on a ResNet, as methods of the common trainer.

Every method is the same network, `layer4 -> pooling -> [Linear] -> L2`, plus at most one
`[C, D]` parameter group of class vectors, and one loss of `fgjax.methods.cfga.metric_losses`:

| method | pooling of layer4 | Linear | class vectors | loss |
|---|---|---|---|---|
| ms_loss | GMP | 2048 -> 512, torch default init | - | multi-similarity |
| cosface | GMP | 2048 -> 512, torch default init | 'margin', xavier-uniform | CE of s(cos - m) |
| arcface | GMP | 2048 -> 512, torch default init | 'margin', xavier-uniform | CE of s cos(t + m) |
| proxy_anchor | GAP + GMP | 2048 -> 512, kaiming-normal | 'proxies', kaiming | Proxy-Anchor |
| dgpcrl | concat[GAP, GMP] | none | 'classifier', torch default | DGPCRL on s z/|z| |

`embed` is the L2-normalised embedding (DGPCRL: z / |z|, 4096-d for ResNet-50), the vector
CFGA's tables call "embedding". With `freeze_bn` (all but DGPCRL) the backbone's BatchNorm
uses its running statistics during training (PyTorch `bn.eval()`): its scale and bias are
still trained, `model_state` never changes.

The CFGA training recipes of these methods on 'cub' and 'cars' live with the recipes:
`configs/common/metric_learning.py`, which the files `configs/{cub,cars}_{method}.py` load.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fgjax.core.objectives import accuracy, cross_entropy, l2_normalize, max_at_argmax
from fgjax.data.augment import no_augment_spec
from fgjax.methods.base import LossAux, Method, RunInfo, apply_train, register
from fgjax.methods.cfga import metric_losses
from fgjax.models.factory import backbone_from_config

Initializer = Callable[..., jax.Array]

# PyTorch nn.Linear's default: kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(fan_in)) for the kernel.
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> Initializer:
    """nn.Linear's default bias: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def pool(feature_map: jax.Array, pooling: str) -> jax.Array:
    """`[B, H, W, C]` -> `[B, C]` ('max', 'avg_plus_max') or `[B, 2C]` ('avg_max_concat':
    concat[GAP, GMP], DGPCRL's order)."""
    avg, mx = jnp.mean(feature_map, axis=(1, 2)), max_at_argmax(feature_map, axis=(1, 2))
    if pooling == "max":
        return mx
    if pooling == "avg_plus_max":
        return avg + mx
    if pooling == "avg_max_concat":
        return jnp.concatenate([avg, mx], axis=-1)
    raise ValueError(f"pooling {pooling!r}: expected 'max', 'avg_plus_max' or 'avg_max_concat'")


def last_feature_map(features: dict[str, jax.Array]) -> jax.Array:
    """The last stage's map `[B, h, w, C]` of a ResNet's output dict (layer4 for ResNet-50)."""
    stages = sorted(k for k in features if k.startswith("stage"))
    if not stages:
        raise ValueError(
            f"the metric-learning methods need a ResNet (config.model.arch resnet*); the "
            f"backbone returned {sorted(features)}"
        )
    return features[stages[-1]].astype(jnp.float32)


class MetricNet(nn.Module):
    """Backbone -> pooled layer4 -> optional Linear -> L2, and optional class vectors.

    Returns `pooled` [B, P] (float32), `embedding` [B, D] unit rows (D = `embedding_dim`, or
    P without a Linear) and, with `class_param`, `class_weights` [num_classes, D] (a
    top-level parameter of that name, so `config.optim.lr_multipliers` can address it).
    """

    backbone: nn.Module
    pooling: str
    embedding_dim: int = 0  # 0: no Linear (DGPCRL)
    kernel_init: Initializer = torch_linear_init
    torch_bias_init: bool = True  # nn.Linear's default bias, else zeros (Proxy-Anchor)
    class_param: str = ""
    num_classes: int = 0
    class_init: Initializer = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        pooled = pool(last_feature_map(self.backbone(x, train)), self.pooling)
        out = {"pooled": pooled}
        embedding = pooled
        if self.embedding_dim:
            fan_in = pooled.shape[-1]
            bias_init = torch_linear_bias_init(fan_in) if self.torch_bias_init else nn.zeros
            embedding = nn.Dense(
                self.embedding_dim,
                kernel_init=self.kernel_init,
                bias_init=bias_init,
                name="embedding",
            )(pooled)
        out["embedding"] = l2_normalize(embedding)
        if self.class_param:
            shape = (self.num_classes, embedding.shape[-1])
            out["class_weights"] = self.param(self.class_param, self.class_init, shape)
        return out


class MetricLearning(Method):
    """Shared network, BN handling, `embed` and loss wiring; a subclass sets the head
    (`pooling`, `class_param`, inits) and `objective`."""

    view_names = ("view1",)
    partial_batches_ok = True  # per-batch losses, no state that assumes the batch size
    pooling: ClassVar[str] = "max"
    has_embedding_layer: ClassVar[bool] = True
    kernel_init: ClassVar[Initializer] = torch_linear_init
    torch_bias_init: ClassVar[bool] = True
    class_param: ClassVar[str] = ""
    class_init: ClassVar[Initializer] = nn.initializers.xavier_uniform()

    @classmethod
    def loss_config(cls) -> dict[str, Any]:
        """The loss hyperparameters of `config.<name>`."""
        return {}

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        fields: dict[str, Any] = {"embedding_dim": 512} if cls.has_embedding_layer else {}
        fields["freeze_bn"] = True  # backbone BN in eval mode while training (spec 10.9)
        if cls.class_param:
            fields["num_classes"] = 0  # 0: the training split's (RunInfo.num_classes)
        return ml_collections.ConfigDict({**fields, **cls.loss_config()})

    @classmethod
    def default_views(cls) -> dict[str, dict[str, Any]]:
        # RandomResizedCrop(scale (0.16, 1)) + flip, no colour (spec 7.1).
        return {"view1": dict(crop_scale=(0.16, 1.0), photometric=no_augment_spec())}

    def __init__(self, config: ml_collections.ConfigDict, run: RunInfo):
        super().__init__(config, run)
        self.net = MetricNet(
            backbone=backbone_from_config(config.model),
            pooling=self.pooling,
            embedding_dim=self.section.embedding_dim if self.has_embedding_layer else 0,
            kernel_init=type(self).kernel_init,
            torch_bias_init=self.torch_bias_init,
            class_param=self.class_param,
            num_classes=(self.section.num_classes or run.num_classes) if self.class_param else 0,
            class_init=type(self).class_init,
        )

    def forward(self, params, model_state, images: jax.Array) -> tuple[dict, Any]:
        """The training forward: frozen BN runs the backbone in eval mode (running
        statistics, model_state unchanged); otherwise BN uses and updates batch statistics."""
        if self.section.freeze_bn:
            return self.net.apply({"params": params, **model_state}, images, train=False), (
                model_state
            )
        return apply_train(self.net, params, model_state, images)

    def trainable(self, params, ctx) -> Any:
        """`params` as the loss sees them (Proxy-Anchor stops the backbone's gradients
        during its warm-up epochs)."""
        return params

    @abc.abstractmethod
    def objective(
        self, out: dict[str, jax.Array], labels: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`(loss, extra metrics)` from `MetricNet`'s outputs and the labels [B]."""

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        out, model_state = self.forward(self.trainable(params, ctx), model_state, views["view1"])
        loss, metrics = self.objective(out, batch["label"])
        return loss, LossAux(model_state, {"loss": loss, **metrics}, {})

    def embed(self, params, model_state, images: jax.Array) -> jax.Array:
        """The unit-norm retrieval embedding `[B, D]` (eval-mode BN)."""
        out = self.net.apply({"params": params, **model_state}, images, train=False)
        return out["embedding"]


@register
class MSLoss(MetricLearning):
    """Multi-similarity loss on GMP -> Linear -> L2 (spec 7.1; msight-tech/research-ms-loss)."""

    name = "ms_loss"

    @classmethod
    def loss_config(cls):
        return dict(alpha=2.0, beta=40.0, base=0.5, margin=0.1)

    def objective(self, out, labels):
        s = self.section
        loss = metric_losses.multi_similarity_loss(
            out["embedding"], labels, alpha=s.alpha, beta=s.beta, base=s.base, margin=s.margin
        )
        return loss, {}


class _MarginSoftmax(MetricLearning):
    """Cross-entropy of margin logits against xavier-initialised class vectors W [C, D]."""

    class_param = "margin"
    margin_logits: ClassVar[Callable[..., jax.Array]]

    @classmethod
    def loss_config(cls):
        return dict(scale=50.0, margin=0.5)

    def objective(self, out, labels):
        logits = type(self).margin_logits(
            out["embedding"],
            out["class_weights"],
            labels,
            scale=self.section.scale,
            margin=self.section.margin,
        )
        return cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels)}


@register
class CosFace(_MarginSoftmax):
    """CosFace (AddMarginProduct): target logit s (cos - m) (spec 7.2)."""

    name = "cosface"
    margin_logits = staticmethod(metric_losses.cosface_logits)


@register
class ArcFace(_MarginSoftmax):
    """ArcFace (ArcMarginProduct, not easy-margin): target logit s cos(theta + m) (spec 7.3)."""

    name = "arcface"
    margin_logits = staticmethod(metric_losses.arcface_logits)


@register
class ProxyAnchor(MetricLearning):
    """Proxy-Anchor on (GAP + GMP) -> Linear -> L2 (tjddus9597/Proxy-Anchor-CVPR2020:
    net/resnet.py Resnet50, losses.py Proxy_Anchor): Linear kaiming-normal (fan_out) with a
    zero bias, proxies [C, D] kaiming-normal (fan_out = C)."""

    name = "proxy_anchor"
    pooling = "avg_plus_max"
    kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    torch_bias_init = False
    class_param = "proxies"
    # torch's fan_out of a [C, D] tensor is C: Flax's fan_in (axis -2) of the same shape.
    class_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

    @classmethod
    def loss_config(cls):
        # warm_epochs: the first epochs train only the Linear and the proxies (train.py --warm).
        return dict(alpha=32.0, delta=0.1, warm_epochs=1)

    @classmethod
    def default_views(cls):
        return {"view1": dict(crop_scale=(0.08, 1.0), photometric=no_augment_spec())}

    def trainable(self, params, ctx):
        warm = ctx.epoch < self.section.warm_epochs
        backbone = jax.tree.map(
            lambda p: jnp.where(warm, jax.lax.stop_gradient(p), p), params["backbone"]
        )
        return {**params, "backbone": backbone}

    def objective(self, out, labels):
        s = self.section
        loss = metric_losses.proxy_anchor_loss(
            out["embedding"], labels, out["class_weights"], alpha=s.alpha, delta=s.delta
        )
        return loss, {}


@register
class DGPCRL(MetricLearning):
    """DGPCRL (spec 7.5): z = concat[GAP, GMP], logits = W (scale z / |z|) with W [C, 2048 x 2]
    bias-free (nn.Linear's default init), the thresholded CE plus W's decorrelation; BN is
    trained. The embedding is z / |z|."""

    name = "dgpcrl"
    pooling = "avg_max_concat"
    has_embedding_layer = False
    class_param = "classifier"
    class_init = nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform")  # U(+-1/sqrt D)

    @classmethod
    def config_section(cls):
        section = super().config_section()
        section.freeze_bn = False
        return section

    @classmethod
    def loss_config(cls):
        return dict(scale=100.0, threshold=0.7, decorrelation=0.1)

    def objective(self, out, labels):
        s = self.section
        weights = out["class_weights"]
        logits = (s.scale * out["embedding"]) @ weights.T
        loss, parts = metric_losses.dgpcrl_loss(
            logits, labels, weights, threshold=s.threshold, decorrelation=s.decorrelation
        )
        return loss, {**parts, "accuracy": accuracy(logits, labels)}
