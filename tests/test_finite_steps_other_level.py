"""Every registered method's tiny jitted step keeps a finite loss and finite gradients at
the XLA CPU optimisation level the suite does not run at (1 when it runs at 0, the
default; 0 otherwise: LCR's mask max once made NaN gradients at level 0 only, #28), on
random, all-zero and one-constant-image batches (one compile per method; the dead image
runs at the suite's level). One subprocess for all methods: the level is read when jax
starts."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, XLA_LEVEL
from finite_steps import METHODS, assert_finite

BATCHES = ("random", "zeros", "constant")
OTHER_LEVEL = 1 if XLA_LEVEL == 0 else 0


@pytest.fixture(scope="module")
def other_level() -> dict[str, dict]:
    # The script imports conftest, which adds the level FGJAX_TEST_XLA_LEVEL names.
    flags = re.sub(r"--xla_backend_optimization_level=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = {
        **os.environ,
        "FGJAX_TEST_XLA_LEVEL": str(OTHER_LEVEL),
        "XLA_FLAGS": flags.strip(),
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("FGJAX_TEST_XLA_OPT", None)
    script = os.path.join(REPO, "tests", "finite_steps.py")
    done = subprocess.run(
        [sys.executable, script, "float32", ",".join(BATCHES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("xla_flags").endswith(f"--xla_backend_optimization_level={OTHER_LEVEL}")
    return results


@pytest.mark.parametrize("name", METHODS)
def test_a_step_at_the_other_level_is_finite(other_level, name):
    assert_finite(other_level[name], BATCHES)
