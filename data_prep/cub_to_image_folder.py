"""CUB-200-2011 as distributed (CUB_200_2011/ with images.txt, ...) -> the image-folder
layout LCR and LEAD++ read: <out>/train/<NNN.Species>/*.jpg and <out>/test/... (the
official train_test_split.txt: 5,994 / 5,794 images, 200 class folders each).

    python data_prep/cub_to_image_folder.py --root /data/CUB_200_2011 --out data/CUB200
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_prep.common import image_folder_parser, run_image_folder  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = image_folder_parser(__doc__, box=True).parse_args(argv)
    return run_image_folder("cub", args, {"train": "train", "test": "test"})


if __name__ == "__main__":
    main()
