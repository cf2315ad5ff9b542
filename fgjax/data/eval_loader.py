"""grain evaluation loader: Resize(short side = round(image_size / resize_ratio), or a
squash to squash_size x squash_size) + CenterCrop(image_size), in source order, each
process a contiguous share, the last batch padded (rows with 'mask' False, image 0,
label/coarse_label/index -1).
"""

from __future__ import annotations

from collections.abc import Sequence

import grain.python as grain
import numpy as np

from fgjax.data.decode import (
    ImageDecodeError,
    check_eval_resize,
    resample_filter,
    resize_center_crop,
)
from fgjax.data.grain_utils import (
    ExitWithParent,
    IndexSampler,
    check_process,
    int32_field,
    prepare_workers,
    stable_repr,
)


class _EvalBatches:
    """Random-access 'source' of this process's eval batches (the last may be short: the
    transform pads it)."""

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
            f"_EvalBatches(source={stable_repr(self._source)}, batch_size={self._batch_size}, "
            f"process={self._process[0]}/{self._process[1]})"
        )


class _EvalTransform(grain.MapTransform):
    def __init__(self, *, skip_bad, **kwargs):
        self._kwargs = kwargs  # of resize_center_crop
        self._skip_bad = skip_bad

    def map(self, element: dict) -> dict:
        records, b = element["records"], element["batch_size"]
        s = self._kwargs["image_size"]
        images = np.zeros((b, s, s, 3), np.uint8)
        bad = []
        for i, record in enumerate(records):
            try:
                images[i] = resize_center_crop(record, **self._kwargs)
            except ImageDecodeError as e:
                if not self._skip_bad:
                    raise
                bad.append(str(e))  # the row keeps its label and index, with a black image
        return {"images": images, **padded_fields(records, b), "bad_images": bad}


def padded_fields(records: list[dict], batch_size: int) -> dict[str, np.ndarray]:
    """'label', 'coarse_label', 'index' int32 [batch_size] of `records` (the rows past them
    -1) and 'mask' bool [batch_size] (True on the records' rows)."""
    pad = np.full(batch_size - len(records), -1, np.int32)
    return {
        "label": np.concatenate([int32_field(records, "label"), pad]),
        "coarse_label": np.concatenate([int32_field(records, "coarse_label"), pad]),
        "index": np.concatenate([int32_field(records, "index"), pad]),
        "mask": np.arange(batch_size) < len(records),
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
    skip_bad: bool = False,
    resize: str = "short_side",
    squash_size: int = 0,
) -> EvalLoader:
    """Deterministic eval loader: Resize + CenterCrop(S) (`decode.resize_center_crop`):
    `resize` 'short_side' resizes the short side to round(S / resize_ratio), 'squash'
    resizes to squash_size x squash_size ignoring the aspect (HERBS).

    Process p gets the contiguous records [p m, (p + 1) m), m = ceil(N / P); every process
    yields the same number of batches; padded rows have mask False, zero images and
    label/coarse_label/index -1. Batches: 'images' uint8 [b, S, S, 3], 'label',
    'coarse_label', 'index' int32 [b], 'mask' bool [b], 'bad_images' (list of str).
    An undecodable image raises ImageDecodeError naming the file; with `skip_bad` its row
    keeps its label and index with a black image (every split keeps its size, so
    per-example method state stays aligned) and its error is listed in 'bad_images'.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    check_process(process_index, process_count)
    if not 0 < resize_ratio <= 1:
        raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
    resample_filter(interpolation)
    check_eval_resize(resize, squash_size, image_size)
    plan = _EvalBatches(
        source, batch_size=batch_size, process_index=process_index, process_count=process_count
    )
    prepare_workers(num_workers)
    loader = grain.DataLoader(
        data_source=plan,
        sampler=IndexSampler(plan.num_batches),
        operations=[
            ExitWithParent(),  # workers end with their parent
            _EvalTransform(
                image_size=image_size,
                resize_ratio=resize_ratio,
                interpolation=interpolation,
                resize=resize,
                squash_size=squash_size,
                skip_bad=skip_bad,
            ),
        ],
        worker_count=num_workers,
        shard_options=grain.NoSharding(),
    )
    return EvalLoader(loader, plan.num_batches, len(source))


def spread(n: int, num: int) -> np.ndarray:
    """Up to `num` distinct indices spread evenly over `range(n)` (first and last included)."""
    return np.unique(np.linspace(0, n - 1, min(num, n)).round().astype(int))


def eval_crops(source, indices: Sequence[int], data) -> np.ndarray:
    """uint8 `[N, S, S, 3]` crops of `source[indices]` as evaluation sees them (the eval
    loader's Resize + CenterCrop under `data`, a `config.data`: image_size, eval_resize,
    eval_squash_size, eval_resize_ratio), for pictures."""
    return np.stack(
        [
            resize_center_crop(
                source[int(i)],
                image_size=data.image_size,
                resize=data.eval_resize,
                squash_size=data.eval_squash_size,
                resize_ratio=data.eval_resize_ratio,
            )
            for i in indices
        ]
    )
