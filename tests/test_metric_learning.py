"""CFGA's metric-learning baselines (fgjax/methods/metric_learning.py): each method's loss
equals numpy on the backbone's own feature map (pooling, Linear, L2, scale, labels) and
reaches every parameter group, frozen BN, the embeddings, the ResNet-50 shapes, the
recipes, per-group lr multipliers and a P x K training run."""

import json
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, run_info, tiny_config
from numpy_refs import log_softmax, unit

from fgjax.config import default_config, load_config_file, photometric_spec
from fgjax.data.augment import no_augment_spec
from fgjax.data.sources import LabeledSource
from fgjax.methods import StepContext, build_method
from fgjax.train import optim
from fgjax.train.loop import training_classes

METHODS = ("ms_loss", "cosface", "arcface", "proxy_anchor", "dgpcrl")
# The recipes' shared code (configs are files, loaded by path).
RECIPES = runpy.run_path(os.path.join(REPO, "configs", "common", "metric_learning.py"))
RETRIEVAL_TRAIN_IMAGES = RECIPES["RETRIEVAL_TRAIN_IMAGES"]
LABELS = np.array([2, 0, 1, 3, 0, 2, 3, 1], np.int32)  # two images of each of 4 classes


# --------------------------------------------------------------- numpy references
def _ms_loss(x, y, alpha, beta, base, margin):
    """Spec 7.1, anchor by anchor."""
    s, total = x @ x.T, 0.0
    for i in range(len(y)):
        pos = [s[i, j] for j in range(len(y)) if y[j] == y[i] and s[i, j] < 1 - 1e-5]
        neg = [s[i, j] for j in range(len(y)) if y[j] != y[i]]
        if not pos or not neg:
            continue
        pos_kept = [v for v in pos if v - margin < max(neg)]
        neg_kept = [v for v in neg if v + margin > min(pos)]
        if not pos_kept or not neg_kept:
            continue
        total += np.log1p(np.sum(np.exp(-alpha * (np.array(pos_kept) - base)))) / alpha
        total += np.log1p(np.sum(np.exp(beta * (np.array(neg_kept) - base)))) / beta
    return total / len(y)


def _margin_ce(x, w, y, scale, margin, kind):
    cos = unit(x) @ unit(w).T
    target = cos[np.arange(len(y)), y]
    if kind == "cosface":
        phi = target - margin
    else:  # ArcFace, not easy-margin
        sin = np.sqrt(np.clip(1 - target**2, 0, 1))
        phi = target * np.cos(margin) - sin * np.sin(margin)
        phi = np.where(
            target > np.cos(np.pi - margin), phi, target - np.sin(np.pi - margin) * margin
        )
    logits = scale * cos
    logits[np.arange(len(y)), y] = scale * phi
    return -np.mean(log_softmax(logits)[np.arange(len(y)), y])


def _proxy_anchor(x, y, proxies, alpha, delta):
    cos = unit(x) @ unit(proxies).T
    pos_term = neg_term = 0.0
    present = sorted(set(y.tolist()))
    for c in range(len(proxies)):
        neg_term += np.log1p(np.sum(np.exp(alpha * (cos[y != c, c] + delta))))
        if c in present:
            pos_term += np.log1p(np.sum(np.exp(-alpha * (cos[y == c, c] - delta))))
    return pos_term / len(present) + neg_term / len(proxies)


def _dgpcrl(x, y, w, scale, threshold, decorrelation):
    logits = (scale * unit(x)) @ w.T
    log_py = log_softmax(logits)[np.arange(len(y)), y]
    sign = np.where(np.exp(log_py) >= threshold, 1.0, -1.0)
    gram = w @ w.T
    return np.mean(sign * log_py) + decorrelation * np.mean((gram - np.eye(len(w))) ** 2)


def _numpy_head(name, fmap, params):
    """(pooled, unit embedding) of the layer4 map [B, h, w, C], in numpy."""
    avg, mx = fmap.mean((1, 2)), fmap.max((1, 2))
    pooled = {"proxy_anchor": avg + mx, "dgpcrl": np.concatenate([avg, mx], 1)}.get(name, mx)
    if name == "dgpcrl":
        return pooled, unit(pooled)
    dense = params["embedding"]
    return pooled, unit(pooled @ dense["kernel"] + dense["bias"])


