"""CFGA's image lists for CUB-200-2011 or Stanford Cars (CARS196), from the dataset as
distributed: <out>/<name>/{train,test}_{paths,labels}.json, where <name> is CFGA's
folder name (CUB_200_2011, cars_196), the paths are absolute and the labels are the
0-based class ids (plain JSON lists, aligned by index).

CFGA uses the metric-learning retrieval protocol, which ignores the official split: the
first half of the classes is 'train' (CUB 1-100: 5,864 images; Cars 1-98: 8,054) and the
second half 'test' (CUB 101-200: 5,924; Cars 99-196: 8,131), labels keeping their
global ids (100-199 / 98-195). These are fgjax's splits retrieval_train/retrieval_test.
Unlike CFGA's files_cars196.py the Cars paths point at the original files: nothing is
copied.

    python data_prep/cfga_lists.py --dataset cub --root /data/CUB_200_2011 --out datafile
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fgjax.config import data_config  # noqa: E402
from fgjax.data.datasets import build_source  # noqa: E402
from fgjax.data.export import write_path_lists  # noqa: E402

# --dataset -> (fgjax kind, CFGA's datafile/<name>)
DATASETS = {"cub": ("cub", "CUB_200_2011"), "cars": ("cars", "cars_196")}


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--root", required=True, help="the dataset as distributed")
    parser.add_argument("--out", default="datafile", help="CFGA's datafile/ folder")
    args = parser.parse_args(argv)
    kind, name = DATASETS[args.dataset]
    config = data_config(kind, args.root)
    written = {}
    for prefix, split in (("train", "retrieval_train"), ("test", "retrieval_test")):
        source = build_source(config, split)
        paths, _ = write_path_lists(source, os.path.join(args.out, name), prefix)
        written[prefix] = len(source)
        print(
            f"{prefix}: {len(source)} images of {len(set(source.labels.tolist()))} classes "
            f"-> {paths}"
        )
    return written


if __name__ == "__main__":
    main()
