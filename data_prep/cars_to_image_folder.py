"""Stanford Cars as distributed (the devkit .mat files and cars_train/, cars_test/) ->
the image-folder layout LCR and LEAD++ read: <out>/train/<class name>/*.jpg and
<out>/test/... (official split: 8,144 / 8,041 images, 196 class folders named by the
class name of cars_meta.mat, e.g. 'Acura RL Sedan 2012', '/' removed).

    python data_prep/cars_to_image_folder.py --root /data/stanford_cars --out data/StanfordCars

Reads the dataset with fgjax's kind 'cars' (config.data.kind='cars').
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_prep.common import image_folder_parser, run_image_folder  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = image_folder_parser(__doc__, box=True).parse_args(argv)
    return run_image_folder("cars", args, {"train": "train", "test": "test"})


if __name__ == "__main__":
    main()
