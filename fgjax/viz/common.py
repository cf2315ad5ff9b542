"""What the picture and report commands of `fgjax.viz` share: reading a run from its
workdir (refusing runs of another method by name), the picture commands' arguments, and
rows of heat-map overlays."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import ml_collections
import numpy as np
from PIL import Image

from fgjax.evaluate import load_run_config
from fgjax.methods import Method
from fgjax.train.loop import _Run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`(--config.a.b=value overrides, the other arguments)` of a command line."""
    overrides = [x for x in argv if x.startswith("--config.")]
    return overrides, [x for x in argv if not x.startswith("--config.")]


def picture_parser(prog: str, description: str, runs: str, out: str) -> argparse.ArgumentParser:
    """The arguments every picture command takes: --workdir (a training run of `runs`),
    --step, --num (rows), --split, --out (`out` describes the default)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Any --config.FIELD=VALUE overrides that field of the run's config.",
    )
    p.add_argument("--workdir", required=True, help=f"a training run of {runs}")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--num", type=int, default=8, help="images (rows)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="which split")
    p.add_argument("--out", help=out)
    return p


def open_run(
    workdir: str,
    overrides: Sequence[str],
    accepts: Callable[[Method], bool],
    refusal: str,
    progress: bool = False,
) -> tuple[ml_collections.ConfigDict, _Run]:
    """The config and built `_Run` (sources, method, evaluation loaders) of `workdir`.

    Raises ValueError "`workdir` is a config.method=NAME run, `refusal`" when `accepts`
    rejects the run's method. `progress` keeps the evaluation progress bar (long
    extractions); pictures of a few images go without.
    """
    config = load_run_config(workdir, overrides=list(overrides))
    config.train.progress_bar = progress
    run = _Run(config)
    if not accepts(run.method):
        raise ValueError(f"{workdir} is a config.method={config.method!r} run, {refusal}")
    return config, run


def run_command(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    accepts: Callable[[Method], bool],
    refusal: str,
    progress: bool = False,
) -> tuple[argparse.Namespace, ml_collections.ConfigDict, _Run]:
    """`(arguments, config, run)` of a command line (`sys.argv[1:]` when None): `parser`
    reads it without its --config.* overrides, which apply to the --workdir run's config
    (`open_run`, with `accepts`, `refusal` and `progress`)."""
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(rest)
    if getattr(a, "num", 1) < 1:
        raise ValueError(f"--num must be at least 1, got {a.num}")
    config, run = open_run(a.workdir, overrides, accepts, refusal, progress)
    return a, config, run


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
