"""HERBS (fgjax/methods/herbs.py) against numpy and ../shared/methods/herbs.md.

Every loss term is recomputed in numpy on fixed random logits with the spec's section-4
reductions; one real jitted step of a tiny 2-stage Swin HERBS (2 accumulated
micro-batches, at an epoch where T has halved) reports the loss numpy computes from the
network's own train-mode outputs and applies the mean of the two micro-batch gradients;
the CUB recipe is checked against the spec's section-5.1 table and 5.2 schedule.
"""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, jitted_step, normalized, random_batch, run_info, tiny_config
from numpy_refs import log_softmax

from fgjax.config import load_config_file, photometric_config
from fgjax.core.sharding import global_batch
from fgjax.data.augment import no_augment_spec
from fgjax.data.train_loader import steps_per_epoch
from fgjax.methods import backbone_variables, replace_backbone
from fgjax.methods.herbs.method import (
    head_probabilities,
    herbs_loss,
    layer_loss,
    refinement_loss,
    selection_loss,
    suppression_loss,
    temperature,
)
from fgjax.train import optim

# Spec section 4 / 5.1 weights: lambda_b0, lambda_b, lambda_n, lambda_s, lambda_c.
SPEC_WEIGHTS = dict(hr=1.375, layer=0.3, drop=5.0, select=0.0, comb=1.0)
B, SIZE, CLASSES, SELECTS = 8, 32, 4, (4, 2)


def _ce(logits, labels):
    return -np.mean(log_softmax(logits)[np.arange(len(labels)), labels])


def _kl_every_element(teacher, student, t):
    log_p, log_q = log_softmax(teacher / t), log_softmax(student / t)
    return np.sum(np.exp(log_p) * (log_p - log_q)) / teacher.size


def _numpy_herbs(out, labels, t, weights=SPEC_WEIGHTS, selects=SELECTS):
    """Spec section 4 from the refined / first-pass logits and comb_outs alone: the
    selector's token split is redone here (predicted class, softmax confidence, top K)."""
    terms = dict(hr=0.0, layer=0.0, drop=0.0, select=0.0)
    for k, keep in enumerate(selects):
        up, down = out[f"layer{k + 1}"], out[f"FPN1_layer{k + 1}"]
        terms["hr"] += _kl_every_element(up, down, t)
        terms["layer"] += _ce(up.mean(1), labels)
        conf = np.exp(log_softmax(up))[np.arange(len(up)), :, up.mean(1).argmax(-1)]
        order = np.argsort(-conf, axis=1, kind="stable")
        dropped = np.take_along_axis(up, order[:, keep:, None], axis=1)
        selected = np.take_along_axis(up, order[:, :keep, None], axis=1)
        terms["drop"] += np.mean((np.tanh(dropped) + 1) ** 2)
        terms["select"] += _ce(selected.reshape(-1, up.shape[-1]), np.repeat(labels, keep))
    terms["comb"] = _ce(out["comb_outs"], labels)
    return sum(weights[k] * v for k, v in terms.items()), terms


def _section(**fields):
    section = tiny_config("herbs").herbs
    section.update(fields)
    return section


# ------------------------------------------------------------------ (a) the terms


def test_temperature_halves_every_10_epochs_from_64():
    epochs = np.array([0, 9.99, 10, 19.5, 20, 35, 79, 79.9])
    got = np.asarray(jax.jit(temperature)(jnp.asarray(epochs)))
    np.testing.assert_array_equal(got, [64, 64, 32, 32, 16, 8, 0.5, 0.5])
    per_decade = [float(temperature(e)) for e in range(0, 80, 10)]
    assert per_decade == [64, 32, 16, 8, 4, 2, 1, 0.5]  # spec section 4
    assert float(temperature(25.0, start=4.0, halve_every=5)) == 4.0 / 32


def test_refinement_is_every_element_mean_kl_at_t_without_t2_teacher_refined():
    rng = np.random.default_rng(0)
    up, down = rng.normal(size=(2, 2, 3, 5)) * np.array([3.0, 0.5])[:, None, None, None]
    for t in (1.0, 4.0):
        got = float(refinement_loss(jnp.asarray(up), jnp.asarray(down), t))
        np.testing.assert_allclose(got, _kl_every_element(up, down, t), rtol=1e-5)
    # The teacher is the refined path: the reverse KL is another number ...
    forward, reverse = _kl_every_element(up, down, 1.0), _kl_every_element(down, up, 1.0)
    assert abs(reverse - forward) > 0.1 * forward
    # ... and it is detached: only the first-pass logits get a gradient.
    g_up, g_down = jax.grad(refinement_loss, argnums=(0, 1))(
        jnp.asarray(up), jnp.asarray(down), 4.0
    )
    assert not np.any(np.asarray(g_up)) and np.abs(np.asarray(g_down)).max() > 1e-4