def _numpy_loss(name, section, embedding, params):
    s = section
    if name == "ms_loss":
        return _ms_loss(embedding, LABELS, s.alpha, s.beta, s.base, s.margin)
    if name in ("cosface", "arcface"):
        return _margin_ce(embedding, params["margin"], LABELS, s.scale, s.margin, name)
    if name == "proxy_anchor":
        return _proxy_anchor(embedding, LABELS, params["proxies"], s.alpha, s.delta)
    return _dgpcrl(embedding, LABELS, params["classifier"], s.scale, s.threshold, s.decorrelation)


# --------------------------------------------------------------- the loss and its gradients
def _tiny(name):
    """tiny_config: a 2-stage width-4 ResNet at 16 px, whose last map is 2 x 2 x 32 (GAP
    and GMP differ); 8-d embeddings."""
    c = tiny_config(name)
    if "embedding_dim" in c[name]:
        c[name].embedding_dim = 8
    return c


@pytest.fixture(scope="module")
def backbone_variables():
    """Random variables of the tiny backbone, shared by every method (no compile): He-scaled
    kernels, BN scale, bias and running statistics away from (1, 0, 0, 1), so eval-mode and
    batch BN differ."""
    c = _tiny("ms_loss")
    net = build_method(c, run_info(c)).backbone()
    x = np.zeros((2, 16, 16, 3), np.float32)
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=False))
    rng = np.random.default_rng(2)

    def value(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            return rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape)
        return rng.normal(0, 0.1, shape)  # BN bias, running mean

    values = jax.tree_util.tree_map_with_path(value, dict(shapes))
    return jax.tree.map(lambda v: np.asarray(v, np.float32), values)


def _params(method, backbone_variables):
    """The method's params with the shared backbone and random head values (the wiring
    test needs values, not the initialisers: those are checked on ResNet-50 below)."""
    shapes = jax.eval_shape(lambda: method.init_variables(jax.random.PRNGKey(0), (2, 16, 16, 3)))[0]
    rng = np.random.default_rng(1)
    params = {
        k: jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), v)
        for k, v in shapes.items()
        if k != "backbone"
    }
    return {**params, "backbone": backbone_variables["params"]}


def _moved(grads) -> bool:
    return any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_numpy_on_the_same_features_and_reaches_every_group(name, backbone_variables):
    """One jitted function per method: the method's loss, gradients and embedding beside
    the backbone's own layer4 maps (eval and batch BN), from which numpy recomputes
    pooling, Linear, L2, scale and loss."""
    c = _tiny(name)
    run = run_info(c, num_classes=4)
    method = build_method(c, run)
    params = _params(method, backbone_variables)
    model_state = {"batch_stats": {"backbone": backbone_variables["batch_stats"]}}
    backbone = method.backbone()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)

    def run_all(params, images, epoch):
        ctx = StepContext(step=jnp.int32(0), epoch=epoch, run=run)

        def loss(p):
            views, batch = {"view1": images}, {"label": LABELS}
            return method.loss(p, model_state, {}, {}, views, batch, ctx, None)

        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        variables = {"params": params["backbone"], **backbone_variables}
        maps = {
            train: backbone.apply(variables, images, train=train, mutable=["batch_stats"])[0]
            for train in (False, True)
        }
        embedding = method.embed(params, model_state, images)
        return value, aux, grads, embedding, maps[False]["stage2"], maps[True]["stage2"]

    # Unoptimised CPU code: a third of the compile time, and these shapes are tiny.
    lowered = jax.jit(run_all).lower(params, images, jnp.float32(1.0))
    run_all = lowered.compile({"xla_backend_optimization_level": 0})
    value, aux, grads, embedding, eval_map, batch_map = jax.device_get(
        run_all(params, images, jnp.float32(1.0))
    )
    host = jax.device_get(params)
    frozen_bn = name != "dgpcrl"
    assert c[name].freeze_bn == frozen_bn
    # Frozen BN: the loss sees eval-mode (running-statistics) features; DGPCRL batch ones.
    _, train_embedding = _numpy_head(name, eval_map if frozen_bn else batch_map, host)
    expected = _numpy_loss(name, c[name], train_embedding, host)
    assert expected > 0.01
    np.testing.assert_allclose(float(value), expected, rtol=1e-4)
    np.testing.assert_allclose(float(aux.metrics["loss"]), expected, rtol=1e-4)

    # Every group learns, the backbone's BN scale and bias too; frozen BN keeps its statistics.
    assert {k: _moved(g) for k, g in grads.items()} == {k: True for k in params}
    assert _moved(grads["backbone"]["bn1"])
    same_stats = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(aux.model_state), jax.tree.leaves(model_state), strict=True)
    )
    assert same_stats == frozen_bn

    # embed: eval-mode BN, unit rows, the numpy embedding of the eval-mode map.
    _, eval_embedding = _numpy_head(name, eval_map, host)
    assert embedding.shape == (8, {"dgpcrl": 2 * 32}.get(name, 8))
    np.testing.assert_allclose(embedding, eval_embedding, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)

    if name == "proxy_anchor":  # warm-up (epoch < warm_epochs = 1): the backbone is fixed
        _, _, warm_grads, *_ = run_all(params, images, jnp.float32(0.5))
        assert not _moved(warm_grads["backbone"])
        assert _moved(warm_grads["embedding"]) and _moved(warm_grads["proxies"])


