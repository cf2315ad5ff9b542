"""`python -m fgjax.eval`: a trained checkpoint and an imported weights file evaluated
end to end in-process, the numbers checked against numpy on the cached features (and the
cached features against the network applied image by image); the feature cache; config
round trip and overrides."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config
from numpy_refs import unit

from fgjax.cli.eval import format_table, main
from fgjax.config import config_from_json, config_path_from_argv, load_config_file
from fgjax.eval.cache import cache_path, cached_features, fingerprint, load_features
from fgjax.eval.clustering import clustering_nmi
from fgjax.eval.features import FeatureExtractor, Features
from fgjax.eval.linear_probe import linear_probe
from fgjax.train.run import apply_overrides

TESTS = os.path.dirname(os.path.abspath(__file__))
QUIET = ["--config.train.progress_bar=false"]


# ---------------------------------------------------------------- numpy references
def _brute_force(f: np.ndarray, labels: np.ndarray, ks, knn_k: int, temperature: float):
    """Leave-one-out Recall@K, mAP and weighted kNN top-1, ties to the lower index."""
    sim = unit(f.astype(np.float64)) @ unit(f.astype(np.float64)).T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :-1]  # self (-inf) last, dropped
    match = labels[order] == labels[:, None]
    out = {f"retrieval_recall@{k}": match[:, :k].any(1).mean() for k in ks}
    aps = []
    for row in match:
        if row.any():
            hits = np.flatnonzero(row) + 1
            aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
    out["retrieval_map"] = np.mean(aps)
    votes = np.zeros((len(f), labels.max() + 1))
    for q in range(len(f)):
        for j in order[q, :knn_k]:
            votes[q, labels[j]] += np.exp(sim[q, j] / temperature)
    out["knn_top1"] = np.mean(votes.argmax(1) == labels)
    return out


def _printed(text: str) -> dict[str, float]:
    """The `metric value` rows of the printed table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].replace(".", "", 1).isdigit():
            rows[parts[0]] = float(parts[1])
    return rows


