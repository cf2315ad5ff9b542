"""Image decoding and crop geometry on a source's records: RandomResizedCrop (or, HERBS,
squash + RandomCrop) + flip views for training (`random_crop_views`, one per ViewSpec; a
view may read the same relative path under a parallel root) and Resize (short side, or a
squash to a square) + CenterCrop for evaluation (`resize_center_crop`).

JPEG files are decoded in draft mode (DCT scaling by 1/2, 1/4, 1/8) whenever the
reduced image still gives every crop taken from it at least its output resolution; crop
boxes are computed in original coordinates and mapped to the drafted image.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from fgjax.data.views import ViewSpec

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
_DRAFT_FACTORS = (8, 4, 2)
EVAL_RESIZES = ("short_side", "squash")


class ImageDecodeError(OSError):
    """An image file could not be read or decoded; the message names the path."""


def resample_filter(interpolation: str) -> Image.Resampling:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(
            f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}"
        ) from None


def sample_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """RandomResizedCrop box (top, left, h, w) in pixels of a height x width image.

    Area fraction ~ U(scale), aspect ratio w/h log-uniform in `ratio`; up to 10 tries
    to fit in the image, then the largest centred box with the aspect clamped to `ratio`.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def open_record(record: dict) -> tuple[Image.Image, str | None]:
    """A PIL image for the record, not yet decoded for 'path' records."""
    if "image" in record:
        arr = np.asarray(record["image"])
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(
                f"record {record.get('index')}: 'image' must be uint8 [H, W, 3], "
                f"got {arr.dtype} {arr.shape}"
            )
        return Image.fromarray(arr), None
    return _open_path(record["path"]), record["path"]


def _open_path(path: str) -> Image.Image:
    try:
        return Image.open(path)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise ImageDecodeError(f"cannot open image {path!r}: {type(e).__name__}: {e}") from e


