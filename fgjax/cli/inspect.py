"""Look at a dataset before training on it.

    fgjax inspect --config configs/cub_moco.py \
        --config.data.root=/data/CUB_200_2011 [--out DIR | --workdir DIR] \
        [--splits train,test] [--verify [--num_workers N]]

Builds the sources of `config.data.train_split` and `config.data.test_split` (or
`--splits`) as training would and, per split, prints the number of images and classes,
the smallest and largest class, the coarse level, and the image sizes (from file headers
only, on a fixed-seed sample of at most 2,000 images per split), and writes
`<out>/contact_<split>.png`: a few images of up to 16 classes, captioned with the class
(and coarse) name, with the region crops are taken from (the object box with
`crop_to_box`, the banner trim) drawn in red. The numbers go to `<out>/summary.json`.

`--verify` also decodes every image with the training decoder, lists the files that fail
with the reason (and in `<out>/bad_images.txt`), and exits with status 1 if any do.
`<out>` is `--out`, else `<workdir>/inspect` (default runs/inspect). Config overrides
work as in `fgjax.cli.train`.
"""

from __future__ import annotations

import json
import os
import sys

from fgjax.core.cli import command
from fgjax.data.summary import contact_sheet, format_summary, summarize
from fgjax.data.verify import BadImage, find_bad_images


def _parse(argv: list[str]):
    """(config, flag values) from the command line, config overrides as in `fgjax.cli.train`."""
    from absl import flags
    from ml_collections import config_flags

    from fgjax.config import (
        check_override_names,
        config_path_from_argv,
        load_config_file,
        set_model_overrides,
        split_model_overrides,
    )

    try:
        argv, model_overrides = split_model_overrides(argv)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    fv = flags.FlagValues()
    config = config_flags.DEFINE_config_file(
        "config", None, "Recipe file in configs/.", flag_values=fv, sys_argv=["inspect", *argv]
    )
    flags.DEFINE_string("out", "", "Output folder (default: <workdir>/inspect).", flag_values=fv)
    flags.DEFINE_string(
        "workdir", "runs", "Outputs go to <workdir>/inspect unless --out is given.", flag_values=fv
    )
    flags.DEFINE_string(
        "splits",
        "",
        "Comma-separated split names (default: train_split,test_split).",
        flag_values=fv,
    )
    flags.DEFINE_bool("verify", False, "Decode every image; exit 1 if any fails.", flag_values=fv)
    flags.DEFINE_integer(
        "num_workers",
        None,
        "Decoding processes for --verify (default: config.data.num_workers).",
        flag_values=fv,
    )
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        print(__doc__.strip() + "\n\nflags:\n" + fv.get_help())
        raise SystemExit(0)
    path = config_path_from_argv(argv, "")
    if not path:
        raise SystemExit("error: give --config configs/<recipe>.py")
    try:
        check_override_names(load_config_file(path), argv)
        rest = fv(["inspect", *argv])
        set_model_overrides(config.value, model_overrides)
    except (ValueError, FileNotFoundError, flags.Error) as err:
        raise SystemExit(f"error: {err}") from None
    if len(rest) > 1:
        raise SystemExit(f"error: unexpected arguments: {rest[1:]}")
    return config.value, fv


@command
def main(argv: list[str] | None = None) -> int:
    """The command line (without the program name); returns the exit status."""
    from fgjax.data.datasets import build_source

    config, fv = _parse(list(argv))
    out = fv.out or os.path.join(fv.workdir, "inspect")
    os.makedirs(out, exist_ok=True)
    splits = (
        fv.splits.split(",") if fv.splits else [config.data.train_split, config.data.test_split]
    )
    num_workers = config.data.num_workers if fv.num_workers is None else fv.num_workers
    report: dict = {"kind": config.data.kind, "root": config.data.root, "splits": {}}
    bad: list[tuple[str, BadImage]] = []
    for split in dict.fromkeys(s.strip() for s in splits if s.strip()):
        source = build_source(config.data, split)
        summary = summarize(source, seed=config.seed, show_progress=True)
        summary["contact_sheet"] = os.path.join(out, f"contact_{split}.png")
        contact_sheet(source, summary["contact_sheet"], seed=config.seed)
        print(format_summary(summary))
        print(f"  contact sheet: {summary['contact_sheet']}")
        if fv.verify:
            found = find_bad_images(source, num_workers, image_size=config.data.image_size)
            summary["bad_images"] = len(found)
            bad.extend((split, b) for b in found)
            print(f"  verify: {len(found)} of {len(source)} images do not decode")
        report["splits"][split] = summary
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(report, f, indent=1)
    if not fv.verify:
        return 0
    lines = [f"{split}\t{b.path}\t{b.reason}" for split, b in bad]
    with open(os.path.join(out, "bad_images.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines))
    for line in lines:
        print(f"bad image: {line}")
    print(f"{len(bad)} bad image(s); list in {os.path.join(out, 'bad_images.txt')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