def test_layer_suppression_and_selection_terms_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 6, 5)) * 2
    labels = np.array([0, 4, 2])
    np.testing.assert_allclose(
        float(layer_loss(jnp.asarray(logits), jnp.asarray(labels))),
        _ce(logits.mean(1), labels),  # tokens averaged BEFORE the CE
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(suppression_loss(jnp.asarray(logits))),
        np.sum((np.tanh(logits) - (-1)) ** 2) / logits.size,
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(selection_loss(jnp.asarray(logits), jnp.asarray(labels))),
        _ce(logits.reshape(18, 5), np.repeat(labels, 6)),
        rtol=1e-5,
    )


def _random_outputs(rng, batch=3, tokens=(6, 5), selects=SELECTS, classes=5):
    out = {}
    for k, (s, keep) in enumerate(zip(tokens, selects, strict=True)):
        up = rng.normal(size=(batch, s, classes)) * 2
        out[f"FPN1_layer{k + 1}"] = rng.normal(size=(batch, s, classes)) * 2
        out[f"layer{k + 1}"] = up
        conf = np.exp(log_softmax(up))[np.arange(batch), :, up.mean(1).argmax(-1)]
        order = np.argsort(-conf, axis=1)
        out[f"select_layer{k + 1}"] = np.take_along_axis(up, order[:, :keep, None], axis=1)
        out[f"drop_layer{k + 1}"] = np.take_along_axis(up, order[:, keep:, None], axis=1)
    out["comb_outs"] = rng.normal(size=(batch, classes)) * 2
    return out


@pytest.mark.parametrize("select_weight", [0.0, 0.5])
def test_total_weights_every_term_as_the_spec(select_weight):
    rng = np.random.default_rng(2)
    out, labels = _random_outputs(rng), np.array([1, 3, 0])
    section = _section(num_selects=SELECTS, select_weight=select_weight)
    total, terms = herbs_loss(
        {k: jnp.asarray(v) for k, v in out.items()}, jnp.asarray(labels), 2.0, section
    )
    weights = {**SPEC_WEIGHTS, "select": select_weight}
    want, want_terms = _numpy_herbs(out, labels, 2.0, weights)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    for name, value in want_terms.items():
        np.testing.assert_allclose(float(terms[f"{name}_loss"]), value, rtol=1e-5)


def test_vote_probabilities_are_token_averaged_softmaxes_in_herbs_order():
    out = _random_outputs(np.random.default_rng(3))
    got = np.asarray(head_probabilities({k: jnp.asarray(v) for k, v in out.items()}, 2))
    order = ["layer1", "FPN1_layer1", "layer2", "FPN1_layer2", "comb_outs"]
    for h, name in enumerate(order):
        logits = out[name] if out[name].ndim == 2 else out[name].mean(1)
        np.testing.assert_allclose(got[:, h], np.exp(log_softmax(logits)), rtol=1e-5)


# ------------------------------------------------------------------ (b, c) a real step


def _tiny_herbs_config(accumulate_steps=2):
    c = tiny_config("herbs")
    c.model.arch = "swin_tiny_patch4_window7_224"
    c.model.overrides = ml_collections.ConfigDict(
        dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=SIZE)
    )
    c.model.drop_path_rate = 0.0
    c.data.image_size = SIZE
    # Taps of 16 tokens at both levels; 6 selected tokens make 2 graph nodes.
    c.herbs.update(fpn_size=8, num_selects=SELECTS, tokens_per_node=3, comb_dropout=0.0)
    c.herbs.temperature = 4.0  # T = 2 at the step's epoch 10: exercises the division and halving
    c.views.view1.photometric = photometric_config(no_augment_spec())
    c.optim.update(momentum=0.0, weight_decay=0.0)
    c.train.batch_size = B
    c.train.accumulate_steps = accumulate_steps
    return c


@pytest.fixture(scope="module")
def stepped():
    """One jitted step at epoch 10 (steps_per_epoch 2, step 20) with 2 micro-batches, and
    each micro-batch's train-mode outputs under the step's parameters (float64)."""
    config = _tiny_herbs_config()
    run = run_info(config, num_classes=CLASSES, steps_per_epoch=2, num_epochs=20)
    method, state, frozen, step, mesh = jitted_step(config, run, lambda s: 0.1)
    state = state.replace(step=jnp.asarray(20, jnp.int32))
    before = jax.device_get(state)
    batch = random_batch(np.random.default_rng(0), ("view1",), B, SIZE, CLASSES)
    after, metrics = step(state, frozen, global_batch(batch, mesh))
    x = normalized(batch["views"]["view1"], config.views.view1.photometric)
    forward = jax.jit(
        lambda p, s, x: method.net.apply({"params": p, **s}, x, train=True, mutable=list(s))[0]
    )
    # The trainer's micro-batch a holds examples a, a + 2, ...
    micro = [
        (
            {
                k: np.asarray(v, np.float64)
                for k, v in forward(before.params, before.model_state, x[a::2]).items()
            },
            batch["label"][a::2],
        )
        for a in range(2)
    ]
    return before, jax.device_get(after), metrics, micro


