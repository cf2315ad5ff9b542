"""Every registered method's tiny jitted step keeps a finite loss and finite gradients
(the step's guard: `skipped` is 0) at the suite's XLA CPU optimisation level (0 by
default), in float32 and in bfloat16, on random images, all-zero images, one constant
image and one image whose feature maps are all zero (dead ReLUs). The other level runs
in tests/test_finite_steps_other_level.py; tests/finite_steps.py builds the cases."""

import pytest
from finite_steps import BATCHES, METHODS, assert_finite, run_case

from fgjax.methods import registered_methods


def test_every_registered_method_has_a_case():
    shipped = {m for m in registered_methods() if not m.startswith("toy_")}  # tests' toys
    assert set(METHODS) == shipped


@pytest.mark.parametrize("name", METHODS)
def test_a_float32_step_is_finite_on_every_batch(name):
    results = run_case(name, "float32")
    assert_finite(results, BATCHES)
    # The dead image's step is another step: image 0's features were really zeroed.
    for phase in {key[: -len("random")] for key in results if key.endswith("random")}:
        assert results[phase + "dead"]["loss"] != results[phase + "random"]["loss"]


@pytest.mark.parametrize("name", METHODS)
def test_a_bfloat16_step_is_finite(name):
    batches = ("random", "zeros", "constant")  # one compile: the dead image runs in float32
    assert_finite(run_case(name, "bfloat16", batches), batches)
