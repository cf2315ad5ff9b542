"""LCR (Learning Common Rationale, CVPR 2023) on MoCo v2 (`lcr`) and BYOL (`lcr_byol`).

Spec: ../shared/methods/lcr.md. A low-capacity "rationale branch" (1x1 conv C->K, BN,
ReLU, max over the K maps) on the last-stage map A [B, H, W, C] is fitted, by a KL loss,
to the Grad-CAM of the SSL loss w.r.t. A. The SSL objective is MoCo v2's, reused from
`MoCo` (key encoder, queue, shuffled BN); the branch is not part of the key encoder.

Grad-CAM without a second backward through the backbone (spec 4.2): A reaches the loss
only through the global mean y = mean_hw(A), so dL/dA(h, w) = dL/dy / HW at every
position and the map is ReLU(sign * <A(h, w), dL/dy> / HW). `dL/dy` is a backward
through the projection head only, held constant (as the original's first-order grad).

`config.lcr` holds MoCo's fields and the LCR switches; the defaults are the spec's
code-faithful preset for the MoCo path (section 10).

The original MoCo path trains with DDP, one process per GPU. `loss_device_groups` G
contiguous groups of the batch play its GPUs (0 = `bn_groups`, one per BN group): each
GPU's InfoNCE is a mean over its own images, so its Grad-CAM is G x the global mean's;
its mask is min-maxed over its own batch tensor (`att_norm='group_minmax'`); its KL is
summed over its images and DDP averages the gradients, so L_cam is the mean over the
groups of their sums (the global sum / G). Checked against 4 gloo processes of the
original (tests/parity/test_lcr_golden.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fgjax.core.objectives import (
    info_nce,
    l2_normalize,
    max_at_argmax,
    min_at_argmin,
    negative_cosine,
)
from fgjax.methods.base import LossAux, PyTree, apply_train, backbone_variables, register
from fgjax.methods.byol import BYOL
from fgjax.methods.moco import MoCo, unshuffled_keys
from fgjax.models.norm import BatchNorm

CAM_SIGNS = {"loss": 1.0, "score": -1.0}
SOFTMAX_AXES = ("row", "spatial")
CAM_NORMS = ("none", "sample_max", "sample_minmax")
ATT_NORMS = ("batch_minmax", "sample_minmax", "group_minmax")
REDUCTIONS = ("sum", "batchmean", "mean")
_EPS = 1e-7  # the original's guard in the min-max normalisation


class RationaleBranch(nn.Module):
    """`A [B, H, W, C]` -> mask `m [B, H, W]` float32 = max_k ReLU(BN(Conv1x1(A)))_k.

    The conv has no bias and PyTorch's default init U(+-1/sqrt(C)); one linear map per
    position plus a max is the "limited capacity" that forces a common rationale."""

    features: int = 32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_groups: int = 1

    @nn.compact
    def __call__(self, maps: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(
            self.features,
            use_bias=False,
            kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            name="conv",
        )(maps.astype(jnp.float32))
        x = BatchNorm(self.bn_momentum, self.bn_epsilon, self.bn_groups, name="bn")(x, train)
        return max_at_argmax(nn.relu(x), axis=-1)


def last_stage_map(features: dict[str, jax.Array]) -> jax.Array:
    """The deepest `stage{s}` map `[B, H, W, C]` of a backbone's output dict, float32."""
    stages = [k for k in features if k.startswith("stage") and k[5:].isdigit()]
    if not stages:
        raise ValueError(
            f"LCR needs a ResNet-style backbone with 'stage<s>' maps, got {sorted(features)}"
        )
    return features[max(stages, key=lambda k: int(k[5:]))].astype(jnp.float32)


def grad_cam(maps: jax.Array, pooled_grad: jax.Array, sign: float = 1.0) -> jax.Array:
    """Grad-CAM `[B, H, W]` = ReLU(sign * sum_c A_c * dL/dA_c) of maps `A [B, H, W, C]`
    whose only path to L is y = mean_hw(A), from `pooled_grad` = dL/dy `[B, C]`."""
    height, width = maps.shape[1:3]
    return nn.relu(sign * jnp.einsum("bhwc,bc->bhw", maps, pooled_grad) / (height * width))


