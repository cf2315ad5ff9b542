"""Run a few train steps of a tiny method on a fixed batch and save the parameters.

Used by tests/test_train.py to compare an 8-simulated-device run with a 1-device run:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python run_steps.py moco OUT.npz
"""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import jitted_step, random_batch, run_info, tiny_config  # noqa: E402

from fgjax.core.sharding import global_batch  # noqa: E402


def run(method_name: str, num_steps: int = 2) -> dict[str, np.ndarray]:
    config = tiny_config(method_name)
    config.train.batch_size = 16
    method, state, frozen, step, mesh = jitted_step(config, run_info(config))
    rng = np.random.default_rng(0)
    for _ in range(num_steps):
        batch = random_batch(rng, method.view_names, 16, 16)
        state, metrics = step(state, frozen, global_batch(batch, mesh))
    leaves = jax.tree_util.tree_flatten_with_path(
        {"params": state.params, "method_state": state.method_state, "loss": metrics["loss"]}
    )[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


if __name__ == "__main__":
    result = run(sys.argv[1])
    result["__devices__"] = np.asarray(jax.device_count())
    np.savez(sys.argv[2], **result)
