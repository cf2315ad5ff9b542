"""Whole-method wiring against numpy on the same encoder outputs.

Each test runs a method's real `loss` (or one real jitted train step) and recomputes
the objective independently in numpy from the networks' outputs, so a mis-wired
method (wrong temperature, wrong tensor enqueued, wrong views paired, EMA applied
after the key forward) fails here even though the loop tests compare the code with
itself. Photometric augmentation is off (normalisation only) so the views the step
sees are known; BatchNorm uses one group so the key shuffle does not change keys.
"""

import jax
import numpy as np
from conftest import jitted_step, run_info, tiny_config
from numpy_refs import log_softmax, unit64

from fgjax.config import photometric_config
from fgjax.core.sharding import global_batch
from fgjax.data.augment import no_augment_spec

B, S = 8, 16


def _config(method: str):
    config = tiny_config(method)
    if method == "moco":
        config.moco.bn_groups = 1
        config.moco.temperature = 0.07  # not the default 0.2: a hard-coded T fails
        config.moco.momentum = 0.9  # far from 1 so the EMA visibly moves the key encoder
    if method == "byol":
        config.byol.ema_schedule = "constant"
        config.byol.ema_base = 0.5
    config.train.batch_size = B
    for view in config.views.values():
        view.photometric = photometric_config(no_augment_spec())
    return config


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (B, 2, S, S, 3), dtype=np.uint8)


def _normalised(images: np.ndarray, config) -> np.ndarray:
    spec = config.views.view1.photometric
    return ((images / 255.0 - np.array(spec.mean)) / np.array(spec.std)).astype(np.float32)


def _one_step(config, images, prepare=lambda state: state):
    """(method, state before, state after, metrics) of one real jitted train step on the
    state `prepare` returns."""
    method, state, frozen, step, mesh = jitted_step(config, run_info(config), lambda s: 0.1)
    state = prepare(state)
    before = jax.device_get(state)
    views = {name: images[:, v] for v, name in enumerate(method.view_names)}
    batch = {
        "views": views,
        "label": np.arange(B, dtype=np.int32) % 4,
        "coarse_label": np.zeros(B, np.int32),
        "index": np.arange(B, dtype=np.int32),
    }
    after, metrics = step(state, frozen, global_batch(batch, mesh))
    return method, before, jax.device_get(after), jax.device_get(metrics)


def _moved_apart(key: str):
    """A `prepare` that moves `method_state[key]` (an EMA copy of the online network) away
    from the online params, so that the EMA of this step is visible."""

    def prepare(state):
        moved = jax.tree.map(lambda p: p * 1.5 + 0.01, state.method_state[key])
        return state.replace(method_state={**state.method_state, key: moved})

    return prepare


def _ema(target, online, decay):
    return jax.tree.map(
        lambda t, o: decay * np.asarray(t) + (1 - decay) * np.asarray(o), target, online
    )


def _forward(method, params, model_state, x, **kwargs):
    out, _ = method.net.apply(
        {"params": params, **model_state}, x, train=True, mutable=list(model_state), **kwargs
    )
    return out


def _info_nce(q, k, queue, temperature):
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], 1) / temperature
    return -np.mean(log_softmax(logits)[:, 0])


def test_moco_step_uses_config_temperature_and_enqueues_the_new_keys_of_view_two():
    config = _config("moco")
    images = _images(0)
    method, before, after, metrics = _one_step(config, images, _moved_apart("key_params"))
    x1, x2 = _normalised(images[:, 0], config), _normalised(images[:, 1], config)

    # The key encoder is updated (EMA towards the pre-step online params) before the keys.
    key_params = _ema(before.method_state["key_params"], before.params, config.moco.momentum)
    for got, want in zip(
        jax.tree.leaves(after.method_state["key_params"]), jax.tree.leaves(key_params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    q = unit64(_forward(method, before.params, before.model_state, x1)["proj"])
    k = unit64(_forward(method, key_params, before.method_state["key_model_state"], x2)["proj"])
    queue = np.asarray(before.method_state["queue"], np.float64)
    expected = _info_nce(q, k, queue, config.moco.temperature)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)
    assert abs(_info_nce(q, k, queue, 0.2) - expected) > 1e-2  # T matters at this scale

    # Rows [0, B) of the queue now hold the keys of view 2, the rest is untouched.
    new_queue = np.asarray(after.method_state["queue"])
    np.testing.assert_allclose(new_queue[:B], k, atol=1e-5)
    np.testing.assert_array_equal(new_queue[B:], np.asarray(before.method_state["queue"])[B:])
    assert int(after.method_state["queue_ptr"]) == B
    assert not np.allclose(new_queue[:B], q, atol=1e-2)  # queries are not what is stored


def test_byol_step_pairs_online_predictions_with_the_other_views_targets():
    config = _config("byol")
    images = _images(1)
    method, before, after, metrics = _one_step(config, images, _moved_apart("target_params"))
    x1, x2 = _normalised(images[:, 0], config), _normalised(images[:, 1], config)
    online = {k: before.params[k] for k in ("backbone", "projector")}
    target = _ema(before.method_state["target_params"], online, config.byol.ema_base)
    for got, want in zip(
        jax.tree.leaves(after.method_state["target_params"]), jax.tree.leaves(target), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # Each view is its own BatchNorm batch (as BYOL), target stats advance view 1 then 2.
    p1, p2 = (
        unit64(_forward(method, before.params, before.model_state, x)["pred"]) for x in (x1, x2)
    )
    target_state = before.method_state["target_model_state"]
    z1, z2 = (
        unit64(_forward(method, target, target_state, x, predict=False)["proj"]) for x in (x1, x2)
    )
    cos = lambda a, b: np.mean(np.sum(a * b, 1))
    expected = -(cos(p1, z2) + cos(p2, z1)) / 2
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4, atol=1e-6)
    wrong = -(cos(p1, z1) + cos(p2, z2)) / 2
    assert abs(wrong - expected) > 1e-3  # the pairing is visible at this scale


def test_supervised_step_loss_is_smoothed_cross_entropy_of_view_one():
    config = _config("supervised")
    config.supervised.label_smoothing = 0.2
    images = _images(2)
    method, before, after, metrics = _one_step(config, images)
    x = _normalised(images[:, 0], config)
    logits = _forward(method, before.params, before.model_state, x)["logits"]
    logp = log_softmax(np.asarray(logits, np.float64))
    labels = np.arange(B) % 4
    eps, c = 0.2, 4
    targets = np.full((B, c), eps / c)
    targets[np.arange(B), labels] += 1 - eps
    expected = -np.mean(np.sum(targets * logp, 1))
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
