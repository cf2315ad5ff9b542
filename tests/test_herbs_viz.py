"""HERBS heat maps (`fgjax.methods.herbs.gradcam`, spec 6.3) and the classification report
(`fgjax.methods.herbs.classification_report`, spec 6.2) against numpy, PIL and scikit-learn.

The heat maps of a tiny trained HERBS (2 Swin stages, so 6 places) are recomputed from
activations and gradients captured by another route (flax method interception adding a
zero offset to each SwinStage / TwoLayerProj output, no perturbation hooks), the map
formula in numpy and the resize in PIL.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion

from fgjax.cli import heatmap as heatmap_cli
from fgjax.cli import report as report_cli
from fgjax.data.eval_loader import eval_crops
from fgjax.eval.classification import confusion_matrix, group_confusion, group_errors
from fgjax.eval.features import normalize_images
from fgjax.methods.herbs import classification_report as report
from fgjax.methods.herbs import gradcam as heatmap
from fgjax.methods.herbs.model import TwoLayerProj
from fgjax.models.swin import SwinStage
from fgjax.train.run import open_run, restore_checkpoint

PLACES = [
    "layer1",
    "layer2",
    "fpn_down.Proj_layer1",
    "fpn_down.Proj_layer2",
    "fpn_up.Proj_layer1",
    "fpn_up.Proj_layer2",
]


# jnp, not numpy_refs.softmax: it runs inside the jax.grad of _captured's score.
def _softmax(x):
    e = jnp.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _place_of(module) -> str | None:
    if isinstance(module, SwinStage):  # 'layers_0' -> the tap 'layer1'
        return f"layer{int(module.name.split('_')[1]) + 1}"
    if isinstance(module, TwoLayerProj) and module.parent.name in ("fpn_down", "fpn_up"):
        return f"{module.parent.name}.{module.name}"
    return None


def _captured(net, variables, x, c, deltas):
    """(s[c] summed over images, (activations by place, s)); each place's output gets
    `deltas[place]` added (None: nothing), so d/d deltas is the place's total gradient."""
    acts = {}

    def hook(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        place = _place_of(context.module) if context.method_name == "__call__" else None
        if place is None:
            return out
        acts[place] = out
        return out if deltas is None else out + deltas[place]

    with nn.intercept_methods(hook):
        out = net.apply(variables, x, train=False)
    heads = [f"{p}layer{k}" for k in (1, 2) for p in ("", "FPN1_")]
    s = sum(_softmax(out[h].mean(1)) for h in heads) + _softmax(out["comb_outs"])
    return jnp.take_along_axis(s, c[:, None], axis=1).sum(), (acts, s)


def _numpy_map(a, g, size):
    """HERBS' map of one image's place: a, g [T, C] -> [size, size] (PIL bilinear)."""
    m = np.maximum(g.mean(0)[None, :] * a, 0).sum(-1)
    m = m / m.max()
    side = int(np.sqrt(len(m)))
    grid = Image.fromarray(m.reshape(side, side).astype(np.float32), mode="F")
    return np.asarray(grid.resize((size, size), Image.BILINEAR))


def test_every_place_map_and_the_product_match_numpy_of_independent_gradients(tiny_herbs_run):
    config, run = open_run(tiny_herbs_run, [], lambda m: True, "")
    state, _ = restore_checkpoint(run, config.seed, tiny_herbs_run)
    assert set(state.model_state) == {"batch_stats"}  # init skips the hooks
    net, variables = run.method.net, {"params": state.params, **state.model_state}
    mean, std = run.extractor.mean, run.extractor.std
    # The images and batch shape the CLI test uses: one compile serves both.
    crops = eval_crops(run.sources["test"], [0, 5, 10, 15], config.data)
    target = np.array([-1, -1, 0, 1], np.int32)  # predicted, predicted, user labels
    got = heatmap.explain(net, variables, crops, target, mean, std)
    x = normalize_images(jnp.asarray(crops), mean, std)
    assert heatmap.place_names(2) == PLACES

    zeros = jnp.zeros(len(x), jnp.int32)
    shapes = jax.eval_shape(lambda: _captured(net, variables, x, zeros, None)[1][0])
    deltas = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
    grad_fn = jax.jit(jax.grad(lambda d: _captured(net, variables, x, got.target, d), has_aux=True))
    grads, (acts, s) = grad_fn(deltas)
    assert sorted(grads) == sorted(PLACES)

    # The class: argmax of the sum of the 9 (here 5) token-averaged softmaxes, or the label.
    s = np.asarray(s)
    chosen = np.array([s[0].argmax(), s[1].argmax(), 0, 1])
    np.testing.assert_array_equal(got.target, chosen)
    np.testing.assert_allclose(got.scores, s, rtol=1e-5, atol=1e-6)

    size = x.shape[1]
    expected = np.zeros((len(x), len(PLACES), size, size), np.float32)
    for p, place in enumerate(PLACES):
        a = np.asarray(acts[place], np.float64).reshape(len(x), -1, acts[place].shape[-1])
        g = np.asarray(grads[place], np.float64).reshape(a.shape)
        for i in range(len(x)):
            expected[i, p] = _numpy_map(a[i], g[i], size)
    np.testing.assert_allclose(got.maps, expected, atol=2e-5)
    assert expected.reshape(len(x), len(PLACES), -1).max(-1).min() > 0.5  # no empty map
    product = expected.prod(axis=1)
    final = product / product.reshape(len(x), -1).max(-1)[:, None, None]
    np.testing.assert_allclose(got.final, final, atol=2e-5)

    # The label changes the map wherever it is not the predicted class.
    other = [i for i in (2, 3) if chosen[i] != s[i].argmax()]
    assert other and all(np.abs(got.maps[i] - got.maps[i - 2]).max() > 1e-3 for i in other)


def test_relu_per_channel_before_the_sum_and_empty_maps_stay_zero():
    a = jnp.asarray([[[1.0, 2.0], [3.0, -1.0]]])  # [1 image, 2 tokens, 2 channels]
    g = jnp.asarray([[[1.0, -1.0], [1.0, -3.0]]])  # w = (1, -2)
    # token 0: relu(1) + relu(-4) = 1; token 1: relu(3) + relu(2) = 5 (Grad-CAM: -1, 5)
    np.testing.assert_allclose(heatmap.grad_cam_map(a, g), [[0.2, 1.0]])
    np.testing.assert_array_equal(heatmap.grad_cam_map(a, jnp.zeros_like(g)), [[0.0, 0.0]])


def test_heatmap_cli_writes_the_overlay_and_the_maps(tiny_herbs_run, tmp_path):
    out = heatmap_cli.main(
        ["--workdir", tiny_herbs_run, "--num", "4", "--out", str(tmp_path / "h.png")]
    )
    width, height = Image.open(out).size
    assert (width, height) == (500, 1040)  # 4 rows x 2 columns of 2.5-inch panels + title
    saved = np.load(tmp_path / "h.npz")
    assert saved["maps"].shape == (4, 6, 32, 32) and list(saved["places"]) == PLACES
    product = saved["maps"].prod(axis=1)
    np.testing.assert_allclose(
        saved["final"], product / product.max(axis=(1, 2), keepdims=True), rtol=1e-6
    )
    np.testing.assert_array_equal(saved["index"], [0, 5, 10, 15])
    assert set(saved["target"]) <= {0, 1} and list(saved["label"]) == [0, 0, 1, 1]
    pixels = np.asarray(Image.open(out).convert("L"), np.float32)
    assert pixels.std() > 10


def test_a_label_outside_the_classes_is_refused(tiny_herbs_run):
    with pytest.raises(SystemExit, match=r"error: --label must be a class id in \[0, 2\), got 5"):
        heatmap_cli.main(["--workdir", tiny_herbs_run, "--label", "5"])


@pytest.mark.parametrize("command", [heatmap_cli.main, report_cli.main])
def test_a_run_of_another_method_is_refused_by_name(command, tmp_path):
    config = tiny_config("moco")
    (tmp_path / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort())))
    with pytest.raises(SystemExit, match="error: .*method='moco' run, not a HERBS run"):
        command(["--workdir", str(tmp_path)])


