"""Any TFDS dataset already prepared in `config.data.root` (its data_dir), by
`config.data.tfds_name`, read through `tfds.data_source` (random access; needs
`file_format='array_record'` or 'parquet' when it was prepared). Nothing is downloaded:
prepare the data first (`tfds build NAME --data_dir ROOT --file_format array_record`; for
datasets with manual downloads, `--manual_dir` is where you put the files).

Splits: whatever the builder has ('train', 'test', 'train[:90%]', ...; checked against the
builder's info). Labels: the 'label' ClassLabel feature, names from it; the coarse level
'coarse_label' where the builder has such a ClassLabel (e.g. cifar100), checked to give
every class one coarse label. Images: the 'image' feature (or the first Image feature),
decoded in `__getitem__` (so in grain workers) to uint8 [H, W, 3]; greyscale repeated to 3
channels.

Labels are read once when the source is built, without decoding images: TFDS gives whole
records only, so this reads every record of the split once (a progress bar shows it; for
ImageNet-sized splits it takes minutes).

`tensorflow_datasets` is imported only here, when this kind is used.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import DatasetLayoutError, describe_folder
from fgjax.data.sources import LabeledSource, coarse_of_classes

LAYOUT = "a TFDS dataset prepared (array_record) in this data_dir, named by config.data.tfds_name"
CHUNK = 1024  # records per label-reading request


class TfdsImages:
    """The images of a TFDS data source (records with encoded image bytes) as uint8 HWC."""

    def __init__(self, data_source, key: str):
        self.data_source, self.key = data_source, key

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, i: int) -> np.ndarray:
        value = self.data_source[int(i)][self.key]
        if isinstance(value, bytes):
            with Image.open(io.BytesIO(value)) as im:
                return np.asarray(im.convert("RGB"))
        image = np.asarray(value, np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        return np.broadcast_to(image, (*image.shape[:2], 3)) if image.shape[-1] == 1 else image


def _labels(data_source, keys: tuple[str, ...], desc: str) -> list[np.ndarray]:
    """int32 [N] per key, reading every record once (images left encoded)."""
    from fgjax.core.progress import progress  # imports jax

    n = len(data_source)
    out = [np.empty(n, np.int32) for _ in keys]
    bar = progress((n + CHUNK - 1) // CHUNK, desc=desc)
    for start in range(0, n, CHUNK):
        records = data_source.__getitems__(list(range(start, min(start + CHUNK, n))))
        for column, key in zip(out, keys, strict=True):
            column[start : start + len(records)] = [r[key] for r in records]
        bar.update()
    bar.close()
    return out


@register_dataset("tfds", splits=(), coarse_levels=(), layout=LAYOUT)
def tfds_dataset(data_config, split: str) -> LabeledSource:
    name = data_config.get("tfds_name", "")
    if not name:
        raise ValueError("config.data.kind='tfds' needs config.data.tfds_name (e.g. 'cifar100')")
    import tensorflow_datasets as tfds  # lazy: fgjax imports without it

    root = os.fspath(data_config.root) or None  # '' = TFDS's default data_dir
    try:
        builder = tfds.builder(name, data_dir=root)
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        raise DatasetLayoutError(
            f"config.data.kind='tfds' reads {LAYOUT}; no prepared dataset {name!r} in "
            f"config.data.root={root!r} (run `tfds build {name} --data_dir <root> "
            f"--file_format array_record` first). Found there: {describe_folder(root or '')}"
        )
    info = builder.info
    splits = list(info.splits)
    try:
        info.splits[split]  # also checks slices such as 'train[:90%]'
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"tfds dataset {name!r} has no split {split!r} (config.data.train_split / "
            f"test_split); its splits are {splits}"
        ) from e
    features = dict(info.features.items())
    label = features.get("label")
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not isinstance(label, tfds.features.ClassLabel) or not images:
        raise DatasetLayoutError(
            f"tfds dataset {name!r}: kind 'tfds' needs an Image feature and a ClassLabel "
            f"'label'; its features are {features}"
        )
    image_key = "image" if "image" in images else images[0]
    coarse = features.get("coarse_label")
    keys = ("label", "coarse_label") if isinstance(coarse, tfds.features.ClassLabel) else ("label",)
    try:
        source = tfds.data_source(
            name,
            split=split,
            data_dir=root,
            download=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
    except NotImplementedError as e:  # prepared as TFRecord: no random access
        raise DatasetLayoutError(
            f"tfds dataset {name!r} in {root!r} is prepared as {info.file_format}; random "
            f"access needs it prepared again with --file_format array_record ({e})"
        ) from e
    columns = _labels(source, keys, desc=f"tfds {name}/{split}: reading labels")
    levels = {}
    if len(keys) == 2:
        levels["coarse_label"] = coarse_of_classes(
            columns[0],
            columns[1],
            coarse.names,
            lambda k: f"tfds {name}/{split}: record {k}, 'coarse_label'",
            label.num_classes,
        )
    return LabeledSource(
        dataset="tfds",
        split=split,
        labels=columns[0],
        class_names=label.names,
        images=TfdsImages(source, image_key),
        coarse_levels=levels,
        coarse=data_config.get("coarse", ""),
    )
