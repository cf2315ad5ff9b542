"""A procedural fine-grained dataset, rendered on the fly with numpy (no files).

The point is a demo where features must learn SMALL details: coarse classes differ in
the gross shape of one large object, fine classes inside a coarse class differ only in
small markings on it, the way bird species of one family differ.

Generative recipe (all lengths relative to the object radius r, image side S):

* Coarse class c -> the object's shape, from SHAPES in order: disc, square, triangle,
  cross, star, ellipse, diamond, hexagon (so num_coarse <= 8). Every shape contains the
  central "detail zone" (radius ~0.55 r) where the markings live.
* Fine class -> a detail code (mark shape, spot count, stripe) drawn without
  replacement from the 4 x 3 x 3 = 36 codes by a permutation seeded by (seed, c):
  - mark: none, or a disc (radius 0.2 r), ring (outer radius 0.2 r, width 0.1 r) or
    square (half-side 0.17 r) at (0, -0.3 r) in the object frame;
  - spots: 1, 2 or 3 near-black discs of radius 0.11 r in a row at v = +0.22 r,
    0.3 r apart;
  - stripe: none, or a light bar of half-width 0.05 r (|u| <= 0.42 r) at v = 0.03 r
    ("mid") or v = 0.45 r ("low").
  Every code is geometric and left-right symmetric, so a class survives the colour
  jitter and horizontal flips of self-supervised augmentation; the mark's colour is a
  nuisance (one of MARK_COLOURS, hues 90 degrees apart, drawn per image), like the
  body and background colours: an untrained network is distracted by colour, a
  network trained for colour invariance is not.
  The markings cover ~3-5 % of the image, so they are not the dominant pixel statistic.
* Nuisances, drawn per image from (seed, coarse, fine, image number): radius
  r ~ U(0.33, 0.42) S; centre S/2 + U(-0.08, 0.08) S on each axis; rotation
  U(-15, 15) degrees (markings rotate with the object; square and diamond stay
  distinct); body colour with random hue, saturation U(0.15, 0.4), value U(0.45, 0.8);
  background of random hue, saturation U(0, 0.5) and value either dark U(0.1, 0.3) or
  light U(0.85, 1), plus three random low-frequency plane waves (amplitude 0.05 each);
  overall brightness x U(0.75, 1.2); pixel noise N(0, 0.025); clip; round to uint8.
* Edges are anti-aliased (coverage = clip(0.5 - signed distance in pixels, 0, 1)).

Splits: the fine classes of every coarse class are ordered; 'train' holds the first
round(F (1 - holdout_fraction)) of them, 'test' the rest (disjoint classes, for zero-shot
retrieval as in the CUB retrieval benchmarks), 'all' every class. Fine labels index the
split's own class list; coarse labels are the shape index (shared across splits).
"""

from __future__ import annotations

import colorsys
import itertools

import numpy as np

SHAPES = ("disc", "square", "triangle", "cross", "star", "ellipse", "diamond", "hexagon")
MARK_COLOURS = {  # name -> RGB in [0, 1]
    name: colorsys.hsv_to_rgb(h, 0.9, 0.95)
    for name, h in (("red", 0.0), ("lime", 0.25), ("cyan", 0.5), ("violet", 0.75))
}
SPOT_COUNTS = (1, 2, 3)
STRIPES = {"none": None, "mid": 0.03, "low": 0.45}
MARK_SHAPES = ("none", "disc", "ring", "square")
DETAIL_CODES = tuple(itertools.product(MARK_SHAPES, SPOT_COUNTS, STRIPES))

_MARK_CENTRE, _MARK_RADIUS = (0.0, -0.3), 0.2
_SPOT_V, _SPOT_RADIUS, _SPOT_SPACING = 0.22, 0.11, 0.3
_STRIPE_HALF_WIDTH, _STRIPE_HALF_LENGTH = 0.05, 0.42
_SPOT_RGB = np.array([0.08, 0.07, 0.07])
_STRIPE_RGB = np.array([0.96, 0.95, 0.9])


