"""CFGA descriptors/s: fgjax (`fgjax.methods.cfga.descriptors.describe_fn`, jitted, a vmapped batch)
against the PyTorch per-image procedure (`benchmarks/torch_cfga.py`: one image, eval
mode, `loss.backward()`, `.grad` of the six stage-4 convs) on the same device.

    python benchmarks/describe.py --out describe.json            # GPU: batch 32
    python benchmarks/describe.py --torch-python /work/torchvenv/bin/python  # CPU: batch 4

Both sides: ResNet-50 with random weights (only speed is measured), float32, random
224 x 224 inputs already on the device (the metric-learning pipelines' crop size), the
descriptors the reference's extraction script writes per image: the six `cfga_4_b_k`,
`cfga_plus`, `gap`, `pooling`, `scda`, `scda_concat`; mask without LCC (`--lcc` adds it:
scipy on the host for PyTorch, in the jitted function for fgjax). Each side runs in its
own subprocess (`--child`), so the two frameworks never share the device's memory.

Timing: fgjax `--warmup` untimed batches (compilation included), then `--steps` batches
of `--batch`, each `block_until_ready`; PyTorch `--warmup` untimed images, then
`--images` images, synchronised at the end. Printed: one JSON line with the device,
versions, images/s of both sides and `ratio` = fgjax / PyTorch (issue #15's goal: >= 20
on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]
NAMES = (
    *(f"cfga_4_{b}_{k}" for b in (1, 2) for k in (1, 2, 3)),
    *("cfga_plus", "gap", "pooling", "scda", "scda_concat"),
)


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def jax_child(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp

    from fgjax.methods.cfga.descriptors import describe_fn
    from fgjax.models import build_backbone

    model = build_backbone(args.arch, dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(1), (args.batch, args.size, args.size, 3))
    variables = jax.jit(lambda: model.init(jax.random.key(0), x[:1], train=False))()
    describe = jax.jit(describe_fn(model, NAMES, use_lcc=args.lcc))
    start = time.perf_counter()
    for _ in range(args.warmup):
        jax.block_until_ready(describe(variables, x))
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        jax.block_until_ready(describe(variables, x))
    seconds = time.perf_counter() - start
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: "
        + (cpu_name() if device.platform == "cpu" else device.device_kind),
        "jax": jax.__version__,
        "batch": args.batch,
        "images": args.batch * args.steps,
        "warmup_s": round(warmup_s, 2),
        "images_per_s": args.batch * args.steps / seconds,
    }


def torch_child(args: argparse.Namespace) -> dict:
    import torch
    import torch_cfga
    import torchvision

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    model = torch_cfga.prepare(getattr(torchvision.models, args.arch)().to(dev))
    gen = torch.Generator(device=dev).manual_seed(1)
    images = torch.randn(
        args.warmup + args.images, 1, 3, args.size, args.size, generator=gen, device=dev
    )

    def run(batch: torch.Tensor) -> float:
        start = time.perf_counter()
        for image in batch:
            torch_cfga.descriptors(model, image, args.lcc)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    warmup_s = run(images[: args.warmup])
    seconds = run(images[args.warmup :])
    return {
        "device": f"cuda: {torch.cuda.get_device_name()}" if cuda else f"cpu: {cpu_name()}",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "images": args.images,
        "warmup_s": round(warmup_s, 2),
        "images_per_s": args.images / seconds,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def child(args: argparse.Namespace) -> int:
    result = jax_child(args) if args.child == "jax" else torch_child(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_child(python: str, side: str, argv: list[str], timeout_s: float) -> dict:
    """One side in a fresh interpreter `python`; its RESULT line, or the error."""
    cmd = [python, os.path.abspath(__file__), *argv, "--child", side]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": (proc.stdout + proc.stderr)[-2000:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet50", help="resnet50/101/152")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=None, help="fgjax vmap batch (32 GPU, 4 CPU)")
    p.add_argument("--steps", type=int, default=None, help="fgjax timed batches (10 GPU, 2 CPU)")
    p.add_argument("--images", type=int, default=None, help="PyTorch timed images (200 GPU, 8 CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches / images per side")
    p.add_argument("--lcc", action="store_true", help="largest-component mask (ImageNet pipeline)")
    p.add_argument("--torch-python", default=sys.executable, help="interpreter with torch")
    p.add_argument("--timeout-s", type=float, default=600, help="per side")
    p.add_argument("--out", default="", help="also write the JSON line here")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    gpu = shutil.which("nvidia-smi") is not None
    args.batch = args.batch or (32 if gpu else 4)
    args.steps = args.steps or (10 if gpu else 2)
    args.images = args.images or (200 if gpu else 8)
    argv = [
        f"--arch={args.arch}", f"--size={args.size}", f"--batch={args.batch}",
        f"--steps={args.steps}", f"--images={args.images}", f"--warmup={args.warmup}",
        *(["--lcc"] if args.lcc else []),
    ]  # fmt: skip
    fg = run_child(sys.executable, "jax", argv, args.timeout_s)
    pt = run_child(args.torch_python, "torch", argv, args.timeout_s)
    ratio = fg.get("images_per_s", 0) / pt["images_per_s"] if "images_per_s" in pt else None
    result = {
        "benchmark": "describe",
        "arch": args.arch,
        "size": args.size,
        "lcc": args.lcc,
        "descriptors": list(NAMES),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "fgjax": fg,
        "torch_per_image": pt,
        "ratio": round(ratio, 2) if ratio else None,
        "goal": ">= 20 on a GPU",
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    return 0 if ratio else 1


if __name__ == "__main__":
    sys.exit(main())
