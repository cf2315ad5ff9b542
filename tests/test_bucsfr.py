"""BuCSFR (shared/methods/bucsfr.md): the SFR loss against numpy, one jitted step against numpy
on the same encoder outputs, the BuC epoch hook against `buc_step` on the key encoder's
projections, and a run that survives kill-and-resume bit-identically."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jitted_step, run_info, tiny_config
from numpy_refs import log_softmax, unit64

from fgjax.config import photometric_config
from fgjax.core.sharding import global_batch, make_mesh
from fgjax.data.augment import no_augment_spec
from fgjax.data.datasets import build_source
from fgjax.eval.features import FeatureExtractor
from fgjax.methods.bucsfr import sfr
from fgjax.methods.bucsfr.buc import buc_step
from fgjax.train.loop import train_and_evaluate
from fgjax.train.metrics_log import read_metrics

B, K, D = 8, 32, 8


def _numpy_sfr(
    q, k, queue, queue_coarse, coarse, anchors, centroids, live, uniforms, t, t_proto, t_pos
):
    """The spec's 4.3 steps 1-9 in float64, given the two [B, K] uniform draws."""
    scores = queue @ centroids[:live].T / t_proto  # [K, C]
    posterior = np.exp(log_softmax(scores))[:, anchors].T  # [B, K]: P_j(a_i)
    same = (queue_coarse[None, :] == coarse[:, None]).astype(np.float64)

    def normalised(x):
        top = x.max(1, keepdims=True)
        return np.divide(x, top, out=np.zeros_like(x), where=top > 0)

    m_pos = uniforms[0] < np.clip(normalised(posterior * same), 0, 0.999)
    m_neg = uniforms[1] < np.clip(normalised((1 - posterior) * same), 0, 0.999)
    mask = m_neg + (1 - same) + m_pos
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), (q @ queue.T) * mask], 1) / t
    sim = k @ queue.T / t_pos
    weights = np.zeros_like(sim)
    for i in range(len(q)):
        if m_pos[i].any():
            weights[i, m_pos[i]] = np.exp(sim[i, m_pos[i]] - sim[i, m_pos[i]].max())
    targets = np.concatenate([np.ones((len(q), 1)), weights], 1)
    targets /= targets.sum(1, keepdims=True)
    loss = -np.mean(np.sum(targets * log_softmax(logits), 1))
    return loss, logits, targets, mask, m_pos


def _uniforms(key):
    pos_key, neg_key = jax.random.split(key)
    return np.stack([np.asarray(jax.random.uniform(kk, (B, K))) for kk in (pos_key, neg_key)])