def _halfplanes(u, v, angles_deg, offset):
    a = np.deg2rad(np.asarray(angles_deg, np.float64))[:, None, None]
    return np.max(np.cos(a) * u + np.sin(a) * v, axis=0) - offset


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (object-radius units) of `shape`; < 0 inside."""
    if shape == "disc":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85
    if shape == "triangle":  # apex up (-v), inradius 0.62
        return _halfplanes(u, v, (90, 210, 330), 0.62)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 0.5, av - 1.05), np.maximum(au - 1.05, av - 0.5))
    if shape == "star":  # 5 points, outer radius 1.15, inner 0.68, one point up
        rho = np.hypot(u, v)
        phi = np.arctan2(u, -v)  # 0 at the top point
        t = np.abs(np.mod(phi, 2 * np.pi / 5) / (np.pi / 5) - 1.0)  # 1 at tips, 0 between
        return (rho - (0.68 + (1.15 - 0.68) * t)) * 0.7
    if shape == "ellipse":
        return (np.hypot(u / 1.1, v / 0.72) - 1.0) * 0.72
    if shape == "diamond":
        return (np.abs(u) + np.abs(v)) / np.sqrt(2.0) - 0.75
    if shape == "hexagon":
        return _halfplanes(u, v, (0, 60, 120, 180, 240, 300), 0.9)
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(sdf: np.ndarray, radius_px: float) -> np.ndarray:
    return np.clip(0.5 - sdf * radius_px, 0.0, 1.0)


def _mark_sdf(mark: str, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Signed distance (object-radius units) to the mark, centred at (du, dv) = 0."""
    if mark == "none":
        return np.full_like(du, np.inf)
    if mark == "disc":
        return np.hypot(du, dv) - _MARK_RADIUS
    if mark == "ring":
        return np.abs(np.hypot(du, dv) - 0.75 * _MARK_RADIUS) - 0.25 * _MARK_RADIUS
    if mark == "square":
        return np.maximum(np.abs(du), np.abs(dv)) - 0.85 * _MARK_RADIUS
    raise ValueError(f"unknown mark {mark!r}; expected one of {MARK_SHAPES}")


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def render(
    shape: str,
    code: tuple[str, int, str],
    image_size: int,
    rng: np.random.Generator,
    nuisance: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One image: (uint8 [S, S, 3], detail coverage float [S, S] in [0, 1]).

    All randomness (the nuisances) comes from `rng`; `shape` and `code` fix the class.
    `nuisance` in [0, 1] shrinks the rotation, the body and background colours and the
    background waves towards fixed centres (1 = the full ranges of the recipe, 0 = a
    cyan-grey body on a dark background; position, scale and brightness still vary).
    """
    s = image_size
    r = rng.uniform(0.33, 0.42) * s
    cx, cy = s / 2 + rng.uniform(-0.08, 0.08, size=2) * s
    theta = np.deg2rad(rng.uniform(-15.0, 15.0) * nuisance)

    def shrink(value: float, centre: float) -> float:
        return centre + (value - centre) * nuisance

    body = _hsv(
        shrink(rng.uniform(), 0.5),
        shrink(rng.uniform(0.15, 0.4), 0.275),
        shrink(rng.uniform(0.45, 0.8), 0.625),
    )
    bg_value = rng.uniform(0.1, 0.3) if rng.uniform() < 0.5 else rng.uniform(0.85, 1.0)
    bg = _hsv(
        shrink(rng.uniform(), 0.0), shrink(rng.uniform(0.0, 0.5), 0.25), shrink(bg_value, 0.2)
    )
    wave_k = rng.uniform(1.0, 4.0, size=3) * 2 * np.pi / s
    wave_dir = rng.uniform(0, 2 * np.pi, size=3)
    wave_phase = rng.uniform(0, 2 * np.pi, size=3)
    wave_rgb = rng.uniform(-1.0, 1.0, size=(3, 3)) * 0.05 * nuisance
    brightness = rng.uniform(0.75, 1.2)
    mark_rgb = np.asarray(list(MARK_COLOURS.values())[rng.integers(len(MARK_COLOURS))])
    noise = rng.normal(0.0, 0.025, size=(s, s, 3))

    y, x = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    c, sn = np.cos(theta), np.sin(theta)
    u = (c * dx + sn * dy) / r
    v = (-sn * dx + c * dy) / r

    # Background: flat colour + three plane waves.
    proj = np.cos(wave_dir)[:, None, None] * x + np.sin(wave_dir)[:, None, None] * y
    waves = np.sin(wave_k[:, None, None] * proj + wave_phase[:, None, None])  # [3, S, S]
    img = bg + np.einsum("kyx,kc->yxc", waves, wave_rgb)

    a_body = _coverage(shape_sdf(shape, u, v), r)
    img += a_body[..., None] * (body - img)

    mark, n_spots, stripe = code
    a_mark = _coverage(_mark_sdf(mark, u - _MARK_CENTRE[0], v - _MARK_CENTRE[1]), r) * a_body
    spot_u = (np.arange(n_spots) - (n_spots - 1) / 2) * _SPOT_SPACING
    spot_sdf = np.min(np.hypot(u[None] - spot_u[:, None, None], v[None] - _SPOT_V), axis=0)
    a_spots = _coverage(spot_sdf - _SPOT_RADIUS, r) * a_body
    detail = np.maximum(a_mark, a_spots)
    img += a_mark[..., None] * (mark_rgb - img)
    img += a_spots[..., None] * (_SPOT_RGB - img)
    if STRIPES[stripe] is not None:
        stripe_sdf = np.maximum(
            np.abs(v - STRIPES[stripe]) - _STRIPE_HALF_WIDTH, np.abs(u) - _STRIPE_HALF_LENGTH
        )
        a_stripe = _coverage(stripe_sdf, r) * a_body
        img += a_stripe[..., None] * (_STRIPE_RGB - img)
        detail = np.maximum(detail, a_stripe)

    img = np.clip(img * brightness + noise, 0.0, 1.0)
    return np.round(img * 255.0).astype(np.uint8), detail


_CACHE_LIMIT = 256 * 2**20  # bytes of rendered images a source keeps in memory


class ProceduralFineGrained:
    """Procedural fine-grained dataset (see the module docstring for the recipe).

    Args:
      split: 'train' (first classes of every coarse class), 'test' (held-out classes)
        or 'all'.
      num_coarse: number of shapes (coarse classes), 1..8.
      fine_per_coarse: fine classes per coarse class, 2..36.
      images_per_class: images rendered per fine class.
      image_size: side S of the square images.
      holdout_fraction: fraction of every coarse class's fine classes held out for 'test'.
      seed: fixes the class codes and every image.
      nuisance: scale of the colour/rotation/texture nuisances (see `render`).
    Records: {'image': uint8 [S, S, 3], 'label', 'coarse_label', 'index'}.
    """

    def __init__(
        self,
        split: str,
        num_coarse: int = 4,
        fine_per_coarse: int = 6,
        images_per_class: int = 40,
        image_size: int = 32,
        holdout_fraction: float = 0.5,
        seed: int = 0,
        nuisance: float = 1.0,
    ):
        if not 0.0 <= nuisance <= 1.0:
            raise ValueError(f"nuisance must be in [0, 1], got {nuisance}")
        if not 1 <= num_coarse <= len(SHAPES):
            raise ValueError(f"num_coarse must be in [1, {len(SHAPES)}], got {num_coarse}")
        if not 1 <= fine_per_coarse <= len(DETAIL_CODES):
            raise ValueError(
                f"fine_per_coarse must be in [1, {len(DETAIL_CODES)}], got {fine_per_coarse}"
            )
        if images_per_class < 1 or image_size < 8:
            raise ValueError("need images_per_class >= 1 and image_size >= 8")
        n_train = int(round(fine_per_coarse * (1.0 - holdout_fraction)))
        if split == "train":
            fine_ids = range(0, n_train)
        elif split == "test":
            fine_ids = range(n_train, fine_per_coarse)
        elif split == "all":
            fine_ids = range(0, fine_per_coarse)
        else:
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if len(fine_ids) == 0:
            raise ValueError(
                f"split {split!r} has no classes with fine_per_coarse={fine_per_coarse}, "
                f"holdout_fraction={holdout_fraction}"
            )
        self.split = split
        self.num_coarse = num_coarse
        self.fine_per_coarse = fine_per_coarse
        self.images_per_class = images_per_class
        self.image_size = image_size
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.nuisance = nuisance

        # (coarse, fine-within-coarse, code) for every class of this split.
        self._classes = []
        for c in range(num_coarse):
            order = np.random.default_rng([seed, 104729, c]).permutation(len(DETAIL_CODES))
            for f in fine_ids:
                self._classes.append((c, f, DETAIL_CODES[order[f]]))
        self.class_names = [
            f"{SHAPES[c]}/{mark}mark-{n}spot-{stripe}stripe"
            for c, _, (mark, n, stripe) in self._classes
        ]
        self.coarse_level = "shape"
        self.coarse_names = list(SHAPES[:num_coarse])
        self.num_classes = len(self._classes)
        self.num_coarse_classes = num_coarse
        self.labels = np.repeat(np.arange(self.num_classes, dtype=np.int32), images_per_class)
        self.coarse_labels = np.repeat(
            np.array([c for c, _, _ in self._classes], np.int32), images_per_class
        )
        # Rendering costs ~1.5 ms an image, more than the crops and the train step of the
        # demo: each process keeps what it rendered (deterministic, so nothing changes).
        cache_bytes = len(self.labels) * image_size * image_size * 3
        self._cache: dict[int, np.ndarray] | None = {} if cache_bytes <= _CACHE_LIMIT else None

    def __len__(self) -> int:
        return self.num_classes * self.images_per_class

    def __repr__(self) -> str:
        return (
            f"ProceduralFineGrained(split={self.split!r}, num_coarse={self.num_coarse}, "
            f"fine_per_coarse={self.fine_per_coarse}, images_per_class={self.images_per_class}, "
            f"image_size={self.image_size}, holdout_fraction={self.holdout_fraction}, "
            f"seed={self.seed}, nuisance={self.nuisance})"
        )

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [S, S, 3], detail coverage [S, S]) of record i."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"ProceduralFineGrained: index {i} out of range for {n} records")
        i %= n
        label, k = divmod(i, self.images_per_class)
        c, f, code = self._classes[label]
        rng = np.random.default_rng([self.seed, 7919, c, f, k])
        return render(SHAPES[c], code, self.image_size, rng, self.nuisance)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if self._cache is not None and i % len(self) in self._cache:
            image = self._cache[i % len(self)]
        else:
            image, _ = self.render(i)
            if self._cache is not None:
                image.flags.writeable = False  # shared by every later read
                self._cache[i % len(self)] = image
        i %= len(self)
        return {
            "image": image,
            "label": int(self.labels[i]),
            "coarse_label": int(self.coarse_labels[i]),
            "index": i,
        }
