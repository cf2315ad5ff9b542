"""Train-step time against the number of devices, and the bytes all-reduced per step.

    python benchmarks/scaling.py                     # 1, 2, 4, 8 simulated CPU devices
    python benchmarks/scaling.py --devices 1,2,4,8 --platform gpu   # real devices

One subprocess per device count (simulated CPU devices need
`--xla_force_host_platform_device_count` before jax starts; on an accelerator it sees the
first n devices) times the demo recipe's MoCo step on a fixed global batch (strong
scaling): median of `--steps` steps after the compile. Each row also gives the bytes the
compiled step all-reduces (summed over the `all-reduce` ops of its optimised HLO) next to
the arithmetic: the gradient is one float32 per parameter, P x 4 bytes, of which a ring
all-reduce sends (and receives) 2 (n - 1) / n per device. The same arithmetic is printed
for the full-size recipes (ResNet-50 and their heads), counted with `jax.eval_shape`
(nothing of that size is compiled). Simulated CPU devices share the host's cores, so
their times do not fall with n: they show that the step runs and what it communicates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Full-size recipes whose gradient all-reduce is computed (configs/<name>.py).
FULL_SIZE = ("cub_moco", "cub_byol", "cub_lcr", "cars_bucsfr", "cub_proxy_anchor", "cub_herbs")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "pred": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def ring_bytes(total: int, devices: int) -> float:
    """Bytes each device sends (and receives) in a ring all-reduce of `total` bytes."""
    return 2 * (devices - 1) / devices * total


def all_reduce_bytes(hlo: str) -> int:
    """Bytes of the results of every all-reduce in optimised HLO text (a combined
    all-reduce's tuple counts each element)."""
    total = 0
    for line in hlo.splitlines():
        if not re.search(r"\ball-reduce(-start)?\(", line) or "=" not in line:
            continue
        result = line.split("=", 1)[1].split("all-reduce", 1)[0]
        for dtype, dims in _ARRAY.findall(result):
            size = 1
            for d in filter(None, dims.split(",")):
                size *= int(d)
            total += size * _DTYPE_BYTES[dtype]
    return total


def param_count(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def full_size_params(name: str) -> tuple[int, str]:
    """(trainable parameter count, arch) of configs/<name>.py at its image size, from
    abstract shapes only."""
    import jax

    from fgjax.config import load_config_file
    from fgjax.methods import RunInfo, build_method

    config = load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
    classes = 196 if name.startswith("cars") else 200
    run = RunInfo(
        steps_per_epoch=100,
        total_steps=10_000,
        batch_size=config.train.batch_size,
        num_classes=classes,
        num_coarse_classes=8 if name.startswith("cars") else 0,
        num_train_examples=100 * config.train.batch_size,
    )
    method = build_method(config, run)
    size = config.views[method.view_names[0]].size
    params, _ = jax.eval_shape(
        lambda key: method.init_variables(key, (2, size, size, 3)), jax.random.PRNGKey(0)
    )
    return param_count(params), config.model.arch


def measure(batch: int, steps: int) -> dict:
    """One row: the demo recipe's step on every visible device (run in the subprocess)."""
    import jax
    import numpy as np

    from fgjax.config import load_config_file, photometric_spec
    from fgjax.core.sharding import global_batch, make_mesh, put_replicated
    from fgjax.methods import RunInfo, build_method
    from fgjax.train import optim
    from fgjax.train.state import create_train_state
    from fgjax.train.step import jit_train_step, make_train_step

    config = load_config_file(os.path.join(REPO, "configs", "demo.py"))
    config.train.batch_size = batch
    run = RunInfo(
        steps_per_epoch=15,
        total_steps=3000,
        batch_size=batch,
        num_classes=12,
        num_coarse_classes=0,
        num_train_examples=960,
    )
    method = build_method(config, run)
    tx = optim.make_optimizer(config.optim, lambda step: 0.03)
    mesh = make_mesh()
    size = config.data.image_size
    state = put_replicated(create_train_state(method, tx, (2, size, size, 3), seed=0), mesh)
    frozen = put_replicated(method.init_frozen(), mesh)
    specs = {name: photometric_spec(config, name) for name in method.view_names}
    step = jit_train_step(make_train_step(method, tx, specs, run), mesh)
    rng = np.random.default_rng(0)
    shape = (batch, size, size, 3)
    local = {
        "views": {n: rng.integers(0, 256, shape, dtype=np.uint8) for n in method.view_names},
        "label": rng.integers(0, 12, batch).astype(np.int32),
        "coarse_label": np.zeros(batch, np.int32),
        "index": np.arange(batch, dtype=np.int32),
    }
    data = global_batch(local, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, data).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps + 1):  # the first call runs once untimed
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    n = jax.device_count()
    params = param_count(state.params)
    return {
        "devices": n,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "global_batch": batch,
        "compile_s": compile_s,
        "step_ms": 1000 * statistics.median(times[1:]),
        "images_per_s": batch / statistics.median(times[1:]),
        "params": params,
        "gradient_bytes": 4 * params,
        "ring_bytes_per_device": ring_bytes(4 * params, n),
        "hlo_all_reduce_bytes": all_reduce_bytes(compiled.as_text()) if n > 1 else 0,
    }


def _child(devices: int, batch: int, steps: int, platform_name: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    if platform_name == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    else:  # the first n accelerators
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
    out = subprocess.run(
        [sys.executable, __file__, "--measure", f"--batch={batch}", f"--steps={steps}"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _mib(value: float) -> str:
    return f"{value / 2**20:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--platform", default="cpu", help="cpu (simulated devices) or gpu")
    p.add_argument("--batch", type=int, default=64, help="global batch (divisible by each n)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help="also write the rows as JSON here")
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.batch, args.steps)))
        return

    import jax

    rows = [_child(int(n), args.batch, args.steps, args.platform) for n in args.devices.split(",")]
    print(
        f"{datetime.date.today().isoformat()}, {platform.node()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, python {platform.python_version()}; demo recipe (MoCo v2, "
        f"ResNet 1-1-1-1 width 8, 32 px), global batch {args.batch}, median of {args.steps} "
        "steps\n"
    )
    print(
        "| devices | device | step ms | images/s | compile s | params | gradient MiB "
        "| ring MiB sent/device | all-reduced MiB (HLO) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['devices']} | {r['device_kind']} | {r['step_ms']:.1f} | "
            f"{r['images_per_s']:.0f} | {r['compile_s']:.1f} | {r['params']:,} | "
            f"{_mib(r['gradient_bytes'])} | {_mib(r['ring_bytes_per_device'])} | "
            f"{_mib(r['hlo_all_reduce_bytes'])} |"
        )
    print(
        "\nFull-size recipes (float32 gradients; ring all-reduce: 2(n-1)/n of them sent and "
        "received by each device)\n"
    )
    print("| recipe | arch | params | gradient MiB | ring MiB/device n=8 | n=32 |")
    print("|---|---|---|---|---|---|")
    for name in FULL_SIZE:
        count, arch = full_size_params(name)
        print(
            f"| {name} | {arch} | {count:,} | {_mib(4 * count)} | "
            f"{_mib(ring_bytes(4 * count, 8))} | {_mib(ring_bytes(4 * count, 32))} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
