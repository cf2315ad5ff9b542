"""What the commands share: the picture commands' arguments and reading a command line's
`--config.*` overrides apart from its other arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import ml_collections

from fgjax.methods import Method
from fgjax.train.run import Run, open_run


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


def run_command(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    accepts: Callable[[Method], bool],
    refusal: str,
    progress: bool = False,
) -> tuple[argparse.Namespace, ml_collections.ConfigDict, Run]:
    """`(arguments, config, run)` of a command line (`sys.argv[1:]` when None): `parser`
    reads it without its --config.* overrides, which apply to the --workdir run's config
    (`open_run`, with `accepts`, `refusal` and `progress`)."""
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(rest)
    if getattr(a, "num", 1) < 1:
        raise ValueError(f"--num must be at least 1, got {a.num}")
    config, run = open_run(a.workdir, overrides, accepts, refusal, progress)
    return a, config, run