def test_sfr_loss_equals_numpy_on_a_toy_queue():
    rng = np.random.default_rng(5)
    q, k, queue = (unit64(rng.normal(size=s)) for s in ((B, D), (B, D), (K, D)))
    k = unit64(q + 0.5 * k)  # keys near their queries, as after training
    live, c_max = 5, 7
    centroids = np.zeros((c_max, D))
    centroids[:live] = unit64(queue[:live] + 0.3 * rng.normal(size=(live, D)))
    queue_coarse = rng.integers(0, 2, K)
    coarse = np.array([0, 1, 0, 1, 0, 1, 0, 2])  # coarse class 2 is not in the queue
    anchors = rng.integers(0, live, B)
    key = jax.random.PRNGKey(3)
    t, t_proto, t_pos = 0.2, 0.1, 0.07  # t_proto 0.1 (not 0.01): posteriors not one-hot

    posterior = sfr.anchor_posterior(
        jnp.asarray(queue, jnp.float32),
        jnp.asarray(centroids, jnp.float32),
        live,
        jnp.asarray(anchors),
        t_proto,
    )
    selection = sfr.sample_selection(key, posterior, jnp.asarray(queue_coarse), jnp.asarray(coarse))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    loss, logits, targets = sfr.soft_target_contrastive(
        f32(q), f32(k), f32(queue), selection, t, t_pos
    )
    want = _numpy_sfr(
        q,
        k,
        queue,
        queue_coarse,
        coarse,
        anchors,
        centroids,
        live,
        _uniforms(key),
        t,
        t_proto,
        t_pos,
    )
    np.testing.assert_allclose(float(loss), want[0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), want[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(targets), want[2], rtol=1e-4, atol=1e-6)
    mask, m_pos = want[3], want[4]
    np.testing.assert_array_equal(np.asarray(selection.positive), m_pos)
    # The toy exercises every case: masks 0, 1 and 2, soft positives, the guarded row.
    assert {0.0, 1.0, 2.0} <= set(np.unique(mask)) and m_pos[:7].any(axis=1).sum() >= 3
    assert not m_pos[7].any() and (mask[7] == 1).all()  # no same-coarse entry: plain MoCo row
    np.testing.assert_allclose(np.asarray(targets)[7], np.eye(K + 1)[0])

    # Gradients reach the queries only.
    grads = jax.grad(
        lambda q_, k_, Q_: sfr.soft_target_contrastive(q_, k_, Q_, selection, t, t_pos)[0],
        argnums=(0, 1, 2),
    )(f32(q), f32(k), f32(queue))
    assert np.abs(grads[0]).max() > 0 and not np.any(grads[1]) and not np.any(grads[2])


def _config():
    c = tiny_config("bucsfr")
    s = c.bucsfr
    s.hidden_dim, s.dim, s.queue_size, s.bn_groups = 16, D, K, 1
    s.temperature = 0.3  # not the default 0.2: a hard-coded T fails
    s.prototype_temperature = 0.05
    s.clusters_per_coarse = 3
    s.warmup_epochs = 1
    s.alpha = 0.7  # not 0.5: swapping the two weights fails
    c.data.procedural.fine_per_coarse = 4  # 2 training fine classes per coarse class
    c.train.batch_size = B
    for view in c.views.values():
        view.photometric = photometric_config(no_augment_spec())
    return c


def _forward(method, params, model_state, x):
    variables = {"params": params, **model_state}
    out, _ = method.net.apply(variables, x, train=True, mutable=list(model_state))
    return out


def test_bucsfr_step_equals_numpy_on_the_same_encoder_outputs():
    config = _config()
    s = config.bucsfr
    run = run_info(config, steps_per_epoch=4)
    method, state, frozen, step, mesh = jitted_step(config, run, lambda _: 0.1)
    rng = np.random.default_rng(1)
    n, c_max = run.num_train_examples, method.max_clusters
    live = 5
    centroids = np.zeros((c_max, D), np.float32)
    centroids[:live] = unit64(rng.normal(size=(live, D)))
    clustered = {
        "clustered": np.ones((), np.int32),
        "clusters_per_class": np.array([3, 2], np.int32),
        "im2cluster": rng.integers(0, live, n).astype(np.int32),
        "centroids": centroids,
        "queue_coarse": rng.integers(0, 2, K).astype(np.int32),
    }
    state = state.replace(method_state={**state.method_state, **clustered})
    before = jax.device_get(state)
    images = rng.integers(0, 256, (B, 2, 16, 16, 3), dtype=np.uint8)
    batch = {
        "views": {"view1": images[:, 0], "view2": images[:, 1]},
        "label": np.zeros(B, np.int32),
        "coarse_label": np.array([0, 1, 1, 0, 1, 0, 0, 1], np.int32),
        "index": rng.permutation(n)[:B].astype(np.int32),
    }
    after, metrics = jax.device_get(step(state, frozen, global_batch(batch, mesh)))

    spec = config.views.view1.photometric
    x1, x2 = (
        ((images[:, v] / 255.0 - np.array(spec.mean)) / np.array(spec.std)).astype(np.float32)
        for v in (0, 1)
    )
    m = before.method_state
    key_params = jax.tree.map(
        lambda t, o: s.momentum * t + (1 - s.momentum) * o, m["key_params"], before.params
    )
    out = _forward(method, before.params, before.model_state, x1)
    q = unit64(out["proj"])
    k = unit64(_forward(method, key_params, m["key_model_state"], x2)["proj"])
    # The step's randomness: fold_in(rng, step) -> (aug, loss); loss -> fold_in 0 -> (key, select).
    loss_rng = jax.random.split(jax.random.fold_in(before.rng, before.step))[1]
    select_rng = jax.random.split(jax.random.fold_in(loss_rng, 0))[1]
    contrastive = _numpy_sfr(
        q,
        k,
        np.asarray(m["queue"], np.float64),
        m["queue_coarse"],
        batch["coarse_label"],
        m["im2cluster"][batch["index"]],
        centroids.astype(np.float64),
        live,
        _uniforms(select_rng),
        s.temperature,
        s.prototype_temperature,
        s.positive_temperature,
    )[0]
    logits = np.asarray(out["logits"], np.float64)
    coarse_ce = -np.mean(log_softmax(logits)[np.arange(B), batch["coarse_label"]])
    np.testing.assert_allclose(float(metrics["contrastive_loss"]), contrastive, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["coarse_ce"]), coarse_ce, rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["loss"]), s.alpha * contrastive + (1 - s.alpha) * coarse_ce, rtol=1e-4
    )
    # Keys of view 2 and their coarse labels are enqueued together at the pointer.
    np.testing.assert_allclose(after.method_state["queue"][:B], k, atol=1e-5)
    np.testing.assert_array_equal(after.method_state["queue_coarse"][:B], batch["coarse_label"])
    np.testing.assert_array_equal(after.method_state["queue_coarse"][B:], m["queue_coarse"][B:])
    np.testing.assert_array_equal(after.method_state["im2cluster"], m["im2cluster"])

    # Before the first BuC step (warm-up) the same step is alpha InfoNCE + (1 - alpha) CE.
    warm = state.replace(method_state={**state.method_state, "clustered": np.zeros((), np.int32)})
    _, metrics = jax.device_get(step(warm, frozen, global_batch(batch, mesh)))
    queue = np.asarray(m["queue"], np.float64)
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], 1) / s.temperature
    info_nce = -np.mean(log_softmax(logits)[:, 0])
    np.testing.assert_allclose(float(metrics["contrastive_loss"]), info_nce, rtol=1e-4)
    assert abs(info_nce - contrastive) > 1e-2 and float(metrics["positives"]) == 0


