"""Image decoding and crop geometry (RandomResizedCrop + flip for training,
Resize + CenterCrop for evaluation), on records of a source.

JPEG files are decoded in draft mode (DCT scaling by 1/2, 1/4, 1/8) whenever the
reduced image still gives every crop at least the output resolution; crop boxes are
computed in original coordinates and mapped to the drafted image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
_DRAFT_FACTORS = (8, 4, 2)


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


def _open(record: dict) -> tuple[Image.Image, str | None]:
    """A PIL image for the record, not yet decoded for 'path' records."""
    if "image" in record:
        arr = np.asarray(record["image"])
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(
                f"record {record.get('index')}: 'image' must be uint8 [H, W, 3], "
                f"got {arr.dtype} {arr.shape}"
            )
        return Image.fromarray(arr), None
    path = record["path"]
    try:
        return Image.open(path), path
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise ImageDecodeError(f"cannot open image {path!r}: {type(e).__name__}: {e}") from e


def _decode(img: Image.Image, path: str | None, min_crop_side: float, out_side: int):
    """Decodes (with JPEG draft when `min_crop_side` allows) to RGB; returns (image, sx, sy)."""
    width, height = img.size
    try:
        if path is not None and img.format == "JPEG":
            for f in _DRAFT_FACTORS:
                if min_crop_side / f >= out_side:
                    img.draft("RGB", (math.ceil(width / f), math.ceil(height / f)))
                    break
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"cannot decode image {path!r}: {type(e).__name__}: {e}") from e
    return img, img.size[0] / width, img.size[1] / height


def random_crop_views(
    record: dict,
    rng: np.random.Generator,
    *,
    image_size: int,
    num_views: int,
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    interpolation: str = "bilinear",
) -> np.ndarray:
    """`num_views` RandomResizedCrop + horizontal-flip(p=0.5) views: uint8 [V, S, S, 3].

    Per view, in order: crop box from `sample_crop`, then one uniform draw for the flip.
    """
    img, path = _open(record)
    with img:
        width, height = img.size
        boxes, flips = [], []
        for _ in range(num_views):
            boxes.append(sample_crop(rng, height, width, crop_scale, crop_ratio))
            flips.append(bool(rng.uniform() < 0.5))
        img, sx, sy = _decode(img, path, min(min(b[2], b[3]) for b in boxes), image_size)
        out = np.empty((num_views, image_size, image_size, 3), np.uint8)
        resample = resample_filter(interpolation)
        for v, ((top, left, h, w), flip) in enumerate(zip(boxes, flips, strict=True)):
            # Crop first (as torchvision's resized_crop: the filter sees no pixel outside
            # the box); on a drafted image crop the enclosing pixels, resize the sub-box.
            x0, y0, x1, y1 = left * sx, top * sy, (left + w) * sx, (top + h) * sy
            c0, r0 = math.floor(x0), math.floor(y0)
            c1, r1 = min(math.ceil(x1), img.size[0]), min(math.ceil(y1), img.size[1])
            view = img.crop((c0, r0, c1, r1)).resize(
                (image_size, image_size), resample, box=(x0 - c0, y0 - r0, x1 - c0, y1 - r0)
            )
            if flip:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[v] = np.asarray(view)
    return out


def resize_center_crop(
    record: dict, *, image_size: int, resize_ratio: float = 0.875, interpolation="bilinear"
) -> np.ndarray:
    """Resize(short side = round(image_size / resize_ratio)) + CenterCrop: uint8 [S, S, 3].

    Same geometry as torchvision's Resize(int) + CenterCrop on PIL images (long side
    int(short * long / short_in), crop offsets int(round((side - S) / 2))), computed as
    one resize of the crop box (mapped to original coordinates).
    """
    if not 0 < resize_ratio <= 1:
        raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
    img, path = _open(record)
    with img:
        width, height = img.size
        short = int(round(image_size / resize_ratio))
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        top = int(round((new_h - image_size) / 2.0))
        left = int(round((new_w - image_size) / 2.0))
        img, sx, sy = _decode(img, path, min(width, height) * image_size / short, image_size)
        fx, fy = width / new_w * sx, height / new_h * sy  # resized px -> decoded px
        box = (left * fx, top * fy, (left + image_size) * fx, (top + image_size) * fy)
        resample = resample_filter(interpolation)
        return np.asarray(img.resize((image_size, image_size), resample, box=box))
