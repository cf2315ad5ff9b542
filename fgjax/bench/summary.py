"""The table's outputs from its cells' results: mean +- std over seeds (markdown and CSV),
a paired comparison with a reference row across seeds, and one figure panel per metric.

A result is what `fgjax table` writes per cell and seed (`OUT/<cell>/seed<N>/table.json`):
`{"cell", "seed", "rows": {feature: {metric: value}}, "seconds", "steps", "images_seen"}`;
a row of the table is one (cell, feature) pair, e.g. ('lcr', 'embedding') or
('moco', 'cfga_plus').
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# (key in a row's metrics, column title)
METRICS = (
    ("retrieval_recall@1", "R@1"),
    ("retrieval_recall@2", "R@2"),
    ("retrieval_recall@4", "R@4"),
    ("retrieval_recall@8", "R@8"),
    ("retrieval_map", "mAP"),
    ("retrieval_map@r", "MAP@R"),
    ("clustering_nmi", "NMI"),
    ("knn_top1", "kNN top-1"),
    ("linear_top1", "probe top-1"),
)
FEATURE_TITLES = {
    "embedding": "the method's embedding",
    "gap": "GAP of the backbone",
    "scda": "SCDA (training-free)",
    "cfga_plus": "CFGA+ (training-free)",
}


def rows_of(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """`{(cell, feature): {metric: [value per seed, in seed order]}}` of `results`."""
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for result in sorted(results, key=lambda r: (r["cell"], r["seed"])):
        for feature, metrics in result["rows"].items():
            row = rows.setdefault((result["cell"], feature), {})
            for key, value in metrics.items():
                row.setdefault(key, []).append(float(value))
    return rows


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    x = np.asarray(values, np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _cell(values: list[float] | None) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} +- {100 * std:.1f}" if len(values) > 1 else f"{100 * mean:.1f}"


def markdown_table(results: Sequence[dict[str, Any]], cells: Sequence[Any], metrics=METRICS) -> str:
    """One line per (cell, feature): label regime, zero-shot, seeds, then each metric in %
    as mean +- std over seeds; `cells` (presets.Cell) give the order and the regimes."""
    rows = rows_of(results)
    seeds: dict[str, set[int]] = {}
    for result in results:
        seeds.setdefault(result["cell"], set()).add(result["seed"])
    head = ["method", "feature", "labels", "zero-shot", "seeds", *(t for _, t in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        for (name, feature), row in rows.items():
            if name != cell.name:
                continue
            line = [cell.title, FEATURE_TITLES.get(feature, feature), cell.labels]
            line += ["yes" if cell.zero_shot else "no", str(len(seeds[name]))]
            line += [_cell(row.get(key)) for key, _ in metrics]
            lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def write_csv(path: str, results: Sequence[dict[str, Any]], metrics=METRICS) -> str:
    """`path`: one line per (cell, feature, metric): mean, std, n and the values."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cell", "feature", "metric", "mean", "std", "n", "values"])
        for (cell, feature), row in rows_of(results).items():
            for key, _ in metrics:
                if key in row:
                    mean, std = mean_std(row[key])
                    values = " ".join(f"{v:.6f}" for v in row[key])
                    writer.writerow(
                        [cell, feature, key, f"{mean:.6f}", f"{std:.6f}", len(row[key]), values]
                    )
    return path


def paired_differences(
    results: Sequence[dict[str, Any]], reference: tuple[str, str], metric: str
) -> dict[tuple[str, str], tuple[float, float, int, float]]:
    """Per row against `reference` (cell, feature) on `metric`, over the seeds both have:
    `(mean difference, std of the per-seed differences, n, p)`, p the two-sided paired
    t-test's (1 when n < 2; a constant nonzero difference: 0)."""
    per_seed: dict[tuple[str, str], dict[int, float]] = {}
    for result in results:
        for feature, metrics in result["rows"].items():
            if metric in metrics:
                per_seed.setdefault((result["cell"], feature), {})[result["seed"]] = metrics[metric]
    base = per_seed.get(reference, {})
    found = {}
    for row, values in per_seed.items():
        common = sorted(set(values) & set(base))
        if row == reference or not common:
            continue
        mean, std = mean_std([values[s] - base[s] for s in common])
        found[row] = (mean, std, len(common), _paired_p(mean, std, len(common)))
    return found


