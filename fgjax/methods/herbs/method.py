"""HERBS (Chou et al. 2023, arXiv 2303.06442): a Swin backbone with the HERBS plug-in head
(`fgjax.methods.herbs.model.HerbsHead`), trained with labels (../shared/methods/herbs.md).

Params are `{'backbone': <Swin>, 'head': <HerbsHead>}`; model_state is
`{'batch_stats': {'head': ...}}` (the Swin has no BatchNorm, the head has nine).

The loss of one (micro-)batch, spec section 4, with the `config.herbs` weights:

    L = sum_k [ hr_weight    * L_HR,k        KL(softmax(sg(Y^u_k)/T) || softmax(Y^d_k/T)),
                                             mean over all B*S_k*N elements, no T^2
              + layer_weight * L_layer,k     CE(mean_s Y^u_k, y)
              + drop_weight  * L_drop,k      mean over B*(S_k-K_k)*N of (tanh(Y^u_drop) + 1)^2
              + select_weight * L_sel,k ]    CE of every selected token (0 in HERBS)
        + comb_weight * CE(comb_outs, y)

with Y^d_k the first-pass (`FPN1_layer{k}`) and Y^u_k the refined (`layer{k}`) per-token
logits and T = temperature * 0.5^floor(epoch / halve_every) (64, 32, ..., 0.5 over 80
epochs). There is no CE on the first-pass logits: they learn through L_HR only.
Gradient accumulation (spec 5.3: the loss of each of 4 micro-batches divided by 4, each
micro-batch with its own BatchNorm statistics) is the trainer's `accumulate_steps`.

Evaluation: `embed` is the mean over tokens of the last Swin tap (`layer4`, the features
the head reads; HERBS never uses Swin's final LayerNorm, so neither does the embedding).
The `herbs` evaluator scores the test split with the spec's prediction (section 6.2): the
argmax of the sum of 9 softmaxes (token-averaged `layer1..4`, `FPN1_layer1..4`, and
`comb_outs`), plus the combiner alone and every head (section 6.1).

`config.model.init_from` of a HERBS `best.pt` (the original code's checkpoint, spec 5.5 /
8.2 C) loads the Swin and the head with its BatchNorm statistics (`load_weights`), so the
released model is evaluated (`num_epochs=0`, or `fgjax eval --init-from best.pt
--protocol herbs`) or fine-tuned as a whole; a plain Swin file starts the backbone only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fgjax.core.objectives import accuracy, cross_entropy
from fgjax.data.augment import PhotometricSpec
from fgjax.eval.classification import classification_metrics
from fgjax.eval.protocols import class_groups
from fgjax.methods.base import LossAux, Method, apply_train, check_same_classes, register
from fgjax.methods.herbs.keys import herbs_variables_from_torch, is_herbs_checkpoint
from fgjax.methods.herbs.model import HerbsHead
from fgjax.models.factory import backbone_from_config
from fgjax.models.registry import arch_family

Array = jax.Array

# Spec 5.4: the train crops are taken from a 510 x 510 squash (it goes with 384 px crops).
HERBS_SQUASH_SIZE = 510


# ------------------------------------------------------------------------------ losses


def temperature(epoch: Array, start: float = 64.0, halve_every: float = 10.0) -> Array:
    """T(e) = start * 0.5^floor(e / halve_every) for the (0-based, possibly fractional)
    epoch e: 64, 32, 16, ..., 0.5 over HERBS' 80 epochs (spec section 4)."""
    return start * jnp.power(0.5, jnp.floor(jnp.asarray(epoch, jnp.float32) / halve_every))


def refinement_loss(refined: Array, first_pass: Array, t: Array | float) -> Array:
    """High-temperature refinement L_HR of one level: `[B, S, N]` logits ->  scalar.

    KL(p || q) with p = softmax(stopgrad(refined) / t) (the teacher) and
    q = softmax(first_pass / t), averaged over EVERY element B*S*N (PyTorch `KLDivLoss`
    with its default 'mean' reduction: the class axis too), without a T^2 factor.
    """
    teacher = jax.lax.stop_gradient(refined.astype(jnp.float32)) / t
    log_p = jax.nn.log_softmax(teacher, axis=-1)
    log_q = jax.nn.log_softmax(first_pass.astype(jnp.float32) / t, axis=-1)
    return jnp.mean(jnp.exp(log_p) * (log_p - log_q))


def layer_loss(refined: Array, labels: Array) -> Array:
    """L_layer: CE of the token-averaged refined logits `[B, S, N]` against `labels [B]`."""
    return cross_entropy(jnp.mean(refined.astype(jnp.float32), axis=1), labels)


def suppression_loss(dropped: Array) -> Array:
    """Background suppression L_drop: MSE of tanh(dropped logits) `[B, S-K, N]` to -1,
    averaged over every element."""
    return jnp.mean(jnp.square(jnp.tanh(dropped.astype(jnp.float32)) + 1.0))


