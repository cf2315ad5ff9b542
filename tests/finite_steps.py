"""One tiny jitted train step of every registered method on ordinary and adversarial
batches, reporting whether the loss and the gradients were finite (the step's own guard:
`skipped` is 0 exactly when both are).

Imported by tests/test_finite_steps.py (this process: the suite's XLA CPU optimisation
level, float32 and bfloat16) and run as a script by tests/test_finite_steps_other_level.py
in a subprocess at the other level (the level must be set before jax starts):

    FGJAX_TEST_XLA_LEVEL=1 python tests/finite_steps.py float32 random,zeros,constant [method ...]

prints `{method: {batch: outcome}, "xla_flags": ...}` as JSON on its last line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import jitted_step, run_info, tiny_config, tiny_herbs_config  # noqa: E402

from fgjax.config import photometric_spec  # noqa: E402
from fgjax.core.objectives import all_finite  # noqa: E402
from fgjax.core.sharding import global_batch, put_replicated  # noqa: E402
from fgjax.models.resnet import ResNet  # noqa: E402
from fgjax.models.swin import Swin  # noqa: E402
from fgjax.train import optim  # noqa: E402
from fgjax.train.step import jit_train_step, make_train_step  # noqa: E402

B = 8
# Every registered method; BuCSFR in both phases (before its first clustering and after).
METHODS = (
    "supervised",
    "moco",
    "byol",
    "lcr",
    "lcr_byol",
    "herbs",
    "bucsfr",
    "leadpp",
    "arcface",
    "cosface",
    "dgpcrl",
    "ms_loss",
    "proxy_anchor",
    "lincls",
)
# The batches: random images; all zero; image 0 one constant grey; image 0's backbone
# feature maps all zero (its ReLUs dead), the rest random.
BATCHES = ("random", "zeros", "constant", "dead")
TINY_CLIP = dict(width=12, layers=1, heads=2, patch_size=8, img_size=16, embed_dim=8)


def case_config(name: str, dtype: str, folder: str):
    """The tiny config of method `name` with compute dtype `dtype` (files it needs go to
    `folder`)."""
    config = tiny_herbs_config() if name == "herbs" else tiny_config(name)
    section = config[name]
    for field, value in dict(hidden_dim=16, dim=8, queue_size=32, embedding_dim=8).items():
        if field in section:
            section[field] = value
    if "bn_groups" in section:
        section.bn_groups = 2  # shuffled / grouped BN over 2 "GPUs"
    if name == "leadpp":
        protos = np.random.default_rng(0).normal(size=(5, 8))
        path = os.path.join(folder, "prototypes.npy")
        np.save(path, (protos / np.linalg.norm(protos, axis=1, keepdims=True)).astype(np.float32))
        section.update(dict(prototypes=path, teacher_overrides=TINY_CLIP, loss_device_groups=2))
    if name == "lincls":
        config.optim.freeze = ("backbone",)
    if name == "bucsfr":
        section.clusters_per_coarse = 2
    if name != "herbs":
        config.model.overrides.stage_sizes = (1,)  # one stage: half the program to compile
    config.model.dtype = dtype
    config.train.batch_size = B
    return config


def batches(view_names, size: int, labels: np.ndarray) -> dict[str, dict]:
    """The four batches of `BATCHES` ('dead' holds random images: the step kills image 0)."""
    rng = np.random.default_rng(0)
    random = {v: rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8) for v in view_names}
    zeros = {v: np.zeros_like(x) for v, x in random.items()}
    constant = {v: x.copy() for v, x in random.items()}
    for x in constant.values():
        x[0] = 128
    fields = {
        "label": labels,
        "coarse_label": (labels % 2).astype(np.int32),
        "index": np.arange(B, dtype=np.int32),
    }
    views = {"random": random, "zeros": zeros, "constant": constant, "dead": random}
    return {kind: {"views": v, **fields} for kind, v in views.items()}


def kill_first_image(next_fun, args, kwargs, context):
    """A Flax interceptor: image 0's backbone outputs (every map, the pooled vector) are 0,
    as when every ReLU of its last stage is dead; gradients through them are 0 too."""
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or not isinstance(context.module, (ResNet, Swin)):
        return out

    def kill(x):
        alive = jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype).at[0].set(0)
        return x * alive

    return jax.tree.map(kill, out)


def clustered_state(state, method, run):
    """BuCSFR's method state as after a BuC step: 2 clusters per coarse class."""
    n, c_max = run.num_train_examples, method.max_clusters
    rng = np.random.default_rng(1)
    centroids = np.zeros((c_max, 8), np.float32)
    centroids[:4] = rng.normal(size=(4, 8))
    centroids[:4] /= np.linalg.norm(centroids[:4], axis=1, keepdims=True)
    queue_size = state.method_state["queue_coarse"].shape[0]
    clustered = {
        "clustered": np.ones((), np.int32),
        "clusters_per_class": np.array([2, 2], np.int32),
        "im2cluster": rng.integers(0, 4, n).astype(np.int32),
        "centroids": centroids,
        "queue_coarse": rng.integers(0, 2, queue_size).astype(np.int32),
    }
    return state.replace(method_state={**state.method_state, **clustered})


