"""On-device photometric augmentation vs independent numpy / PIL / scipy / colorsys."""

import colorsys
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy import ndimage

from fgjax.data import augment
from fgjax.data.augment import (
    PhotometricSpec,
    byol_view1_spec,
    byol_view2_spec,
    moco_v2_spec,
    no_augment_spec,
    photometric,
    photometric_per_example,
    photometric_unnormalised,
)

jit_hue = jax.jit(augment.adjust_hue)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
OFF = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32)


def _images(b, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8)


def _float(b, h=8, w=8, seed=0):
    return _images(b, h, w, seed).astype(np.float32) / 255.0


# ------------------------------------------------------------------------------ spec


def test_spec_defaults_presets_and_config_construction():
    spec = moco_v2_spec()
    assert spec == PhotometricSpec()
    assert (spec.jitter_prob, spec.brightness, spec.saturation, spec.hue) == (0.8, 0.4, 0.4, 0.1)
    assert (spec.grayscale_prob, spec.blur_prob, spec.solarize_prob) == (0.2, 0.5, 0.0)
    v1, v2 = byol_view1_spec(), byol_view2_spec()
    assert (v1.saturation, v1.blur_prob, v1.solarize_prob) == (0.2, 1.0, 0.0)
    assert (v2.saturation, v2.blur_prob, v2.solarize_prob) == (0.2, 0.1, 0.2)
    none = no_augment_spec()
    assert none.jitter_prob == none.grayscale_prob == none.blur_prob == none.solarize_prob == 0
    cfg = ml_collections.ConfigDict(dataclasses.asdict(v2))
    cfg.blur_sigma = [0.1, 2.0]
    cfg.mean = [0.5, 0.5, 0.5]
    cfg.blur_prob = 1  # an int from the command line
    spec = PhotometricSpec(**cfg)
    assert spec.blur_sigma == (0.1, 2.0) and spec.mean == (0.5, 0.5, 0.5)
    assert isinstance(spec.blur_prob, float)
    hash(spec)  # a static jit argument
    assert spec == PhotometricSpec(**cfg)
    with pytest.raises(ValueError, match="grayscale_prob"):
        PhotometricSpec(grayscale_prob=1.5)
    with pytest.raises(ValueError, match="blur_sigma"):
        PhotometricSpec(blur_sigma=(2.0, 0.1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hue = 0.2


def test_blur_kernel_size_is_nearest_odd():
    assert augment.blur_kernel_size(224, 0.1) == 23  # torchvision BYOL
    assert augment.blur_kernel_size(32, 0.1) == 3
    assert augment.blur_kernel_size(16, 0.1) == 1  # 1.6 -> 1: no blur
    assert augment.blur_kernel_size(40, 0.1) == 5  # 4.0 -> 5 (tie rounds up)
    assert augment.blur_kernel_size(8, 1.0) == 9


# ------------------------------------------------------------------- chain properties


def test_shapes_ranges_normalisation_and_determinism():
    x = _images(6, 16, 16)
    spec = byol_view2_spec()
    key = jax.random.key(0)
    out = photometric(x, key, spec)
    raw = photometric_unnormalised(x, key, spec)
    assert out.shape == (6, 16, 16, 3) and out.dtype == jnp.float32
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0
    assert float(jnp.abs(raw - x / 255.0).max()) > 0.05  # something happened
    np.testing.assert_allclose(out, (np.asarray(raw) - MEAN) / STD, atol=1e-5)
    np.testing.assert_array_equal(out, photometric(x, key, spec))
    assert not np.allclose(out, photometric(x, jax.random.key(1), spec))
    # Normalisation only.
    ident = photometric(x, key, no_augment_spec())
    np.testing.assert_allclose(ident, (x / 255.0 - MEAN) / STD, atol=1e-6)


def test_per_example_keys_make_results_independent_of_sharding():
    x = _images(8, 12, 12)
    rng = jax.random.key(42)
    spec = byol_view2_spec()
    full = photometric(x, rng, spec)
    keys = jax.random.split(rng, 8)
    halves = [photometric_per_example(x[s], keys[s], spec) for s in (slice(0, 4), slice(4, 8))]
    np.testing.assert_allclose(full, np.concatenate(halves), atol=1e-6)
    # An example's output does not depend on its batch mates.
    swapped = photometric_per_example(x[4:8][::-1], keys[4:8][::-1], spec)
    np.testing.assert_allclose(halves[1], np.asarray(swapped)[::-1], atol=1e-6)


def test_probabilities_are_respected():
    spec = PhotometricSpec(jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.3)
    n = 4000
    params = jax.tree.map(
        np.asarray,
        jax.vmap(augment.sample_params, in_axes=(0, None))(
            jax.random.split(jax.random.key(3), n), spec
        ),
    )
    for name, p in [("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5), ("solarize", 0.3)]:
        assert abs(params[name].mean() - p) < 0.03, (name, params[name].mean())
    orders = {tuple(o) for o in params["order"]}
    assert orders == set(itertools.permutations(range(4)))  # all 24 orders occur
    assert abs(np.mean(params["order"][:, 0] == 3) - 0.25) < 0.03  # hue first 1/4 of the time
    for name, lo, hi in [
        ("brightness", 0.6, 1.4),
        ("saturation", 0.6, 1.4),
        ("hue", -0.1, 0.1),
        ("sigma", 0.1, 2.0),
    ]:
        v = params[name]
        assert lo <= v.min() < lo + 0.01 and hi - 0.01 < v.max() <= hi, name
        assert abs(v.mean() - (lo + hi) / 2) < 0.03 * (hi - lo), name
    # End to end: p = 1 always applies (all channels equal), p = 0 never.
    x = _images(64, 4, 4)
    gray = photometric_unnormalised(
        x, jax.random.key(4), PhotometricSpec(**{**OFF, "grayscale_prob": 1.0})
    )
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 1], gray[..., 2])
    never = photometric_unnormalised(x, jax.random.key(4), no_augment_spec())
    np.testing.assert_allclose(never, x / 255.0, atol=1e-7)


# ------------------------------------------------------------ single ops vs references


def _np_gray(x):
    return (x * LUMA).sum(-1, keepdims=True)


def test_color_ops_match_numpy_formulas():
    x = _float(3)
    f = np.array([0.5, 1.0, 1.4], np.float32)
    fb = f.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(augment.adjust_brightness(x, f), np.clip(x * fb, 0, 1), atol=1e-6)
    g = _np_gray(x)
    np.testing.assert_allclose(
        augment.adjust_saturation(x, f), np.clip(fb * x + (1 - fb) * g, 0, 1), atol=1e-6
    )
    m = g.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(
        augment.adjust_contrast(x, f), np.clip(fb * x + (1 - fb) * m, 0, 1), atol=1e-6
    )
    # Grayscale vs PIL's 'L' conversion (integer ITU-R 601 luma, rounded).
    u8 = _images(1, 8, 8, seed=5)[0]
    pil = np.asarray(Image.fromarray(u8).convert("L"), np.float32)
    ours = np.asarray(augment.rgb_to_grayscale(u8[None].astype(np.float32)))[0, ..., 0]
    assert np.abs(ours - pil).max() <= 0.5 + 1e-3


def test_hue_matches_colorsys():
    x = _float(2, 5, 5, seed=9)
    shift = np.array([0.07, -0.1], np.float32)
    ours = np.asarray(jit_hue(x, shift))
    hsv = np.asarray(jax.jit(augment.rgb_to_hsv)(x))
    for b in range(2):
        for i, j in [(0, 0), (1, 3), (2, 2), (4, 1), (3, 4)]:
            r, g, bl = x[b, i, j]
            h, s, v = colorsys.rgb_to_hsv(r, g, bl)
            np.testing.assert_allclose(hsv[b, i, j], (h, s, v), atol=1e-5)
            expected = colorsys.hsv_to_rgb((h + shift[b]) % 1.0, s, v)
            np.testing.assert_allclose(ours[b, i, j], expected, atol=1e-5)
    # Greys have no hue; a zero shift is the identity.
    grey = np.full((1, 2, 2, 3), 0.3, np.float32)
    np.testing.assert_allclose(jit_hue(grey, np.array([0.2], np.float32)), grey, atol=1e-6)
    np.testing.assert_allclose(jit_hue(x, np.zeros(2, np.float32)), x, atol=1e-5)


def test_gaussian_blur_matches_scipy():
    x = _float(2, 12, 10, seed=4)
    sigma = np.array([0.7, 1.8], np.float32)
    k = 5
    ours = np.asarray(jax.jit(augment.gaussian_blur, static_argnums=2)(x, sigma, k))
    for b in range(2):
        ref = x[b]
        for axis in (0, 1):  # 'mirror' = reflect without repeating the edge (torch 'reflect')
            ref = ndimage.gaussian_filter1d(
                ref, float(sigma[b]), axis=axis, mode="mirror", radius=k // 2
            )
        np.testing.assert_allclose(ours[b], ref, atol=1e-5)
    assert np.array_equal(augment.gaussian_blur(x, sigma, 1), x)


def test_solarize_matches_pil():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    pil = np.asarray(ImageOps.solarize(Image.fromarray(u8), threshold=128))
    ours = np.asarray(augment.solarize(u8[None].astype(np.float32) / 255.0, 0.5))[0]
    np.testing.assert_allclose(ours * 255.0, pil, atol=1e-3)
    spec = PhotometricSpec(**{**OFF, "solarize_prob": 1.0})
    out = photometric_unnormalised(u8[None], jax.random.key(0), spec)[0]
    np.testing.assert_allclose(np.asarray(out) * 255.0, pil, atol=1e-3)


# ----------------------------------------------------- the whole chain vs a numpy replay


def _np_hue(x, shift):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return np.clip(out, 0, 1)


def _np_chain(x, p, spec):
    """Independent numpy replay of the chain given the sampled per-example parameters."""
    out = []
    k = augment.blur_kernel_size(x.shape[1], spec.blur_kernel_fraction)
    for i in range(x.shape[0]):
        y = x[i]
        if p["jitter"][i]:
            for op in p["order"][i]:
                if op == 0:
                    y = np.clip(y * p["brightness"][i], 0, 1)
                elif op == 1:
                    f = p["contrast"][i]
                    y = np.clip(f * y + (1 - f) * _np_gray(y).mean(), 0, 1)
                elif op == 2:
                    f = p["saturation"][i]
                    y = np.clip(f * y + (1 - f) * _np_gray(y), 0, 1)
                else:
                    y = _np_hue(y, p["hue"][i])
        if p["grayscale"][i]:
            y = np.repeat(_np_gray(y), 3, -1)
        if p["blur"][i] and k > 1:
            for axis in (0, 1):
                y = ndimage.gaussian_filter1d(
                    y, float(p["sigma"][i]), axis=axis, mode="mirror", radius=k // 2
                )
            y = np.clip(y, 0, 1)
        if p["sharpness"][i]:  # torchvision's tensor adjust_sharpness
            smooth = y.copy()
            smooth[1:-1, 1:-1] = ndimage.correlate(y, SMOOTH[..., None] / 13.0)[1:-1, 1:-1]
            y = np.clip(spec.sharpness_factor * y + (1 - spec.sharpness_factor) * smooth, 0, 1)
        if p["solarize"][i]:
            y = np.where(y >= spec.solarize_threshold, 1 - y, y)
        out.append(y)
    return np.stack(out)


def test_full_chain_matches_numpy_replay():
    spec = PhotometricSpec(
        jitter_prob=0.7,
        grayscale_prob=0.3,
        blur_prob=0.5,
        solarize_prob=0.3,
        blur_kernel_fraction=0.5,
        sharpness_prob=0.5,
        sharpness_factor=1.5,
    )
    x = _images(24, 6, 6, seed=8)
    keys = jax.random.split(jax.random.key(11), 24)
    ours = np.asarray(photometric_per_example(x, keys, spec, normalise=False))
    params = jax.tree.map(
        np.asarray, jax.vmap(augment.sample_params, in_axes=(0, None))(keys, spec)
    )
    assert params["jitter"].any() and params["grayscale"].any() and params["blur"].any()
    assert params["solarize"].any() and not params["jitter"].all()
    assert params["sharpness"].any() and not params["sharpness"].all()
    ref = _np_chain(x.astype(np.float32) / 255.0, params, spec)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
