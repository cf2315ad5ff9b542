"""LCR's rationale pictures: `python -m fgjax.viz.rationale --workdir DIR`.

    python -m fgjax.viz.rationale --workdir runs/cub_lcr [--step N] [--num 8]
        [--split test] [--out FILE.png] [--config.a.b=value ...]

For `--num` images of the split (spread evenly over it; Resize + CenterCrop as in
evaluation) one row each: the image, the Grad-CAM the rationale branch is fitted to, and
the branch's learned attention map (the mask the LCR descriptor pools with), overlaid.
The Grad-CAM is that of the SSL loss with the mirrored image as the other view (MoCo:
the key encoder's key and the queue; BYOL: the target's projection), BatchNorm in eval
mode, shaped by `cam_sign` and `cam_norm` as in training, and scaled to [0, 1] per image
for display. The attention is shown as the method normalises it (`att_norm`; with the
original's `batch_minmax` the `--num` images form the batch). Default output:
`DIR/rationale.png`. Needs a run of an LCR method (`lcr`, `lcr_byol`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from PIL import Image

from fgjax.data.decode import resize_center_crop
from fgjax.eval.features import normalize_images
from fgjax.evaluate import load_run_config, restore_checkpoint
from fgjax.train.loop import _Run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("image", "Grad-CAM (target)", "learned attention")


def upsampled(heat: np.ndarray, size: int) -> np.ndarray:
    """A `[h, w]` map bilinearly resized to `[size, size]` (for overlaying)."""
    return np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize((size, size), 2))


def draw(
    path: str,
    images: np.ndarray,
    cams: np.ndarray,
    attentions: np.ndarray,
    names: Sequence[str],
    title: str = "",
) -> str:
    """Write rows of (image, Grad-CAM overlay, attention overlay) to `path`: `images` uint8
    `[N, S, S, 3]`, `cams` and `attentions` `[N, h, w]` in [0, 1], one name per row."""
    n, size = len(images), images.shape[1]
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n + 0.4), squeeze=False)
    for row in range(n):
        for col, heat in enumerate((None, cams[row], attentions[row])):
            ax = axes[row, col]
            ax.imshow(images[row])
            if heat is not None:
                ax.imshow(upsampled(heat, size), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(COLUMNS[col], fontsize=10)
        axes[row, 0].set_ylabel(names[row][:28], fontsize=8)
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=10)
        top -= 0.35 / fig.get_figheight()  # room for the title above the column headers
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_image_unit(x: np.ndarray) -> np.ndarray:
    """`x [N, h, w]` divided by each image's maximum (a zero map stays zero)."""
    top = x.reshape(len(x), -1).max(axis=1)[:, None, None]
    return np.where(top > 0, x / np.where(top > 0, top, 1.0), 0.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fgjax.viz.rationale",
        description=__doc__.split("\n")[0],
        epilog="Any --config.FIELD=VALUE overrides that field of the run's config.",
    )
    p.add_argument("--workdir", required=True, help="a training run of lcr or lcr_byol")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--num", type=int, default=8, help="images (rows)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="which split")
    p.add_argument("--out", help="PNG path (default WORKDIR/rationale.png)")
    return p


def main(argv: Sequence[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [x for x in argv if x.startswith("--config.")]
    a = _parser().parse_args([x for x in argv if not x.startswith("--config.")])
    if a.num < 1:
        raise ValueError(f"--num must be at least 1, got {a.num}")
    config = load_run_config(a.workdir, overrides=overrides)
    config.train.progress_bar = False
    run = _Run(config)
    if not hasattr(run.method, "explain"):
        raise ValueError(
            f"{a.workdir} is a config.method={config.method!r} run, which has no rationale "
            "branch: the pictures need an LCR run (lcr, lcr_byol)"
        )
    state, step = restore_checkpoint(run, config.seed, a.workdir, a.step)
    source = run.sources[a.split]
    picks = np.unique(np.linspace(0, len(source) - 1, min(a.num, len(source))).round().astype(int))
    images = np.stack(
        [resize_center_crop(source[int(i)], image_size=config.data.image_size) for i in picks]
    )
    mean, std = run.extractor.mean, run.extractor.std

    @jax.jit
    def explain(state, images):
        x = normalize_images(images, mean, std)
        return run.method.explain(
            state.params, state.model_state, state.method_state, x, jnp.flip(x, axis=2)
        )

    cams, attentions = (np.asarray(v, np.float32) for v in explain(state, jnp.asarray(images)))
    labels = [int(source[int(i)]["label"]) for i in picks]
    names = [str(source.class_names[label]) for label in labels]
    out = a.out or os.path.join(a.workdir, "rationale.png")
    title = f"{config.method} step {step}, {config.data.kind}/{config.data[a.split + '_split']}"
    draw(out, images, per_image_unit(cams), attentions, names, title=title)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
