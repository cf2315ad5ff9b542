"""FGVC-Aircraft as distributed (fgvc-aircraft-2013b/data with images/ and
images_variant_*.txt) -> the image-folder layout LCR and LEAD++ read:
<out>/train/<variant>/*.jpg from the official 'trainval' split (6,667 images) and
<out>/test/<variant>/*.jpg (3,333), 100 variant folders ('F/A-18' -> 'FA-18', as
LEAD++'s aircraft_organize.py names them). Like the originals, images keep the 20-px
copyright banner unless --trim-banner is given.

    python data_prep/aircraft_to_image_folder.py --root /data/fgvc-aircraft-2013b --out data/air

Reads the dataset with fgjax's kind 'aircraft' (config.data.kind='aircraft').
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_prep.common import image_folder_parser, run_image_folder  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = image_folder_parser(__doc__, banner=True)
    parser.add_argument(
        "--train-split", default="trainval", help="the split written to train/ (default trainval)"
    )
    args = parser.parse_args(argv)
    return run_image_folder("aircraft", args, {"train": args.train_split, "test": "test"})


if __name__ == "__main__":
    main()
