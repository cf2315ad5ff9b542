"""fgjax's `byol` and `lcr_byol` against the authors' BYOL path (GANPerf/LCR @ fe591d4).

tests/fixtures/lcr_byol_golden.npz holds 3 iterations of main.py's training loop on the
authors' `BYOL` model, `LARS_simclr` and `LR_Scheduler` (tests/fixtures/
make_lcr_byol_golden.py): a tiny ResNet without stem max-pool (BasicBlock, widths 8 / 16,
32 px -> 8 x 8 maps), batch 8, MLPs 16 -> 8, one process as main.py runs it. fgjax runs its
real jitted train step from the same weights and batches. Compared per step: the BYOL
loss and the summed KL, the online and target parameters and every BN statistic.

The learning rate is fgjax's schedule of configs/cub_byol.py (one epoch = one step here,
so the 10-epoch warm-up spans the steps): the original's first step runs at the peak and
its np.linspace warm-up starts one step late (`schedule_delay_steps=1`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, run_info, tiny_config

from fgjax.config import load_config_file, photometric_config, photometric_spec
from fgjax.data.augment import no_augment_spec
from fgjax.methods import build_method
from fgjax.train import optim
from fgjax.train.state import create_train_state
from fgjax.train.step import make_train_step
from fgjax.weights.resnet_keys import torch_key as backbone_key

FIXTURE = os.path.join(REPO, "tests", "fixtures", "lcr_byol_golden.npz")
STEPS, BATCH, SIZE = 3, 8, 32
FIXED = dict(cam_norm="sample_max", cam_target_stopgrad=True, att_norm="sample_minmax")
CASES = {"byol": ("byol", {}), "lcr_byol": ("lcr_byol", {}), "lcr_byol_fixed": ("lcr_byol", FIXED)}
# float32 on two frameworks through 3 LARS steps: measured max |difference| 2.4e-7 on
# parameters and BN statistics (size ~0.1-1), 1.4e-6 relative on the losses; 7-40x margin.
LOSS_RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE))


def make_config(method: str, switches: dict):
    """configs/cub_byol.py's optimiser and BYOL settings on the tiny network."""
    c = tiny_config(method)
    recipe = load_config_file(os.path.join(REPO, "configs", "cub_byol.py"))
    c.optim = recipe.optim
    c.model.stem_maxpool = False
    c.model.overrides.update(dict(stage_sizes=(1, 1), block="basic", width=8))
    c.data.image_size = SIZE
    for view in c.views.values():
        view.size = SIZE
        view.photometric = photometric_config(no_augment_spec())
    c[method].update(dict(hidden_dim=16, dim=8, ema_base=0.996, ema_schedule="constant"))
    c[method].update(switches)
    c.train.batch_size = BATCH
    return c


def torch_name(path: tuple[str, ...], online: bool = True) -> str:
    """The original's state-dict key of an fgjax variable path (collection first)."""
    collection, group, *rest = path
    bn_stat = {"mean": "running_mean", "var": "running_var", "scale": "weight", "bias": "bias"}
    if group == "backbone":
        return ("backbone." if online else "target_encoder.0.") + backbone_key((collection, *rest))
    if group in ("projector", "predictor"):
        prefix = {
            "projector": "projector." if online else "target_encoder.1.",
            "predictor": "online_predictor.",
        }[group]
        layer, leaf = rest
        module = {"fc0": "layer1.0", "bn0": "layer1.1", "fc1": "layer2"}[layer]
        name = "weight" if leaf == "kernel" else bn_stat.get(leaf, leaf)
        return f"{prefix}{module}.{name}"
    layer, leaf = rest  # rationale: conv16 (no bias), bn16
    return "conv16.weight" if layer == "conv" else f"bn16.{bn_stat[leaf]}"