def minmax(x: jax.Array, per_sample: bool) -> jax.Array:
    """`(x - min) / (max(x - min) + 1e-7)` over the whole batch tensor (the original) or
    per sample (`per_sample`), for `x [B, H, W]`. The extremes are differentiated through
    their argmin / argmax (`max_at_argmax`: finite for every input, ties included)."""
    axes = tuple(range(1, x.ndim)) if per_sample else None
    shifted = x - min_at_argmin(x, axis=axes, keepdims=per_sample)
    return shifted / (max_at_argmax(shifted, axis=axes, keepdims=per_sample) + _EPS)


def normalise_attention(mask: jax.Array, mode: str, groups: int = 1) -> jax.Array:
    """`att_norm` of the mask `[B, H, W]`: min-max over the whole batch tensor
    ('batch_minmax'), per image ('sample_minmax') or per contiguous group of `B / groups`
    images ('group_minmax': the per-GPU batch tensor of a `groups`-GPU original, LEAD++)."""
    if mode == "group_minmax":
        return minmax(mask.reshape(groups, -1), per_sample=True).reshape(mask.shape)
    return minmax(mask, per_sample=mode == "sample_minmax")


def normalise_cam(cam: jax.Array, mode: str) -> jax.Array:
    """`cam_norm`: 'none' (the original), 'sample_max' (cam / max per image) or
    'sample_minmax', for `cam [B, H, W]`; rescales before the temperature."""
    if mode == "none":
        return cam
    if mode == "sample_max":
        return cam / (max_at_argmax(cam, axis=(1, 2), keepdims=True) + _EPS)
    if mode == "sample_minmax":
        return minmax(cam, per_sample=True)
    raise ValueError(f"config.lcr.cam_norm={mode!r}: choose one of {CAM_NORMS}")


def _distributions(x: jax.Array, axis: str) -> jax.Array:
    """`x [B, H, W]` as rows of logits: `[B * H, W]` ('row', softmax over the last axis as
    the original MoCo path) or `[B, H * W]` ('spatial', as its BYOL path)."""
    if axis == "row":
        return x.reshape(-1, x.shape[-1])
    if axis == "spatial":
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"config.lcr.cam_softmax_axis={axis!r}: choose one of {SOFTMAX_AXES}")


def fitting_loss(
    cam: jax.Array, attention: jax.Array, tau: float, axis: str, reduction: str
) -> tuple[jax.Array, jax.Array]:
    """KL(t || q) with t = softmax(cam / tau), q = softmax(attention / tau), both `[B, H, W]`,
    over the distributions `axis` gives, and the target `t` `[N, D]` (for its entropy).

    PyTorch `kl_div(log q, t, reduction)`: 'sum' (the original) sums over every element,
    'batchmean' divides the sum by the batch size B, 'mean' by the element count B*H*W."""
    # t log t from log_softmax, not xlogy(t, t): a target that underflows to 0 would
    # make xlogy's gradient 0 * log 0 = NaN.
    log_t = jax.nn.log_softmax(_distributions(cam, axis) / tau, axis=-1)
    t = jnp.exp(log_t)
    log_q = jax.nn.log_softmax(_distributions(attention, axis) / tau, axis=-1)
    total = jnp.sum(t * (log_t - log_q))
    if reduction == "sum":
        return total, t
    if reduction == "batchmean":
        return total / cam.shape[0], t
    if reduction == "mean":
        return total / cam.size, t
    raise ValueError(f"config.lcr.reduction={reduction!r}: choose one of {REDUCTIONS}")


def descriptor(maps: jax.Array, attention: jax.Array) -> jax.Array:
    """Test-time descriptor `[B, C]` = L2normalise(mean_hw(a * A)) of `A [B, H, W, C]` and
    the normalised mask `a [B, H, W]`."""
    return l2_normalize(jnp.mean(attention[..., None] * maps, axis=(1, 2)))


