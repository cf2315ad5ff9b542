"""Any image-folder tree <root>/<split>/<class>/*.{jpg,jpeg,png} (the layout LCR and
LEAD++ read) -> an fgjax CSV manifest with columns path,label[,coarse_label],split, for
config.data.kind='csv'. Paths are relative to the CSV's folder; labels are the class
folder names, so every split agrees on the label ids (sorted names, as ImageFolder).
Class folders named only by digits ('1'...'196') become integer labels instead.

    python data_prep/image_folder_to_csv.py --root data/CUB200 --out data/cub.csv --coarse last_word

then train with --config.data.kind=csv --config.data.root=data/cub.csv.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fgjax.data.export import write_csv_manifest  # noqa: E402
from fgjax.data.sources import COARSE_RULES, ImageFolderSource  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="the tree holding one folder per split")
    parser.add_argument("--out", help="the CSV to write (default: <root>/manifest.csv)")
    parser.add_argument(
        "--splits", default="", help="comma-separated split folders (default: every folder)"
    )
    parser.add_argument(
        "--coarse",
        choices=sorted(COARSE_RULES),
        default=None,
        help="also write coarse_label: this rule applied to the class folder names",
    )
    args = parser.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s] or sorted(
        e.name for e in os.scandir(args.root) if e.is_dir() and not e.name.startswith(".")
    )
    if not splits:
        parser.error(f"{args.root!r} holds no split folders")
    sources = [ImageFolderSource(args.root, split, coarse=args.coarse or "") for split in splits]
    out = args.out or os.path.join(args.root, "manifest.csv")
    rows = write_csv_manifest(sources, out)
    for s in sources:
        print(f"{s.split}: {len(s)} images, {s.num_classes} classes")
    print(f"{rows} rows -> {out}")
    return rows


if __name__ == "__main__":
    main()
