"""Datasets (sources), grain input pipelines and on-device photometric augmentation."""

from fgjax.data.augment import (
    PhotometricSpec,
    byol_view1_spec,
    byol_view2_spec,
    moco_v2_spec,
    no_augment_spec,
    photometric,
    photometric_per_example,
    photometric_unnormalised,
)
from fgjax.data.datasets import build_source, dataset_kinds, register_dataset
from fgjax.data.decode import ImageDecodeError
from fgjax.data.eval_loader import EvalLoader, make_eval_loader
from fgjax.data.layout import DatasetFormatError, DatasetLayoutError
from fgjax.data.procedural import ProceduralFineGrained
from fgjax.data.sources import CsvManifestSource, ImageFolderSource, LabeledSource
from fgjax.data.train_loader import make_train_loader, steps_per_epoch
from fgjax.data.views import ViewSpec

__all__ = [
    "CsvManifestSource",
    "DatasetFormatError",
    "DatasetLayoutError",
    "EvalLoader",
    "ImageDecodeError",
    "ImageFolderSource",
    "LabeledSource",
    "PhotometricSpec",
    "ProceduralFineGrained",
    "ViewSpec",
    "build_source",
    "dataset_kinds",
    "register_dataset",
    "byol_view1_spec",
    "byol_view2_spec",
    "make_eval_loader",
    "make_train_loader",
    "moco_v2_spec",
    "no_augment_spec",
    "photometric",
    "photometric_per_example",
    "photometric_unnormalised",
    "steps_per_epoch",
]