def lcr_fields(**faithful) -> dict:
    """The LCR switches of a method section, at the MoCo path's code-faithful values
    unless `faithful` overrides them (the BYOL path's softmax axis and temperature)."""
    fields = dict(
        proj_dim=32,  # K maps of the rationale branch (1x1 conv C -> K)
        loss_weight=0.01,  # weight of the fitting loss (`--nu`)
        tau=1.0,  # softmax temperature of both the Grad-CAM and the mask
        # Softmax over 'row' (each row of the map: the MoCo code) or 'spatial'
        # (the flattened map: the BYOL code and the SAM predecessor).
        cam_softmax_axis="row",
        # Grad-CAM of the 'loss' (the code) or of the 'score' (-loss, textbook).
        cam_sign="loss",
        # Rescale the Grad-CAM per image before the temperature: 'none' (the
        # code, near-uniform target, spec 4.5), 'sample_max', 'sample_minmax'.
        cam_norm="none",
        # Min-max of the mask over the whole batch tensor (the code on one GPU, train
        # and test), per image, or per loss group in training ('group_minmax': each
        # GPU's batch tensor of the multi-GPU code, LCR-MoCo and LEAD++; the whole
        # batch at test time).
        att_norm="batch_minmax",
        # Detach the Grad-CAM target (False = the code: the KL reaches the
        # backbone through A in the target too, with dL/dy held constant).
        cam_target_stopgrad=False,
        # KL reduction: 'sum' (the code), 'batchmean' (/ B), 'mean' (/ B*H*W).
        reduction="sum",
    )
    fields.update(faithful)
    return fields


def without_branch(tree: PyTree) -> PyTree:
    """A params tree (or one collection of model_state) without the rationale branch."""
    return {k: v for k, v in tree.items() if k != "rationale"}


def with_branch(
    branch: RationaleBranch,
    backbone: nn.Module,
    params: PyTree,
    model_state: PyTree,
    rng: jax.Array,
    image_shape: tuple[int, ...],
) -> tuple[PyTree, PyTree]:
    """`(params, model_state)` of a network whose `params['backbone']` is `backbone`, with the
    rationale branch `branch` added as the `rationale` group (params and BN statistics)."""
    # Real maps under the caller's jit: only their shape matters, XLA drops the rest.
    maps = last_stage_map(
        backbone.apply(backbone_variables(params, model_state), jnp.zeros(image_shape), train=False)
    )
    variables = dict(branch.init(rng, maps, train=False))
    params = {**params, "rationale": variables.pop("params")}
    model_state = {c: {**t, "rationale": variables[c]} for c, t in model_state.items()}
    return params, model_state


def attention_maps(
    branch: RationaleBranch,
    backbone: nn.Module,
    params: PyTree,
    model_state: PyTree,
    images: jax.Array,
    att_norm: str,
) -> tuple[jax.Array, jax.Array]:
    """Eval-mode `(last-stage map A [B, H, W, C], normalised mask a [B, H, W])` of `images`
    through `backbone` and the `rationale` group; `att_norm` as `config.lcr.att_norm`
    ('group_minmax' normalises over the whole eval batch, as the original's test code)."""
    if att_norm not in ATT_NORMS:
        raise ValueError(f"att_norm={att_norm!r}: choose one of {ATT_NORMS}")
    maps = last_stage_map(
        backbone.apply(backbone_variables(params, model_state), images, train=False)
    )
    variables = {"params": params["rationale"]}
    variables.update({c: t["rationale"] for c, t in model_state.items()})
    mask = branch.apply(variables, maps, train=False)
    return maps, minmax(mask, per_sample=att_norm == "sample_minmax")


