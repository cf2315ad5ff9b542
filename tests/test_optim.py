"""Schedules, weight-decay masks and optimiser updates against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fgjax.config import default_config
from fgjax.models import ResNet
from fgjax.train import optim


def _optim(**fields) -> ml_collections.ConfigDict:
    c = default_config().optim
    for k, v in fields.items():
        c[k] = v
    return c


def test_warmup_then_cosine_per_step():
    o = _optim(lr=0.3, lr_batch_reference=256, warmup_epochs=2, schedule_unit="step")
    sched = optim.make_schedule(o, global_batch=128, steps_per_epoch=10, num_epochs=12)
    peak = 0.15
    assert float(sched(0)) == pytest.approx(0.0)
    assert float(sched(10)) == pytest.approx(peak / 2)
    assert float(sched(20)) == pytest.approx(peak)
    assert float(sched(70)) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(sched(120)) == pytest.approx(0.0, abs=1e-8)


def test_per_epoch_cosine_is_constant_within_an_epoch():
    o = _optim(lr=0.03, schedule_unit="epoch")
    sched = optim.make_schedule(o, global_batch=128, steps_per_epoch=46, num_epochs=100)
    assert float(sched(46)) == float(sched(91))
    expected = 0.03 * 0.5 * (1 + math.cos(math.pi * 1 / 100))
    assert float(sched(50)) == pytest.approx(expected, rel=1e-6)


def test_lcr_cub_byol_quirk_cosine_over_800_epochs_barely_decays_in_100():
    o = _optim(lr=0.3, lr_batch_reference=256, warmup_epochs=10, cosine_epochs=800)
    sched = optim.make_schedule(o, global_batch=128, steps_per_epoch=46, num_epochs=100)
    t = (100 * 46 - 460) / (800 * 46 - 460)
    assert float(sched(100 * 46)) == pytest.approx(
        0.15 * 0.5 * (1 + math.cos(math.pi * t)), rel=1e-5
    )
    assert 0.14 < float(sched(100 * 46)) < 0.15


def test_kernel_mask_excludes_batchnorm_and_biases():
    model = ResNet(stage_sizes=(1,), width=2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)["params"]
    mask = optim.kernel_mask({"backbone": params, "head": {"fc0": {"kernel": 1.0, "bias": 1.0}}})
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    for path, is_kernel in flat:
        assert is_kernel == (path[-1].key == "kernel"), path
    assert any(v for _, v in flat) and not all(v for _, v in flat)


def _one_step(o, params, grads):
    tx = optim.make_optimizer(o, lambda step: o.lr)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    return jax.tree.map(lambda p, u: np.asarray(p + u), params, updates)


def test_sgd_weight_decay_is_added_to_the_gradient_like_pytorch():
    o = _optim(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01, weight_decay_mask="all")
    params = {"w": {"kernel": jnp.array([1.0, -2.0])}, "bn": {"scale": jnp.array([3.0])}}
    grads = {"w": {"kernel": jnp.array([0.5, 0.5])}, "bn": {"scale": jnp.array([1.0])}}
    new = _one_step(o, params, grads)
    np.testing.assert_allclose(
        new["w"]["kernel"], [1 - 0.1 * (0.5 + 0.01), -2 - 0.1 * (0.5 - 0.02)], rtol=1e-6
    )
    np.testing.assert_allclose(new["bn"]["scale"], [3 - 0.1 * (1 + 0.03)], rtol=1e-6)


def test_lars_without_momentum_matches_the_lcr_update():
    o = _optim(
        name="lars",
        lr=0.15,
        momentum=0.0,
        weight_decay=1.5e-6,
        weight_decay_mask="kernels",
        trust_coefficient=1e-3,
    )
    w = np.array([[0.3, -0.4], [1.2, 0.5]], np.float32)
    g = np.array([[0.01, 0.02], [-0.03, 0.04]], np.float32)
    params = {"conv": {"kernel": jnp.asarray(w)}, "bn": {"bias": jnp.array([0.5])}}
    grads = {"conv": {"kernel": jnp.asarray(g)}, "bn": {"bias": jnp.array([2.0])}}
    new = _one_step(o, params, grads)
    g_wd = g + 1.5e-6 * w
    trust = 1e-3 * np.linalg.norm(w) / np.linalg.norm(g_wd)
    np.testing.assert_allclose(new["conv"]["kernel"], w - 0.15 * trust * g_wd, rtol=1e-5)
    np.testing.assert_allclose(new["bn"]["bias"], [0.5 - 0.15 * 2.0], rtol=1e-6)


def test_unknown_optimizer_names_the_field():
    with pytest.raises(ValueError, match="config.optim.name"):
        optim.make_optimizer(_optim(name="adagrad"), lambda s: 0.1)


def test_micro_batch_unit_takes_the_lr_of_each_steps_last_micro_batch():
    o = _optim(lr=1.0, warmup_epochs=1.0, schedule_unit="micro_batch")
    sched = optim.make_schedule(o, 32, steps_per_epoch=5, num_epochs=4, accumulate_steps=4)
    # 20 micro-batches per epoch, warm-up 20, cosine over the other 60.
    assert float(sched(0)) == pytest.approx(3 / 20)
    assert float(sched(4)) == pytest.approx(19 / 20)
    assert float(sched(10)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 23 / 60)))
    step = optim.make_schedule(_optim(lr=1.0, warmup_epochs=1.0), 32, 5, 4)
    assert float(step(0)) == 0.0  # per optimiser step: the warm-up's first value


def test_whole_cosine_period_ignores_the_warmup_and_stops_short_of_final_lr():
    o = _optim(lr=1.0, warmup_epochs=1.0, cosine_period="whole", final_lr=0.0)
    sched = optim.make_schedule(o, 32, steps_per_epoch=10, num_epochs=4)
    assert float(sched(25)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 40)))
    assert float(sched(39)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 40)))
    with pytest.raises(ValueError, match="cosine_period"):
        optim.make_schedule(_optim(cosine_period="all"), 32, 10, 4)


def test_sgd_nesterov_with_coupled_decay_follows_pytorch():
    """torch.optim.SGD(nesterov=True): g += wd p; buf = m buf + g; p -= lr (g + m buf)."""
    o = _optim(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    tx = optim.make_optimizer(o, lambda step: o.lr)
    p, buf = np.array([1.0, -2.0]), np.zeros(2)
    params = {"w": jnp.asarray(p)}
    state = tx.init(params)
    for g in (np.array([0.5, 0.25]), np.array([-0.3, 0.1])):
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = {"w": params["w"] + updates["w"]}
        d = g + 0.01 * p
        buf = 0.9 * buf + d
        p = p - 0.1 * (d + 0.9 * buf)
        np.testing.assert_allclose(np.asarray(params["w"]), p, rtol=1e-6)


def _torch_adam(p, grads, lr, wd, b1, b2, eps):
    """torch.optim.Adam (not amsgrad): L2 decay joins the gradient before the moments."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
        p = p - lr / (1 - b1**t) * m / denom
        yield p