def test_one_step_reports_numpys_loss_of_the_networks_outputs(stepped):
    _, _, metrics, micro = stepped
    assert float(metrics["temperature"]) == 2.0  # 4 * 0.5^floor(10 / 10)
    assert micro[0][0]["drop_layer1"].shape == (B // 2, 16 - SELECTS[0], CLASSES)
    per_micro = [_numpy_herbs(out, labels, 2.0) for out, labels in micro]
    total = np.mean([t for t, _ in per_micro])
    np.testing.assert_allclose(float(metrics["loss"]), total, rtol=1e-4)
    for name in SPEC_WEIGHTS:
        want = np.mean([terms[name] for _, terms in per_micro])
        np.testing.assert_allclose(float(metrics[f"{name}_loss"]), want, rtol=1e-4, atol=1e-7)
    hr = np.mean([terms["hr"] for _, terms in per_micro])
    assert hr > 1e-4 and SPEC_WEIGHTS["hr"] * hr / total > 1e-4  # L_HR shows in the total


def _bias_gradients(out, labels, t, w=SPEC_WEIGHTS):
    """d loss / d the last bias of the combiner and of every token classifier, by hand:
    each bias adds to its logits only, so its gradient sums d loss / d logits."""
    onehot = np.eye(CLASSES)[labels]
    grads = {
        ("combiner", "classifier"): w["comb"]
        * np.mean(np.exp(log_softmax(out["comb_outs"])) - onehot, 0)
    }
    for k in range(len(SELECTS)):
        up, down, dropped = (out[f"{p}layer{k + 1}"] for p in ("", "FPN1_", "drop_"))
        ce = np.mean(np.exp(log_softmax(up.mean(1))) - onehot, 0)  # mean_s(up + b) = .. + b
        th = np.tanh(dropped)
        mse = np.sum(2 * (th + 1) * (1 - th**2), (0, 1)) / dropped.size
        grads[(f"fpn_classifier_up_layer{k + 1}", "3")] = w["layer"] * ce + w["drop"] * mse
        # KL with a detached teacher: d/d student = (q - p) / T per element, / B*S*N.
        q, p = np.exp(log_softmax(down / t)), np.exp(log_softmax(up / t))
        grads[(f"fpn_classifier_down_layer{k + 1}", "3")] = (
            w["hr"] * np.sum(q - p, (0, 1)) / (t * up.size)
        )
    return grads


def test_accumulated_update_is_the_mean_of_the_micro_batch_gradients(stepped):
    """Spec 5.3: each micro-batch's loss / 4 (here 2), summed, each micro-batch with its
    own BatchNorm batch. The update of every classifier bias (SGD, lr 0.1) against its
    gradient by hand, which also pins the KL's gradient scale (1/T, no T^2) and that the
    refined classifiers get no gradient from it."""
    before, after, metrics, micro = stepped
    per_micro = [_bias_gradients(out, labels, 2.0) for out, labels in micro]
    head_before, head_after = before.params["head"], after.params["head"]
    for module, layer in per_micro[0]:
        want = -0.1 * np.mean([g[(module, layer)] for g in per_micro], 0)
        got = head_after[module][layer]["bias"] - head_before[module][layer]["bias"]
        assert np.abs(want).max() > 1e-5, module
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-8, err_msg=module)
    moved = sum(
        not np.allclose(a, b)
        for a, b in zip(*(jax.tree.leaves(s.params) for s in (after, before)), strict=True)
    )
    assert moved > 20 and float(metrics["skipped"]) == 0.0
    # Only the head has BatchNorm statistics (updated once per micro-batch).
    assert set(after.model_state["batch_stats"]) == {"head"}


def test_backbone_variables_of_a_swin_with_a_batchnorm_head(stepped):
    before = stepped[0]
    variables = backbone_variables(before.params, before.model_state)
    assert set(variables) == {"params"}  # no batch_stats for the Swin
    params, model_state = replace_backbone(before.params, before.model_state, variables)
    assert model_state == before.model_state and params["head"] is before.params["head"]


# ------------------------------------------------------------------ (d) the recipe


