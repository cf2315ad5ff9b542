"""Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017) as distributed: the npz batches
`train_data_batch_1.npz` .. `train_data_batch_10.npz` and `val_data.npz`, each with 'data'
uint8 [N, 3072] (planar RGB rows) and 'labels' 1..1000, in `config.data.root` or in its
`Imagenet32_train_npz/` and `Imagenet32_val_npz/` folders. The older pickled batches (the
same names without `.npz`, read by MaskCon) are accepted too.

Splits 'train' (1,281,167) and 'val' (50,000); 'test' is the same val set (ImageNet has no
public test labels; MaskCon and BuCSFR evaluate on val), so the default
`config.data.test_split` works. Labels are the files' labels - 1, in the downsampled set's
own class order; class names are those label numbers ('1' .. '1000').

Coarse level 'maskcon' (12, the MaskCon / BuCSFR grouping): when `imagenet32_to_fine.json`
and `imagenet_fine_to_coarse.json` (MaskCon's coarse_labels/imagenet32/) are in the root,
fine labels are remapped through the first to the standard ImageNet-1k index, as BuCSFR
does, and the second gives each its coarse class. Without them there is no coarse level.

The 3.9 GB of training pixels are converted once to a memory-mapped uint8 [N, 32, 32, 3]
`.npy` cache (`fgjax.data.npy_cache`); labels are read from the npz files without pixels.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    DatasetLayoutError,
    load_array_pickle,
    require_paths,
)
from fgjax.data.npy_cache import cache_file, cached_images, planar_rows_to_hwc
from fgjax.data.sources import CoarseLevel, LabeledSource

FILES = {
    "train": tuple(f"train_data_batch_{k}" for k in range(1, 11)),
    "val": ("val_data",),
}
FOLDERS = {"train": "Imagenet32_train_npz", "val": "Imagenet32_val_npz"}
TO_FINE, FINE_TO_COARSE = "imagenet32_to_fine.json", "imagenet_fine_to_coarse.json"
MASKCON_NAMES = [
    "Invertebrate", "Domestic animal", "Bird", "Mammal", "Reptile/Aquatic vertebrate",
    "Device", "Vehicle", "Container", "Instrument", "Artifact", "Clothing", "Others",
]  # fmt: skip
NUM_CLASSES = 1000
LAYOUT = (
    "Imagenet32 npz batches train_data_batch_1..10.npz and val_data.npz (in the root or in "
    f"{FOLDERS['train']}/ and {FOLDERS['val']}/), optionally {TO_FINE} and {FINE_TO_COARSE}"
)


def _batch_files(root: str, split: str) -> list[str]:
    """The split's batch files: npz (or pickles) in the root or its split folder."""
    names = FILES[split]
    for folder in (root, os.path.join(root, FOLDERS[split])):
        for ext in (".npz", ""):
            if os.path.isfile(os.path.join(folder, names[0] + ext)):
                require_paths(folder, [n + ext for n in names], kind="imagenet32", layout=LAYOUT)
                return [os.path.join(folder, n + ext) for n in names]
    require_paths(root, [names[0] + ".npz"], kind="imagenet32", layout=LAYOUT)  # raises
    raise AssertionError("unreachable")