def selection_loss(selected: Array, labels: Array) -> Array:
    """L_sel: CE of every selected token's logits `[B, K, N]` against its image's label,
    averaged over the B*K tokens."""
    b, k, n = selected.shape
    return cross_entropy(selected.reshape(b * k, n), jnp.repeat(labels, k))


def level_terms(out: Mapping[str, Array], labels: Array, t: Array | float, level: str) -> dict:
    """The unweighted terms of one level ('layer1', ...): `{'hr', 'layer', 'drop',
    'select'}` -> scalar."""
    return {
        "hr": refinement_loss(out[level], out[f"FPN1_{level}"], t),
        "layer": layer_loss(out[level], labels),
        "drop": suppression_loss(out[f"drop_{level}"]),
        "select": selection_loss(out[f"select_{level}"], labels),
    }


def herbs_loss(
    out: Mapping[str, Array],
    labels: Array,
    t: Array | float,
    section: ml_collections.ConfigDict,
) -> tuple[Array, dict[str, Array]]:
    """`(total, terms)` of the HerbsHead outputs `out` (spec 3.8) for `labels [B]` at
    temperature `t`; `terms` are the unweighted per-term sums over the levels
    ('hr_loss', 'layer_loss', 'drop_loss', 'select_loss'), 'comb_loss', and each level's
    weighted terms ('hr_loss_layer1', 'layer_loss_layer1', 'drop_loss_layer1', ...; not
    L_sel, weighted 0 in HERBS) unweighted too."""
    levels = [f"layer{k + 1}" for k in range(len(section.num_selects))]
    per_level = {n: level_terms(out, labels, t, n) for n in levels}
    terms = {
        f"{term}_loss": sum(per_level[n][term] for n in levels) for term in per_level[levels[0]]
    }
    terms["comb_loss"] = cross_entropy(out["comb_outs"], labels)
    weights = {
        "hr_loss": section.hr_weight,
        "layer_loss": section.layer_weight,
        "drop_loss": section.drop_weight,
        "select_loss": section.select_weight,
        "comb_loss": section.comb_weight,
    }
    total = sum(weights[name] * value for name, value in terms.items())
    for n in levels:
        terms.update({f"{term}_loss_{n}": per_level[n][term] for term in ("hr", "layer", "drop")})
    return total, terms


def vote_heads(num_levels: int) -> list[str]:
    """The 9 voting heads in HERBS' order: layer1, FPN1_layer1, ..., FPN1_layer4, comb_outs."""
    names = [n for k in range(num_levels) for n in (f"layer{k + 1}", f"FPN1_layer{k + 1}")]
    return [*names, "comb_outs"]


def head_probabilities(out: Mapping[str, Array], num_levels: int) -> Array:
    """`[B, H, N]` softmax of every voting head (`vote_heads` order), per-token heads
    averaged over tokens before the softmax (spec 6.1)."""
    probs = []
    for name in vote_heads(num_levels):
        logits = out[name].astype(jnp.float32)
        if logits.ndim == 3:
            logits = jnp.mean(logits, axis=1)
        probs.append(jax.nn.softmax(logits, axis=-1))
    return jnp.stack(probs, axis=1)


# ------------------------------------------------------------------------------ method


class HerbsNet(nn.Module):
    """Backbone taps -> HerbsHead: `[B, H, W, 3]` -> the head's dict of logits."""

    backbone: nn.Module
    head: HerbsHead

    def __call__(self, x: Array, train: bool) -> dict[str, Array]:
        return self.head(self.backbone(x, train), train)