def _check_numbers(out: str, printed: str, config) -> dict:
    """eval.json and the printed table equal numpy on the cached test features (kNN only
    when it was run)."""
    saved = json.loads(open(os.path.join(out, "eval.json")).read())
    test = load_features(cache_path(out, "test"))
    want = _brute_force(
        test.features,
        test.labels,
        config.eval.recall_ks,
        config.eval.knn_k,
        config.eval.knn_temperature,
    )
    if "knn_top1" not in saved:
        del want["knn_top1"]
    shown = _printed(printed)
    assert set(want) <= set(saved) and set(want) <= set(shown)
    for name, value in want.items():
        np.testing.assert_allclose(saved[name], value, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(shown[name], value, atol=5e-5, err_msg=name)  # 4 decimals
    return saved


def _test_images(config) -> np.ndarray:
    """The test split through the eval crop, normalised as the first view: [N, S, S, 3]."""
    from fgjax.data.datasets import build_source
    from fgjax.data.decode import resize_center_crop

    source = build_source(config.data, config.data.test_split)
    spec = config.views.view1.photometric
    x = (
        np.stack(
            [
                resize_center_crop(source[i], image_size=config.data.image_size)
                for i in range(len(source))
            ]
        ).astype(np.float32)
        / 255
    )
    return ((x - np.array(spec.mean)) / np.array(spec.std)).astype(np.float32)


# Every evaluation builds a new method whose jitted functions compile to earlier programs.
pytestmark = pytest.mark.usefixtures("module_compilation_cache")


# ---------------------------------------------------------------- a trained checkpoint
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A supervised tiny_config run trained 2 steps (checkpoint at step 2), no evaluation."""
    from fgjax.train.loop import train_and_evaluate

    config = tiny_config("supervised")
    config.train.max_steps = 2
    config.eval.enabled = False
    workdir = str(tmp_path_factory.mktemp("run"))
    result = train_and_evaluate(config, workdir)
    return config, workdir, result["state"]


def _counted(calls: list, split: str, features):
    """Records a completed extraction of `split` (a failed one, e.g. of logits a model
    lacks, raises before this) and passes its features on."""
    calls.append(split)
    return features


def test_trained_checkpoint_through_the_command_line(trained, capsys, monkeypatch):
    config, workdir, state = trained
    out = os.path.join(workdir, "eval")
    calls = []
    original = FeatureExtractor.extract
    monkeypatch.setattr(
        FeatureExtractor, "extract", lambda self, *a: _counted(calls, a[0], original(self, *a))
    )

    main(["--workdir", workdir, "--protocol", "retrieval", "--protocol", "knn", *QUIET])
    saved = _check_numbers(out, capsys.readouterr().out, config)
    assert saved["step"] == 2 and saved["features"] == "pooled" and calls == ["test"]
    for name in ("retrieval_grid.png", "embedding_map.png", "recall_curve.png"):
        assert os.path.getsize(os.path.join(out, name)) > 5000, name

    # The cached rows are the trained network's pooled features, image by image.
    from fgjax.train.run import Run

    images = _test_images(config)
    method = Run(config).method
    both = np.concatenate([images, images[:, :, ::-1]])
    f = np.asarray(jax.jit(method.embed)(state.params, state.model_state, both))
    n = len(images)
    cached = load_features(cache_path(out, "test"))
    np.testing.assert_allclose(cached.features, f[:n], rtol=1e-4, atol=1e-5)

    # Same settings again: the pooled test features load from the cache, same numbers;
    # only what the linear probe (train) and classify (test logits) add is extracted.
    calls.clear()
    main(["--workdir", workdir, "--step", "2", "--protocol", "all", "--no-plots", *QUIET])
    printed = capsys.readouterr().out
    assert calls == ["train", "test"] and "loaded" in printed and "linear_top1" in printed
    logits = load_features(cache_path(out, "test_logits"))
    hits = np.argmax(logits.features, axis=1) == logits.labels
    assert _printed(printed)["classify_top1"] == pytest.approx(hits.mean(), abs=5e-5)
    again = _check_numbers(out, printed, config)
    assert {k: v for k, v in again.items() if k in saved} == saved

    # Flip averaging changes the fingerprint: recomputed, and equal to the mean of the
    # features of each image and of its mirror.
    calls.clear()
    main(["--workdir", workdir, "--flip", "--no-plots", *QUIET])
    assert calls == ["test"]
    flipped = load_features(cache_path(out, "test"))
    np.testing.assert_allclose(flipped.features, 0.5 * (f[:n] + f[n:]), rtol=1e-4, atol=1e-5)


def test_stage_tap_and_missing_step(trained, capsys):
    config, workdir, _ = trained
    out = os.path.join(workdir, "eval_stage1")
    main(["--workdir", workdir, "--out", out, "--features", "stage1", "--no-plots", *QUIET])
    feats = load_features(cache_path(out, "test"))
    assert feats.features.shape == (16, 4 * config.model.overrides.width)  # bottleneck x4
    _check_numbers(out, capsys.readouterr().out, config)
    with pytest.raises(SystemExit, match=r"no checkpoint of step 5 .*steps: \[2\]"):
        main(["--workdir", workdir, "--step", "5", "--out", out, *QUIET])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 5"):  # the traceback
        main(["--workdir", workdir, "--step", "5", "--out", out, "--debug", *QUIET])
    with pytest.raises(SystemExit, match="no feature 'stage9'"):
        main(["--workdir", workdir, "--out", out, "--features", "stage9", *QUIET])


# ---------------------------------------------------------------- a weights file
def test_imported_weights_file_without_training(tmp_path, capsys):
    from fgjax.models.factory import backbone_from_config
    from fgjax.weights import export_torch

    config = tiny_config("supervised")
    backbone = backbone_from_config(config.model)
    shapes = jax.eval_shape(
        lambda x: backbone.init(jax.random.PRNGKey(0), x, train=False), np.zeros((1, 16, 16, 3))
    )
    rng = np.random.default_rng(7)  # random weights and BN statistics, drawn without compiling

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (rng.normal(size=leaf.shape) * (0.3 if "'kernel'" in name else 0.1)).astype(
            np.float32
        ) + ("'scale'" in name)

    donor = jax.tree_util.tree_map_with_path(draw, dict(shapes))
    weights = str(tmp_path / "backbone.pth")
    export_torch(weights, donor, "resnet")
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom conftest import tiny_config\n\n"
        "def get_config():\n    return tiny_config('supervised')\n"
    )
    out = str(tmp_path / "out")
    argv = ["--init-from", weights, "--config", str(recipe), "--out", out, "--no-plots", *QUIET]
    main([*argv, "--protocol", "retrieval", "--protocol", "knn"])
    saved = _check_numbers(out, capsys.readouterr().out, config)
    assert saved["step"] is None and saved["weights"] == weights

    # The features are the donor backbone's, not a random initialisation's.
    apply = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
    want = apply(donor, _test_images(config))
    cached = load_features(cache_path(out, "test"))
    assert np.linalg.norm(cached.features, axis=1).min() > 0
    np.testing.assert_allclose(cached.features, np.asarray(want["pooled"]), rtol=1e-4, atol=1e-5)

    # The linear probe and the classifier's metrics on the same cached features.
    main([*argv, "--protocol", "linear,classify,clustering"])
    saved = json.loads(open(os.path.join(out, "eval.json")).read())
    train, test = (load_features(cache_path(out, s)) for s in ("train", "test"))
    probe = linear_probe(train.features, train.labels, test.features, test.labels)
    assert saved["linear_top1"] == pytest.approx(probe.top1)
    assert saved["linear_weight_decay"] == pytest.approx(probe.weight_decay)
    logits = load_features(cache_path(out, "test_logits"))
    hits = np.argmax(logits.features, axis=1) == logits.labels
    assert saved["classify_top1"] == pytest.approx(hits.mean())
    assert saved["clustering_nmi"] == pytest.approx(clustering_nmi(test.features, test.labels))


def test_usage_errors():
    with pytest.raises(SystemExit):
        main(["--init-from", "w.pth", "--out", "x"])  # no --config
    with pytest.raises(SystemExit):
        main(["--protocol", "knn"])  # neither --workdir nor --init-from


# ---------------------------------------------------------------- cache and config (no JAX)
def test_cache_hits_only_on_the_same_fingerprint_and_writes_atomically(tmp_path):
    rng = np.random.default_rng(0)
    feats = Features(rng.normal(size=(5, 3)).astype(np.float32), np.arange(5), -np.ones(5))
    path = cache_path(str(tmp_path), "test")
    calls = []

    def compute():
        calls.append(1)
        return feats

    key = fingerprint({"step": 2, "feature": "pooled", "flip": False, "image_size": 16})
    assert key == fingerprint({"image_size": 16, "flip": False, "feature": "pooled", "step": 2})
    got, hit = cached_features(path, key, compute, paths=list("abcde"))
    assert not hit and len(calls) == 1
    got, hit = cached_features(path, key, compute)
    assert hit and len(calls) == 1
    np.testing.assert_array_equal(got.features, feats.features)
    np.testing.assert_array_equal(got.labels, feats.labels)
    with np.load(path) as data:
        assert list(data["paths"]) == list("abcde") and list(data["index"]) == list(range(5))
    other = fingerprint({"step": 2, "feature": "pooled", "flip": True, "image_size": 16})
    _, hit = cached_features(path, other, compute)
    assert not hit and len(calls) == 2
    _, hit = cached_features(path, other, compute, refresh=True)
    assert not hit and len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == ["features_test.npz"]  # no temporary files left

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_features(str(tmp_path / "features_train.npz"), key, interrupted)
    assert sorted(os.listdir(tmp_path)) == ["features_test.npz"]


def test_config_json_round_trip_and_overrides(tmp_path):
    config = tiny_config("moco")
    config.eval.recall_ks = (1, 3)
    path = tmp_path / "config.json"
    path.write_text(config.to_json_best_effort())
    back = config_from_json(str(path))
    assert back.to_dict() == config.copy_and_resolve_references().to_dict()
    # the commands' --config reads a run's config.json as it reads a recipe
    assert load_config_file(str(path)).to_dict() == back.to_dict()
    # ... but not fgjax.cli.train's / inspect's (ml_collections' config flag): a clear error
    with pytest.raises(ValueError, match="takes a recipe file"):
        config_path_from_argv([f"--config={path}"], "configs/demo.py")
    apply_overrides(
        back,
        [
            "--config.eval.recall_ks=(1,2,16)",
            "--config.eval.knn_temperature=1",
            "--config.data.root=/x",
            "--config.eval.enabled=false",
        ],
    )
    assert back.eval.recall_ks == (1, 2, 16) and back.eval.knn_temperature == 1.0
    assert back.data.root == "/x" and back.eval.enabled is False
    with pytest.raises(ValueError, match="config.eval.knn_k is a int"):
        apply_overrides(back, ["--config.eval.knn_k=abc"])
    with pytest.raises(ValueError, match="unknown config field config.eval.recal_ks"):
        apply_overrides(back, ["--config.eval.recal_ks=(1,)"])


def test_format_table():
    text = format_table({"retrieval_recall@1": 0.5, "knn_top1": 0.25})
    assert text.splitlines()[2:] == ["retrieval_recall@1  0.5000", "knn_top1            0.2500"]


def test_the_cache_fingerprint_follows_the_image_files(tmp_path):
    """Features of broken images (replaced under skip_bad) were reused after the images
    were repaired: the fingerprint now covers each file's size and modification time."""
    from PIL import Image

    from fgjax.data.sources import ImageFolderSource
    from fgjax.eval.cache import files_identity

    for name in ("a", "b"):
        os.makedirs(tmp_path / "test" / name)
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / name / "0.png")
    source = ImageFolderSource(str(tmp_path), "test")
    before = files_identity(source)
    assert before == files_identity(ImageFolderSource(str(tmp_path), "test"))  # stable
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "test" / "b" / "0.png")  # repaired
    os.utime(tmp_path / "test" / "b" / "0.png", ns=(1, 1))
    assert files_identity(source) != before
    assert files_identity(object()) == ""  # in-memory sources: their data is in the config


def test_reading_a_checkpoint_logs_no_orbax_warnings(trained, caplog):
    """orbax warned 12 times per evaluation that a read-only manager is read-only and that
    the items an evaluation does not read are not restored."""
    import logging

    from fgjax.train.checkpoint import read_saved_state

    with caplog.at_level(logging.WARNING, logger="absl"):
        saved, step = read_saved_state(trained[1])
    assert step == 2 and "params" in saved
    assert not [r.getMessage() for r in caplog.records if r.name == "absl"]
