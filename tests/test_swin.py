"""Swin backbone and its PyTorch key maps: parity with timm on tiny random models, masks,
stochastic depth, full-size shapes / parameter counts, and checkpoint layouts.

The fixtures come from `tests/fixtures/make_swin_fixtures.py` (timm 1.0.31, torch on CPU);
this file never imports torch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.models.swin import (
    DropPath,
    Swin,
    relative_position_index,
    stage_window,
    swin_from_name,
    window_attention_mask,
)
from fgjax.weights.swin_keys import (
    is_old_layout,
    swin_variables_from_torch,
    swin_variables_to_torch,
)

FIXTURES = Path(__file__).parent / "fixtures"
TAPS = ("layer1", "layer2", "layer3", "layer4", "pooled")


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"swin_{name}.npz") as f:
        return dict(f)


@functools.cache
def _tiny(name: str):
    """(model, input [B, H, W, 3] float32, expected outputs, eval_shape target, jitted apply)."""
    io = _load(f"{name}_io")
    model = Swin(**json.loads(str(io.pop("config"))))
    x = io.pop("input").astype(np.float32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return model, x, io, target, jax.jit(lambda v, x: model.apply(v, x))


def _max_diff(out: dict, expected: dict) -> float:
    return max(float(np.abs(np.asarray(out[k]) - expected[k]).max()) for k in TAPS)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", ["w4", "w7"])
def test_matches_timm_for_new_and_old_key_layouts(name):
    model, x, expected, target, apply = _tiny(name)
    for layout, head in (
        ("timm", ["head.fc.weight", "head.fc.bias"]),
        ("old", ["head.weight", "head.bias"]),
    ):
        state_dict = _load(f"{name}_{layout}")
        assert is_old_layout(list(state_dict)) == (layout == "old")
        variables, report = swin_variables_from_torch(state_dict, target)
        assert report.missing == [] and report.mismatched == []
        assert sorted(report.unexpected) == sorted(head)  # buffers are skipped silently
        out = apply(variables, x)
        for k in TAPS:
            assert out[k].shape == expected[k].shape, k
        assert _max_diff(out, expected) < 1e-4, layout


def test_loader_accepts_wrapped_dict_and_reports_problems():
    _, _, _, target, _ = _tiny("w4")
    state_dict = _load("w4_timm")
    state_dict.pop("layers.1.downsample.norm.weight")
    state_dict["layers.0.blocks.0.attn.qkv.weight"] = np.zeros((3, 3), np.float32)
    state_dict["absolute_pos_embed"] = np.zeros((1, 256, 8), np.float32)
    state_dict["patch_embed.proj.weight"] = np.zeros((8, 3, 2, 2), np.float32)
    _, report = swin_variables_from_torch({"model": state_dict}, target)
    assert sorted(report.missing) == [
        "layers_0/blocks_0/attn/qkv/kernel",
        "layers_0/downsample/norm/scale",
        "patch_embed/proj/kernel",
    ]
    # Shapes in checkpoint (torch) terms on both sides.
    assert sorted(report.mismatched) == [
        ("layers.0.blocks.0.attn.qkv.weight", (3, 3), (24, 8)),
        ("patch_embed.proj.weight", (8, 3, 2, 2), (8, 3, 4, 4)),
    ]
    assert "absolute_pos_embed" in report.unexpected
    with pytest.raises(ValueError, match="incomplete"):
        report.raise_if_incomplete("test")


def test_herbs_checkpoint_loads_backbone_and_reports_head_keys():
    model, x, expected, target, apply = _tiny("w4")
    herbs_head = {
        "fpn_down.Proj_layer1.0.weight": np.zeros((16, 16), np.float32),
        "fpn_up.Down_layer1.weight": np.zeros((16, 64, 1), np.float32),
        "fpn_classifier_up_layer1.1.num_batches_tracked": np.zeros((), np.int64),
        "combiner.adj1": np.zeros((7, 7), np.float32),
    }
    backbone = {f"backbone.{k}": v for k, v in _load("w4_old").items()}
    checkpoint = {"model": {**backbone, **herbs_head}, "optimizer": {}, "epoch": 3}
    variables, report = swin_variables_from_torch(checkpoint, target)
    assert report.missing == [] and report.mismatched == []
    assert sorted(report.unexpected) == sorted(
        [*herbs_head, "backbone.head.weight", "backbone.head.bias"]
    )
    assert all(name.startswith("backbone.") for name in report.loaded)
    assert _max_diff(apply(variables, x), expected) < 1e-4


def test_round_trip_through_torch_layout_is_identity():
    _, _, _, target, _ = _tiny("w4")
    timm_sd = _load("w4_timm")
    variables, _ = swin_variables_from_torch(timm_sd, target)
    exported = swin_variables_to_torch(variables)
    # Exactly timm's own layout (minus the classifier), bit for bit.
    assert set(exported) == {k for k in timm_sd if not k.startswith("head.")}
    for key, value in exported.items():
        assert value.dtype == np.float32 and value.shape == timm_sd[key].shape, key
        np.testing.assert_array_equal(value, timm_sd[key])
    again, report = swin_variables_from_torch(exported, target)
    assert report.ok
    jax.tree.map(np.testing.assert_array_equal, again, variables)


# --------------------------------------------------------------------------- geometry


def _mask_by_wrapping(resolution: int, window: int, shift: int) -> np.ndarray:
    """Independent construction: after the cyclic shift, two tokens of one window may
    attend iff neither axis wraps between them, i.e. their ORIGINAL offsets equal their
    shifted offsets."""
    n_side = resolution // window
    local = np.arange(window * window)
    mask = np.zeros((n_side * n_side, window * window, window * window), np.float32)
    for wi in range(n_side * n_side):
        rows = (wi // n_side) * window + local // window  # shifted coordinates
        cols = (wi % n_side) * window + local % window
        orig_r, orig_c = (rows + shift) % resolution, (cols + shift) % resolution
        same_r = (orig_r[:, None] - orig_r[None]) == (rows[:, None] - rows[None])
        same_c = (orig_c[:, None] - orig_c[None]) == (cols[:, None] - cols[None])
        mask[wi] = np.where(same_r & same_c, 0.0, -100.0)
    return mask


@pytest.mark.parametrize("resolution,window", [(16, 4), (8, 4), (56, 7), (28, 7), (96, 12)])
def test_shifted_window_mask_matches_independent_construction(resolution, window):
    np.testing.assert_array_equal(
        window_attention_mask(resolution, window, window // 2),
        _mask_by_wrapping(resolution, window, window // 2),
    )
    assert window_attention_mask(resolution, window, 0) is None


@pytest.mark.parametrize("name", ["w4", "w7"])
def test_masks_and_position_index_match_timm_buffers(name):
    model, *_ = _tiny(name)
    buffers = _load(f"{name}_old")
    checked = 0
    for s, res in enumerate(model.stage_resolutions()):
        for j in range(model.depths[s]):
            window, shift = stage_window(res, model.window_size, model.window_size // 2 * (j % 2))
            prefix = f"layers.{s}.blocks.{j}"
            np.testing.assert_array_equal(
                relative_position_index(window), buffers[f"{prefix}.attn.relative_position_index"]
            )
            mask = window_attention_mask(res, window, shift)
            assert (mask is None) == (f"{prefix}.attn_mask" not in buffers)
            if mask is not None:
                np.testing.assert_array_equal(mask, buffers[f"{prefix}.attn_mask"])
                checked += 1
    assert checked >= 1


def test_relative_position_index_formula():
    index = relative_position_index(3)
    # query (0, 0) vs key (2, 1): (0 - 2 + 2) * 5 + (0 - 1 + 2) = 1; key == query -> centre 12
    assert index[0, 2 * 3 + 1] == 1 and np.all(np.diag(index) == 12)
    assert index.max() == 24 and len(np.unique(index)) == 25


def test_small_stages_clamp_window_and_disable_shift():
    assert stage_window(12, 12, 6) == (12, 0)  # Swin-L/384 stage 3: one window
    assert stage_window(7, 7, 3) == (7, 0)  # Swin-T/224 stage 3
    assert stage_window(2, 4, 2) == (2, 0)  # smaller than the window: clamped
    assert stage_window(24, 12, 6) == (12, 6)
    with pytest.raises(ValueError, match="tile"):
        Swin(img_size=64, patch_size=4, window_size=7).stage_resolutions()


# --------------------------------------------------------------------------- stochastic depth


def test_drop_path_is_identity_in_eval_and_per_sample_in_train():
    x = jnp.ones((4000, 3, 2))
    layer = DropPath(rate=0.25)
    np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
    y = np.asarray(layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(1)}))
    per_sample = y.reshape(len(y), -1)
    assert np.all(per_sample.min(1) == per_sample.max(1))  # whole samples kept or dropped
    assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03


def _w4_variables():
    model, x, expected, target, _ = _tiny("w4")
    variables, _ = swin_variables_from_torch(_load("w4_timm"), target)
    return model, x, expected, variables


def test_swin_stochastic_depth_uses_dropout_rng_only_in_train():
    model, x, expected, variables = _w4_variables()
    # Eval: `Swin` defaults to drop_path_rate=0.1 (timm's), and the eval-mode parity test
    # above already matches timm, so eval mode is the identity. Train mode here:
    assert model.drop_path_rate > 0
    model = model.clone(drop_path_rate=0.5)
    train = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={"dropout": key})["pooled"])
    a, b, a_again = (train(variables, jax.random.key(seed)) for seed in (0, 1, 0))
    assert not np.allclose(a, expected["pooled"], atol=1e-3)
    assert not np.allclose(a, b, atol=1e-3)
    np.testing.assert_array_equal(a, a_again)


def test_remat_keeps_parameter_names_and_traces_under_grad():
    model, x, _, target, _ = _tiny("w4")
    remat = model.clone(remat=True)
    remat_target = jax.eval_shape(lambda: remat.init(jax.random.key(0), x))
    assert jax.tree.structure(remat_target) == jax.tree.structure(target)

    def loss(v):
        return remat.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)})["pooled"].sum()

    grads = jax.eval_shape(jax.grad(loss), target)  # traced only: compiling costs seconds
    assert jax.tree.structure(grads) == jax.tree.structure(target)


def test_bfloat16_compute_keeps_float32_params():
    model, x, expected, variables = _w4_variables()
    out = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, x)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert out["layer1"].dtype == jnp.bfloat16 and out["pooled"].dtype == jnp.float32
    for k in TAPS:
        err = np.abs(np.asarray(out[k], np.float32) - expected[k]).max()
        assert err < 0.05 * np.abs(expected[k]).max(), k


# --------------------------------------------------------------------------- full size


def _shapes_and_count(model: Swin, batch: int = 2):
    x = jax.ShapeDtypeStruct((batch, model.img_size, model.img_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    return {k: v.shape for k, v in out.items()}, count, variables


def test_swin_large_384_shapes_and_exact_parameter_count():
    shapes, count, variables = _shapes_and_count(swin_from_name("swin_large_patch4_window12_384"))
    # timm 1.0.31: sum(p.numel()) = 196,735,516 minus the 1000-way head = 195,198,516
    # (herbs.md's "195.2 M"); see make_swin_fixtures.py.
    assert count == 195_198_516
    assert shapes == {
        "layer1": (2, 2304, 384),
        "layer2": (2, 576, 768),
        "layer3": (2, 144, 1536),
        "layer4": (2, 144, 1536),
        "pooled": (2, 1536),
    }
    tables = {
        v.shape
        for k, v in jax.tree_util.tree_leaves_with_path(variables)
        if "relative_position_bias_table" in jax.tree_util.keystr(k)
    }
    assert {t[0] for t in tables} == {23 * 23}  # window 12 in every stage (12x12 at stage 3)


def test_swin_tiny_224_shapes_and_exact_parameter_count():
    shapes, count, _ = _shapes_and_count(swin_from_name("swin_tiny_patch4_window7_224.ms_in1k"))
    assert count == 27_519_354  # timm 1.0.31: 28,288,354 minus the 1000-way head
    assert shapes == {
        "layer1": (2, 784, 192),
        "layer2": (2, 196, 384),
        "layer3": (2, 49, 768),
        "layer4": (2, 49, 768),
        "pooled": (2, 768),
    }


def test_param_counts_match_timm_for_every_registered_name():
    counts = _load("param_counts")
    assert len(counts) == 6
    for arch, expected in counts.items():
        model = swin_from_name(arch)
        x = jax.ShapeDtypeStruct((1, model.img_size, model.img_size, 3), jnp.float32)
        params = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x), x)["params"]
        assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == int(expected), arch


def test_swin_from_name_aliases():
    reference = swin_from_name("swin_large_patch4_window12_384")
    assert swin_from_name("swin_large_patch4_window12_384_in22k") == reference
    assert swin_from_name("swin_large_patch4_window12_384.ms_in22k") == reference
    assert reference.embed_dim == 192 and reference.window_size == 12
    assert reference.img_size == 384 and tuple(reference.depths) == (2, 2, 18, 2)
    assert (
        swin_from_name("swin_base_patch4_window12_384_in22k", drop_path_rate=0.2).drop_path_rate
        == 0.2
    )
    with pytest.raises(ValueError, match="unknown"):
        swin_from_name("swinv2_tiny_window8_256")
