"""Kinds that are not one published dataset: image folders, CSV manifests, the
procedural demo set."""

from __future__ import annotations

from fgjax.data.datasets import register_dataset
from fgjax.data.sources import CsvManifestSource, ImageFolderSource


@register_dataset(
    "image_folder",
    splits=(),
    layout="<root>/<split>/<class>/*.{jpg,jpeg,png} (sorted class folders are the labels)",
)
def image_folder(data_config, split: str) -> ImageFolderSource:
    """Coarse labels: `config.data.coarse` names a rule of sources.COARSE_RULES ('' = none)."""
    return ImageFolderSource(data_config.root, split, coarse=data_config.get("coarse", ""))


@register_dataset(
    "csv",
    splits=(),
    layout="a CSV file with columns path,label[,coarse_label][,split]",
)
def csv_manifest(data_config, split: str) -> CsvManifestSource:
    """`config.data.root` is the CSV; `config.data.csv_root` the base of relative paths;
    `config.data.coarse` '' / 'coarse_label' (the column) or 'none'."""
    return CsvManifestSource(
        data_config.root,
        split=split,
        root=data_config.get("csv_root", "") or None,
        coarse=data_config.get("coarse", ""),
    )


@register_dataset(
    "procedural",
    splits=("train", "test", "all"),
    layout="nothing (rendered on the fly from config.data.procedural)",
)
def procedural(data_config, split: str):
    from fgjax.data.procedural import ProceduralFineGrained

    kwargs = data_config.procedural
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    return ProceduralFineGrained(split=split, **kwargs)
