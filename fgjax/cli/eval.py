"""Evaluate a checkpoint or a weights file: `fgjax eval` (fgjax/eval/__main__.py).

    fgjax eval --workdir DIR [--step N] --protocol retrieval,knn,...|all
    fgjax eval --init-from W.pth --config configs/X.py --out DIR --protocol ...

The first restores DIR's checkpoint (the newest, or step N) with DIR/config.json (or
`--config FILE`); the second loads a weights file into a fresh model of the recipe, no
training, as `config.model.init_from` does (a backbone, see `fgjax.weights`; a HERBS
`best.pt` fills the head too). `--config.a.b=value` overrides any field (e.g.
`--config.data.root=...`, `--config.eval.recall_ks='(1,2,4,8,16)'`).

A protocol is a `fgjax.eval.protocols` name or one of the method's evaluators (what the
trainer adds to eval.json, e.g. `herbs`: HERBS' 9-head vote), reported as `name/metric`.

Features (`--features pooled|proj|stageN|...`, `--flip` to average each image with its
mirror) are cached in `OUT/features_<split>.npz` and reused while the weights and settings
are the same. `OUT/eval.json` gets the numbers (also printed as a table) and, unless
`--no-plots`, `retrieval_grid.png`, `embedding_map.png` and `recall_curve.png` go beside
it. OUT is `--out`, by default `DIR/eval` (the trainer's own DIR/eval.json is kept).

This command parses and prints; the work (weights, cached features, protocols, eval.json
and pictures) is `fgjax.train.evaluation`'s, above `fgjax.eval` because it builds methods
and restores train states, which `fgjax.eval` may not import (see tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax

from fgjax.core.cli import command
from fgjax.eval.protocols import PROTOCOLS
from fgjax.train.evaluation import (
    FeatureCache,
    FeatureSettings,
    ProtocolError,
    eval_payload,
    load_weights,
    run_protocols,
    select_protocols,
    write_report,
)
from fgjax.train.run import Run, load_run_config, weights_identity


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fgjax eval",
        description=__doc__.split("\n\n")[0],
        epilog="Any --config.FIELD=VALUE overrides that field of the config.",
    )
    add_weights_arguments(
        p,
        "a weights file (.pth/.pt/.safetensors/.npz): a backbone, or what the method "
        "loads from it (a HERBS best.pt: Swin and head)",
    )
    p.add_argument("--out", help="output folder (default WORKDIR/eval)")
    p.add_argument(
        "--protocol",
        action="append",
        help=f"{', '.join(PROTOCOLS)}, an evaluator of the method (e.g. herbs), or all "
        "(repeatable or comma-separated; default retrieval)",
    )
    p.add_argument("--features", default="pooled", help="pooled | proj | pred | stageN | ...")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image")
    p.add_argument("--no-cache", action="store_true", help="recompute cached features")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG pictures")
    p.add_argument("--grid-queries", type=int, default=6, help="queries in retrieval_grid.png")
    p.add_argument("--grid-k", type=int, default=5, help="results per query in the grid")
    return p


def add_weights_arguments(p: argparse.ArgumentParser, init_from_help: str) -> None:
    """`--workdir`, `--step`, `--init-from`, `--config`: what the evaluation command lines
    read their weights and recipe from (checked by `check_weights_arguments`)."""
    p.add_argument("--workdir", help="a training run: its checkpoints and config.json")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--init-from", help=init_from_help)
    p.add_argument("--config", help="recipe file (required with --init-from)")


def check_weights_arguments(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """A run (`--workdir [--step]`) or a weights file with its recipe and `--out`."""
    if a.init_from:
        if a.workdir or a.step is not None:
            p.error("--init-from reads a weights file: do not give --workdir/--step")
        if not a.config:
            p.error("--init-from needs --config FILE (the model and data recipe)")
        if not a.out:
            p.error("--init-from needs --out DIR")
    elif not a.workdir:
        p.error("give --workdir DIR (a checkpoint) or --init-from FILE --config FILE")


def evaluate(argv: list[str]) -> dict[str, Any]:
    """Run the command line `argv` (without the program name); returns what eval.json holds."""
    parser = _parser()
    overrides = [x for x in argv if x.startswith("--config.")]
    a = parser.parse_args([x for x in argv if not x.startswith("--config.")])
    check_weights_arguments(parser, a)
    requested = [n for arg in a.protocol or ["retrieval"] for n in arg.split(",") if n]
    config = load_run_config(a.workdir, a.config, overrides, a.init_from or "")
    out = a.out or os.path.join(a.workdir, "eval")

    run = Run(config)
    evaluators = run.method.evaluators()  # e.g. HERBS' 9-head vote, a protocol by its name
    names, explicit = select_protocols(requested, evaluators, config.method)
    state, step = load_weights(run, config.seed, a.init_from, a.workdir, a.step)
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(out, exist_ok=True)
    settings = FeatureSettings(a.features, a.flip, refresh=a.no_cache)
    weights = weights_identity(a, step)
    features = FeatureCache(config, run, state, out, weights, settings, write=writer)
    try:
        results = run_protocols(names, explicit, evaluators, config, state, run, features)
    except ProtocolError as err:
        raise SystemExit(f"error: {err}") from None
    payload = eval_payload(results, step, a.init_from or os.path.abspath(a.workdir), settings, run)
    print(format_table(results))
    # Every process takes part in an extraction (it gathers across processes).
    test = None if a.no_plots else features("test", a.features)
    if writer:
        grid = (a.grid_queries, a.grid_k)  # retrieval_grid.png: queries, results per query
        path = write_report(out, payload, results, config, run, test, settings, *grid)
        print(f"wrote {path}")
    return payload


def format_table(results: dict[str, float]) -> str:
    """Two aligned columns: metric, value (4 decimals)."""
    width = max([len("metric"), *map(len, results)])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in results.items()]
    return "\n".join(lines)


main = command(evaluate)


if __name__ == "__main__":
    main()
