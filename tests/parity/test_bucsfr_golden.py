"""BuCSFR against the authors' own code (issue #29): the golden trajectory of
tests/fixtures/make_bucsfr_golden.py (the official main_worker in 2 gloo processes on CPU:
2 warm-up steps, BuC, 2 SFR steps, BuC) replayed by fgjax's real jitted train step with
`bn_groups=2` (the 2 processes' BN statistics) and its real epoch hook, on one CPU device
and (slow test) on 2 emulated devices, 8 examples each like the original's processes.

Shared with the original through the fixture: the initial weights and queue, the augmented
uint8 views, the shuffle permutation of the key batch, the uniforms of the SFR Bernoulli
draws and the k-means seeds (faiss' input centroids). Each is patched in here at the one
place fgjax draws it (`jax.random.permutation` for the key shuffle, `sample_selection`,
`buc_step`'s `init_index`); everything else is fgjax's own.

One difference stays (fgjax/models/norm.py, not BuCSFR's): fgjax's grouped BatchNorm
updates its running statistics with the mean of the groups' statistics; under DDP each
process updates its own copy from its own 128 images and DDP keeps process 0's (it
broadcasts its buffers at every forward), i.e. group 0's. After every step the test checks
fgjax's running statistics against the mean of the 2 processes' (the fixture has both,
updated from the same start), then continues from process 0's, as the original does.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, jitted_step, tiny_config

import fgjax.methods.bucsfr.method as bucsfr_module
from fgjax.config import photometric_config
from fgjax.core.sharding import global_batch
from fgjax.data.augment import no_augment_spec
from fgjax.methods import RunInfo
from fgjax.methods.bucsfr import sfr
from fgjax.methods.bucsfr.buc import buc_step
from fgjax.train import optim
from fgjax.train.loop import _apply_hook
from fgjax.weights.resnet_keys import resnet_variables_from_torch

FIXTURE = os.path.join(REPO, "tests", "fixtures", "bucsfr_golden.npz")
STEPS, BATCH, N = 4, 16, 32
# Tolerances: float32 on both sides with different summation orders (XLA vs torch CPU
# kernels, gloo's all-reduce of 2 gradients), 4 SGD steps at lr 0.03. Measured maxima (at
# XLA level 0): loss terms 4.2e-6, parameters 3.3e-6, BN statistics 1.7e-6, queue 8.5e-7,
# key projections 9e-8, merge ratios 7e-7; each tolerance leaves 2-10x of headroom and is
# far below what a wiring change moves (the mutations tried moved the loss by >= 4e-3).
LOSS_RTOL = 1e-5  # the loss terms
PARAM_ATOL = 2e-5  # parameters, key parameters and BN statistics, relative to max(1, |x|)
FEATURE_ATOL = 2e-5  # the unit key projections BuC clusters; the queue
# Merge ratios: log-dets of 64 x 64 Grams (fgjax) vs n x n ones (numba), float32. The
# closest pair of candidate ratios in the fixture is 6.7e-5 apart (relative), ~100x the
# measured error, so the same pair wins on both sides.
RATIO_RTOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE))


def _config(g):
    c = tiny_config("bucsfr")
    c.model.arch = "resnet18"  # torchvision BasicBlock, the 7x7 stem of --img_size 224
    c.model.overrides.stage_sizes = (1, 1, 1, 1)
    c.model.overrides.width = 4
    c.data.image_size = 32
    s = c.bucsfr
    s.update(hidden_dim=32, dim=64, queue_size=64, bn_groups=2, temperature=0.2, momentum=0.999)
    s.update(warmup_epochs=1, clusters_per_coarse=int(g["leaves"]), alpha=0.5)
    s.update(merge_threshold=float(g["threshold"]), prototype_temperature=0.01)
    s.positive_temperature = 0.1
    c.optim.update(name="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4)
    c.optim.update(weight_decay_mask="all", schedule="cosine", schedule_unit="epoch")
    c.optim.warmup_epochs = 0.0
    c.train.batch_size, c.train.num_epochs = BATCH, 100
    for view in c.views.values():
        view.photometric = photometric_config(no_augment_spec())
    return c


def _torch_part(g, prefix):
    """The arrays under `prefix` (e.g. 'step0/q/'), keys without it."""
    return {k[len(prefix) :]: v for k, v in g.items() if k.startswith(prefix)}


def _variables(sd, params, model_state):
    """A torch MoCo encoder's state dict -> fgjax (params, model_state); keys absent from
    `sd` keep the given values."""
    backbone = {k[4:]: v for k, v in sd.items() if k.startswith("net.")}
    target = {"params": params["backbone"], "batch_stats": model_state["batch_stats"]["backbone"]}
    variables, report = resnet_variables_from_torch(backbone, target, prefix="")
    if "projector.0.weight" in sd:  # a whole encoder: every backbone tensor must be there
        assert not report.missing and not report.unexpected, report
    params = {**params, "backbone": variables["params"]}
    for fgjax_name, torch_name in (("fc0", "projector.0"), ("fc1", "projector.2")):
        if f"{torch_name}.weight" in sd:
            params["projector"] = {
                **params["projector"],
                fgjax_name: {
                    "kernel": sd[f"{torch_name}.weight"].T,
                    "bias": sd[f"{torch_name}.bias"],
                },
            }
    if "classifer.weight" in sd:  # sic, the original's name
        params["classifier"] = {"kernel": sd["classifer.weight"].T, "bias": sd["classifer.bias"]}
    return params, {"batch_stats": {"backbone": variables["batch_stats"]}}


def _running_mean_of_processes(g, t, name, params, model_state):
    """fgjax's semantics on the original's numbers: the mean of the 2 processes' running
    statistics after step t (both updated from process 0's, which DDP broadcast)."""
    sd0, sd1 = _torch_part(g, f"step{t}/{name}/"), _torch_part(g, f"step{t}/{name}1/")
    mean = {k: (sd0[k] + sd1[k]) / 2 for k in sd1}
    return _variables(mean, params, model_state)[1]


def _max_diff(a, b):
    """max |a - b| / max(1, |b|) over the leaves of two trees."""
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x) - y) / np.maximum(1.0, np.abs(y)))), a, b
    )
    return max(jax.tree.leaves(diffs))


