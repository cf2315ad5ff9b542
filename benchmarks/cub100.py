"""The CUB-100 crops (`../shared/data/cub100_crops227`) as a CSV manifest for fgjax's `csv`
dataset kind: 100 species, official split (2,999 train and 2,903 test bounding-box crops)."""

from __future__ import annotations

import csv
import os


def _table(data: str, name: str) -> dict[str, str]:
    with open(os.path.join(data, name)) as f:
        return dict(line.strip().split(", ", 1) for line in f if line.strip())


def write_manifest(data: str, path: str, names: bool = False) -> str:
    """`path`: a CSV (path, label, split) of the crops; in this copy's train_test_split.txt
    `1` marks the official test split. `names`: labels are the species names (the class
    names a report shows) and a `coarse_label` column holds the bird family, the last word
    of the name ('Warbler', 'Sparrow', ...); otherwise labels are the copy's 0-based ids."""
    paths, labels, split = (
        _table(data, n) for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt")
    )
    species = _table(data, "classes.txt")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"] + (["coarse_label"] if names else []))
        for image_id, rel in paths.items():
            role = "test" if split[image_id] == "1" else "train"
            row = [os.path.join(data, "images", rel), labels[image_id], role]
            if names:
                name = species[labels[image_id]]
                row[1:2] = [name]
                row.append(name.split("_")[-1])
            writer.writerow(row)
    return path
