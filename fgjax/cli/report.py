"""Classification report of a HERBS run: `fgjax report --workdir DIR`.

    fgjax report --workdir runs/cub_herbs [--step N] [--out DIR]
        [--groups herbs_cub|coarse|none] [--config.a.b=value ...]

Evaluates the test split once with HERBS' prediction (argmax of the sum of the 9 voting
softmaxes, spec section 6.2) and writes, in `--out` (default `DIR/report`):

- `report.md`: top-1/3/5 and mean per-class accuracy; per group, its accuracy and outer
  errors (test images of the group predicted outside it); every class's accuracy, worst
  first, with the class it is most often mistaken for;
- `confusion.png`: the full confusion matrix (row = true class, column = predicted), then
  one matrix per group with the extra "outside" column (HERBS' layout);
- `confusion.npy`: the `[C, C]` int64 counts.

Groups (`--groups`): the run's `config.eval.class_groups` when set, else HERBS' 9 CUB
groups (`herbs_cub`) for a 200-class CUB run, else the dataset's coarse classes
(`coarse`: e.g. CUB's 37 families, each group the classes whose test images carry that
coarse label), else none.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import jax

from fgjax.cli.common import run_command
from fgjax.core.cli import command
from fgjax.core.sharding import put_replicated
from fgjax.methods.herbs.classification_report import GROUP_CHOICES, report_groups, write_report
from fgjax.methods.herbs.method import Herbs, vote_heads
from fgjax.train.run import restore_checkpoint


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fgjax report",
        description=__doc__.split("\n")[0],
        epilog="Any --config.FIELD=VALUE overrides that field of the run's config.",
    )
    p.add_argument("--workdir", required=True, help="a training run of herbs")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--out", help="output folder (default WORKDIR/report)")
    p.add_argument("--groups", choices=GROUP_CHOICES, help="class groups (default: see above)")
    return p


@command
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    a, config, run = run_command(
        argv,
        _parser(),
        accepts=lambda method: isinstance(method, Herbs),
        refusal="not a HERBS run: the report scores config.method='herbs' (the 9-head vote)",
        progress=True,
    )
    source = run.sources["test"]
    name, groups = report_groups(a.groups, config, source)
    state, step = restore_checkpoint(run, config.seed, a.workdir, a.step)
    method: Herbs = run.method
    heads = len(vote_heads(len(method.section.num_selects)))

    def vote(state: Any, images: jax.Array) -> jax.Array:  # [B, N]: sum of the softmaxes
        p = method.probabilities(state.params, state.model_state, images)
        return p.reshape(p.shape[0], heads, -1).sum(axis=1)

    test = run.extractor.extract("test", vote, put_replicated(state, run.mesh))
    out = a.out or os.path.join(a.workdir, "report")
    heading = (
        f"herbs step {step}, {config.data.kind}/{config.data.test_split} "
        f"({len(test.labels)} images, groups: {name})"
    )
    # The model's classes are the training split's (a split may have its own class list).
    metrics = write_report(
        out, test.features, test.labels, run.sources["train"].class_names, groups, heading
    )
    print(f"top-1 {metrics['top1']:.4f}; wrote report.md, confusion.png, confusion.npy in {out}")
    return metrics


if __name__ == "__main__":
    main()