class Rationale:
    """The LCR part shared by the bases: mix in before the base method (`class X(Rationale,
    MoCo)`); the base's section carries `lcr_fields()`. Adds `params['rationale']` (and its
    BN stats) and the LCR descriptor as `embed`."""

    def __init__(self, config, run):
        super().__init__(config, run)
        s = self.section
        checks = {
            "cam_sign": (s.cam_sign, tuple(CAM_SIGNS)),
            "cam_softmax_axis": (s.cam_softmax_axis, SOFTMAX_AXES),
            "cam_norm": (s.cam_norm, CAM_NORMS),
            "att_norm": (s.att_norm, ATT_NORMS),
            "reduction": (s.reduction, REDUCTIONS),
        }
        for field, (value, choices) in checks.items():
            if value not in choices:
                raise ValueError(f"config.{self.name}.{field}={value!r}: choose one of {choices}")
        self.rationale = RationaleBranch(
            features=s.proj_dim,
            bn_momentum=config.model.bn_momentum,
            bn_epsilon=config.model.bn_epsilon,
            bn_groups=s.bn_groups,
        )

    def init_variables(self, rng, image_shape):
        params, model_state = super().init_variables(rng, image_shape)
        branch_rng = jax.random.fold_in(rng, 1)
        return with_branch(
            self.rationale, self.backbone(), params, model_state, branch_rng, image_shape
        )

    @property
    def loss_groups(self) -> int:
        """The original's GPU count G (`loss_device_groups`; 0 or absent = `bn_groups`)."""
        return self.section.get("loss_device_groups", 0) or self.section.bn_groups

    def fit_rationale(
        self, params: PyTree, model_state: PyTree, maps: jax.Array, pooled_grad: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array], PyTree]:
        """`(L_cam, metrics, the branch's new model_state)` of the maps `A [B, H, W, C]`
        whose Grad-CAM comes from `pooled_grad` = dL_ssl/dmean_hw(A) `[B, C]`; the mask
        is min-maxed per `loss_groups` group under `att_norm='group_minmax'`."""
        s = self.section
        cam = grad_cam(maps, jax.lax.stop_gradient(pooled_grad), CAM_SIGNS[s.cam_sign])
        cam = normalise_cam(cam, s.cam_norm)
        if s.cam_target_stopgrad:
            cam = jax.lax.stop_gradient(cam)
        branch_state = {c: t["rationale"] for c, t in model_state.items()}
        mask, branch_state = apply_train(self.rationale, params["rationale"], branch_state, maps)
        attention = normalise_attention(mask, s.att_norm, self.loss_groups)
        fit, target = fitting_loss(cam, attention, s.tau, s.cam_softmax_axis, s.reduction)
        entropy = -jnp.sum(jax.scipy.special.xlogy(target, target), axis=-1)
        size = target.shape[-1]
        metrics = {
            "lcr_loss": fit,
            # 1 = a uniform target, the scale problem of spec 4.5; max(t) * N is 1 there too.
            "cam_entropy": jnp.mean(entropy) / jnp.log(size),
            "cam_peak": jnp.mean(jnp.max(target, axis=-1)) * size,
        }
        return fit, metrics, branch_state

    def attention(self, params: PyTree, model_state: PyTree, images: jax.Array):
        """Eval-mode `(last-stage map [B, H, W, C], normalised mask a [B, H, W])`."""
        return attention_maps(
            self.rationale, self.backbone(), params, model_state, images, self.section.att_norm
        )

    def embed(self, params, model_state, images):
        """The LCR descriptor `[B, C]`: L2normalise(mean_hw(a * A)) (spec 4.6)."""
        return descriptor(*self.attention(params, model_state, images))

    def explain(
        self,
        params: PyTree,
        model_state: PyTree,
        method_state: PyTree,
        images: jax.Array,
        partners: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Eval-mode `(Grad-CAM [B, H, W], normalised mask a [B, H, W])` of `images`: the
        Grad-CAM of the base's SSL loss with `partners` (e.g. the mirrored images) as the
        other view, as `cam_sign` and `cam_norm` shape the training target."""
        maps, attention = self.attention(params, model_state, images)
        pooled_grad = jax.grad(
            lambda pooled: self.explained_loss(params, model_state, method_state, pooled, partners)
        )(jnp.mean(maps, axis=(1, 2)))
        cam = grad_cam(maps, pooled_grad, CAM_SIGNS[self.section.cam_sign])
        return normalise_cam(cam, self.section.cam_norm), attention


def key_infonce(
    method: MoCo,
    params: PyTree,
    method_state: PyTree,
    pooled: jax.Array,
    partners: jax.Array,
    queue: str,
) -> jax.Array:
    """InfoNCE (at `method.section.temperature`) of queries from `pooled` `[B, C]` through
    the projector against the key encoder's eval-mode keys of `partners` and
    `method_state[queue]`: a MoCo-style method's explained loss."""
    key_variables = {"params": method_state["key_params"], **method_state["key_model_state"]}
    k = l2_normalize(method.net.apply(key_variables, partners, train=False)["proj"])
    q = method.net.projector.apply({"params": params["projector"]}, pooled, train=False)
    q = l2_normalize(q)
    return info_nce(q, k, method_state[queue], method.section.temperature)[0]


@register
class LCR(Rationale, MoCo):
    """MoCo v2 + LCR. Views as MoCo: 'view1' queries (explained by Grad-CAM), 'view2' keys.

    Params: MoCo's encoder (`backbone`, `projector`) and `rationale`; the key encoder
    copies and EMAs the encoder only. The total loss is L_moco + loss_weight * L_cam."""

    name = "lcr"

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        section = MoCo.config_section()
        section.dim = 256  # LCR's `--moco-dim` default
        # The original's GPUs (DDP processes): 0 = one per BN group (`bn_groups`).
        section.loss_device_groups = 0
        # The mask min-maxed over each GPU's batch tensor (the code's "batch" min-max).
        section.update(lcr_fields(att_norm="group_minmax"))
        # Running-statistic updates of the branch's BN per step: 3 = the original's
        # train-mode passes (the query maps, the shuffled key maps through the online
        # branch, the query maps again); 1 = the query maps once.
        section.branch_stat_updates = 3
        return section

    def __init__(self, config, run):
        super().__init__(config, run)
        groups = self.loss_groups
        if groups < 1 or run.batch_size % groups:
            raise ValueError(
                f"config.lcr.loss_device_groups={self.section.loss_device_groups} (0 = "
                f"bn_groups={self.section.bn_groups}) must divide "
                f"config.train.batch_size={run.batch_size}"
            )
        if self.section.branch_stat_updates not in (1, 3):
            raise ValueError(
                f"config.lcr.branch_stat_updates={self.section.branch_stat_updates!r}: "
                "choose 1 or 3"
            )

    def init_state(self, params, model_state, rng):
        model_state = {c: without_branch(t) for c, t in model_state.items()}
        return super().init_state(without_branch(params), model_state, rng)

    def before_step(self, params, method_state, ctx):
        return super().before_step(without_branch(params), method_state, ctx)

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        s = self.section
        backbone_state = {c: t["backbone"] for c, t in model_state.items()}
        features, backbone_state = apply_train(
            self.net.backbone, params["backbone"], backbone_state, views["view1"]
        )
        key_out, perm, key_model_state = self.shuffled_key_forward(
            method_state, views["view2"], rng
        )
        k = jax.lax.stop_gradient(unshuffled_keys(key_out["proj"], perm))

        def ssl_loss(projector, pooled):
            q = l2_normalize(self.net.projector.apply({"params": projector}, pooled, train=True))
            return info_nce(q, k, method_state["queue"], s.temperature)

        (ssl, logits), pooled_grad = jax.value_and_grad(ssl_loss, argnums=1, has_aux=True)(
            params["projector"], features["pooled"]
        )
        # Each GPU's Grad-CAM is of its own mean InfoNCE: G x the global mean's gradient.
        groups = self.loss_groups
        fit, metrics, branch_state = self.fit_rationale(
            params, model_state, last_stage_map(features), groups * pooled_grad
        )
        if s.branch_stat_updates == 3:
            branch_state = self.repeat_branch_stats(
                params, model_state, branch_state, last_stage_map(key_out)
            )
        # DDP averages the GPUs' gradients: a summed KL counts 1 / G of the global sum
        # ('batchmean' and 'mean' already divide the sum by the whole batch's count).
        fit = fit / groups if s.reduction == "sum" else fit
        loss = ssl + s.loss_weight * fit
        metrics = {
            **metrics,
            "loss": loss,
            "ssl_loss": ssl,
            "lcr_loss": fit,
            "contrastive_acc": jnp.mean(jnp.argmax(logits, -1) == 0),
        }
        new_state = {
            c: {**t, "backbone": backbone_state[c], "rationale": branch_state[c]}
            for c, t in model_state.items()
        }
        update = {"keys": k, "key_model_state": key_model_state}
        return loss, LossAux(new_state, metrics, update)

    def repeat_branch_stats(
        self, params: PyTree, model_state: PyTree, branch_state: PyTree, key_maps: jax.Array
    ) -> PyTree:
        """The branch's BN statistics after the original's second and third train-mode
        passes of a step: the shuffled key maps `[B, H, W, C]` (through the online branch,
        no gradient), then the query maps again (the update `branch_state` already holds,
        r <- m r + (1 - m) s_q, repeated)."""
        before = {c: t["rationale"] for c, t in model_state.items()}
        _, keyed = apply_train(
            self.rationale, params["rationale"], branch_state, jax.lax.stop_gradient(key_maps)
        )
        m = self.config.model.bn_momentum
        return jax.tree.map(lambda k, q, r: m * k + q - m * r, keyed, branch_state, before)

    def explained_loss(self, params, model_state, method_state, pooled, partners):
        """InfoNCE of queries from `pooled` `[B, C]` against the key encoder's (eval mode)
        keys of `partners` and the queue: the loss `explain` takes the Grad-CAM of."""
        return key_infonce(self, params, method_state, pooled, partners, "queue")


@register
class LCRBYOL(Rationale, BYOL):
    """BYOL + LCR (the original's BYOL path). Grad-CAM explains view 1; only the
    1/2 D(p1, z2') half of the loss depends on its map. The target (backbone and
    projector) never holds the branch. Total: L_byol + loss_weight * L_cam.
    The original's BYOL backbone has no stem max-pool: `config.model.stem_maxpool=False`."""

    name = "lcr_byol"

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        section = BYOL.config_section()
        section.ema_schedule = "constant"  # tau_ema = 0.996 throughout in the LCR code
        section.update(lcr_fields(tau=0.4, cam_softmax_axis="spatial"))
        return section

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        s = self.section
        part = lambda tree, key: {c: t[key] for c, t in tree.items()}
        targets, target_state = [], method_state["target_model_state"]
        for name in self.view_names:
            out, target_state = apply_train(
                self.net, method_state["target_params"], target_state, views[name], predict=False
            )
            targets.append(jax.lax.stop_gradient(out["proj"]))
        z1, z2 = targets

        # View 1: backbone and head separately, for dL/dy1 through the head only.
        features, backbone_state = apply_train(
            self.net.backbone, params["backbone"], part(model_state, "backbone"), views["view1"]
        )

        def half_loss(heads, pooled):
            proj, proj_state = apply_train(
                self.net.projector, heads["projector"], part(model_state, "projector"), pooled
            )
            pred, pred_state = apply_train(
                self.net.predictor, heads["predictor"], part(model_state, "predictor"), proj
            )
            return negative_cosine(pred, z2) / 2, (proj_state, pred_state)

        heads = {k: params[k] for k in ("projector", "predictor")}
        (half1, (proj_state, pred_state)), pooled_grad = jax.value_and_grad(
            half_loss, argnums=1, has_aux=True
        )(heads, features["pooled"])
        state = {
            c: {
                "backbone": backbone_state[c],
                "projector": proj_state[c],
                "predictor": pred_state[c],
            }
            for c in model_state
        }
        out, state = apply_train(self.net, without_branch(params), state, views["view2"])
        ssl = half1 + negative_cosine(out["pred"], z1) / 2

        fit, metrics, branch_state = self.fit_rationale(
            params, model_state, last_stage_map(features), pooled_grad
        )
        loss = ssl + s.loss_weight * fit
        new_state = {c: {**t, "rationale": branch_state[c]} for c, t in state.items()}
        metrics = {"loss": loss, "ssl_loss": ssl, **metrics}
        return loss, LossAux(new_state, metrics, {"target_model_state": target_state})

    def explained_loss(self, params, model_state, method_state, pooled, partners):
        """The view-1 half 1/2 D(p1, z2') with p1 from `pooled` `[B, C]` and z2' the target's
        (eval mode) projection of `partners`: the loss `explain` takes the Grad-CAM of."""
        target = {"params": method_state["target_params"], **method_state["target_model_state"]}
        z = self.net.apply(target, partners, train=False, predict=False)["proj"]
        head = lambda name, x: getattr(self.net, name).apply(
            {"params": params[name], **{c: t[name] for c, t in model_state.items()}},
            x,
            train=False,
        )
        return negative_cosine(head("predictor", head("projector", pooled)), z) / 2
