"""fgjax.methods.cfga.descriptors: CFGA / SCDA / pooling against the PyTorch per-image reference
(fixtures/cfga_tiny.npz from fixtures/make_cfga_fixtures.py and benchmarks/torch_cfga.py),
the JAX largest component against scipy.ndimage.label, masked pooling and the gradient
reduction against numpy, and the dims of full-size ResNets."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from numpy_refs import unit

from fgjax.methods.cfga.descriptors import (
    DESCRIPTORS,
    METHOD_DESCRIPTORS,
    cfga_vector,
    component_labels,
    describe_fn,
    descriptor_dim,
    largest_component,
    masked_avg_max,
    mean_threshold_mask,
    pooled_descriptors,
)
from fgjax.models import build_backbone
from fgjax.weights import resnet_variables_from_torch

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "cfga_tiny.npz")
NAMES = [n for n in DESCRIPTORS if n != "embedding"]
SINGLE_CFGA = METHOD_DESCRIPTORS["cfga"][:-1]


def test_descriptors_equal_the_torch_reference():
    """Every descriptor, LCC on and off, two image sizes, two images per vmapped batch."""
    with np.load(FIXTURE) as data:
        d = {k: data[k] for k in data.files}
    sd = {k[3:]: v for k, v in d.items() if k.startswith("sd/")}
    model = build_backbone(
        "resnet50", stage_sizes=tuple(int(s) for s in d["stage_sizes"]), width=int(d["width"])
    )
    target = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    variables, report = resnet_variables_from_torch(sd, target)
    assert report.ok, str(report)
    # The model's own embedding rides along: here the unnormalised GAP.
    embed = lambda v, x: model.apply(v, x, train=False)["pooled"]  # noqa: E731
    with_lcc = describe_fn(model, NAMES, use_lcc=True, embed=embed)
    without = describe_fn(model, NAMES, use_lcc=False)
    # Without a CFGA name: one batched forward, no gradients.
    pooled = describe_fn(
        model, METHOD_DESCRIPTORS["scda"] + METHOD_DESCRIPTORS["gap"], use_lcc=True
    )
    both = jax.jit(
        lambda v, x: {"lcc": with_lcc(v, x), "nolcc": without(v, x), "pooled": pooled(v, x)}
    )
    sizes = [k.split("/")[1] for k in d if k.startswith("images/")]
    assert sorted(sizes) == ["96x128", "96x96"]
    for size in sizes:
        images = d[f"images/{size}"]
        assert images.shape[0] == 2
        got = both(variables, images.astype(np.float32) / 64 - 2)
        for name, value in got.pop("pooled").items():
            want = d[f"expected/lcc/{size}/{name}"]
            np.testing.assert_allclose(value, want, rtol=0, atol=2e-6, err_msg=f"{size} {name}")
        for lcc, out in got.items():
            assert set(out) == {*NAMES, *(("embedding",) if lcc == "lcc" else ())}
            for name in NAMES:
                want = d[f"expected/{lcc}/{size}/{name}"]
                np.testing.assert_allclose(
                    out[name], want, rtol=0, atol=2e-6, err_msg=f"{lcc} {size} {name}"
                )
                assert out[name].shape == (2, descriptor_dim(model, name)), name
            for name in SINGLE_CFGA:
                assert np.all(out[name] >= 0), name
                np.testing.assert_allclose(np.linalg.norm(out[name], axis=1), 1, atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(out["cfga_plus"], axis=1), 2**0.5, atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(out["scda"], axis=1), 2**0.5, atol=1e-6)
        np.testing.assert_allclose(
            unit(got["lcc"]["embedding"], eps=1e-12), got["lcc"]["gap"], atol=1e-6
        )
        # Where the largest component drops positions, the masked descriptors change.
        for i, cut in enumerate(d[f"lcc_removed/{size}"]):
            changed = not np.allclose(got["lcc"]["scda"][i], got["nolcc"]["scda"][i], atol=1e-4)
            assert changed == (cut > 0), (size, i)
    assert sum(d[f"lcc_removed/{s}"].sum() for s in sizes) > 0, "the LCC is never exercised"


def _scipy_largest(mask):
    labels, count = scipy.ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    return labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])


def test_largest_component_matches_scipy():
    rng = np.random.default_rng(0)
    h, w = 7, 9
    masks = list(rng.random((300, h, w)) < rng.random((300, 1, 1)))
    empty, full = np.zeros((h, w), bool), np.ones((h, w), bool)
    tie = empty.copy()
    tie[0, 5:7] = tie[4, 1:3] = tie[6, 8] = True  # two pairs: the first in raster order wins
    diagonal = np.eye(h, w, dtype=bool)  # diagonal neighbours are not 4-connected
    snake = empty.copy()  # one long path: the propagation must not stop early
    snake[::2] = True
    snake[1::4, -1] = snake[3::4, 0] = True
    masks += [empty, full, tie, diagonal, snake, np.flip(snake)]
    masks = np.stack(masks)
    largest, labels = jax.jit(jax.vmap(lambda m: (largest_component(m), component_labels(m))))(
        masks
    )
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(largest[i], _scipy_largest(mask), err_msg=f"mask {i}")
        # the labels partition the mask exactly as scipy's components do
        ref, _ = scipy.ndimage.label(mask)
        pairs = {
            (int(a), int(b)) for a, b in zip(ref[mask], np.asarray(labels[i])[mask], strict=True)
        }
        assert len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(pairs)
    assert not largest[-6].any()  # empty stays empty
    assert largest[-4].sum() == 2 and largest[-4][0, 5] and largest[-4][0, 6]
    assert largest[-3].sum() == 1 and largest[-2].sum() == snake.sum() == largest[-1].sum()


def test_mean_threshold_and_masked_pooling_against_numpy():
    rng = np.random.default_rng(1)
    # A ties its mean at the middle position; a constant map gives an empty mask (strict).
    f = np.zeros((1, 3, 2), np.float32)
    f[0, :, 0] = [0, 1, 2]
    np.testing.assert_array_equal(mean_threshold_mask(f), [[False, False, True]])
    assert not mean_threshold_mask(np.ones((4, 4, 3), np.float32)).any()

    features = np.maximum(rng.standard_normal((4, 3, 5, 6)), 0).astype(np.float32)
    masks = rng.random((4, 3, 5)) < 0.4
    masks[0] = False  # empty: zeros, not NaN
    avg, mx = masked_avg_max(features, masks)
    m = masks[..., None]
    want_avg = (features * m).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
    np.testing.assert_allclose(avg, want_avg, rtol=1e-6)
    np.testing.assert_allclose(mx, (features * m).max((1, 2)), rtol=1e-6)
    assert not np.asarray(avg[0]).any() and not np.asarray(mx[0]).any()
    out = pooled_descriptors(features, masks)
    gap, gmp = features.mean((1, 2)), features.max((1, 2))
    np.testing.assert_allclose(out["gap"], unit(gap, eps=1e-12), rtol=1e-5)
    np.testing.assert_allclose(
        out["pooling"], unit(np.concatenate([gap, gmp], 1), eps=1e-12), rtol=1e-5
    )
    scda = np.concatenate([unit(want_avg, eps=1e-12), unit(mx, eps=1e-12)], 1)
    np.testing.assert_allclose(out["scda"], scda, rtol=1e-5, atol=1e-7)
    concat = unit(np.concatenate([want_avg, mx], 1), eps=1e-12)
    np.testing.assert_allclose(out["scda_concat"], concat, rtol=1e-5, atol=1e-7)


def _numpy_cfga(grad, variant):
    """Spec 4.2 in torch's layout: `grad` [N, C, kh, kw] -> unit vector."""
    taps = grad.reshape(*grad.shape[:2], -1)
    if taps.shape[-1] == 1:
        r = np.abs(taps[..., 0])
    else:
        r = taps.max(-1) - taps.min(-1) + taps.std(-1, ddof=1)
    if variant != "eq5":
        r = r * ((r > r.mean(0, keepdims=True)) & (r > r.mean(1, keepdims=True)))
    return unit(r.mean(1 if variant == "eq6" else 0), eps=1e-12)


