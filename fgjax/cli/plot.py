"""Draw a run's training curves: `fgjax plot WORKDIR [--out FILE.png]`.

One panel per metric in `WORKDIR/metrics.jsonl` (loss, learning rate, images/s,
method-specific ones), against the training step; the final evaluation from
`eval.json`, if present, goes in the title.

`fgjax plot --recall RUN [RUN ...] --out recall.png` draws the Recall@K curves
of several runs in one picture; a RUN is an eval.json, or a folder holding one (a training
workdir, or the `WORKDIR/eval` folder `fgjax eval` writes).
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fgjax.core.cli import command
from fgjax.eval.figures import recall_curve  # noqa: E402
from fgjax.train.metrics_log import read_metrics  # noqa: E402


def plot_curves(workdir: str, out: str | None = None) -> str:
    """Write the PNG and return its path (default `WORKDIR/curves.png`)."""
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        raise FileNotFoundError(f"no metrics.jsonl in {workdir}: has this run logged a step yet?")
    records = read_metrics(workdir)
    # Every metric of any record: epoch hooks log theirs only at an epoch's first step.
    names = list(dict.fromkeys(k for r in records for k in r if k not in ("step", "epoch")))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        logged = [r for r in records if name in r]
        steps = [r["step"] for r in logged]
        values = [r[name] for r in logged]
        sparse = len(logged) < len(records) / 2  # per-epoch metrics: mark the points
        if isinstance(values[0], list):  # one line per entry, e.g. per coarse class
            for i, line in enumerate(zip(*values, strict=True)):
                ax.plot(steps, line, lw=1.0, marker="." if sparse else None, label=str(i))
            if len(values[0]) <= 10:
                ax.legend(fontsize=6, ncol=2)
        else:
            ax.plot(steps, values, lw=1.2, marker="." if sparse else None)
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


def read_eval(run: str) -> dict:
    """The eval.json of `run`: the file itself, or `run/eval.json`, or `run/eval/eval.json`."""
    for path in (run, os.path.join(run, "eval.json"), os.path.join(run, "eval", "eval.json")):
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    raise FileNotFoundError(f"no eval.json at {run} (nor in {run}/eval)")


@command
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?")
    parser.add_argument("--recall", nargs="+", metavar="RUN", help="Recall@K curves of runs")
    parser.add_argument(
        "--out", default=None, help="PNG path (default WORKDIR/curves.png, or recall.png)"
    )
    args = parser.parse_args(argv)
    if args.recall:
        if args.workdir:
            parser.error("give either WORKDIR (training curves) or --recall RUN ...")
        runs = {run: read_eval(run) for run in args.recall}
        print(recall_curve(args.out or "recall.png", runs))
    elif args.workdir:
        print(plot_curves(args.workdir, args.out))
    else:
        parser.error("give WORKDIR, or --recall RUN [RUN ...]")


if __name__ == "__main__":
    main()