class _Tools:
    """The epoch hook's feature extractor on the fixture's 32 eval images."""

    def __init__(self, g, mean, std):
        x = g["images"].astype(np.float32) / np.float32(255.0)
        self.images = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        self.coarse = g["coarse"].astype(np.int32)
        self.features = None

    def extract(self, split, fn, state):
        self.features = np.asarray(fn(state, jnp.asarray(self.images)))
        return types.SimpleNamespace(
            features=self.features, coarse_labels=self.coarse, labels=-np.ones(N, np.int32)
        )


def _check_buc(g, call, state, method, tools, mesh, monkeypatch, report):
    """The epoch hook (BuC) against the original's `run_hkmeans` result of this call."""
    seeded = functools.partial(buc_step, init_index=g["init_pos"][call])
    monkeypatch.setattr(bucsfr_module, "buc_step", seeded)
    writer = types.SimpleNamespace(write=lambda step, metrics: report.update(buc=metrics))
    state = _apply_hook(method, call + 1, state, tools, mesh, writer, 0)
    want_features = g[f"buc{call}/features"]
    report["features"] = max(report["features"], np.abs(tools.features - want_features).max())
    np.testing.assert_allclose(tools.features, want_features, atol=FEATURE_ATOL)
    m = jax.device_get(state.method_state)
    counts = g[f"buc{call}/cluster_num_perc"]
    np.testing.assert_array_equal(m["clusters_per_class"], counts)
    np.testing.assert_array_equal(m["im2cluster"], g[f"buc{call}/im2cluster"])
    total = int(counts.sum())
    np.testing.assert_allclose(m["centroids"][:total], g[f"buc{call}/centroids"], atol=1e-5)
    assert not np.any(m["centroids"][total:])
    # The best ratio of each class is the smallest positive one of the original's matrix.
    for c in range(2):
        r = g[f"buc{call}/ratios{c}"]
        want = r[np.triu_indices_from(r, 1)]
        ratio = report["buc"]["buc/best_ratio"][c]
        report["ratio"] = max(report["ratio"], abs(ratio / want.min() - 1))
        np.testing.assert_allclose(ratio, want.min(), rtol=RATIO_RTOL)
    return state


def _check_step(g, t, state, metrics, report):
    """Loss terms, parameters, key encoder, queue and BN statistics after step t."""
    for name, ours in (
        ("total", "loss"),
        ("contrastive", "contrastive_loss"),
        ("ce", "coarse_ce"),
    ):
        want = g[f"loss/{name}"][t]
        rel = abs(float(metrics[ours]) - want) / abs(want)
        report["loss"] = max(report["loss"], rel)
        assert rel < LOSS_RTOL, (t, name, float(metrics[ours]), want)
    np.testing.assert_allclose(float(metrics["positives"]), g["positives"][t], rtol=1e-6)
    s = jax.device_get(state)
    m = s.method_state
    params, _ = _variables(_torch_part(g, f"step{t}/q/"), s.params, s.model_state)
    key_params, _ = _variables(_torch_part(g, f"step{t}/k/"), s.params, s.model_state)
    for what, ours, want in (("params", s.params, params), ("key", m["key_params"], key_params)):
        diff = _max_diff(ours, want)
        report[what] = max(report[what], diff)
        assert diff < PARAM_ATOL, (t, what, diff)
    for name, ours in (("q", s.model_state), ("k", m["key_model_state"])):
        want = _running_mean_of_processes(g, t, name, s.params, s.model_state)
        diff = _max_diff(ours, want)
        report["bn"] = max(report["bn"], diff)
        assert diff < PARAM_ATOL, (t, name, "running statistics", diff)
    queue = g[f"step{t}/queue"].T
    report["queue"] = max(report["queue"], np.abs(m["queue"] - queue).max())
    np.testing.assert_allclose(m["queue"], queue, atol=FEATURE_ATOL)
    np.testing.assert_array_equal(m["queue_coarse"], g[f"step{t}/label_queue"].astype(np.int32))
    assert int(m["queue_ptr"]) == (t + 1) * BATCH % 64


