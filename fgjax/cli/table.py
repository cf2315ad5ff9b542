"""One table for every method: `fgjax table`.

    fgjax table --preset cpu --data DIR/cub100_crops227 --out runs/table [--seeds 0 1 2]
    fgjax table --preset tiny --out runs/table_tiny          # the wiring, in minutes
    fgjax table ... --cells lcr --seeds 1                     # one cell again

Trains and evaluates every cell of `fgjax.bench.presets.CELLS` (MoCo v2, BYOL, LCR
faithful and fixed, LEAD++, BuCSFR from coarse labels, supervised and HERBS from fine
labels, the five metric-learning baselines on the zero-shot split, and the untrained
backbone) under one preset: the same data, backbone family, image size and epochs for
every cell. Every row gets the same evaluation on the same splits (the preset's
protocols: Recall@1/2/4/8, mAP, MAP@R, NMI, kNN top-1, the fast linear probe) on the
method's embedding, on plain GAP of its backbone and, for ResNet backbones, on the
training-free SCDA and CFGA+ descriptors (GAP being the second row).

Each cell and seed is a workdir `OUT/<cell>/seed<N>`: a rerun skips finished cells
(their `table.json`) and resumes a killed one from its checkpoint. `OUT/table.md` gets
the table (mean +- std over seeds, the time per cell, a paired comparison with MoCo v2
and each cell's command), `OUT/table.csv` every number, `OUT/table.png` one panel per
metric with error bars (`OUT/table_recall1.png`: Recall@1 alone).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax

from fgjax.bench import summary
from fgjax.bench.cub100 import write_manifest
from fgjax.bench.presets import (
    CELL_NAMES,
    CELLS,
    DESCRIPTORS,
    PRESETS,
    Cell,
    Data,
    Preset,
    cell_config,
    eval_config,
    required_inputs,
)
from fgjax.cli import has_method_package
from fgjax.core.cli import command
from fgjax.core.sharding import put_replicated
from fgjax.eval.features import Features, MissingFeatureError
from fgjax.eval.protocols import get_protocol
from fgjax.train.evaluation import load_weights
from fgjax.train.loop import train_and_evaluate
from fgjax.train.run import Run, backbone_embed, feature_embed
from fgjax.train.state import create_train_state

RESULT = "table.json"
REFERENCE = ("moco", "embedding")  # the paired comparison's baseline row


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fgjax table", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="the table's folder (one workdir per cell)")
    p.add_argument("--data", default="", help="the preset's data folder (not for tiny)")
    p.add_argument(
        "--weights",
        default=".",
        help="gpu preset: the folder of the pretrained files (resnet50-19c8e357.pth, "
        "swin_large_patch4_window12_384_22k.pth, LEAD++'s ViT-B-16.pt and prototypes)",
    )
    p.add_argument(
        "--ddt-crops",
        default="",
        help="gpu preset: LEAD++'s DDT crops (`fgjax ddt`; default the recipe's "
        "data/cub_ddt_crops)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="default: the preset's")
    p.add_argument(
        "--cells", default=",".join(CELL_NAMES), help=f"comma-separated of {', '.join(CELL_NAMES)}"
    )
    p.add_argument("--list", action="store_true", help="print the cells and their commands")
    return p


def prepare_data(
    preset: Preset, data: str, out: str, weights: str = ".", ddt_crops: str = ""
) -> Data:
    """The preset's `Data`; for the CPU preset its two manifests, written into `out`;
    for the GPU preset `weights`, the folder of the pretrained files, and `ddt_crops`."""
    if preset.name == "tiny":
        return Data(root="")
    if not os.path.isdir(data):
        raise FileNotFoundError(f"--data {data!r}: no folder there ({preset.data})")
    if preset.name == "gpu":
        if not os.path.isdir(weights):
            raise FileNotFoundError(f"--weights {weights!r}: no folder there")
        crops = os.path.abspath(ddt_crops) if ddt_crops else ""
        return Data(os.path.abspath(data), weights=os.path.abspath(weights), ddt_crops=crops)
    root = os.path.abspath(data)
    manifest = write_manifest(root, os.path.join(out, "manifest.csv"), names=True)
    zero_shot = os.path.join(out, "manifest_zero_shot.csv")
    write_manifest(root, zero_shot, names=True, seen_classes=50)
    return Data(root=root, manifest=manifest, zero_shot=zero_shot, num_classes=100)


def cell_command(preset: Preset, a: argparse.Namespace, cell: str, seed: int) -> str:
    """The command that (re)runs one cell and seed alone."""
    data = f" --data {a.data}" if a.data else ""
    if preset.name == "gpu" and a.weights != ".":
        data += f" --weights {a.weights}"
    if preset.name == "gpu" and a.ddt_crops:
        data += f" --ddt-crops {a.ddt_crops}"
    return f"fgjax table --preset {preset.name} --out {a.out}{data} --cells {cell} --seeds {seed}"


def _roles(config, protocols: Sequence[str]) -> list[str]:
    """The splits ('train', 'test') the protocols read."""
    return sorted({r for name in protocols for r in get_protocol(name).splits(config)})


def _features(run: Run, embed, state, config, protocols: Sequence[str]) -> dict[str, Features]:
    """The splits the protocols read, extracted with `embed`."""
    return {role: run.extractor.extract(role, embed, state) for role in _roles(config, protocols)}


def score(features: dict[str, Features], config, protocols: Sequence[str]) -> dict[str, float]:
    """Every protocol of the preset on the same features: `{protocol_metric: value}`."""
    results: dict[str, float] = {}
    for name in protocols:
        protocol = get_protocol(name)
        metrics = protocol.run({r: features[r] for r in protocol.splits(config)}, config)
        results.update({f"{name}_{k}": float(v) for k, v in metrics.items()})
    return results


def _descriptor_rows(run: Run, config, state, preset: Preset) -> dict[str, dict[str, float]]:
    """SCDA and CFGA+ of the backbone (training-free; GAP is the "gap" row) on each split
    of the evaluation `run`, through its test transform, scored by the preset's protocols
    (needs cfga); `config`: the run's."""
    from fgjax.cli.describe import Pipeline, compute_descriptors

    size = config.data.image_size  # the evaluation's Resize + CenterCrop
    short = round(size / config.data.eval_resize_ratio)
    pipeline = Pipeline(short=short, crop=size, lcc=False, batch_size=64)
    weights = (state.params, state.model_state)
    per_split = {}
    for role in _roles(config, preset.protocols):
        values, labels = compute_descriptors(
            run, weights, list(DESCRIPTORS), pipeline, pipeline.batch_size, config.data, False, role
        )
        coarse = run.sources[role].coarse_labels
        per_split[role] = {n: Features(values[n], labels, coarse) for n in DESCRIPTORS}
    return {
        name: score({r: per_split[r][name] for r in per_split}, config, preset.protocols)
        for name in DESCRIPTORS
    }


