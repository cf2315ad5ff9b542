"""Linear classification on a frozen backbone: one real jitted step leaves the backbone
bit-identical and moves the classifier by exactly numpy's SGD update; the step-decay
schedule, the optimiser's freeze groups and the evaluator against recomputations."""

import jax
import numpy as np
import pytest
from conftest import jitted_step, random_batch, run_info, tiny_config

from fgjax.core.sharding import global_batch
from fgjax.eval.features import Features, normalize_images
from fgjax.methods import build_method
from fgjax.train import optim


def _config():
    config = tiny_config("lincls")
    config.optim.freeze = ("backbone",)
    config.optim.lr = 30.0
    config.optim.momentum = 0.9
    config.optim.weight_decay = 0.1  # must not reach the frozen backbone
    config.optim.schedule = "step"
    config.optim.decay_epochs = (1,)
    return config


def _numpy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


@pytest.fixture(scope="module")
def stepped():
    """One real jitted step of the tiny config (compiled once for the whole module)."""
    config = _config()
    run = run_info(config, num_classes=4)
    method, state, frozen, step, mesh = jitted_step(config, run)
    before = _numpy({"params": state.params, "model_state": state.model_state})
    batch = random_batch(np.random.default_rng(0), method.view_names, 8, 16, num_classes=4)
    # The backbone's eval-mode features of the same (un-augmented, normalised) images.
    embed = jax.jit(method.embed)
    spec = config.views.view1.photometric
    images = normalize_images(batch["views"]["view1"], spec.mean, spec.std)
    feats = np.asarray(embed(state.params, state.model_state, images), np.float64)
    new_state, metrics = step(state, frozen, global_batch(batch, mesh))  # donates `state`
    after = _numpy({"params": new_state.params, "model_state": new_state.model_state})
    return dict(
        feats_of=lambda x: np.asarray(
            embed(new_state.params, new_state.model_state, x), np.float64
        ),
        before=before,
        after=after,
        state=new_state,
        metrics=metrics,
        labels=batch["label"],
        feats=feats,
    )


