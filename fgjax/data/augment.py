"""Photometric augmentation on the accelerator: batched, jittable, per-example random.

`photometric(images uint8 [B, H, W, 3], rng, spec) -> float32 [B, H, W, 3]` applies, to
each example with its own key (`jax.random.split(rng, B)`, so the result does not depend
on how the batch is sharded), the torchvision-style chain

  ColorJitter (p=jitter_prob; brightness, contrast, saturation, hue in a random
  per-example order) -> RandomGrayscale (p) -> GaussianBlur (p, sigma ~ U(blur_sigma))
  -> RandomAdjustSharpness (p, factor) -> RandomSolarize (p) -> Normalize(mean, std),

clamping to [0, 1] after every op. Semantics (float images in [0, 1]):
  brightness  x * f,                            f ~ U(max(0, 1 - b), 1 + b)
  contrast    f x + (1 - f) mean(gray(x)),      f ~ U(max(0, 1 - c), 1 + c)
  saturation  f x + (1 - f) gray(x),            f ~ U(max(0, 1 - s), 1 + s)
  hue         HSV hue + h (mod 1),              h ~ U(-hue, hue)
  grayscale   ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B, replicated to 3 channels
  blur        separable Gaussian, kernel = nearest odd integer to
              blur_kernel_fraction * H (23 at 224 px, as torchvision BYOL), sigma in pixels,
              reflect padding (torchvision's GaussianBlur)
  sharpness   f x + (1 - f) smooth(x), f = sharpness_factor; smooth(x) is x filtered by the
              3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 inside, x itself on the
              one-pixel border (torchvision's tensor `adjust_sharpness`; on uint8 PIL
              images, HERBS' case, torchvision's ImageEnhance path rounds to uint8, <= 1/255)
  solarize    x -> 1 - x where x >= solarize_threshold. The default 0.5 selects exactly the
              uint8 values >= 128 (PIL's ImageOps.solarize(threshold=128) on uint8 input).
Ops whose strength is 0 (sharpness: factor 1) are skipped (as torchvision does for a None
jitter parameter).
Note: torchvision's tensor grayscale uses 0.2989 for R; PIL and this module use 0.299.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

_LUMA = (0.299, 0.587, 0.114)
_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_PROBABILITIES = ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "sharpness_prob")
_NON_NEGATIVE = ("brightness", "contrast", "saturation", "blur_kernel_fraction", "sharpness_factor")


@dataclasses.dataclass(frozen=True)
class PhotometricSpec:
    """Photometric augmentation recipe (defaults: MoCo v2 `--aug-plus`). Hashable."""

    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5
    sharpness_prob: float = 0.0
    sharpness_factor: float = 1.0  # 1 = identity; HERBS: 1.5 with p = 0.1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("blur_sigma", "mean", "std"):
                value = tuple(float(v) for v in value)
            else:
                value = float(value)
            object.__setattr__(self, f.name, value)
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        lo_hi = self.blur_sigma
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"blur_sigma must be (lo, hi) with 0 < lo <= hi, got {lo_hi}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must have 3 entries, std > 0: {self.mean}, {self.std}")


def moco_v2_spec() -> PhotometricSpec:
    """MoCo v2 (`--aug-plus`): jitter(0.4, 0.4, 0.4, 0.1) p=0.8, gray 0.2, blur p=0.5."""
    return PhotometricSpec()


def byol_view1_spec() -> PhotometricSpec:
    """BYOL view 1: jitter(0.4, 0.4, 0.2, 0.1) p=0.8, gray 0.2, blur always, no solarize."""
    return PhotometricSpec(saturation=0.2, blur_prob=1.0, solarize_prob=0.0)


def byol_view2_spec() -> PhotometricSpec:
    """BYOL view 2: as view 1 but blur p=0.1 and solarize p=0.2."""
    return PhotometricSpec(saturation=0.2, blur_prob=0.1, solarize_prob=0.2)


def no_augment_spec() -> PhotometricSpec:
    """Normalisation only (evaluation)."""
    return PhotometricSpec(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


# ---------------------------------------------------------------------------- single ops
# All ops take float images x [B, H, W, 3] in [0, 1] and per-example factors [B].


def _bcast(v: jax.Array) -> jax.Array:
    return jnp.asarray(v, jnp.float32).reshape(-1, 1, 1, 1)


def rgb_to_grayscale(x: jax.Array) -> jax.Array:
    """ITU-R 601 luma: [B, H, W, 3] -> [B, H, W, 1]."""
    return x[..., 0:1] * _LUMA[0] + x[..., 1:2] * _LUMA[1] + x[..., 2:3] * _LUMA[2]


def _blend(x, other, factor):
    f = _bcast(factor)
    return jnp.clip(f * x + (1.0 - f) * other, 0.0, 1.0)


def adjust_brightness(x: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(x * _bcast(factor), 0.0, 1.0)


def adjust_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
    mean = jnp.mean(rgb_to_grayscale(x), axis=(1, 2, 3), keepdims=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
    return _blend(x, rgb_to_grayscale(x), factor)


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (colorsys conventions)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = jnp.max(x, axis=-1)
    minc = jnp.min(x, axis=-1)
    delta = maxc - minc
    s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
    d = jnp.where(delta > 0, delta, 1.0)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """[..., 3] HSV in [0, 1] -> RGB (same values as colorsys.hsv_to_rgb).

    Branch-free form: channel n in (R, G, B) = v - v s clip(min(k, 4 - k), 0, 1) with
    k = (n + 6 h) mod 6 and n = 5, 3, 1.
    """
    h, s, v = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0], x.dtype) + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(x: jax.Array, shift: jax.Array) -> jax.Array:
    hsv = rgb_to_hsv(x)
    h = jnp.mod(hsv[..., 0] + _bcast(shift)[..., 0], 1.0)
    out = hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))
    return jnp.clip(out, 0.0, 1.0)


def blur_kernel_size(side: int, fraction: float) -> int:
    """Nearest odd integer to fraction * side (>= 1, and < 2 * side for reflect padding)."""
    k = 2 * int(fraction * side / 2.0) + 1
    return max(1, min(k, 2 * side - 1))


def gaussian_kernels(sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Normalised 1-D Gaussian weights [B, kernel_size] for per-example sigma [B]."""
    d = jnp.arange(kernel_size, dtype=jnp.float32) - (kernel_size - 1) / 2.0
    w = jnp.exp(-0.5 * (d[None, :] / jnp.asarray(sigma, jnp.float32)[:, None]) ** 2)
    return w / jnp.sum(w, axis=1, keepdims=True)


