"""HERBS heat maps (spec section 6.3, `vis_swin_l.py`): `fgjax heatmap`.

    fgjax heatmap --workdir runs/cub_herbs [--step N] [--num 8]
        [--split test] [--label C] [--out FILE.png] [--config.a.b=value ...]

For `--num` images of the split (spread evenly over it; the evaluation crop) one row
each: the crop and its heat map overlaid (alpha 0.5, HERBS' jet-like colormap). The map
is HERBS' Grad-CAM variant: with s the sum of the 9 voting softmaxes (token-averaged
`layer1..4`, `FPN1_layer1..4`, and `comb_outs`) and c = argmax s (or `--label C`), the
gradient of s[c] is read at 3L places (L = 4 for Swin: the Swin taps `layer1..4`, the
`fpn_down` projections F'_k before the top-down add, the `fpn_up` projections Q_k before
the bottom-up add). At each place, with activation A `[L_tokens, C]` and gradient G,
map = sum_c ReLU(mean_tokens(G)_c * A_c) (ReLU per channel, then the sum), divided by its
max and bilinearly resized to the crop; the picture is the product of the 3L maps over
its max. Default output: `DIR/heatmap.png`, with the maps in `DIR/heatmap.npz` (`final`
`[N, S, S]`, `maps` `[N, 3L, S, S]`, `places`, `target`, `label`, `index`). Needs a
`config.method='herbs'` run; `--config.model.dtype=float32` computes a bfloat16 run's
maps in float32.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import jax
import numpy as np

from fgjax.cli.common import picture_parser, run_command
from fgjax.core.cli import command
from fgjax.data.eval_loader import eval_crops, spread
from fgjax.eval.overlays import draw_overlays
from fgjax.methods.herbs.gradcam import HERBS_CMAP, explain, place_names
from fgjax.methods.herbs.method import Herbs
from fgjax.train.run import restore_checkpoint


def _parser() -> argparse.ArgumentParser:
    p = picture_parser(
        "fgjax heatmap",
        __doc__.split("\n")[0],
        runs="herbs",
        out="PNG path (default WORKDIR/heatmap.png; maps in .npz beside)",
    )
    p.add_argument("--label", type=int, help="class to explain (default: each prediction)")
    return p


@command
def main(argv: Sequence[str] | None = None) -> str:
    a, config, run = run_command(
        argv,
        _parser(),
        accepts=lambda method: isinstance(method, Herbs),
        refusal="not a HERBS run: the heat maps need config.method='herbs'",
    )
    classes = run.info.num_classes
    if a.label is not None and not 0 <= a.label < classes:
        raise ValueError(f"--label must be a class id in [0, {classes}), got {a.label}")
    state, step = restore_checkpoint(run, config.seed, a.workdir, a.step)
    source = run.sources[a.split]
    picks = spread(len(source), a.num)
    images = eval_crops(source, picks, config.data)
    labels = np.asarray([int(source[int(i)]["label"]) for i in picks], np.int32)
    target = np.full(len(picks), -1 if a.label is None else a.label, np.int32)
    net = run.method.net
    variables = {"params": state.params, **state.model_state}
    maps = explain(net, variables, images, target, run.extractor.mean, run.extractor.std)
    maps = jax.device_get(maps)
    out = a.out or os.path.join(a.workdir, "heatmap.png")
    np.savez(
        os.path.splitext(out)[0] + ".npz",
        final=maps.final,
        maps=maps.maps,
        places=np.asarray(place_names(len(net.head.num_selects))),
        target=maps.target,
        label=labels,
        index=picks,
    )
    # The model's classes are the training split's (a split may have its own class list).
    trained = run.sources["train"].class_names
    names = [
        f"{source.class_names[y]}\nmap of {trained[c]}"
        for y, c in zip(labels, maps.target, strict=True)
    ]
    what = "predicted class" if a.label is None else f"class {a.label}"
    title = f"herbs step {step}, {config.data.kind}/{config.data[a.split + '_split']}"
    columns = [("image", None), (f"heat map ({what})", maps.final)]
    draw_overlays(out, images, columns, names, title=title, cmap=HERBS_CMAP)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
