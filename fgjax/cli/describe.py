"""Retrieval with gradient (CFGA), SCDA and pooling descriptors: `fgjax describe`.

    fgjax describe --init-from resnet50-19c8e357.pth --config configs/cub_cfga.py \\
        --config.data.root=/data/cub --out runs/cub_cfga_r50
    fgjax describe --workdir runs/cub_ms_loss --method embedding,scda,cfga_plus

The first puts a weights file into the recipe's backbone (as `fgjax eval
--init-from`); the second restores a trained run (the newest checkpoint, or `--step N`).
No training either way (../shared/methods/cfga.md).

`--method` (repeatable or comma-separated; default cfga_plus,scda,gap) picks descriptor
families of `descriptors.METHOD_DESCRIPTORS`: 'cfga' (the six CFGA 4-b-k vectors and
CFGA+), 'cfga_plus', 'scda' (both normalisation orders), 'gap' (GAP and L2(GAP, GMP)), and
'embedding', a trained run's own retrieval embedding (`Method.embed`); any single name of
`descriptors.DESCRIPTORS` works too (e.g. 'cfga_4_1_2', the ablation 'cfga_eq5_4_1_2').

`--pipeline` sets the test preprocessing and the SCDA mask (spec §4.5, table `PIPELINES`):
'imagenet' (uncropped, shorter side capped at 256, largest connected component),
'dgpcrl' (cap 280, no LCC), 'ms_loss' / 'cosface' / 'arcface' (Resize 256 + CenterCrop 227)
and 'proxy_anchor' (Resize 256 + CenterCrop 224), all three without LCC. Default: the
config's method when it is one of these, else 'imagenet'. Uncropped images are padded
into a few batch shapes (`fgjax.data.shape_buckets`: one compile each) and the backbone
masks the padding, so each image's descriptors are those of the image alone; with
'embedding' (a method's own head, which knows nothing of padding) every exact size gets
its own shape.

Output in OUT (`--out`, default WORKDIR/describe): `descriptors_<split>.npz` (one float32
[N, D] array per descriptor, 'labels', 'paths', the pipeline settings and a fingerprint;
reused while the weights and settings are the same, extended with descriptors it lacks;
`--no-cache` recomputes) and `retrieval.json`: Recall@K (`config.eval.recall_ks`) and
MAP@R per descriptor, leave-one-out on the split (query = gallery, self excluded; CFGA's
protocol, spec §8), also printed as a table in percent.

The network runs in float32 unless `--config.model.dtype` says otherwise (the descriptors
threshold gradients against their means). One process.

This entry lives above `fgjax.eval` and `fgjax.methods` (see tests/test_layering.py): it
builds methods and restores train states.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from fgjax.cli.eval import add_weights_arguments, check_weights_arguments
from fgjax.core.cli import command
from fgjax.core.progress import progress
from fgjax.data.eval_loader import make_eval_loader
from fgjax.data.shape_buckets import PAD_TO, make_shape_bucket_loader
from fgjax.eval.cache import fingerprint, read_if_fingerprint, save_npz_atomic
from fgjax.eval.features import normalize_images
from fgjax.eval.retrieval import retrieval_metrics
from fgjax.methods import backbone_variables
from fgjax.methods.cfga.descriptors import DESCRIPTORS, METHOD_DESCRIPTORS, describe_fn
from fgjax.train.checkpoint import checkpoint_step
from fgjax.train.run import Run, load_run_config, restore_checkpoint, weights_identity
from fgjax.train.state import create_train_state, load_init_from
from fgjax.weights import require_complete

DEFAULT_METHODS = ("cfga_plus", "scda", "gap")
EMBEDDING = "embedding"
METHODS = (*METHOD_DESCRIPTORS, EMBEDDING)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """Test preprocessing and mask of one model family (spec §4.5).

    `crop` 0: uncropped, the shorter side capped at `short` (PIL bilinear, only when
    larger); else Resize(shorter side = `short`) + CenterCrop(`crop`). `lcc`: keep only the
    largest 4-connected component of the SCDA mask. `batch_size`: the default batch."""

    short: int
    crop: int
    lcc: bool
    batch_size: int


PIPELINES = {
    "imagenet": Pipeline(short=256, crop=0, lcc=True, batch_size=8),
    "dgpcrl": Pipeline(short=280, crop=0, lcc=False, batch_size=8),
    "ms_loss": Pipeline(short=256, crop=227, lcc=False, batch_size=64),
    "cosface": Pipeline(short=256, crop=227, lcc=False, batch_size=64),
    "arcface": Pipeline(short=256, crop=227, lcc=False, batch_size=64),
    "proxy_anchor": Pipeline(short=256, crop=224, lcc=False, batch_size=64),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fgjax describe",
        description=__doc__.split("\n\n")[0],
        epilog="Any --config.FIELD=VALUE overrides that field of the config.",
    )
    add_weights_arguments(p, "a weights file (.pth/.pt/.safetensors/.npz) for the backbone")
    p.add_argument(
        "--method",
        action="append",
        help=f"{', '.join(METHODS)} or a descriptor name (repeatable or comma-separated; "
        f"default {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--pipeline",
        help=f"{', '.join(PIPELINES)} (default: the config's method if listed, else imagenet)",
    )
    p.add_argument("--split", help="the split described (default config.data.test_split)")
    p.add_argument("--out", help="output folder (default WORKDIR/describe)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the pipeline's)")
    p.add_argument("--no-cache", action="store_true", help="recompute the descriptors")
    return p


def _usage_checks(p: argparse.ArgumentParser, a: argparse.Namespace, methods: list[str]) -> None:
    check_weights_arguments(p, a)
    if a.init_from and not os.path.exists(a.init_from):
        raise FileNotFoundError(f"--init-from: no file {a.init_from}")
    unknown = [m for m in methods if m not in METHODS and m not in DESCRIPTORS]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r}; choose from {list(METHODS)} or a descriptor "
            f"name of fgjax.methods.cfga.descriptors.DESCRIPTORS ({', '.join(DESCRIPTORS)})"
        )
    if EMBEDDING in methods and not a.workdir:
        raise ValueError(
            "method 'embedding' is a trained run's own embedding: give --workdir RUN "
            "(a weights file has only a backbone)"
        )
    if a.pipeline is not None and a.pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {a.pipeline!r}; choose from {list(PIPELINES)}")
    if a.batch_size is not None and a.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {a.batch_size}")


def descriptor_names(methods: list[str]) -> list[str]:
    """The descriptor names (npz keys) the methods produce, in order, without repeats."""
    names = [n for m in methods for n in METHOD_DESCRIPTORS.get(m, (m,))]
    return list(dict.fromkeys(names))


def _loader(run: Run, pipeline: Pipeline, batch_size: int, data: Any, pad: bool, role: str):
    """`run`'s `role` split through `pipeline`; uncropped images padded into shared batch
    shapes when `pad`, else one batch shape per exact size."""
    source = run.sources[role]
    common = dict(batch_size=batch_size, skip_bad=data.skip_bad, num_workers=data.num_workers)
    if pipeline.crop:
        return make_eval_loader(
            source, image_size=pipeline.crop, resize_ratio=pipeline.crop / pipeline.short, **common
        )
    pad_to = PAD_TO if pad else 1
    loader = make_shape_bucket_loader(source, max_short=pipeline.short, pad_to=pad_to, **common)
    print(
        f"{len(source)} images of {loader.num_sizes} sizes in {len(loader.shapes)} batch "
        f"shapes (padded to multiples of {pad_to}; one compile each), "
        f"{len(loader)} batches of {batch_size}"
    )
    return loader


def load_weights(run: Run, a: argparse.Namespace, seed: int, step: int | None):
    """`(params, model_state)` to describe with: the trained run's state at `step`, or for
    `--init-from` the backbone alone, loaded from the file into abstract variables (no
    initialisation is compiled: nothing but the backbone is used)."""
    if not a.init_from:
        state, _ = restore_checkpoint(run, seed, a.workdir, step)
        return state.params, state.model_state
    abstract = jax.eval_shape(lambda: create_train_state(run.method, None, run.image_shape, seed))
    params, model_state = load_init_from(
        run.method, abstract.params, abstract.model_state, a.init_from
    )
    variables = backbone_variables(params, model_state)
    require_complete(variables, a.init_from, run.method.config.model.arch)
    model_state = {c: {"backbone": v} for c, v in variables.items() if c != "params"}
    return {"backbone": variables["params"]}, model_state


def compute_descriptors(
    run: Run,
    weights: tuple[Any, Any],
    names: list[str],
    pipeline: Pipeline,
    batch_size: int,
    data: Any,
    show_progress: bool = True,
    role: str = "test",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`({name: float32 [N, D]}, labels int32 [N])` of `run`'s `role` source ('test' or
    'train'), in source order, through `pipeline`: one jitted function of the descriptors
    and the embedding (compiled once per batch shape). `weights`: `(params, model_state)`
    of the method (the backbone group alone without 'embedding'); `data`: the config.data
    (skip_bad, num_workers)."""
    method, (mean, std) = run.method, (run.extractor.mean, run.extractor.std)
    own = [n for n in names if n != EMBEDDING]  # fgjax.methods.cfga.descriptors' names
    describe = describe_fn(method.backbone(), own, use_lcc=pipeline.lcc) if own else None
    weights = jax.device_put(weights)  # once, not at every batch; one device

    @jax.jit
    def apply(
        weights: tuple[Any, Any], images: jax.Array, valid: jax.Array | None
    ) -> dict[str, jax.Array]:
        x = normalize_images(images, mean, std)
        out = {}
        if describe is not None:
            out.update(describe(backbone_variables(*weights), x, valid))
        if EMBEDDING in names:
            out[EMBEDDING] = method.embed(*weights, x)
        return out

    loader = _loader(run, pipeline, batch_size, data, EMBEDDING not in names, role)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    index, labels, bad = [], [], []
    # Per batch (a log line every 10), with the images done so far.
    bar = progress(len(loader), desc="describe", enabled=show_progress, every=10)
    done = 0
    for batch in loader:
        keep = batch["mask"]
        out = apply(weights, batch["images"], batch.get("valid"))  # None: crops
        for name in names:
            rows[name].append(np.asarray(out[name], np.float32)[keep])
        index.append(batch["index"][keep])
        labels.append(batch["label"][keep])
        bad.extend(batch["bad_images"])
        done += int(keep.sum())
        bar.set_postfix(images=f"{done}/{loader.num_examples}")
        bar.update(1)
    bar.close()
    for error in bad:
        print(f"warning: describe: a black image stands in for: {error}")
    order = np.argsort(np.concatenate(index), kind="stable")
    return (
        {name: np.concatenate(rows[name])[order] for name in names},
        np.concatenate(labels)[order].astype(np.int32),
    )