def outcome(before, after, metrics) -> dict:
    """What a case reports: the loss, the guard's verdict and whether the step moved the
    parameters (finitely)."""
    moved = any(
        bool(np.any(np.asarray(a) != np.asarray(b)))
        for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True)
    )
    return {
        "loss": float(metrics["loss"]),
        "skipped": float(metrics["skipped"]),
        "params_finite": bool(all_finite(after.params)),
        "moved": moved,
    }


def assert_finite(results: dict[str, dict], batches) -> None:
    """Every expected batch ran, its step was not skipped and its parameters are finite."""
    phases = {key.rsplit("/", 1)[0] for key in results if "/" in key}
    expected = {f"{p}/{b}" for p in phases for b in batches} if phases else set(batches)
    assert set(results) == expected
    bad = {k: r for k, r in results.items() if r["skipped"] or not r["params_finite"]}
    assert not bad, f"non-finite loss or gradients: {bad}"
    assert all(r["moved"] for r in results.values())


def run_case(name: str, dtype: str = "float32", kinds=BATCHES) -> dict[str, dict]:
    """`{batch: outcome}` of one jitted step of method `name` from the same initial state
    on each batch of `kinds` (BuCSFR: `{phase/batch: outcome}` for both phases); one
    compile, and one more for 'dead' (the step with image 0 killed)."""
    with tempfile.TemporaryDirectory() as folder:
        config = case_config(name, dtype, folder)
        run = run_info(config, num_classes=4, steps_per_epoch=2)
        method, state, frozen, step, mesh = jitted_step(config, run, lambda s: 0.1)
        if "dead" in kinds:  # a step of its own, traced below with image 0's maps killed
            tx = optim.make_optimizer(config.optim, lambda s: 0.1)
            specs = {v: photometric_spec(config, v) for v in method.view_names}
            dead_step = jit_train_step(make_train_step(method, tx, specs, run), mesh)
        starts = {"": jax.device_get(state)}
        if name == "bucsfr":
            starts = {"warmup/": starts[""], "clustered/": clustered_state(starts[""], method, run)}
        size = config.views[method.view_names[0]].size
        labels = (np.arange(B) % 4).astype(np.int32)  # 2 per class: metric losses have pairs
        results = {}
        for phase, before in starts.items():
            for kind, batch in batches(method.view_names, size, labels).items():
                if kind not in kinds:
                    continue
                state = put_replicated(before, mesh)  # the step donates its input state
                if kind == "dead":
                    with nn.intercept_methods(kill_first_image):
                        after, metrics = dead_step(state, frozen, global_batch(batch, mesh))
                else:
                    after, metrics = step(state, frozen, global_batch(batch, mesh))
                results[phase + kind] = outcome(before, *jax.device_get((after, metrics)))
        return results


if __name__ == "__main__":
    dtype, kinds = sys.argv[1], sys.argv[2].split(",")
    results = {name: run_case(name, dtype, kinds) for name in sys.argv[3:] or METHODS}
    results["xla_flags"] = os.environ.get("XLA_FLAGS", "")  # what the step compiled under
    print(json.dumps(results))  # the last line (LEAD++'s random teacher warns before)
