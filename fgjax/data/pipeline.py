"""grain loaders: decode + crop + flip on CPU workers, batches of uint8 numpy arrays.

Train (`make_train_loader`): every epoch is a fresh permutation of the source (seeded by
(seed, epoch)) cut into `steps_per_epoch` global batches; the remainder of each epoch
is dropped (PyTorch `drop_last=True` per epoch, so epochs line up with
`steps_per_epoch`). Process p of P takes the rows [p b, (p + 1) b) of every global
batch (b = global_batch_size / P). Each element of the grain pipeline is one whole
per-process batch, so a batch's content does not depend on `num_workers`, and every
random crop/flip is drawn from a generator seeded by (seed, position in the global
stream): the output is bitwise reproducible for any `num_workers`, and the
concatenation of all processes' batches equals the single-process batch.

Eval (`make_eval_loader`): Resize(short side = round(image_size / resize_ratio)) +
CenterCrop(image_size), in source order, each process a contiguous share, the last
batch padded (rows with 'mask' False, image 0, label/coarse_label/index -1).

JPEG files are decoded in draft mode (DCT scaling by 1/2, 1/4, 1/8) whenever the
reduced image still gives every crop at least the output resolution; crop boxes are
computed in original coordinates and mapped to the drafted image.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence

import grain.python as grain
import numpy as np
from PIL import Image

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
_DRAFT_FACTORS = (8, 4, 2)
_TAG_SHUFFLE, _TAG_CROP = 0, 1


class ImageDecodeError(OSError):
    """An image file could not be read or decoded; the message names the path."""


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Training steps per epoch with drop-last semantics (CUB 5994 @ 128 -> 46)."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    return num_examples // global_batch_size


def _resample(interpolation: str) -> Image.Resampling:
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
        resample = _resample(interpolation)
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
        resample = _resample(interpolation)
        return np.asarray(img.resize((image_size, image_size), resample, box=box))


def _absl_flags_workaround(num_workers: int) -> None:
    """grain 0.2.18 reads an absl flag when starting workers once JAX is imported, which
    fails in programs that never parse absl flags (google/grain#1355, fixed upstream in
    #1362): mark the flags as parsed (keeping their defaults) if nobody has."""
    if num_workers != 0:  # None: grain picks a worker count
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()


def _stable_repr(source) -> str:
    r = repr(source)
    if " at 0x" in r:  # default object repr: not stable across runs (grain checks it)
        r = f"{type(source).__qualname__}(num_records={len(source)})"
    return r


class _IndexSampler:
    """Element t of the pipeline is (per-process) batch t; `num_batches=None` = infinite."""

    def __init__(self, num_batches: int | None):
        self._num_batches = num_batches

    def __len__(self) -> int:
        return sys.maxsize if self._num_batches is None else self._num_batches

    def __getitem__(self, t: int) -> grain.RecordMetadata:
        if t < 0 or (self._num_batches is not None and t >= self._num_batches):
            raise IndexError(f"batch {t} out of range [0, {self._num_batches})")
        return grain.RecordMetadata(index=t, record_key=t)

    def __repr__(self) -> str:
        return f"_IndexSampler(num_batches={self._num_batches})"


class _TrainBatches:
    """Random-access 'source' of per-process training batches (raw records + positions)."""

    def __init__(self, source, *, seed, global_batch_size, process_index, process_count,
                 num_batches):
        self._source = source
        self._n = len(source)
        self._seed = seed
        self._global = global_batch_size
        self._local = global_batch_size // process_count
        self._process_index = process_index
        self._process_count = process_count
        self._steps = steps_per_epoch(self._n, global_batch_size)
        self._num_batches = num_batches
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return sys.maxsize if self._num_batches is None else self._num_batches

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            rng = np.random.default_rng([self._seed, _TAG_SHUFFLE, epoch])
            self._perm_cache = (epoch, rng.permutation(self._n))
        return self._perm_cache[1]

    def __getitem__(self, t: int) -> dict:
        epoch, j = divmod(int(t), self._steps)
        start = j * self._global + self._process_index * self._local
        keys = self.permutation(epoch)[start : start + self._local]
        first = int(t) * self._global + self._process_index * self._local
        return {
            "records": [self._source[int(k)] for k in keys],
            "positions": np.arange(first, first + self._local, dtype=np.int64),
        }

    def __repr__(self) -> str:
        return (
            f"_TrainBatches(source={_stable_repr(self._source)}, seed={self._seed}, "
            f"global_batch_size={self._global}, process={self._process_index}/"
            f"{self._process_count}, num_batches={self._num_batches})"
        )


def _int32(records: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, -1) for r in records], np.int32)


class _TrainTransform(grain.MapTransform):
    """Decodes a batch of records into views; rng per example from (seed, position)."""

    def __init__(self, *, seed, image_size, num_views, crop_scale, crop_ratio, interpolation):
        self._seed = seed
        self._kwargs = dict(
            image_size=image_size,
            num_views=num_views,
            crop_scale=tuple(crop_scale),
            crop_ratio=tuple(crop_ratio),
            interpolation=interpolation,
        )

    def map(self, element: dict) -> dict:
        records, positions = element["records"], element["positions"]
        s, v = self._kwargs["image_size"], self._kwargs["num_views"]
        images = np.empty((len(records), v, s, s, 3), np.uint8)
        for i, (record, pos) in enumerate(zip(records, positions, strict=True)):
            rng = np.random.default_rng([self._seed, _TAG_CROP, int(pos)])
            images[i] = random_crop_views(record, rng, **self._kwargs)
        return {
            "images": images,
            "label": _int32(records, "label"),
            "coarse_label": _int32(records, "coarse_label"),
            "index": _int32(records, "index"),
        }


