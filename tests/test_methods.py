"""MoCo v2, BYOL and supervised objectives against independent numpy computations,
plus queue, EMA and shuffling-BN semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_info, tiny_config
from numpy_refs import unit

from fgjax.core.objectives import (
    cross_entropy,
    info_nce,
    l2_normalize,
    max_at_argmax,
    min_at_argmin,
    negative_cosine,
)
from fgjax.methods import StepContext, build_method
from fgjax.methods.byol import ema_decay


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    q, k, queue = (unit(rng.normal(size=s)) for s in [(6, 5), (6, 5), (20, 5)])
    loss, logits = info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), 0.2)
    ref_logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], 1) / 0.2
    shifted = ref_logits - ref_logits.max(1, keepdims=True)
    ref = np.mean(-shifted[:, 0] + np.log(np.exp(shifted).sum(1)))
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_negative_cosine_matches_numpy_and_ignores_target_gradients():
    rng = np.random.default_rng(1)
    p, z = (rng.normal(size=(4, 6)).astype(np.float32) for _ in range(2))
    expected = -np.mean(np.sum(unit(p) * unit(z), 1))
    np.testing.assert_allclose(float(negative_cosine(p, z)), expected, rtol=1e-5)
    grad_z = jax.grad(lambda z: negative_cosine(p, z))(jnp.asarray(z))
    assert np.all(np.asarray(grad_z) == 0)
    assert np.any(np.asarray(jax.grad(lambda p: negative_cosine(p, z))(jnp.asarray(p))) != 0)


def test_cross_entropy_with_label_smoothing_matches_numpy():
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(5, 7)), rng.integers(0, 7, 5)
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    targets = np.full((5, 7), 0.3 / 7)
    targets[np.arange(5), labels] += 0.7
    expected = -np.mean(np.sum(targets * logp, 1))
    got = cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), 0.3)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("axis", [None, 0, -1, (1, 2), (0, 2)])
def test_max_at_argmax_is_the_max_with_a_one_hot_gradient(axis):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    x[0, 0, :2] = x[0, 0].max() + 1  # a tie: the first of the two receives the gradient
    weights = rng.normal(size=np.max(x, axis=axis, keepdims=True).shape).astype(np.float32)
    for picked, reduce, pick in (
        (max_at_argmax, np.max, np.argmax),
        (min_at_argmin, np.min, np.argmin),
    ):
        got = picked(jnp.asarray(x), axis, keepdims=True)
        np.testing.assert_array_equal(np.asarray(got), reduce(x, axis=axis, keepdims=True))
        assert picked(jnp.asarray(x), axis).shape == reduce(x, axis=axis).shape
        grad = jax.grad(lambda v, f=picked: jnp.sum(f(v, axis, keepdims=True) * weights))(x)
        # numpy: each weight lands on the first extreme of its slice, nothing else.
        axes = tuple(range(3)) if axis is None else tuple(np.atleast_1d(axis) % 3)
        kept = [a for a in range(3) if a not in axes]
        moved = np.transpose(x, kept + list(axes)).reshape(*[x.shape[a] for a in kept], -1)
        expected = np.zeros_like(moved)
        first = pick(moved, axis=-1)
        flat_weights = np.transpose(weights, kept + list(axes)).reshape(first.shape)
        np.put_along_axis(expected, first[..., None], flat_weights[..., None], axis=-1)
        moved_shape = [x.shape[a] for a in kept + list(axes)]
        expected = np.transpose(expected.reshape(moved_shape), np.argsort(kept + list(axes)))
        np.testing.assert_array_equal(np.asarray(grad), expected)


def test_l2_normalize_has_a_finite_gradient_at_zero():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(l2_normalize(x)), [[0, 0, 0], [0.6, 0.8, 0]])
    grad = np.asarray(jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.arange(3.0)))(x))
    assert np.all(np.isfinite(grad))
    # Below eps the map is x / eps (PyTorch's F.normalize), so the gradient is 1 / eps.
    np.testing.assert_allclose(grad[0], np.arange(3.0) / 1e-12, rtol=1e-6)
    unit = x[1] / 5.0
    np.testing.assert_allclose(
        grad[1], (np.arange(3.0) - unit @ np.arange(3.0) * unit) / 5.0, rtol=1e-5, atol=1e-7
    )


def test_byol_ema_schedule():
    assert float(ema_decay(0.99, "cosine", 0, 100)) == pytest.approx(0.99)
    assert float(ema_decay(0.99, "cosine", 50, 100)) == pytest.approx(0.995)
    assert float(ema_decay(0.99, "cosine", 100, 100)) == pytest.approx(1.0)
    assert float(ema_decay(0.996, "constant", 70, 100)) == pytest.approx(0.996)


def _ctx(config, step: int = 0) -> StepContext:
    return StepContext(step=jnp.asarray(step), epoch=jnp.asarray(step / 5.0), run=run_info(config))


def _init(method_name: str, **overrides):
    config = tiny_config(method_name)
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    method = build_method(config, run_info(config, num_classes=3))
    params, stats = jax.jit(method.init_variables, static_argnums=1)(
        jax.random.PRNGKey(0), (8, 16, 16, 3)
    )
    state = method.init_state(params, stats, jax.random.PRNGKey(1))
    return config, method, params, stats, state


def test_moco_queue_is_a_ring_buffer_and_key_encoder_an_ema():
    config, method, params, stats, state = _init("moco")
    queue_size, dim = config.moco.queue_size, config.moco.dim
    np.testing.assert_allclose(np.linalg.norm(np.asarray(state["queue"]), axis=1), 1, rtol=1e-5)
    expected = np.asarray(state["queue"]).copy()
    rng = np.random.default_rng(0)
    for i in range(5):  # 5 batches of 8 into a queue of 32: wraps around once
        keys = rng.normal(size=(8, dim)).astype(np.float32)
        state = method.after_step(state, {"keys": keys, "key_model_state": stats}, _ctx(config))
        start = (i * 8) % queue_size
        expected[start : start + 8] = keys
        np.testing.assert_array_equal(np.asarray(state["queue"]), expected)
        assert int(state["queue_ptr"]) == ((i + 1) * 8) % queue_size

    moved = jax.tree.map(lambda p: p + 1.0, params)
    updated = method.before_step(moved, state, _ctx(config))
    m = config.moco.momentum
    for new, old, online in zip(
        jax.tree.leaves(updated["key_params"]),
        jax.tree.leaves(state["key_params"]),
        jax.tree.leaves(moved),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(new), m * np.asarray(old) + (1 - m) * np.asarray(online), rtol=1e-6
        )


def test_moco_shuffled_keys_use_their_own_bn_groups():
    """Key BN statistics come from randomly permuted groups, never the query's grouping:
    the result equals running each permuted group alone (groups=1) and un-permuting."""
    config, method, params, stats, state = _init("moco")
    # Per-image brightness and contrast differ, so different groupings give different stats.
    scale = jnp.linspace(0.5, 3.0, 8)[:, None, None, None]
    images = jax.random.normal(jax.random.PRNGKey(3), (8, 16, 16, 3)) * scale + 2 * scale
    rng = jax.random.PRNGKey(5)
    keys, _ = method.key_embeddings(state, images, rng)

    single = build_method(config, run_info(config, num_classes=3))
    single.net = single.net.clone(backbone=single.net.backbone.clone(bn_groups=1))
    perm = np.asarray(jax.random.permutation(rng, 8))
    variables = {"params": state["key_params"], **state["key_model_state"]}
    expected = np.zeros((8, config.moco.dim), np.float32)
    for group in perm.reshape(2, 4):
        out, _ = single.net.apply(variables, images[group], train=True, mutable=["batch_stats"])
        expected[group] = unit(np.asarray(out["proj"]))
    np.testing.assert_allclose(np.asarray(keys), expected, atol=1e-5)

    # The query-style contiguous grouping gives different keys: the shuffle matters.
    assert {frozenset(perm[:4]), frozenset(perm[4:])} != {
        frozenset(range(4)),
        frozenset(range(4, 8)),
    }
    contiguous, _ = method.net.apply(variables, images, train=True, mutable=["batch_stats"])
    assert not np.allclose(unit(np.asarray(contiguous["proj"])), np.asarray(keys), atol=1e-4)


def test_byol_target_is_ema_of_backbone_and_projector_only():
    config, method, params, stats, state = _init("byol", **{"byol.ema_schedule": "constant"})
    assert set(state["target_params"]) == {"backbone", "projector"}
    moved = jax.tree.map(lambda p: p * 2.0, params)
    updated = method.before_step(moved, state, _ctx(config, 3))
    tau = config.byol.ema_base
    for new, old, online in zip(
        jax.tree.leaves(updated["target_params"]),
        jax.tree.leaves(state["target_params"]),
        jax.tree.leaves({k: moved[k] for k in ("backbone", "projector")}),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(new), tau * np.asarray(old) + (1 - tau) * np.asarray(online), rtol=1e-6
        )


def test_supervised_loss_is_cross_entropy():
    config, method, params, stats, state = _init("supervised")
    images = jax.random.normal(jax.random.PRNGKey(5), (8, 16, 16, 3))
    labels = jnp.arange(8) % 3
    loss, aux = method.loss(
        params,
        stats,
        state,
        {},
        {"view1": images},
        {"label": labels},
        _ctx(config),
        jax.random.PRNGKey(0),
    )
    out, _ = method.net.apply(
        {"params": params, **stats}, images, train=True, mutable=["batch_stats"]
    )
    logits = np.asarray(out["logits"], np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(8), np.asarray(labels)])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(aux.metrics["accuracy"]) == pytest.approx(
        np.mean(logits.argmax(1) == np.asarray(labels))
    )


def test_moco_rejects_queue_not_multiple_of_batch():
    config = tiny_config("moco")
    config.moco.queue_size = 30
    with pytest.raises(ValueError, match="config.moco.queue_size"):
        build_method(config, run_info(config))
