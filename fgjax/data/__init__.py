"""Datasets (sources), grain input pipelines and on-device photometric augmentation."""

from fgjax.data.pipeline import (
    EvalLoader,
    ImageDecodeError,
    make_eval_loader,
    make_train_loader,
    steps_per_epoch,
)
from fgjax.data.procedural import ProceduralFineGrained
from fgjax.data.sources import CsvManifestSource, ImageFolderSource, build_source

__all__ = [
    "CsvManifestSource",
    "EvalLoader",
    "ImageDecodeError",
    "ImageFolderSource",
    "ProceduralFineGrained",
    "build_source",
    "make_eval_loader",
    "make_train_loader",
    "steps_per_epoch",
]
