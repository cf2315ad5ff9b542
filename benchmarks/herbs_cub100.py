"""HERBS on the CUB-100 crops from scratch, on a CPU: a tiny Swin + HERBS head, several seeds.

    python benchmarks/herbs_cub100.py --out runs/herbs_cub100 [--seeds 0 1 2] [--epochs 25]

configs/cub_herbs.py shrunk so a 2-core CPU trains it: a 4-stage Swin of width 32 (depths
1-1-2-1, heads 1-2-4-8, window 4) on 64 px crops taken from an 85 x 85 squash (HERBS'
510 / 384 ratio), HERBS head with D = 128, K = 16/8/2/2 and 4 tokens per graph node (7
nodes, as HERBS), random initialisation, and a peak lr of 0.02 instead of 5e-4 (HERBS
fine-tunes a pretrained Swin-L; from scratch its lr barely moves the network). Everything
else is the recipe's: the loss and its weights, T = 64 halved every 10 epochs, SGD
Nesterov with coupled weight decay, micro-batches of 8 x 4 with each epoch's ragged last
group, the per-micro-batch linspace warm-up (2 epochs) + whole-run cosine, the squash +
random crop, blur and sharpness augmentations, the squash + centre-crop test transform and
the evaluation schedule (after epoch 1, every 10, every 2 from 80 %, every one from 90 %).

Data: `../shared/data/cub100_crops227` (100 species, official split: 2,999 train and 2,903
test bounding-box crops) through a CSV manifest written into OUT, labelled by species name
with the bird family (last word of the name) as the coarse level.

Each run lives in OUT/seed<N>; a killed script resumes (finished runs are skipped, others
resume from their checkpoints). Each run then gets its classification report
(`python -m fgjax.cli.report --groups coarse`: the bird families as HERBS' groups, in
OUT/seed<N>/report) and heat maps (`python -m fgjax.cli.heatmap`,
OUT/seed<N>/heatmap.png). OUT/summary.md gets the table (mean +- std over seeds) of the
9-head vote, the combiner and every head, and the outer errors; OUT/curves.png the vote
top-1 over epochs.
"""

from __future__ import annotations

import json
import os
import sys
import time

import ml_collections
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from cub100 import arguments, prepare, read_json  # noqa: E402

from fgjax.bench.presets import HERBS_HEAD, HERBS_SWIN  # noqa: E402
from fgjax.config import load_config_file  # noqa: E402

HEADS = (
    [("herbs/vote/top1", "9-head vote"), ("herbs/comb_outs/top1", "combiner")]
    + [(f"herbs/layer{k}/top1", f"layer{k}") for k in range(1, 5)]
    + [(f"herbs/FPN1_layer{k}/top1", f"FPN1_layer{k}") for k in range(1, 5)]
)


def small_config(manifest: str, seed: int, epochs: int) -> ml_collections.ConfigDict:
    c = load_config_file(os.path.join(REPO, "configs", "cub_herbs.py"))
    c.seed = seed
    c.data.kind = "csv"
    c.data.root = manifest
    c.data.coarse = "coarse_label"
    c.data.image_size = 64
    c.data.eval_squash_size = 85  # 64 * 510 / 384
    c.data.num_workers = 1
    c.views.view1.size = 64
    c.views.view1.squash_size = 85
    c.eval.class_groups = ""  # HERBS' groups are CUB-200 class ids
    c.model.arch = "swin_tiny_patch4_window7_224"
    c.model.overrides = ml_collections.ConfigDict(dict(**HERBS_SWIN, img_size=64))
    c.model.remat = False
    c.model.dtype = "float32"
    c.herbs.update(HERBS_HEAD)  # the same shrink as `fgjax table`'s cpu preset
    c.optim.lr = 0.02
    c.train.num_epochs = epochs
    c.train.checkpoint_every_steps = 188  # 2 epochs of 94 steps
    c.train.log_every_steps = 47
    c.train.progress_bar = False
    c.eval.batch_size = 128
    return c