def retrieval_table(
    features: dict[str, np.ndarray], labels: np.ndarray, ks: tuple[int, ...], split: str
) -> dict[str, dict[str, float]]:
    """Per descriptor: dim, similarity, Recall@K and MAP@R, leave-one-out on the split.

    The descriptors are ranked by dot product, as CFGA's `compute_recall_as_ms.py` does
    (every row of a descriptor has the same norm, 1 or sqrt(2) for CFGA+, so this is the
    cosine ranking too); a run's embedding by cosine, as `fgjax eval`."""
    table = {}
    for name, x in features.items():
        metric = "cosine" if name == EMBEDDING else "dot"
        found = retrieval_metrics(x, labels, ks=ks, metric=metric, split=split)
        table[name] = {
            "dim": int(x.shape[1]),
            "metric": metric,
            **{f"recall@{k}": found[f"recall@{k}"] for k in ks},
            "map@r": found["map@r"],
        }
    return table


def format_retrieval(table: dict[str, dict[str, Any]], ks: tuple[int, ...]) -> str:
    """Aligned rows: descriptor, dim, R@K..., MAP@R in percent (2 decimals)."""
    heads = ["descriptor", "dim", *(f"R@{k}" for k in ks), "MAP@R"]
    rows = [
        [name, str(row["dim"]), *(f"{100 * row[f'recall@{k}']:.2f}" for k in ks)]
        + [f"{100 * row['map@r']:.2f}"]
        for name, row in table.items()
    ]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    cells = [
        [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        for r in [heads, *rows]
    ]
    lines = ["  ".join(r) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe(argv: list[str]) -> dict[str, Any]:
    """Run the command line `argv` (without the program name); returns retrieval.json."""
    parser = _parser()
    overrides = [x for x in argv if x.startswith("--config.")]
    a = parser.parse_args([x for x in argv if not x.startswith("--config.")])
    methods = [m for arg in a.method or [",".join(DEFAULT_METHODS)] for m in arg.split(",") if m]
    _usage_checks(parser, a, methods)
    config = load_run_config(a.workdir, a.config, overrides, a.init_from or "")
    if not any(x.startswith("--config.model.dtype=") for x in overrides):
        config.model.dtype = "float32"
    name = a.pipeline or (config.method if config.method in PIPELINES else "imagenet")
    pipeline = PIPELINES[name]
    if a.split:
        config.data.test_split = a.split
    split = config.data.test_split
    out = a.out or os.path.join(a.workdir, "describe")
    print(f"pipeline {name}: {pipeline}")

    run = Run(config)
    step = None if a.init_from else checkpoint_step(a.workdir, a.step)

    names = descriptor_names(methods)
    settings = dict(
        pipeline=name,
        short=pipeline.short,
        crop=pipeline.crop,
        lcc=pipeline.lcc,
        mean=run.extractor.mean,
        std=run.extractor.std,
    )
    data = {k: v for k, v in config.data.to_dict().items() if k != "num_workers"}
    key = fingerprint(
        dict(
            weights=weights_identity(a, step),
            settings=settings,
            data=data,
            split=split,
            model=config.model.to_dict(),
        )
    )
    path = os.path.join(out, f"descriptors_{split}.npz")
    saved = {} if a.no_cache else (read_if_fingerprint(path, key) or {})
    missing = [n for n in names if n not in saved]
    if missing:
        batch_size = a.batch_size or pipeline.batch_size
        computed, labels = compute_descriptors(
            run,
            load_weights(run, a, config.seed, step),
            missing,
            pipeline,
            batch_size,
            config.data,
            show_progress=config.train.progress_bar,
        )
        if saved and not np.array_equal(saved["labels"], labels):
            saved = {}  # the split changed under the same settings: start afresh
        source = run.sources["test"]
        paths = getattr(source, "paths", None)
        arrays = {
            **saved,
            **computed,
            "labels": labels,
            "paths": np.array(list(paths) if paths is not None else [""] * len(labels), str),
            **{f"setting_{k}": np.array(v) for k, v in settings.items()},
            "fingerprint": np.array(key),
        }
        save_npz_atomic(path, **arrays)
        print(f"wrote {path}")
    else:
        print(f"descriptors: loaded {path}")
        arrays = saved
    features = {n: arrays[n] for n in names}
    ks = tuple(int(k) for k in config.eval.recall_ks)
    table = retrieval_table(features, arrays["labels"], ks, split)
    payload = {
        "weights": a.init_from or os.path.abspath(a.workdir),
        "step": step,
        "split": split,
        "num_images": int(len(arrays["labels"])),
        "settings": settings,
        "descriptors": table,
    }
    print(format_retrieval(table, ks))
    with open(os.path.join(out, "retrieval.json"), "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {os.path.join(out, 'retrieval.json')}")
    return payload


main = command(describe)


if __name__ == "__main__":
    main()