def _torch_rmsprop(p, grads, lr, wd, alpha, eps):
    """torch.optim.RMSprop (no momentum, not centred): square average from 0, eps
    outside the sqrt, L2 decay joins the gradient."""
    v = np.zeros_like(p)
    for g in grads:
        g = g + wd * p
        v = alpha * v + (1 - alpha) * g * g
        p = p - lr * g / (np.sqrt(v) + eps)
        yield p


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_adam_and_rmsprop_follow_torch_with_coupled_l2(name):
    """Three steps against torch's update rules. eps=1e-3 against gradients of 1e-3 to
    1 so that where eps goes matters; the decay is large so that coupled vs decoupled
    does; biases are left undecayed ('kernels') and 'head' frozen."""
    lr, wd, eps = 0.01, 0.1, 1e-3
    o = _optim(
        name=name,
        lr=lr,
        weight_decay=wd,
        eps=eps,
        weight_decay_mask="kernels",
        b1=0.8,
        b2=0.95,
        rms_decay=0.9,
        freeze=("head",),
    )
    w = np.array([1.0, -2.0, 0.5], np.float32)
    b = np.array([0.3], np.float32)
    gw = [np.array(g, np.float32) for g in ([0.5, 1e-3, -0.2], [-0.3, 2e-3, 0.1], [0.2, 1e-3, 1.0])]
    gb = [np.array([x], np.float32) for x in (0.4, -0.1, 0.3)]
    params = {
        "fc": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)},
        "head": {"kernel": jnp.ones(2)},
    }
    tx = optim.make_optimizer(o, lambda step: lr)
    state = tx.init(params)
    if name == "adam":
        want_w = _torch_adam(w, gw, lr, wd, 0.8, 0.95, eps)
        want_b = _torch_adam(b, gb, lr, 0.0, 0.8, 0.95, eps)
    else:
        want_w = _torch_rmsprop(w, gw, lr, wd, 0.9, eps)
        want_b = _torch_rmsprop(b, gb, lr, 0.0, 0.9, eps)
    for g_w, g_b, ww, wb in zip(gw, gb, want_w, want_b, strict=True):
        grads = {
            "fc": {"kernel": jnp.asarray(g_w), "bias": jnp.asarray(g_b)},
            "head": {"kernel": jnp.ones(2)},
        }
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(np.asarray(params["fc"]["kernel"]), ww, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(params["fc"]["bias"]), wb, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(params["head"]["kernel"]), np.ones(2))


def test_decay_steps_are_optimiser_step_milestones():
    """MS loss: lr 3e-5, x0.1 from step 1200 and again from 2400 (0-based)."""
    o = _optim(lr=3e-5, schedule="step", decay_steps=(1200, 2400))
    sched = optim.make_schedule(o, global_batch=80, steps_per_epoch=100, num_epochs=30)
    lrs = [float(sched(s)) for s in (0, 1199, 1200, 2399, 2400, 2999)]
    np.testing.assert_allclose(lrs, [3e-5, 3e-5, 3e-6, 3e-6, 3e-7, 3e-7], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_epochs and config.optim.decay_steps"):
        optim.make_schedule(_optim(schedule="step", decay_steps=(5,), decay_epochs=(1,)), 8, 10, 4)
    with pytest.raises(ValueError, match="decay_steps needs config.optim.schedule='step'"):
        optim.make_schedule(_optim(decay_steps=(5,)), 8, 10, 4)
