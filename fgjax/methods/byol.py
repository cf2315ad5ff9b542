"""BYOL: predict a slowly moving target network's projection of the other view.

Loss (symmetric, as LCR's code): `-1/2 [mean cos(p1, sg z2') + mean cos(p2, sg z1')]`,
range [-1, 1]; it equals `(L_paper - 4) / 4` of the BYOL paper's summed `2 - 2 cos`
form, so the same learning rate is 4x smaller there. The target (backbone and
projector, no predictor) is an EMA of the online network, updated at the start of
each step with a decay that rises from `ema_base` to 1 along a cosine
(`ema_schedule='cosine'`, BYOL paper) or stays constant (LCR code).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgjax.methods.base import LossAux, Method, ema, l2_normalize
from fgjax.models.factory import backbone_from_config, compute_dtype
from fgjax.models.heads import MLP


class BYOLNetwork(nn.Module):
    """Backbone -> projector -> (predictor). `[B, H, W, 3] -> [B, dim]`."""

    backbone: nn.Module
    projector: nn.Module
    predictor: nn.Module

    def __call__(self, x: jax.Array, train: bool, predict: bool = True) -> jax.Array:
        z = self.projector(self.backbone(x, train)["pooled"], train)
        return self.predictor(z, train) if predict else z


def byol_loss(p1, p2, z1_target, z2_target) -> jax.Array:
    """Symmetric negative cosine; all inputs `[B, D]`, targets are not differentiated."""
    cos = lambda p, z: jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))
    z1_target, z2_target = jax.lax.stop_gradient((z1_target, z2_target))
    return -0.5 * (cos(p1, z2_target) + cos(p2, z1_target))


def ema_decay(base: float, schedule: str, step: jax.Array, total_steps: int) -> jax.Array:
    """BYOL's target decay at `step`: cosine from `base` to 1, or constant."""
    if schedule == "constant":
        return jnp.asarray(base, jnp.float32)
    if schedule != "cosine":
        raise ValueError(
            f"config.byol.ema_schedule must be 'cosine' or 'constant', got {schedule!r}"
        )
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(math.pi * t) + 1.0) / 2.0


class BYOL(Method):
    num_views = 2

    def __init__(self, config, num_classes, total_steps):
        super().__init__(config, num_classes, total_steps)
        b = config.byol
        dtype = compute_dtype(config.model.dtype)
        mlp = lambda: MLP(
            (b.hidden_dim, b.dim),
            use_bn=True,
            bn_groups=b.bn_groups,
            bn_momentum=config.model.bn_momentum,
            dtype=dtype,
        )
        self.net = BYOLNetwork(
            backbone=backbone_from_config(config.model, bn_groups=b.bn_groups),
            projector=mlp(),
            predictor=mlp(),
        )

    def init_variables(self, rng, image_shape):
        variables = self.net.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)
        return variables["params"], variables["batch_stats"]

    def init_state(self, params, batch_stats, rng):
        target = lambda tree: {"backbone": tree["backbone"], "projector": tree["projector"]}
        return {"target_params": target(params), "target_batch_stats": target(batch_stats)}

    def _forward(self, params, stats, images, predict):
        out, updates = self.net.apply(
            {"params": params, "batch_stats": stats},
            images,
            train=True,
            predict=predict,
            mutable=["batch_stats"],
        )
        return out, updates["batch_stats"]

    def loss(self, params, batch_stats, state, views, batch, rng):
        v1, v2 = views
        # Views go through separately so BatchNorm sees one view per batch, as in BYOL.
        p1, stats = self._forward(params, batch_stats, v1, predict=True)
        p2, stats = self._forward(params, stats, v2, predict=True)
        z1, tstats = self._forward(state["target_params"], state["target_batch_stats"], v1, False)
        z2, tstats = self._forward(state["target_params"], tstats, v2, False)
        loss = byol_loss(p1, p2, z1, z2)
        return loss, LossAux(stats, {"loss": loss}, {"target_batch_stats": tstats})

    def before_step(self, params, state, step):
        b = self.config.byol
        decay = ema_decay(b.ema_base, b.ema_schedule, step, self.total_steps)
        online = {"backbone": params["backbone"], "projector": params["projector"]}
        return {**state, "target_params": ema(state["target_params"], online, decay)}

    def after_step(self, state, state_update):
        return {**state, "target_batch_stats": state_update["target_batch_stats"]}
