"""The CUB-100 crops (5,902 CUB-200-2011 images of 100 species, each its official
bounding-box crop at 227 x 227) as CSV manifests for fgjax's `csv` dataset kind.

The copy's index files are `id, value` comma-separated and 0-based; in its
`train_test_split.txt`, `1` marks the official TEST split (the reverse of the official
file). 2,999 train and 2,903 test images.
"""

from __future__ import annotations

import csv
import os

INDEX_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _table(data: str, name: str) -> dict[str, str]:
    path = os.path.join(data, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not a CUB-100 crops folder (needs {INDEX_FILES})")
    with open(path) as f:
        return dict(line.strip().split(", ", 1) for line in f if line.strip())


def write_manifest(data: str, path: str, names: bool = False, seen_classes: int = 0) -> str:
    """Write `path`: a CSV (path, label, split) of the crops under `data`, split 'train' /
    'test' as the official split. `names`: labels are the species names and a
    `coarse_label` column holds the bird family, the last word of the name ('Warbler',
    'Sparrow', ...); otherwise labels are the copy's 0-based ids. `seen_classes` > 0: a
    zero-shot training manifest, whose 'train' rows are the official train images of the
    first `seen_classes` species only (the others' rows are marked 'unseen'). Returns
    `path`."""
    paths, labels, split = (_table(data, n) for n in INDEX_FILES[:3])
    species = _table(data, "classes.txt")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"] + (["coarse_label"] if names else []))
        for image_id, rel in paths.items():
            role = "test" if split[image_id] == "1" else "train"
            if seen_classes and role == "train" and int(labels[image_id]) >= seen_classes:
                role = "unseen"
            row = [os.path.join(data, "images", rel), labels[image_id], role]
            if names:
                name = species[labels[image_id]]
                row[1:2] = [name]
                row.append(name.split("_")[-1])
            writer.writerow(row)
    return path