def run_one(seed: int, args) -> str:
    from fgjax.train.loop import train_and_evaluate

    workdir = os.path.join(args.out, f"seed{seed}")
    if not os.path.exists(os.path.join(workdir, "eval.json")):
        start = time.time()
        config = small_config(os.path.join(args.out, "manifest.csv"), seed, args.epochs)
        train_and_evaluate(config, workdir)
        print(f"seed {seed}: trained in {time.time() - start:.0f} s", flush=True)
    metrics_path = os.path.join(workdir, "report", "metrics.json")
    if not os.path.exists(metrics_path):  # the vote's report, the families as groups
        from fgjax.cli.report import main as report

        metrics = report(["--workdir", workdir, "--groups", "coarse"])
        with open(metrics_path, "w") as f:
            json.dump(metrics, f, indent=1)
    if not os.path.exists(os.path.join(workdir, "heatmap.png")):
        from fgjax.cli.heatmap import main as heatmap

        heatmap(["--workdir", workdir, "--num", "8"])
    return workdir


def summarize(args) -> str:
    found = [
        read_json(p)
        for s in args.seeds
        if os.path.exists(p := os.path.join(args.out, f"seed{s}", "eval.json"))
    ]
    rows = []
    for key, title in HEADS:
        values = 100 * np.array([r[key] for r in found])
        rows.append(f"| {title} | {len(found)} | {values.mean():.2f} ± {values.std():.2f} |")
    table = "\n".join(["| head | seeds | top-1 (%) |", "|---|---|---|", *rows])
    best = [r["best"] for r in found if r.get("best")]
    if best:
        top = 100 * np.array([b["herbs/vote/top1"] for b in best])
        epochs = ", ".join(f"{b['epoch']:g}" for b in best)
        table += (
            f"\n\nBest evaluation of the vote (eval.json's `best`, as the original selects on "
            f"the test split): {top.mean():.2f} ± {top.std():.2f} (epochs {epochs})."
        )
    reports = [
        read_json(p)
        for s in args.seeds
        if os.path.exists(p := os.path.join(args.out, f"seed{s}", "report", "metrics.json"))
    ]
    if reports:
        outer = np.array([r["outer_errors"] for r in reports])
        counts = {k[: -len("/count")]: v for k, v in reports[0].items() if k.endswith("/count")}
        grouped = sum(counts.values())
        table += (
            f"\n\nOuter errors (test images predicted as a species of another family; "
            f"{len(counts)} families, {grouped:.0f} test images): "
            f"{outer.mean():.0f} ± {outer.std():.0f} over {len(reports)} seeds."
        )
        largest = sorted(counts, key=counts.get, reverse=True)[:6]
        cells = []
        for name in largest:
            acc = 100 * np.array([r[f"{name}/accuracy"] for r in reports])
            err = np.array([r[f"{name}/outer_errors"] for r in reports])
            cells.append(
                f"| {name} | {counts[name]:.0f} | {acc.mean():.1f} ± {acc.std():.1f} | "
                f"{err.mean():.1f} ± {err.std():.1f} |"
            )
        table += "\n\n| family | test images | accuracy within (%) | outer errors |\n"
        table += "|---|---|---|---|\n" + "\n".join(cells)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    _plot_curves(args)
    return table


def _plot_curves(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, s in enumerate(args.seeds):
        path = os.path.join(args.out, f"seed{s}", "eval_history.json")
        if os.path.exists(path):
            history = read_json(path)
            for key, style in (("herbs/vote/top1", "-o"), ("herbs/comb_outs/top1", "--")):
                ax.plot(
                    [e["epoch"] for e in history],
                    [100 * e[key] for e in history],
                    style,
                    color=f"C{i}",
                    label=f"seed {s} {key.split('/')[1]}",
                )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("HERBS, tiny Swin from scratch, CUB-100 (64 px)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    p = arguments(__doc__.split("\n")[0], out="runs/herbs_cub100")
    args = p.parse_args()
    prepare(args, names=True)
    for seed in args.seeds:
        run_one(seed, args)
    print(summarize(args))


if __name__ == "__main__":
    main()