def record_region(record: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of a width x height image the record's crops come from: (left, top, w, h).

    'box' (left, top, width, height; clipped to the image) restricts it to an object;
    'trim_bottom' cuts rows off the bottom (FGVC-Aircraft's copyright banner); otherwise
    the whole image.
    """
    left, top, w, h = 0.0, 0.0, float(width), float(height)
    if "box" in record:
        x0, y0, bw, bh = record["box"]
        left, top = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        w, h = min(x0 + bw, width) - left, min(y0 + bh, height) - top
    h = min(h, height - record.get("trim_bottom", 0) - top)
    if w < 1 or h < 1:
        raise ImageDecodeError(
            f"image {record.get('path', record.get('index'))!r} ({width}x{height}): its region "
            f"box={record.get('box')} trim_bottom={record.get('trim_bottom', 0)} is empty"
        )
    return left, top, w, h


def parallel_path(record: dict, root: str, source_root: str | None, owner: str) -> str:
    """The file of `record` under the parallel `root`: root / (record path relative to
    source_root). `owner` names the setting in errors (e.g. "view 'view3' root")."""
    if "path" not in record:
        raise ValueError(
            f"{owner}={root!r} needs records with a 'path', but record "
            f"{record.get('index')} holds an in-memory image"
        )
    if not source_root:
        raise ValueError(
            f"{owner}={root!r} needs a source with a `root` (the folder its relative paths "
            "hang from)"
        )
    rel = os.path.relpath(record["path"], source_root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(
            f"{owner}: image {record['path']!r} is not under the source root "
            f"{source_root!r}, so it has no counterpart under {root!r}"
        )
    return os.path.join(root, rel)


def view_owner(view: ViewSpec) -> str:
    """How errors about `view.root` name it."""
    return f"view {view.name!r} root"


def _decode(img: Image.Image, path: str | None, crops: Sequence[tuple[float, int]]):
    """Decodes to RGB; returns (image, sx, sy), sx/sy = decoded px per original px.

    `crops` lists (shortest crop side in original px, output side) of every crop that will
    be taken: a JPEG is drafted at the largest factor f in (8, 4, 2) that leaves every crop
    at least its output side (side / f >= output side), else decoded in full.
    """
    width, height = img.size
    try:
        if path is not None and img.format == "JPEG":
            for f in _DRAFT_FACTORS:
                if all(side / f >= out for side, out in crops):
                    # PIL drafts by the largest power of two <= min(width // w, height // h):
                    # floor sizes (ceil sizes of odd sides gave smaller factors, or none).
                    img.draft("RGB", (width // f, height // f))
                    break
        img.load()
        img = to_rgb(img)
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"cannot decode image {path!r}: {type(e).__name__}: {e}") from e
    return img, img.size[0] / width, img.size[1] / height


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded PIL image as 8-bit RGB.

    Greyscale, palette, CMYK and YCbCr convert as PIL does (alpha is dropped, as
    torchvision's loader does); 16/32-bit integer and float greyscale (some PNG and
    TIFF files) are scaled by their maximum, where PIL's own conversion would clip
    them to white.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.clip(np.asarray(img, np.float64), 0, None)
        top = arr.max()
        grey = np.zeros(arr.shape, np.uint8) if top <= 0 else np.round(arr / top * 255)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def _crop_enclosing(img, x0, y0, x1, y1) -> tuple[Image.Image, tuple[float, ...]]:
    """The pixels of `img` enclosing the float box (x0, y0, x1, y1), and the box in them."""
    c0, r0 = math.floor(x0), math.floor(y0)
    c1, r1 = min(math.ceil(x1), img.size[0]), min(math.ceil(y1), img.size[1])
    return img.crop((c0, r0, c1, r1)), (x0 - c0, y0 - r0, x1 - c0, y1 - r0)


def _crop_resize(img, sx, sy, box, size, resample, flip) -> np.ndarray:
    """Resizes the original-coordinates `box` (top, left, h, w) of the decoded `img`.

    Crops first (as torchvision's resized_crop: the filter sees no pixel outside the box);
    on a drafted image crops the enclosing pixels and resizes the sub-box.
    """
    top, left, h, w = box
    img, sub = _crop_enclosing(img, left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    view = img.resize((size, size), resample, box=sub)
    if flip:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(view)


def _squash_crop(img, sx, sy, region, squash_size, top, left, size, resample, flip):
    """uint8 [size, size, 3]: rows top.., columns left.. of the squash_size x squash_size
    resize of the original-coordinates `region` (left, top, w, h) of the decoded `img`
    (torchvision's Resize((squash_size, squash_size)) then a crop; the filter sees the
    region's enclosing pixels only), mirrored if `flip`.

    The whole square is resized, then sliced: a resize of the crop's box alone differs by
    a level here and there (the box's float coordinates).
    """
    rl, rt, rw, rh = region
    img, box = _crop_enclosing(img, rl * sx, rt * sy, (rl + rw) * sx, (rt + rh) * sy)
    square = img.resize((squash_size, squash_size), resample, box=box)
    crop = np.asarray(square)[top : top + size, left : left + size]
    return np.ascontiguousarray(crop[:, ::-1] if flip else crop)


def random_crop_views(
    record: dict,
    rng: np.random.Generator,
    views: Sequence[ViewSpec],
    *,
    source_root: str | None = None,
) -> dict[str, np.ndarray]:
    """A random crop + horizontal flip (p=0.5) per view: {name: uint8 [size, size, 3]}.

    Per view, in order: the crop (view.crop 'random_resized': the box from `sample_crop`;
    'squash_random_crop': the top then left offset in the squash_size square, each
    uniform in 0..squash_size - size as torchvision's RandomCrop), on the record's
    `record_region` of its file (the whole file under a parallel root), then one uniform
    draw for the flip. A view with `root` reads `parallel_path` of the record; the views
    of one root share one decode of its file.
    """
    with contextlib.ExitStack() as stack:
        opened: dict[str, tuple[Image.Image, str | None]] = {}
        draws = []
        for view in views:
            if view.root not in opened:
                if view.root:
                    path = parallel_path(record, view.root, source_root, view_owner(view))
                    opened[view.root] = _open_path(path), path
                else:
                    opened[view.root] = open_record(record)
                stack.enter_context(opened[view.root][0])
            img = opened[view.root][0]
            # A parallel root holds other pixels (e.g. DDT crops): the record's box is not theirs.
            left, top, width, height = (
                (0, 0, *img.size) if view.root else record_region(record, *img.size)
            )
            if view.crop == "squash_random_crop":
                margin = view.squash_size - view.size + 1
                i, j = int(rng.integers(0, margin)), int(rng.integers(0, margin))
                crop = functools.partial(
                    _squash_crop,
                    region=(left, top, width, height),
                    squash_size=view.squash_size,
                    top=i,
                    left=j,
                )
                side = min(width, height) * view.size / view.squash_size  # in original px
            else:
                box = sample_crop(rng, int(height), int(width), view.crop_scale, view.crop_ratio)
                box = (box[0] + top, box[1] + left, box[2], box[3])
                crop = functools.partial(_crop_resize, box=box)
                side = min(box[2], box[3])
            draws.append((view, side, crop, bool(rng.uniform() < 0.5)))
        out = {}
        for root, (img, path) in opened.items():
            mine = [d for d in draws if d[0].root == root]
            img, sx, sy = _decode(img, path, [(side, v.size) for v, side, _, _ in mine])
            for view, _, crop, flip in mine:
                out[view.name] = crop(
                    img,
                    sx,
                    sy,
                    size=view.size,
                    resample=resample_filter(view.interpolation),
                    flip=flip,
                )
    return {view.name: out[view.name] for view in views}


def check_eval_resize(resize: str, squash_size: int, image_size: int) -> None:
    """Validates an evaluation resize (config.data.eval_resize, eval_squash_size)."""
    if resize not in EVAL_RESIZES:
        raise ValueError(
            f"eval resize (config.data.eval_resize) must be one of {list(EVAL_RESIZES)}, "
            f"got {resize!r}"
        )
    if isinstance(squash_size, bool) or not isinstance(squash_size, numbers.Integral):
        raise ValueError(
            f"eval squash size (config.data.eval_squash_size) must be an integer, "
            f"got {squash_size!r}"
        )
    if resize == "squash" and squash_size < image_size:
        raise ValueError(
            f"eval resize 'squash' needs a squash size (config.data.eval_squash_size) >= "
            f"the crop (config.data.image_size={image_size}), got {squash_size}"
        )
    if resize != "squash" and squash_size != 0:
        raise ValueError(
            f"config.data.eval_squash_size={squash_size} is only read with "
            f"config.data.eval_resize='squash' (it is {resize!r}); leave it 0"
        )


def resize_center_crop(
    record: dict,
    *,
    image_size: int,
    resize_ratio: float = 0.875,
    interpolation="bilinear",
    resize: str = "short_side",
    squash_size: int = 0,
) -> np.ndarray:
    """Resize + CenterCrop(image_size = S): uint8 [S, S, 3].

    `resize` 'short_side': Resize(short side = round(S / resize_ratio)), the long side
    int(short * long / short_in) (torchvision's Resize(int)), computed as one resize of
    the crop box (mapped to original coordinates); 'squash': Resize((squash_size,
    squash_size)) ignoring the aspect (HERBS' test transform). Crop offsets
    int(round((side - S) / 2)), as torchvision's CenterCrop on PIL images. A record with
    a region (`record_region`: 'box', 'trim_bottom') is treated as the image cut to that
    region.
    """
    if not 0 < resize_ratio <= 1:
        raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
    check_eval_resize(resize, squash_size, image_size)
    resample = resample_filter(interpolation)
    img, path = open_record(record)
    with img:
        x0, y0, width, height = record_region(record, *img.size)
        if resize == "squash":
            side = min(width, height) * image_size / squash_size  # the crop's, original px
            img, sx, sy = _decode(img, path, [(side, image_size)])
            off = int(round((squash_size - image_size) / 2.0))
            region = (x0, y0, width, height)
            return _squash_crop(
                img, sx, sy, region, squash_size, off, off, image_size, resample, False
            )
        short = int(round(image_size / resize_ratio))
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        top = int(round((new_h - image_size) / 2.0))
        left = int(round((new_w - image_size) / 2.0))
        img, sx, sy = _decode(img, path, [(min(width, height) * image_size / short, image_size)])
        fx, fy = width / new_w * sx, height / new_h * sy  # resized px -> decoded px
        box = (
            x0 * sx + left * fx,
            y0 * sy + top * fy,
            x0 * sx + (left + image_size) * fx,
            y0 * sy + (top + image_size) * fy,
        )
        return np.asarray(img.resize((image_size, image_size), resample, box=box))