@pytest.mark.parametrize("taps", [1, 3])
def test_gradient_reduction_against_numpy(taps):
    """Responses that are small integers (N = 4, C = 8: exact means) put many of them
    exactly on their thresholds, which the strict selection must drop; a zero gradient
    gives zeros. 3x3 taps: a permutation of (-1 x4, 0, 1 x4) times an integer s has
    range 2s and unbiased std s (the biased one is irrational), so R = 3s exactly."""
    rng = np.random.default_rng(taps)
    scale = rng.integers(0, 3, (4, 8, 1)).astype(np.float32)  # torch [N, C, ...]
    if taps == 1:
        grad = (scale * rng.choice([-1, 1], (4, 8, 1)))[..., None]
    else:
        pattern = np.array([-1, -1, -1, -1, 0, 1, 1, 1, 1], np.float32)
        grad = (scale * rng.permuted(np.broadcast_to(pattern, (4, 8, 9)), axis=2)).reshape(
            4, 8, 3, 3
        )
    grad[:, 1] = grad[0, 1]  # an input channel with equal responses in every filter
    grad[2, :] = grad[2, 0]  # a filter with equal responses over the input channels
    kernel = grad.transpose(2, 3, 1, 0)  # Flax [kh, kw, C, N]
    for variant in ("cfga", "eq5", "eq6"):
        got = cfga_vector(jnp.asarray(kernel), variant)
        np.testing.assert_allclose(got, _numpy_cfga(grad, variant), rtol=1e-6, err_msg=variant)
    assert not np.asarray(cfga_vector(jnp.zeros((taps, taps, 8, 4)))).any()


