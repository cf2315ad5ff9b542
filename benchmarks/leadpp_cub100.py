"""LEAD++ vs MoCo v2 and MoCo v2 + LCR on the CUB-100 crops, from scratch, same budget.

    python benchmarks/leadpp_cub100.py --out runs/leadpp_cub100 \\
        --baseline runs/lcr_cub100 --vocab bpe_simple_vocab_16e6.txt.gz [--seeds 0 1] [--epochs 25]

configs/cub_leadpp.py shrunk exactly as lcr_cub100.py shrinks MoCo and LCR
(`cub100.shrink_config`: width-8 ResNet-50, one block per stage, 64 px, batch 64,
512-512-128 head, queues of 1024, m 0.99, lr 0.06, same seeds, epochs and images);
everything else is the recipe's (T 0.27, alpha 0.5, beta 20, tau_d 0.02, 3 key EMA
updates a step, coupled weight decay 5e-4, ...). The MoCo and LCR runs are read from
--baseline (lcr_cub100.py's OUT), not retrained.

LEAD++'s three external inputs are stand-ins, built into OUT first:
- DDT crops (views 3 and 4): `python -m fgjax.cli.ddt` with the backbone of the baseline's
  MoCo seed-0 run (exported with `python -m fgjax.weights convert`) instead of the
  supervised ImageNet ResNet-50 we lack; fit and locate sizes scaled with the image size
  (512 and 448 px at 224 become 146 and 128 px at 64). Crops of every train and test
  image under OUT/ddt at the images' paths relative to the data folder.
- The CLIP teacher: a random-init ViT (width 64, 2 layers, 4 heads, patch 8, 64 px in,
  128-d out): no CLIP weights are at hand; the run prints a WARNING.
- The text prototypes [100, 128]: the species names ("a photo of a Black footed
  Albatross, a type of bird.") through a random-init CLIP text tower (width 64, 2
  layers, 128-d) with CLIP's BPE tokenizer (--vocab).

Each run lives in OUT/leadpp/seed<N> (retrieval every 5 epochs = the curves), then
`python -m fgjax.eval` on the original test crops (not the DDT crops), as lcr_cub100.py:
OUT/.../eval with LEAD++'s default embedding (GAP, the original's retrieval feature) and
OUT/.../eval_rationale with `--config.leadpp.embed_feature=rationale` (LCR's mask-weighted
descriptor, the original's linear-probe feature). A killed script resumes. OUT/summary.md
gets the table (mean +- std over seeds, then per seed, then the periodic retrieval) and
OUT/curves.png the curves. The table's first row, "untrained", is the same evaluation of
random-init backbones (OUT/untrained/seed<N>): the floor the training has to beat.

`--ablation beta0` also trains LEAD++ without its distillation term (beta 0, everything
else equal) into OUT/leadpp_beta0/seed<N>: is a collapse the random prototypes' pull?
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
from lcr_cub100 import METRICS  # noqa: E402

from fgjax.config import load_config_file  # noqa: E402

BASELINES = ("moco", "lcr")  # lcr_cub100.py's variants compared with (lcr = faithful preset)
# LEAD++ variants (OUT/<name>/seed<N>) and the config.leadpp fields they change.
ABLATIONS = {"leadpp_beta0": {"beta": 0.0}}
# The random-init towers (teacher and text); embed_dim must equal the shrunk head's dim.
TEACHER = dict(width=64, layers=2, heads=4, patch_size=8, img_size=64, embed_dim=128)
TEXT = dict(width=64, layers=2, heads=4, embed_dim=128)
DDT_SIZES = ("--fit-size", "146", "--locate-size", "128")  # 512 and 448 scaled by 64 / 224
# (folder under a run, eval feature, extra overrides, row label)
EVALS = {
    "untrained": (("eval", "pooled", [], "GAP, random init"),),
    "moco": (("eval", "pooled", [], "embedding (GAP)"),),
    "lcr": (
        ("eval", "pooled", [], "embedding (attention)"),
        ("eval_gap", "stage4", [], "pooled (GAP)"),
    ),
    "leadpp": (
        ("eval", "pooled", [], "embedding (GAP)"),
        (
            "eval_rationale",
            "pooled",
            ["--config.leadpp.embed_feature=rationale"],
            "rationale (mask-weighted)",
        ),
    ),
    "leadpp_beta0": (("eval", "pooled", [], "embedding (GAP), no distillation"),),
}


def data_config(args, seed: int, epochs: int, recipe: str = "cub_moco.py"):
    """`recipe` shrunk (`shrink_config`) over OUT's manifest, its relative image paths
    hanging from --data (`csv_root`): the root DDT writes parallel to and views 3/4 read."""
    c = load_config_file(os.path.join(REPO, "configs", recipe))
    c = shrink_config(c, os.path.join(args.out, "manifest.csv"), seed, epochs)
    c.data.csv_root = os.path.abspath(args.data)
    return c


def leadpp_config(args, seed: int):
    c = data_config(args, seed, args.epochs, "cub_leadpp.py")
    c.model.init_from = ""  # from scratch, as the MoCo and LCR runs (no ImageNet weights)
    for name in ("view3", "view4"):
        c.views[name].root = os.path.join(args.out, "ddt")
    s = c.leadpp
    s.teacher_arch = "clip_vit_b16"
    s.teacher_overrides = TEACHER
    s.teacher_weights = ""  # random init: the run prints a WARNING
    s.prototypes = os.path.join(args.out, "prototypes.npy")
    s.num_classes = 100
    return c


def recipe_file(args) -> str:
    """OUT/recipe.py: `data_config` as a recipe file, for the CLIs that read one."""
    path = os.path.join(args.out, "recipe.py")
    with open(path, "w") as f:
        f.write(
            "import argparse, sys\n"
            f"sys.path.insert(0, {HERE!r})\n"
            "from leadpp_cub100 import data_config\n\n\n"
            "def get_config():\n"
            f"    args = argparse.Namespace(out={args.out!r}, data={args.data!r})\n"
            "    return data_config(args, 0, 1)\n"
        )
    return path


def make_ddt_crops(args) -> None:
    """OUT/ddt: the DDT crops of every image, from the baseline's MoCo seed-0 backbone."""
    from fgjax.cli.ddt import ddt
    from fgjax.cli.weights import main as weights_cli

    out = os.path.join(args.out, "ddt")
    if os.path.exists(os.path.join(out, "boxes.tsv")):
        return
    weights = os.path.join(args.out, "moco_seed0_backbone.npz")
    if not os.path.exists(weights):
        source = os.path.join(args.baseline, "moco", "seed0")
        weights_cli(["convert", source, weights, "--arch", "resnet", "--to", "fgjax"])
    recipe = recipe_file(args)
    start = time.time()
    ddt(["--config", recipe, "--out", out, "--weights", weights, *DDT_SIZES])
    print(f"ddt crops in {time.time() - start:.0f} s", flush=True)