@register
class Herbs(Method):
    name = "herbs"
    view_names = ("view1",)
    partial_batches_ok = True

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        # Spec 5.1 (configs/config.yaml of the original code); key names of the original
        # in the README's table (lambda_b0 = hr_weight, ...).
        return ml_collections.ConfigDict(
            dict(
                fpn_size=1536,
                num_selects=(256, 128, 64, 32),
                tokens_per_node=64,
                comb_dropout=0.1,
                temperature=64.0,
                halve_every=10,
                hr_weight=1.375,
                layer_weight=0.3,
                drop_weight=5.0,
                select_weight=0.0,
                comb_weight=1.0,
            )
        )

    @classmethod
    def default_views(cls):
        # Spec 5.4: Resize((510, 510)) + RandomCrop(384), flip, p = 0.1 Gaussian blur
        # (kernel 5 at 384 px, sigma U(0.1, 5)), p = 0.1 sharpness 1.5; no colour jitter.
        return {
            "view1": dict(
                crop="squash_random_crop",
                squash_size=HERBS_SQUASH_SIZE,
                photometric=PhotometricSpec(
                    jitter_prob=0.0,
                    grayscale_prob=0.0,
                    blur_prob=0.1,
                    blur_sigma=(0.1, 5.0),
                    blur_kernel_fraction=5 / 384,
                    solarize_prob=0.0,
                    sharpness_prob=0.1,
                    sharpness_factor=1.5,
                ),
            )
        }

    def __init__(self, config, run):
        super().__init__(config, run)
        if arch_family(config.model.arch) != "swin":
            raise ValueError(
                f"config.method='herbs' needs a Swin backbone (its stage taps layer1..4), "
                f"got config.model.arch={config.model.arch!r}"
            )
        s = self.section
        self.net = HerbsNet(
            backbone=backbone_from_config(config.model),
            head=HerbsHead(
                num_classes=run.num_classes,
                fpn_size=s.fpn_size,
                num_selects=tuple(s.num_selects),
                tokens_per_node=s.tokens_per_node,
                comb_dropout=s.comb_dropout,
                dtype=self.backbone().dtype,
            ),
        )
        # One function object, so the feature extractor compiles it once.
        self._eval_probs = lambda state, images: self.probabilities(
            state.params, state.model_state, images
        )

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        s = self.section
        out, model_state = apply_train(
            self.net, params, model_state, views["view1"], rngs={"dropout": rng}
        )
        t = temperature(ctx.epoch, s.temperature, s.halve_every)
        labels = batch["label"]
        loss, terms = herbs_loss(out, labels, t, s)
        metrics = {
            "loss": loss,
            **terms,
            "temperature": t,
            "accuracy": accuracy(out["comb_outs"], labels),
        }
        return loss, LossAux(model_state, metrics, {})

    def embed(self, params: Any, model_state: Any, images: Array) -> Array:
        """Eval-mode mean over tokens of the last Swin tap `[B, C_L]` float32 (the head's
        input; Swin's final LayerNorm is not part of HERBS)."""
        taps = self.backbone().apply({"params": params["backbone"]}, images, train=False)
        last = max(int(k[len("layer") :]) for k in taps if k.startswith("layer"))
        return jnp.mean(taps[f"layer{last}"].astype(jnp.float32), axis=1)

    def probabilities(self, params: Any, model_state: Any, images: Array) -> Array:
        """Eval-mode `[B, 9 * N]`: the voting heads' softmaxes (`vote_heads` order), flat."""
        out = self.net.apply({"params": params, **model_state}, images, train=False)
        probs = head_probabilities(out, len(self.section.num_selects))
        return probs.reshape(probs.shape[0], -1)

    def load_weights(
        self, tensors: Mapping[str, Any], params: Any, model_state: Any
    ) -> tuple[Any, Any, Any]:
        """A HERBS `best.pt` (head keys beside `backbone.*`) fills the Swin AND the head,
        running statistics included, and must match the model exactly (any missing,
        unexpected or mismatched tensor is an error); any other file fills the Swin only
        (`Method.load_weights`)."""
        if not is_herbs_checkpoint(tensors):
            return super().load_weights(tensors, params, model_state)
        target = {"params": params, **model_state}
        variables, report = herbs_variables_from_torch(tensors, target)
        if not report.ok:
            raise ValueError(
                "the HERBS checkpoint does not fit this model"
                f"{self._class_count_hint(tensors)}:\n{report}"
            )
        params = variables.pop("params")
        return params, variables, report

    def _class_count_hint(self, tensors: Mapping[str, Any]) -> str:
        """A sentence on differing class counts of the checkpoint and the data (the usual
        mismatch: a best.pt of another dataset), or ''."""
        key = "combiner.classifier.weight"
        classes = np.shape(tensors[key])[0] if key in tensors else self.run.num_classes
        if classes == self.run.num_classes:
            return ""
        d = self.config.data
        return (
            f" ({key} classifies {classes} classes, config.data {d.kind}/{d.train_split} "
            f"has {self.run.num_classes}; to start only its Swin, convert that first: "
            f"fgjax weights convert best.pt swin.npz --arch {self.config.model.arch})"
        )

    def evaluators(self):
        return {"herbs": self._evaluate}

    def _evaluate(self, state: Any, tools: Any) -> dict[str, float]:
        """Test-split top-1/top-5 of the 9-head vote (`vote/`, with HERBS' outer errors for
        `config.eval.class_groups`), top-1 of the combiner and of every head. The test
        split must have the train split's classes (those of the head) in the same order."""
        check_same_classes(tools.sources, self.config, "herbs")
        groups = class_groups(self.config)
        out = tools.extract("test", self._eval_probs, state)
        heads = vote_heads(len(self.section.num_selects))
        probs = np.asarray(out.features).reshape(len(out.labels), len(heads), -1)
        results = {
            f"vote/{k}": v
            for k, v in classification_metrics(
                probs.sum(axis=1), out.labels, ks=(1, 5), groups=groups
            ).items()
        }
        for h, name in enumerate(heads):
            results[f"{name}/top1"] = classification_metrics(probs[:, h], out.labels, ks=(1,))[
                "top1"
            ]
        return results