def _read(path: str, key: str) -> np.ndarray:
    """One array of a batch: 'labels' alone is read without the pixels from an npz."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as z:
                found, value = z.files, (z[key] if key in z.files else None)
        else:
            d = load_array_pickle(path, encoding="latin1")
            found = sorted(d) if isinstance(d, dict) else type(d).__name__
            value = d.get(key) if isinstance(d, dict) else None
    except Exception as e:  # noqa: BLE001 - bad zips and pickles raise many kinds
        raise DatasetFormatError(f"{path}: cannot read as an Imagenet32 batch: {e}") from e
    if value is None:
        raise DatasetFormatError(f"{path}: no {key!r} array; found {found}")
    return np.asarray(value)


def _pixels(path: str, num_images: int) -> np.ndarray:
    """uint8 [num_images, 32, 32, 3] of a batch that holds `num_images` labels."""
    images = planar_rows_to_hwc(_read(path, "data"), path)
    if len(images) != num_images:
        raise DatasetFormatError(f"{path}: {len(images)} images but {num_images} labels")
    return images


def _labels(path: str) -> np.ndarray:
    """0-based labels of a batch (the files hold 1..1000)."""
    labels = np.asarray(_read(path, "labels")).reshape(-1)
    if labels.dtype.kind not in "iu":  # a cast would turn 2.5 into 2 and NaN into anything
        raise DatasetFormatError(f"{path}: 'labels' must be integers, got {labels.dtype}")
    if labels.size and not 1 <= labels.min() <= labels.max() <= NUM_CLASSES:
        raise DatasetFormatError(
            f"{path}: 'labels' must lie in 1..{NUM_CLASSES}, found {labels.min()}..{labels.max()}"
        )
    return (labels.astype(np.int64) - 1).astype(np.int32)


def _json_table(path: str, num_values: int) -> np.ndarray:
    """A MaskCon mapping {"0": v, ..., "999": v} as int [1000], values in [0, num_values)."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        out = np.array([int(table[str(k)]) for k in range(NUM_CLASSES)], np.int32)
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise DatasetFormatError(
            f"{path}: expected a JSON object mapping every class '0'..'{NUM_CLASSES - 1}' to an "
            f"integer: {type(e).__name__}: {e}"
        ) from e
    if not 0 <= out.min() <= out.max() < num_values:
        raise DatasetFormatError(f"{path}: values must lie in [0, {num_values})")
    return out


def _maskcon(root: str, coarse: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(to_fine, fine_to_coarse) int [1000] when the MaskCon files are in the root."""
    present = [os.path.isfile(os.path.join(root, n)) for n in (TO_FINE, FINE_TO_COARSE)]
    if not any(present):
        if coarse == "maskcon":
            raise DatasetLayoutError(
                f"config.data.coarse='maskcon' needs {TO_FINE} and {FINE_TO_COARSE} (from "
                f"MaskCon_CVPR2023/coarse_labels/imagenet32/) in config.data.root={root!r}"
            )
        return None
    require_paths(root, [TO_FINE, FINE_TO_COARSE], kind="imagenet32", layout=LAYOUT)
    to_fine = _json_table(os.path.join(root, TO_FINE), NUM_CLASSES)
    if len(np.unique(to_fine)) != NUM_CLASSES:
        raise DatasetFormatError(f"{os.path.join(root, TO_FINE)}: not a permutation of the classes")
    return to_fine, _json_table(os.path.join(root, FINE_TO_COARSE), len(MASKCON_NAMES))


@register_dataset(
    "imagenet32", splits=("train", "val", "test"), coarse_levels=("maskcon",), layout=LAYOUT
)
def imagenet32(data_config, split: str) -> LabeledSource:
    root, coarse = data_config.root, data_config.get("coarse", "")
    files = _batch_files(root, "val" if split == "test" else split)
    per_file = [_labels(p) for p in files]
    labels = np.concatenate(per_file)
    class_names = [str(k + 1) for k in range(NUM_CLASSES)]
    levels = {}
    mapping = _maskcon(root, coarse)
    if mapping is not None:
        to_fine, fine_to_coarse = mapping
        labels = to_fine[labels]
        class_names = [class_names[k] for k in np.argsort(to_fine)]  # name = label in files
        levels["maskcon"] = CoarseLevel(MASKCON_NAMES, fine_to_coarse)
    folder = os.path.dirname(files[0])
    images = cached_images(
        cache_file(folder, f"imagenet32-{'val' if split == 'test' else split}", files),
        (len(labels), 32, 32, 3),
        [lambda p=p, y=y: _pixels(p, len(y)) for p, y in zip(files, per_file, strict=True)],
        desc=f"imagenet32/{split}: converting to a uint8 HWC cache",
    )
    return LabeledSource(
        dataset="imagenet32",
        split=split,
        labels=labels,
        class_names=class_names,
        images=images,
        coarse_levels=levels,
        coarse=coarse,
    )
