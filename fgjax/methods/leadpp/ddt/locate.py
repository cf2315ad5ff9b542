"""DDT's locate and crop (spec leadpp.md 4.2), given a projection map P = (F - mu) . v.

`ddt_mask` (JAX, one map; `jax.vmap` it): the threshold and the largest 4-connected
component. The rest is integer box arithmetic on the host (numpy), in the code's order:

    mask [h, w] --nearest x (S / h)--> [S, S]      S = the locate size (448)
    bounding rectangle (x, y, w, h), centroid (cx, cy) of the mask pixels     (`mask_box`)
    per cut rate r: the r w x r h box around the centroid, pushed inside       (`cut_box`)
      -> original pixels as xyxy                                             (`to_original`)
      -> the format heuristic that misreads xyxy as xywh (the code's bug)     (`as_xyxy`)
      -> valid if 1% <= area <= 80%, score -area - 0.02 x border sides        (`box_score`)
    the best valid box, else cut rate 1.05 unscored                          (`search_box`)
    the dataset's crop policy: a square, or an anisotropic padding           (`crop_policy`)

Boxes are `(x1, y1, x2, y2)` Python ints, x2/y2 exclusive (PIL's crop box).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.core.masks import largest_component

CUT_RATES = (1.25, 1.15, 1.05, 0.95, 0.85)
FALLBACK_CUT_RATE = 1.05
AREA_RANGE = (0.01, 0.80)
BORDER_PENALTY = 0.02
MASK_RULES = ("leadpp", "ddt")
# Crop policies (4.2 `apply_taskwise_crop_policy`): None is the square by the box's longer
# side; a pair (pad_w, pad_h) is the anisotropic expansion to (1 + pad_w) w x (1 + pad_h) h.
POLICIES: dict[str, tuple[float, float] | None] = {
    "square": None,  # bird and every other task name
    "car": (0.10, 0.30),
    "aircraft": (2.0, 3.0),  # HEAD: nearly the whole image
    "aircraft_jan2026": (0.30, 0.90),  # the previous value (spec 10, alternative)
    "box": (0.0, 0.0),  # no policy: the searched box itself (not in the code)
}
# config.data.kind -> policy; any other kind is 'square' (the code's default task).
KIND_POLICIES = {"cars": "car", "aircraft": "aircraft"}

Box = tuple[int, int, int, int]


def ddt_mask(p: jax.Array, rule: str = "leadpp", over_num: float = 0.0) -> jax.Array:
    """float [h, w] projection map -> bool [h, w] object mask.

    rule 'leadpp' (the code): with lo, hi the min and max of the cells P >= 0, the cells
    where (P - lo) / (hi - lo) > over_num (none when hi == lo); every cell when no P >= 0.
    rule 'ddt' (the original DDT): P > 0. Then the largest 4-connected component
    (`fgjax.core.masks.largest_component`: ties keep the first in raster order, as
    skimage's regionprops order); every cell when the threshold keeps none.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"DDT mask rule {rule!r}: expected one of {MASK_RULES}")
    p = p.astype(jnp.float32)
    if rule == "ddt":
        highlight = p > 0
    else:
        nonneg = p >= 0
        lo = jnp.min(jnp.where(nonneg, p, jnp.inf))
        hi = jnp.max(jnp.where(nonneg, p, -jnp.inf))
        spread = jnp.where(hi > lo, hi - lo, 1.0)
        above = jnp.where(hi > lo, (p - lo) / spread > over_num, jnp.zeros_like(nonneg))
        highlight = jnp.where(jnp.any(nonneg), above, jnp.ones_like(nonneg))
    component = largest_component(highlight)
    return jnp.where(jnp.any(component), component, jnp.ones_like(component))


def upsample_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """bool [h, w] -> [size, size] as cv2.resize(INTER_NEAREST): pixel i takes cell
    min(floor(i h / size), h - 1) (exact blocks of size / h pixels when h divides size)."""
    h, w = mask.shape
    rows = np.minimum(np.floor(np.arange(size) * (h / size)).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(size) * (w / size)).astype(int), w - 1)
    return np.asarray(mask, bool)[rows][:, cols]


def mask_box(big: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[float, float]]:
    """`((x, y, w, h), (cx, cy))` of a bool [S, S] mask: its bounding rectangle
    (cv2.boundingRect of its one external contour) and the mean column and row of its
    pixels; the whole square and its centre when empty."""
    size = big.shape[0]
    ys, xs = np.nonzero(big)
    if len(xs) == 0:
        return (0, 0, size, size), (size / 2, size / 2)
    x, y = int(xs.min()), int(ys.min())
    rect = (x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1)
    return rect, (float(xs.mean()), float(ys.mean()))


def _cut_start(c: float, extent: float, size: int) -> int:
    if c < extent / 2 + 1:
        return 0
    if c > size - extent / 2 - 1:
        return int(size - extent)
    return int(c - extent / 2)


def cut_box(
    centre: tuple[float, float], wh: tuple[int, int], cut_rate: float, size: int
) -> tuple[int, int, int, int]:
    """The code's `random_cut(if_train=False)` in the S x S square: `[x0, y0, int(cw),
    int(ch)]`, cw = min(cut_rate w, S) around the centroid, moved to 0 (or S - cw) when
    within cw / 2 + 1 of an edge."""
    cw, ch = min(cut_rate * wh[0], size), min(cut_rate * wh[1], size)
    return _cut_start(centre[0], cw, size), _cut_start(centre[1], ch, size), int(cw), int(ch)


