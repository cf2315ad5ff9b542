"""CFGA's metric-learning baselines against the authors' own training scripts (issue #29).

fixtures/metric_learning_golden_<method>.npz come from RUNNING mikiyukio/CFGA_CARS196_train's
`train_msloss.py`, `train_cosface.py`, `train_arcface.py` and `train_DGPCRL.py` for K = 3
optimiser steps on a narrow ResNet and fixed batches (fixtures/make_metric_learning_golden.py).
Here fgjax's own recipe (configs/common/metric_learning.py, shrunk to the same network)
runs the real jitted train step from the same weights on the same uint8 batches; the loss of
every step, the parameters after every step and DGPCRL's BN running statistics are compared,
and the learning rate of every step of the full runs against the authors' schedulers.
Proxy-Anchor has no training code in the authors' repositories: nothing to compare.
"""

import os
import runpy
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import REPO, jitted_step, run_info  # noqa: E402

from fgjax.config import default_config  # noqa: E402
from fgjax.core.sharding import global_batch, put_replicated  # noqa: E402
from fgjax.train import optim  # noqa: E402
from fgjax.weights import resnet_variables_from_torch  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
# The recipes' shared code (configs/common/metric_learning.py; configs are loaded by path).
RECIPES = runpy.run_path(os.path.join(REPO, "configs", "common", "metric_learning.py"))
RETRIEVAL_TRAIN_IMAGES, recipe = RECIPES["RETRIEVAL_TRAIN_IMAGES"], RECIPES["recipe"]
METHODS = ("ms_loss", "cosface", "arcface", "dgpcrl")
CLASSES = 98
# Losses: float32 forward passes of the same network, summed in another order (measured:
# at most 2e-7 relative, 1e-6 for DGPCRL's s = 100 logits); rtol 1e-5. Parameters and BN
# statistics: each step moves a weight by about lr (Adam 3e-5, RMSprop 1e-5) or lr * grad
# (SGD 1e-3, DGPCRL's moves reach 1e-2); float32 rounding of the gradients changes that by
# a relative 1e-6 or so, the moves of the same weights agree to far below it: atol 2e-6 on
# weights of order 0.1-1 (measured after 3 steps: at most 4e-7).
LOSS_RTOL = 1e-5
PARAM_ATOL = 2e-6


def _load(method: str) -> dict:
    path = os.path.join(FIXTURES, f"metric_learning_golden_{method}.npz")
    with np.load(path) as data:
        return {k.split("/", 1)[1]: data[k] for k in data.files if "/" in k} | {
            k: data[k] for k in ("stage_sizes", "width")
        }


def _config(method: str, d: dict):
    """The authors' recipe in fgjax (configs/cars_<method>.py) on the fixture's network."""
    c = recipe(default_config(method), "cars")
    c.model.init_from = ""
    c.model.overrides.stage_sizes = tuple(int(s) for s in d["stage_sizes"])
    c.model.overrides.width = int(d["width"])
    c.model.dtype = "float32"
    c.train.batch_size = d["labels"].shape[1]
    c.views.view1.size = d["images"].shape[2]
    c[method].num_classes = CLASSES
    if "embedding_dim" in c[method]:
        c[method].embedding_dim = d["init/class_fc.weight"].shape[0]
    return c


def _from_torch(sd: dict, params: dict, model_state: dict) -> tuple[dict, dict]:
    """fgjax params / model_state from a state dict of the fixture (torch layout)."""
    target = {"params": params["backbone"], "batch_stats": model_state["batch_stats"]["backbone"]}
    backbone = {k: v for k, v in sd.items() if not k.startswith(("class_fc", "margin"))}
    variables, report = resnet_variables_from_torch(backbone, target)
    assert report.ok, str(report)
    params = {**params, "backbone": variables["params"]}
    if "embedding" in params:
        params["embedding"] = {"kernel": sd["class_fc.weight"].T, "bias": sd["class_fc.bias"]}
    if "margin" in params:
        params["margin"] = sd["margin.weight"]
    if "classifier" in params:
        params["classifier"] = sd["class_fc_2.weight"]
    return params, {"batch_stats": {"backbone": variables["batch_stats"]}}


def _state_dict(d: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}


@pytest.mark.parametrize("method", METHODS)
def test_steps_match_the_authors_script(method):
    d = _load(method)
    config = _config(method, d)
    k_steps = d["labels"].shape[0]
    run = run_info(config, num_classes=CLASSES, steps_per_epoch=k_steps, num_epochs=1)
    _, state, frozen, step, mesh = jitted_step(config, run)
    state = jax.device_get(state)
    params, model_state = _from_torch(_state_dict(d, "init/"), state.params, state.model_state)
    state = state.replace(params=params, model_state=model_state)
    for k in range(k_steps):
        batch = {
            "views": {"view1": d["images"][k]},
            "label": d["labels"][k].astype(np.int32),
            "coarse_label": np.zeros_like(d["labels"][k], np.int32),
            "index": np.arange(d["labels"].shape[1], dtype=np.int32),
        }
        state, metrics = step(put_replicated(state, mesh), frozen, global_batch(batch, mesh))
        state, metrics = jax.device_get((state, metrics))
        assert not metrics["skipped"], f"{method} step {k + 1} skipped"
        for term in ("loss", "classification", "decorrelation"):
            if term in d:
                np.testing.assert_allclose(
                    metrics[term], d[term][k], rtol=LOSS_RTOL, err_msg=f"{method} {term} {k + 1}"
                )
        want, want_state = _from_torch(
            _state_dict(d, f"step{k + 1}/"), state.params, state.model_state
        )
        for (path, got), expected in zip(
            jax.tree_util.tree_leaves_with_path((state.params, state.model_state)),
            jax.tree.leaves((want, want_state)),
            strict=True,
        ):
            np.testing.assert_allclose(
                got,
                expected,
                rtol=0,
                atol=PARAM_ATOL,
                err_msg=f"{method} step {k + 1} {jax.tree_util.keystr(path)}",
            )


def test_schedules_match_the_authors_schedulers():
    """The full runs' learning rates (no milestone is reached in 3 steps): MS loss's
    per-iteration multistep at 1200 / 2400 (`WarmupMultiStepLR`, no warm-up) and DGPCRL's
    per-epoch StepLR(100), against the Cars recipes' optax schedules (Cars: 8,054 training
    images, 100 steps of 80 / 134 steps of 60 per epoch)."""
    for method, key in (("ms_loss", "lr_per_iteration"), ("dgpcrl", "lr_per_epoch")):
        with np.load(os.path.join(FIXTURES, f"metric_learning_golden_{method}.npz")) as data:
            want = data[f"{method}/{key}"]
        c = recipe(default_config(method), "cars")
        per_epoch = RETRIEVAL_TRAIN_IMAGES["cars"] // c.train.batch_size
        schedule = optim.make_schedule(c.optim, c.train.batch_size, per_epoch, c.train.num_epochs)
        if key == "lr_per_iteration":
            steps = np.arange(want.size)
        else:  # the first and last step of every epoch
            steps = np.concatenate(
                [np.arange(want.size) * per_epoch, (np.arange(want.size) + 1) * per_epoch - 1]
            )
            want = np.concatenate([want, want])
        got = np.asarray(jax.vmap(schedule)(steps))
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=method)
