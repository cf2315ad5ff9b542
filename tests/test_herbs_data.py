"""HERBS' data recipe (shared/methods/herbs.md section 5.4): squash + random crop train
views, the p = 0.1 sharpness 1.5, and the squash + centre crop test transform."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fgjax.config import load_config_file, photometric_spec, view_config, view_spec
from fgjax.data import augment
from fgjax.data.augment import PhotometricSpec, photometric_per_example
from fgjax.data.decode import random_crop_views, resize_center_crop
from fgjax.data.eval_loader import make_eval_loader
from fgjax.data.train_loader import make_train_loader
from fgjax.data.views import ViewSpec

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "herbs_data.npz"
OFF = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
SQUASH, S = 17, 12  # the fixture's test transform: Resize((17, 17)) + CenterCrop(12)


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as f:
        return dict(f)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _squashed(img, size=SQUASH):
    """PIL's Resize((size, size), BILINEAR) of the whole image (torchvision on PIL)."""
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


# ------------------------------------------------------------------------ sharpness


def _np_sharpness(x, factor):
    """torchvision's rule in numpy: 3x3 [[1,1,1],[1,5,1],[1,1,1]] / 13 smoothing of the
    interior, border pixels kept, blend f x + (1 - f) smooth, clamp to [0, 1]."""
    x = np.asarray(x, np.float64)
    h, w = x.shape[1:3]
    kernel = np.ones((3, 3)) / 13.0
    kernel[1, 1] = 5 / 13.0
    smooth = x.copy()
    smooth[:, 1:-1, 1:-1] = sum(
        kernel[i, j] * x[:, i : i + h - 2, j : j + w - 2] for i in range(3) for j in range(3)
    )
    return np.clip(factor * x + (1 - factor) * smooth, 0, 1)


def test_sharpness_matches_torchvision_numpy_and_pil(fixture):
    images = fixture["images"]
    x = images.astype(np.float32) / 255.0
    sharpen = jax.jit(augment.adjust_sharpness)
    for f, ref in zip(fixture["sharpness_factors"], fixture["sharpness_tensor"], strict=True):
        ours = np.asarray(sharpen(x, jnp.full((len(x),), f)))
        np.testing.assert_allclose(ours, ref, atol=2e-6)
        np.testing.assert_allclose(ours, _np_sharpness(x, float(f)), atol=2e-6)
        # The border is the blend of x with itself.
        np.testing.assert_allclose(ours[:, 0], x[:, 0], atol=1e-6)
        np.testing.assert_allclose(ours[:, :, -1], x[:, :, -1], atol=1e-6)
    assert (fixture["sharpness_tensor"][2] == 1).any()  # factor 4 exercises the clamp
    # HERBS sharpens uint8 PIL images: the float op is within one level of PIL's.
    ours = np.asarray(sharpen(x, jnp.full((len(x),), 1.5)))
    assert np.abs(ours * 255 - fixture["sharpness_pil"]).max() <= 1.0
    # Per-example factors, and images under 3 px on a side unchanged (torchvision too).
    both = np.asarray(sharpen(x[:2], jnp.asarray([1.5, 0.3])))
    np.testing.assert_allclose(both[1], fixture["sharpness_tensor"][1][1], atol=2e-6)
    thin = x[:, :2]
    np.testing.assert_array_equal(augment.adjust_sharpness(thin, 2.0), thin)


