"""HERBS' test-split report: the 9-head vote, per-class and per-group accuracy, confusion.

The command: `fgjax report` (fgjax/cli/report.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import ml_collections
import numpy as np

from fgjax.eval.classification import (
    class_accuracies,
    classification_metrics,
    confusion_matrix,
    group_confusion,
    group_members,
    predictions,
)
from fgjax.eval.protocols import CLASS_GROUPS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Groups = Mapping[str, Sequence[int]]
GROUP_CHOICES = (*(k for k in CLASS_GROUPS if k), "coarse", "none")


def coarse_groups(source: Any) -> dict[str, tuple[int, ...]]:
    """`{coarse name: the fine classes of its examples}` of a split with coarse labels."""
    if not source.num_coarse_classes:
        raise ValueError("--groups coarse: the test split has no coarse labels")
    groups = {}
    for k, name in enumerate(source.coarse_names):
        members = np.unique(source.labels[source.coarse_labels == k])
        if members.size:
            groups[str(name)] = tuple(int(c) for c in members)
    return groups


def report_groups(
    choice: str | None, config: ml_collections.ConfigDict, source: Any
) -> tuple[str, dict | None]:
    """`(name, {group: class ids} or None)` for `--groups choice` (None: the default of
    the module doc) on the test split `source`."""
    if choice is None:
        if config.eval.class_groups:
            choice = config.eval.class_groups
        elif config.data.kind == "cub" and source.num_classes == 200:
            choice = "herbs_cub"
        else:
            choice = "coarse" if source.num_coarse_classes else "none"
    if choice == "none":
        return choice, None
    if choice == "coarse":
        return choice, coarse_groups(source)
    if choice not in CLASS_GROUPS:
        raise ValueError(f"--groups must be one of {list(GROUP_CHOICES)}, got {choice!r}")
    return choice, CLASS_GROUPS[choice]


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f} %"


def report_markdown(
    metrics: Mapping[str, float],
    confusion: np.ndarray,
    class_names: Sequence[str],
    groups: Groups | None,
    heading: str,
) -> str:
    """The text of report.md (see the module doc) from `classification_metrics` output,
    the `[C, C]` confusion matrix and the model's class names."""
    lines = [f"# Classification report: {heading}", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| top-{k} | {_pct(metrics[f'top{k}'])} |" for k in (1, 3, 5)]
    lines += [f"| mean per-class accuracy | {_pct(metrics['per_class_accuracy'])} |", ""]
    if groups:
        lines += [
            f"## Groups ({len(groups)}; {int(metrics['outer_errors'])} outer errors in all)",
            "",
            "| group | classes | test images | accuracy | outer errors |",
            "|---|---|---|---|---|",
        ]
        for name in groups:
            count = int(metrics[f"{name}/count"])
            lines.append(
                f"| {name} | {len(set(groups[name]))} | {count} | "
                f"{_pct(metrics[f'{name}/accuracy'])} | {int(metrics[f'{name}/outer_errors'])} |"
            )
        lines.append("")
    recall = class_accuracies(confusion)
    present = np.flatnonzero(~np.isnan(recall))
    order = present[np.argsort(recall[present], kind="stable")]
    lines += [
        "## Per-class accuracy (worst first)",
        "",
        "| class | name | test images | correct | accuracy | most often predicted instead |",
        "|---|---|---|---|---|---|",
    ]
    for c in order:
        row = confusion[c].copy()
        row[c] = 0
        other = int(np.argmax(row))
        confused = f"{class_names[other]} ({row[other]})" if row[other] else "-"
        lines.append(
            f"| {c} | {class_names[c]} | {confusion[c].sum()} | {confusion[c, c]} | "
            f"{_pct(recall[c])} | {confused} |"
        )
    missing = len(recall) - len(present)
    if missing:
        lines += ["", f"{missing} classes have no test images."]
    return "\n".join(lines) + "\n"


def draw_confusion(
    path: str,
    confusion: np.ndarray,
    class_names: Sequence[str],
    groups: Groups | None,
    title: str = "",
) -> str:
    """confusion.png: the `[C, C]` matrix on top, then every group's `[n, n + 1]`
    matrix (`group_confusion`, last column "outside"), three to a row."""
    num = len(groups or {})
    cols = min(3, max(num, 1))
    rows = math.ceil(num / cols)
    fig = plt.figure(figsize=(max(8.0, 4.5 * cols), 8.0 + 4.5 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[8.0] + [4.5] * rows)
    ax = fig.add_subplot(grid[0, :])
    shown = ax.imshow(confusion, cmap="Blues", interpolation="nearest")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix", fontsize=10)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="test images")
    for g, (name, members) in enumerate((groups or {}).items()):
        idx = group_members(name, members, confusion.shape[0])
        m = group_confusion(confusion, idx)
        ax = fig.add_subplot(grid[1 + g // cols, g % cols])
        ax.imshow(m, cmap="Blues", interpolation="nearest")
        total = m.sum()
        accuracy = f"{np.trace(m) / total:.1%}" if total else "n/a"
        ax.set_title(f"{name}: {accuracy}, {m[:, -1].sum()} outer", fontsize=9)
        labels = [str(class_names[c])[:18] for c in idx]
        fontsize = 7 if len(idx) <= 10 else 4
        ax.set_xticks(range(len(idx) + 1), [*labels, "outside"], rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(idx)), labels, fontsize=fontsize)
        if len(idx) <= 12:  # counts are legible in small matrices
            for (i, j), v in np.ndenumerate(m):
                if v:
                    color = "white" if v > m.max() / 2 else "black"
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=color)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    out: str,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    groups: Groups | None,
    heading: str,
) -> dict[str, float]:
    """report.md, confusion.png and confusion.npy in `out` for `scores [N, C]` (top-1 =
    argmax) against `labels [N]`; returns `classification_metrics` (top-1/3/5, groups)."""
    metrics = classification_metrics(scores, labels, ks=(1, 3, 5), groups=groups)
    confusion = confusion_matrix(labels, predictions(scores), scores.shape[1])
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "confusion.npy"), confusion)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report_markdown(metrics, confusion, class_names, groups, heading))
    draw_confusion(os.path.join(out, "confusion.png"), confusion, class_names, groups, heading)
    return metrics
