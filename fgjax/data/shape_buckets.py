"""Uncropped, aspect-keeping evaluation images batched by shape (CFGA's ImageNet and DGPCRL
test pipelines, ../shared/methods/cfga.md §4.5).

Each image is decoded to RGB and, if its shorter side exceeds `max_short`, resized with PIL
(bilinear by default) so that the shorter side is `max_short`; otherwise it is left as it
is. No crop. Sizes follow mikiyukio/CFGA `src/dataloader_test.py` (cap 256) and
`src/dataloader_DGPCRL_test.py` (cap 280): each side becomes `int(round(side * cap /
short))` (Python's round, half to even).

A jitted function compiles once per input shape, so the loader pads: every image's size
is read from its header up front, each side is rounded up to a multiple of `pad_to`
(`bucket_shape`; a side at most `max_short` to at most `max_short`, so the capped shorter
side, the common case, is never padded), and the images of one bucket shape share
batches, each image at the top left of a zero image with its real (height, width) in
'valid'. `fgjax.models.ResNet(valid=...)` masks the padding, so every descriptor is that
of the image alone (up to float rounding): one compile per bucket shape instead of one per
exact size (the 202 official CUB sample images: 100 exact sizes, 8 buckets of 64 at cap
256, 11 at cap 280). The last batch of a bucket is padded to `batch_size` (rows with
'mask' False, a black image, label/coarse_label/index -1). Buckets come in order of their
first image; rows go back to source order through 'index'. A persistent jax compilation
cache keeps the compiles across runs. Single process: every batch is this process's.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain.python as grain
import numpy as np

from fgjax.data.decode import (
    ImageDecodeError,
    _decode,
    open_record,
    record_region,
    resample_filter,
)
from fgjax.data.eval_loader import EvalLoader, padded_fields
from fgjax.data.grain_utils import (
    ExitWithParent,
    IndexSampler,
    prepare_workers,
    stable_repr,
)

# Padded sides are multiples of 64 (module doc): 8 batch shapes on the CUB sample at cap 256
# (7 % more pixels), 23 on 196 Stanford Cars images (12 %); 32 gives 14 and 56.
PAD_TO = 64


def capped_size(width: float, height: float, max_short: int) -> tuple[int, int]:
    """`(width, height)` after the cap: unchanged (rounded) when the shorter side is at
    most `max_short`, else both sides scaled by `max_short / short`, each rounded."""
    short = min(width, height)
    if short <= max_short:
        return int(round(width)), int(round(height))
    scale = max_short / short
    return int(round(width * scale)), int(round(height * scale))


def resize_capped(record: dict, *, max_short: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 `[H, W, 3]`: the record's image (its `record_region`: a 'box' or
    'trim_bottom' cuts it first) with the shorter side capped at `max_short` (module doc).

    JPEGs are decoded in full, never drafted: the reference resizes the full image, and
    DCT scaling would change the pixels."""
    resample = resample_filter(interpolation)
    img, path = open_record(record)
    with img:
        x0, y0, width, height = record_region(record, *img.size)
        size = capped_size(width, height, max_short)
        short = min(width, height)
        img, sx, sy = _decode(img, path, [(short, short)])  # (side, side): no draft
        box = (x0 * sx, y0 * sy, (x0 + width) * sx, (y0 + height) * sy)
        # PIL returns a plain copy when the size and box are the whole image.
        return np.asarray(img.resize(size, resample, box=box))