def run_cell(cell: Cell, preset: Preset, seed: int, data: Data, out: str) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell and seed; its result (also
    `OUT/<cell>/seed<N>/table.json`, which makes a rerun skip it)."""
    workdir = os.path.join(out, cell.name, f"seed{seed}")
    path = os.path.join(workdir, RESULT)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    config = cell_config(cell, preset, seed, data, out)
    start = time.time()
    if cell.trained:
        train_and_evaluate(config, workdir)
    trained_at = time.time()
    model = Run(config)  # the trained structure (a zero-shot cell: its own classes)
    evaluation = eval_config(config, cell, preset, data)
    run = Run(evaluation)  # the evaluation splits and transform, alike for every cell
    if cell.trained:
        state, step = load_weights(model, seed, None, workdir)
    else:
        init_from = config.model.init_from  # the GPU preset's: the ImageNet backbone
        fresh = create_train_state(model.method, None, model.image_shape, seed, init_from)
        state, step = put_replicated(fresh, model.mesh), 0
    rows = {}
    backbone = "layer4" if config.model.arch.startswith("swin") else "stage4"
    embeds = {
        "embedding": feature_embed(model.method, "pooled"),
        "gap": backbone_embed(model.method, backbone),
    }
    for row, embed in embeds.items():
        try:
            feats = _features(run, embed, state, evaluation, preset.protocols)
        except MissingFeatureError as err:
            print(f"{cell.name}: no {row} row: {err}")
            continue
        rows[row] = score(feats, evaluation, preset.protocols)
    if backbone == "stage4" and has_method_package("cfga"):
        rows.update(_descriptor_rows(run, evaluation, state, preset))
    result = {
        "cell": cell.name,
        "seed": seed,
        "preset": preset.name,
        "rows": rows,
        "steps": int(step or 0),
        "images_seen": images_seen(model, config.train.keep_last_batch, int(step or 0)),
        "train_seconds": round(trained_at - start, 1),
        "eval_seconds": round(time.time() - trained_at, 1),
    }
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".partial", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".partial", path)
    return result


def images_seen(run: Run, keep_last: bool, steps: int) -> int:
    """The training images `steps` steps of `run` read: `steps` full batches, but with
    `keep_last` each finished epoch's partial last batch counts only its images."""
    if not keep_last:
        return steps * run.info.batch_size
    epochs, rest = divmod(steps, run.steps_per_epoch)
    return epochs * run.info.num_train_examples + rest * run.info.batch_size