def test_bucsfr_hook_clusters_the_key_encoders_projections_inside_each_coarse_class(capsys):
    config = _config()
    source = build_source(config.data, "train")
    run = run_info(config, steps_per_epoch=len(source) // B)
    run = run.__class__(**{**run.__dict__, "num_train_examples": len(source)})
    method, state, *_ = jitted_step(config, run)
    # Move the key encoder away from the query encoder: clustering the wrong one fails.
    moved = jax.tree.map(lambda p: p * 1.5 + 0.01, state.method_state["key_params"])
    state = state.replace(method_state={**state.method_state, "key_params": moved})
    spec = config.views.view1.photometric
    tools = FeatureExtractor(
        {"train": source},
        make_mesh(),
        image_size=16,
        batch_size=8,
        mean=spec.mean,
        std=spec.std,
        show_progress=False,
    )
    assert method.on_epoch_start(0, state, tools) is None  # warm-up: no clusters yet
    update = method.on_epoch_start(1, state, tools)

    def key_encoder(st, images):  # written here independently of the method's
        m = st.method_state
        variables = {"params": m["key_params"], **m["key_model_state"]}
        return method.net.apply(variables, images, train=False)["proj"]

    proj = tools.extract("train", key_encoder, state).features
    coarse = np.asarray(source.coarse_labels)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x42554321), 1)
    want = jax.device_get(
        buc_step(
            unit64(proj),
            coarse,
            np.array([3, 3]),
            key,
            threshold=config.bucsfr.merge_threshold,
            k_max=3,
            n_max=16,
        )
    )
    np.testing.assert_array_equal(update.state["im2cluster"], want[0])
    np.testing.assert_allclose(update.state["centroids"], want[1], atol=1e-5)
    np.testing.assert_array_equal(update.state["clusters_per_class"], want[2])
    assert update.metrics["buc/clusters"].tolist() == want[2].tolist()
    assert update.metrics["buc/merges"] == int(want[3].sum())
    ratios = update.metrics["buc/best_ratio"]  # merged iff below T
    np.testing.assert_array_equal(ratios < config.bucsfr.merge_threshold, want[3])
    # Clusters never span two coarse classes (global ids are class blocks).
    offsets = np.concatenate([[0], np.cumsum(want[2])])
    for c in (0, 1):
        ids = update.state["im2cluster"][coarse == c]
        assert offsets[c] <= ids.min() and ids.max() < offsets[c + 1]
    assert 0.0 <= update.metrics["buc/nmi"] <= 1.0
    total = int(want[2].sum())
    assert f"epoch 1 BuC: {total} leaves, {int(want[3].sum())} merged" in capsys.readouterr().out


