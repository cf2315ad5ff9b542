"""`fgjax text build|inspect`: LEAD++ text prototypes.

build    --csv descriptions.csv --weights ViT-B-16.pt --vocab bpe_simple_vocab_16e6.txt.gz
         --out prototypes.npy: the unit-norm CLIP text embedding of every CSV row
         (`fgjax.methods.leadpp.text.build_prototypes`). OUT `.npy`: float32 [C, D]; `.npz`:
         `prototypes` and `class_names`.
inspect  PATH (.pt / .npy / .npz): C, D, the row norms and the mean / max cosine
         between distinct rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from fgjax.core.cli import command
from fgjax.methods.leadpp.text.prototypes import (
    build_prototypes,
    load_prototypes,
    prototype_stats,
    read_descriptions,
)


def _parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="fgjax text", description=doc)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="CLIP text prototypes from a CSV of class descriptions")
    build.add_argument("--csv", required=True, help="header 'class name,description'")
    build.add_argument("--weights", required=True, help="CLIP checkpoint (e.g. ViT-B-16.pt)")
    build.add_argument("--vocab", required=True, help="bpe_simple_vocab_16e6.txt.gz")
    build.add_argument("--out", required=True, help=".npy or .npz")
    build.add_argument("--arch", default="clip_vit_b16")
    build.add_argument("--act", default="quick_gelu", choices=("quick_gelu", "gelu"))
    build.add_argument("--batch-size", type=int, default=64)
    inspect = sub.add_parser("inspect", help="shape, norms and cosines of a prototype file")
    inspect.add_argument("path")
    return parser


def _report(path: str, x: np.ndarray) -> None:
    s = prototype_stats(x)
    print(f"{path}: C={s['classes']} D={s['dim']} norms {s['norm_min']:.4f}..{s['norm_max']:.4f}")
    if s["max_pair"] is not None:  # two rows or more
        i, j = s["max_pair"]
        print(
            f"off-diagonal cosine: mean {s['mean_cosine']:.4f}, max {s['max_cosine']:.4f} "
            f"(rows {i} and {j})"
        )


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "inspect":
        _report(args.path, load_prototypes(args.path))
        return 0
    suffix = os.path.splitext(args.out)[1].lower()
    if suffix not in (".npy", ".npz"):
        raise SystemExit(f"{args.out}: write .npy or .npz")
    x = build_prototypes(
        args.csv,
        args.weights,
        args.vocab,
        args.arch,
        act=args.act,
        batch_size=args.batch_size,
    )
    if suffix == ".npy":
        np.save(args.out, x)
    else:
        np.savez(args.out, prototypes=x, class_names=np.array(read_descriptions(args.csv)[0]))
    _report(args.out, x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
