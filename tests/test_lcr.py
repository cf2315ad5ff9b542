"""LCR (fgjax/methods/lcr.py) against numpy and ../shared/methods/lcr.md.

The Grad-CAM shortcut is checked against the full-map gradient; the KL, the
descriptor and one real jitted step are recomputed in numpy from the networks'
parameters and outputs; the faithful preset against the spec's section-10 table.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, jitted_step, normalized, random_batch, run_info, tiny_config
from numpy_refs import kl_rows, softmax

from fgjax.config import load_config_file, photometric_config
from fgjax.core.objectives import info_nce, l2_normalize
from fgjax.core.sharding import global_batch
from fgjax.data.augment import no_augment_spec
from fgjax.methods.lcr.method import descriptor, fitting_loss, grad_cam, minmax

B, S = 8, 16


def _config(**lcr):
    config = tiny_config("lcr")
    config.lcr.update(dict(hidden_dim=16, dim=8, queue_size=32, bn_groups=1, **lcr))
    config.train.batch_size = B
    for view in config.views.values():
        view.photometric = photometric_config(no_augment_spec())
    return config


def _minmax(x, per_sample):
    axes = (1, 2) if per_sample else None
    shifted = x - x.min(axis=axes, keepdims=per_sample)
    return shifted / (shifted.max(axis=axes, keepdims=per_sample) + 1e-7)


@pytest.fixture(scope="module")
def tiny():
    """(method, params, model_state, query maps A, pooled y, keys, queue) of a tiny LCR."""
    from fgjax.methods import build_method

    config = _config()
    method = build_method(config, run_info(config))
    init = jax.jit(method.init_variables, static_argnums=1)
    params, model_state = init(jax.random.PRNGKey(0), (B, S, S, 3))
    images = jax.random.normal(jax.random.PRNGKey(1), (B, S, S, 3))
    out = jax.jit(lambda x: method.net.apply({"params": params, **model_state}, x, train=False))(
        images
    )
    maps = out["stage2"].astype(jnp.float32)
    keys = l2_normalize(jax.random.normal(jax.random.PRNGKey(2), (B, config.lcr.dim)))
    queue = l2_normalize(jax.random.normal(jax.random.PRNGKey(3), (32, config.lcr.dim)))
    return method, params, model_state, maps, keys, queue


def test_pooled_gradient_grad_cam_equals_the_full_map_grad_cam(tiny):
    method, params, _, maps, keys, queue = tiny

    def loss_of_pooled(pooled):
        q = l2_normalize(method.net.projector.apply({"params": params["projector"]}, pooled, True))
        return info_nce(q, keys, queue, 0.2)[0]

    full = jax.grad(lambda a: loss_of_pooled(jnp.mean(a, axis=(1, 2))))(maps)
    reference = np.maximum(np.sum(np.asarray(maps) * np.asarray(full), axis=-1), 0.0)
    got = grad_cam(maps, jax.grad(loss_of_pooled)(jnp.mean(maps, axis=(1, 2))))
    assert reference.max() > 0 and (reference == 0).any()  # the ReLU is exercised
    np.testing.assert_allclose(got, reference, atol=1e-6, rtol=1e-5)
    # 'score' (the textbook sign) keeps the other positions.
    score = grad_cam(maps, jax.grad(loss_of_pooled)(jnp.mean(maps, axis=(1, 2))), sign=-1.0)
    neg = np.maximum(-np.sum(np.asarray(maps) * np.asarray(full), axis=-1), 0.0)
    np.testing.assert_allclose(score, neg, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 0.4])
def test_kl_fitting_loss_equals_a_hand_computation_per_axis_and_reduction(tau):
    rng = np.random.default_rng(0)
    cam, att = rng.random((2, 3, 3)), rng.random((2, 3, 3))
    row = sum(kl_rows(cam[i, h] / tau, att[i, h] / tau) for i in range(2) for h in range(3))
    spatial = sum(kl_rows(cam[i].ravel() / tau, att[i].ravel() / tau) for i in range(2))
    assert abs(row - spatial) > 1e-3  # the axis matters on this toy
    for axis, total in (("row", row), ("spatial", spatial)):
        for reduction, divisor in (("sum", 1), ("batchmean", 2), ("mean", 18)):
            got, target = fitting_loss(jnp.asarray(cam), jnp.asarray(att), tau, axis, reduction)
            np.testing.assert_allclose(float(got), total / divisor, rtol=1e-5)
        assert target.shape == ((6, 3) if axis == "row" else (2, 9))


def test_descriptor_equals_numpy_attention_weighted_pooling():
    rng = np.random.default_rng(1)
    maps, mask = rng.random((3, 4, 4, 5)), rng.random((3, 4, 4)) + 0.5  # batch min > 0
    for per_sample in (False, True):
        a = _minmax(mask, per_sample)
        pooled = (a[..., None] * maps).mean(axis=(1, 2))
        want = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
        got = descriptor(jnp.asarray(maps), minmax(jnp.asarray(mask), per_sample))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # With a positive batch minimum the two normalisations give different descriptors.
    assert not np.allclose(
        descriptor(jnp.asarray(maps), minmax(jnp.asarray(mask), False)),
        descriptor(jnp.asarray(maps), minmax(jnp.asarray(mask), True)),
        atol=1e-4,
    )


def _moco_and_pooled_grad(pooled, head, k, queue, temperature):
    """InfoNCE of the 2-layer MLP head and its gradient w.r.t. the pooled features, by hand."""
    w0, b0 = head["fc0"]["kernel"], head["fc0"]["bias"]
    w1, b1 = head["fc1"]["kernel"], head["fc1"]["bias"]
    pre = pooled @ w0 + b0
    z = np.maximum(pre, 0) @ w1 + b1
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    q = z / norm
    bank = np.concatenate([k[:, None, :], np.broadcast_to(queue, (len(q), *queue.shape))], 1)
    logits = np.einsum("bd,bnd->bn", q, bank) / temperature
    p = softmax(logits)
    loss = np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0])
    d_logits = (p - np.eye(logits.shape[1])[0]) / len(q)
    d_q = np.einsum("bn,bnd->bd", d_logits, bank) / temperature
    d_z = (d_q - q * np.sum(q * d_q, 1, keepdims=True)) / norm
    d_pooled = ((d_z @ w1.T) * (pre > 0)) @ w0.T
    return loss, d_pooled


FIXED_SWITCHES = ("tau", "cam_softmax_axis", "cam_norm", "cam_target_stopgrad", "att_norm")


@pytest.mark.parametrize("preset", ["faithful", "fixed"])
def test_one_jitted_step_loss_is_moco_plus_weight_times_kl_in_numpy(preset):
    """The faithful switches (tau 0.5 to exercise the temperature), and those of
    configs/cub_lcr_fixed.py: spatial softmax, per-image max-scaled Grad-CAM, per-image mask."""
    switches = dict(tau=0.5)
    if preset == "fixed":
        fixed = load_config_file(os.path.join(REPO, "configs", "cub_lcr_fixed.py")).lcr
        switches = {k: fixed[k] for k in FIXED_SWITCHES}
    config = _config(loss_weight=0.5, momentum=0.9, **switches)
    tau, spatial = config.lcr.tau, config.lcr.cam_softmax_axis == "spatial"
    method, state, frozen, step, mesh = jitted_step(config, run_info(config), lambda s: 0.1)
    before = jax.device_get(state)
    batch = random_batch(np.random.default_rng(0), ("view1", "view2"), B, S)
    _, metrics = step(state, frozen, global_batch(batch, mesh))
    x1, x2 = (normalized(batch["views"][v], config.views[v].photometric) for v in batch["views"])

    params, model_state = before.params, before.model_state
    enc = {k: v for k, v in params.items() if k != "rationale"}
    enc_state = {
        c: {k: v for k, v in t.items() if k != "rationale"} for c, t in model_state.items()
    }
    fwd = lambda p, s, x: method.net.apply({"params": p, **s}, x, train=True, mutable=list(s))[0]
    key_params = jax.tree.map(
        lambda t, o: 0.9 * t + 0.1 * o, before.method_state["key_params"], enc
    )
    k = np.asarray(fwd(key_params, before.method_state["key_model_state"], x2)["proj"], np.float64)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    out = fwd(enc, enc_state, x1)
    maps = np.asarray(out["stage2"], np.float64)
    head = jax.tree.map(lambda v: np.asarray(v, np.float64), params["projector"])
    queue = np.asarray(before.method_state["queue"], np.float64)
    moco, grad = _moco_and_pooled_grad(maps.mean((1, 2)), head, k, queue, 0.2)
    cam = np.maximum(np.einsum("bhwc,bc->bhw", maps, grad) / (maps.shape[1] * maps.shape[2]), 0)

    branch = params["rationale"]
    x = maps @ np.asarray(branch["conv"]["kernel"], np.float64)
    x = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)
    x = x * np.asarray(branch["bn"]["scale"]) + np.asarray(branch["bn"]["bias"])
    per_sample = config.lcr.att_norm == "sample_minmax"
    att = _minmax(np.maximum(x, 0).max(-1), per_sample=per_sample)
    if config.lcr.cam_norm == "sample_max":
        cam = cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-7)
    if spatial:  # one distribution per image
        kl = sum(kl_rows(cam[i].ravel() / tau, att[i].ravel() / tau) for i in range(B))
    else:  # one per row of the 2x2 map
        kl = sum(kl_rows(cam[i, h] / tau, att[i, h] / tau) for i in range(B) for h in range(2))

    np.testing.assert_allclose(float(metrics["ssl_loss"]), moco, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["lcr_loss"]), kl, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["loss"]), moco + 0.5 * kl, rtol=1e-4)
    t = softmax(cam.reshape(B, -1) / tau if spatial else cam.reshape(-1, 2) / tau)
    entropy = np.mean(-np.sum(t * np.log(t), -1)) / np.log(t.shape[-1])
    np.testing.assert_allclose(float(metrics["cam_entropy"]), entropy, rtol=1e-4)
    assert kl > 1e-3  # the fitting term is visible in the total


SECTION_10_MOCO = dict(
    proj_dim=32,
    loss_weight=0.01,
    tau=1.0,
    cam_softmax_axis="row",
    cam_sign="loss",
    cam_norm="none",
    att_norm="group_minmax",  # each GPU's batch tensor (the code's batch min-max)
    cam_target_stopgrad=False,
    reduction="sum",
    loss_device_groups=0,  # = bn_groups (4): the original's GPUs
    branch_stat_updates=3,  # bn16's train-mode passes per step in the original
    hidden_dim=2048,
    dim=256,
    queue_size=65536,
    momentum=0.999,
    temperature=0.2,
)


def test_faithful_preset_equals_the_spec_section_10_table():
    config = load_config_file(os.path.join(REPO, "configs", "cub_lcr.py"))
    assert config.method == "lcr" and config.data.kind == "cub"
    assert {k: config.lcr[k] for k in SECTION_10_MOCO} == SECTION_10_MOCO
    assert config.model.stem_maxpool is True
    optim = config.optim
    assert (optim.name, optim.lr, optim.momentum, optim.weight_decay) == ("sgd", 0.03, 0.9, 1e-4)
    assert (optim.weight_decay_mask, optim.schedule, optim.schedule_unit) == (
        "all",
        "cosine",
        "epoch",
    )
    assert optim.warmup_epochs == 0.0
    assert (config.train.batch_size, config.train.num_epochs) == (128, 100)
    assert tuple(config.views.view1.crop_scale) == (0.2, 1.0)


def test_fixed_preset_changes_exactly_the_spec_corrections():
    faithful = load_config_file(os.path.join(REPO, "configs", "cub_lcr.py"))
    fixed = load_config_file(os.path.join(REPO, "configs", "cub_lcr_fixed.py"))
    changed = {k: fixed.lcr[k] for k in fixed.lcr if fixed.lcr[k] != faithful.lcr[k]}
    assert changed == dict(
        cam_softmax_axis="spatial",
        tau=0.4,
        cam_norm="sample_max",
        cam_target_stopgrad=True,
        att_norm="sample_minmax",
    )
    fixed.lcr = faithful.lcr
    assert fixed.to_dict() == faithful.to_dict()  # nothing else differs


def test_cam_norm_rescales_each_image_before_the_temperature():
    from fgjax.methods.lcr.method import normalise_cam

    cam = np.random.default_rng(2).random((2, 3, 3)) * np.array([1e-4, 3.0])[:, None, None]
    got = normalise_cam(jnp.asarray(cam), "sample_max")
    np.testing.assert_allclose(got, cam / (cam.max((1, 2), keepdims=True) + 1e-7), rtol=1e-5)
    got = normalise_cam(jnp.asarray(cam), "sample_minmax")
    np.testing.assert_allclose(got, _minmax(cam, per_sample=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(normalise_cam(jnp.asarray(cam), "none"), cam.astype(np.float32))


@pytest.mark.parametrize("dataset", ["cub", "cars", "aircraft"])
@pytest.mark.parametrize("base, method", [("moco", "lcr"), ("byol", "lcr_byol")])
def test_each_lcr_recipe_is_its_base_recipe_with_the_lcr_section(dataset, base, method):
    load = lambda name: load_config_file(os.path.join(REPO, "configs", f"{dataset}_{name}.py"))
    plain, lcr = load(base), load(method)
    assert lcr.method == method
    assert {k: lcr[method][k] for k in plain[base]} == plain[base].to_dict()
    rest = lambda c, section: {k: v for k, v in c.to_dict().items() if k not in ("method", section)}
    assert rest(lcr, method) == rest(plain, base)


def test_the_key_encoder_copies_the_encoder_without_the_rationale_branch(tiny):
    method, params, model_state, *_ = tiny
    state = method.init_state(params, model_state, jax.random.PRNGKey(4))
    assert set(params) == {"backbone", "projector", "rationale"}
    assert set(state["key_params"]) == {"backbone", "projector"}
    assert all("rationale" not in t for t in state["key_model_state"].values())
    assert params["rationale"]["conv"]["kernel"].shape[-1] == 32  # proj_dim


def test_explain_is_the_grad_cam_of_infonce_against_the_mirrored_images_keys(tiny):
    """`explain` (the rationale pictures): queries from the images, keys from the key
    encoder on the partners, the queue, T; the Grad-CAM from the full-map gradient."""
    method, params, model_state, *_ = tiny
    state = method.init_state(params, model_state, jax.random.PRNGKey(4))
    images = jax.random.normal(jax.random.PRNGKey(5), (B, S, S, 3))
    partners = jnp.flip(images, axis=2)
    cam, attention = jax.jit(method.explain)(params, model_state, state, images, partners)

    apply = lambda x: method.net.apply({"params": params, **model_state}, x, train=False)
    maps = np.asarray(apply(images)["stage2"], np.float64)
    k = np.asarray(l2_normalize(apply(partners)["proj"]))  # key encoder = encoder at init
    head = jax.tree.map(np.asarray, params["projector"])
    _, d_pooled = _moco_and_pooled_grad(
        maps.mean(axis=(1, 2)), head, k, np.asarray(state["queue"]), 0.2
    )
    # dL/dA = dL/dy / HW at every position; Grad-CAM of the loss, no rescaling (faithful).
    positions = maps.shape[1] * maps.shape[2]
    want = np.maximum(np.einsum("bhwc,bc->bhw", maps, d_pooled) / positions, 0.0)
    assert want.max() > 0 and (want == 0).any()
    np.testing.assert_allclose(cam, want, atol=1e-6, rtol=1e-4)
    # The attention is the batch min-max mask the descriptor pools with.
    assert cam.shape == attention.shape == maps.shape[:3]
    np.testing.assert_allclose([attention.min(), attention.max()], [0.0, 1.0], atol=1e-6)
