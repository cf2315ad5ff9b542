"""Input-pipeline throughput of two-view SSL training: fgjax's grain loader against a
torchvision DataLoader doing the same transforms on the same files.

Per image, both pipelines decode the JPEG once and take two views, each
RandomResizedCrop(224, scale=(0.2, 1), ratio=(3/4, 4/3), bilinear) + horizontal flip
(p=0.5), as uint8 (no normalisation: fgjax normalises on the device). torchvision is the
MoCo TwoCropsTransform recipe: PIL open + convert('RGB') once, the transform twice,
PILToTensor, default collate. fgjax is `make_train_loader` over a CSV manifest of the
same files, with one ViewSpec per view (PIL, JPEG draft mode where the crops allow).

Every measurement is a fresh subprocess (pinned with its workers to `--workers` cores
when the machine has more): `--warmup` batches, then `--batches` timed batches of
`--batch` images, cycling over the files. The runs alternate (torchvision, fgjax,
torchvision, ...) `--repeats` times per dataset; the table gives
medians of examples/s (wall clock; per core = / cores) and of examples per CPU-second
(the CPU time of the measuring process and its workers: less sensitive to other load).
torch is not an fgjax dependency: `--torch-python` names an interpreter that has torch
and torchvision (this one by default, if it has them; else that side is skipped).

    python benchmarks/input_pipeline.py --torch-python /work/torchvenv/bin/python \
        --out benchmarks/input_pipeline.md
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Image folders (<root>/<class>/*.jpg) under the shared data folder.
DATASETS = {
    "crops": ("cub100_crops227/images", "CUB-100 crops (227 px)"),
    "full": ("cub200_official_sample/CUB_200_2011/images", "CUB-200 official sample (~500x375)"),
}
SIZE, SCALE = 224, (0.2, 1.0)


def write_manifest(folder: str, csv_path: str) -> int:
    """path,label rows for folder/<class>/*.jpg (sorted); returns the number of files."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    rows = [
        (os.path.join(c, f), label)
        for label, c in enumerate(classes)
        for f in sorted(os.listdir(os.path.join(folder, c)))
        if f.lower().endswith((".jpg", ".jpeg"))
    ]
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return len(rows)


def read_manifest(csv_path: str, root: str) -> tuple[list[str], list[int]]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [os.path.join(root, r["path"]) for r in rows], [int(r["label"]) for r in rows]


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its descendants."""
    parent, ticks = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parent[int(pid)] = int(fields[1])
        ticks[int(pid)] = int(fields[11]) + int(fields[12])  # utime + stime
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        p = frontier.pop()
        children = [c for c, pp in parent.items() if pp == p and c not in mine]
        mine.update(children)
        frontier.extend(children)
    return sum(ticks[p] for p in mine if p in ticks) / os.sysconf("SC_CLK_TCK")


def time_batches(iterator, warmup: int, batches: int, check) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) for `batches` batches after
    `warmup` untimed ones; `check`s the first."""
    check(next(iterator))
    for _ in range(warmup - 1):
        next(iterator)
    cpu, start = tree_cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - start, tree_cpu_seconds() - cpu


def run_fgjax(args) -> dict:
    import grain
    import numpy as np
    import PIL

    from fgjax.data import CsvManifestSource, ViewSpec, make_train_loader

    source = CsvManifestSource(args.manifest, root=args.root)
    views = [ViewSpec(name, SIZE, crop_scale=SCALE) for name in ("q", "k")]
    loader = make_train_loader(
        source,
        global_batch_size=args.batch,
        views=views,
        seed=0,
        num_workers=args.workers,
    )

    def check(batch):
        for v in batch["views"].values():
            assert v.dtype == np.uint8 and v.shape == (args.batch, SIZE, SIZE, 3), v.shape

    seconds, cpu_seconds = time_batches(iter(loader), args.warmup, args.batches, check)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "versions": {
            "pillow": PIL.__version__,
            "grain": getattr(grain, "__version__", "-"),
            "numpy": np.__version__,
        },
    }


def run_torch(args) -> dict:
    import PIL
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    paths, labels = read_manifest(args.manifest, args.root)
    view = transforms.Compose(
        [
            transforms.RandomResizedCrop(SIZE, scale=SCALE),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )

    class TwoViews(torch.utils.data.Dataset):
        def __len__(self):  # enough for every batch asked for, cycling over the files
            return (args.warmup + args.batches) * args.batch

        def __getitem__(self, i):
            with Image.open(paths[i % len(paths)]) as f:
                img = f.convert("RGB")
            return [view(img), view(img)], labels[i % len(paths)]

    loader = torch.utils.data.DataLoader(
        TwoViews(),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )

    def check(batch):
        (q, k), _ = batch
        assert q.dtype == torch.uint8 and q.shape == (args.batch, 3, SIZE, SIZE), q.shape

    seconds, cpu_seconds = time_batches(iter(loader), args.warmup, args.batches, check)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pillow (torch env)": PIL.__version__,
        },
    }


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def has_torch(python: str) -> bool:
    probe = [python, "-c", "import torch, torchvision"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def measure(python: str, pipeline: str, manifest: str, root: str, args) -> dict:
    cmd = [
        python,
        os.path.abspath(__file__),
        "--run",
        pipeline,
        "--manifest",
        manifest,
        "--root",
        root,
        "--workers",
        str(args.workers),
        "--batch",
        str(args.batch),
        "--batches",
        str(args.batches),
        "--warmup",
        str(args.warmup),
    ]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], cores: int) -> str:
    """Medians per (pipeline, dataset), ratios to torchvision on the same data."""
    lines = [
        f"| pipeline | dataset | examples/s | per core ({cores}) | vs torchvision | "
        "examples per CPU-second | vs torchvision | runs (examples/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reference = {r["dataset"]: r for r in rows if r["pipeline"] == "torchvision"}

    def ratio(r: dict, key: str) -> str:
        ref = reference.get(r["dataset"])
        return "-" if ref is None else f"{r[key] / ref[key]:.2f}x"

    for r in rows:
        lines.append(
            f"| {r['pipeline']} | {DATASETS[r['dataset']][1]} | "
            f"{r['wall']:.0f} | {r['wall'] / cores:.0f} | {ratio(r, 'wall')} | "
            f"{r['cpu']:.0f} | {ratio(r, 'cpu')} | {', '.join(f'{x:.0f}' for x in r['runs'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(REPO, os.pardir, "shared", "data"))
    p.add_argument("--datasets", default="crops,full", help=f"of {sorted(DATASETS)}")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-python", default="", help="an interpreter with torch+torchvision")
    p.add_argument("--out", default="", help="append the table (markdown) to this file")
    p.add_argument("--json", default="", help="write every run to this JSON file")
    # One measurement, in a subprocess (internal).
    p.add_argument("--run", choices=("fgjax", "torchvision"), help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.run:
        result = (run_fgjax if args.run == "fgjax" else run_torch)(args)
        result["examples_per_s"] = args.batch * args.batches / result["seconds"]
        result["examples_per_cpu_s"] = args.batch * args.batches / result["cpu_seconds"]
        print(json.dumps(result))
        return

    load_before = os.getloadavg()[0]
    available = sorted(os.sched_getaffinity(0))
    cores = min(args.workers, len(available))
    os.sched_setaffinity(0, available[:cores])  # inherited by every subprocess and worker
    torch_python = args.torch_python or sys.executable
    pipelines = [("fgjax", sys.executable)]
    if has_torch(torch_python):
        pipelines.insert(0, ("torchvision", torch_python))
    else:
        print(
            f"torchvision side skipped: {torch_python} cannot import torch and torchvision "
            "(give --torch-python)"
        )

    rows, runs, versions = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            root = os.path.join(args.data, DATASETS[name][0])
            manifest = os.path.join(tmp, f"{name}.csv")
            n = write_manifest(root, manifest)
            print(f"{name}: {n} files under {os.path.normpath(root)}", flush=True)
            results = {p: [] for p in pipelines}
            for r in range(args.repeats):
                for pipeline in pipelines:  # interleaved: load drifts hit every pipeline
                    out = measure(pipeline[1], pipeline[0], manifest, root, args)
                    versions.update(out["versions"])
                    results[pipeline].append(out)
                    runs.append({"dataset": name, "pipeline": pipeline[0], "repeat": r, **out})
                    print(
                        f"  {pipeline[0]:11s} repeat {r}: "
                        f"{out['examples_per_s']:.0f} examples/s, "
                        f"{out['examples_per_cpu_s']:.0f} per CPU-second",
                        flush=True,
                    )
            for (pipeline, _), outs in results.items():
                rows.append(
                    {
                        "pipeline": pipeline,
                        "dataset": name,
                        "runs": [o["examples_per_s"] for o in outs],
                        "wall": statistics.median(o["examples_per_s"] for o in outs),
                        "cpu": statistics.median(o["examples_per_cpu_s"] for o in outs),
                    }
                )
    header = (
        f"{datetime.date.today().isoformat()}, {cpu_model()}, {cores} cores of "
        f"{os.cpu_count()}, {args.workers} workers, batch {args.batch} (two {SIZE}-px views "
        f"per image), {args.batches} batches after {args.warmup} warm-up, median of "
        f"{args.repeats} interleaved runs; "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f"; 1-min load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}"
        + f"\n\n`{shlex.join(['python', *sys.argv])}`\n"
    )
    text = header + "\n" + table(rows, cores) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
