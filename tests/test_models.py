"""ResNet and BatchNorm: shapes at full size (eval_shape) and semantics on tiny nets."""

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.models import MLP, BatchNorm, ResNet, resnet50


def test_resnet50_full_size_shapes_and_param_count():
    model = resnet50()
    x = jnp.zeros((2, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    # torchvision resnet50 has 25,557,032 parameters, 2,049,000 of them in the 1000-way fc.
    assert n_params == 25_557_032 - 2_049_000
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False, return_maps=True), variables)
    assert out["pooled"].shape == (2, 2048)
    assert out["stage3"].shape == (2, 14, 14, 1024)
    assert out["stage4"].shape == (2, 7, 7, 2048)


def test_resnet_without_stem_maxpool_doubles_map_resolution():
    model = resnet50(stem_maxpool=False)
    x = jnp.zeros((1, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False, return_maps=True), variables)
    assert out["stage4"].shape == (1, 14, 14, 2048)


def test_zero_init_last_bn_makes_blocks_identity_on_residual():
    model = ResNet(stage_sizes=(1, 1), width=4, zero_init_last_bn=True)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
    scales = [v["bn3"]["scale"] for k, v in variables["params"].items() if k.startswith("layer")]
    assert scales and all(np.all(np.asarray(s) == 0) for s in scales)


def test_batchnorm_groups_match_numpy_and_running_stats_are_unbiased():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 5)).astype(np.float32) * 2 + 1
    bn = BatchNorm(groups=2, momentum=0.9)
    variables = bn.init(jax.random.key(0), x, train=True)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    groups = x.reshape(2, 4, 3, 5)
    mean = groups.mean(axis=(1, 2), keepdims=True)
    var = groups.var(axis=(1, 2), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)
    unbiased = groups.var(axis=(1, 2), ddof=1).mean(0)
    np.testing.assert_allclose(
        np.asarray(updates["batch_stats"]["var"]), 0.9 + 0.1 * unbiased, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(updates["batch_stats"]["mean"]),
        0.1 * groups.mean(axis=(1, 2)).mean(0),
        rtol=1e-5,
        atol=1e-7,
    )


def test_mlp_with_bn_shapes():
    head = MLP(features=(16, 8), use_bn=True)
    x = jnp.ones((4, 12))
    variables = head.init(jax.random.key(0), x, train=True)
    y, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.shape == (4, 8) and y.dtype == jnp.float32
    assert set(variables["params"]) == {"fc0", "bn0", "fc1"}