# --------------------------------------------------------------- ResNet-50, recipes, a run
def test_resnet50_heads_and_embeddings_have_the_spec_shapes():
    """Traced only (jax.eval_shape): CUB's zero-shot split has 200 class names and trains
    on 100, the rows of every class-vector group."""
    expected = {
        "ms_loss": ({"embedding": {"kernel": (2048, 1024), "bias": (1024,)}}, 1024),
        "cosface": ({"margin": (100, 512)}, 512),
        "arcface": ({"margin": (100, 512)}, 512),
        "proxy_anchor": ({"proxies": (100, 512)}, 512),
        "dgpcrl": ({"classifier": (100, 4096)}, 4096),
    }
    for name, (groups, dim) in expected.items():
        c = default_config(name)
        c.model.dtype = "float32"
        c.data.train_split = "retrieval_train"
        if name == "ms_loss":
            c.ms_loss.embedding_dim = 1024  # Table 4's variant
        method = build_method(c, run_info(c, num_classes=100))  # CUB's retrieval_train
        images = jax.ShapeDtypeStruct((2, 227, 227, 3), np.float32)
        # One trace: the embedding `embed` returns and the variables init_variables makes.
        out, variables = jax.eval_shape(
            lambda x, m=method: m.net.init_with_output(jax.random.PRNGKey(0), x, train=False),
            images,
        )
        params, embedding = variables["params"], out["embedding"]
        for group, shape in groups.items():
            assert jax.tree.map(lambda s: s.shape, params[group]) == shape, name
        assert embedding.shape == (2, dim), name


def test_a_zero_shot_split_sizes_the_classifier_by_its_labels():
    # CUB's retrieval_train keeps the 200 class names but labels its images 0..99 only.
    names = [f"c{i}" for i in range(6)]
    split = LabeledSource(
        dataset="toy",
        split="retrieval_train",
        labels=np.array([0, 2, 1, 2]),
        class_names=names,
        images=np.zeros((4, 2, 2, 3), np.uint8),
    )
    assert split.num_classes == 6 and training_classes(split) == 3


def _recipe(dataset, name):
    return load_config_file(os.path.join(REPO, "configs", f"{dataset}_{name}.py"))


