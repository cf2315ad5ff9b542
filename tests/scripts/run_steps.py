"""Run a few train steps of a tiny method on a fixed batch and save the parameters.

Used by tests/test_train.py to compare an 8-simulated-device run with a 1-device run:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python run_steps.py moco OUT.npz
"""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import tiny_config  # noqa: E402

from fgjax.config import photometric_specs  # noqa: E402
from fgjax.methods import build_method  # noqa: E402
from fgjax.train import optim  # noqa: E402
from fgjax.train.sharding import global_batch, make_mesh, put_replicated  # noqa: E402
from fgjax.train.state import create_train_state  # noqa: E402
from fgjax.train.step import jit_train_step, make_train_step  # noqa: E402


def run(method_name: str, num_steps: int = 2) -> dict[str, np.ndarray]:
    config = tiny_config(method_name)
    config.train.batch_size = 16
    method = build_method(config, num_classes=4, total_steps=10)
    schedule = optim.make_schedule(config.optim, 16, steps_per_epoch=5, num_epochs=2)
    tx = optim.make_optimizer(config.optim, schedule)
    mesh = make_mesh()
    state = put_replicated(create_train_state(method, tx, (2, 16, 16, 3), seed=0), mesh)
    step = jit_train_step(make_train_step(method, tx, photometric_specs(config)), mesh)
    rng = np.random.default_rng(0)
    for _ in range(num_steps):
        batch = {
            "images": rng.integers(0, 256, (16, method.num_views, 16, 16, 3), dtype=np.uint8),
            "label": rng.integers(0, 4, 16).astype(np.int32),
        }
        state, metrics = step(state, global_batch(batch, mesh))
    leaves = jax.tree_util.tree_flatten_with_path(
        {"params": state.params, "method_state": state.method_state, "loss": metrics["loss"]}
    )[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


if __name__ == "__main__":
    result = run(sys.argv[1])
    result["__devices__"] = np.asarray(jax.device_count())
    np.savez(sys.argv[2], **result)
