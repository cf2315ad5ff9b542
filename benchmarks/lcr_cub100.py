"""MoCo v2 vs MoCo v2 + LCR (faithful and fixed presets) on the CUB-100 crops, from scratch.

    python benchmarks/lcr_cub100.py --out runs/lcr_cub100 [--seeds 0 1 2] [--epochs 25]

The three recipes (configs/cub_moco.py, cub_lcr.py, cub_lcr_fixed.py) shrunk alike so a
2-core CPU runs them: a width-8 ResNet-50 with one block per stage, 64 px images, no stem
max-pool (4x4 last-stage maps), batch 64, 2048 -> 512-512-128 head, queue 1024 (a third
of the 2,999 training images), key momentum 0.99, lr 0.06 cosine per epoch. Everything
else (augmentations, T 0.2, weight decay, the LCR switches of each preset) is the recipe's.
The seeds, schedule and images are identical across the three.

Data: `../shared/data/cub100_crops227` (100 species, official split: 2,999 train and
2,903 test bounding-box crops), read through a CSV manifest written into OUT.

Each run lives in OUT/<variant>/seed<N>: training with retrieval every 5 epochs (the
curves), then `python -m fgjax.eval` with the retrieval protocol (leave-one-out on
test: Recall@1, hit@5, mAP) and the fast linear probe on the method's embedding (MoCo: the
pooled feature; LCR: its attention-pooled descriptor). An LCR run is also evaluated on its
pooled feature (`stage4`), which separates what the training changed from what the
descriptor adds, and draws its rationale pictures (`python -m fgjax.cli.rationale`).
A killed script resumes: finished runs are skipped, unfinished ones resume from their
checkpoints. OUT/summary.md gets the table (mean +- std over seeds) and OUT/curves.png
the curves.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from cub100 import arguments, prepare, read_json, save_curves, shrink_config  # noqa: E402

from fgjax.config import load_config_file  # noqa: E402

VARIANTS = {"moco": "cub_moco.py", "lcr": "cub_lcr.py", "lcr_fixed": "cub_lcr_fixed.py"}
METRICS = (  # (key in the eval.json of `python -m fgjax.eval`, column title)
    ("retrieval_recall@1", "rank-1"),
    ("retrieval_recall@5", "hit@5"),
    ("retrieval_map", "mAP"),
    ("linear_top1", "linear top-1"),
)


def small_config(variant: str, manifest: str, seed: int, epochs: int):
    c = load_config_file(os.path.join(REPO, "configs", VARIANTS[variant]))
    return shrink_config(c, manifest, seed, epochs)


def run_one(variant: str, seed: int, args) -> str:
    from fgjax.cli.eval import evaluate
    from fgjax.train.loop import train_and_evaluate

    workdir = os.path.join(args.out, variant, f"seed{seed}")
    if not os.path.exists(os.path.join(workdir, "eval.json")):
        start = time.time()
        config = small_config(variant, os.path.join(args.out, "manifest.csv"), seed, args.epochs)
        train_and_evaluate(config, workdir)
        print(f"{variant} seed {seed}: trained in {time.time() - start:.0f} s", flush=True)
    outputs = {"eval": "pooled"}
    if variant != "moco":
        outputs["eval_gap"] = "stage4"
    for folder, feature in outputs.items():
        if not os.path.exists(os.path.join(workdir, folder, "eval.json")):
            evaluate(
                ["--workdir", workdir, "--protocol", "retrieval,linear", "--features", feature]
                + ["--out", os.path.join(workdir, folder), "--no-plots"]
                + ["--config.eval.recall_ks=(1,5)"]
            )
    return workdir


def draw_rationale(variant: str, seed: int, args) -> None:
    from fgjax.cli.rationale import main as rationale

    workdir = os.path.join(args.out, variant, f"seed{seed}")
    picture = os.path.join(workdir, "rationale.png")
    if not os.path.exists(picture):
        rationale(["--workdir", workdir, "--num", "8", "--out", picture])


def summarize(args) -> str:
    rows, curves = [], {}
    for variant in VARIANTS:
        for folder, label in (("eval", "embedding"), ("eval_gap", "pooled (GAP)")):
            paths = [os.path.join(args.out, variant, f"seed{s}", folder) for s in args.seeds]
            found = [
                read_json(f) for p in paths if os.path.exists(f := os.path.join(p, "eval.json"))
            ]
            if not found:
                continue
            cells = []
            for key, _ in METRICS:
                values = 100 * np.array([r[key] for r in found])
                cells.append(f"{values.mean():.2f} ± {values.std():.2f}")
            rows.append(f"| {variant} | {label} | {len(found)} | " + " | ".join(cells) + " |")
        curves[variant] = [
            read_json(os.path.join(args.out, variant, f"seed{s}", "eval_history.json"))
            for s in args.seeds
            if os.path.exists(os.path.join(args.out, variant, f"seed{s}", "eval_history.json"))
        ]
    head = "| variant | feature | seeds | " + " | ".join(t for _, t in METRICS) + " |"
    table = "\n".join([head, "|" + "---|" * (3 + len(METRICS)), *rows])
    path = os.path.join(args.out, "summary.md")
    with open(path, "w") as f:
        f.write(table + "\n")
    _plot_curves(curves, args)
    return table


def _plot_curves(curves: dict[str, list[list[dict]]], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fgjax.train.metrics_log import read_metrics

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for variant, runs in curves.items():
        if not runs:  # a variant not run (--variants)
            continue
        for ax, key in zip(axes[:2], ("retrieval_recall@1", "retrieval_map"), strict=True):
            epochs = [e["epoch"] for e in runs[0]]
            values = 100 * np.array([[e[key] for e in run] for run in runs])
            mean, std = values.mean(0), values.std(0)
            ax.plot(epochs, mean, marker="o", label=variant)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
            ax.set_title(f"{key} (test, %), mean ± std over seeds")
            ax.set_xlabel("epoch")
        if variant != "moco":
            log = read_metrics(os.path.join(args.out, variant, f"seed{args.seeds[0]}"))
            axes[2].plot([r["step"] for r in log], [r["cam_entropy"] for r in log], label=variant)
    axes[2].set_title("Grad-CAM target entropy / log N (1 = uniform)")
    axes[2].set_xlabel("step")
    save_curves(fig, axes, os.path.join(args.out, "curves.png"))


def main() -> None:
    p = arguments(__doc__.split("\n")[0], out="runs/lcr_cub100")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    prepare(args)
    for seed in args.seeds:  # seed-major: a partial sweep already compares the variants
        for variant in args.variants:
            run_one(variant, seed, args)
    for variant in args.variants:
        if variant != "moco":
            draw_rationale(variant, args.seeds[0], args)
    print(summarize(args))


if __name__ == "__main__":
    main()