def test_one_step_trains_only_the_classifier_by_the_numpy_sgd_update(stepped):
    before, after, new_state = stepped["before"], stepped["after"], stepped["state"]
    for got, want in (  # backbone weights and BN statistics
        (after["params"]["backbone"], before["params"]["backbone"]),
        (after["model_state"], before["model_state"]),
    ):
        got, want = jax.tree.leaves(got), jax.tree.leaves(want)
        assert len(got) == len(want) > 0
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)

    w, b = (before["params"]["classifier"][k].astype(np.float64) for k in ("kernel", "bias"))
    logits = stepped["feats"] @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = stepped["labels"]
    loss = -np.mean(np.log(p[np.arange(8), labels]))
    assert float(stepped["metrics"]["loss"]) == pytest.approx(loss, rel=1e-5)
    delta = (p - np.eye(4)[labels]) / 8  # d mean CE / d logits
    # SGD with momentum, first step: update = -lr (grad + wd * param) (PyTorch semantics).
    lr, wd = 30.0, 0.1
    want_w = w - lr * (stepped["feats"].T @ delta + wd * w)
    want_b = b - lr * (delta.sum(0) + wd * b)
    got = after["params"]["classifier"]
    np.testing.assert_allclose(got["kernel"], want_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["bias"], want_b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(want_w, w)
    # No optimiser state for the backbone: the momentum buffers are the classifier's size.
    sizes = [x.size for x in jax.tree.leaves(new_state.opt_state) if np.ndim(x) > 0]
    assert sum(sizes) == w.size + b.size


def test_classifier_init_and_the_freeze_requirement(stepped):
    config, params = _config(), stepped["before"]["params"]
    kernel = params["classifier"]["kernel"]
    assert np.all(params["classifier"]["bias"] == 0)
    assert 0.003 < kernel.std() < 0.03  # N(0, 0.01)
    config.optim.freeze = ()
    with pytest.raises(ValueError, match=r"config.optim.freeze=\('backbone',\)"):
        build_method(config, run_info(config))
    config.optim.freeze = ("backbone", "head")
    tx = optim.make_optimizer(config.optim, lambda s: 0.1)
    with pytest.raises(ValueError, match=r"freeze names \['head'\]"):
        tx.init(params)


def test_step_schedule_decays_at_epoch_boundaries():
    o = _config().optim
    o.decay_epochs, o.lr = (60, 80), 30.0
    sched = optim.make_schedule(o, global_batch=256, steps_per_epoch=10, num_epochs=100)
    assert [float(sched(s)) for s in (0, 599, 600, 799, 800, 999)] == pytest.approx(
        [30, 30, 3, 3, 0.3, 0.3]
    )
    o.decay_epochs = ()
    with pytest.raises(ValueError, match="needs config.optim.decay_epochs"):
        optim.make_schedule(o, global_batch=256, steps_per_epoch=10, num_epochs=100)


class _FakeExtractor:
    """Stands in for FeatureExtractor: runs `embed` on fixed images."""

    def __init__(self, images, labels, train_names, test_names):
        self.images, self.labels = images, labels
        self.sources = {
            "train": type("S", (), {"class_names": train_names, "num_classes": len(train_names)}),
            "test": type("S", (), {"class_names": test_names, "num_classes": len(test_names)}),
        }

    def extract(self, split, embed, state):
        out = np.asarray(jax.jit(embed)(state, self.images))
        return Features(out, self.labels, np.full(len(self.labels), -1, np.int32))


def test_evaluator_reports_top1_top5_of_the_classifier(stepped):
    config = _config()
    config.lincls.normalize = True
    method, state = build_method(config, run_info(config, num_classes=4)), stepped["state"]
    rng = np.random.default_rng(1)
    images = rng.normal(size=(12, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 12).astype(np.int32)
    names = ["a", "b", "c", "d"]
    out = method.evaluators()["lincls"](state, _FakeExtractor(images, labels, names, names))
    feats = stepped["feats_of"](images)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)  # config.lincls.normalize
    logits = feats @ np.asarray(state.params["classifier"]["kernel"]) + np.asarray(
        state.params["classifier"]["bias"]
    )
    assert out["top1"] == pytest.approx(np.mean(np.argmax(logits, 1) == labels))
    rank = (logits > logits[np.arange(12), labels][:, None]).sum(1)
    assert out["top5"] == pytest.approx(np.mean(rank < 5)) == 1.0  # 4 classes
    with pytest.raises(ValueError, match="must have the classes of the train split"):
        method.evaluators()["lincls"](state, _FakeExtractor(images, labels, names, names[:3]))


def _lcr_probe(**fields):
    config = tiny_config("lincls")
    config.lincls.feature = "lcr"
    config.optim.freeze = ("backbone", "rationale")
    config.lincls.update(fields)
    return build_method(config, run_info(config))


def test_lcr_descriptor_probe_loads_the_lcr_run_and_embeds_its_descriptor(tiny_lcr_run):
    """`feature='lcr'` + `init_from=WORKDIR/checkpoints/STEP`: the backbone and the branch
    of that step, frozen; the probed feature is the LCR run's own embedding."""
    from conftest import tiny_lcr_config

    from fgjax.train.checkpoint import read_saved_state
    from fgjax.train.state import create_train_state

    probe = _lcr_probe()
    state = create_train_state(probe, None, (2, 16, 16, 3), 0, f"{tiny_lcr_run}/checkpoints/2")
    saved, _ = read_saved_state(tiny_lcr_run, 2)
    newest, step = read_saved_state(tiny_lcr_run)
    assert step == 4
    for group in ("backbone", "rationale"):
        for got, want, other in (
            (state.params, saved["params"], newest["params"]),
            (state.model_state["batch_stats"], saved["model_state"]["batch_stats"], None),
        ):
            jax.tree.map(np.testing.assert_array_equal, got[group], want[group])
            if other is not None:  # the step chosen matters: step 4 holds other weights
                assert not np.allclose(
                    jax.tree.leaves(got[group])[0], jax.tree.leaves(other[group])[0]
                )
    assert set(state.params) == {"backbone", "rationale", "classifier"}

    lcr = build_method(tiny_lcr_config(), run_info(tiny_lcr_config()))
    images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
    want = lcr.embed(saved["params"], saved["model_state"], images)
    got = jax.jit(probe.embed)(state.params, state.model_state, images)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)


def test_lcr_probe_errors_name_what_is_wrong(tiny_lcr_run, tmp_path):
    from fgjax.train.state import create_train_state

    with pytest.raises(ValueError, match="weights file .*training workdir"):
        create_train_state(_lcr_probe(), None, (2, 16, 16, 3), 0, str(tmp_path / "r50.pth"))
    with pytest.raises(ValueError, match=r"params/rationale\[.*\] has shape \(32,\)"):
        create_train_state(_lcr_probe(lcr_maps=16), None, (2, 16, 16, 3), 0, tiny_lcr_run)
    config = tiny_config("lincls")
    config.lincls.feature = "lcr"
    config.optim.freeze = ("backbone",)
    with pytest.raises(ValueError, match=r"freeze=\('backbone', 'rationale'\)"):
        build_method(config, run_info(config))