def make_prototypes(args) -> None:
    """OUT/prototypes.npy [100, 128]: the species names through a random-init text tower."""
    import jax

    from fgjax.methods.leadpp.text import BPETokenizer
    from fgjax.methods.leadpp.text.prototypes import embed_texts
    from fgjax.models.clip import CLIPTextTower

    path = os.path.join(args.out, "prototypes.npy")
    if os.path.exists(path):
        return
    with open(os.path.join(args.data, "classes.txt")) as f:
        names = dict(line.strip().split(", ", 1) for line in f if line.strip())
    texts = [
        f"a photo of a {names[str(i)].replace('_', ' ')}, a type of bird."
        for i in range(len(names))
    ]
    tokenizer = BPETokenizer(args.vocab)
    tower = CLIPTextTower(vocab_size=tokenizer.vocab_size, **TEXT)
    ids = tokenizer(texts)
    variables = jax.jit(tower.init)(jax.random.key(0), ids[:1])
    np.save(path, embed_texts(tower, variables, ids))


def untrained_reference(seed: int, args) -> None:
    """OUT/untrained/seed<N>/eval: the same evaluation of an untrained backbone (a random
    init from PRNG key N, GAP; not the runs' exact starting weights), the floor any
    training has to beat, and how much random features vary."""
    import jax
    import jax.numpy as jnp

    from fgjax.cli.eval import evaluate
    from fgjax.models.factory import backbone_from_config
    from fgjax.weights.load import save_variables

    out = run_dir("untrained", seed, args)
    if os.path.exists(os.path.join(out, "eval", "eval.json")):
        return
    config = data_config(args, seed, 1)
    x = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
    variables = backbone_from_config(config.model).init(jax.random.key(seed), x, train=False)
    weights = os.path.join(out, "backbone.npz")
    os.makedirs(out, exist_ok=True)
    save_variables(weights, {k: variables[k] for k in ("params", "batch_stats")})
    evaluate(
        ["--config", recipe_file(args), "--init-from", weights, "--protocol", "retrieval,linear"]
        + ["--out", os.path.join(out, "eval"), "--no-plots", "--config.eval.recall_ks=(1,5)"]
    )


