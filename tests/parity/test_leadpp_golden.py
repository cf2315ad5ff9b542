"""LEAD++ against the authors' own code: tests/fixtures/leadpp_golden.npz holds 4 optimiser
steps of HuiGuanLab/LEAD-pp's `main.train` run in 2 gloo processes (the original's 2 GPUs,
global batch 8); tests/fixtures/make_leadpp_golden.py made it (its docstring: sizes,
patches, how to regenerate). fgjax replays them with loss_device_groups = bn_groups = 2 from
the same weights, views, prototypes, CLIP teacher and key permutations.

Compared per step: every loss term (the mean over the 2 processes of theirs), the teacher's
entropy, the trained parameters, BN running statistics (the mean over the processes, as
fgjax's grouped BN keeps them), the key encoder and its statistics, both queues and their
pointers; and at step 0 the gradient of the CAM-fitting term alone (the Grad-CAM paths)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, jitted_step, normalized, run_info, tiny_config

from fgjax.config import photometric_config
from fgjax.core.sharding import global_batch, put_replicated
from fgjax.data.augment import no_augment_spec
from fgjax.methods.base import StepContext
from fgjax.methods.leadpp.method import LEADPP
from fgjax.weights import resnet_variables_from_torch

FIXTURE = os.path.join(REPO, "tests", "fixtures", "leadpp_golden.npz")
TERMS = dict(
    l1="loss1", l2="loss2", l3="loss3", l_dis="loss_distill", l_cam="loss_cam", loss="loss"
)


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as f:
        data = {k: f[k] for k in f.files}
    data["config"] = json.loads(str(data["config"]))
    return data


def _config(golden, folder):
    """The fixture's tiny LEAD++ at main.py's defaults (m 0.9, dims, C as generated)."""
    g = golden["config"]
    np.save(os.path.join(folder, "protos.npy"), golden["prototypes"])
    clip = {k[5:]: v.astype(np.float32) for k, v in golden.items() if k.startswith("clip/")}
    np.savez(os.path.join(folder, "clip.npz"), **clip)
    c = tiny_config("leadpp")
    c.model.overrides.width = g["width"]
    c.data.image_size = g["size"]
    c.leadpp.update(
        dict(hidden_dim=8 * g["width"], dim=g["dim"], queue_size=g["queue"], momentum=0.9)
    )
    c.leadpp.update(
        dict(bn_groups=g["world"], loss_device_groups=g["world"], num_classes=g["classes"])
    )
    c.leadpp.teacher_overrides = dict(
        width=g["clip"]["vision_width"],
        layers=g["clip"]["vision_layers"],
        heads=g["clip"]["vision_width"] // 64,
        patch_size=g["clip"]["vision_patch_size"],
        img_size=g["size"],
        embed_dim=g["dim"],
    )
    c.leadpp.teacher_weights = os.path.join(folder, "clip.npz")
    c.leadpp.prototypes = os.path.join(folder, "protos.npy")
    c.optim.update(dict(name="sgd", lr=0.02, momentum=0.9, weight_decay=5e-4))
    c.optim.weight_decay_mask = "all"
    c.train.batch_size = g["world"] * g["local_batch"]
    c.eval.enabled = False
    for view in c.views.values():  # the fixture's views are already augmented
        view.photometric = photometric_config(no_augment_spec())
    return c


def _variables(flat, prefix, target):
    """fgjax `(params, batch_stats)` of the torch tensors `{prefix}/{key}` of one record."""
    sd = {k[len(prefix) + 1 :]: v for k, v in flat.items() if k.startswith(prefix + "/")}
    out = {}
    for enc in ("encoder_q", "encoder_k"):
        backbone, report = resnet_variables_from_torch(
            sd, {"params": target["params"], "batch_stats": target["stats"]}, prefix=enc + "."
        )
        report.raise_if_incomplete(f"{prefix} {enc}")
        head = {
            f"fc{i}": {"kernel": sd[f"{enc}.fc.{j}.weight"].T, "bias": sd[f"{enc}.fc.{j}.bias"]}
            for i, j in ((0, 0), (1, 2))
        }
        out[enc] = (
            {"backbone": backbone["params"], "projector": head},
            {"backbone": backbone["batch_stats"]},
        )
    (params, stats), (key_params, key_stats) = out["encoder_q"], out["encoder_k"]
    params["rationale"] = {
        "conv": {"kernel": sd["conv16.weight"][:, :, 0, 0].T},
        "bn": {"scale": sd["bn16.weight"], "bias": sd["bn16.bias"]},
    }
    stats["rationale"] = {"bn": {"mean": sd["bn16.running_mean"], "var": sd["bn16.running_var"]}}
    method_state = {
        "key_params": key_params,
        "key_model_state": {"batch_stats": key_stats},
        "queue": sd["queue"].T,
        "queue_ptr": np.int32(sd["queue_ptr"][0]),
        "queue2": sd["queue2"].T,
        "queue2_ptr": np.int32(sd["queue_ptr2"][0]),
    }
    return params, {"batch_stats": stats}, method_state


def _replay_permutations(monkeypatch, perms):
    """Make fgjax's three key shuffles of step s the original's recorded ones, `perms
    [K, 3, B]` (both are uniform random permutations; only the draws are equalised)."""
    table, real_loss, calls = jnp.asarray(perms), LEADPP.loss, []

    def loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng):
        calls.clear()

        def permutation(key, n):
            calls.append(n)
            return table[ctx.step, len(calls) - 1]

        with monkeypatch.context() as m:
            m.setattr(jax.random, "permutation", permutation)
            out = real_loss(self, params, model_state, method_state, frozen, views, batch, ctx, rng)
        assert len(calls) == 3, calls
        return out

    monkeypatch.setattr(LEADPP, "loss", loss)


@pytest.fixture(scope="module")
def replay(golden, tmp_path_factory):
    """fgjax's K steps from the fixture's initial state: (method, states after each step,
    metrics of each step, the initial (params, model_state, method_state), frozen, run)."""
    g = golden["config"]
    steps = g["epochs"] * g["steps_per_epoch"]
    config = _config(golden, tmp_path_factory.mktemp("leadpp_golden"))
    run = run_info(config, num_classes=g["classes"], steps_per_epoch=g["steps_per_epoch"])
    lrs = jnp.asarray(golden["lr"], jnp.float32)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _replay_permutations(monkeypatch, golden["perms"])
        method, state, frozen, step, mesh = jitted_step(config, run, schedule=lambda n: lrs[n])
        target = {
            "params": state.params["backbone"],
            "stats": state.model_state["batch_stats"]["backbone"],
        }
        init = _variables(golden, "init", target)
        params, model_state, method_state = jax.tree.map(jnp.asarray, init)
        state = put_replicated(
            state.replace(params=params, model_state=model_state, method_state=method_state),
            mesh,
        )
        views = golden["views"]
        batch_size = views.shape[2]
        states, metrics = [], []
        for s in range(steps):
            batch = {
                "views": {f"view{v + 1}": views[s, v] for v in range(4)},
                "label": np.zeros(batch_size, np.int32),
                "coarse_label": np.zeros(batch_size, np.int32),
                "index": np.arange(batch_size, dtype=np.int32),
            }
            state, m = step(state, frozen, global_batch(batch, mesh))
            states.append(jax.device_get(state))
            metrics.append(jax.device_get(m))
    return method, states, metrics, init, target, frozen, run, config


def test_loss_terms_match_the_original(golden, replay):
    """Step 0 (identical inputs): 1e-5 (measured <= 6e-7). Later steps start from float32-
    rounded updates, which L_dis (logits / 0.02, summed) and L_cam amplify: 5e-5 (measured
    <= 1.4e-5; the contrastive terms stay <= 6e-7)."""
    _, _, metrics, *_ = replay
    for s, m in enumerate(metrics):
        for mine, theirs in TERMS.items():
            want = np.mean(golden[f"step{s}/loss/{theirs}"])  # DDP: the mean of the 2 ranks
            rtol = 1e-5 if s == 0 else 5e-5
            np.testing.assert_allclose(m[mine], want, rtol=rtol, err_msg=f"step {s} {mine}")
        entropy = np.mean(golden[f"step{s}/entropy"])
        np.testing.assert_allclose(m["teacher_entropy"], entropy, rtol=1e-5)


def _assert_trees_close(mine, theirs, where, rtol):
    flat_mine = dict(jax.tree_util.tree_leaves_with_path(mine))
    for path, want in jax.tree_util.tree_leaves_with_path(theirs):
        got = np.asarray(flat_mine[path], np.float64)
        want = np.asarray(want, np.float64)
        # float32 over K steps: errors scale with each tensor's magnitude.
        atol = rtol * max(np.abs(want).max(), 1e-3)
        np.testing.assert_allclose(
            got, want, rtol=rtol, atol=atol, err_msg=f"{where} {jax.tree_util.keystr(path)}"
        )


def test_parameters_and_state_match_the_original(golden, replay):
    """Every tensor to 5e-5 of its largest entry after each of the 4 steps (measured <= 5e-6
    for the parameters, 5e-6 for BN statistics, 2.3e-6 for the key encoder and queues:
    float32 rounding through 4 SGD steps at lr 0.02)."""
    _, states, _, _, target, *_ = replay
    for s, state in enumerate(states):
        params, model_state, method_state = _variables(golden, f"step{s}", target)
        _assert_trees_close(state.params, params, f"step {s} params", 5e-5)
        _assert_trees_close(state.model_state, model_state, f"step {s} BN stats", 5e-5)
        _assert_trees_close(state.method_state, method_state, f"step {s} method state", 5e-5)


def test_cam_term_gradient_matches_the_original(golden, replay, monkeypatch):
    """d L_cam / d params at step 0 (the original's F.kl_div term alone, the mean over its
    2 processes): the paths through A in the Grad-CAM target and in the mask, dL3/dy held
    constant (no gradient into the projection head)."""
    method, _, _, init, target, frozen, run, config = replay
    params, model_state, method_state = jax.tree.map(jnp.asarray, init)
    _replay_permutations(monkeypatch, golden["perms"])
    views = {
        f"view{v + 1}": jnp.asarray(
            normalized(golden["views"][0, v], config.views[f"view{v + 1}"].photometric)
        )
        for v in range(4)
    }
    ctx = StepContext(step=jnp.int32(0), epoch=jnp.float32(0), run=run)

    def l_cam(p):
        aux = method.loss(p, model_state, method_state, frozen, views, {}, ctx, jax.random.key(0))[
            1
        ]
        return aux.metrics["l_cam"]

    grads = jax.device_get(jax.jit(jax.grad(l_cam))(params))
    flat = {k.replace("init/", "grad/", 1): v for k, v in golden.items() if k.startswith("init/")}
    flat.update(
        {
            k.replace("cam_grad/", "grad/", 1): v
            for k, v in golden.items()
            if k.startswith("cam_grad/")
        }
    )
    want = _variables(flat, "grad", target)[0]
    assert not np.any(want["projector"]["fc0"]["kernel"])  # torch: no path to the head
    # Measured <= 3.7e-6 of each tensor's largest entry.
    _assert_trees_close(grads, want, "dL_cam/dparams", 5e-5)
