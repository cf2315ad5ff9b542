"""fgjax's `moco` and `lcr` against the authors' own `main_moco.py` (GANPerf/LCR @ fe591d4).

tests/fixtures/lcr_golden.npz holds 3 steps of the original's `main_moco.train` under DDP
in 4 gloo processes (and 1 for LCR) (tests/fixtures/make_lcr_golden.py): a tiny torchvision-layout
ResNet (BasicBlock, widths 8 / 16, 32 px -> 4 x 4 maps), batch 16, queue 64, dim 8. fgjax
runs its real jitted train step (SGD, the key EMA, shuffled BN, the queue) from the same
weights and batches, with the processes played by `bn_groups` = `loss_device_groups` = P
and the original's shuffle permutations. Compared per step: the loss terms (the mean over
the processes of their CE and summed KL), the parameters, the queue, the key encoder, the
BN statistics; at step 0 the gradient of nu * L_cam alone (its two paths into the
backbone, none into the projector).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import REPO, run_info, tiny_config  # noqa: E402

from fgjax.config import photometric_config, photometric_spec  # noqa: E402
from fgjax.core.sharding import global_batch, make_mesh, put_replicated  # noqa: E402
from fgjax.data.augment import no_augment_spec  # noqa: E402
from fgjax.methods import StepContext, build_method  # noqa: E402
from fgjax.train import optim  # noqa: E402
from fgjax.train.state import create_train_state  # noqa: E402
from fgjax.train.step import jit_train_step, make_train_step  # noqa: E402
from fgjax.weights.resnet_keys import resnet_variables_from_torch  # noqa: E402

FIXTURE = os.path.join(REPO, "tests", "fixtures", "lcr_golden.npz")
STEPS, BATCH, SIZE = 3, 16, 32
FIXED = dict(
    cam_softmax_axis="spatial",
    tau=0.4,
    cam_norm="sample_max",
    cam_target_stopgrad=True,
    att_norm="sample_minmax",
)
# case -> (fgjax method, processes, LCR switches beyond the faithful defaults)
CASES = {
    "moco_p4": ("moco", 4, {}),
    "lcr_p1": ("lcr", 1, {}),
    "lcr_p4": ("lcr", 4, {}),
    "lcr_fixed_p4": ("lcr", 4, FIXED),
}
# float32 through 3 SGD steps of a conv net on two frameworks (different conv / reduction
# orders): measured max |difference| 4e-7 on parameters and the queue (size ~0.1-1), 2e-7
# on BN statistics, 2e-6 relative on the losses (the KL sum of near-equal distributions);
# the bounds leave a margin of 5-25x and are far below one step's change (~1e-4..1e-2).
LOSS_RTOL, PARAM_ATOL, STAT_ATOL = 1e-5, 1e-5, 1e-5


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE))


def make_config(method: str, groups: int, switches: dict):
    """The tiny twin of the original run: `configs/cub_lcr.py`'s optimiser and MoCo
    settings (lr 0.03, epoch 0 of a cosine, momentum 0.9, wd 1e-4, m 0.999, T 0.2)."""
    c = tiny_config(method)
    c.model.overrides.update(dict(stage_sizes=(1, 1), block="basic", width=8))
    c.data.image_size = SIZE
    for view in c.views.values():
        view.size = SIZE
        view.photometric = photometric_config(no_augment_spec())
    c[method].update(dict(hidden_dim=16, dim=8, queue_size=64, momentum=0.999, temperature=0.2))
    c[method].bn_groups = groups
    if method == "lcr":
        c.lcr.update(dict(loss_device_groups=groups, **switches))
    c.optim.update(
        dict(
            name="sgd",
            lr=0.03,
            momentum=0.9,
            weight_decay=1e-4,
            weight_decay_mask="all",
            schedule="cosine",
            schedule_unit="epoch",
            warmup_epochs=0.0,
        )
    )
    c.train.batch_size = BATCH
    c.train.num_epochs = 100
    return c


def torch_params(golden: dict, params: dict, model_state: dict, prefix: str):
    """fgjax `(params, model_state)` shaped like the given ones, from the fixture's `init`
    state dict under `prefix` ('encoder_q.' or 'encoder_k.') and its conv16 / bn16."""
    sd = {k[len("init/") :]: v for k, v in golden.items() if k.startswith("init/")}
    target = {"params": params["backbone"], "batch_stats": model_state["batch_stats"]["backbone"]}
    backbone, report = resnet_variables_from_torch(sd, target, prefix=prefix)
    assert not report.missing, report.missing
    linear = lambda name: {"kernel": sd[f"{name}.weight"].T, "bias": sd[f"{name}.bias"]}
    params = {
        **params,
        "backbone": backbone["params"],
        "projector": {"fc0": linear(prefix + "fc.0"), "fc1": linear(prefix + "fc.2")},
    }
    stats = {**model_state["batch_stats"], "backbone": backbone["batch_stats"]}
    if "rationale" in params:
        params["rationale"] = {
            "conv": {"kernel": sd["conv16.weight"][:, :, 0, 0].T},
            "bn": {"scale": sd["bn16.weight"], "bias": sd["bn16.bias"]},
        }
        stats["rationale"] = {
            "bn": {"mean": sd["bn16.running_mean"], "var": sd["bn16.running_var"]}
        }
    cast = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    return cast(params), cast({"batch_stats": stats})


def golden_permutation(method_state, rng, size):
    """The original run's shuffle permutation of this step (queue_ptr / B counts steps)."""
    return method_state["golden_perms"][method_state["queue_ptr"] // size]


def setup(golden: dict, case: str, mesh=None):
    """`(method, config, state, train step)` of `case` at the fixture's initial weights;
    with a `mesh`, the real sharded step (`jit_train_step`, the state replicated)."""
    name, groups, switches = CASES[case]
    config = make_config(name, groups, switches)
    run = run_info(config, steps_per_epoch=10)
    method = build_method(config, run)
    method.key_permutation = golden_permutation
    schedule = optim.make_schedule(config.optim, BATCH, run.steps_per_epoch, 100)
    tx = optim.make_optimizer(config.optim, schedule)
    state = create_train_state(method, tx, (2, SIZE, SIZE, 3), seed=0)
    params, model_state = torch_params(golden, state.params, state.model_state, "encoder_q.")
    key_params, key_state = torch_params(
        golden,
        state.method_state["key_params"],
        state.method_state["key_model_state"],
        "encoder_k.",
    )
    perms = np.stack([golden[f"perm/{t}"] for t in range(STEPS)]).astype(np.int32)
    method_state = {
        **state.method_state,
        "key_params": key_params,
        "key_model_state": key_state,
        "queue": jnp.asarray(golden["init/queue"].T),
        "golden_perms": jnp.asarray(perms),
    }
    state = state.replace(
        params=params,
        model_state=model_state,
        method_state=method_state,
        opt_state=tx.init(params),
    )
    specs = {v: photometric_spec(config, v) for v in method.view_names}
    step_fn = make_train_step(method, tx, specs, run)
    if mesh is None:
        return method, config, state, jax.jit(step_fn)
    return method, config, put_replicated(state, mesh), jit_train_step(step_fn, mesh)


def batch(golden: dict, t: int) -> dict:
    views = golden[f"views/{t}"]
    zeros = np.zeros(BATCH, np.int32)
    return {
        "views": {"view1": views[0], "view2": views[1]},
        "label": zeros,
        "coarse_label": zeros,
        "index": np.arange(BATCH, dtype=np.int32),
    }


def torch_key(path: tuple) -> str | None:
    """The original's state-dict key of an fgjax `params` path (None: not compared)."""
    from fgjax.weights.resnet_keys import torch_key as backbone_key

    group, *rest = path
    if group == "backbone":
        return "encoder_q." + backbone_key(("params", *rest))
    if group == "projector":
        layer = {"fc0": "fc.0", "fc1": "fc.2"}[rest[0]]
        return f"encoder_q.{layer}.{'weight' if rest[1] == 'kernel' else 'bias'}"
    return {
        ("conv", "kernel"): "conv16.weight",
        ("bn", "scale"): "bn16.weight",
        ("bn", "bias"): "bn16.bias",
    }[tuple(rest)]


def to_torch(path: tuple, value) -> np.ndarray:
    """An fgjax leaf in the original's layout (conv [O, I, kh, kw], linear [O, I])."""
    value = np.asarray(value)
    if path[-1] != "kernel":
        return value
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if path[0] == "rationale":
        return value.T[:, :, None, None]
    return value.T


def compare_params(params: dict, want: dict, prefix: str, atol: float) -> float:
    """Assert every leaf of `params` equals the fixture's `<prefix><torch key>`; the max
    |difference|."""
    worst = 0.0
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = tuple(p.key for p in path)
        key = torch_key(path)
        if prefix.endswith("encoder_k."):
            key = key.replace("encoder_q.", "encoder_k.")
        got, ref = to_torch(path, value), want[prefix.rsplit("/", 1)[0] + "/" + key]
        np.testing.assert_allclose(got, ref, rtol=0, atol=atol, err_msg="/".join(path))
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def bn_stats(state) -> dict[str, tuple[np.ndarray, int]]:
    """fgjax's BN running statistics as `{<torch key>: (value, updates per step)}`: the
    query and key backbones (1 train-mode pass each) and the branch's bn16 (3)."""
    from fgjax.weights.resnet_keys import torch_key as backbone_key

    trees = {
        "encoder_q.": state.model_state["batch_stats"]["backbone"],
        "encoder_k.": state.method_state["key_model_state"]["batch_stats"]["backbone"],
    }
    out = {}
    for prefix, tree in trees.items():
        for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
            key = prefix + backbone_key(("batch_stats", *(p.key for p in path)))
            out[key] = (np.asarray(value), 1)
    branch = state.model_state["batch_stats"].get("rationale")
    if branch is not None:
        for stat in ("mean", "var"):
            out[f"bn16.running_{stat}"] = (np.asarray(branch["bn"][stat]), 3)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_match_the_original(golden, case):
    run_and_compare(golden, case)


def test_four_emulated_devices_match_the_four_processes():
    """lcr_p4 on a mesh of 4 emulated CPU devices (the batch sharded as the 4 GPUs'), in
    one subprocess: the groups, not the devices, set the result."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[-1] == "devices=4"


def run_and_compare(golden: dict, case: str, mesh=None) -> None:
    """Run `case`'s 3 steps (on `mesh` if given) and assert they match the fixture."""
    method, config, state, step = setup(golden, case, mesh)
    name, processes = CASES[case][:2]
    previous = {k: v for k, (v, _) in bn_stats(state).items()}
    original_previous = {k: golden[f"init/{k}"] for k in previous}
    for t in range(STEPS):
        inputs = batch(golden, t) if mesh is None else global_batch(batch(golden, t), mesh)
        state, metrics = step(state, None, inputs)
        assert float(metrics["skipped"]) == 0.0
        ce, cam = golden[f"{case}/ce"][t], golden[f"{case}/cam"][t]
        ssl = metrics["ssl_loss" if name == "lcr" else "loss"]
        np.testing.assert_allclose(float(ssl), ce.mean(), rtol=LOSS_RTOL)
        if name == "lcr":
            np.testing.assert_allclose(float(metrics["lcr_loss"]), cam.mean(), rtol=LOSS_RTOL)
            np.testing.assert_allclose(
                float(metrics["loss"]), ce.mean() + 0.01 * cam.mean(), rtol=LOSS_RTOL
            )
        compare_params(state.params, golden, f"{case}/{t}/", PARAM_ATOL)
        np.testing.assert_allclose(
            np.asarray(state.method_state["queue"]).T, golden[f"{case}/{t}/queue"], atol=PARAM_ATOL
        )
        assert int(state.method_state["queue_ptr"]) == golden[f"{case}/{t}/queue_ptr"][0]
        # BN running statistics: each process updates its own from its group's batch (n
        # train-mode passes a step); DDP then broadcasts process 0's before the next
        # forward. fgjax averages the groups' updates, so compare what the step adds:
        # new - 0.9^n old (the mean over the processes for the original).
        for key, (value, n) in bn_stats(state).items():
            decay = 0.9**n
            ranks = np.mean([golden[f"{case}/{t}/r{r}/{key}"] for r in range(processes)], 0)
            np.testing.assert_allclose(
                value - decay * previous[key],
                ranks - decay * original_previous[key],
                atol=STAT_ATOL,
                err_msg=key,
            )
            previous[key] = value
            original_previous[key] = golden[f"{case}/{t}/r0/{key}"]
    compare_params(
        state.method_state["key_params"], golden, f"{case}/{STEPS - 1}/encoder_k.", PARAM_ATOL
    )


def test_the_gradient_of_the_fitting_term_alone_matches_the_original(golden):
    """nu * L_cam's gradient at step 0: through the branch and, with the Grad-CAM target
    not detached, through A into the backbone; never into the projector (dL/dy is held
    constant, as the original's first-order `autograd.grad`)."""
    case = "lcr_camgrad_p4"
    method, config, state, _ = setup(golden, "lcr_p4")
    spec = photometric_spec(config, "view1")
    views = {
        v: jnp.asarray(
            (golden["views/0"][i] / np.float32(255.0) - np.asarray(spec.mean, np.float32))
            / np.asarray(spec.std, np.float32)
        )
        for i, v in enumerate(("view1", "view2"))
    }
    ctx = StepContext(step=jnp.int32(0), epoch=jnp.float32(0), run=method.run)
    method_state = method.before_step(state.params, state.method_state, ctx)

    def fitting(params):
        _, aux = method.loss(
            params, state.model_state, method_state, None, views, {}, ctx, jax.random.key(0)
        )
        return config.lcr.loss_weight * aux.metrics["lcr_loss"]

    grads = jax.jit(jax.grad(fitting))(state.params)
    assert not any(np.any(g) for g in jax.tree.leaves(grads["projector"]))
    scale = max(np.abs(v).max() for k, v in golden.items() if k.startswith(f"{case}/grad0/"))
    # float32: measured max |difference| 6e-9 = 1e-6 x `scale` (5.6e-3); detaching the
    # Grad-CAM target changes backbone gradients by 1e-3..1e-2 x scale, so a bound of
    # 1e-4 x scale sees it.
    compare_params(grads, golden, f"{case}/grad0/", 1e-4 * scale)


if __name__ == "__main__":  # test_four_emulated_devices_match_the_four_processes
    run_and_compare(dict(np.load(FIXTURE)), "lcr_p4", make_mesh())
    print(f"devices={jax.device_count()}")
