"""HERBS against the authors' own training code (issue #29): 4 optimiser steps of
chou141253/FGVC-HERBS@f3deb47 `main.py::train` on CPU, recorded by
tests/fixtures/make_herbs_golden.py (torch; this file never imports it).

The fgjax side is the real jitted train step (`make_train_step`, accumulate_steps 3,
the epoch's smaller last batch of 2 micro-batches) with the HERBS recipe's optimiser
(configs/cub_herbs.py: Nesterov SGD, coupled decay, HERBS' micro-batch lr schedule),
started from the original's own initial state dict (imported by `fgjax.weights`) at
epoch 9 (T = 64) and crossing into epoch 10 (T = 32). Compared: every loss term of every
micro-batch (each level's L_HR, L_layer, L_drop, and L_comb), the divided micro-batch
losses, the lr of each step, every parameter, the head's BatchNorm running statistics and
the SGD momentum buffers after every step.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import REPO, jitted_step, run_info, tiny_config

from fgjax.config import load_config_file, photometric_config
from fgjax.core.sharding import global_batch, put_replicated
from fgjax.data.augment import no_augment_spec
from fgjax.methods.herbs.keys import herbs_variables_from_torch
from fgjax.train import optim
from fgjax.weights.variables import flatten

FIXTURE = Path(__file__).parents[1] / "fixtures" / "herbs_golden.npz"
LEVELS = ("layer1", "layer2", "layer3", "layer4")

# Tolerances. Loss terms: float32 forwards of a Swin + head in two frameworks agree to
# ~3e-7 at the first step; later steps start from parameters that already differ by
# float32 rounding, so every term is held to 1e-5 relative. L_HR gets an absolute floor:
# at T = 64 / 32 it is a KL of ~1e-5 between nearly equal distributions, whose float32
# value cancels to ~5e-9 in either framework.
LOSS_RTOL = 1e-5
HR_ATOL = 2e-8
# Parameters, statistics, momentum: the largest difference of a tensor over its largest
# value. Gradients are float32 sums (up to 4 x 144 tokens x 16 channels) in another
# order, ~1e-7 relative per step, compounded over 4 steps. Momentum:
# the gradient of a bias that feeds a BatchNorm (fpn_classifier_*/0) is 0 in exact
# arithmetic, i.e. float32 noise of ~1e-5 in both frameworks, so buffers are compared to
# 3e-4 of their size or of MOMENTUM_FLOOR, whichever is larger (measured: 1.1e-4, all
# other buffers 3e-5).
STATE_TOL = 2e-5
MOMENTUM_TOL = 3e-4
MOMENTUM_FLOOR = 0.1
# The Swin's final LayerNorm: unused by HERBS, so torch's SGD skips it (no gradient) while
# fgjax's coupled decay shrinks it (spec 10.8; configs/cub_herbs.py, "Not reproduced").
UNUSED = ("backbone", "norm")


@functools.cache
def _golden() -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(FIXTURE) as f:
        data = dict(f)
    return json.loads(str(data.pop("config"))), data


def _config(g: dict) -> ml_collections.ConfigDict:
    """The tiny HERBS run of the fixture, with the CUB recipe's optimiser and schedule."""
    c = tiny_config("herbs")
    c.model.arch = "swin_tiny_patch4_window7_224"
    c.model.overrides = ml_collections.ConfigDict(
        {k: g[k] for k in ("embed_dim", "depths", "num_heads", "window_size", "img_size")}
        | {"patch_size": g["patch_size"]}
    )
    c.model.drop_path_rate = 0.0  # the golden run's (random masks cannot be matched)
    c.data.image_size = g["img_size"]
    c.herbs.update(
        fpn_size=g["fpn_size"],
        num_selects=tuple(g["num_selects"]),
        tokens_per_node=64,  # hard-coded in the original's GCNCombiner
        comb_dropout=0.0,  # the golden run's
        temperature=float(g["temperature"]),
        hr_weight=g["lambda_b0"],
        layer_weight=g["lambda_b"],
        select_weight=g["lambda_s"],
        drop_weight=g["lambda_n"],
        comb_weight=g["lambda_c"],
    )
    c.views.view1.photometric = photometric_config(no_augment_spec())
    c.optim = load_config_file(os.path.join(REPO, "configs", "cub_herbs.py")).optim
    c.optim.lr = g["max_lr"]
    c.optim.weight_decay = g["wdecay"]
    c.optim.warmup_epochs = g["warmup_batchs"] / _micro_per_epoch(g)
    c.train.batch_size = g["micro_batch"] * g["update_freq"]
    c.train.accumulate_steps = g["update_freq"]
    c.train.keep_last_batch = True
    c.train.num_epochs = g["max_epochs"]
    return c


