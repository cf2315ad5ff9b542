"""Padded batches of uncropped images: `ResNet(valid=...)` and `describe_fn(...)(valid)`.

Two images of odd sizes (every stride-2 layer rounds up: 149 -> 75 -> 38 -> 19 -> 10 -> 5),
put at the top left of one batch whose padding holds large random values, against the same
network on each image alone (no `valid`, the unpadded code path): every stage map on its
valid region and zeros outside, the valid sizes, GAP, and every descriptor (LCC on).
Random weights and BatchNorm statistics, so BN's shift makes the padding matter."""

from __future__ import annotations

import jax
import numpy as np
import scipy.ndimage

from fgjax.methods.cfga.descriptors import METHOD_DESCRIPTORS, describe_fn
from fgjax.models.resnet import ResNet, stage_valid

SIZES = ((149, 101), (93, 163))  # (H, W), each padded in both directions below
BATCH_SHAPE = (160, 176)


def random_variables(net: ResNet, rng: np.random.Generator) -> dict:
    """He-scaled random kernels and random BN statistics / affine, without compiling."""
    shapes = jax.eval_shape(
        lambda x: net.init(jax.random.PRNGKey(0), x, train=False), np.zeros((1, 64, 64, 3))
    )

    def draw(path, leaf) -> np.ndarray:
        name = jax.tree_util.keystr(path)
        if "'kernel'" in name:
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        if "'var'" in name:
            return rng.uniform(0.5, 1.5, leaf.shape)
        return rng.normal(0, 0.3, leaf.shape) + ("'scale'" in name)

    cast = lambda p, x: draw(p, x).astype(np.float32)  # noqa: E731
    return jax.tree_util.tree_map_with_path(cast, dict(shapes))


def padded_batch(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The images alone, the padded batch (garbage beyond each image) and its `valid`."""
    images = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in SIZES]
    batch = rng.uniform(-5, 5, (len(SIZES), *BATCH_SHAPE, 3)).astype(np.float32)
    for row, image in zip(batch, images, strict=True):
        row[: image.shape[0], : image.shape[1]] = image
    return images, batch, np.array(SIZES, np.int32)


def check_backbone(padded: dict, alone: list[dict]) -> None:
    """Every stage map, valid size and GAP of a padded batch against each image alone."""
    for i, ref in enumerate(alone):
        for s in range(1, sum(k.startswith("stage") for k in ref) + 1):
            want = np.asarray(ref[f"stage{s}"][0])
            got = np.asarray(padded[f"stage{s}"][i])
            h, w = want.shape[:2]
            assert tuple(np.asarray(padded[f"valid{s}"][i])) == (h, w), (i, s)
            tolerance = 2e-6 * np.abs(want).max()  # float32 sums of terms up to ~100
            np.testing.assert_allclose(got[:h, :w], want, 1e-5, tolerance, err_msg=f"{i} {s}")
            outside = got.copy()
            outside[:h, :w] = 0
            assert not outside.any(), f"image {i} stage {s}: non-zero padding"
        np.testing.assert_allclose(padded["pooled"][i], ref["pooled"][0], rtol=1e-5, atol=1e-6)


def test_padded_batch_gives_each_images_stage_maps_and_descriptors():
    rng = np.random.default_rng(6)  # weights whose SCDA masks have 2 components
    nets = {
        "bottleneck": ResNet(stage_sizes=(1, 1, 1, 3), width=4),
        "basic": ResNet(stage_sizes=(1, 1, 1, 1), block="basic", width=4),
        "no_maxpool": ResNet(stage_sizes=(1, 1), block="basic", width=4, stem_maxpool=False),
    }
    variables = {k: random_variables(net, rng) for k, net in nets.items()}
    # The descriptors the paper reports (the ablations differ only after the gradients).
    names = list(dict.fromkeys(n for group in METHOD_DESCRIPTORS.values() for n in group))
    describe = describe_fn(nets["bottleneck"], names, use_lcc=True)

    @jax.jit  # one function, 3 compiles: the padded batch, each image alone
    def run(v, x, valid):
        out = {k: net.apply(v[k], x, train=False, valid=valid) for k, net in nets.items()}
        return describe(v["bottleneck"], x, valid), out

    images, batch, valid = padded_batch(np.random.default_rng(0))
    assert all(BATCH_SHAPE[0] > h and BATCH_SHAPE[1] > w for h, w in SIZES)
    got, padded = run(variables, batch, valid)
    alone = [run(variables, image[None], None) for image in images]
    for k, net in nets.items():
        check_backbone(padded[k], [out[k] for _, out in alone])
        for s in range(1, len(net.stage_sizes) + 1):  # the closed form the descriptors use
            got_sizes = stage_valid(valid, s, net.stem_maxpool)
            np.testing.assert_array_equal(got_sizes, padded[k][f"valid{s}"], f"{k} {s}")
    components = []
    for i, (want, out) in enumerate(alone):
        for name in names:
            np.testing.assert_allclose(
                got[name][i], want[name][0], rtol=1e-4, atol=1e-6, err_msg=f"{name} {i}"
            )
        a = np.asarray(out["bottleneck"]["stage4"][0]).sum(-1)
        mask = a > a.mean()
        assert 0 < mask.sum() < mask.size  # the threshold keeps part of the map
        components.append(scipy.ndimage.label(mask)[1])
    assert max(components) > 1  # so the largest-component step matters
