"""Every registered method's tiny jitted step keeps a finite loss and finite gradients at
XLA CPU optimisation level 0 (what the notebooks compile at; the level at which LCR's
mask max once made NaN gradients, #28), on random, all-zero and one-constant-image
batches (one compile per method; the dead image runs at level 1). One subprocess for all
methods: the level is read when jax starts."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from finite_steps import METHODS
from test_finite_steps import assert_finite

BATCHES = ("random", "zeros", "constant")


@pytest.fixture(scope="module")
def level_zero() -> dict[str, dict]:
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=1", "")
    env = {
        **os.environ,
        "FGJAX_TEST_XLA_OPT": "1",  # or conftest, imported by the script, would add level 1
        "XLA_FLAGS": f"{flags} --xla_backend_optimization_level=0".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    script = os.path.join(REPO, "tests", "finite_steps.py")
    done = subprocess.run(
        [sys.executable, script, "float32", ",".join(BATCHES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", METHODS)
def test_a_step_at_level_zero_is_finite_on_every_batch(level_zero, name):
    assert_finite(level_zero[name], BATCHES)