def _check_inputs(cells: Sequence[Cell], preset: Preset, data: Data, out: str) -> None:
    """Fail before any training when a cell's weights or crops are missing (all named)."""
    wanted = {p for cell in cells for p in required_inputs(cell_config(cell, preset, 0, data, out))}
    missing = sorted(p for p in wanted if not os.path.exists(p))
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(missing)}: the pretrained files go in --weights "
            f"({data.weights}); LEAD++'s DDT crops (--ddt-crops) are written by `fgjax ddt` "
            "(see docs/benchmarks.md), or leave a cell out with --cells"
        )


def finished_results(out: str) -> list[dict[str, Any]]:
    """Every finished cell and seed in `out` (this run's and earlier runs'), in cell order."""
    found = []
    for cell in CELLS:
        for path in sorted(glob.glob(os.path.join(out, cell.name, "seed*", RESULT))):
            with open(path) as f:
                found.append(json.load(f))
    return found


def write_outputs(out: str, results: list[dict[str, Any]], cells: list[Cell], preset, a) -> str:
    """OUT/table.md, table.csv, table.png and table_recall1.png from `results`; returns
    the markdown."""
    seeds = sorted({r["seed"] for r in results})
    times = {}
    for cell in cells:
        mine = [r for r in results if r["cell"] == cell.name]
        if mine:
            seconds = [r["train_seconds"] + r["eval_seconds"] for r in mine]
            times[cell.name] = (
                sum(seconds) / len(seconds),
                mine[0]["steps"],
                mine[0]["images_seen"],
            )
    lines = [
        f"# fgjax table, preset {preset.name}",
        "",
        f"{preset.description}. Seeds {seeds}; every number in % as mean +- sample std over seeds.",
        "",
        summary.markdown_table(results, cells),
        "",
        summary.paired_table(results, REFERENCE, "retrieval_recall@1", "Recall@1"),
        "",
        "| cell | minutes per seed (train + evaluation) | steps | images seen | command |",
        "|---|---|---|---|---|",
    ]
    for cell in cells:
        if cell.name in times:
            minutes, steps, seen = times[cell.name]
            command_line = cell_command(preset, a, cell.name, seeds[0])
            lines.append(
                f"| {cell.name} | {minutes / 60:.1f} | {steps} | {seen} | `{command_line}` |"
            )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    summary.write_csv(os.path.join(out, "table.csv"), results)
    summary.draw_figure(os.path.join(out, "table.png"), results, cells)
    headline = os.path.join(out, "table_recall1.png")  # the README's: Recall@1 alone
    summary.draw_figure(headline, results, cells, summary.METRICS[:1])
    return text


def table(argv: list[str]) -> dict[str, Any]:
    """Run the command line `argv` (without the program name); returns the results."""
    parser = _parser()
    a = parser.parse_args(argv)
    preset = PRESETS[a.preset]
    seeds = a.seeds or list(preset.seeds)
    wanted = [n for n in a.cells.split(",") if n]
    unknown = [n for n in wanted if n not in CELL_NAMES]
    if unknown:
        raise ValueError(f"--cells: unknown cell {unknown[0]!r}; choose from {CELL_NAMES}")
    cells = [c for c in CELLS if c.name in wanted]
    if a.list:
        for cell in cells:
            for seed in seeds:
                print(
                    f"{cell.name:<13} {cell.labels:<7} {cell_command(preset, a, cell.name, seed)}"
                )
        return {}
    os.makedirs(a.out, exist_ok=True)
    data = prepare_data(preset, a.data, a.out, a.weights, a.ddt_crops)
    for cell in [c for c in cells if c.package and not has_method_package(c.package)]:
        print(f"skipped {cell.name}: this install has no fgjax/methods/{cell.package}/")
        cells.remove(cell)
    _check_inputs(cells, preset, data, a.out)
    for cell in cells:
        for seed in seeds:
            print(f"== {cell.name} seed {seed}  ({cell_command(preset, a, cell.name, seed)})")
            run_cell(cell, preset, seed, data, a.out)
    done = finished_results(a.out)
    print(write_outputs(a.out, done, list(CELLS), preset, a))
    return {"results": done}


main = command(table)


if __name__ == "__main__":
    main()
