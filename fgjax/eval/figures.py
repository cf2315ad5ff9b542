"""Pictures of an evaluation (PNG, matplotlib's Agg backend, no display needed).

retrieval_grid   queries (first column, grey frame) with their top-k results, each framed
                 green when it has the query's class and red when not, labels under each
embedding_map    the features projected to 2-D by PCA, one colour per class
recall_curve     Recall@K against K, one line per run (several runs' eval.json)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GREEN = (0, 170, 0)
RED = (220, 0, 0)
GREY = (128, 128, 128)
WHITE = 255


def _upscaled(image: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor so the side is at least `min_side`."""
    factor = max(1, math.ceil(min_side / max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def compose_grid(
    images: np.ndarray, correct: np.ndarray, border: int = 4, gap: int = 6, label_band: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Lay out `images` uint8 [Q, 1 + K, S, S, 3] (per row: the query, then its results) on
    a white canvas; every image is framed (`border` px): the query grey, a result green
    when `correct[q, j]` else red (`correct`: bool [Q, K]). Each row is followed by
    `label_band` empty pixels for text.

    Returns `(canvas uint8 [H, W, 3], origins int [Q, 1 + K, 2])`: the (y, x) of each
    framed cell's top-left corner; a cell is S + 2 * border pixels square.
    """
    q, cols, s = images.shape[0], images.shape[1], images.shape[2]
    if correct.shape != (q, cols - 1):
        raise ValueError(f"correct must be [{q}, {cols - 1}], got {correct.shape}")
    cell = s + 2 * border
    extra = 2 * gap  # wider gap between the query column and its results
    height = q * (cell + gap + label_band) + gap
    width = cols * (cell + gap) + gap + extra
    canvas = np.full((height, width, 3), WHITE, np.uint8)
    origins = np.zeros((q, cols, 2), np.int64)
    for r in range(q):
        y = gap + r * (cell + gap + label_band)
        for c in range(cols):
            x = gap + c * (cell + gap) + (extra if c > 0 else 0)
            color = GREY if c == 0 else (GREEN if correct[r, c - 1] else RED)
            canvas[y : y + cell, x : x + cell] = color
            canvas[y + border : y + border + s, x + border : x + border + s] = images[r, c]
            origins[r, c] = (y, x)
    return canvas, origins


def retrieval_grid(
    path: str,
    images: np.ndarray,
    correct: np.ndarray,
    labels: Sequence[Sequence[str]],
    min_side: int = 96,
) -> str:
    """Write the retrieval grid of `images` [Q, 1 + K, S, S, 3] (see `compose_grid`) to
    `path`, with `labels[q][c]` (e.g. class names) under each image. Returns `path`."""
    q, cols = images.shape[:2]
    big = np.stack([[_upscaled(im, min_side) for im in row] for row in images])
    band = 18
    canvas, origins = compose_grid(big, np.asarray(correct, bool), label_band=band)
    cell = big.shape[2] + 2 * 4
    dpi = 100
    fig = plt.figure(figsize=(canvas.shape[1] / dpi, canvas.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    width = max(6, cell // 7)  # characters that fit under a cell at 8 pt
    for r in range(q):
        for c in range(cols):
            y, x = origins[r, c]
            text = str(labels[r][c])
            text = text if len(text) <= width else text[: width - 1] + "…"
            ax.text(x + cell / 2, y + cell + 2, text, ha="center", va="top", fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(points [N, 2], explained [2])`: the rows of `features` [N, D] centred and projected
    on their first two principal axes (each axis signed so its largest-magnitude coordinate
    is positive: deterministic), and the fraction of variance each axis explains."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    points = x @ axes.T
    if points.shape[1] < 2:  # one-dimensional features: a flat second axis
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    signs = np.sign(points[np.abs(points).argmax(axis=0), [0, 1]])
    points *= np.where(signs == 0, 1, signs)
    total = float((sv**2).sum())
    explained = np.zeros(2)
    explained[: len(sv[:2])] = sv[:2] ** 2 / total if total > 0 else 0.0
    return points, explained


def embedding_map(
    path: str,
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> str:
    """Scatter of the L2-normalised `features` [N, D] in their first two principal axes,
    coloured by `labels` [N] (a legend up to 20 classes). Returns `path`."""
    x = np.asarray(features, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    points, explained = pca_2d(x)
    classes = np.unique(labels)
    n = len(classes)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "hsv")
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for i, k in enumerate(classes):
        at = labels == k
        name = class_names[k] if class_names is not None else str(k)
        color = cmap(i if n <= 20 else i / n)
        ax.scatter(points[at, 0], points[at, 1], s=10, color=color, label=name, alpha=0.8)
    if n <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}% of variance)")
    ax.set_title(title or f"{len(x)} embeddings, {n} classes", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_RECALL = re.compile(r"^(?:retrieval_)?recall@(\d+)$")


def recall_points(results: Mapping[str, object]) -> tuple[list[int], list[float]]:
    """`(ks, values)` of every `retrieval_recall@K` (or `recall@K`) entry, sorted by K."""
    found = {}
    for key, value in results.items():
        match = _RECALL.match(key)
        if match and isinstance(value, (int, float)):
            found[int(match.group(1))] = float(value)
    ks = sorted(found)
    return ks, [found[k] for k in ks]


def recall_curve(path: str, runs: Mapping[str, Mapping[str, object]]) -> str:
    """One Recall@K line per run (`name -> eval.json contents`), K on a log2 axis.
    Returns `path`; an error names the runs without Recall@K."""
    missing = [name for name, results in runs.items() if not recall_points(results)[0]]
    if missing or not runs:
        raise ValueError(f"no retrieval_recall@K entries in: {missing or 'no runs given'}")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    all_ks: set[int] = set()
    for name, results in runs.items():
        ks, values = recall_points(results)
        all_ks.update(ks)
        ax.plot(ks, [100 * v for v in values], marker="o", lw=1.5, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
