"""A few BYOL steps on the real CUB-100 crops of ../shared/data (skipped when absent)."""

import csv
import os

import numpy as np
from conftest import tiny_config

from fgjax.train.loop import train_and_evaluate
from fgjax.train.metrics_log import read_metrics


def _cub_manifest(data_root: str, out_path, classes: int, per_class: int) -> str:
    """A CSV manifest (path,label,split) over the first `classes` species of the crops."""
    root = os.path.join(data_root, "cub100_crops227")

    def table(name):
        with open(os.path.join(root, name)) as f:
            return dict(line.strip().split(", ", 1) for line in f if line.strip())

    paths, labels, split = (
        table(n) for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt")
    )
    taken: dict[int, int] = {}
    with open(out_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for image_id, rel in paths.items():
            label = int(labels[image_id])
            # In this copy 1 marks the official *test* split.
            if label < classes and split[image_id] == "0" and taken.get(label, 0) < per_class:
                taken[label] = taken.get(label, 0) + 1
                writer.writerow([os.path.join(root, "images", rel), label, "train"])
                writer.writerow([os.path.join(root, "images", rel), label, "test"])
    return str(out_path)


def test_byol_loss_decreases_on_cub_crops(shared_data, tmp_path):
    config = tiny_config("byol")
    config.data.kind = "csv"
    config.data.root = _cub_manifest(shared_data, tmp_path / "cub.csv", classes=4, per_class=8)
    config.data.image_size = 32
    config.data.num_workers = 2
    config.train.batch_size = 16
    config.train.num_epochs = 12  # 2 steps per epoch over 32 images
    config.optim.lr = 0.05
    config.eval.enabled = False
    train_and_evaluate(config, str(tmp_path / "run"))
    losses = [r["loss"] for r in read_metrics(str(tmp_path / "run"))]
    assert len(losses) == 24 and np.all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