def test_cub_recipe_equals_spec_section_5_1():
    c = load_config_file(os.path.join(REPO, "configs", "cub_herbs.py"))
    assert c.method == "herbs" and c.data.kind == "cub" and c.data.image_size == 384
    assert c.model.arch == "swin_large_patch4_window12_384" and c.model.drop_path_rate == 0.1
    h = c.herbs
    assert (h.fpn_size, tuple(h.num_selects), h.tokens_per_node, h.comb_dropout) == (
        1536,
        (256, 128, 64, 32),
        64,
        0.1,
    )
    weights = (h.hr_weight, h.layer_weight, h.drop_weight, h.select_weight, h.comb_weight)
    assert weights == tuple(SPEC_WEIGHTS.values())
    assert (h.temperature, h.halve_every) == (64, 10)
    o = c.optim
    assert (o.name, o.lr, o.lr_batch_reference, o.momentum, o.nesterov) == (
        "sgd",
        5e-4,
        0,
        0.9,
        True,
    )
    assert (o.weight_decay, o.weight_decay_mask, tuple(o.freeze)) == (3e-4, "all", ())
    assert (c.train.batch_size, c.train.accumulate_steps, c.train.num_epochs) == (32, 4, 80)
    view = c.views.view1
    assert (view.crop, view.squash_size) == ("squash_random_crop", 510)  # spec 5.4
    p = view.photometric
    assert (p.sharpness_prob, p.sharpness_factor) == (0.1, 1.5)
    assert (p.jitter_prob, p.grayscale_prob, p.solarize_prob) == (0, 0, 0)
    assert (p.blur_prob, tuple(p.blur_sigma)) == (0.1, (0.1, 5.0))
    from fgjax.data.augment import blur_kernel_size

    assert blur_kernel_size(384, p.blur_kernel_fraction) == 5
    assert tuple(p.mean) == (0.485, 0.456, 0.406) and tuple(p.std) == (0.229, 0.224, 0.225)


def herbs_lr_at_optimiser_steps(num_train: int, peak: float = 5e-4) -> list[float]:
    """HERBS as written (spec 5.2, 5.3): the lr set before every micro-batch of 8 by
    utils/lr_schedule.py (np.linspace warm-up over 1500, cosine over T_tot = 80 N_b), read at
    each optimiser step (after every 4th micro-batch and the epoch's last), for 80 epochs."""
    n_b = math.ceil(num_train / 8)
    total, warm = 80 * n_b, 1500
    ramp = np.linspace(1e-9, peak, warm)
    out = []
    for epoch in range(80):
        for batch_id in range(n_b):
            it = epoch * n_b + batch_id
            if it < warm:
                lr = ramp[it]
            else:
                lr = 1e-12 + 0.5 * (peak - 1e-12) * (1 + math.cos(math.pi * (it - warm) / total))
            if (batch_id + 1) % 4 == 0 or batch_id + 1 == n_b:
                out.append(lr)
    return out


@pytest.mark.parametrize(("recipe", "num_train"), [("cub", 5994), ("nabirds", 23929)])
def test_recipe_schedule_is_herbs_lr_at_every_optimiser_step(recipe, num_train):
    """Every optimiser step of the 80 epochs, the epochs' ragged last steps included (CUB:
    188 steps per epoch, the last ending at micro-batch 750), against HERBS' loop."""
    c = load_config_file(os.path.join(REPO, "configs", f"{recipe}_herbs.py"))
    assert c.train.keep_last_batch and (c.train.batch_size, c.train.accumulate_steps) == (32, 4)
    per_epoch = steps_per_epoch(num_train, 32, keep_last=True)
    sched = optim.make_schedule(c.optim, 32, per_epoch, 80, 4, math.ceil(num_train / 8))
    want = herbs_lr_at_optimiser_steps(num_train)
    assert len(want) == 80 * per_epoch
    got = np.asarray(jax.jit(jax.vmap(sched))(np.arange(len(want))))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=5e-11)  # float32 cosine
    final = {"cub": 7.7e-7, "nabirds": 4.9e-8}[recipe]  # spec 5.2
    assert got[-1] == pytest.approx(final, rel=0.02)


def test_nabirds_recipe_is_the_cub_recipe_with_a_1500_micro_batch_warmup():
    cub = load_config_file(os.path.join(REPO, "configs", "cub_herbs.py"))
    nabirds = load_config_file(os.path.join(REPO, "configs", "nabirds_herbs.py"))
    assert (nabirds.data.kind, nabirds.eval.class_groups) == ("nabirds", "")
    assert nabirds.optim.warmup_epochs * math.ceil(23929 / 8) == pytest.approx(1500)
    for c in (cub, nabirds):
        c.data, c.eval, c.optim.warmup_epochs = cub.data, cub.eval, 0.0
    assert nabirds.to_dict() == cub.to_dict()  # nothing else differs
