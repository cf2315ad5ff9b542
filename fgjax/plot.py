"""Draw a run's training curves: `python -m fgjax.plot WORKDIR [--out FILE.png]`.

One panel per metric in `WORKDIR/metrics.jsonl` (loss, learning rate, images/s,
method-specific ones), against the training step; the final evaluation from
`eval.json`, if present, goes in the title.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fgjax.train.metrics_log import read_metrics  # noqa: E402


def plot_curves(workdir: str, out: str | None = None) -> str:
    """Write the PNG and return its path (default `WORKDIR/curves.png`)."""
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        raise FileNotFoundError(f"no metrics.jsonl in {workdir}: has this run logged a step yet?")
    records = read_metrics(workdir)
    names = [k for k in records[0] if k not in ("step", "epoch")]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, name in zip(axes.flat, names, strict=False):
        ax.plot(steps, [r.get(name, math.nan) for r in records], lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    eval_path = os.path.join(workdir, "eval.json")
    if os.path.exists(eval_path):
        with open(eval_path) as f:
            final = json.load(f)
        shown = {k: v for k, v in final.items() if isinstance(v, float)}
        fig.suptitle("  ".join(f"{k}={v:.3f}" for k, v in list(shown.items())[:5]), fontsize=9)
    fig.tight_layout()
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    print(plot_curves(args.workdir, args.out))


if __name__ == "__main__":
    main()