def bucket_shape(shape: tuple[int, int], pad_to: int, max_short: int) -> tuple[int, int]:
    """The padded `(H, W)` of an image of `shape`: each side rounded up to a multiple of
    `pad_to`, a side of at most `max_short` to at most `max_short`."""
    up = [-(-n // pad_to) * pad_to for n in shape]
    h, w = (u if n > max_short else min(u, max_short) for n, u in zip(shape, up, strict=True))
    return h, w


def planned_shape(record: dict, max_short: int) -> tuple[int, int]:
    """`(H, W)` that `resize_capped` will give, from the image header only."""
    if "image" in record:
        height, width = np.asarray(record["image"]).shape[:2]
    else:
        img, _ = open_record(record)
        with img:
            width, height = img.size
    _, _, w, h = record_region(record, width, height)
    w, h = capped_size(w, h, max_short)
    return h, w


class _ShapeBatches:
    """Random-access 'source' of batches: batch t is `plan[t]` = (padded shape, source
    indices), with each image's planned size from `sizes`."""

    def __init__(
        self,
        source,
        plan: list[tuple[tuple[int, int], list[int]]],
        sizes: list[tuple[int, int]],
        batch_size: int,
    ):
        self._source, self._plan, self._sizes = source, plan, sizes
        self._batch_size = batch_size

    def __len__(self) -> int:
        return len(self._plan)

    def __getitem__(self, t: int) -> dict:
        shape, ids = self._plan[int(t)]
        return {
            "records": [self._source[i] for i in ids],
            "sizes": [self._sizes[i] for i in ids],
            "shape": shape,
            "batch_size": self._batch_size,
        }

    def __repr__(self) -> str:
        return (
            f"_ShapeBatches(source={stable_repr(self._source)}, batch_size={self._batch_size}, "
            f"batches={len(self._plan)})"
        )


class _CappedTransform(grain.MapTransform):
    def __init__(self, *, max_short: int, interpolation: str, skip_bad: bool):
        self._max_short, self._interpolation, self._skip_bad = max_short, interpolation, skip_bad

    def map(self, element: dict) -> dict:
        records, b, (h, w) = element["records"], element["batch_size"], element["shape"]
        images = np.zeros((b, h, w, 3), np.uint8)
        valid = np.full((b, 2), (h, w), np.int32)  # padding rows: the whole (black) image
        bad = []
        for i, (record, size) in enumerate(zip(records, element["sizes"], strict=True)):
            valid[i] = size
            try:
                image = resize_capped(
                    record, max_short=self._max_short, interpolation=self._interpolation
                )
            except ImageDecodeError as e:
                if not self._skip_bad:
                    raise
                bad.append(str(e))  # the row keeps its label and index, with a black image
                continue
            if image.shape[:2] != tuple(size):  # the header disagreed with the pixels
                raise ImageDecodeError(
                    f"image {record.get('path', record.get('index'))!r}: planned "
                    f"{size[0]}x{size[1]} from its header, decoded to "
                    f"{image.shape[0]}x{image.shape[1]}"
                )
            images[i, : size[0], : size[1]] = image
        return {"images": images, **padded_fields(records, b), "valid": valid, "bad_images": bad}


class ShapeBucketLoader(EvalLoader):
    """Re-iterable loader of shape-bucketed batches (`make_shape_bucket_loader`).

    `shapes`: `{(H, W) padded: number of images}` in batch order (one compile each);
    `num_sizes`: the number of distinct real sizes; `len()` = number of batches."""

    def __init__(
        self,
        loader: grain.DataLoader,
        shapes: dict[tuple[int, int], int],
        num_sizes: int,
        batches: int,
        n: int,
    ):
        super().__init__(loader, batches, n)
        self.shapes = shapes
        self.num_sizes = num_sizes


def plan_batches(
    shapes: Sequence[tuple[int, int]], batch_size: int
) -> list[tuple[tuple[int, int], list[int]]]:
    """`[(shape, indices)]`: the indices of each shape (groups in order of first
    appearance, indices ascending) cut into runs of at most `batch_size`."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return [
        (shape, ids[k : k + batch_size])
        for shape, ids in groups.items()
        for k in range(0, len(ids), batch_size)
    ]


def make_shape_bucket_loader(
    source,
    *,
    batch_size: int,
    max_short: int,
    pad_to: int = PAD_TO,
    interpolation: str = "bilinear",
    num_workers: int = 0,
    skip_bad: bool = False,
) -> ShapeBucketLoader:
    """Deterministic loader of `source` through `resize_capped(max_short)`, padded into
    `bucket_shape(pad_to)` batches (module doc; `pad_to=1`: one batch shape per exact
    size). Batches: 'images' uint8 [batch_size, H, W, 3] (each image at the top left, zeros
    beyond), 'valid' int32 [batch_size, 2] (each image's real height, width), 'label',
    'coarse_label', 'index' int32 [batch_size], 'mask' bool [batch_size], 'bad_images'
    (list of str). An unreadable image raises ImageDecodeError naming the file; with
    `skip_bad` it becomes a black max_short x max_short image listed in 'bad_images'."""
    for name, value in (("batch_size", batch_size), ("max_short", max_short), ("pad_to", pad_to)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    resample_filter(interpolation)
    shapes = []
    for i in range(len(source)):
        try:
            shapes.append(planned_shape(source[i], max_short))
        except ImageDecodeError:
            if not skip_bad:
                raise
            shapes.append((max_short, max_short))  # decoding fails again: a black image
    plan = plan_batches([bucket_shape(s, pad_to, max_short) for s in shapes], batch_size)
    counts: dict[tuple[int, int], int] = {}
    for shape, ids in plan:
        counts[shape] = counts.get(shape, 0) + len(ids)
    prepare_workers(num_workers)
    loader = grain.DataLoader(
        data_source=_ShapeBatches(source, plan, shapes, batch_size),
        sampler=IndexSampler(len(plan)),
        operations=[
            ExitWithParent(),  # workers end with their parent
            _CappedTransform(max_short=max_short, interpolation=interpolation, skip_bad=skip_bad),
        ],
        worker_count=num_workers,
        shard_options=grain.NoSharding(),
    )
    return ShapeBucketLoader(loader, counts, len(set(shapes)), len(plan), len(source))