def run_one(seed: int, args, variant: str = "leadpp") -> str:
    from fgjax.cli.eval import evaluate
    from fgjax.train.loop import train_and_evaluate

    workdir = os.path.join(args.out, variant, f"seed{seed}")
    if not os.path.exists(os.path.join(workdir, "eval.json")):
        config = leadpp_config(args, seed)
        for field, value in ABLATIONS.get(variant, {}).items():
            config.leadpp[field] = value
        start = time.time()
        train_and_evaluate(config, workdir)
        print(f"{variant} seed {seed}: trained in {time.time() - start:.0f} s", flush=True)
    for folder, feature, overrides, _ in EVALS[variant]:
        if not os.path.exists(os.path.join(workdir, folder, "eval.json")):
            evaluate(
                ["--workdir", workdir, "--protocol", "retrieval,linear", "--features", feature]
                + ["--out", os.path.join(workdir, folder), "--no-plots"]
                + ["--config.eval.recall_ks=(1,5)", *overrides]
            )
    return workdir


def run_dir(variant: str, seed: int, args) -> str:
    out = args.baseline if variant in BASELINES else args.out
    return os.path.join(out, variant, f"seed{seed}")


def summarize(args) -> str:
    mean_rows, seed_rows, curves = [], [], {}
    for variant, evals in EVALS.items():
        for folder, _, _, label in evals:
            found = {}
            for s in args.seeds:
                path = os.path.join(run_dir(variant, s, args), folder, "eval.json")
                if os.path.exists(path):
                    found[s] = [100 * read_json(path)[key] for key, _ in METRICS]
            if not found:
                continue
            values = np.array(list(found.values()))
            cells = [
                f"{m:.2f} ± {d:.2f}" for m, d in zip(values.mean(0), values.std(0), strict=True)
            ]
            mean_rows.append(f"| {variant} | {label} | {len(found)} | " + " | ".join(cells) + " |")
            for s, row in found.items():
                cells = " | ".join(f"{v:.2f}" for v in row)
                seed_rows.append(f"| {variant} | {label} | {s} | {cells} |")
        histories = {
            s: os.path.join(run_dir(variant, s, args), "eval_history.json") for s in args.seeds
        }
        curves[variant] = {s: read_json(p) for s, p in histories.items() if os.path.exists(p)}
    titles = " | ".join(t for _, t in METRICS)
    rule = "|" + "---|" * (3 + len(METRICS))
    table = "\n".join(
        [f"| variant | feature | seeds | {titles} |", rule, *mean_rows, ""]
        + [f"| variant | feature | seed | {titles} |", rule, *seed_rows, ""]
        + _periodic_table(curves)
    )
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    _plot_curves(curves, args)
    return table