def _continue_from_process_0(g, t, state):
    """The original's running statistics (process 0's) for the next step (module doc)."""
    s = jax.device_get(state)
    _, model_state = _variables(_torch_part(g, f"step{t}/q/"), s.params, s.model_state)
    _, key_state = _variables(_torch_part(g, f"step{t}/k/"), s.params, s.model_state)
    method_state = {**s.method_state, "key_model_state": key_state}
    return state.replace(model_state=model_state, method_state=method_state)


def test_bucsfr_matches_the_authors_main_worker(golden, monkeypatch):
    g = golden
    assert jax.device_count() == int(os.environ.get("FGJAX_BUCSFR_GOLDEN_DEVICES", "1"))
    config = _config(g)
    spec = config.views.view1.photometric
    np.testing.assert_allclose(spec.mean, g["mean"], rtol=1e-6)
    np.testing.assert_allclose(spec.std, g["std"], rtol=1e-6)
    run = RunInfo(2, 200, BATCH, 8, 2, N)
    method, state, frozen, step, mesh = jitted_step(config, run)
    schedule = optim.make_schedule(config.optim, BATCH, 2, 100)
    np.testing.assert_allclose([schedule(t) for t in range(STEPS)], g["lr"], rtol=1e-6)

    # The original's initial state: both encoders from encoder_q (MoCo copies it), its queue.
    params, model_state = _variables(
        _torch_part(g, "init/encoder_q."), state.params, state.model_state
    )
    state = state.replace(
        params=params,
        model_state=model_state,
        method_state={
            **state.method_state,
            "key_params": jax.tree.map(jnp.array, params),  # copies: buffers are donated
            "key_model_state": jax.tree.map(jnp.array, model_state),
            "queue": jnp.asarray(g["init/queue"].T),
        },
    )
    # The random sources of the original run (module doc).
    permutation = jax.random.permutation
    perm = jnp.asarray(g["perm"], jnp.int32)
    monkeypatch.setattr(
        jax.random,
        "permutation",
        lambda key, x, *a, **k: perm if x == BATCH else permutation(key, x, *a, **k),
    )
    u_pos, u_neg = jnp.asarray(g["u_pos"]), jnp.asarray(g["u_neg"])
    monkeypatch.setattr(
        bucsfr_module,
        "sample_selection",
        lambda key, *args: sfr.selection_from_uniforms(u_pos, u_neg, *args),
    )
    tools = _Tools(g, spec.mean, spec.std)
    report = dict.fromkeys(("loss", "params", "key", "bn", "queue", "features", "ratio"), 0.0)
    for t in range(STEPS):
        if t == 2:  # epoch 1 starts: the first BuC step
            state = _check_buc(g, 0, state, method, tools, mesh, monkeypatch, report)
        index = g["index"][t]
        batch = {
            "views": {"view1": g["views"][t, 0], "view2": g["views"][t, 1]},
            "label": np.zeros(BATCH, np.int32),
            "coarse_label": g["coarse"][index].astype(np.int32),
            "index": index.astype(np.int32),
        }
        state, metrics = step(state, frozen, global_batch(batch, mesh))
        _check_step(g, t, state, jax.device_get(metrics), report)
        state = _continue_from_process_0(g, t, state)
    _check_buc(g, 1, state, method, tools, mesh, monkeypatch, report)  # epoch 2: counts carry
    print("max differences:", {k: f"{v:.2e}" for k, v in report.items() if k != "buc"})


@pytest.mark.slow
def test_bucsfr_matches_the_authors_main_worker_on_two_devices():
    """The same replay with the global batch sharded over 2 emulated CPU devices (one
    subprocess: the device count is fixed when jax starts)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", FGJAX_BUCSFR_GOLDEN_DEVICES="2")
    flags = os.environ.get("XLA_FLAGS", "")  # conftest's optimisation level
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    test = f"{os.path.abspath(__file__)}::test_bucsfr_matches_the_authors_main_worker"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
