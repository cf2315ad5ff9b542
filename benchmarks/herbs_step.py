"""HERBS train step (Swin-L/384 + HERBS head): images/s and peak device memory, fgjax
against the PyTorch original (timm Swin-L + the HERBS head, fp16 autocast + GradScaler),
and the largest micro-batch that runs.

    python benchmarks/herbs_step.py --out herbs.json                  # on the GPU
    python benchmarks/herbs_step.py --find-max-batch --out max.json   # largest batch
    python benchmarks/herbs_step.py --tiny --steps 2 --warmup 1       # CPU smoke test

Every measurement runs in a fresh subprocess of this script (`--child`), so each peak
memory is that setting's own and an out-of-memory error cannot poison the next one; the
parent imports neither jax nor torch. A run is `a<accumulate>[-remat]`: micro-batch
`--batch` (8, spec 5.1), `accumulate` micro-batches per optimiser step, `-remat` with
rematerialised Swin blocks (fgjax `config.model.remat`, timm `checkpoint_seq` in torch).

fgjax side: the trainer's jitted step (`make_train_step` + `jit_train_step`, photometric
augmentation included) of `configs/cub_herbs.py`, changed only by these flags; compute
dtype `--dtype` (`config.model.dtype`; 'auto' = bfloat16 on accelerators). Peak memory:
`memory_stats()['peak_bytes_in_use']` of the device (absent on CPU), plus XLA's compiled
memory analysis of the step. PyTorch side (`benchmarks/torch_herbs.py`): random-init timm
`swin_large_patch4_window12_384` (no download) with the HERBS head, the spec's loss, SGD
Nesterov with coupled weight decay, `--amp fp16` (autocast + GradScaler, the original) or
bf16; eager, as the original; peak `torch.cuda.max_memory_allocated`. Both take random
inputs already on the device.

Timing: `--warmup` untimed steps (compilation included), then `--steps` steps, each
synchronised (`block_until_ready` / `cuda.synchronize`); images/s = global batch / the
median step time. `vs_torch_original` on an fgjax row: its images/s over the PyTorch run
of the same `a<accumulate>` without checkpointing at `--amp fp16` (issue #14's goal >= 1.1).

`--find-max-batch`: per framework and remat setting (accumulate 1), the largest
micro-batch that runs `--probe-steps` steps, a multiple of `--resolution`: from `--batch`
upwards by doubling (after two successful tries: by extrapolating their peak memory
linearly to the device's limit, at most x4), then bisection, until a batch that runs and
one `--resolution` larger that runs out of memory bracket it; `--search-budget-s` per
search (the bracket so far is recorded with `complete: false` when it runs out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

ORIGINAL_ARCH = "swin_large_patch4_window12_384"
# --tiny: a 4-stage width-8 Swin at 64 px (taps of 64/16/4/4 tokens) for CPU checks.
TINY = dict(
    arch="swin_tiny_patch4_window7_224",
    swin=dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4),
    image_size=64,
    fpn_size=16,
    num_selects="32,8,2,2",
    tokens_per_node=16,
    num_classes=10,
)
OOM_MARKS = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemoryError", "Out of memory")
GIB = 2**30


# --------------------------------------------------------------------------- child side


def parse_run(run: str) -> tuple[int, bool]:
    """'a4-remat' -> (4, True); 'a1' -> (1, False)."""
    name, _, suffix = run.partition("-")
    if not name.startswith("a") or not name[1:].isdigit() or suffix not in ("", "remat"):
        raise ValueError(f"run {run!r}: expected a<accumulate>[-remat], e.g. a1 or a4-remat")
    return int(name[1:]), suffix == "remat"


def timed(step: Callable[[], None], warmup: int, steps: int) -> tuple[float, list[float]]:
    """(seconds of the warm-up, each timed step's seconds); `step` synchronises itself."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return warmup_s, times


def rates(global_batch: int, warmup_s: float, times: list[float]) -> dict:
    median = statistics.median(times)
    return {
        "images_per_s": global_batch / median,
        "step_ms_median": round(1000 * median, 2),
        "step_ms_min": round(1000 * min(times), 2),
        "step_ms_max": round(1000 * max(times), 2),
        "warmup_s": round(warmup_s, 2),
    }


def jax_child(args, accumulate: int, remat: bool) -> dict:
    import jax
    import numpy as np

    from fgjax.config import load_config_file, photometric_spec
    from fgjax.core.sharding import global_batch, make_mesh, put_replicated
    from fgjax.methods import RunInfo, build_method
    from fgjax.models.factory import compute_dtype
    from fgjax.train import optim
    from fgjax.train.state import create_train_state
    from fgjax.train.step import jit_train_step, make_train_step

    config = load_config_file(os.path.join(REPO, "configs", "cub_herbs.py"))
    batch = args.batch * accumulate
    config.train.batch_size = batch
    config.train.accumulate_steps = accumulate
    config.model.remat = remat
    config.model.dtype = args.dtype
    config.model.arch = args.arch
    config.model.overrides.update(json.loads(args.swin))
    config.model.overrides.img_size = args.image_size  # the arch name's, unless changed
    config.data.image_size = args.image_size
    config.herbs.fpn_size = args.fpn_size
    config.herbs.num_selects = tuple(int(k) for k in args.num_selects.split(","))
    config.herbs.tokens_per_node = args.tokens_per_node
    # CUB: 5,994 images, 187 optimiser steps per epoch; the step runs at epoch 0 (T = 64).
    per_epoch = 5994 // batch
    run = RunInfo(
        steps_per_epoch=per_epoch,
        total_steps=per_epoch * config.train.num_epochs,
        batch_size=batch,
        num_classes=args.num_classes,
        num_coarse_classes=0,
        num_train_examples=5994,
    )
    method = build_method(config, run)
    schedule = optim.make_schedule(
        config.optim, batch, per_epoch, config.train.num_epochs, accumulate
    )
    tx = optim.make_optimizer(config.optim, schedule)
    mesh = make_mesh()
    size = args.image_size
    state = put_replicated(create_train_state(method, tx, (2, size, size, 3), seed=0), mesh)
    frozen = {}
    specs = {name: photometric_spec(config, name) for name in method.view_names}
    rng = np.random.default_rng(0)
    data = global_batch(
        {
            "views": {"view1": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)},
            "label": rng.integers(0, args.num_classes, batch).astype(np.int32),
            "coarse_label": np.zeros(batch, np.int32),
            "index": np.arange(batch, dtype=np.int32),
        },
        mesh,
    )
    start = time.perf_counter()
    jitted = jit_train_step(make_train_step(method, tx, specs, run, accumulate), mesh)
    compiled = jitted.lower(state, frozen, data).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    holder = {"state": state, "metrics": None}

    def step() -> None:
        holder["state"], holder["metrics"] = compiled(holder["state"], frozen, data)
        jax.block_until_ready(holder)

    warmup_s, times = timed(step, args.warmup, args.steps)
    device = jax.devices()[0]
    row = {
        "framework": "fgjax",
        "device": device.device_kind,
        "jax": jax.__version__,
        "dtype": np.dtype(compute_dtype(args.dtype)).name,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_s": round(compile_s, 2),
        **rates(batch, warmup_s, times),
        "final_loss": float(holder["metrics"]["loss"]),
        "skipped_steps": int(holder["state"].bad_steps),
    }
    if analysis is not None:
        # What XLA planned for the step: live arguments + outputs (minus donated aliases) +
        # temporaries; the runtime peak below also holds the batch and allocator slack.
        planned = (
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes
        )
        row["compiled_temp_gib"] = round(analysis.temp_size_in_bytes / GIB, 3)
        row["compiled_total_gib"] = round(planned / GIB, 3)
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        row["peak_memory_gib"] = round(stats["peak_bytes_in_use"] / GIB, 3)
        row["peak_bytes"] = int(stats["peak_bytes_in_use"])
    if "bytes_limit" in stats:
        row["bytes_limit"] = int(stats["bytes_limit"])
    return row