def test_full_size_dims_and_errors():
    """ResNet-50/101/152 dims (spec 2 and 4.3), traced without compiling."""
    spec = {
        "gap": 2048, "pooling": 4096, "scda": 4096, "scda_concat": 4096, "cfga_plus": 1024,
        "cfga_4_1_1": 2048, "cfga_4_1_2": 512, "cfga_4_1_3": 512, "cfga_4_2_1": 2048,
        "cfga_4_2_2": 512, "cfga_4_2_3": 512, "cfga_eq6_4_1_3": 2048, "cfga_eq6_4_2_1": 512,
    }  # fmt: skip
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    for arch in ("resnet50", "resnet101", "resnet152"):
        model = build_backbone(arch)
        variables = jax.eval_shape(
            lambda m=model: m.init(jax.random.key(0), jnp.zeros(images.shape), train=False)
        )
        out = jax.eval_shape(describe_fn(model, NAMES, use_lcc=True), variables, images)
        assert set(out) == set(NAMES)
        for name in NAMES:
            assert out[name].shape == (2, descriptor_dim(model, name)), (arch, name)
            assert out[name].dtype == jnp.float32
        assert {n: out[n].shape[1] for n in spec} == spec, arch
    with pytest.raises(ValueError, match="Bottleneck"):
        describe_fn(build_backbone("resnet18"), ["cfga_plus"], use_lcc=False)
    with pytest.raises(ValueError, match="unknown descriptors"):
        describe_fn(model, ["cfga_4_3_1"], use_lcc=False)
    with pytest.raises(ValueError, match="needs `embed`"):
        describe_fn(model, ["embedding"], use_lcc=False)
    assert set(METHOD_DESCRIPTORS["cfga"]) == {*SINGLE_CFGA, "cfga_plus"}
    assert all(set(v) <= set(DESCRIPTORS) for v in METHOD_DESCRIPTORS.values())
