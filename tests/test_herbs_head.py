"""HERBS head: parity with a PyTorch head written from the spec, the best.pt key map, the
static-shape selector, and the full-size (Swin-L/384, CUB) shapes and parameter counts.

The fixture comes from `tests/fixtures/make_herbs_fixtures.py` (torch on CPU); this file
never imports torch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.methods.herbs.keys import herbs_head_variables_from_torch
from fgjax.methods.herbs.model import HerbsHead, weakly_select
from fgjax.models.swin import Swin
from fgjax.weights.variables import flatten

FIXTURE = Path(__file__).parent / "fixtures" / "herbs_head_tiny.npz"
LEVELS = ("layer1", "layer2", "layer3", "layer4")
OUTPUTS = tuple(
    [f"FPN1_{n}" for n in LEVELS]
    + [f"{p}{n}" for p in ("", "select_", "drop_") for n in LEVELS]
    + ["comb_outs"]
)


@functools.cache
def _fixture():
    """(head, taps, torch state dict, fixture arrays by group, eval_shape target)."""
    with np.load(FIXTURE) as f:
        data = dict(f)
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in data.items():
        group, _, name = key.partition("/")
        groups.setdefault(group, {})[name] = value
    # Dropout off so that the training-mode forward is deterministic, as in the fixture.
    head = HerbsHead(**json.loads(str(data["config"])), comb_dropout=0.0)
    taps = groups.pop("tap")
    state_dict = groups.pop("sd")
    target = jax.eval_shape(lambda: head.init(jax.random.key(0), taps))
    return head, taps, state_dict, groups, target


def _loaded():
    head, taps, state_dict, groups, target = _fixture()
    variables, report = herbs_head_variables_from_torch(state_dict, target)
    return head, taps, variables, report, groups


# --------------------------------------------------------------------------- parity


def test_eval_outputs_match_torch():
    head, taps, variables, _, groups = _loaded()
    out = jax.jit(head.apply)(variables, taps)
    assert sorted(out) == sorted(OUTPUTS)
    for name in OUTPUTS:
        expected = groups["eval"][name]
        assert out[name].shape == expected.shape, name
        np.testing.assert_allclose(out[name], expected, atol=1e-4, rtol=0, err_msg=name)


def test_train_outputs_and_running_stats_match_torch():
    head, taps, variables, _, groups = _loaded()
    apply = jax.jit(lambda v, t: head.apply(v, t, train=True, mutable=["batch_stats"]))
    out, updates = apply(variables, taps)
    for name in OUTPUTS:
        np.testing.assert_allclose(out[name], groups["train"][name], atol=1e-4, err_msg=name)
    # Batch statistics differ from the loaded running ones, so this is not vacuous.
    assert np.abs(out["comb_outs"] - groups["eval"]["comb_outs"]).max() > 1e-2
    stats = flatten(updates["batch_stats"])
    leaf = {"running_mean": "mean", "running_var": "var"}
    assert len(stats) == len(groups["stats"]) == 18  # 8 + 8 classifier BNs, combiner's
    for key, expected in groups["stats"].items():
        *modules, name = key.split(".")
        np.testing.assert_allclose(stats[(*modules, leaf[name])], expected, atol=1e-6, err_msg=key)


# --------------------------------------------------------------------------- key map


def test_conversion_is_complete_and_follows_the_key_rule():
    _, _, state_dict, _, target = _fixture()
    variables, report = herbs_head_variables_from_torch(state_dict, target)
    assert report.ok, str(report)
    counters = [k for k in state_dict if k.endswith("num_batches_tracked")]
    assert len(counters) == 9
    assert sorted(report.loaded) == sorted(set(state_dict) - set(counters))
    flat = flatten(variables)
    np.testing.assert_array_equal(  # token-axis Conv1d [S_out, S_in, 1] -> kernel [S_in, S_out]
        flat[("params", "fpn_down", "Up_layer2", "kernel")],
        state_dict["fpn_down.Up_layer2.weight"][:, :, 0].T,
    )
    np.testing.assert_array_equal(
        flat[("batch_stats", "fpn_classifier_up_layer3", "1", "var")],
        state_dict["fpn_classifier_up_layer3.1.running_var"],
    )
    np.testing.assert_array_equal(flat[("params", "combiner", "adj1")], state_dict["combiner.adj1"])


def test_conversion_reports_problems_and_skips_the_backbone():
    _, _, state_dict, _, target = _fixture()
    broken = {"model": dict(state_dict)}  # best.pt wraps the model dict
    broken["model"]["backbone.layers.0.blocks.0.norm1.weight"] = np.ones(4, np.float32)
    broken["model"]["combiner.extra"] = np.ones(3, np.float32)
    del broken["model"]["fpn_up.Down_layer1.bias"]
    broken["model"]["combiner.classifier.weight"] = np.ones((5, 9), np.float32)
    _, report = herbs_head_variables_from_torch(broken, target)
    assert report.unexpected == ["combiner.extra"]
    assert report.missing == ["params/fpn_up/Down_layer1/bias"]
    assert report.mismatched == [("combiner.classifier.weight", (5, 9), (5, 8))]


# --------------------------------------------------------------------------- selector


def _selector_inputs(seed=0, b=2, s=12, d=3, n=4):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(b, s, d)).astype(np.float32),
        (2 * rng.normal(size=(b, s, n))).astype(np.float32),
    )


def test_selector_keeps_numpys_top_k_of_predicted_class_confidence():
    features, logits = _selector_inputs()
    k = 5
    sel = weakly_select(jnp.asarray(features), jnp.asarray(logits), k)
    assert sel.features.shape == (2, k, 3)
    assert sel.selected.shape == (2, k, 4)
    assert sel.dropped.shape == (2, 12 - k, 4)
    # Independent scores: softmax confidence in the argmax class of the token mean.
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    cls = logits.mean(1).argmax(-1)
    scores = probs[np.arange(2), :, cls]  # [B, S]
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-5)
    order = np.argsort(-scores, axis=1, kind="stable")
    np.testing.assert_array_equal(sel.ranking[:, :k], order[:, :k])
    for b in range(2):
        np.testing.assert_array_equal(sel.features[b], features[b, order[b, :k]])
        np.testing.assert_array_equal(sel.selected[b], logits[b, order[b, :k]])
        np.testing.assert_array_equal(sel.dropped[b], logits[b, order[b, k:]])
    # The predicted class differs per sample here, so per-sample ranking is exercised.
    assert cls[0] != cls[1]


def test_selector_gradients_reach_only_the_gathered_tokens():
    features, logits = _selector_inputs(seed=1)
    k = 4
    rng = np.random.default_rng(2)
    wf = rng.normal(size=(2, k, 3)).astype(np.float32)
    ws = rng.normal(size=(2, k, 4)).astype(np.float32)
    wd = rng.normal(size=(2, 12 - k, 4)).astype(np.float32)

    def loss(f, x):
        sel = weakly_select(f, x, k)
        return (sel.features * wf).sum() + (sel.selected * ws).sum() + (sel.dropped * wd).sum()

    gf, gx = jax.grad(loss, argnums=(0, 1))(jnp.asarray(features), jnp.asarray(logits))
    ranking = np.asarray(weakly_select(features, logits, k).ranking)
    expect_f = np.zeros_like(features)
    expect_x = np.zeros_like(logits)
    for b in range(2):
        expect_f[b, ranking[b, :k]] = wf[b]
        expect_x[b, ranking[b, :k]] = ws[b]
        expect_x[b, ranking[b, k:]] = wd[b]
    # Exact: no gradient leaks through the ranking scores into the logits.
    np.testing.assert_array_equal(gf, expect_f)
    np.testing.assert_array_equal(gx, expect_x)
    assert np.count_nonzero(np.abs(gf).sum(-1)) == 2 * k  # unselected feature rows get 0


def test_selector_rejects_k_that_drops_nothing():
    features, logits = _selector_inputs()
    with pytest.raises(ValueError, match="num_select"):
        weakly_select(features, logits, 12)


# --------------------------------------------------------------------------- full size

# herbs.md section 2.4 (Swin-L/384 taps) and 3.8 (output shapes, CUB: N = 200).
FULL_TAPS = {
    "layer1": (2304, 384),
    "layer2": (576, 768),
    "layer3": (144, 1536),
    "layer4": (144, 1536),
}
FULL_SHAPES = {
    **{f"{p}{n}": (s, 200) for p in ("FPN1_", "") for n, (s, _) in FULL_TAPS.items()},
    **{f"select_{n}": (k, 200) for n, k in zip(LEVELS, (256, 128, 64, 32), strict=True)},
    **{f"drop_{n}": (d, 200) for n, d in zip(LEVELS, (2048, 448, 80, 112), strict=True)},
    "comb_outs": (200,),
}
# herbs.md section 3.10, millions (2 decimals; the total to 1).
SPEC_COUNTS = {
    "fpn_down Proj": 11.95,
    "fpn_down Up": 1.43,
    "classifiers_down": 10.69,
    "fpn_up Proj": 18.89,
    "fpn_up Down": 1.43,
    "classifiers_up": 10.69,
    "combiner": 3.86,
}


def _part(path: tuple[str, ...]) -> str:
    top, sub = path[1], path[2]
    if top in ("fpn_down", "fpn_up"):
        return f"{top} {sub.split('_')[0]}"
    if top.startswith("fpn_classifier_"):
        return "classifiers_" + top.split("_")[2]
    return top


def test_full_size_shapes_and_parameter_counts():
    head = HerbsHead(num_classes=200)
    b = 2
    taps = {n: jax.ShapeDtypeStruct((b, s, c), jnp.float32) for n, (s, c) in FULL_TAPS.items()}
    out, variables = jax.eval_shape(lambda t: head.init_with_output(jax.random.key(0), t), taps)
    assert {k: v.shape for k, v in out.items()} == {k: (b, *s) for k, s in FULL_SHAPES.items()}
    params = flatten({"params": variables["params"]})
    counts: dict[str, int] = {}
    for path, leaf in params.items():
        counts[_part(path)] = counts.get(_part(path), 0) + int(np.prod(leaf.shape))
    assert {k: round(v / 1e6, 2) for k, v in counts.items()} == SPEC_COUNTS
    assert round(sum(counts.values()) / 1e6, 1) == 58.9
    pool0 = params[("params", "combiner", "param_pool0", "kernel")]
    assert pool0.shape == (480, 7)  # 480 selected tokens -> 480 // 64 = 7 graph nodes
    assert pool0.size + 7 == 3367  # "of which param_pool0 has 3,367"


def test_head_consumes_swin_taps_as_returned():
    """A tiny Swin's output dict (taps + `pooled`) feeds the head as is: the fixture's
    token grids 8x8 / 4x4 / 2x2 / 2x2 are this Swin's post-merge taps."""
    swin = Swin(
        embed_dim=4, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, img_size=64
    )
    head = HerbsHead(num_classes=5, fpn_size=8, num_selects=(40, 10, 3, 2), tokens_per_node=16)
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)

    def forward(x):
        taps, _ = swin.init_with_output(jax.random.key(0), x)
        return head.init_with_output(jax.random.key(1), taps)[0]

    out = jax.eval_shape(forward, images)
    tiny_tokens = {n: _fixture()[1][n].shape[1] for n in LEVELS}
    assert tiny_tokens == {"layer1": 64, "layer2": 16, "layer3": 4, "layer4": 4}
    assert {n: out[n].shape for n in LEVELS} == {n: (2, s, 5) for n, s in tiny_tokens.items()}
    assert out["comb_outs"].shape == (2, 5)