def _run_config():
    c = _config()
    c.bucsfr.merge_threshold = 50.0  # merges happen at this size
    c.train.num_epochs = 3
    c.eval.enabled = False
    return c


@pytest.mark.parametrize("stop_at", [5, 8])  # mid-epoch 1, and the boundary before epoch 2
def test_bucsfr_run_logs_the_dendrogram_and_resumes_bit_identically(
    tmp_path, stop_at, module_compilation_cache
):
    config = _run_config()
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    interrupted = config.copy_and_resolve_references()
    interrupted.train.max_steps = stop_at
    train_and_evaluate(interrupted, str(tmp_path / "resumed"))
    resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
    a, b = (jax.device_get(r["state"]) for r in (straight, resumed))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

    records = {r["step"]: r for r in read_metrics(str(tmp_path / "straight"))}
    per_epoch = 4
    clusters = [records[e * per_epoch]["buc/clusters"] for e in (1, 2)]
    merges = [records[e * per_epoch]["buc/merges"] for e in (1, 2)]
    assert not any("buc/clusters" in records[s] for s in range(1, per_epoch))  # warm-up
    assert sum(clusters[0]) == 6 - merges[0]  # 3 leaves per coarse class at the start
    assert sum(clusters[1]) == sum(clusters[0]) - merges[1]  # leaf counts carry over
    assert 0 < merges[0] <= 2 and a.method_state["clusters_per_class"].tolist() == clusters[1]
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["method"] == "bucsfr"


@pytest.mark.parametrize(
    "recipe, coarse, leaves, threshold",
    [
        ("cifar100_bucsfr.py", 20, 25, 2.0),
        ("cars_bucsfr.py", 8, 125, 1.1),
        ("cub_bucsfr.py", 24, 40, 1.1),
    ],
)
def test_recipes_have_the_spec_constants_and_full_size_shapes(recipe, coarse, leaves, threshold):
    """Traced only (jax.eval_shape): ResNet-50 at 224 px, the spec's head, classifier, queue
    and cluster state for the recipe's dataset (section 6.1)."""
    import os

    from conftest import REPO

    from fgjax.config import load_config_file
    from fgjax.methods import RunInfo, build_method

    c = load_config_file(os.path.join(REPO, "configs", recipe))
    s = c.bucsfr
    assert (s.clusters_per_coarse, s.merge_threshold, s.warmup_epochs) == (leaves, threshold, 10)
    assert (s.dim, s.queue_size, s.momentum, s.temperature, s.bn_groups) == (
        128,
        65536,
        0.999,
        0.2,
        2,
    )
    assert (c.optim.lr, c.optim.schedule_unit, c.train.batch_size, c.train.num_epochs) == (
        0.03,
        "epoch",
        256,
        100,
    )
    assert tuple(c.eval.recall_ks) == tuple(c.eval.knn_ks) == (1, 2, 5, 10, 50, 100, 200)
    run = RunInfo(31, 3100, 256, 196, coarse, 8144)
    method = build_method(c, run)
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    params, model_state = jax.eval_shape(
        lambda x: method.init_variables(jax.random.PRNGKey(0), x.shape), images
    )
    state = jax.eval_shape(
        lambda p, m: method.init_state(p, m, jax.random.PRNGKey(1)), params, model_state
    )
    assert params["classifier"]["kernel"].shape == (2048, coarse)
    assert params["projector"]["fc1"]["kernel"].shape == (2048, 128)
    assert state["centroids"].shape == (coarse * leaves, 128)
    assert state["queue"].shape == (65536, 128) and state["queue_coarse"].shape == (65536,)
    assert state["im2cluster"].shape == (8144,) and state["clusters_per_class"].shape == (coarse,)