@pytest.mark.parametrize("dataset", ["cub", "cars"])
def test_recipes_follow_the_spec(dataset):
    """The ten recipe files load, build their method on the dataset's class count, and
    their optimiser, schedule, sampler, views and iterations are the spec's."""
    classes = {"cub": 200, "cars": 196}[dataset]
    for name in METHODS:
        c = _recipe(dataset, name)
        assert (c.method, c.data.kind, c.model.arch) == (name, dataset, "resnet50")
        assert (c.data.train_split, c.data.test_split) == ("retrieval_train", "retrieval_test")
        assert c.model.init_from == "resnet50-19c8e357.pth"
        per_epoch = RETRIEVAL_TRAIN_IMAGES[dataset] // c.train.batch_size
        run = run_info(c, classes // 2, per_epoch, c.train.num_epochs)
        method = build_method(c, run)
        if method.class_param:
            assert method.net.num_classes == classes // 2
        schedule = optim.make_schedule(c.optim, c.train.batch_size, per_epoch, c.train.num_epochs)
        lr = lambda step, schedule=schedule: float(schedule(step))  # noqa: E731
        view = c.views.view1
        total = c.train.num_epochs * run.steps_per_epoch
        if c.train.max_steps:
            assert total >= c.train.max_steps
            total = c.train.max_steps
        if name == "ms_loss":
            assert (c.data.sampler, c.data.pk_classes, c.data.pk_images) == ("pk", 16, 5)
            assert (c.optim.name, c.optim.weight_decay, total) == ("adam", 5e-4, 3000)
            assert [lr(s) for s in (0, 1199, 1200, 2399, 2400)] == pytest.approx(
                [3e-5, 3e-5, 3e-6, 3e-6, 3e-7]
            )
        if name in ("cosface", "arcface"):
            assert (c.data.sampler, c.data.pk_classes, c.data.pk_images) == ("pk", 80, 1)
            assert (c.optim.name, c.optim.weight_decay) == ("rmsprop", 5e-4)
            assert total == {"cub": 3000, "cars": 4000}[dataset]
            assert lr(0) == lr(total - 1) == pytest.approx(1e-5)
            assert (c[name].scale, c[name].margin) == (50.0, 0.5)
        if name in ("ms_loss", "cosface", "arcface"):
            assert c.train.batch_size == 80 and c[name].freeze_bn
            assert (view.size, tuple(view.crop_scale), view.crop) == (
                227,
                (0.16, 1.0),
                "random_resized",
            )
            assert (c.data.image_size, c.data.eval_resize_ratio) == (227, 227 / 256)
        if name == "dgpcrl":
            assert (c.data.sampler, c.train.batch_size, c.optim.name) == ("shuffle", 60, "sgd")
            assert (view.crop, view.squash_size, view.size) == ("squash_random_crop", 280, 256)
            assert not c.dgpcrl.freeze_bn and c.train.num_epochs == 111
            e = run.steps_per_epoch
            assert [lr(s) for s in (0, 100 * e - 1, 100 * e)] == pytest.approx([1e-3, 1e-3, 1e-4])
        if name == "proxy_anchor":
            assert (c.train.batch_size, c.optim.name, c.train.num_epochs) == (120, "adamw", 60)
            assert dict(c.optim.lr_multipliers) == {"proxies": 100.0}
            assert c.proxy_anchor.warm_epochs == 5 and c.proxy_anchor.freeze_bn
            assert (view.size, tuple(view.crop_scale)) == (224, (0.08, 1.0))
            step = {"cub": 5, "cars": 10}[dataset] * run.steps_per_epoch
            assert [lr(s) for s in (step - 1, step, 2 * step)] == pytest.approx(
                [1e-4, 5e-5, 2.5e-5]
            )
        assert photometric_spec(c, "view1") == no_augment_spec()  # no colour augmentation


def test_lr_multipliers_scale_one_group_like_a_torch_param_group():
    """AdamW's first step is -lr (g / (|g| + eps) + wd p) per element (torch.optim.AdamW);
    a group with lr_multipliers f moves f times as far, decay included."""
    c = default_config("proxy_anchor")
    c.optim.update(name="adamw", weight_decay=0.1)
    c.optim.lr_multipliers.proxies = 100.0
    params = {"proxies": np.full((2, 3), 2.0, np.float32), "embedding": np.ones(3, np.float32)}
    grads = {"proxies": np.full((2, 3), 0.5, np.float32), "embedding": np.full(3, -2.0, np.float32)}
    tx = optim.make_optimizer(c.optim, lambda step: 1e-3)
    updates, _ = tx.update(grads, tx.init(params), params)
    for group, factor in (("proxies", 100.0), ("embedding", 1.0)):
        g, p = grads[group], params[group]
        torch_step = -factor * 1e-3 * (g / (np.abs(g) + 1e-8) + 0.1 * p)
        np.testing.assert_allclose(np.asarray(updates[group]), torch_step, rtol=1e-5)
    c.optim.lr_multipliers.protos = 2.0
    with pytest.raises(ValueError, match="lr_multipliers names \\['protos'\\]"):
        optim.make_optimizer(c.optim, lambda step: 1e-3).init(params)


def test_ms_loss_trains_on_pk_batches_with_frozen_bn(tmp_path):
    """Two steps of train_and_evaluate on the procedural dataset with P x K batches (2
    classes x 4 images): finite losses, and the backbone's running statistics are still
    the initial ones."""
    from fgjax.train.loop import train_and_evaluate

    c = _tiny("ms_loss")
    c.data.update(sampler="pk", pk_classes=2, pk_images=4)
    c.train.update(num_epochs=1, batch_size=8)
    c.optim.update(name="adam", lr=1e-3, schedule="step", decay_steps=(1,))
    c.eval.enabled = False
    with jax.default_prng_impl("rbg"):  # initialisation compiles 4x faster than threefry
        result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["finished"] and result["step"] == 2
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert [m["lr"] for m in logged] == pytest.approx([1e-3, 1e-4])
    assert all(np.isfinite(m["loss"]) and m["loss"] > 0 and m["skipped"] == 0 for m in logged)
    stats = result["state"].model_state["batch_stats"]["backbone"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(stats):
        initial = 0.0 if path[-1].key == "mean" else 1.0
        np.testing.assert_array_equal(np.asarray(leaf), initial)
