"""CIFAR-10 and CIFAR-100 as the python pickle archives extract: `cifar-10-batches-py/`
(data_batch_1..5, test_batch, batches.meta) and `cifar-100-python/` (train, test, meta).

Every pickle holds b'data' uint8 [N, 3072] (per image the 1024 red, then green, then blue
values, rows top to bottom) and b'labels' (CIFAR-10) or b'fine_labels' / b'coarse_labels'
(CIFAR-100). Records carry 'image' uint8 [32, 32, 3] (HWC); the images of a split are
converted once to a memory-mapped `.npy` cache (see `fgjax.data.npy_cache`), so grain
workers share them instead of each receiving a pickled copy.

Splits 'train' (50,000) / 'test' (10,000). Labels are the official ones, names from the
meta file (CIFAR-100: alphabetical). CIFAR-100's coarse level 'superclass' (20) is the
official coarse_labels field, checked to give every fine class one superclass.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    dataset_folder,
    load_array_pickle,
    require_paths,
)
from fgjax.data.npy_cache import cache_file, cached_images, planar_rows_to_hwc
from fgjax.data.sources import LabeledSource, coarse_of_classes


class Cifar(NamedTuple):
    kind: str
    folder: str
    files: dict[str, tuple[str, ...]]  # split -> pickles
    meta: str
    label_key: bytes
    names_key: bytes
    coarse_key: bytes | None = None  # per-record coarse labels; names under coarse_label_names


CIFAR10 = Cifar(
    "cifar10",
    "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)},
    "batches.meta",
    b"labels",
    b"label_names",
)
CIFAR100 = Cifar(
    "cifar100", "cifar-100-python", {"train": ("train",), "test": ("test",)}, "meta",
    b"fine_labels", b"fine_label_names", b"coarse_labels",
)  # fmt: skip


def _layout(spec: Cifar) -> str:
    names = [*spec.files["train"], *spec.files["test"], spec.meta]
    return f"the extracted python archive {spec.folder}/ ({', '.join(names)})"


def _load(path: str, keys: tuple[bytes, ...]) -> dict:
    """A CIFAR pickle (bytes keys) with `keys` checked present."""
    try:
        d = load_array_pickle(path, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - unpickling raises many kinds
        raise DatasetFormatError(f"{path}: cannot read as a CIFAR pickle: {e}") from e
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    missing = [k.decode() for k in keys if k not in d]
    if missing:
        found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise DatasetFormatError(f"{path}: missing key(s) {missing}; found {found}")
    return d


def _names(meta: dict, key: bytes, path: str) -> list[str]:
    names = meta[key]
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DatasetFormatError(f"{path}: {key.decode()!r} must be a list of names")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def _labels(d: dict, key: bytes, n: int, num: int, path: str) -> np.ndarray:
    try:
        labels = np.asarray(d[key], np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DatasetFormatError(f"{path}: {key.decode()!r} must be {n} labels: {e}") from None
    if labels.shape != (n,) or (n and not 0 <= labels.min() <= labels.max() < num):
        raise DatasetFormatError(
            f"{path}: {key.decode()!r} must be {n} labels in [0, {num}), got shape "
            f"{labels.shape}" + (f", range {labels.min()}..{labels.max()}" if labels.size else "")
        )
    return labels.astype(np.int32)


def _pixels(d: dict, path: str) -> np.ndarray:
    """uint8 [N, 32, 32, 3] of a batch's b'data'."""
    try:
        data = np.asarray(d[b"data"])
    except (TypeError, ValueError) as e:  # e.g. rows of different lengths
        raise DatasetFormatError(f"{path}: 'data' is not an array: {e}") from None
    return planar_rows_to_hwc(data, path)


def _build(spec: Cifar, data_config, split: str) -> LabeledSource:
    base = dataset_folder(data_config.root, spec.folder)
    layout = _layout(spec)
    require_paths(base, [*spec.files[split], spec.meta], kind=spec.kind, layout=layout)
    coarse_key = spec.coarse_key
    meta_path = os.path.join(base, spec.meta)
    meta = _load(
        meta_path, (spec.names_key, b"coarse_label_names") if coarse_key else (spec.names_key,)
    )
    class_names = _names(meta, spec.names_key, meta_path)
    paths = [os.path.join(base, f) for f in spec.files[split]]
    keys = (b"data", spec.label_key, *([coarse_key] if coarse_key else []))
    batches = [_load(p, keys) for p in paths]
    sizes = [len(_pixels(b, p)) for b, p in zip(batches, paths, strict=True)]

    def column(key: bytes, num: int) -> np.ndarray:
        return np.concatenate(
            [_labels(b, key, n, num, p) for b, n, p in zip(batches, sizes, paths, strict=True)]
        )

    labels = column(spec.label_key, len(class_names))
    levels = {}
    if coarse_key:
        coarse_names = _names(meta, b"coarse_label_names", meta_path)
        starts = np.cumsum([0, *sizes])

        def where(k: int) -> str:
            f = int(np.searchsorted(starts, k, side="right")) - 1
            return f"{paths[f]}: record {k - starts[f]}, {coarse_key!r}"

        levels["superclass"] = coarse_of_classes(
            labels, column(coarse_key, len(coarse_names)), coarse_names, where, len(class_names)
        )
    images = cached_images(
        cache_file(base, f"{spec.kind}-{split}", paths),
        (len(labels), 32, 32, 3),
        [lambda b=b, p=p: _pixels(b, p) for b, p in zip(batches, paths, strict=True)],
        desc=f"{spec.kind}/{split}: converting to a uint8 HWC cache",
    )
    return LabeledSource(
        dataset=spec.kind,
        split=split,
        labels=labels,
        class_names=class_names,
        images=images,
        coarse_levels=levels,
        coarse=data_config.get("coarse", ""),
    )


@register_dataset("cifar10", splits=("train", "test"), layout=_layout(CIFAR10))
def cifar10(data_config, split: str) -> LabeledSource:
    return _build(CIFAR10, data_config, split)


@register_dataset(
    "cifar100", splits=("train", "test"), coarse_levels=("superclass",), layout=_layout(CIFAR100)
)
def cifar100(data_config, split: str) -> LabeledSource:
    return _build(CIFAR100, data_config, split)