def to_fgjax(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """A torch tensor in fgjax's layout (conv HWIO, dense [in, out])."""
    if path[-1] != "kernel":
        return value
    if path[1] == "rationale":
        return value[:, :, 0, 0].T
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def fill(variables: dict, golden: dict, prefix: str, online: bool = True) -> dict:
    """`variables` (`{collection: tree}`) with every leaf from `golden[prefix + key]`."""

    def leaf(path, value):
        path = tuple(p.key for p in path)
        got = to_fgjax(golden[prefix + torch_name(path, online)], path)
        assert got.shape == value.shape, path
        return jnp.asarray(got, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, variables)


def compare(variables: dict, golden: dict, prefix: str, online: bool = True) -> float:
    """Assert `variables` equal the fixture's `prefix` state; the max |difference|."""
    worst = 0.0
    for path, value in jax.tree_util.tree_flatten_with_path(variables)[0]:
        path = tuple(p.key for p in path)
        want = to_fgjax(golden[prefix + torch_name(path, online)], path)
        np.testing.assert_allclose(np.asarray(value), want, rtol=0, atol=ATOL, err_msg=path)
        worst = max(worst, float(np.abs(np.asarray(value) - want).max()))
    return worst


def setup(golden: dict, case: str):
    name, switches = CASES[case]
    config = make_config(name, switches)
    run = run_info(config, steps_per_epoch=1, num_epochs=100)
    method = build_method(config, run)
    schedule = optim.make_schedule(config.optim, BATCH, run.steps_per_epoch, 100)
    tx = optim.make_optimizer(config.optim, schedule)
    state = create_train_state(method, tx, (2, SIZE, SIZE, 3), seed=0)
    online = fill({"params": state.params, **state.model_state}, golden, "init/")
    ms = state.method_state
    target = fill(
        {"params": ms["target_params"], **ms["target_model_state"]}, golden, "init/", False
    )
    params = online.pop("params")
    state = state.replace(
        params=params,
        model_state=online,
        method_state={"target_params": target.pop("params"), "target_model_state": target},
        opt_state=tx.init(params),
    )
    specs = {v: photometric_spec(config, v) for v in method.view_names}
    return method, state, jax.jit(make_train_step(method, tx, specs, run))


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_match_the_original(golden, case):
    method, state, step = setup(golden, case)
    for t in range(STEPS):
        views = golden[f"views/{t}"]
        batch = {
            "views": {"view1": views[0], "view2": views[1]},
            "label": np.zeros(BATCH, np.int32),
            "coarse_label": np.zeros(BATCH, np.int32),
            "index": np.arange(BATCH, dtype=np.int32),
        }
        state, metrics = step(state, None, batch)
        assert float(metrics["skipped"]) == 0.0
        loss, cam = golden[f"{case}/loss"][t], golden[f"{case}/cam"][t]
        if case == "byol":
            np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=LOSS_RTOL)
        else:
            np.testing.assert_allclose(float(metrics["ssl_loss"]), loss, rtol=LOSS_RTOL)
            np.testing.assert_allclose(float(metrics["lcr_loss"]), cam, rtol=LOSS_RTOL)
        compare({"params": state.params, **state.model_state}, golden, f"{case}/{t}/")
        ms = state.method_state
        target = {"params": ms["target_params"], **ms["target_model_state"]}
        compare(target, golden, f"{case}/{t}/", online=False)


def test_the_recipe_schedule_is_the_originals(golden):
    """configs/cub_byol.py's lr: step 0 at the peak (the optimiser's initial lr), then
    LR_Scheduler's np.linspace(0, peak, 10) (the peak on the last warm-up step) one step
    late, then its cosine."""
    config = make_config("byol", {})
    schedule = optim.make_schedule(config.optim, BATCH, 1, 100)
    peak = 0.3 * BATCH / 256
    fgjax = np.asarray([schedule(t) for t in range(12)])
    np.testing.assert_allclose(fgjax[:STEPS], golden["byol/lr"], rtol=1e-6, atol=1e-12)
    want = np.concatenate([[peak], np.linspace(0, peak, 10), [peak]])
    np.testing.assert_allclose(fgjax, want, rtol=1e-6, atol=1e-12)
