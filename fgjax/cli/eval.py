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

This entry lives above `fgjax.eval` because it builds methods and restores train states,
which `fgjax.eval` may not import (see tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import numpy as np

from fgjax.core.cli import command
from fgjax.core.sharding import put_replicated
from fgjax.data.eval_loader import eval_crops, spread
from fgjax.eval import figures as plots
from fgjax.eval.cache import (
    cache_path,
    cached_features,
    files_identity,
    fingerprint,
    replaced_images,
)
from fgjax.eval.features import (
    Embed,
    Features,
    MissingFeatureError,
    flip_averaged,
)
from fgjax.eval.knn import nearest_neighbors
from fgjax.eval.protocols import PROTOCOLS
from fgjax.train.run import (
    Run,
    feature_embed,
    load_run_config,
    restore_checkpoint,
    weights_identity,
)
from fgjax.train.state import create_train_state


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


def _grid_pictures(out: str, run: Run, test: Features, config, a) -> None:
    source = run.sources["test"]
    n = len(test.labels)
    queries = spread(n, a.grid_queries)
    _, neighbours = nearest_neighbors(test.features[queries], test.features, a.grid_k + 1)
    # Leave the query itself out (the search above includes it; drop its own row).
    rows = [
        [j for j in nb if j != q][: a.grid_k] for q, nb in zip(queries, neighbours, strict=True)
    ]
    k = min(len(r) for r in rows)
    ids = np.array([[q, *r[:k]] for q, r in zip(queries, rows, strict=True)])
    images = np.stack([eval_crops(source, r, config.data) for r in ids])
    correct = test.labels[ids[:, 1:]] == test.labels[ids[:, :1]]
    names = [[source.class_names[test.labels[i]] for i in r] for r in ids]
    plots.retrieval_grid(os.path.join(out, "retrieval_grid.png"), images, correct, names)
    plots.embedding_map(
        os.path.join(out, "embedding_map.png"),
        test.features,
        test.labels,
        source.class_names,
        title=f"{config.data.kind}/{config.data.test_split}: {a.features}"
        + (" + flip" if a.flip else ""),
    )


def evaluate(argv: list[str]) -> dict[str, Any]:
    """Run the command line `argv` (without the program name); returns what eval.json holds."""
    parser = _parser()
    overrides = [x for x in argv if x.startswith("--config.")]
    a = parser.parse_args([x for x in argv if not x.startswith("--config.")])
    check_weights_arguments(parser, a)
    names = [n for arg in a.protocol or ["retrieval"] for n in arg.split(",") if n]
    explicit = "all" not in names
    config = load_run_config(a.workdir, a.config, overrides, a.init_from or "")
    out = a.out or os.path.join(a.workdir, "eval")

    run = Run(config)
    # The method's own evaluators (e.g. HERBS' 9-head vote) are protocols by their name.
    evaluators = run.method.evaluators()
    if not explicit:
        names = [*PROTOCOLS, *evaluators]
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in PROTOCOLS and n not in evaluators]
    if unknown:
        raise ValueError(
            f"unknown protocol {unknown[0]!r}; choose from {sorted(PROTOCOLS)}, the "
            f"evaluators of config.method={config.method!r} {sorted(evaluators)}, or 'all'"
        )
    protocols = {name: PROTOCOLS[name] for name in names if name not in evaluators}
    step = None
    if a.init_from:
        state = create_train_state(run.method, None, run.image_shape, config.seed, a.init_from)
    else:
        state, step = restore_checkpoint(run, config.seed, a.workdir, a.step)
    state = put_replicated(state, run.mesh)
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(out, exist_ok=True)

    embeds: dict[str, Embed] = {}
    cache: dict[tuple[str, str], Features] = {}

    def features_of(role: str, output: str) -> Features:
        if (role, output) not in cache:
            if output not in embeds:
                embed = feature_embed(run.method, output)
                embeds[output] = flip_averaged(embed) if a.flip else embed
            data = {k: v for k, v in config.data.to_dict().items() if k != "num_workers"}
            source = run.sources[role]
            key = fingerprint(
                dict(
                    weights=weights_identity(a, step),
                    feature=output,
                    flip=a.flip,
                    data=data,
                    split=config.data[f"{role}_split"],
                    model=config.model.to_dict(),
                    files=files_identity(source),
                )
            )
            name = role if output == a.features else f"{role}_{output}"
            cache[(role, output)], hit = cached_features(
                cache_path(out, name),
                key,
                lambda: run.extractor.extract(role, embeds[output], state),
                paths=getattr(source, "paths", None),
                write=writer,
                refresh=a.no_cache,
                replaced=lambda: run.extractor.replaced.get(role, []),
            )
            if hit:
                print(f"features {role}: loaded {cache_path(out, name)}")
                run.extractor.replaced[role] = replaced_images(cache_path(out, name))
        return cache[(role, output)]

    results: dict[str, float] = {}
    for name in names:
        if name in evaluators:  # keys as in the trainer's eval.json: `name/metric`
            metrics = evaluators[name](state, run.extractor)
            results.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
            continue
        protocol = protocols[name]
        output = protocol.output or a.features
        try:
            feats = {role: features_of(role, output) for role in protocol.splits(config)}
            metrics = protocol.run(feats, config)
        except (NotImplementedError, MissingFeatureError) as err:
            if explicit or (isinstance(err, MissingFeatureError) and protocol.output is None):
                raise SystemExit(f"error: {name}: {err}") from None
            print(f"skipped {name}: {err}")  # 'all' runs what applies to this model
            continue
        results.update({f"{name}_{k}": float(v) for k, v in metrics.items()})

    payload = {
        "step": step,
        "weights": a.init_from or os.path.abspath(a.workdir),
        "features": a.features,
        "flip": a.flip,
        **results,
    }
    replaced = {split: names for split, names in run.extractor.replaced.items() if names}
    if replaced:  # black stand-ins under skip_bad: the numbers are not of these images
        payload["replaced_images"] = replaced
    print(format_table(results))
    # Every process takes part in an extraction (it gathers across processes).
    test = None if a.no_plots else features_of("test", a.features)
    if writer:
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump(payload, f, indent=2)
        if test is not None:
            _grid_pictures(out, run, test, config, a)
            if plots.recall_points(results)[0]:
                plots.recall_curve(os.path.join(out, "recall_curve.png"), {out: results})
        print(f"wrote {os.path.join(out, 'eval.json')}")
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
