"""BYOL: predict a slowly moving target network's projection of the other view.

Loss (symmetric, as LCR's code): `-1/2 [mean cos(p1, sg z2') + mean cos(p2, sg z1')]`
with `p_i` the online prediction of view i and `z_j'` the target projection of view j;
range [-1, 1], it equals `(L_paper - 4) / 4` of the BYOL paper's summed `2 - 2 cos`
form, so the same learning rate is 4x smaller there. The target (backbone and
projector, no predictor) is an EMA of the online network, updated at the start of
each step with a decay that rises from `ema_base` to 1 along a cosine
(`ema_schedule='cosine'`, BYOL paper) or stays constant (LCR code).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from fgjax.core.objectives import ema, negative_cosine
from fgjax.data.augment import byol_view1_spec, byol_view2_spec
from fgjax.methods.base import LossAux, Method, apply_train, register
from fgjax.models.encoder import Encoder
from fgjax.models.factory import backbone_from_config, compute_dtype
from fgjax.models.heads import MLP

_TARGET = ("backbone", "projector")


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


def _target_part(tree: dict) -> dict:
    """The backbone + projector share of a params tree (no predictor)."""
    return {k: tree[k] for k in _TARGET}


@register
class BYOL(Method):
    name = "byol"
    view_names = ("view1", "view2")

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            dict(
                hidden_dim=4096,
                dim=256,
                ema_base=0.996,
                ema_schedule="cosine",  # 'cosine' (BYOL paper: base -> 1) | 'constant' (LCR)
                bn_groups=1,
            )
        )

    @classmethod
    def default_views(cls):
        view = dict(crop_scale=(0.08, 1.0), interpolation="bicubic")
        return {
            "view1": dict(view, photometric=byol_view1_spec()),
            "view2": dict(view, photometric=byol_view2_spec()),
        }

    def __init__(self, config, run):
        super().__init__(config, run)
        b = self.section
        mlp = lambda: MLP(
            (b.hidden_dim, b.dim),
            use_bn=True,
            bn_groups=b.bn_groups,
            bn_momentum=config.model.bn_momentum,
            dtype=compute_dtype(config.model.dtype),
        )
        self.net = Encoder(
            backbone=backbone_from_config(config.model, bn_groups=b.bn_groups),
            projector=mlp(),
            predictor=mlp(),
        )

    def init_state(self, params, model_state, rng):
        return {
            "target_params": _target_part(params),
            "target_model_state": {c: _target_part(t) for c, t in model_state.items()},
        }

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        # Views go through separately so BatchNorm sees one view per batch, as in BYOL.
        online, target = [], []
        target_state = method_state["target_model_state"]
        for name in self.view_names:
            out, model_state = apply_train(self.net, params, model_state, views[name])
            online.append(out["pred"])
            out, target_state = apply_train(
                self.net, method_state["target_params"], target_state, views[name], predict=False
            )
            target.append(out["proj"])
        (p1, p2), (z1, z2) = online, target
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return loss, LossAux(model_state, {"loss": loss}, {"target_model_state": target_state})

    def before_step(self, params, method_state, ctx):
        b = self.section
        decay = ema_decay(b.ema_base, b.ema_schedule, ctx.step, ctx.run.total_steps)
        target = ema(method_state["target_params"], _target_part(params), decay)
        return {**method_state, "target_params": target}

    def after_step(self, method_state, state_update, ctx):
        return {**method_state, "target_model_state": state_update["target_model_state"]}
