"""LEAD++ (`leadpp`): MoCo v2 with two queues over original and DDT-crop views, entropy-
weighted distillation from a frozen CLIP image teacher through LLM text prototypes, and
LCR's rationale (Grad-CAM fitting) branch.

Spec: ../shared/methods/leadpp.md (3.8 is the step). Views: 'view1', 'view2' two
augmentations of the original image; 'view3', 'view4' two of its DDT crop
(`config.views.view3.root` / `view4.root` = the crop root `fgjax ddt` writes;
'' reads the originals). Per step, with m the key momentum and T the temperature:

    L1 = CE(q(view1) | k(view2), queue)                    then queue  <- k(view2)
    L2 = CE(q(view1) | k(view4), queue2)                   then queue2 <- k(view4)
    L3 = CE(q(view3) | k'(view4), queue2 [after L2's enqueue: the original's bug])
    f_t = sg(unit CLIP_img(view3)), f_s = z(view3) (the unit 512-d projection)
    p_t, p_s = softmax(f P^T / tau_d) over the C prototypes P [C, D]
    d = KL(p_t || p_s) / C, H = entropy(p_t) / log C, w_con = sg(H^2), w_dis = sg(1 - H^2)
    L = alpha mean(w_con CE1) + l2_weight alpha mean(w_con CE2) + alpha mean(w_con CE3)
        + loss_weight * L_cam + beta * L_dis

The key encoder is EMA-updated `ema_updates_per_step` times per step, one update before
each of the three key forwards (3 = the original, whose every MoCo forward updates it);
the updates run inside the loss, and the last key params go to `after_step`.
The query encoder runs once on view1 (the original twice, in its L1 and L2 calls, with
equal outputs); its BN running statistics get the original's two updates from it
(`view1_stat_updates`), then view3's.
`loss_device_groups` G contiguous groups of the batch play the original's GPUs: BN
statistics (queries, rationale branch, shuffled keys), L_dis = mean over groups of the
group's SUM of w_dis d, L_cam = mean over groups of the group's summed KL with the mask
min-maxed over the group, and the Grad-CAM of each group's own L3_g (= G dL3/dy3).

The teacher (a `teacher_arch` CLIP image tower with `teacher_weights`) and the
prototypes are frozen inputs (`init_frozen`): loaded at every start, never checkpointed.
Evaluation features (`embed`): plain GAP of the backbone (the original's retrieval) or,
with `embed_feature='rationale'`, LCR's mask-weighted descriptor (its linear probe).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from fgjax.core.distributed import say
from fgjax.core.objectives import ema, info_nce, l2_normalize
from fgjax.methods.base import LossAux, Method, PyTree, apply_train, register
from fgjax.methods.lcr.method import (
    Rationale,
    key_infonce,
    last_stage_map,
    lcr_fields,
    without_branch,
)
from fgjax.methods.moco import MoCo, enqueue
from fgjax.models.registry import build_backbone

# OpenAI CLIP's preprocessing mean / std (teacher_norm='clip').
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEACHER_NORMS = ("imagenet", "clip")
L3_SNAPSHOTS = ("after_L2_enqueue", "before_L2_enqueue")
EMBED_FEATURES = ("gap", "rationale")
_ENTROPY_EPS = 1e-10  # the original's guard inside log(p_t)


def per_sample_ce(logits: jax.Array) -> jax.Array:
    """Cross-entropy `[B]` of `logits [B, 1 + K]` with the positive at index 0."""
    return jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]


def teacher_weights(log_t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Spec 3.4 from the teacher's log-distribution `log_t [B, C]`: the normalised entropy
    H = -sum p_t log(p_t + 1e-10) / log C, w_con = sg(H^2) and w_dis = sg(1 - H^2), `[B]`."""
    p_t = jnp.exp(log_t)
    entropy = -jnp.sum(p_t * jnp.log(p_t + _ENTROPY_EPS), axis=-1) / jnp.log(log_t.shape[-1])
    w_con = jax.lax.stop_gradient(jnp.square(entropy))
    return entropy, w_con, 1.0 - w_con


