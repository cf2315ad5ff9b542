"""load_pretrained's architecture dispatch (Swin goes to fgjax.weights.swin_keys)."""

import json
import os

import jax
import numpy as np
import pytest

from fgjax.weights import load_pretrained, save_pth, save_variables
from fgjax.weights.variables import flatten

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _swin_case():
    swin_keys = pytest.importorskip("fgjax.weights.swin_keys")
    from fgjax.models.swin import Swin

    with np.load(os.path.join(FIXTURES, "swin_w4_io.npz")) as io:
        config, x = json.loads(str(io["config"])), io["input"]
    with np.load(os.path.join(FIXTURES, "swin_w4_timm.npz")) as data:
        state_dict = {k: data[k] for k in data.files}
    model = Swin(**config)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return swin_keys, state_dict, target


def test_swin_checkpoints_dispatch_to_the_swin_key_map(tmp_path):
    swin_keys, state_dict, target = _swin_case()
    path = tmp_path / "swin.pth"
    save_pth(path, {f"module.{k}": v for k, v in state_dict.items()})
    variables, report = load_pretrained(
        path, target, "swin_tiny_patch4_window4_32", prefix="module."
    )
    expected, expected_report = swin_keys.swin_variables_from_torch(state_dict, target)
    assert report.ok == expected_report.ok and sorted(report.loaded) == sorted(
        expected_report.loaded
    )
    assert any("prefix 'module.'" in n for n in report.notes)
    for p, v in flatten(expected).items():
        np.testing.assert_array_equal(np.asarray(flatten(variables)[p]), np.asarray(v))
    # and fgjax's own .npz of the result loads back without a key map
    save_variables(tmp_path / "swin.npz", variables)
    again, report = load_pretrained(tmp_path / "swin.npz", target, "swin_tiny", strict=True)
    for p, v in flatten(expected).items():
        np.testing.assert_array_equal(np.asarray(flatten(again)[p]), np.asarray(v))


def test_unknown_architecture_is_an_error(tmp_path):
    path = tmp_path / "w.pth"
    save_pth(path, {"conv1.weight": np.zeros((1, 3, 7, 7), np.float32)})
    with pytest.raises(ValueError, match="unknown architecture 'vit_b16'"):
        load_pretrained(path, {"params": {}}, "vit_b16")