def _blur_axis(x: jax.Array, w: jax.Array, axis: int) -> jax.Array:
    k = w.shape[1]
    pad = k // 2
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    xp = jnp.pad(x, widths, mode="reflect")
    n = x.shape[axis]
    out = jnp.zeros_like(x)
    for i in range(k):  # static kernel taps, vectorised over the batch
        tap = jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
        out = out + w[:, i].reshape(-1, 1, 1, 1) * tap
    return out


def gaussian_blur(x: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur with per-example sigma [B] (pixels), reflect padding."""
    if kernel_size <= 1:
        return x
    w = gaussian_kernels(sigma, kernel_size)
    return jnp.clip(_blur_axis(_blur_axis(x, w, 1), w, 2), 0.0, 1.0)


_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # / 13: PIL's ImageFilter.SMOOTH


def adjust_sharpness(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend of x [B, H, W, 3] with its 3x3-smoothed interior (border pixels kept) by
    per-example factor [B] (or a scalar); images under 3 px on a side are returned as is."""
    h, w = x.shape[1], x.shape[2]
    if h <= 2 or w <= 2:
        return x
    inner = sum(
        _SMOOTH[i][j] / 13.0 * x[:, i : i + h - 2, j : j + w - 2]
        for i in range(3)
        for j in range(3)
    )
    return _blend(x, x.at[:, 1:-1, 1:-1].set(inner), factor)


def solarize(x: jax.Array, threshold: float) -> jax.Array:
    return jnp.where(x >= threshold, 1.0 - x, x)


def normalize(x: jax.Array, mean, std) -> jax.Array:
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# ---------------------------------------------------------------------------- the chain


def sample_params(key: jax.Array, spec: PhotometricSpec) -> dict[str, jax.Array]:
    """One example's random draws (vmap over keys for a batch).

    Returns scalars 'jitter', 'grayscale', 'blur', 'solarize', 'sharpness' (bool: op applied),
    'brightness', 'contrast', 'saturation' (factors), 'hue' (shift), 'sigma', and
    'order' int32 [4]: the jitter op applied in each slot (0 brightness, 1 contrast,
    2 saturation, 3 hue), a uniformly random permutation.
    """
    # One draw: small graph, fast compile. JAX's partitionable threefry (the default) makes
    # the first n values of a longer draw those of an n-value draw, so appending u[13] for
    # sharpness left every earlier recipe's draws unchanged.
    u = jax.random.uniform(key, (14,), jnp.float32)
    lerp = lambda v, lo, hi: lo + (hi - lo) * v
    return {
        "jitter": u[0] < spec.jitter_prob,
        "order": jnp.argsort(u[1:5]).astype(jnp.int32),
        "brightness": lerp(u[5], max(0.0, 1 - spec.brightness), 1 + spec.brightness),
        "contrast": lerp(u[6], max(0.0, 1 - spec.contrast), 1 + spec.contrast),
        "saturation": lerp(u[7], max(0.0, 1 - spec.saturation), 1 + spec.saturation),
        "hue": lerp(u[8], -spec.hue, spec.hue),
        "grayscale": u[9] < spec.grayscale_prob,
        "blur": u[10] < spec.blur_prob,
        "sigma": lerp(u[11], spec.blur_sigma[0], spec.blur_sigma[1]),
        "solarize": u[12] < spec.solarize_prob,
        "sharpness": u[13] < spec.sharpness_prob,
    }


def _where(flag: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(flag.reshape(-1, 1, 1, 1), a, b)


def apply_params(x: jax.Array, p: dict[str, jax.Array], spec: PhotometricSpec) -> jax.Array:
    """The chain on float x [B, H, W, 3] in [0, 1] with per-example params (no normalise)."""
    ops = {
        "brightness": adjust_brightness,
        "contrast": adjust_contrast,
        "saturation": adjust_saturation,
        "hue": adjust_hue,
    }
    enabled = [(k, name) for k, name in enumerate(_JITTER_OPS) if getattr(spec, name) > 0]
    if spec.jitter_prob > 0 and enabled:

        def slot(i, y):  # every enabled op, each example keeps the one its order names
            op = jax.lax.dynamic_index_in_dim(p["order"], i, axis=1, keepdims=False)
            new = y
            for k, name in enabled:
                new = _where(op == k, ops[name](y, p[name]), new)
            return new

        x = _where(p["jitter"], jax.lax.fori_loop(0, 4, slot, x), x)
    if spec.grayscale_prob > 0:
        x = _where(p["grayscale"], jnp.broadcast_to(rgb_to_grayscale(x), x.shape), x)
    k = blur_kernel_size(x.shape[1], spec.blur_kernel_fraction)
    if spec.blur_prob > 0 and k > 1:
        x = _where(p["blur"], gaussian_blur(x, p["sigma"], k), x)
    if spec.sharpness_prob > 0 and spec.sharpness_factor != 1.0:
        x = _where(p["sharpness"], adjust_sharpness(x, spec.sharpness_factor), x)
    if spec.solarize_prob > 0:
        x = _where(p["solarize"], solarize(x, spec.solarize_threshold), x)
    return x


@functools.partial(jax.jit, static_argnames=("spec", "normalise"))
def photometric_per_example(
    images: jax.Array, keys: jax.Array, spec: PhotometricSpec, normalise: bool = True
) -> jax.Array:
    """uint8 [B, H, W, 3] and one key per example [B] -> float32 [B, H, W, 3]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got {images.shape}")
    x = images.astype(jnp.float32) / 255.0
    params = jax.vmap(sample_params, in_axes=(0, None))(keys, spec)
    x = apply_params(x, params, spec)
    return normalize(x, spec.mean, spec.std) if normalise else x


@functools.partial(jax.jit, static_argnames=("spec",))
def photometric(images: jax.Array, rng: jax.Array, spec: PhotometricSpec) -> jax.Array:
    """uint8 [B, H, W, 3] -> normalised float32 [B, H, W, 3]; keys = split(rng, B)."""
    return photometric_per_example(images, jax.random.split(rng, images.shape[0]), spec)


@functools.partial(jax.jit, static_argnames=("spec",))
def photometric_unnormalised(images: jax.Array, rng: jax.Array, spec: PhotometricSpec):
    """As `photometric` but returns values in [0, 1] before normalisation."""
    keys = jax.random.split(rng, images.shape[0])
    return photometric_per_example(images, keys, spec, normalise=False)
