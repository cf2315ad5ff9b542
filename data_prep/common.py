"""What the data_prep scripts share: the image-folder command line and its run."""

from __future__ import annotations

import argparse

from fgjax.config import data_config
from fgjax.data.datasets import build_source
from fgjax.data.export import LINK_MODES, export_image_folder


def image_folder_parser(doc: str, *, box: bool = False, banner: bool = False):
    """The arguments of a `<dataset>_to_image_folder.py` script (`doc`: its module doc)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="the dataset as distributed")
    parser.add_argument("--out", required=True, help="output root: <out>/{train,test}/<class>/")
    parser.add_argument(
        "--link",
        choices=LINK_MODES,
        default="copy",
        help="copy the files (default), hard-link them (same file system) or symlink them",
    )
    if box:
        parser.add_argument(
            "--crop-to-box",
            action="store_true",
            help="write every image cut to its object bounding box (JPEG quality 95)",
        )
    if banner:
        parser.add_argument(
            "--trim-banner",
            action="store_true",
            help="write every image without the 20-px copyright banner at the bottom "
            "(the originals keep it)",
        )
    return parser


def run_image_folder(kind: str, args, folders: dict[str, str], **fields) -> dict[str, int]:
    """Exports the `kind` split `folders[name]` into `<args.out>/<name>` for every name;
    returns {name: number of images}. `fields` are set on config.data."""
    crop = bool(getattr(args, "crop_to_box", False) or getattr(args, "trim_banner", False))
    if getattr(args, "crop_to_box", False):
        fields["crop_to_box"] = True
    config = data_config(kind, args.root, **fields)
    written = {}
    for name, split in folders.items():
        source = build_source(config, split)
        counts = export_image_folder(source, f"{args.out}/{name}", link=args.link, crop=crop)
        written[name] = sum(counts.values())
        print(f"{name}: {written[name]} images in {len(counts)} class folders ({kind} {split})")
    return written