def repeat_stat_update(before: PyTree, after: PyTree, momentum: float) -> PyTree:
    """Running statistics after a second `r <- m r + (1 - m) s` with the same batch
    statistics s, from those `before` and `after` the first: after + m (after - before)."""
    return jax.tree.map(lambda b, a: a + momentum * (a - b), before, after)


def distillation(log_t: jax.Array, log_s: jax.Array) -> jax.Array:
    """d `[B]` = KL(p_t || p_s) / C of log-distributions `[B, C]` (PyTorch's KLDivLoss
    'none' averaged over the classes)."""
    return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1) / log_t.shape[-1]


@register
class LEADPP(Rationale, MoCo):
    """LEAD++ = MoCo (key encoder, shuffled BN) + LCR's `Rationale` + the CLIP teacher.

    Params: MoCo's encoder (`backbone`, `projector` 2048-2048-dim) and `rationale`;
    method state: the key encoder (encoder only), `queue`, `queue2` and their pointers;
    frozen: `teacher` (CLIP image-tower variables) and `prototypes` [C, dim]."""

    name = "leadpp"
    view_names = ("view1", "view2", "view3", "view4")

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        section = MoCo.config_section()
        section.update(
            dim=512,  # must equal the prototypes' (and the teacher's) width
            temperature=0.27,
            bn_groups=2,  # must equal loss_device_groups
            # The original's GPUs: BN groups, per-group sums and min-max (spec 3.6).
            loss_device_groups=2,
            # Key EMA updates per step, one before each key forward (3 = the original;
            # 1 = one update per step, the three key forwards share it).
            ema_updates_per_step=3,
            # Running-statistics updates of the query BN by view1: 2 = the original, whose
            # L1 and L2 calls each run the query encoder on view1 (fgjax runs it once and
            # repeats the update; same batch statistics); 1 = one update.
            view1_stat_updates=2,
            # Negatives of L3: queue2 already holding this step's k(view4) from L2 (the
            # original's bug: each positive is among its negatives), or before it.
            l3_queue_snapshot="after_L2_enqueue",
            alpha=0.5,  # weight of every contrastive term
            l2_weight=0.1,  # on top of alpha for L2 (original <-> crop)
            beta=20.0,  # distillation weight (on a per-group sum)
            proto_temperature=0.02,  # tau_d, teacher and student
            num_classes=0,  # entropy normaliser C: 0 = the prototype count; else must match
            prototypes="",  # [C, dim] text prototypes (.pt / .npy / .npz, leadpp.text)
            teacher_arch="clip_vit_b16",
            teacher_overrides=ml_collections.ConfigDict(),  # tower fields (tiny tests)
            teacher_weights="",  # a CLIP checkpoint; '' = random init (not LEAD++)
            # The teacher's input: view3 ImageNet-normalised as is (the original) or
            # re-normalised with CLIP's mean / std.
            teacher_norm="imagenet",
            embed_feature="gap",  # 'gap' (retrieval) or 'rationale' (LCR descriptor)
        )
        # LCR's MoCo-path switches; loss_weight is the CAM weight 0.001 * alpha.
        section.update(lcr_fields(loss_weight=0.0005, att_norm="group_minmax"))
        return section

    def __init__(self, config, run):
        super().__init__(config, run)
        s = self.section
        checks = {
            "l3_queue_snapshot": (s.l3_queue_snapshot, L3_SNAPSHOTS),
            "teacher_norm": (s.teacher_norm, TEACHER_NORMS),
            "embed_feature": (s.embed_feature, EMBED_FEATURES),
            "ema_updates_per_step": (s.ema_updates_per_step, (1, 2, 3)),
            "view1_stat_updates": (s.view1_stat_updates, (1, 2)),
        }
        for field, (value, choices) in checks.items():
            if value not in choices:
                raise ValueError(f"config.leadpp.{field}={value!r}: choose one of {choices}")
        groups = s.loss_device_groups
        if s.bn_groups != groups or run.batch_size % groups:
            raise ValueError(
                f"config.leadpp.bn_groups={s.bn_groups} must equal loss_device_groups="
                f"{groups}, which must divide config.train.batch_size={run.batch_size}"
            )
        self.teacher = build_backbone(s.teacher_arch, **dict(s.teacher_overrides))
        size = config.views.view3.size
        if (size, s.dim) != (self.teacher.img_size, self.teacher.embed_dim):
            raise ValueError(
                f"config.leadpp.teacher_arch={s.teacher_arch!r} takes "
                f"{self.teacher.img_size} px and embeds to {self.teacher.embed_dim}; "
                f"config.views.view3.size={size} and config.leadpp.dim={s.dim} must match"
            )

    # ------------------------------------------------------------------ state
    def init_state(self, params, model_state, rng):
        model_state = {c: without_branch(t) for c, t in model_state.items()}
        state = super().init_state(without_branch(params), model_state, rng)
        queue2 = l2_normalize(jax.random.normal(jax.random.fold_in(rng, 2), state["queue"].shape))
        return {**state, "queue2": queue2, "queue2_ptr": jnp.zeros((), jnp.int32)}

    def init_frozen(self):
        from fgjax.methods.leadpp.text import load_prototypes
        from fgjax.weights import load_pretrained

        s = self.section
        if not s.prototypes:
            raise ValueError("config.leadpp.prototypes: set the [C, dim] text prototype file")
        prototypes = load_prototypes(s.prototypes)
        count, width = prototypes.shape
        if width != s.dim:
            raise ValueError(
                f"{s.prototypes}: prototypes are {width}-d but config.leadpp.dim={s.dim}; "
                "the student's projection is compared with them, the widths must match"
            )
        if s.num_classes and s.num_classes != count:
            raise ValueError(
                f"config.leadpp.num_classes={s.num_classes} but {s.prototypes} has {count} "
                "rows (C normalises the entropy, spec 9.20)"
            )
        image = jnp.zeros((1, self.teacher.img_size, self.teacher.img_size, 3), jnp.float32)
        init = lambda: self.teacher.init(jax.random.PRNGKey(self.config.seed), image)
        if s.teacher_weights:  # strict: every tensor of the tower comes from the file
            variables, _ = load_pretrained(
                s.teacher_weights, jax.eval_shape(init), s.teacher_arch, strict=True
            )
        else:
            say(
                "WARNING: config.leadpp.teacher_weights is empty: the CLIP teacher is a "
                "random-init tower, results are not LEAD++'s"
            )
            variables = jax.jit(init)()
        return {"teacher": jax.tree.map(jnp.asarray, variables), "prototypes": prototypes}

    # ------------------------------------------------------------------ the step
    def before_step(self, params, method_state, ctx):
        return method_state  # the key EMA runs inside `loss`, once per key forward

    def teacher_input(self, images: jax.Array) -> jax.Array:
        """view3 as the teacher sees it: as is (ImageNet-normalised) or CLIP-normalised."""
        if self.section.teacher_norm == "imagenet":
            return images
        spec = self.config.views.view3.photometric  # how the step normalised view3
        pixels = images * jnp.asarray(spec.std) + jnp.asarray(spec.mean)
        return (pixels - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        s = self.section
        groups, temperature = s.loss_device_groups, s.temperature

        # Key encoder: an EMA before each of the three key forwards (the first
        # `ema_updates_per_step` of them), BN statistics threaded through.
        online = jax.lax.stop_gradient(without_branch(params))
        key = {"key_params": method_state["key_params"]}
        key["key_model_state"] = method_state["key_model_state"]
        keys = []
        for i, (view, key_rng) in enumerate(
            zip(("view2", "view4", "view4"), jax.random.split(rng, 3), strict=True)
        ):
            if i < s.ema_updates_per_step:
                key["key_params"] = ema(key["key_params"], online, s.momentum)
            k, key["key_model_state"] = self.key_embeddings(key, views[view], key_rng)
            keys.append(jax.lax.stop_gradient(k))
        k2, k4a, k4b = keys
        queue2_l3, _ = enqueue(method_state["queue2"], method_state["queue2_ptr"], k4a)
        if s.l3_queue_snapshot == "before_L2_enqueue":
            queue2_l3 = method_state["queue2"]

        # Teacher on view3 and its prototype distribution.
        teacher_out = self.teacher.apply(frozen["teacher"], self.teacher_input(views["view3"]))
        f_t = jax.lax.stop_gradient(l2_normalize(teacher_out["pooled"]))

        # Queries: view1 once (L1 and L2), view3 (L3, distillation, rationale).
        before = {c: t["backbone"] for c, t in model_state.items()}
        feats1, backbone_state = apply_train(
            self.net.backbone, params["backbone"], before, views["view1"]
        )
        if s.view1_stat_updates == 2:
            momentum = self.config.model.bn_momentum
            backbone_state = repeat_stat_update(before, backbone_state, momentum)
        feats3, backbone_state = apply_train(
            self.net.backbone, params["backbone"], backbone_state, views["view3"]
        )
        project = lambda pooled: l2_normalize(
            self.net.projector.apply({"params": params["projector"]}, pooled, train=True)
        )
        z1 = project(feats1["pooled"])
        ce1 = per_sample_ce(info_nce(z1, k2, method_state["queue"], temperature)[1])
        ce2 = per_sample_ce(info_nce(z1, k4a, method_state["queue2"], temperature)[1])
        log_probs = lambda f: jax.nn.log_softmax(
            f @ frozen["prototypes"].T / s.proto_temperature, axis=-1
        )
        log_t = log_probs(f_t)
        entropy, w_con, w_dis = teacher_weights(log_t)

        def l3_loss(projector, pooled):
            z3 = l2_normalize(self.net.projector.apply({"params": projector}, pooled, train=True))
            logits = info_nce(z3, k4b, queue2_l3, temperature)[1]
            return s.alpha * jnp.mean(w_con * per_sample_ce(logits)), (z3, logits)

        (l3, (z3, logits3)), pooled_grad = jax.value_and_grad(l3_loss, argnums=1, has_aux=True)(
            params["projector"], feats3["pooled"]
        )
        l1 = s.alpha * jnp.mean(w_con * ce1)
        l2 = s.alpha * jnp.mean(w_con * ce2)
        l_dis = s.beta * jnp.sum(w_dis * distillation(log_t, log_probs(z3))) / groups
        # Each group's Grad-CAM is of its own L3_g = alpha mean_g(.): G x the batch mean's.
        fit, cam_metrics, branch_state = self.fit_rationale(
            params, model_state, last_stage_map(feats3), groups * pooled_grad
        )
        l_cam = fit / groups
        loss = l1 + s.l2_weight * l2 + l3 + s.loss_weight * l_cam + l_dis
        metrics = {
            "loss": loss,
            "l1": l1,
            "l2": l2,
            "l3": l3,
            "l_dis": l_dis,
            "l_cam": l_cam,
            "teacher_entropy": jnp.mean(entropy),
            "contrastive_acc": jnp.mean(jnp.argmax(logits3, -1) == 0),
            **{k: v for k, v in cam_metrics.items() if k != "lcr_loss"},
        }
        new_state = {
            c: {**t, "backbone": backbone_state[c], "rationale": branch_state[c]}
            for c, t in model_state.items()
        }
        update = {"keys": k2, "keys2": k4a, **key}
        return loss, LossAux(new_state, metrics, update)

    def after_step(self, method_state, state_update, ctx):
        state = super().after_step(method_state, state_update, ctx)  # queue <- k(view2)
        queue2, ptr2 = enqueue(state["queue2"], state["queue2_ptr"], state_update["keys2"])
        return {
            **state,
            "key_params": state_update["key_params"],
            "queue2": queue2,
            "queue2_ptr": ptr2,
        }

    # ------------------------------------------------------------------ evaluation
    def explained_loss(self, params, model_state, method_state, pooled, partners):
        """L3, the loss whose Grad-CAM the rationale fits in training: InfoNCE of queries
        from `pooled` `[B, C]` against the key encoder's (eval mode) keys of `partners`
        and queue 2, at T. Without the teacher's per-image weight alpha H^2: a positive
        factor per image, which scales its map and leaves its shape (and sign) as is."""
        return key_infonce(self, params, method_state, pooled, partners, "queue2")

    def embed(self, params, model_state, images):
        """Plain GAP `[B, C]` (the original's retrieval) or, with `embed_feature=
        'rationale'`, LCR's mask-weighted descriptor (its linear probe, spec 7.1)."""
        if self.section.embed_feature == "rationale":
            return super().embed(params, model_state, images)
        return Method.embed(self, params, model_state, images)