def test_sharpness_in_the_chain_is_per_example_with_its_probability(fixture):
    spec = PhotometricSpec(**OFF, sharpness_prob=0.5, sharpness_factor=1.5)
    x = np.tile(fixture["images"], (200, 1, 1, 1))  # 600 examples
    keys = jax.random.split(jax.random.key(0), len(x))
    out = np.asarray(photometric_per_example(x, keys, spec, normalise=False))
    f = x.astype(np.float32) / 255.0
    sharpened = np.abs(out - _np_sharpness(f, 1.5)).max(axis=(1, 2, 3)) < 2e-6
    unchanged = np.abs(out - f).max(axis=(1, 2, 3)) < 1e-6
    assert (sharpened ^ unchanged).all()  # each example: one or the other
    assert abs(sharpened.mean() - 0.5) < 0.07  # 3.5 standard deviations
    for kwargs, match in [
        (dict(sharpness_prob=1.5), "sharpness_prob must be in"),
        (dict(sharpness_factor=-1.0), "sharpness_factor must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            PhotometricSpec(**kwargs)


# ------------------------------------------------------------ train: squash + crop


def test_squash_random_crop_is_a_slice_of_the_squashed_image_at_every_offset():
    img = _image(23, 31, seed=1)
    squashed = _squashed(img)
    view = ViewSpec("v", S, crop="squash_random_crop", squash_size=SQUASH)
    seen = set()
    for seed in range(300):
        out = random_crop_views({"image": img}, np.random.default_rng(seed), [view])["v"]
        replay = np.random.default_rng(seed)  # RandomCrop's top, left, then the flip
        top, left = (int(replay.integers(0, SQUASH - S + 1)) for _ in range(2))
        ref = squashed[top : top + S, left : left + S]
        if replay.uniform() < 0.5:
            ref = ref[:, ::-1]
        np.testing.assert_array_equal(out, ref)
        seen.add((top, left))
    margin = SQUASH - S + 1
    assert seen == {(t, lft) for t in range(margin) for lft in range(margin)}
    # A record's region is squashed on its own: the region's pixels only.
    record = {"image": img, "box": (3.0, 2.0, 20.0, 15.0)}  # left, top, width, height
    out = random_crop_views(record, np.random.default_rng(5), [view])["v"]
    replay = np.random.default_rng(5)
    top, left = (int(replay.integers(0, SQUASH - S + 1)) for _ in range(2))
    ref = _squashed(img[2:17, 3:23])[top : top + S, left : left + S]
    np.testing.assert_array_equal(out, ref[:, ::-1] if replay.uniform() < 0.5 else ref)


def test_herbs_views_through_the_config_and_the_train_loader():
    c = load_config_file(str(REPO / "configs" / "cub_herbs.py"))
    spec = view_spec(c, "view1")
    assert (spec.crop, spec.squash_size, spec.size) == ("squash_random_crop", 510, 384)
    p = photometric_spec(c, "view1")
    assert (p.sharpness_prob, p.sharpness_factor, p.blur_prob) == (0.1, 1.5, 0.1)
    assert (c.data.eval_resize, c.data.eval_squash_size) == ("squash", 510)
    nabirds = load_config_file(str(REPO / "configs" / "nabirds_herbs.py"))
    assert view_spec(nabirds, "view1") == spec
    assert (nabirds.data.eval_resize, nabirds.data.eval_squash_size) == ("squash", 510)

    class Source:  # 4 in-memory images of assorted shapes
        images = [
            _image(*hw, seed=i) for i, hw in enumerate([(23, 31), (30, 14), (20, 20), (9, 40)])
        ]

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return {"image": self.images[i], "label": i, "index": i}

    c.data.image_size, c.views.view1.squash_size = S, SQUASH
    loader = make_train_loader(
        Source(), global_batch_size=4, views=[view_spec(c, "view1")], seed=0, num_workers=0
    )
    batch = next(iter(loader))
    for crop, i in zip(batch["views"]["view1"], batch["index"], strict=True):
        squashed = _squashed(Source.images[i])
        slices = [
            squashed[t : t + S, lft : lft + S][:, ::flip]
            for t in range(SQUASH - S + 1)
            for lft in range(SQUASH - S + 1)
            for flip in (1, -1)
        ]
        assert any(np.array_equal(crop, s) for s in slices)


# ------------------------------------------------------ test: squash + centre crop


def test_eval_squash_center_crop_matches_torchvision(fixture, tmp_path):
    img = fixture["eval_image"]
    ref = fixture["eval_squash"]
    out = resize_center_crop({"image": img}, image_size=S, resize="squash", squash_size=SQUASH)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(ref, _squashed(img)[2 : 2 + S, 2 : 2 + S])  # offset 2.5 -> 2
    # From a file, through the loader, and a portrait image (offset 63 at HERBS' sizes).
    path = tmp_path / "a.png"
    Image.fromarray(img.transpose(1, 0, 2)).save(path)
    records = [{"image": img, "label": 0, "index": 0}, {"path": str(path), "label": 1, "index": 1}]
    loader = make_eval_loader(
        records, batch_size=2, image_size=S, resize="squash", squash_size=SQUASH
    )
    images = next(iter(loader))["images"]
    np.testing.assert_array_equal(images[0], out)
    portrait = _squashed(img.transpose(1, 0, 2))[2 : 2 + S, 2 : 2 + S]
    np.testing.assert_array_equal(images[1], portrait)


# ------------------------------------------------------------------- validation


def test_crop_and_resize_fields_are_validated_naming_the_field():
    for kwargs, match in [
        (dict(crop="squash"), "view 'v': crop must be one of"),
        (dict(crop="squash_random_crop", squash_size=7), "squash_size >= size=8"),
        (dict(crop="squash_random_crop"), "squash_size >= size=8"),
        (dict(crop="squash_random_crop", squash_size=12.0), "squash_size must be an integer"),
        (dict(squash_size=12), "squash_size=12 is only read with crop='squash_random_crop'"),
    ]:
        with pytest.raises(ValueError, match=match):
            ViewSpec("v", 8, **kwargs)
    with pytest.raises(ValueError, match="unknown view field 'squash'"):
        view_config(load_config_file(str(REPO / "configs" / "cub_herbs.py")), squash=510)
    records = [{"image": _image(10, 10), "label": 0, "index": 0}]
    for kwargs, match in [
        (dict(resize="center"), r"config\.data\.eval_resize\) must be one of"),
        (dict(resize="squash"), r"config\.data\.eval_squash_size\) >= the crop"),
        (dict(resize="squash", squash_size=4), r"config\.data\.image_size=8\), got 4"),
        (dict(squash_size=510), r"eval_squash_size=510 is only read with"),
        (dict(resize="squash", squash_size="510"), "must be an integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_eval_loader(records, batch_size=1, image_size=8, **kwargs)
        with pytest.raises(ValueError, match=match):
            resize_center_crop(records[0], image_size=8, **kwargs)


def test_other_recipes_keep_random_resized_crops_and_short_side_evaluation():
    from fgjax.config import default_config

    for method in ("moco", "byol", "supervised", "lcr"):
        c = default_config(method)
        assert (c.data.eval_resize, c.data.eval_squash_size) == ("short_side", 0)
        for name in c.views:
            assert (view_spec(c, name).crop, view_spec(c, name).squash_size) == (
                "random_resized",
                0,
            )
            assert photometric_spec(c, name).sharpness_prob == 0.0
