"""Images/s of fgjax's supervised, MoCo v2, BYOL, LCR and BuCSFR train steps (ResNet-50,
224 px, global batch 256, bfloat16 compute), and end-to-end throughput with JPEG decoding.
BuCSFR's step is timed in its main phase (SFR with Cars' 1,000 clusters, not the warm-up).

Run on the accelerator host (see benchmarks/run_gpu.sh, which also runs the PyTorch
reference `torch_train_step.py` in the same session):

    python benchmarks/train_step.py --which supervised,moco,byol,lcr --out jax.json
    python benchmarks/train_step.py --which moco --jpeg-csv /path/manifest.csv  # + data

Step timing feeds a pre-sharded synthetic uint8 batch (the photometric augmentation
still runs inside the step, as in training); `--jpeg-csv` adds a run fed by the grain
pipeline (decode + RandomResizedCrop on the host CPUs) to measure the whole input path,
with its rate relative to the synthetic one (`vs_synthetic`; issue #11's goal >= 0.9).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fgjax.config import (  # noqa: E402
    default_config,
    load_config_file,
    photometric_spec,
    view_spec,
)
from fgjax.core.sharding import global_batch, make_mesh, put_replicated  # noqa: E402
from fgjax.methods import RunInfo, build_method  # noqa: E402
from fgjax.train import optim  # noqa: E402
from fgjax.train.state import create_train_state  # noqa: E402
from fgjax.train.step import jit_train_step, make_train_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# supervised: the library default; lcr: MoCo v2 + LCR (faithful), its overhead over moco.
RECIPES = {
    "moco": "cub_moco.py",
    "byol": "cub_byol.py",
    "lcr": "cub_lcr.py",
    "bucsfr": "cars_bucsfr.py",
}
CARS_BODY_TYPES = 8


def clustered(method, state, seed: int = 0):
    """BuCSFR's state after a BuC step: every leaf live, random unit centroids and
    assignments, a queue labelled with random coarse classes (so its SFR branch runs)."""
    rng = np.random.default_rng(seed)
    m = state.method_state
    centroids = rng.normal(size=m["centroids"].shape).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    clusters = m["clusters_per_class"]
    update = {
        "clustered": np.ones((), np.int32),
        "centroids": centroids,
        "im2cluster": rng.integers(0, len(centroids), m["im2cluster"].shape).astype(np.int32),
        "queue_coarse": rng.integers(0, len(clusters), m["queue_coarse"].shape).astype(np.int32),
    }
    return state.replace(method_state={**m, **update})


def build(which: str, batch: int, image_size: int, dtype: str, num_classes: int = 200):
    if which in RECIPES:
        config = load_config_file(os.path.join(REPO, "configs", RECIPES[which]))
    else:
        config = default_config(which)
    config.train.batch_size = batch
    config.data.image_size = image_size
    config.model.dtype = dtype
    config.model.stem_maxpool = True  # the standard ResNet-50 for every step
    run = RunInfo(
        steps_per_epoch=100,
        total_steps=10_000,
        batch_size=batch,
        num_classes=num_classes,
        num_coarse_classes=CARS_BODY_TYPES if which == "bucsfr" else 0,
        num_train_examples=100 * batch,
    )
    method = build_method(config, run)
    schedule = optim.make_schedule(config.optim, batch, steps_per_epoch=100, num_epochs=100)
    tx = optim.make_optimizer(config.optim, schedule)
    mesh = make_mesh()
    state = create_train_state(method, tx, (2, image_size, image_size, 3), seed=0)
    if which == "bucsfr":
        state = clustered(method, state)
    state = put_replicated(state, mesh)
    specs = {name: photometric_spec(config, name) for name in method.view_names}
    step = jit_train_step(make_train_step(method, tx, specs, run), mesh)
    return config, method, mesh, state, step


def time_steps(step, state, batches, warmup: int, steps: int) -> tuple[float, object]:
    """Seconds for `steps` steps after `warmup` untimed ones; `batches` is an iterator."""
    frozen = {}
    for _ in range(warmup):
        state, metrics = step(state, frozen, next(batches))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, frozen, next(batches))
    jax.block_until_ready(metrics)
    return time.perf_counter() - start, state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--which", default="supervised,moco,byol")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--jpeg-csv", default="", help="CSV manifest for the end-to-end run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="")
    args = p.parse_args()

    header = {
        "device": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "batch": args.batch,
        "image_size": args.image_size,
        "dtype": args.dtype,
    }
    results = []
    for which in args.which.split(","):
        config, method, mesh, state, step = build(which, args.batch, args.image_size, args.dtype)
        rng = np.random.default_rng(0)
        shape = (args.batch, args.image_size, args.image_size, 3)
        synthetic = global_batch(
            {
                "views": {
                    name: rng.integers(0, 256, shape, dtype=np.uint8) for name in method.view_names
                },
                "label": rng.integers(0, 200, args.batch).astype(np.int32),
                "coarse_label": np.zeros(args.batch, np.int32),
                "index": np.arange(args.batch, dtype=np.int32),
            },
            mesh,
        )
        seconds, state = time_steps(
            step, state, itertools.repeat(synthetic), args.warmup, args.steps
        )
        unit = "image_pairs_per_s" if which == "byol" else "images_per_s"
        row = {
            **header,
            "step": which,
            "input": "synthetic",
            unit: args.batch * args.steps / seconds,
        }
        print(json.dumps(row), flush=True)
        results.append(row)

        if args.jpeg_csv:
            from fgjax.data.sources import CsvManifestSource
            from fgjax.data.train_loader import make_train_loader

            loader = make_train_loader(
                CsvManifestSource(args.jpeg_csv),
                global_batch_size=args.batch,
                views=[view_spec(config, name) for name in method.view_names],
                seed=0,
                num_workers=args.workers,
            )
            feed = (global_batch(b, mesh) for b in loader)
            seconds, state = time_steps(step, state, feed, args.warmup, args.steps)
            row = {
                **row,
                "input": f"jpeg ({args.workers} workers, {os.path.basename(args.jpeg_csv)})",
                unit: args.batch * args.steps / seconds,
                "vs_synthetic": args.batch * args.steps / seconds / row[unit],
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