def to_original(box: Sequence[int], width: int, height: int, size: int) -> Box:
    """An S-square `[x, y, w, h]` -> xyxy in a width x height image: each edge scaled and
    rounded (half to even, Python's round), x1 in [0, W - 1], x2 in [0, W]."""
    x, y, w, h = box
    sx, sy = width / float(size), height / float(size)
    x1, y1 = round(x * sx), round(y * sy)
    x2, y2 = round((x + w) * sx), round((y + h) * sy)
    return (
        max(0, min(width - 1, x1)),
        max(0, min(height - 1, y1)),
        max(0, min(width, x2)),
        max(0, min(height, y2)),
    )


def clamp_xyxy(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box:
    """int() of each edge, x1 in [0, W - 1], x2 in [x1 + 1, W] (likewise y)."""
    x1 = max(0, min(int(x1), width - 1))
    y1 = max(0, min(int(y1), height - 1))
    return x1, y1, max(x1 + 1, min(int(x2), width)), max(y1 + 1, min(int(y2), height))


def as_xyxy(b: Box, width: int, height: int, fix: bool = False) -> Box:
    """The code's box "format detector" on co_locate's xyxy box: when its last two values
    could be a width and height (x2 > 0, y2 > 0, x1 + x2 <= W + 1, y1 + y2 <= H + 1,
    x2 <= W, y2 <= H) it reads them as such, so the box becomes (x1, y1, x1 + x2, y1 + y2)
    (spec 9.9: every box centred up-left of the image centre grows). `fix`: read xyxy."""
    a0, a1, a2, a3 = (float(v) for v in b)
    looks_wh = a2 > 0 and a3 > 0 and a0 + a2 <= width + 1 and a1 + a3 <= height + 1
    if not fix and looks_wh and a2 <= width and a3 <= height:
        return clamp_xyxy(a0, a1, a0 + a2, a1 + a3, width, height)
    return clamp_xyxy(a0, a1, a2, a3, width, height)


def box_score(b: Box, width: int, height: int) -> float | None:
    """-area share - 0.02 x (sides within 1 px of the border), or None when the area share
    is outside [0.01, 0.80]."""
    x1, y1, x2, y2 = b
    share = (x2 - x1) * (y2 - y1) / max(width * height, 1e-6)
    if share < AREA_RANGE[0] or share > AREA_RANGE[1]:
        return None
    touches = (x1 <= 1) + (y1 <= 1) + (x2 >= width - 1) + (y2 >= height - 1)
    return -share - BORDER_PENALTY * touches


class Located(NamedTuple):
    """What the box search found for one image (width x height)."""

    box: Box  # the chosen box, xyxy
    cut_rate: float  # its cut rate
    scored: bool  # False: no candidate was valid, the fallback rate's box was taken


def search_box(
    mask: np.ndarray,
    width: int,
    height: int,
    size: int,
    cut_rates: Sequence[float] = CUT_RATES,
    fix_xyxy: bool = False,
) -> Located:
    """The code's `robust_co_locate_bbox` on one image's mask (bool [h, w]): each cut rate's
    box (`cut_box` -> `to_original` -> `as_xyxy`) is scored (`box_score`); the highest wins,
    the earlier rate on a tie; with no valid box, the 1.05 box unscored."""
    rect, centre = mask_box(upsample_nearest(mask, size))

    def candidate(rate: float) -> Box:
        cut = cut_box(centre, rect[2:], rate, size)
        return as_xyxy(to_original(cut, width, height, size), width, height, fix_xyxy)

    best: tuple[float, Box, float] | None = None
    for rate in cut_rates:
        b = candidate(rate)
        score = box_score(b, width, height)
        if score is not None and (best is None or score > best[0]):
            best = (score, b, rate)
    if best is None:
        return Located(candidate(FALLBACK_CUT_RATE), FALLBACK_CUT_RATE, False)
    return Located(best[1], best[2], True)


def _centred(centre: float, extent: int, limit: int) -> int:
    """floor(centre - extent / 2), moved inside [0, limit - extent]."""
    return max(0, min(int(math.floor(centre - extent / 2)), limit - extent))


def crop_policy(policy: str, b: Box, width: int, height: int) -> Box:
    """The crop taken around the chosen box `b` (see `POLICIES`): 'square': side =
    ceil(max(w, h)) capped at min(W, H), centred on the box, shifted inside; a padding
    (pad_w, pad_h): ceil(w (1 + pad_w)) x ceil(h (1 + pad_h)), each in [2, W or H], centred,
    shifted inside. Box sides count at least 1 pixel."""
    if policy not in POLICIES:
        raise ValueError(f"DDT crop policy {policy!r}: expected one of {sorted(POLICIES)}")
    x1, y1, x2, y2 = b
    bw, bh = max(1, x2 - x1), max(1, y2 - y1)
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    pad = POLICIES[policy]
    if pad is None:
        new_w = new_h = min(int(math.ceil(max(bw, bh))), width, height)
    else:
        new_w = min(max(int(math.ceil(bw * (1.0 + pad[0]))), 2), width)
        new_h = min(max(int(math.ceil(bh * (1.0 + pad[1]))), 2), height)
    left, top = _centred(cx, new_w, width), _centred(cy, new_h, height)
    return clamp_xyxy(left, top, left + new_w, top + new_h, width, height)
