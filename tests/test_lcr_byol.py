"""BYOL + LCR (`lcr_byol`): one real jitted step against an independent recomputation.

The BYOL part is recomputed from the networks' outputs in numpy; the Grad-CAM from the
gradient of the BYOL loss w.r.t. the full last-stage map (not the pooled shortcut the
step uses), explaining view 1 only.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from conftest import REPO, jitted_step, normalized, random_batch, run_info, tiny_config
from numpy_refs import unit64

from fgjax.config import default_config, load_config_file, photometric_config
from fgjax.core.objectives import negative_cosine
from fgjax.core.sharding import global_batch
from fgjax.data.augment import no_augment_spec
from fgjax.methods import build_method
from fgjax.methods.lcr.method import fitting_loss, minmax

B, S = 8, 16


def test_byol_lcr_step_is_byol_plus_weight_times_the_fit_to_view_one_grad_cam():
    config = tiny_config("lcr_byol")
    config.lcr_byol.update(dict(hidden_dim=16, dim=8, ema_base=0.5, loss_weight=0.5))
    config.train.batch_size = B
    for view in config.views.values():
        view.photometric = photometric_config(no_augment_spec())
    method, state, frozen, step, mesh = jitted_step(config, run_info(config), lambda s: 0.1)
    moved = jax.tree.map(lambda p: p * 1.5 + 0.01, state.method_state["target_params"])
    state = state.replace(method_state={**state.method_state, "target_params": moved})
    before = jax.device_get(state)
    batch = random_batch(np.random.default_rng(0), ("view1", "view2"), B, S)
    _, metrics = step(state, frozen, global_batch(batch, mesh))
    x1, x2 = (normalized(batch["views"][v], config.views[v].photometric) for v in batch["views"])

    params, model_state = before.params, before.model_state
    online = {k: v for k, v in params.items() if k != "rationale"}
    state_ = {c: {k: v for k, v in t.items() if k != "rationale"} for c, t in model_state.items()}
    fwd = lambda p, s, x, **kw: method.net.apply(
        {"params": p, **s}, x, train=True, mutable=list(s), **kw
    )[0]
    target = jax.tree.map(
        lambda t, o: 0.5 * t + 0.5 * o,
        before.method_state["target_params"],
        {k: online[k] for k in ("backbone", "projector")},
    )
    t_state = before.method_state["target_model_state"]
    z1, z2 = (unit64(fwd(target, t_state, x, predict=False)["proj"]) for x in (x1, x2))
    p1, p2 = (unit64(fwd(online, state_, x)["pred"]) for x in (x1, x2))
    byol = -0.5 * (np.mean(np.sum(p1 * z2, 1)) + np.mean(np.sum(p2 * z1, 1)))

    # Grad-CAM from the full-map gradient of the whole loss (view 2's half is constant).
    maps = fwd(online, state_, x1)["stage2"].astype(jnp.float32)
    heads = lambda pooled: method.net.apply(
        {"params": online, **state_},
        pooled,
        mutable=list(state_),
        method=lambda net, y: net.predictor(net.projector(y, True), True),
    )[0]
    grad = jax.grad(lambda a: negative_cosine(heads(jnp.mean(a, (1, 2))), z2) / 2)(maps)
    cam = jnp.maximum(jnp.sum(maps * grad, -1), 0.0)
    branch = {"params": params["rationale"], **{c: t["rationale"] for c, t in model_state.items()}}
    mask = method.rationale.apply(branch, maps, train=True, mutable=list(state_))[0]
    fit, _ = fitting_loss(cam, minmax(mask, False), 0.4, "spatial", "sum")

    np.testing.assert_allclose(float(metrics["ssl_loss"]), byol, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["lcr_loss"]), float(fit), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["loss"]), byol + 0.5 * float(fit), rtol=1e-4)
    assert float(fit) > 1e-3


def test_byol_lcr_defaults_are_the_byol_path_of_the_spec_section_10():
    section = default_config("lcr_byol").lcr_byol
    assert (section.tau, section.cam_softmax_axis, section.loss_weight) == (0.4, "spatial", 0.01)
    assert (section.ema_base, section.ema_schedule, section.proj_dim) == (0.996, "constant", 32)
    assert (section.hidden_dim, section.dim) == (4096, 256)
    assert (section.cam_sign, section.cam_norm, section.att_norm, section.reduction) == (
        "loss",
        "none",
        "batch_minmax",
        "sum",
    )
    assert section.cam_target_stopgrad is False


def test_cub_lcr_byol_recipe_is_cub_byol_with_the_lcr_section():
    byol = load_config_file(os.path.join(REPO, "configs", "cub_byol.py"))
    lcr = load_config_file(os.path.join(REPO, "configs", "cub_lcr_byol.py"))
    assert lcr.method == "lcr_byol" and lcr.model.stem_maxpool is False
    assert {k: lcr.lcr_byol[k] for k in byol.byol} == byol.byol.to_dict()
    assert (lcr.lcr_byol.tau, lcr.lcr_byol.cam_softmax_axis) == (0.4, "spatial")
    rest = lambda c, section: {k: v for k, v in c.to_dict().items() if k not in ("method", section)}
    assert rest(lcr, "lcr_byol") == rest(byol, "byol")


def test_explain_is_the_grad_cam_of_the_view_one_half_against_the_target_of_the_partners():
    config = tiny_config("lcr_byol")
    config.lcr_byol.update(dict(hidden_dim=16, dim=8, cam_sign="score", cam_norm="sample_max"))

    method = build_method(config, run_info(config))
    params, model_state = jax.jit(method.init_variables, static_argnums=1)(
        jax.random.PRNGKey(0), (B, S, S, 3)
    )
    state = method.init_state(params, model_state, jax.random.PRNGKey(1))
    # A target different from the online network, so mixing them up fails.
    state["target_params"] = jax.tree.map(lambda p: p * 1.5 + 0.01, state["target_params"])
    images = jax.random.normal(jax.random.PRNGKey(2), (B, S, S, 3))
    partners = jnp.flip(images, axis=2)
    cam, _ = jax.jit(method.explain)(params, model_state, state, images, partners)

    variables = lambda p, s: {"params": p, **s}
    online = {k: v for k, v in params.items() if k != "rationale"}
    online_state = {
        c: {k: v for k, v in t.items() if k != "rationale"} for c, t in model_state.items()
    }
    maps = method.net.apply(variables(online, online_state), images, train=False)["stage2"]
    target = variables(state["target_params"], state["target_model_state"])
    z = unit64(method.net.apply(target, partners, train=False, predict=False)["proj"])
    heads = lambda pooled: method.net.apply(
        variables(online, online_state),
        pooled,
        method=lambda net, y: net.predictor(net.projector(y, False), False),
    )

    def half(a):  # -1/2 mean cos(p1, z2'), written out
        p = heads(jnp.mean(a, (1, 2)))
        p = p / jnp.linalg.norm(p, axis=-1, keepdims=True)
        return -jnp.mean(jnp.sum(p * z, -1)) / 2

    grad = jax.grad(half)(maps.astype(jnp.float32))
    want = np.maximum(-np.sum(np.asarray(maps) * np.asarray(grad), -1), 0.0)  # 'score' sign
    want = want / (want.max(axis=(1, 2), keepdims=True) + 1e-7)  # 'sample_max'
    assert (want == 0).any() and np.allclose(want.max(axis=(1, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(cam, want, atol=1e-5)


def test_byol_fixed_preset_changes_exactly_the_spec_corrections():
    load = lambda name: load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
    faithful, fixed = load("cub_lcr_byol"), load("cub_lcr_byol_fixed")
    section = {
        k: fixed.lcr_byol[k] for k in fixed.lcr_byol if fixed.lcr_byol[k] != faithful.lcr_byol[k]
    }
    assert section == dict(
        cam_norm="sample_max", cam_target_stopgrad=True, att_norm="sample_minmax"
    )
    assert (fixed.optim.name, fixed.optim.momentum, faithful.optim.momentum) == ("lars", 0.9, 0.0)
    fixed.lcr_byol, fixed.optim.momentum = faithful.lcr_byol, faithful.optim.momentum
    assert fixed.to_dict() == faithful.to_dict()  # nothing else differs
