"""Rows of heat-map overlays (LCR's rationale maps, HERBS' Grad-CAM maps): images with
per-image maps in [0, 1] drawn over them, one column per map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def upsampled(heat: np.ndarray, size: int) -> np.ndarray:
    """A `[h, w]` map bilinearly resized to `[size, size]` (for overlaying)."""
    return np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize((size, size), 2))


def per_image_unit(x: np.ndarray) -> np.ndarray:
    """`x [N, h, w]` divided by each image's maximum (a zero map stays zero)."""
    top = x.reshape(len(x), -1).max(axis=1)[:, None, None]
    return np.where(top > 0, x / np.where(top > 0, top, 1.0), 0.0)


def draw_overlays(
    path: str,
    images: np.ndarray,
    columns: Sequence[tuple[str, np.ndarray | None]],
    names: Sequence[str],
    title: str = "",
    cmap: Any = "jet",
) -> str:
    """Write one row per image to `path`: for every `(header, heats)` column the image
    (uint8 `[N, S, S, 3]`), overlaid (alpha 0.5, `cmap` over [0, 1]) with `heats[row]`
    (`[N, h, w]` in [0, 1], resized to S) unless `heats` is None. `names[row]` labels the
    row (each line cut to 28 characters)."""
    n, size = len(images), images.shape[1]
    fig, axes = plt.subplots(
        n, len(columns), figsize=(2.5 * len(columns), 2.5 * n + 0.4), squeeze=False
    )
    for row in range(n):
        for col, (header, heats) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(images[row])
            if heats is not None:
                heat = upsampled(heats[row], size)
                ax.imshow(heat, cmap=cmap, alpha=0.5, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(header, fontsize=10)
        label = "\n".join(line[:28] for line in names[row].split("\n"))
        axes[row, 0].set_ylabel(label, fontsize=8)
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=10)
        top -= 0.35 / fig.get_figheight()  # room for the title above the column headers
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