def make_train_loader(
    source,
    *,
    global_batch_size: int,
    image_size: int,
    num_views: int,
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    interpolation: str = "bilinear",
    seed: int,
    num_workers: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    worker_buffer_size: int = 2,
) -> grain.DataLoader:
    """Training loader over `source` (see the module docstring for the semantics).

    Yields dicts for THIS process (b = global_batch_size // process_count):
      'images': uint8 [b, num_views, image_size, image_size, 3] (independent
        RandomResizedCrop(crop_scale, crop_ratio, interpolation) + flip(p=0.5) per view),
      'label', 'coarse_label', 'index': int32 [b].
    `num_epochs=None` repeats forever. `iter(loader)` supports get_state()/set_state().
    """
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if num_views < 1 or image_size < 1:
        raise ValueError("num_views and image_size must be >= 1")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1 or not 0 < crop_ratio[0] <= crop_ratio[1]:
        raise ValueError(f"bad crop_scale={crop_scale} / crop_ratio={crop_ratio}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    _resample(interpolation)
    steps = steps_per_epoch(len(source), global_batch_size)
    if steps == 0:
        raise ValueError(
            f"the source has {len(source)} records, fewer than global_batch_size="
            f"{global_batch_size}: no full batch (batches drop the remainder)"
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    num_batches = None if num_epochs is None else num_epochs * steps
    plan = _TrainBatches(
        source,
        seed=seed,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        num_batches=num_batches,
    )
    transform = _TrainTransform(
        seed=seed,
        image_size=image_size,
        num_views=num_views,
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        interpolation=interpolation,
    )
    _absl_flags_workaround(num_workers)
    return grain.DataLoader(
        data_source=plan,
        sampler=_IndexSampler(num_batches),
        operations=[transform],
        worker_count=num_workers,
        worker_buffer_size=worker_buffer_size,
        shard_options=grain.NoSharding(),
    )


class _EvalBatches:
    """Random-access 'source' of this process's eval batches (records or None = padding)."""

    def __init__(self, source, *, batch_size, process_index, process_count):
        n = len(source)
        per_process = -(-n // process_count)
        self._source = source
        self._batch_size = batch_size
        self._start = min(n, process_index * per_process)
        self._stop = min(n, (process_index + 1) * per_process)
        self._process = (process_index, process_count)
        self.num_batches = max(1, -(-per_process // batch_size))

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, t: int) -> dict:
        first = self._start + int(t) * self._batch_size
        ids = range(first, min(first + self._batch_size, self._stop))
        return {"records": [self._source[i] for i in ids], "batch_size": self._batch_size}

    def __repr__(self) -> str:
        return (
            f"_EvalBatches(source={_stable_repr(self._source)}, batch_size={self._batch_size}, "
            f"process={self._process[0]}/{self._process[1]})"
        )


class _EvalTransform(grain.MapTransform):
    def __init__(self, *, image_size, resize_ratio, interpolation):
        self._kwargs = dict(
            image_size=image_size, resize_ratio=resize_ratio, interpolation=interpolation
        )

    def map(self, element: dict) -> dict:
        records, b = element["records"], element["batch_size"]
        s = self._kwargs["image_size"]
        images = np.zeros((b, s, s, 3), np.uint8)
        for i, record in enumerate(records):
            images[i] = resize_center_crop(record, **self._kwargs)
        pad = np.full(b - len(records), -1, np.int32)
        return {
            "images": images,
            "label": np.concatenate([_int32(records, "label"), pad]),
            "coarse_label": np.concatenate([_int32(records, "coarse_label"), pad]),
            "index": np.concatenate([_int32(records, "index"), pad]),
            "mask": np.arange(b) < len(records),
        }


class EvalLoader:
    """Re-iterable eval loader; `len()` = batches per process (equal on all processes)."""

    def __init__(self, loader: grain.DataLoader, num_batches: int, num_examples: int):
        self._loader = loader
        self.num_batches = num_batches
        self.num_examples = num_examples

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        return iter(self._loader)


def make_eval_loader(
    source,
    *,
    batch_size: int,
    image_size: int,
    resize_ratio: float = 0.875,
    process_index: int = 0,
    process_count: int = 1,
    interpolation: str = "bilinear",
    num_workers: int = 0,
) -> EvalLoader:
    """Deterministic eval loader: Resize(round(S / resize_ratio)) + CenterCrop(S).

    Process p gets the contiguous records [p m, (p + 1) m), m = ceil(N / P); every process
    yields the same number of batches; padded rows have mask False, zero images and
    label/coarse_label/index -1. Batches: 'images' uint8 [b, S, S, 3], 'label',
    'coarse_label', 'index' int32 [b], 'mask' bool [b].
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if not 0 < resize_ratio <= 1:
        raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
    _resample(interpolation)
    plan = _EvalBatches(
        source, batch_size=batch_size, process_index=process_index, process_count=process_count
    )
    _absl_flags_workaround(num_workers)
    loader = grain.DataLoader(
        data_source=plan,
        sampler=_IndexSampler(plan.num_batches),
        operations=[
            _EvalTransform(
                image_size=image_size, resize_ratio=resize_ratio, interpolation=interpolation
            )
        ],
        worker_count=num_workers,
        shard_options=grain.NoSharding(),
    )
    return EvalLoader(loader, plan.num_batches, len(source))