def _paired_p(mean: float, std: float, n: int) -> float:
    if n < 2 or mean == 0:
        return 1.0
    if std == 0:
        return 0.0
    from scipy.stats import t  # scipy is slow to import; only the summary needs it

    return float(2 * t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))


def paired_table(results, reference: tuple[str, str], metric: str, title: str) -> str:
    """Markdown of `paired_differences` for the rows of the reference's feature, in
    points, with a verdict per row: better / worse where the paired t-test gives
    p < 0.05 over at least 3 seeds, else "within seed noise"."""
    lines = [
        f"Paired with {reference[0]} ({FEATURE_TITLES.get(reference[1], reference[1])}) on "
        f"{title}, per seed (points; p: two-sided paired t-test over the seeds):",
        "",
        "| row | mean difference | std of differences | seeds | p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for (cell, feature), (mean, std, n, p) in paired_differences(
        results, reference, metric
    ).items():
        if feature != reference[1]:  # like with like: embeddings against the embedding
            continue
        verdict = ("better" if mean > 0 else "worse") if p < 0.05 else "within seed noise"
        if n < 3:  # two differences say nothing about their spread
            verdict = "too few seeds"
        row = f"{cell} / {FEATURE_TITLES.get(feature, feature)}"
        lines.append(f"| {row} | {100 * mean:+.1f} | {100 * std:.1f} | {n} | {p:.3f} | {verdict} |")
    return "\n".join(lines)


def _regime(cell) -> str:
    return f"{cell.labels} labels" + (", zero-shot" if cell.zero_shot else "")


def draw_figure(path: str, results: Sequence[dict[str, Any]], cells, metrics=METRICS) -> str:
    """`path`: one panel per metric; per cell (a group, named with its label regime) a
    bar per feature row in its own colour, at the mean over seeds with the sample std as
    its error bar and each seed as a dot; a dashed line at the untrained embedding's mean
    (the floor), when that row is in `results`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(results)
    cells = [c for c in cells if any(n == c.name for n, _ in rows)]
    features = [f for f in FEATURE_TITLES if any(k == f for _, k in rows)]
    shown = [(k, t) for k, t in metrics if any(k in row for row in rows.values())]
    colours = plt.get_cmap("tab10").colors
    height = 0.8 / len(features)
    cols = min(3, len(shown))
    nrows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        nrows,
        cols,
        figsize=(max(5.5 * cols, 8.0), 0.32 * len(cells) * len(features) * nrows / 2 + 2),
        squeeze=False,
    )
    for ax, (key, title) in zip(axes.flat, shown, strict=False):
        for j, feature in enumerate(features):
            for i, cell in enumerate(cells):
                values = rows.get((cell.name, feature), {}).get(key)
                if not values:
                    continue
                y = i + (j - (len(features) - 1) / 2) * height
                mean, std = mean_std(values)
                ax.barh(
                    y,
                    100 * mean,
                    height,
                    xerr=100 * std,
                    capsize=2,
                    color=colours[j],
                    label=FEATURE_TITLES[feature] if i == 0 else None,
                )
                ax.plot(100 * np.asarray(values), [y] * len(values), "k.", markersize=3)
        floor = rows.get(("untrained", "embedding"), {}).get(key)
        if floor:
            ax.axvline(100 * mean_std(floor)[0], color="0.4", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(cells)))
        ax.set_yticklabels([f"{c.title}\n({_regime(c)})" for c in cells], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{title} (%)")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = len(features) if cols > 1 else 2  # one panel: the legend in two columns
    fig.legend(handles, labels, loc="upper center", ncol=ncol, frameon=False)
    legend_inches = 0.3 * -(-len(features) // ncol) + 0.2
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_inches / fig.get_figheight()))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
