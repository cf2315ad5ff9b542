"""PyTorch reference throughput: supervised, MoCo v2 and BYOL train steps on ResNet-50.

Standalone (torch + torchvision only; not part of fgjax). Each step runs on synthetic
inputs already on the device, so only the training step is timed: forward, loss,
backward, optimizer step and the methods' own extras (EMA update, key encoder, queue).
Defaults follow the fgjax benchmark: 224 px, global batch 256, bfloat16 autocast,
channels_last, SGD momentum 0.9. Every (step, mode) pair prints one JSON line.

    python benchmarks/torch_train_step.py --out torch.json               # on the GPU
    python benchmarks/torch_train_step.py --device cpu --batch 4 --steps 1 --warmup 1 \\
        --image-size 64 --modes eager                                    # smoke test

Throughput keys match benchmarks/train_step.py: `images_per_s` counts batch items per
second (for MoCo a batch item is a query image plus its key view), `image_pairs_per_s`
(BYOL) counts two-view pairs, each view going through both the online and target
networks.

Deliberate differences from the original recipes, for a like-for-like speed comparison:
- BYOL uses SGD (momentum 0.9), not LARS: torch has no LARS, and the per-layer trust
  ratio is a few elementwise ops per tensor, small next to ResNet-50's convolutions.
- MoCo's shuffle-BN is simulated on one device by permuting the key batch before the
  key encoder and un-permuting its output. With one BN group this leaves the BN
  statistics unchanged (they are permutation invariant); it only matters when BN
  statistics are computed per group (one group per GPU in the original DDP runs). It is
  kept so the gather/scatter cost is in the timing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# --------------------------------------------------------------------------- models


def resnet50_trunk() -> nn.Module:
    """torchvision ResNet-50 without its classifier: [B, 3, H, W] -> [B, 2048]."""
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    return net


def mlp(dims: tuple[int, ...], batch_norm: bool) -> nn.Sequential:
    """Linear layers of widths `dims` with [BN] + ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@torch.no_grad()
