"""A HERBS `best.pt` (Swin + head, timm 0.4.12 keys, SGD state and epoch beside the model)
through the safe reader: complete import, parity of the whole fgjax model and of the
9-head vote with the PyTorch head on timm's Swin taps, evaluation end to end, and errors.

Fixtures: `tests/fixtures/make_herbs_fixtures.py` (torch) wrote `herbs_best_tiny.pt`
around the tiny Swin of `swin_w4_old.npz` and `herbs_best_tiny.npz` with the head's
outputs on that Swin's taps from timm (`swin_w4_io.npz`); this file never imports torch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from conftest import run_info, tiny_config
from numpy_refs import softmax

from fgjax.methods import build_method
from fgjax.methods.herbs.method import vote_heads
from fgjax.train.state import load_init_from
from fgjax.weights import read_checkpoint
from fgjax.weights.variables import flatten

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
BEST_PT = FIXTURES / "herbs_best_tiny.pt"
QUIET = ["--config.train.progress_bar=false"]
# HERBS' 9 voting heads in its order (spec 6.1).
HEADS = [n for k in range(1, 5) for n in (f"layer{k}", f"FPN1_layer{k}")] + ["comb_outs"]


def _expected() -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(FIXTURES / "herbs_best_tiny.npz") as f:
        return json.loads(str(f["config"])), {k: f[k] for k in f.files if k != "config"}


def herbs_best_config() -> ml_collections.ConfigDict:
    """HERBS on the fixture's tiny Swin (64 px) and head; 5 procedural classes of 64 px
    images, 2 per class, evaluated on the images it "trained" on."""
    fixture, _ = _expected()
    swin, head = fixture["swin"], fixture["head"]
    c = tiny_config("herbs")
    c.model.arch = "swin_tiny_patch4_window7_224"
    c.model.overrides = ml_collections.ConfigDict(
        {k: tuple(v) if isinstance(v, list) else v for k, v in swin.items()}
    )
    c.model.drop_path_rate = 0.0
    c.data.image_size = swin["img_size"]
    # Procedural 'train' and 'test' hold disjoint classes; 'all' gives both the same 5.
    c.data.procedural.update(
        num_coarse=head["num_classes"], fine_per_coarse=1, images_per_class=2, image_size=64
    )
    c.data.train_split = c.data.test_split = "all"
    c.herbs.update(
        fpn_size=head["fpn_size"],
        num_selects=tuple(head["num_selects"]),
        tokens_per_node=head["tokens_per_node"],
    )
    c.eval.batch_size = 8
    return c


def _method(num_classes: int = 5):
    config = herbs_best_config()
    return build_method(config, run_info(config, num_classes=num_classes))


@functools.cache
def _abstract(num_classes: int = 5):
    """(method, params, model_state), the variables as `jax.ShapeDtypeStruct`s: loading
    needs no compile (loaders build new trees, so sharing them is safe)."""
    method = _method(num_classes)
    size = method.config.data.image_size
    shape = (2, size, size, 3)
    return method, *jax.eval_shape(lambda: method.init_variables(jax.random.key(0), shape))


# --------------------------------------------------------------------------- the import


def test_best_pt_loads_completely_with_its_running_statistics():
    tensors = read_checkpoint(BEST_PT)  # the model dict; optimizer and epoch tolerated
    method, params, model_state = _abstract()
    params, model_state, report = method.load_weights(tensors, params, model_state)
    assert report.ok and not report.missing and not report.unexpected, str(report)
    assert sorted(report.ignored) == ["backbone.head.bias", "backbone.head.weight"]
    # Every variable is filled (no abstract leaf left), from the checkpoint's tensors.
    leaves = jax.tree.leaves((params, model_state))
    assert all(isinstance(x, np.ndarray | jax.Array) for x in leaves)
    stats = flatten(model_state["batch_stats"]["head"])
    assert len(stats) == 18  # 8 + 8 token classifiers and the combiner, mean and var
    np.testing.assert_array_equal(
        stats[("combiner", "batch_norm1", "var")], tensors["combiner.batch_norm1.running_var"]
    )
    np.testing.assert_array_equal(
        params["backbone"]["layers_2"]["downsample"]["reduction"]["kernel"],
        tensors["backbone.layers.2.downsample.reduction.weight"].T,
    )
    np.testing.assert_array_equal(
        params["head"]["fpn_up"]["Down_layer1"]["kernel"],
        tensors["fpn_up.Down_layer1.weight"][:, :, 0].T,
    )


def test_init_from_a_best_pt_fills_backbone_and_head_a_swin_file_the_backbone_only(capsys):
    method, params, model_state = _abstract()
    loaded, state = load_init_from(method, params, model_state, str(BEST_PT))
    assert all(isinstance(x, np.ndarray | jax.Array) for x in jax.tree.leaves((loaded, state)))
    printed = capsys.readouterr().out
    assert "weights read from checkpoint['model'] (also held: epoch, optimizer)" in printed
    assert "missing" not in printed and "unexpected" not in printed

    swin_only = str(FIXTURES / "swin_w4_old.npz")
    loaded, state = load_init_from(method, params, model_state, swin_only)
    backbone = jax.tree.leaves(loaded["backbone"])
    assert all(isinstance(x, np.ndarray | jax.Array) for x in backbone)
    untouched = jax.tree.leaves((loaded["head"], state))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in untouched)


def test_wrong_checkpoints_fail_naming_the_key(tmp_path):
    from fgjax.weights import save_pth

    with pytest.raises(ValueError) as err:
        load_init_from(*_abstract(num_classes=4), str(BEST_PT))
    message = str(err.value)
    assert f"init_from={BEST_PT}" in message
    assert "combiner.classifier.weight classifies 5 classes" in message and "has 4" in message
    assert "shape mismatch fpn_classifier_down_layer1.3.weight: checkpoint (5, 8, 1)" in message
    assert "fgjax weights convert best.pt swin.npz" in message

    tensors = dict(read_checkpoint(BEST_PT))
    del tensors["fpn_up.Down_layer2.bias"]
    tensors["combiner.extra"] = np.zeros(3, np.float32)
    broken = str(tmp_path / "broken.pt")
    save_pth(broken, tensors)
    with pytest.raises(ValueError) as err:
        load_init_from(*_abstract(), broken)
    message = str(err.value)
    assert "missing (1): params/head/fpn_up/Down_layer2/bias" in message
    assert "unexpected (1): combiner.extra" in message and "classifies" not in message


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def loaded():
    """The fixture's method, its eval-only train state with best.pt loaded (no
    initialisation compiled: the file fills every variable) and the jitted eval-mode
    forward of the whole network on batches of 2 (the module's one model compile)."""
    from fgjax.train.state import create_train_state

    method = _abstract()[0]
    size = method.config.data.image_size
    state = create_train_state(method, None, (2, size, size, 3), seed=0, init_from=str(BEST_PT))
    forward = jax.jit(
        lambda s, x: method.net.apply({"params": s.params, **s.model_state}, x, train=False)
    )
    return method, state, forward


def _numpy_vote(out: dict[str, np.ndarray]) -> np.ndarray:
    """[B, 9, N]: spec 6.2's voting heads' softmaxes (HEADS order), per-token logits
    averaged over tokens first."""
    logits = [np.asarray(out[n], np.float64) for n in HEADS]
    return np.stack([softmax(x.mean(1) if x.ndim == 3 else x) for x in logits], 1)


def test_swin_and_head_reproduce_torch_outputs_and_the_vote(loaded):
    method, state, forward = loaded
    _, want = _expected()
    with np.load(FIXTURES / "swin_w4_io.npz") as f:
        images = f["input"].astype(np.float32)
    out = forward(state, images)
    assert vote_heads(4) == HEADS
    for name in HEADS:
        np.testing.assert_allclose(out[name], want[f"eval/{name}"], atol=1e-4, err_msg=name)
    votes = _numpy_vote(out).sum(1)
    np.testing.assert_allclose(votes, want["vote"], atol=1e-4)
    np.testing.assert_array_equal(votes.argmax(1), want["prediction"])


def test_evaluation_command_reports_the_vote_of_the_models_outputs(loaded, tmp_path):
    from test_eval_cli import _test_images

    from fgjax.cli.eval import main
    from fgjax.data.datasets import build_source

    method, state, forward = loaded
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from test_herbs_import import herbs_best_config\n\n"
        "def get_config():\n    return herbs_best_config()\n"
    )
    out = tmp_path / "out"
    main(
        ["--init-from", str(BEST_PT), "--config", str(recipe), "--out", str(out)]
        + ["--protocol", "herbs", "--no-plots", *QUIET]
    )
    saved = json.loads((out / "eval.json").read_text())

    config = method.config
    images = _test_images(config)
    labels = build_source(config.data, config.data.test_split).labels
    outputs = [forward(state, images[i : i + 2]) for i in range(0, len(images), 2)]
    probs = np.concatenate([_numpy_vote(o) for o in outputs])  # [N, 9, classes]
    vote = probs.sum(1).argmax(1)
    assert len(labels) == 10 and saved["herbs/vote/top1"] == pytest.approx(np.mean(vote == labels))
    for h, name in enumerate(HEADS):
        hits = probs[:, h].argmax(1) == labels
        assert saved[f"herbs/{name}/top1"] == pytest.approx(hits.mean()), name
    # Not vacuous: the vote names several classes (the fixture's head is centred for
    # that), and heads disagree with it.
    assert len(set(vote)) > 1
    assert any((probs[:, h].argmax(1) != vote).any() for h in range(9))


def test_herbs_evaluator_needs_the_train_classes_in_the_test_split():
    from types import SimpleNamespace

    from fgjax.data.datasets import build_source

    method = _method()
    config = method.config
    config.data.test_split = "test"
    config.data.train_split = "train"
    config.data.procedural.fine_per_coarse = 2
    sources = {role: build_source(config.data, role) for role in ("train", "test")}
    with pytest.raises(ValueError, match=r"herbs: the test split \(test\) must have the classes"):
        method.evaluators()["herbs"](None, SimpleNamespace(sources=sources))
