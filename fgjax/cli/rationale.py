"""LCR's rationale pictures: `fgjax rationale --workdir DIR`.

    fgjax rationale --workdir runs/cub_lcr [--step N] [--num 8]
        [--split test] [--out FILE.png] [--config.a.b=value ...]

For `--num` images of the split (spread evenly over it; Resize + CenterCrop as in
evaluation) one row each: the image, the Grad-CAM the rationale branch is fitted to, and
the branch's learned attention map (the mask the LCR descriptor pools with), overlaid.
The Grad-CAM is that of the SSL loss with the mirrored image as the other view (MoCo:
the key encoder's key and the queue; LEAD++: L3's, with queue 2; BYOL: the target's
projection), BatchNorm in eval
mode, shaped by `cam_sign` and `cam_norm` as in training, and scaled to [0, 1] per image
for display. The attention is shown as the method normalises it (`att_norm`; with the
original's `batch_minmax` the `--num` images form the batch). Default output:
`DIR/rationale.png`. Needs a run of a method with a rationale branch (`lcr`, `lcr_byol`,
`leadpp`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.cli.common import picture_parser, run_command
from fgjax.core.cli import command
from fgjax.data.eval_loader import eval_crops, spread
from fgjax.eval.features import normalize_images
from fgjax.eval.overlays import draw_overlays, per_image_unit
from fgjax.methods.lcr.rationale_maps import COLUMNS
from fgjax.train.run import restore_checkpoint


def _parser() -> argparse.ArgumentParser:
    return picture_parser(
        "fgjax rationale",
        __doc__.split("\n")[0],
        runs="lcr, lcr_byol or leadpp",
        out="PNG path (default WORKDIR/rationale.png)",
    )


@command
def main(argv: Sequence[str] | None = None) -> str:
    a, config, run = run_command(
        argv,
        _parser(),
        accepts=lambda method: hasattr(method, "explain"),
        refusal="which has no rationale branch: the pictures need a run of lcr, lcr_byol or leadpp",
    )
    state, step = restore_checkpoint(run, config.seed, a.workdir, a.step)
    source = run.sources[a.split]
    picks = spread(len(source), a.num)
    images = eval_crops(source, picks, config.data)
    mean, std = run.extractor.mean, run.extractor.std

    @jax.jit
    def explain(state, images):
        x = normalize_images(images, mean, std)
        return run.method.explain(
            state.params, state.model_state, state.method_state, x, jnp.flip(x, axis=2)
        )

    cams, attentions = (np.asarray(v, np.float32) for v in explain(state, jnp.asarray(images)))
    names = [str(source.class_names[int(source[int(i)]["label"])]) for i in picks]
    out = a.out or os.path.join(a.workdir, "rationale.png")
    title = f"{config.method} step {step}, {config.data.kind}/{config.data[a.split + '_split']}"
    columns = zip(COLUMNS, (None, per_image_unit(cams), attentions), strict=True)
    draw_overlays(out, images, list(columns), names, title=title)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