def ema_(target: list[torch.Tensor], online: list[torch.Tensor], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, one multi-tensor kernel."""
    torch._foreach_lerp_(target, online, 1.0 - momentum)


# --------------------------------------------------------------------------- steps


class Setup:
    """Everything one benchmark needs: the step closure, its unit and a description."""

    def __init__(self, step: Callable[[], torch.Tensor], unit: str, detail: dict):
        self.step, self.unit, self.detail = step, unit, detail


def make_optimizer(params, base_lr: float, batch: int, weight_decay: float, device: torch.device):
    """SGD, momentum 0.9, lr = base_lr * batch / 256 (keeps tiny smoke-test batches finite)."""
    # fused (CUDA) / foreach (CPU) SGD: the fastest stock implementation in both modes.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    lr = base_lr * batch / 256
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **fast)


def views(args, device: torch.device, n: int) -> list[torch.Tensor]:
    shape = (args.batch, 3, args.image_size, args.image_size)
    return [
        torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
        for _ in range(n)
    ]


def supervised(args, device, amp, compile_fn) -> Setup:
    model = torchvision.models.resnet50(weights=None, num_classes=args.num_classes)
    model = model.to(device, memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), 0.1, args.batch, 1e-4, device)
    (x,) = views(args, device, 1)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device)

    def loss_fn(images, labels):
        with amp():
            logits = model(images)
        return F.cross_entropy(logits.float(), labels)

    loss_fn = compile_fn(loss_fn)

    def step():
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return Setup(step, "images_per_s", {"num_classes": args.num_classes, "weight_decay": 1e-4})


def moco(args, device, amp, compile_fn) -> Setup:
    dim, queue_len = args.moco_dim, args.moco_queue
    if queue_len % args.batch:
        raise ValueError(f"--moco-queue {queue_len} must be a multiple of --batch {args.batch}")
    query = nn.Sequential(resnet50_trunk(), mlp((2048, 2048, dim), batch_norm=False))
    query = query.to(device, memory_format=torch.channels_last)
    key = copy.deepcopy(query).requires_grad_(False)
    q_params, k_params = list(query.parameters()), list(key.parameters())
    opt = make_optimizer(q_params, 0.03, args.batch, 1e-4, device)
    queue = F.normalize(torch.randn(queue_len, dim, device=device), dim=1)
    ptr = [0]
    x_q, x_k = views(args, device, 2)

    def key_fn(images):
        with amp():
            return F.normalize(key(images).float(), dim=1)

    def loss_fn(images, keys, negatives):
        with amp():
            q = query(images)
        q = F.normalize(q.float(), dim=1)
        positive = (q * keys).sum(dim=1, keepdim=True)  # [B, 1]
        negative = q @ negatives.T  # [B, K]
        logits = torch.cat([positive, negative], dim=1) / args.moco_t
        # the positive is column 0 of every row
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))

    key_fn, loss_fn = compile_fn(key_fn), compile_fn(loss_fn)

    def step():
        ema_(k_params, q_params, args.moco_m)
        with torch.no_grad():
            perm = torch.randperm(args.batch, device=device)
            keys = torch.empty(args.batch, dim, device=device)
            keys[perm] = key_fn(x_k[perm])  # row i of the output belongs to x_k[perm[i]]
        loss = loss_fn(x_q, keys, queue)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # enqueue the newest keys over the oldest
            queue[ptr[0] : ptr[0] + args.batch] = keys
            ptr[0] = (ptr[0] + args.batch) % queue_len
        return loss

    detail = {"dim": dim, "queue": queue_len, "temperature": args.moco_t, "momentum": args.moco_m}
    return Setup(step, "images_per_s", {**detail, "weight_decay": 1e-4})


def byol(args, device, amp, compile_fn) -> Setup:
    online = nn.Sequential(resnet50_trunk(), mlp((2048, 4096, 256), batch_norm=True))
    predictor = mlp((256, 4096, 256), batch_norm=True)
    online = online.to(device, memory_format=torch.channels_last)
    predictor = predictor.to(device)
    target = copy.deepcopy(online).requires_grad_(False)  # stays in train mode: batch-stat BN
    o_params, t_params = list(online.parameters()), list(target.parameters())
    opt = make_optimizer(o_params + list(predictor.parameters()), 0.05, args.batch, 1.5e-6, device)
    x1, x2 = views(args, device, 2)

    def target_fn(images):
        with amp():
            return target(images).float()

    def loss_fn(v1, v2, z1, z2):
        with amp():  # one forward per view, so BN statistics are per view as in BYOL
            p1 = predictor(online(v1))
            p2 = predictor(online(v2))
        # symmetric negative cosine, each prediction against the *other* view's target
        d12 = F.cosine_similarity(p1.float(), z2, dim=-1).mean()
        d21 = F.cosine_similarity(p2.float(), z1, dim=-1).mean()
        return -(d12 + d21) / 2

    target_fn, loss_fn = compile_fn(target_fn), compile_fn(loss_fn)

    def step():
        ema_(t_params, o_params, args.byol_tau)  # EMA first, then the target forward
        with torch.no_grad():
            z1, z2 = target_fn(x1), target_fn(x2)
        loss = loss_fn(x1, x2, z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    detail = {"tau": args.byol_tau, "optimizer_note": "SGD instead of LARS", "weight_decay": 1.5e-6}
    return Setup(step, "image_pairs_per_s", detail)


STEPS = {"supervised": supervised, "moco": moco, "byol": byol}

# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_context(device: torch.device, mode: str) -> tuple[Callable, str]:
    """An autocast factory, falling back to float32 where bf16 autocast does not run."""
    if mode == "none":
        return lambda: torch.autocast(device.type, enabled=False), "float32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            conv = nn.Conv2d(3, 4, 3).to(device)
            conv(torch.randn(1, 3, 8, 8, device=device)).sum().item()
    except (RuntimeError, AssertionError) as e:
        print(f"# bf16 autocast unavailable on {device.type} ({e}); using float32", flush=True)
        return lambda: torch.autocast(device.type, enabled=False), "float32"
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16), "bf16 autocast"


def run_one(which: str, mode: str, args, device: torch.device, header: dict) -> dict:
    amp, amp_name = amp_context(device, args.amp)
    if mode == "compile":
        compile_fn = lambda f: torch.compile(f, mode=args.compile_mode)
    else:
        compile_fn = lambda f: f
    row = {**header, "step": which, "mode": mode, "precision": amp_name}
    if mode == "compile":
        row["compile_mode"] = args.compile_mode
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup = STEPS[which](args, device, amp, compile_fn)

    start = time.perf_counter()
    for _ in range(args.warmup):  # includes compilation and cuDNN autotuning
        setup.step()
    synchronize(device)
    warmup_s = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(args.steps):
        loss = setup.step()
    synchronize(device)
    seconds = time.perf_counter() - start

    row.update(
        {
            setup.unit: args.batch * args.steps / seconds,
            "step_ms": 1000 * seconds / args.steps,
            "warmup_s": round(warmup_s, 2),
            "final_loss": float(loss.detach()),
            **setup.detail,
        }
    )
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="global batch (pairs for MoCo/BYOL)")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    p.add_argument("--modes", default="eager,compile", help="comma list of eager, compile")
    p.add_argument("--which", default="supervised,moco,byol", help="comma list of steps")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", default="", help="also write all rows to this JSON file")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=200)
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    p.add_argument("--compile-mode", default="default", help="torch.compile mode=")
    p.add_argument("--moco-dim", type=int, default=128)
    p.add_argument("--moco-queue", type=int, default=65536)
    p.add_argument("--moco-t", type=float, default=0.2)
    p.add_argument("--moco-m", type=float, default=0.999)
    p.add_argument("--byol-tau", type=float, default=0.996)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    modes = [m for m in args.modes.split(",") if m]
    which = [w for w in args.which.split(",") if w]
    for name, allowed in ((modes, ("eager", "compile")), (which, tuple(STEPS))):
        bad = set(name) - set(allowed)
        if bad:
            p.error(f"unknown {sorted(bad)}; choose from {allowed}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available; use --device cpu")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32

    header = {
        "framework": "torch",
        "device": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": args.batch,
        "image_size": args.image_size,
        "channels_last": True,
        "optimizer": "SGD momentum 0.9 (" + ("fused)" if device.type == "cuda" else "foreach)"),
        "input": "synthetic, on device",
        "warmup": args.warmup,
        "steps": args.steps,
    }
    rows = []
    for w in which:
        for mode in modes:
            try:
                row = run_one(w, mode, args, device, header)
            except Exception as e:  # keep going: one failure must not lose the other rows
                traceback.print_exc(file=sys.stderr)
                row = {**header, "step": w, "mode": mode, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(row), flush=True)
            rows.append(row)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()  # fresh compile caches and recompile limits per model
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
