"""Soak: the demo trained for thousands of steps while its memory, open files and processes
are sampled from outside, across its checkpoint and evaluation cycles.

    python benchmarks/soak.py --out runs/soak [--epochs 200] [--eval-every 10]

Runs `python -m fgjax.cli.train --config configs/demo.py` (15 steps an epoch, a checkpoint every
100 steps, an evaluation every `--eval-every` epochs; its 2 grain workers) and samples, every
`--interval` seconds: the trainer's resident memory (VmRSS), its open file descriptors and
threads, and the processes below it (count and total VmRSS), with the step metrics.jsonl has
reached. Writes OUT/samples.csv, OUT/soak.png and OUT/summary.md: the memory after warm-up
(10 % of the steps) and at the end, the least-squares slope over the second half (MiB per
1,000 steps), the range of descriptors and processes, and whether any process outlived the
trainer.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("seconds", "step", "rss_mib", "fds", "threads", "children", "children_rss_mib")


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _kib(value: str) -> float:
    return float(value.split()[0])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (by parent links in /proc)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            parents.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _last_step(metrics: str) -> int:
    """The step of metrics.jsonl's last complete record (0 before the first)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, os.path.getsize(metrics) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def sample(pid: int, metrics: str, start: float) -> dict[str, float] | None:
    try:
        status = _status(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    if "VmRSS" not in status:  # exited, not yet reaped
        return None
    children = descendants(pid)
    child_rss = 0.0
    for child in children:
        try:
            child_rss += _kib(_status(child).get("VmRSS", "0 kB"))
        except OSError:
            pass
    return {
        "seconds": time.time() - start,
        "step": _last_step(metrics),
        "rss_mib": _kib(status["VmRSS"]) / 1024,
        "fds": fds,
        "threads": int(status["Threads"]),
        "children": len(children),
        "children_rss_mib": child_rss / 1024,
    }


def soak(args: argparse.Namespace) -> list[dict[str, float]]:
    workdir = os.path.join(args.out, "run")
    command = [
        sys.executable,
        "-m",
        "fgjax.cli.train",
        "--config=configs/demo.py",
        f"--workdir={workdir}",
        f"--config.train.num_epochs={args.epochs}",
        f"--config.eval.every_epochs={args.eval_every}",
        "--config.train.progress_bar=False",
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    log = open(os.path.join(args.out, "train.log"), "w")
    start = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    rows, seen = [], set()
    metrics = os.path.join(workdir, "metrics.jsonl")
    while proc.poll() is None:
        row = sample(proc.pid, metrics, start)
        if row is not None:
            rows.append(row)
            seen.update(descendants(proc.pid))
        time.sleep(args.interval)
    log.close()
    if proc.returncode != 0:
        sys.exit(f"the run failed (status {proc.returncode}); see {log.name}")
    time.sleep(2.0)  # a grace for workers to notice their parent is gone
    alive = [p for p in seen if os.path.exists(f"/proc/{p}")]
    with open(os.path.join(args.out, "samples.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summarize(rows, alive, args)
    return rows


def summarize(rows: list[dict[str, float]], alive: list[int], args: argparse.Namespace) -> str:
    steps = np.array([r["step"] for r in rows], float)
    total = steps.max()
    # Training only (the final evaluation runs at the last step, after the workers end).
    warm = (steps >= 0.1 * total) & (steps < total)
    late = (steps >= 0.5 * total) & (steps < total)
    rss = np.array([r["rss_mib"] for r in rows])
    kids = np.array([r["children_rss_mib"] for r in rows])
    slope = np.polyfit(steps[late], rss[late], 1)[0] * 1000 if late.sum() > 2 else float("nan")
    kid_slope = np.polyfit(steps[late], kids[late], 1)[0] * 1000 if late.sum() > 2 else 0.0

    def span(key: str) -> str:
        values = [r[key] for r, w in zip(rows, warm, strict=True) if w]
        return f"{min(values):g}-{max(values):g}"

    lines = [
        f"steps: {int(total)} in {rows[-1]['seconds']:.0f} s ({len(rows)} samples)",
        f"trainer RSS: {rss[warm][0]:.0f} MiB after warm-up, {rss[warm][-1]:.0f} MiB at the "
        "last training step, "
        f"max {rss.max():.0f} MiB; slope over the second half {slope:+.2f} MiB / 1,000 steps",
        f"workers RSS (total): {kids[warm][0]:.0f} -> {kids[warm][-1]:.0f} MiB; "
        f"slope {kid_slope:+.2f} MiB / 1,000 steps",
        f"open descriptors after warm-up: {span('fds')}; threads: {span('threads')}; "
        f"processes below the trainer: {span('children')}",
        f"processes alive 2 s after the trainer exited: {len(alive)}",
    ]
    text = "\n".join(lines)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    _plot(rows, args)
    print(text)
    return text


def _plot(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].plot(steps, [r["rss_mib"] for r in rows], label="trainer")
    axes[0].plot(steps, [r["children_rss_mib"] for r in rows], label="grain workers (sum)")
    axes[0].set_ylabel("resident memory (MiB)")
    axes[1].plot(steps, [r["fds"] for r in rows], label="open descriptors")
    axes[1].plot(steps, [r["threads"] for r in rows], label="threads")
    axes[1].plot(steps, [r["children"] for r in rows], label="processes below")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"demo soak: checkpoints every 100 steps, evaluations every {args.eval_every} epochs"
    )
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "soak.png"), dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/soak")
    p.add_argument("--epochs", type=int, default=200, help="demo epochs (15 steps each)")
    p.add_argument("--eval-every", type=int, default=10, help="evaluate every N epochs")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(os.path.join(args.out, "run")):
        sys.exit(f"{args.out}/run exists: give a fresh --out (a soak starts from step 0)")
    soak(args)


if __name__ == "__main__":
    main()