# ------------------------------------------------------------------ the report


def test_confusion_matrix_equals_sklearn():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    np.testing.assert_array_equal(
        confusion_matrix(labels, preds, 7), sk_confusion(labels, preds, labels=range(7))
    )


def test_group_matrix_has_the_outside_column():
    # Classes 0..5; group {2, 3, 4}. Per true class: (predicted, how many).
    pairs = {2: [(2, 3), (3, 1), (0, 2)], 3: [(3, 4), (5, 1)], 4: [(2, 1), (4, 2)], 0: [(2, 5)]}
    labels = np.array([t for t, ps in pairs.items() for p, n in ps for _ in range(n)])
    preds = np.array([p for t, ps in pairs.items() for p, n in ps for _ in range(n)])
    m = group_confusion(confusion_matrix(labels, preds, 6), np.array([2, 3, 4]))
    np.testing.assert_array_equal(m, [[3, 1, 0, 2], [0, 4, 0, 1], [1, 0, 2, 0]])
    found = group_errors(confusion_matrix(labels, preds, 6), {"g": [4, 2, 3]})["g"]
    assert found == {"accuracy": 9 / 14, "outer_errors": 3.0, "count": 14.0}


def test_report_lists_classes_worst_first_with_their_main_confusion():
    scores = np.eye(3)[[0, 0, 1, 1, 1, 2, 0, 0]]  # predictions
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 1])  # class 1: 2/3, class 2: 1/3, class 0: 2/2
    metrics = report.classification_metrics(scores, labels, ks=(1, 3, 5), groups={"g": [1, 2]})
    confusion = confusion_matrix(labels, scores.argmax(1), 3)
    text = report.report_markdown(metrics, confusion, ["a", "b", "c"], {"g": [1, 2]}, "x")
    rows = [line for line in text.splitlines() if line.startswith("| ") and " % |" in line]
    assert rows[:3] == ["| top-1 | 62.50 % |", "| top-3 | 100.00 % |", "| top-5 | 100.00 % |"]
    assert "| g | 2 | 6 | 50.00 % | 2 |" in rows  # 3 of 6 right, 2 predicted as 'a'
    per_class = rows[-3:]
    assert per_class == [
        "| 2 | c | 3 | 1 | 33.33 % | a (1) |",  # ties: the lowest class id
        "| 1 | b | 3 | 2 | 66.67 % | a (1) |",
        "| 0 | a | 2 | 2 | 100.00 % | - |",
    ]