def _micro_per_epoch(g: dict) -> int:
    return -(-g["per_epoch"] // g["micro_batch"])


def _step_batches(g: dict, data: dict) -> list[dict]:
    """Per optimiser step, the fgjax batch of the original's micro-batches.
    The trainer's micro-batch a of a full batch holds examples a, a + A, a + 2A, ... (A =
    accumulate_steps); the epoch's last batch holds its full micro-batches in order, then
    the rest."""
    m, a = g["micro_batch"], g["update_freq"]
    micro = [np.arange(i, min(i + m, g["per_epoch"])) for i in range(0, g["per_epoch"], m)]
    steps = []
    for e in range(len(g["epochs"])):
        for start in range(0, len(micro), a):
            group = micro[start : start + a]
            if len(group) == a:
                order = np.stack(group, axis=1).reshape(-1)
            else:
                order = np.concatenate(group)
            batch = {
                "views": {"view1": data["images"][e][order]},
                "label": data["labels"][e][order].astype(np.int32),
                "coarse_label": np.zeros(len(order), np.int32),
                "index": order.astype(np.int32),
            }
            steps.append(batch)
    return steps


def _unpack(g: dict, data: dict, kind: str, step: int) -> dict[str, np.ndarray]:
    """Step `step`'s tensors of `kind` ('p' parameters, 'm' momentum, 's' statistics)."""
    flat, out, at = data[kind][step], {}, 0
    for key, shape in g[f"{kind}_keys"]:
        size = int(np.prod(shape))
        out[key] = flat[at : at + size].reshape(shape)
        at += size
    assert at == flat.size
    return out


def _torch_variables(g: dict, data: dict, target: dict, step: int | None, kind: str = "p"):
    """The original's state dict after `step` (None: the initial one) imported by
    fgjax.weights; `kind='m'` puts the momentum buffers in the parameters' places."""
    if step is None:
        sd = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
    else:
        sd = _unpack(g, data, "s", step) | _unpack(g, data, kind, step)
    variables, report = herbs_variables_from_torch(sd, target)
    assert not report.missing and not report.mismatched, report
    return variables


def _trace(opt_state) -> dict:
    """The SGD momentum tree of the optax state."""
    found = [s.trace for s in jax.tree.leaves(opt_state, is_leaf=_is_trace) if _is_trace(s)]
    assert len(found) == 1
    return found[0]


def _is_trace(x) -> bool:
    return isinstance(x, optax.TraceState)


def _with_count(opt_state, count: int):
    """`opt_state` with every step counter at `count` (the schedule's position)."""

    def set_count(path, leaf):
        name = getattr(path[-1], "name", None)
        return jnp.full_like(leaf, count) if name == "count" else leaf

    return jax.tree_util.tree_map_with_path(set_count, opt_state)


@functools.cache
def _trajectory():
    """(golden config, data, per-step records of the fgjax run)."""
    g, data = _golden()
    config = _config(g)
    per_epoch_steps = -(-_micro_per_epoch(g) // g["update_freq"])
    run = run_info(config, g["num_classes"], per_epoch_steps, g["max_epochs"])
    schedule = optim.make_schedule(
        config.optim,
        config.train.batch_size,
        per_epoch_steps,
        g["max_epochs"],
        g["update_freq"],
        _micro_per_epoch(g),
    )
    method, state, frozen, step, mesh = jitted_step(config, run, schedule)
    target = {"params": state.params, **state.model_state}
    initial = _torch_variables(g, data, target, None)
    start = g["epochs"][0] * per_epoch_steps
    state = state.replace(
        params=initial["params"],
        model_state={"batch_stats": initial["batch_stats"]},
        step=jnp.asarray(start, jnp.int32),
        opt_state=_with_count(state.opt_state, start),
    )
    state = put_replicated(state, mesh)
    records = []
    for i, batch in enumerate(_step_batches(g, data)):
        state, metrics = step(state, frozen, global_batch(batch, mesh))
        records.append(
            dict(
                metrics=jax.device_get(metrics),
                lr=float(schedule(start + i)),
                state=jax.device_get(state),
            )
        )
    return g, data, target, records


def test_images_reach_the_network_as_the_originals_tensors():
    """The step's normalisation of the uint8 views is the fixture's float32 formula, to
    float32 rounding (XLA multiplies by the reciprocals of 255 and of std, torch divides:
    up to 4 ulps of values of magnitude ~2)."""
    from fgjax.data.augment import photometric

    g, data = _golden()
    spec = _config(g).views.view1.photometric
    images = data["images"][0][:4]
    got = np.asarray(photometric(images, jax.random.key(0), no_augment_spec()))
    x = images.astype(np.float32) / np.float32(255.0)
    want = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def _group_means(g: dict, values: np.ndarray) -> np.ndarray:
    """Per optimiser step, the mean over its micro-batches (3, 2, 3, 2)."""
    sizes = [3, 2] * len(g["epochs"])
    return np.add.reduceat(values, np.cumsum([0] + sizes[:-1])) / sizes


def test_every_loss_term_of_every_level_matches_the_original():
    """The step reports each term as the mean over its micro-batches (see the loss test
    for the sum the gradients take)."""
    g, data, _, records = _trajectory()
    assert len(data["micro/loss"]) == 10
    names = {"comb": "comb_loss"} | {
        f"{term}_{n}": f"{term}_loss_{n}" for term in ("hr", "layer", "drop") for n in LEVELS
    }
    for name, metric in names.items():
        want = _group_means(g, data[f"micro/{name}"])
        have = [float(r["metrics"][metric]) for r in records]
        atol = HR_ATOL if name.startswith("hr") else 0.0
        np.testing.assert_allclose(have, want, rtol=LOSS_RTOL, atol=atol, err_msg=name)


def test_micro_batch_losses_are_divided_as_the_originals_groups():
    """Each micro-batch's loss / 3, the epoch's ragged last group's / 2 (spec 5.3): the
    original's divided losses of one step sum to the step's mean loss."""
    _, data, _, records = _trajectory()
    step_sums = np.add.reduceat(data["micro/loss"], [0, 3, 5, 8])
    have = [float(r["metrics"]["loss"]) for r in records]
    np.testing.assert_allclose(have, step_sums, rtol=LOSS_RTOL)
    assert all(float(r["metrics"]["skipped"]) == 0.0 for r in records)


def test_learning_rate_of_every_step_matches_the_original():
    _, data, _, records = _trajectory()
    np.testing.assert_allclose([r["lr"] for r in records], data["lr"], rtol=1e-6)


def _assert_trees_close(
    got: dict, want: dict, what: str, tol: float = STATE_TOL, floor: float = 0.0
) -> None:
    got, want = flatten(got), flatten(want)
    assert set(got) == set(want), what
    for path, w in want.items():
        w = np.asarray(w)
        known = ~np.isnan(w)  # a momentum buffer the original never created
        if path[: len(UNUSED)] == UNUSED or not known.any():
            continue
        h = np.asarray(got[path])[known]
        scale = max(np.abs(w[known]).max(), floor, 1e-12)
        err = np.abs(h - w[known]).max() / scale
        assert err <= tol, f"{what} {'/'.join(path)}: {err:.2e} of {scale:.2e}"


@pytest.mark.parametrize("step", range(4))
def test_parameters_and_running_statistics_after_every_step(step):
    g, data, target, records = _trajectory()
    want = _torch_variables(g, data, target, step)
    state = records[step]["state"]
    _assert_trees_close(state.params, want["params"], f"step {step} params")
    _assert_trees_close(state.model_state["batch_stats"], want["batch_stats"], f"step {step} stats")


@pytest.mark.parametrize("step", range(4))
def test_momentum_buffers_after_every_step(step):
    g, data, target, records = _trajectory()
    want = _torch_variables(g, data, target, step, kind="m")
    trace = _trace(records[step]["state"].opt_state)
    _assert_trees_close(trace, want["params"], "momentum", MOMENTUM_TOL, MOMENTUM_FLOOR)


def test_only_the_unused_swin_norm_differs_by_design():
    """torch never updates the final norm (no gradient); fgjax's coupled decay does."""
    g, data, target, records = _trajectory()
    initial = _torch_variables(g, data, target, None)["params"]["backbone"]["norm"]
    torch_last = _torch_variables(g, data, target, 3)["params"]["backbone"]["norm"]
    ours = records[-1]["state"].params["backbone"]["norm"]
    np.testing.assert_array_equal(torch_last["scale"], initial["scale"])
    assert np.all(np.abs(ours["scale"]) < np.abs(initial["scale"]))