def _periodic_table(curves: dict[str, dict[int, list[dict]]]) -> list[str]:
    """Rows of the training's own retrieval on test (each method's embedding), rank-1 /
    mAP (%) at every periodic epoch: it also compares unfinished runs."""
    epochs = sorted({e["epoch"] for runs in curves.values() for r in runs.values() for e in r})
    rows = ["| variant | seed | " + " | ".join(f"epoch {e:g}" for e in epochs) + " |"]
    rows.append("|" + "---|" * (2 + len(epochs)))
    for variant, runs in curves.items():
        for seed, run in runs.items():
            at = {e["epoch"]: e for e in run}
            cells = [
                f"{100 * at[e]['retrieval_recall@1']:.2f} / {100 * at[e]['retrieval_map']:.2f}"
                if e in at
                else "–"
                for e in epochs
            ]
            rows.append(f"| {variant} | {seed} | " + " | ".join(cells) + " |")
    return rows


def _plot_curves(curves: dict[str, dict[int, list[dict]]], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fgjax.train.metrics_log import read_metrics

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for variant, by_seed in curves.items():
        runs = list(by_seed.values())
        if not runs:
            continue
        # Each epoch: mean and std over the runs that reached it (an unfinished run counts
        # for its epochs only).
        epochs = sorted({e["epoch"] for run in runs for e in run})
        for ax, key in zip(axes[:2], ("retrieval_recall@1", "retrieval_map"), strict=True):
            at = [[100 * e[key] for run in runs for e in run if e["epoch"] == x] for x in epochs]
            mean, std = np.array([np.mean(v) for v in at]), np.array([np.std(v) for v in at])
            ax.plot(epochs, mean, marker="o", label=f"{variant} ({len(runs)} seeds)")
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
            ax.set_title(f"{key} (test, %), mean ± std over seeds")
            ax.set_xlabel("epoch")
    for s, style in zip(args.seeds, ("--", ":", "-."), strict=False):
        untrained = os.path.join(run_dir("untrained", s, args), "eval", "eval.json")
        if os.path.exists(untrained):
            floor = read_json(untrained)
            for ax, key in zip(axes[:2], ("retrieval_recall@1", "retrieval_map"), strict=True):
                label = f"untrained (key {s})"
                ax.axhline(100 * floor[key], color="gray", linestyle=style, label=label)
    for variant in ("leadpp", *ABLATIONS):
        for s in args.seeds:
            workdir = run_dir(variant, s, args)
            if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
                log = [r for r in read_metrics(workdir) if "teacher_entropy" in r]
                steps, entropy = [r["step"] for r in log], [r["teacher_entropy"] for r in log]
                axes[2].plot(steps, entropy, label=f"{variant} seed {s}")
    axes[2].set_title("LEAD++ teacher entropy H / log C (random-init teacher)")
    axes[2].set_xlabel("step")
    save_curves(fig, axes, os.path.join(args.out, "curves.png"))


def main() -> None:
    p = arguments(__doc__.split("\n")[0], out="runs/leadpp_cub100")
    p.add_argument("--baseline", default="runs/lcr_cub100", help="lcr_cub100.py's OUT")
    p.add_argument(
        "--vocab",
        required=True,
        help="CLIP's bpe_simple_vocab_16e6.txt.gz (shipped with open_clip and OpenAI's clip)",
    )
    p.add_argument("--summary-only", action="store_true", help="only the table and curves")
    p.add_argument(
        "--ablation",
        action="append",
        default=[],
        choices=[name.removeprefix("leadpp_") for name in ABLATIONS],
        help="also train this LEAD++ variant (beta0: no distillation term)",
    )
    p.set_defaults(seeds=[0, 1])
    args = p.parse_args()
    if not args.summary_only:
        if not os.path.exists(os.path.join(args.baseline, "moco", "seed0", "eval.json")):
            sys.exit(f"{args.baseline}: no finished MoCo seed-0 run (run lcr_cub100.py first)")
        prepare(args)
        make_ddt_crops(args)
        make_prototypes(args)
        for seed in args.seeds:
            untrained_reference(seed, args)
            run_one(seed, args)
            for name in args.ablation:
                run_one(seed, args, f"leadpp_{name}")
    print(summarize(args))


if __name__ == "__main__":
    main()
