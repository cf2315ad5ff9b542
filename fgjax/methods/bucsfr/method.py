"""BuCSFR (ICCV 2025): fine-grained features from coarse labels only (spec
../shared/methods/bucsfr.md).

MoCo v2 (reused from `MoCo`: key encoder, queue, shuffled BN in `bn_groups` groups, which
emulate the original's two GPUs x 128 with `bn_groups=2` at batch 256) plus

- a coarse classifier on the query backbone's pooled feature h (the key encoder copies and
  EMAs it too, as the original copies the whole query encoder);
- a coarse-label queue beside the key queue (initialised to zeros, like the original);
- the BuC step as the epoch hook: from epoch `warmup_epochs` on, before every epoch, the key
  encoder's unit projections of the whole training split (eval transform) are clustered
  inside each coarse class and at most one pair per class merges (`fgjax.methods.bucsfr.buc`); the
  leaf counts, the cluster of every training example and the centroids live in the method
  state, so a resumed run continues the same dendrogram;
- the loss: 0.5 InfoNCE + 0.5 coarse CE while no clusters exist (warm-up), then
  0.5 soft-target contrastive (`fgjax.methods.bucsfr.sfr`, positives sampled from the anchor's
  cluster) + 0.5 coarse CE.

Views: 'view1' queries, 'view2' keys (for Cars / Aircraft the original's query view is
the weak one: set in the recipe). Evaluation: the query backbone's pooled feature.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fgjax.core.distributed import say
from fgjax.core.objectives import accuracy, cross_entropy, info_nce, l2_normalize
from fgjax.eval.clustering import nmi
from fgjax.methods.base import EpochUpdate, LossAux, apply_train, register
from fgjax.methods.bucsfr.buc import buc_step
from fgjax.methods.bucsfr.sfr import anchor_posterior, sample_selection, soft_target_contrastive
from fgjax.methods.moco import MoCo, enqueue
from fgjax.models.encoder import Encoder

# Stream of the BuC step's k-means, folded with the epoch (independent of the step's keys).
_BUC_STREAM = 0x42554321


@register
class BuCSFR(MoCo):
    name = "bucsfr"

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        section = MoCo.config_section()
        section.bn_groups = 2  # the original's 2 GPUs x 128: BN statistics per 128 images
        section.update(
            dict(
                alpha=0.5,  # contrastive weight; the coarse CE gets 1 - alpha
                warmup_epochs=10,  # epochs before the first BuC step (InfoNCE until then)
                # Initial leaves per coarse class and the merge threshold T (spec 6.1:
                # CIFAR-100 25 / 2.0, Cars 125 / 1.1, CUB 40 / 1.1, Aircraft 20 / 1.1).
                clusters_per_coarse=25,
                merge_threshold=2.0,
                # The cluster posterior's temperature: the original's 0.1 divided by its
                # constant density 0.1.
                prototype_temperature=0.01,
                positive_temperature=0.1,  # soft weights exp(k . Q / t) of the positives
            )
        )
        return section

    def __init__(self, config, run):
        if run.num_coarse_classes < 1:
            raise ValueError(
                f"method 'bucsfr' needs coarse labels: dataset {config.data.kind!r} "
                f"(config.data.coarse={config.data.coarse!r}) has none"
            )
        super().__init__(config, run)
        s = self.section
        if not 0.0 <= s.alpha <= 1.0:
            raise ValueError(f"config.bucsfr.alpha={s.alpha} must be in [0, 1]")
        if s.clusters_per_coarse < 1:
            raise ValueError(
                f"config.bucsfr.clusters_per_coarse={s.clusters_per_coarse} must be >= 1"
            )
        self.net = Encoder(
            backbone=self.net.backbone,
            projector=self.net.projector,
            classifier=nn.Dense(
                run.num_coarse_classes,
                kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                name="classifier",
            ),
        )
        self.max_clusters = run.num_coarse_classes * s.clusters_per_coarse

    def init_state(self, params, model_state, rng):
        s, run = self.section, self.run
        state = super().init_state(params, model_state, rng)
        return {
            **state,
            "queue_coarse": jnp.zeros((s.queue_size,), jnp.int32),
            "clustered": jnp.zeros((), jnp.int32),  # 1 once a BuC step has run
            "clusters_per_class": jnp.full(
                (run.num_coarse_classes,), s.clusters_per_coarse, jnp.int32
            ),
            "im2cluster": jnp.zeros((run.num_train_examples,), jnp.int32),
            "centroids": jnp.zeros((self.max_clusters, s.dim), jnp.float32),
        }

    # ------------------------------------------------------------------ the BuC step
    def key_projection(self, state, images: jax.Array) -> jax.Array:
        """Eval-mode unit projections `[B, dim]` of the key encoder (what BuC clusters)."""
        m = state.method_state
        variables = {"params": m["key_params"], **m["key_model_state"]}
        return l2_normalize(self.net.apply(variables, images, train=False)["proj"])

    def on_epoch_start(self, epoch, state, tools):
        s = self.section
        if epoch < s.warmup_epochs:
            return None
        start = time.perf_counter()
        train = tools.extract("train", self.key_projection, state)
        coarse = train.coarse_labels
        counts = np.asarray(jax.device_get(state.method_state["clusters_per_class"]))
        key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), _BUC_STREAM)
        im2cluster, centroids, new_k, merged, best_ratio = jax.device_get(
            buc_step(
                train.features,
                coarse,
                counts,
                jax.random.fold_in(key, epoch),
                threshold=s.merge_threshold,
                k_max=s.clusters_per_coarse,
                n_max=int(np.bincount(coarse).max()),
            )
        )
        metrics = {
            "buc/clusters": new_k,
            "buc/total_clusters": int(new_k.sum()),
            "buc/merges": int(merged.sum()),
            # Each class's smallest merge ratio (merged iff < T; NaN: no candidate pair).
            "buc/best_ratio": np.where(np.isfinite(best_ratio), best_ratio, np.nan),
            "buc/seconds": time.perf_counter() - start,
        }
        if (train.labels >= 0).all():
            metrics["buc/nmi"] = nmi(train.labels, im2cluster)
        nmi_note = f", NMI vs fine labels {metrics['buc/nmi']:.3f}" if "buc/nmi" in metrics else ""
        say(
            f"epoch {epoch} BuC: {metrics['buc/total_clusters']} leaves, "
            f"{metrics['buc/merges']} merged{nmi_note} ({metrics['buc/seconds']:.1f} s)"
        )
        update = {
            "clustered": np.ones((), np.int32),
            "clusters_per_class": new_k.astype(np.int32),
            "im2cluster": im2cluster,
            "centroids": centroids,
        }
        return EpochUpdate(update, metrics)

    # ------------------------------------------------------------------ the step
    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        s = self.section
        key_rng, select_rng = jax.random.split(rng)
        out, model_state = apply_train(self.net, params, model_state, views["view1"])
        q = l2_normalize(out["proj"])
        k, key_model_state = self.key_embeddings(method_state, views["view2"], key_rng)
        k = jax.lax.stop_gradient(k)
        queue, coarse = method_state["queue"], batch["coarse_label"]

        def warm_up():
            loss, logits = info_nce(q, k, queue, s.temperature)
            return loss, logits, jnp.zeros(q.shape[0], jnp.float32)

        def sfr():
            posterior = anchor_posterior(
                queue,
                method_state["centroids"],
                jnp.sum(method_state["clusters_per_class"]),
                method_state["im2cluster"][batch["index"]],
                s.prototype_temperature,
            )
            selection = sample_selection(
                select_rng, posterior, method_state["queue_coarse"], coarse
            )
            loss, logits, _ = soft_target_contrastive(
                q, k, queue, selection, s.temperature, s.positive_temperature
            )
            return loss, logits, jnp.sum(selection.positive, axis=1).astype(jnp.float32)

        contrastive, logits, positives = jax.lax.cond(method_state["clustered"] > 0, sfr, warm_up)
        coarse_ce = cross_entropy(out["logits"], coarse)
        loss = s.alpha * contrastive + (1.0 - s.alpha) * coarse_ce
        metrics = {
            "loss": loss,
            "contrastive_loss": contrastive,
            "coarse_ce": coarse_ce,
            "coarse_acc": accuracy(out["logits"], coarse),
            "contrastive_acc": jnp.mean(jnp.argmax(logits, -1) == 0),
            "positives": jnp.mean(positives),  # sampled queue positives per anchor
        }
        update = {"keys": k, "coarse": coarse, "key_model_state": key_model_state}
        return loss, LossAux(model_state, metrics, update)

    def after_step(self, method_state, state_update, ctx):
        queue_coarse, _ = enqueue(
            method_state["queue_coarse"], method_state["queue_ptr"], state_update["coarse"]
        )
        return {**super().after_step(method_state, state_update, ctx), "queue_coarse": queue_coarse}