def torch_child(args, accumulate: int, remat: bool) -> dict:
    import platform

    import timm
    import torch
    from torch_herbs import build_herbs, make_train_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = build_herbs(
        args.arch,
        num_classes=args.num_classes,
        fpn_size=args.fpn_size,
        num_selects=[int(k) for k in args.num_selects.split(",")],
        tokens_per_node=args.tokens_per_node,
        image_size=args.image_size,
        checkpoint=remat,
        **json.loads(args.swin),
    ).to(device)
    size = args.image_size
    micro = [
        (
            torch.randn(args.batch, 3, size, size, device=device),
            torch.randint(0, args.num_classes, (args.batch,), device=device),
        )
        for _ in range(accumulate)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_step = make_train_step(net, micro, args.amp)
    holder = {}

    def step() -> None:
        holder["loss"] = train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    warmup_s, times = timed(step, args.warmup, args.steps)
    row = {
        "framework": "torch",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "amp": args.amp,
        "params": sum(p.numel() for p in net.parameters()),
        **rates(args.batch * accumulate, warmup_s, times),
        "final_loss": float(holder["loss"].detach()) * accumulate,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        row["peak_memory_gib"] = round(peak / GIB, 3)
        row["peak_bytes"] = int(peak)
        row["bytes_limit"] = int(torch.cuda.get_device_properties(device).total_memory)
    return row


def child(args) -> None:
    accumulate, remat = parse_run(args.child)
    row = {"run": args.child, "batch": args.batch, "accumulate": accumulate, "remat": remat}
    try:
        measure = jax_child if args.framework == "jax" else torch_child
        row.update(measure(args, accumulate, remat))
    except Exception as e:  # report the failure as a row; an OOM is an answer, not a crash
        traceback.print_exc(file=sys.stderr)
        text = f"{type(e).__name__}: {e}"
        row.update(error=text[:2000], oom=any(m in text for m in OOM_MARKS))
    print(json.dumps(row), flush=True)
    sys.exit(1 if "error" in row else 0)


# --------------------------------------------------------------------------- parent side


class Spawner:
    """Runs measurements in fresh processes of this script, within `--deadline-s`."""

    def __init__(self, args):
        self.args = args
        self.deadline = time.perf_counter() + args.deadline_s if args.deadline_s else None

    def remaining(self) -> float:
        return self.deadline - time.perf_counter() if self.deadline else float("inf")

    def __call__(self, framework: str, run: str, batch: int, warmup: int, steps: int) -> dict:
        """One measurement; its JSON row (`error` and `oom` on failure, `skipped` when
        the deadline has passed)."""
        args = self.args
        timeout = min(args.timeout_s, self.remaining())
        if timeout <= 0:
            return {"run": run, "batch": batch, "error": "--deadline-s reached", "skipped": True}
        python = args.jax_python if framework == "jax" else args.torch_python
        cmd = [python or sys.executable, os.path.abspath(__file__), "--child", run]
        cmd += ["--framework", framework, "--batch", str(batch)]
        cmd += ["--warmup", str(warmup), "--steps", str(steps)]
        for name in ("arch", "swin", "image_size", "fpn_size", "num_selects", "tokens_per_node"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        cmd += ["--num-classes", str(args.num_classes), "--dtype", args.dtype, "--amp", args.amp]
        env = dict(os.environ)
        # Let XLA use (nearly) the whole device as PyTorch does, and share compilations
        # between the children (the same program at the same batch compiles once).
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
        env.setdefault("JAX_COMPILATION_CACHE_DIR", args.jax_cache_dir)
        print(f"# {framework} {run} batch {batch} ...", flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            stdout, stderr, rc = done.stdout, done.stderr, done.returncode
        except subprocess.TimeoutExpired:  # the child is killed
            if timeout < args.timeout_s:  # by the deadline: no verdict on this setting
                return {"run": run, "batch": batch, "error": "--deadline-s reached (killed)",
                        "skipped": True}  # fmt: skip
            stdout, stderr, rc = "", "", f"timeout after {timeout:.0f} s (--timeout-s)"
        rows = [line for line in stdout.splitlines() if line.startswith("{")]
        if rows:
            row = json.loads(rows[-1])
        else:  # died before reporting (killed, aborted): judge by what it printed
            row = {"run": run, "batch": batch, "error": f"rc={rc}: {stderr.strip()[-2000:]}"}
            row["oom"] = any(m in stderr for m in OOM_MARKS)
        if "error" in row and not row.get("oom"):
            sys.stderr.write(stderr[-4000:])
        row["wall_s"] = round(time.perf_counter() - start, 1)
        return row


def header(args) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arch": args.arch,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "input": "random, on device",
    }


def next_batch(
    lo: int, hi: int | None, peaks: dict[int, int], limit: int | None, resolution: int
) -> int:
    """The next micro-batch to try: `lo` runs (0: none yet), `hi` ran out of memory
    (None: none yet); `peaks` maps batches that ran to their peak bytes, `limit` is the
    device's bytes. Before a failure: extrapolate the last two peaks linearly to `limit`
    (at most 4 * lo), or double `lo` when that is unknown or proved wrong (`lo` ran
    although predicted a `resolution` step beyond the limit); after: bisect. Multiples of
    `resolution`."""
    if hi is None:
        guess = 2 * lo
        known = sorted(peaks)[-2:]
        if limit and len(known) == 2 and peaks[known[1]] > peaks[known[0]]:
            (b0, p0), (b1, p1) = ((b, peaks[b]) for b in known)
            fits = int(b1 + (limit - p1) / ((p1 - p0) / (b1 - b0)))
            guess = min(4 * lo, fits) if fits >= lo - resolution else guess
        return max(lo + resolution, guess // resolution * resolution)
    mid = (lo + hi) // 2 // resolution * resolution
    return mid if lo < mid < hi else lo + resolution


def search_max_batch(
    try_batch: Callable[[int], dict], start: int, resolution: int, budget_s: float, cap: int
) -> dict:
    """Largest multiple of `resolution` that `try_batch` runs, from `start` (see
    `next_batch`); stops early when a batch >= `cap` ran, after `budget_s` seconds, or
    when a try fails other than by running out of memory (`complete: false`)."""
    lo, hi, peaks, limit, tries = 0, None, {}, None, []
    batch, start_time = start, time.perf_counter()
    while True:
        row = try_batch(batch)
        stop = "deadline" if row.get("skipped") else None
        if stop is None:
            tries.append({"batch": batch, "ok": "error" not in row, "wall_s": row.get("wall_s")})
            if "error" in row and not row.get("oom"):
                stop = "error: " + row["error"][-500:]
            elif "error" in row:
                hi = batch
            else:
                lo, limit = batch, row.get("bytes_limit", limit)
                if "peak_bytes" in row:
                    peaks[batch] = row["peak_bytes"]
        complete = hi is not None and hi - lo <= resolution
        if not complete and stop is None:
            if lo >= cap:
                stop = "cap"
            elif time.perf_counter() - start_time > budget_s:
                stop = "budget"
        if complete or stop:
            found = {"max_batch": lo, "failed": hi, "complete": complete, "tries": tries}
            return {**found, **({"stopped": stop} if stop else {})}
        batch = min(next_batch(lo, hi, peaks, limit, resolution), max(cap, lo + resolution))


def summary(rows: list[dict]) -> str:
    """A markdown table of the step rows, fgjax against the PyTorch original."""
    original = {
        r["accumulate"]: r["images_per_s"]
        for r in rows
        if r["framework"] == "torch" and not r["remat"] and r.get("amp") == "fp16"
        and "images_per_s" in r
    }  # fmt: skip
    lines = [
        "| framework | run | precision | images/s | step ms | peak GiB | vs torch original |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"| {r['framework']} | {r['run']} | | error: {r['error'][:60]} | | | |")
            continue
        ratio = original.get(r["accumulate"]) if r["framework"] == "fgjax" else None
        if ratio:
            r["vs_torch_original"] = round(r["images_per_s"] / ratio, 3)
        lines.append(
            f"| {r['framework']} | {r['run']} | {r.get('dtype') or r.get('amp')} | "
            f"{r['images_per_s']:.1f} | {r['step_ms_median']} | {r.get('peak_memory_gib', '-')} | "
            f"{r.get('vs_torch_original', '')} |"
        )
    return "\n".join(lines)


def interleave(frameworks: list[str], runs: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(framework, run) jobs, the frameworks' i-th runs next to each other, so that a
    deadline cuts the tail of both lists instead of one framework's."""
    jobs = []
    for i in range(max(len(runs[f]) for f in frameworks)):
        jobs += [(f, runs[f][i]) for f in frameworks if i < len(runs[f])]
    return jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", default="jax,torch", help="comma list of jax, torch")
    p.add_argument("--jax-runs", default="a1,a1-remat,a4-remat", help="a<accumulate>[-remat]")
    p.add_argument("--torch-runs", default="a1,a4", help="a<accumulate>[-remat] (checkpoint)")
    p.add_argument("--batch", type=int, default=8, help="micro-batch (spec 5.1: 8)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compile included)")
    p.add_argument("--dtype", default="auto", help="fgjax config.model.dtype")
    p.add_argument("--amp", default="fp16", choices=["fp16", "bf16", "none"], help="torch")
    p.add_argument("--find-max-batch", action="store_true")
    p.add_argument("--max-runs", default="a1,a1-remat", help="remat settings searched")
    p.add_argument("--resolution", type=int, default=8, help="batch granularity of the search")
    p.add_argument("--probe-steps", type=int, default=2, help="steps a search try must run")
    p.add_argument("--search-budget-s", type=float, default=600, help="per search")
    p.add_argument("--max-batch-cap", type=int, default=4096, help="stop searching here")
    p.add_argument("--timeout-s", type=float, default=900, help="per subprocess")
    p.add_argument("--deadline-s", type=float, default=0, help="for everything (0: none)")
    p.add_argument("--out", default="", help="also write the rows to this JSON file")
    # Model size (defaults: the recipe's; --tiny shrinks all of them for a CPU check).
    p.add_argument("--tiny", action="store_true", help="a tiny Swin at 64 px (CPU smoke test)")
    p.add_argument("--arch", default=ORIGINAL_ARCH)
    p.add_argument("--swin", default="{}", help="JSON Swin field overrides, both frameworks")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--fpn-size", type=int, default=1536)
    p.add_argument("--num-selects", default="256,128,64,32")
    p.add_argument("--tokens-per-node", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=200)
    p.add_argument("--jax-python", default="", help="interpreter of the jax runs")
    p.add_argument("--torch-python", default="", help="interpreter of the torch runs")
    p.add_argument("--jax-cache-dir", default="/tmp/fgjax_herbs_jax_cache")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        for name, value in TINY.items():
            setattr(args, name, json.dumps(value) if name == "swin" else value)
    if args.child:
        child(args)
        return

    frameworks = [f for f in args.framework.split(",") if f]
    if not frameworks or set(frameworks) - {"jax", "torch"}:
        p.error(f"--framework: choose from jax, torch (got {args.framework!r})")
    runs = {"jax": args.jax_runs, "torch": args.torch_runs, "max": args.max_runs}
    runs = {k: [r for r in v.split(",") if r] for k, v in runs.items()}
    for run in sum(runs.values(), []):
        try:
            parse_run(run)
        except ValueError as e:
            p.error(str(e))
    if any(parse_run(run)[0] != 1 for run in runs["max"]):
        p.error(f"--max-runs {args.max_runs}: the search is over micro-batches, use a1[-remat]")
    if args.probe_steps < 2:
        p.error("--probe-steps must be >= 2 (one warm-up step, then timed ones)")
    spawn, head, rows = Spawner(args), header(args), []

    def add(row: dict) -> None:  # print and save as we go: a deadline keeps what was done
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)

    if args.find_max_batch:
        for framework, run in interleave(frameworks, {f: runs["max"] for f in frameworks}):
            found = search_max_batch(
                lambda b, f=framework, r=run: spawn(f, r, b, 1, args.probe_steps - 1),
                args.batch,
                args.resolution,
                args.search_budget_s,
                args.max_batch_cap,
            )
            row = {**head, "framework": "fgjax" if framework == "jax" else "torch"}
            row.update(kind="max_batch", run=run, remat=parse_run(run)[1])
            row.update(precision=args.dtype if framework == "jax" else args.amp)
            add({**row, "resolution": args.resolution, **found})
    else:
        for framework, run in interleave(frameworks, runs):
            row = {**head, **spawn(framework, run, args.batch, args.warmup, args.steps)}
            row.setdefault("framework", "fgjax" if framework == "jax" else "torch")
            accumulate, remat = parse_run(run)
            row.update(kind="step", accumulate=accumulate, remat=remat)
            add({**row, "warmup": args.warmup, "steps": args.steps})
        print(summary(rows), flush=True)
        if args.out:  # again, with the ratios
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