def test_default_groups_follow_the_config_then_cub_then_coarse_labels():
    class Split:  # 4 classes in 2 coarse groups; class 3 has no example
        num_classes, num_coarse_classes, coarse_names = 4, 2, ["x", "y"]
        labels = np.array([0, 1, 1, 2])
        coarse_labels = np.array([1, 0, 0, 1])

    config = tiny_config("herbs")
    assert report.report_groups(None, config, Split) == ("coarse", {"x": (1,), "y": (0, 2)})
    assert report.report_groups("none", config, Split) == ("none", None)
    config.data.kind = "cub"
    cub = type("Cub", (Split,), {"num_classes": 200})
    name, groups = report.report_groups(None, config, cub)
    assert name == "herbs_cub" and groups["gull"] == tuple(range(58, 66))
    config.eval.class_groups = "herbs_cub"
    assert report.report_groups(None, config, Split)[0] == "herbs_cub"


def test_report_cli_writes_markdown_matrices_and_counts(tiny_herbs_run, tmp_path):
    metrics = report_cli.main(["--workdir", tiny_herbs_run, "--out", str(tmp_path)])
    confusion = np.load(tmp_path / "confusion.npy")
    assert confusion.shape == (2, 2) and confusion.sum() == 16  # the procedural test split
    assert metrics["top1"] == np.trace(confusion) / 16
    text = (tmp_path / "report.md").read_text()
    assert f"| top-1 | {100 * metrics['top1']:.2f} % |" in text
    # Default groups: the coarse shapes (one class each here), outside = the other class.
    for name, c in (("disc", 0), ("square", 1)):
        outer = confusion[c].sum() - confusion[c, c]
        assert (
            f"| {name} | 1 | {confusion[c].sum()} |" in text
            and metrics[f"{name}/outer_errors"] == outer
        )
    assert Image.open(tmp_path / "confusion.png").size[0] >= 800
