"""The CUB-100 crops (`../shared/data/cub100_crops227`) as a CSV manifest for fgjax's `csv`
dataset kind: 100 species, official split (2,999 train and 2,903 test bounding-box crops)."""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fgjax.bench.cub100 import write_manifest  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The options every CUB-100 comparison takes: --out, --data, --seeds, --epochs."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=out)
    p.add_argument("--data", default=os.path.join(DATA, "cub100_crops227"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=25)
    return p


def prepare(args: argparse.Namespace, names: bool = False) -> str:
    """Check --data, create --out and write its manifest.csv (see `write_manifest`)."""
    if not os.path.isdir(args.data):
        sys.exit(f"{args.data}: no CUB-100 crops there (give --data)")
    os.makedirs(args.out, exist_ok=True)
    manifest = os.path.join(args.out, "manifest.csv")
    return write_manifest(os.path.abspath(args.data), manifest, names=names)


def save_curves(fig, axes, path: str) -> None:
    """Grid and legend on every panel of a comparison's curves figure, saved to `path`."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def shrink_config(c, manifest: str, seed: int, epochs: int):
    """A CUB-100 recipe `c` (any MoCo-family method) shrunk for a 2-core CPU, in place:
    width-8 ResNet-50 with one block per stage, 64 px, no stem max-pool (4x4 last-stage
    maps), batch 64, 2048 -> 512-512-128 head, queue 1024, key momentum 0.99, lr 0.06,
    2 BN groups, retrieval on test every 5 epochs; the images read from the CSV
    `manifest`. Everything else stays the recipe's. Returns `c`."""
    section = c[c.method]
    c.seed = seed
    c.data.kind = "csv"
    c.data.root = manifest
    c.data.image_size = 64
    c.data.num_workers = 1
    c.model.overrides.stage_sizes = (1, 1, 1, 1)
    c.model.overrides.width = 8
    c.model.dtype = "float32"
    c.model.stem_maxpool = False
    section.hidden_dim = 512
    section.dim = 128
    section.queue_size = 1024
    section.momentum = 0.99
    section.bn_groups = 2
    c.optim.lr = 0.06
    c.train.batch_size = 64
    c.train.num_epochs = epochs
    c.train.checkpoint_every_steps = 230  # 5 epochs of 46 steps
    c.train.log_every_steps = 23
    c.train.progress_bar = False
    c.eval.every_epochs = 5
    c.eval.periodic_map = True
    c.eval.recall_ks = (1, 5)
    c.eval.batch_size = 256
    return c
